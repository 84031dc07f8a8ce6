"""Segment roll and capacity reclaim (whole segments, oldest first, Navy-style reinsertion).

Called with the engine's write lock held. When the active segment is full it is sealed (its
summary written), and if the store would then hold more than the high watermark of segments,
the oldest sealed segments are reclaimed down to the low watermark. Before a segment goes,
its blocks that were read since they were written (hit counter > 0) or that are leased by a
lookup are read back, verified, and appended to the new active segment, within a byte budget
(``limits.reinsert_fraction_max`` of a segment), leased blocks first.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.device import AlignedBuffer
from kvstore.engine.index import Entry
from kvstore.engine.segments import (
    Segment,
    create_segment,
    free_path,
    load_summary,
    summary_path,
)
from kvstore.errors import CorruptRecord, StorageError

if TYPE_CHECKING:
    from kvstore.engine.store import Engine

log = logging.getLogger("kvstore.engine")


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


def roll(eng: Engine) -> Segment:
    if eng.active is not None:
        seal(eng, eng.active)
        eng.active = None
    need = len(eng.segments) + 1
    keep: list[tuple[bytes, Entry, AlignedBuffer, fmt.RecordHeader]] = []
    if need > eng.high_segments:
        victims = list(eng.segments.values())[: need - eng.low_segments]
        budget = int(limits.reinsert_fraction_max * eng.config.segment_bytes) - fmt.PAGE
        for v in victims:
            if eng.config.reinsert:
                budget = _collect_reinserts(eng, v, budget, keep)
            _retire(eng, v)
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
    for digest, e, buf, hdr in keep:
        try:
            if seg.end + hdr.span <= eng.config.segment_bytes:
                eng._append(buf, hdr, hdr.span, digest, e.ns, None)
                eng.counters["reinserted_blocks"] += 1
        finally:
            eng.pool.release(buf)
    return seg


def _collect_reinserts(eng: Engine, v: Segment, budget: int,
                       keep: list[tuple[bytes, Entry, AlignedBuffer, fmt.RecordHeader]]) -> int:
    now = time.time()
    with eng._lock:
        digests = eng.index.segment_digests(v.id)
        leased = [d for d in digests if eng.leases.get(d, 0.0) > now]
        hot = [d for d in digests if d not in eng.leases and eng.index.hits(d) > 0]
        wanted = {d: eng.index.get(d) for d in leased + hot}
    if not wanted:
        return budget
    summary = load_summary(eng.device, eng.config.data_dir, v.id)
    if summary is None:
        return budget
    names = {}
    for i, d in enumerate(summary.cols["digest"]):
        raw = bytes(d)
        if raw in wanted:
            names[raw] = (summary.namespaces[int(summary.cols["ns"][i])], summary.keys[i])
    for d in leased + hot:
        e = wanted[d]
        if e is None or d not in names:
            continue
        span = fmt.record_span(fmt.header_len_for(*names[d], b""), e.length)
        if span > budget:
            continue
        try:
            buf, hdr = eng._read_record(v, e, *names[d])
        except (CorruptRecord, StorageError) as exc:
            log.warning("reinsert skipped a bad block in segment %08x: %s", v.id, exc)
            continue
        budget -= hdr.span
        keep.append((d, e, buf, hdr))
    return budget


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
