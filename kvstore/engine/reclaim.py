"""Segment roll and capacity reclaim (whole segments, oldest first, Navy-style reinsertion).

Called with the engine's write lock held. When the active segment is full it is sealed (its
summary written), and if the store would then hold more than the high watermark of segments,
the oldest sealed segments are reclaimed until it is back at the low watermark. Before a
segment goes, its blocks that are pinned by a lookup lease are read back, verified and
re-appended to the active segment (all of them: the leased-bytes budget bounds their total,
see ``leases.py``), then the blocks read since they were written (hit counter > 0), within a
per-roll byte budget. Blocks are moved one at a time, into the active segment or, when it is
full, a fresh one, so a roll holds one block's buffer and the store never holds more segment
files than its capacity. The segment returned has room for the caller's record.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from kvstore.engine import format as fmt
from kvstore.engine.index import Entry
from kvstore.engine.leases import hot_budget_bytes
from kvstore.engine.segments import (
    Segment,
    create_segment,
    free_path,
    load_summary,
    summary_path,
)
from kvstore.errors import CapacityExhausted, CorruptRecord, StorageError

if TYPE_CHECKING:
    from kvstore.engine.store import Engine

log = logging.getLogger("kvstore.engine")
PAGE = fmt.PAGE


def seal(eng: Engine, seg: Segment) -> None:
    assert seg.builder is not None, "sealing a sealed segment"
    eng._quiesce(seg)
    if eng.device.size(seg.handle) > seg.end:  # a recycled file: drop its old tail
        eng.device.truncate(seg.handle, seg.end)
    if seg.failed_at is not None:  # nothing from a failed write on was acknowledged
        seg.builder.drop_from(seg.failed_at // fmt.PAGE)
    summary = seg.builder.build(seg.end)
    eng.device.sync(seg.handle)
    eng.device.write_file_atomic(summary_path(eng.config.data_dir, seg.id), summary.encode())
    seg.sealed = True
    seg.builder = None


def roll(eng: Engine, span: int = 0) -> Segment:
    """Seal the active segment and return a new active one with room for ``span`` bytes."""
    if eng.active is not None:
        seal(eng, eng.active)
        eng.active = None
    if len(eng.segments) + 1 > eng.high_segments:
        hot = [hot_budget_bytes(eng.config, eng.high_segments, eng.max_segments,
                                eng.leases.budget_bytes)]
        for v in list(eng.segments.values()):  # oldest first; never one this roll creates
            if len(eng.segments) + (0 if _fits(eng, span) else 1) <= eng.low_segments:
                break
            _reclaim(eng, v, hot)
    if not _fits(eng, span):
        if len(eng.segments) + 1 > eng.max_segments:  # the lease budget rules this out
            raise CapacityExhausted("no segment can be reclaimed: leases pin the store")
        _next_segment(eng)
    assert eng.active is not None
    return eng.active


def _fits(eng: Engine, span: int) -> bool:
    seg = eng.active
    return seg is not None and not seg.broken and seg.end + span <= eng.config.segment_bytes


def _next_segment(eng: Engine) -> Segment:
    """Seal the active segment (if any) and open a fresh one, recycling a reclaimed file."""
    if eng.active is not None:
        seal(eng, eng.active)
        eng.active = None
    with eng._lock:
        reuse = eng.free_files.pop(0) if eng.free_files else None
        if reuse is not None:
            eng.counters["recycled_segments"] += 1
    seg = create_segment(eng.device, eng.config.data_dir, eng.next_segment_id,
                         eng.config.segment_bytes, eng.pool, eng._next_seqs(0), reuse)
    eng.next_segment_id += 1
    with eng._lock:
        eng.segments[seg.id] = seg
        eng.active = seg
    return seg


def _reclaim(eng: Engine, v: Segment, hot_left: list[int]) -> None:
    """Move ``v``'s pinned blocks (and hot ones while ``hot_left[0]`` lasts) forward, then
    retire it. While it is being moved, lookups take no new pins on its blocks."""
    now, wall = eng.leases.now(), time.time()
    with eng._lock:
        eng.leases.moving.add(v.id)
        digests = eng.index.segment_digests(v.id)
        # A key with a put in flight (reserved before this roll) is superseded: leave it.
        digests = [d for d in digests if d not in eng._pending]
        leased = [d for d in digests if eng.leases.pinned(d, now)]
        pinned = set(leased)
        hot = [d for d in digests if d not in pinned and eng.config.reinsert
               and eng.index.hits(d) > 0] if hot_left[0] > 0 else []
        wanted = {d: eng.index.get(d) for d in leased + hot}
    try:
        names = _names(eng, v, wanted) if wanted else {}
        for d in leased + hot:
            e = wanted[d]
            if e is None or (e.exp and e.exp <= wall):
                continue
            if d in pinned:
                if _move(eng, v, d, e, names.get(d)):
                    eng.counters["leased_moved_blocks"] += 1
            elif d in names:
                if fmt.record_span(fmt.header_len_for(*names[d], b""), e.length) <= hot_left[0]:
                    hot_left[0] -= _move(eng, v, d, e, names[d])
        _retire(eng, v)
    finally:
        with eng._lock:
            eng.leases.moving.discard(v.id)


def _names(eng: Engine, v: Segment, wanted: dict[bytes, Entry | None]) -> dict[bytes, tuple]:
    """(namespace, key) of the wanted blocks, from the segment's summary."""
    summary = load_summary(eng.device, eng.config.data_dir, v.id)
    out: dict[bytes, tuple] = {}
    if summary is None:
        return out
    for i, d in enumerate(summary.cols["digest"]):
        raw = bytes(d)
        if raw in wanted:
            out[raw] = (summary.namespaces[int(summary.cols["ns"][i])], summary.keys[i])
    return out


def _header_names(eng: Engine, v: Segment, e: Entry, digest: bytes) -> tuple | None:
    """(namespace, key) read from the record's header page, when the summary lacks them."""
    buf = eng.pool.acquire(PAGE)
    try:
        eng.device.read_into(v.handle, e.page * PAGE, buf.view[:PAGE])
        hdr = fmt.RecordHeader.decode(buf.view[:PAGE])
    except (CorruptRecord, StorageError):
        return None
    finally:
        eng.pool.release(buf)
    return (hdr.namespace, hdr.key) if fmt.digest_of(hdr.namespace, hdr.key) == digest else None


def _move(eng: Engine, v: Segment, d: bytes, e: Entry, names: tuple | None) -> int:
    """Read one block from ``v``, verify it and append it to the active segment (a fresh one
    when it does not fit). Returns the bytes written, 0 when the block could not be moved."""
    names = names or _header_names(eng, v, e, d)
    if names is None:
        log.warning("reclaim could not name block %s in segment %08x", d.hex(), v.id)
        return 0
    try:
        buf, hdr = eng._read_record(v, e, *names)
    except (CorruptRecord, StorageError) as exc:
        log.warning("reinsert skipped a bad block in segment %08x: %s", v.id, exc)
        return 0
    try:
        with eng._lock:
            if eng.index.get(d) != e:  # dropped meanwhile (a reader found it expired)
                return 0
        if not _fits(eng, hdr.span):
            if len(eng.segments) + 1 > eng.max_segments:
                # unreachable: a store without a segment beyond its high watermark moves nothing
                log.error("no room to move block %s out of segment %08x", d.hex(), v.id)
                return 0
            _next_segment(eng)
        eng._append(buf, hdr, hdr.span, d, e.ns, None)
        eng.counters["reinserted_blocks"] += 1
        return hdr.span
    finally:
        eng.pool.release(buf)


def _retire(eng: Engine, v: Segment) -> None:
    """Take ``v`` out of the index. Without readers its file is kept, renamed ``free-*``, to
    become a later segment (recycling); otherwise it goes when the last reader leaves."""
    with eng._lock:
        for d in eng.index.segment_digests(v.id):
            eng._drop(d, eng.index.get(d))
            eng.counters["evicted_blocks"] += 1
        del eng.segments[v.id]
        v.retired = True
        eng.counters["evicted_segments"] += 1
        log.info("reclaimed segment %08x", v.id)
        if v.refs == 0:
            free = free_path(eng.config.data_dir, v.id)
            eng.device.rename(v.path, free)  # first: a crash now leaves no segment to scan
            eng.device.unlink(summary_path(eng.config.data_dir, v.id))
            v.path = free
            eng.free_files.append(v)
            return
        eng.retired[v.id] = v
