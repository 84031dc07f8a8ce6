"""Open a store: load the catalog, verify segments, rebuild the index (derived data).

Sealed segments with a valid summary are loaded from it (no payload reads). Any other segment
is scanned record by record (``segments.scan_segment``). A record with an intact header but a
bad payload is one corrupt block: skipped, counted in ``checksum_failures``, and kept as a
tombstone row so no older version of its key comes back; the scan goes on. The scan ends at the
first bad header or torn record, and the file is truncated there, so a torn tail can never be
mistaken for data later. The newest unsealed segment stays
the active one; older unsealed ones get sealed now. Rows from all segments are deduplicated in
log order (last write wins, a tombstone deletes); expired blocks and blocks of unknown
namespaces are dropped. Recovery may drop blocks; it never invents them.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from kvstore.engine import format as fmt
from kvstore.engine.catalog import CATALOG_FILE, NS_ID_MAX, Catalog
from kvstore.engine.reclaim import seal
from kvstore.engine.segments import (
    create_segment,
    load_summary,
    open_existing,
    parse_segment_name,
    scan_segment,
    summary_path,
)
from kvstore.engine.summary import SegmentSummary
from kvstore.errors import StorageError

if TYPE_CHECKING:
    from kvstore.engine.log import SegmentLog

log = logging.getLogger("kvstore.engine")
UNKNOWN_NS = NS_ID_MAX + 1


def recover(lg: SegmentLog) -> None:
    st = lg.state
    cfg, dev = st.config, st.device
    t0 = time.monotonic()
    st.catalog = Catalog.decode(dev.read_file(os.path.join(cfg.data_dir, CATALOG_FILE)))
    # data keys first: a wrong or missing master key refuses to open before anything is read
    if st.cipher.load(st.catalog.keys, [i for i, _info in st.catalog.by_name.values()]):
        st.save_catalog()
    names = dev.listdir(cfg.data_dir)
    ids = sorted(i for i in (parse_segment_name(n) for n in names) if i is not None)
    for n in names:  # leftovers: interrupted writes, orphan summaries, files kept to recycle
        if (n.endswith(".tmp") or n.startswith("free-")
                or (n.endswith(".sum") and parse_segment_name(n[:-4] + ".kvs") not in ids)):
            dev.unlink(os.path.join(cfg.data_dir, n))
    summaries: list[SegmentSummary] = []
    unsealed = []
    for sid in ids:
        seg = open_existing(dev, cfg.data_dir, sid, st.pool)
        lg.next_segment_id = max(lg.next_segment_id, sid + 1)
        if seg is None:
            continue
        summary = load_summary(dev, cfg.data_dir, sid)
        if summary is not None and summary.end_offset <= dev.size(seg.handle):
            seg.end = seg.durable = summary.end_offset
            seg.sealed = True
        else:
            # A summary not used (bad, or ending past the file) must not outlive the scan: a
            # later open would take the grown segment for sealed at the old end.
            dev.unlink(summary_path(cfg.data_dir, sid))
            scan = scan_segment(dev, seg, st.pool)
            builder, end = scan.builder, scan.end
            if scan.read_error is not None:
                # A read error says nothing about the bytes behind it: truncating there could
                # cut acknowledged blocks over a transient EIO. Refuse to open instead; the
                # files stay as they are for the next try.
                raise StorageError(
                    f"segment {sid:08x} in {cfg.data_dir}: the device failed a read at byte "
                    f"{end} during recovery ({scan.read_error}); refusing to open rather than "
                    "truncate the blocks behind it. Check the disk, then start again.",
                    segment=sid, offset=end)
            for off in scan.corrupt:
                log.warning("segment %08x: record at %d fails its payload checksum; skipped "
                            "and its block dropped", sid, off)
            st.counters["checksum_failures"] += len(scan.corrupt)
            size = dev.size(seg.handle)
            if end < size:
                if _zeros_at(lg, seg.handle, end, size):  # preallocated, never written
                    log.info("segment %08x: %d preallocated bytes after %d", sid, size - end, end)
                else:
                    log.warning("segment %08x: truncating torn tail at %d (file had %d bytes)",
                                sid, end, size)
                dev.truncate(seg.handle, end)
            seg.end = seg.durable = end
            seg.builder = builder
            summary = builder.build(end)
            unsealed.append(seg)
        seg.records = summary.count
        summaries.append(summary)
        lg.segments[sid] = seg
    _build_index(lg, summaries)
    # Keep appending to the newest unsealed segment; seal the others (crash between roll steps).
    for seg in unsealed[:-1]:
        seal(lg, seg)
    last = unsealed[-1] if unsealed else None
    if last is not None and last.id == max(lg.segments):
        lg.active = last
        dev.allocate(last.handle, cfg.segment_bytes)  # keep appending into reserved blocks
    else:
        if last is not None:
            seal(lg, last)
        with lg.wlock:
            from kvstore.engine.reclaim import roll

            roll(lg)
    if not lg.segments or lg.active is None:
        seg = create_segment(dev, cfg.data_dir, lg.next_segment_id, cfg.segment_bytes, st.pool,
                             lg.next_seq)
        lg.next_segment_id += 1
        lg.segments[seg.id] = seg
        lg.active = seg
    log.info("recovery: %d segments, %d blocks in %.2fs", len(lg.segments), len(st.index),
             time.monotonic() - t0)


def _zeros_at(lg: SegmentLog, handle: int, off: int, size: int) -> bool:
    """True when the page at ``off`` (where a scan stopped) is all zeros: the unwritten rest of
    a preallocated segment rather than a torn record."""
    st = lg.state
    n = min(fmt.PAGE, size - off)
    buf = st.pool.acquire(fmt.PAGE)
    try:
        got = st.device.read_into(handle, off - off % fmt.PAGE, buf.view[: fmt.PAGE])
        return got >= n and not any(buf.view[off % fmt.PAGE : off % fmt.PAGE + n])
    except StorageError:
        return False
    finally:
        st.pool.release(buf)


def _build_index(lg: SegmentLog, summaries: list[SegmentSummary]) -> None:
    st = lg.state
    ns_ids = {name.encode(): i for name, (i, _info) in st.catalog.by_name.items()}
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("digest", "seg", "page", "length", "checksum",
                                           "expires", "flags", "ns", "seq")}
    for s in summaries:
        if s.count == 0:
            continue
        table = np.array([ns_ids.get(n, UNKNOWN_NS) for n in s.namespaces], dtype=np.uint32)
        parts["digest"].append(np.asarray(s.cols["digest"]))
        parts["seg"].append(np.full(s.count, s.segment_id, dtype=np.uint64))
        parts["ns"].append(table[np.asarray(s.cols["ns"], dtype=np.int64)])
        for k in ("page", "length", "checksum", "expires", "flags", "seq"):
            parts[k].append(np.asarray(s.cols[k]))
    if not parts["digest"]:
        return
    col = {k: np.concatenate(v) for k, v in parts.items()}
    lg.next_seq = max(lg.next_seq, int(col["seq"].max()) + 1)
    raw = np.frombuffer(col["digest"].tobytes(), dtype=np.uint64).reshape(-1, 2)
    order = np.arange(len(raw))
    idx = np.lexsort((order, raw[:, 1], raw[:, 0]))  # by digest, then log order
    hi, lo = raw[idx, 0], raw[idx, 1]
    last = np.ones(len(idx), dtype=bool)
    last[:-1] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    pick = idx[last]  # the newest row of every digest
    now = time.time()
    alive = ((col["flags"][pick] & fmt.FLAG_TOMBSTONE) == 0) & (col["ns"][pick] != UNKNOWN_NS)
    exp = col["expires"][pick]
    fresh = (exp == 0) | (exp > now)
    st.counters["expired_blocks"] += int(np.count_nonzero(alive & ~fresh))
    pick = pick[alive & fresh]
    st.index.bulk_load(col["digest"][pick], col["seg"][pick], col["page"][pick],
                        col["length"][pick], col["checksum"][pick],
                        np.ceil(col["expires"][pick]).astype(np.uint32), col["ns"][pick])

