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
    from kvstore.engine.log import SegmentLog

log = logging.getLogger("kvstore.engine")
PAGE = fmt.PAGE


def seal(lg: SegmentLog, seg: Segment) -> None:
    """Write ``seg``'s summary once its writes have landed. Runs under ``wlock`` (inline) or
    on the sealer's thread (``sealer.py``: no append reaches a rolled segment any more); the
    builder changes under the state's lock, where ``SegmentLog.summaries`` reads it."""
    st = lg.state
    assert seg.builder is not None, "sealing a sealed segment"
    lg.quiesce(seg)
    if st.device.size(seg.handle) > seg.end:  # a recycled file: drop its old tail
        st.device.truncate(seg.handle, seg.end)
    with st.lock:
        if seg.failed_at is not None:  # nothing from a failed write on was acknowledged
            seg.builder.drop_from(seg.failed_at // fmt.PAGE)
        summary = seg.builder.build(seg.end)
    st.device.sync(seg.handle)
    st.device.write_file_atomic(summary_path(st.config.data_dir, seg.id), summary.encode())
    with st.lock:
        seg.sealed = True
        seg.builder = None


def roll(lg: SegmentLog, span: int = 0, *, defer: bool = False) -> Segment:
    """Seal the active segment and return a new active one with room for ``span`` bytes.
    ``defer``: hand the old segment to the sealer's thread (``sealer.py``; the batched write
    path, which waits for it before its call returns) instead of sealing it here."""
    st = lg.state
    lg.sealer.retry_failed()  # a seal that failed in the background is retried first
    deferred = None
    if lg.active is not None:
        old = lg.active
        if defer and lg.sealer.defer(old):
            deferred = old
        else:
            seal(lg, old)
        with st.lock:
            lg.active = None
    try:
        return _roll_on(lg, span)
    except BaseException:
        # e.g. no space for the next segment: the deferred one stays active (unsealed) and
        # the next append rolls again, as after an inline seal that failed
        if deferred is not None and lg.sealer.take_back(deferred) and lg.active is None \
                and not deferred.retired and deferred.id in lg.segments:
            with st.lock:
                lg.active = deferred
        raise


def _roll_on(lg: SegmentLog, span: int) -> Segment:
    """``roll`` once the old active segment is sealed or queued: reclaim, then a new one."""
    st = lg.state
    if len(lg.segments) + 1 > st.budget.high:
        hot = [hot_budget_bytes(st.config, st.budget.high, st.budget.max,
                                st.leases.budget_bytes)]
        for v in list(lg.segments.values()):  # oldest first; never one this roll creates
            if len(lg.segments) + (0 if lg.fits(span) else 1) <= st.budget.low:
                break
            lg.sealer.seal_now(v)  # a tiny store may reclaim the segment it just rolled
            _reclaim(lg, v, hot)
    if not lg.fits(span):
        if len(lg.segments) + 1 > st.budget.max:  # the lease budget rules this out
            raise CapacityExhausted("no segment can be reclaimed: leases pin the store")
        _next_segment(lg)
    assert lg.active is not None
    return lg.active


def _next_segment(lg: SegmentLog) -> Segment:
    """Seal the active segment (if any) and open a fresh one, recycling a reclaimed file."""
    st = lg.state
    if lg.active is not None:
        seal(lg, lg.active)
        lg.active = None
    with st.lock:
        reuse = lg.free_files.pop(0) if lg.free_files else None
        if reuse is not None:
            st.counters["recycled_segments"] += 1
    seg = create_segment(st.device, st.config.data_dir, lg.next_segment_id,
                         st.config.segment_bytes, st.pool, lg.next_seqs(0), reuse)
    lg.next_segment_id += 1
    with st.lock:
        lg.segments[seg.id] = seg
        lg.active = seg
    return seg


def _reclaim(lg: SegmentLog, v: Segment, hot_left: list[int]) -> None:
    """Move ``v``'s pinned blocks (and hot ones while ``hot_left[0]`` lasts) forward, then
    retire it. While it is being moved, lookups take no new pins on its blocks."""
    st = lg.state
    now, wall = st.leases.now(), time.time()
    with st.lock:
        st.leases.moving.add(v.id)
        digests = st.index.segment_digests(v.id)
        # A key with a put in flight (reserved before this roll) is superseded: leave it.
        digests = [d for d in digests if d not in lg.pending]
        leased = [d for d in digests if st.leases.pinned(d, now)]
        pinned = set(leased)
        hot = [d for d in digests if d not in pinned and st.config.reinsert
               and st.index.hits(d) > 0] if hot_left[0] > 0 else []
        wanted = {d: st.index.get(d) for d in leased + hot}
    try:
        names = _names(lg, v, wanted) if wanted else {}
        for d in leased + hot:
            e = wanted[d]
            if e is None or (e.exp and e.exp <= wall):
                continue
            if d in pinned:
                if _move(lg, v, d, e, names.get(d)):
                    st.counters["leased_moved_blocks"] += 1
            elif d in names:
                if fmt.record_span(fmt.header_len_for(*names[d], b""), e.length) <= hot_left[0]:
                    hot_left[0] -= _move(lg, v, d, e, names[d])
        _retire(lg, v)
    finally:
        with st.lock:
            st.leases.moving.discard(v.id)


def _names(lg: SegmentLog, v: Segment, wanted: dict[bytes, Entry | None]) -> dict[bytes, tuple[bytes, bytes]]:
    """(namespace, key) of the wanted blocks, from the segment's summary."""
    st = lg.state
    summary = load_summary(st.device, st.config.data_dir, v.id)
    out: dict[bytes, tuple[bytes, bytes]] = {}
    if summary is None:
        return out
    for i, d in enumerate(summary.cols["digest"]):
        raw = bytes(d)
        if raw in wanted:
            out[raw] = (summary.namespaces[int(summary.cols["ns"][i])], summary.keys[i])
    return out


def _header_names(lg: SegmentLog, v: Segment, e: Entry, digest: bytes) -> tuple[bytes, bytes] | None:
    """(namespace, key) read from the record's header page, when the summary lacks them."""
    st = lg.state
    buf = st.pool.acquire(PAGE)
    try:
        st.device.read_into(v.handle, e.page * PAGE, buf.view[:PAGE])
        hdr = fmt.RecordHeader.decode(buf.view[:PAGE])
    except (CorruptRecord, StorageError):
        return None
    finally:
        st.pool.release(buf)
    return (hdr.namespace, hdr.key) if fmt.digest_of(hdr.namespace, hdr.key) == digest else None


def _move(lg: SegmentLog, v: Segment, d: bytes, e: Entry, names: tuple[bytes, bytes] | None) -> int:
    """Read one block from ``v``, verify it and append it to the active segment (a fresh one
    when it does not fit). Returns the bytes written, 0 when the block could not be moved."""
    st = lg.state
    names = names or _header_names(lg, v, e, d)
    if names is None:
        log.warning("reclaim could not name block %s in segment %08x", d.hex(), v.id)
        return 0
    try:
        buf, hdr = lg.records.read_record(v, e, *names)
    except (CorruptRecord, StorageError) as exc:
        log.warning("reinsert skipped a bad block in segment %08x: %s", v.id, exc)
        return 0
    try:
        with st.lock:
            if st.index.get(d) != e:  # dropped meanwhile (a reader found it expired)
                return 0
        if not lg.fits(hdr.span):
            if len(lg.segments) + 1 > st.budget.max:
                # unreachable: a store without a segment beyond its high watermark moves nothing
                log.error("no room to move block %s out of segment %08x", d.hex(), v.id)
                return 0
            _next_segment(lg)
        lg.append(buf, hdr, hdr.span, d, e.ns, None)
        st.counters["reinserted_blocks"] += 1
        return hdr.span
    finally:
        st.pool.release(buf)


def _retire(lg: SegmentLog, v: Segment) -> None:
    """Take ``v`` out of the index. Without readers its file is kept, renamed ``free-*``, to
    become a later segment (recycling); otherwise it goes when the last reader leaves."""
    st = lg.state
    with st.lock:
        digests = st.index.segment_digests(v.id)
        spilled = _offer_lower(lg, v, digests)
        for d in digests:
            st.drop(d, st.index.get(d))
            st.counters["evicted_blocks"] += 1
        del lg.segments[v.id]
        v.retired = True
        st.counters["evicted_segments"] += 1
        log.info("reclaimed segment %08x", v.id)
        if v.refs == 0:
            free = free_path(st.config.data_dir, v.id)
            st.device.rename(v.path, free)  # first: a crash now leaves no segment to scan
            st.device.unlink(summary_path(st.config.data_dir, v.id))
            v.path = free
            lg.free_files.append(v)
            return
        if spilled:  # renamed now, so that a crash before the upload never revives its blocks
            free = free_path(st.config.data_dir, v.id)
            st.device.rename(v.path, free)
            v.path = free
        lg.retired[v.id] = v


def _offer_lower(lg: SegmentLog, v: Segment, digests: list[bytes]) -> bool:
    """Hand the live blocks of a retiring segment to the tier below flash (G4), which queues
    them for upload and holds a pin on ``v`` until done. Caller holds the state's lock."""
    st = lg.state
    if st.lower is None:
        return False
    now = time.time()
    live = [(d, e) for d in digests
            if (e := st.index.get(d)) is not None and not (e.exp and e.exp <= now)]
    if not live or not st.lower.retiring(v, live):
        return False
    v.refs += 1  # released by the tier (log.unpin) once uploaded
    return True
