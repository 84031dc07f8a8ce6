"""``Engine.check()``: cross-check the index, segments, DRAM tier, byte accounting and the
data directory (no segment or summary file the engine does not know).

Returns a list of problems (empty when consistent); never raises. Tests call it after every
case. ``deep=True`` also reads every indexed record and verifies its header, its checksum and
its chunk table (the per-chunk checksums ranged reads verify).
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.ranges import verify_chunks
from kvstore.engine.segments import parse_segment_name
from kvstore.errors import InsufficientStorage, no_space

if TYPE_CHECKING:
    from kvstore.engine.log import SegmentLog


# How often check() looks again for writes that completed and wait to be published.
_PUBLISH_POLL_SECONDS = 0.001


def check(lg: SegmentLog, *, deep: bool = False) -> list[str]:
    st = lg.state
    problems: list[str] = []
    try:
        lg.sealer.drain()  # rolled segments still being sealed (sealer.py) get sealed first
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        # a full file system is a state, not an inconsistency: the segment's records are
        # synced and reopening would scan it; the sealer retries at the next roll or close
        if not isinstance(exc, InsufficientStorage) and no_space(exc) is None:
            problems.append(f"sealing a rolled segment failed: {exc}")
    with lg.wlock, st.lock:
        for seg in lg.segments.values():  # let writes in flight land first
            lg.quiesce(seg)
        # ... and be published: a write can be complete while its writer waits for this lock
        # to publish it (no new reservation can come: wlock is held here)
        publish = threading.Condition(st.lock)
        deadline = time.monotonic() + limits.write_wait_seconds_max
        while lg.pending and time.monotonic() < deadline:
            publish.wait(_PUBLISH_POLL_SECONDS)
        counts: dict[int, int] = {}
        nbytes: dict[int, int] = {}
        ids = st.catalog.id_to_name()
        entries = list(st.index.items())
        for digest, e in entries:
            counts[e.ns] = counts.get(e.ns, 0) + 1
            nbytes[e.ns] = nbytes.get(e.ns, 0) + e.length
            owner = lg.segments.get(e.seg)
            if owner is None:
                problems.append(f"index entry {digest.hex()} points at missing segment {e.seg}")
                continue
            end = e.page * fmt.PAGE + fmt.PAGE
            if e.page < 1 or end > owner.end:
                problems.append(f"index entry {digest.hex()} beyond end of segment {e.seg}")
            if e.ns not in ids:
                problems.append(f"index entry {digest.hex()} in unknown namespace id {e.ns}")
        if len(entries) != len(st.index):
            problems.append(f"index length {len(st.index)} != entries {len(entries)}")
        live_counts = {k: v for k, v in st.ns_count.items() if v}
        if counts != live_counts:
            problems.append(f"namespace counts {live_counts} != index {counts}")
        if st.ns_bytes != nbytes:
            problems.append(f"namespace bytes {st.ns_bytes} != index {nbytes}")
        if lg.pending:
            problems.append(f"{len(lg.pending)} keys pending with no write in flight")
        if lg.active is None or lg.active.id not in lg.segments:
            problems.append("no active segment")
        for seg in lg.segments.values():
            if seg.retired:
                problems.append(f"retired segment {seg.id} still live")
            if seg.end > st.config.segment_bytes:
                problems.append(f"segment {seg.id} end {seg.end} over segment size")
            size = st.device.size(seg.handle)
            # a broken segment (a write failed: a full disk...) may end short of its reserved
            # end: nothing past the failure was acknowledged, and it is written no more
            if size != seg.end and not (seg is lg.active and size > seg.end) and \
                    not (seg.broken and size < seg.end):
                problems.append(f"segment {seg.id} file size {size} != end {seg.end}")
            if seg is lg.active and seg.builder is None:
                problems.append(f"segment {seg.id}: the active segment is sealed")
            if seg is not lg.active and seg.builder is not None and \
                    not lg.sealer.pending(seg):
                problems.append(f"segment {seg.id}: only the active segment, or one the sealer "
                                "still has to seal, may be unsealed")
        for seg in lg.retired.values():
            if seg.refs <= 0:
                problems.append(f"retired segment {seg.id} with no readers was not freed")
        if len(lg.segments) > st.budget.max:
            problems.append(f"{len(lg.segments)} segments over the budget of {st.budget.max}")
        files = len(lg.segments) + len(lg.retired) + len(lg.free_files)
        if files > st.budget.max + len(lg.retired):
            problems.append(f"{files} segment files over the budget of {st.budget.max}")
        for seg in lg.free_files:
            if seg.refs or not seg.retired:
                problems.append(f"free file of segment {seg.id} still referenced")
        used = sum(s.end for s in lg.segments.values())
        if used > st.config.capacity_bytes:
            problems.append(f"flash used {used} over capacity {st.config.capacity_bytes}")
        problems.extend(_foreign_files(lg))
        problems.extend(st.dram.check())
        problems.extend(st.leases.check())
        if deep:
            names = {i: n.encode() for i, n in ids.items()}
            for digest, e in entries:
                owner = lg.segments.get(e.seg)
                if owner is None or e.ns not in names:
                    continue
                problems.extend(_verify(lg, owner, e, digest))
    return problems


def _foreign_files(lg: SegmentLog) -> list[str]:
    """Segment and summary files in the data directory that this engine did not write: another
    process on the same directory, or files copied in by hand. Recovery would load them."""
    st = lg.state
    data_dir = st.config.data_dir
    known = {os.path.basename(s.path)
             for s in [*lg.segments.values(), *lg.retired.values(), *lg.free_files]}
    sealed = {s.id for s in lg.segments.values() if s.builder is None} | set(lg.retired)
    out = []
    try:
        names = st.device.listdir(data_dir)
    except OSError as exc:
        return [f"cannot list data directory {data_dir}: {exc}"]
    for name in names:
        if name.endswith(".kvs") and (name.startswith("seg-") or name.startswith("free-")):
            if name not in known:
                out.append(f"segment file {name} in {data_dir} is not one this engine wrote "
                           "(another process on this data directory?)")
        elif name.endswith(".sum") and name.startswith("seg-"):
            sid = parse_segment_name(name[:-4] + ".kvs")
            if sid is None or sid not in sealed:
                out.append(f"summary file {name} in {data_dir} belongs to no sealed segment "
                           "of this engine")
    return out


def _verify(lg: SegmentLog, seg: object, e: object, digest: bytes) -> list[str]:
    st = lg.state
    buf = st.pool.acquire(fmt.PAGE)
    try:
        st.device.read_into(seg.handle, e.page * fmt.PAGE, buf.view[: fmt.PAGE])  # type: ignore[attr-defined]
        hdr = fmt.RecordHeader.decode(buf.view[: fmt.PAGE])
    except Exception as exc:  # noqa: BLE001 - a checker reports, never raises
        return [f"block {digest.hex()}: unreadable header ({exc})"]
    finally:
        st.pool.release(buf)
    if fmt.digest_of(hdr.namespace, hdr.key) != digest:
        return [f"block {digest.hex()}: header names another block"]
    try:
        b, h = lg.records.read_record(seg, e, hdr.namespace, hdr.key,  # type: ignore[arg-type]
                                      plain=st.cipher.enabled)  # GCM-authenticated when keyed
        try:  # the chunk table ranged reads trust must match the verified payload
            if h.chunks:
                po = h.payload_offset
                verify_chunks(h, b.view[po : po + h.payload_len], 0)
        finally:
            st.pool.release(b)
    except Exception as exc:  # noqa: BLE001
        return [f"block {digest.hex()}: {exc}"]
    return []
