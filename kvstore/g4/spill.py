"""The G4 worker thread: load the index from manifests, upload queued segments, GC.

Objects under the prefix, named by stamp (``G4Object``): ``<stamp>.kvp``, the packed records
(each exactly as it lay on flash: header page, payload, chunk checksums: a G4 read verifies
what a flash read verifies, and an encrypted payload stays as it was written), and
``<stamp>.sum``, its manifest, a segment summary (``engine/summary.py``) whose pages are
offsets inside the object. The manifest is written after its object and deleted before it, so
a manifest always names an object that exists. On start the worker lists the manifests, loads
them in stamp order (a later object wins for the same block), skips blocks the local drop log
(``g4-dropped.log`` in the data directory: digest, stamp) says were deleted or overwritten up
to that stamp, and skips expired ones.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.index import Entry
from kvstore.engine.segments import load_summary
from kvstore.engine.summary import SegmentSummary, SummaryBuilder
from kvstore.errors import CorruptRecord, StorageError
from kvstore.g4.store import G4NotFound, G4Unavailable
from kvstore.g4.tier import G4Object, G4Tier, SpillJob

if TYPE_CHECKING:
    from kvstore.engine.segments import Segment

log = logging.getLogger("kvstore.g4")
PAGE = fmt.PAGE
DROP_LOG = "g4-dropped.log"
_DROP_REC = 24  # digest (16) + stamp (8, little-endian)


def run_worker(t: G4Tier) -> None:
    last_gc = time.monotonic()
    bucket = [time.monotonic()]  # the token bucket's next free instant
    while not t.closed:
        try:
            if not t.loaded:
                load(t)
            flush_dropped(t)
            job = t.queue[0] if t.queue else None
            if job is not None:
                upload(t, job, bucket)
                finish(t, job)
            sweep = time.monotonic() - last_gc >= t.gc_interval_seconds
            if sweep or any(o.live <= 0 for o in list(t.objects.values())):
                gc(t, expired=sweep)
                if sweep:
                    last_gc = time.monotonic()
        except G4Unavailable as exc:
            with t.lock:
                t.counters["g4_upload_failures"] += 1
            log.warning("G4 unavailable: %s (retrying in %gs)", exc, limits.g4_down_seconds)
            t.stopping.wait(limits.g4_down_seconds)
            continue
        except Exception:  # never let the worker die: log and go on
            log.exception("G4 worker step failed")
            t.stopping.wait(limits.g4_down_seconds)
        if not t.queue:
            t.wake.wait(0.5)
            t.wake.clear()
    flush_dropped(t)


# ---------------------------------------------------------------------- start: the index
def _drop_path(t: G4Tier) -> str:
    return os.path.join(t.engine.config.data_dir, DROP_LOG)


def read_drop_log(t: G4Tier) -> dict[bytes, int]:
    raw = t.engine.device.read_file(_drop_path(t)) or b""
    out: dict[bytes, int] = {}
    for i in range(0, len(raw) - _DROP_REC + 1, _DROP_REC):
        d, s = raw[i:i + 16], int.from_bytes(raw[i + 16:i + 24], "little")
        out[d] = max(out.get(d, 0), s)
    return out


def load(t: G4Tier) -> None:
    """Rebuild the index from the manifests (raises G4Unavailable: retried). Every request
    first, then the index in one step: a load cut short by G4 leaves nothing half-loaded."""
    listed = t.store.list("")
    sizes = {n: s for n, s in listed if n.endswith(".kvp")}
    found: list[tuple[G4Object, SegmentSummary]] = []
    for name in sorted(n for n, _s in listed if n.endswith(".sum")):
        try:
            stamp = int(name[:-4], 16)
        except ValueError:
            continue  # not ours
        obj = G4Object(stamp, sizes.get(f"{stamp:016x}.kvp", -1))
        if obj.size < 0:
            with contextlib.suppress(G4NotFound):
                t.store.delete(name)  # a manifest without its object: never indexed
            continue
        try:
            found.append((obj, SegmentSummary.decode(t.store.get(name))))
        except (CorruptRecord, G4NotFound, ValueError, KeyError, TypeError) as exc:
            log.warning("G4 manifest %s unreadable (%s): its object is ignored", name, exc)
    drops = read_drop_log(t)
    with t.engine.state.lock:
        ns_ids = {name.encode(): i for i, name in t.engine.state.catalog.id_to_name().items()}
    used: dict[bytes, int] = {}
    now = time.time()
    seen = 0  # t.dropped is only flushed by this thread: what it holds past seen is new
    for obj, summary in found:
        stamp = obj.stamp
        with t.lock:
            for d, s in t.dropped[seen:]:  # deleted or overwritten while loading
                drops[d] = max(drops.get(d, 0), s)
            seen = len(t.dropped)
            local = t.add_object(obj)
            c = summary.cols
            for i in range(summary.count):
                ns_id = ns_ids.get(summary.namespaces[int(c["ns"][i])])
                if ns_id is None:
                    continue  # its namespace was deleted: the block went with it
                d = bytes(c["digest"][i])
                if drops.get(d, -1) >= stamp:
                    used[d] = drops[d]
                    continue
                exp = math.ceil(float(c["expires"][i]))
                if exp and exp <= now:
                    continue
                old = t.index.insert(d, Entry(local, int(c["page"][i]), int(c["length"][i]),
                                              int(c["checksum"][i]), exp, ns_id))
                if old is not None and old.seg in t.objects:
                    t.objects[old.seg].live -= 1
                obj.live += 1
                t.counters["g4_loaded_blocks"] += 1
            t.stamp_hw = max(t.stamp_hw, stamp)
    with t.lock:
        t.drop_log = used  # compacted: only drops that still hide a block
        t.dropped.extend(used.items())
        t.loaded = True
    log.info("G4 index loaded: %d blocks in %d objects", len(t.index), len(t.objects))


def flush_dropped(t: G4Tier) -> None:
    """Persist new drop records (the whole log, rewritten atomically: it stays small)."""
    with t.lock:
        new, t.dropped = t.dropped, []
        if not new:
            return
        for d, s in new:
            t.drop_log[d] = max(t.drop_log.get(d, 0), s)
        raw = b"".join(d + s.to_bytes(8, "little") for d, s in t.drop_log.items())
    try:
        t.engine.device.write_file_atomic(_drop_path(t), raw)
    except StorageError as exc:
        log.error("could not write the G4 drop log: %s", exc)


# ---------------------------------------------------------------------- spill
def _throttle(t: G4Tier, nbytes: int, bucket: list[float]) -> None:
    now = time.monotonic()
    start = max(now, bucket[0])
    bucket[0] = start + nbytes / t.rate
    if start > now:
        t.stopping.wait(start - now)  # only a close() ends it early


def upload(t: G4Tier, job: SpillJob, bucket: list[float]) -> None:
    """Pack the job's still-pending records into objects of at most ``object_bytes_max`` and
    upload each with its manifest; index what is still pending once both landed."""
    seg = job.seg
    st = t.engine.state
    summary = load_summary(st.device, st.config.data_dir, seg.id)
    names: dict[bytes, tuple[bytes, bytes]] = {}
    if summary is not None:
        want = set(job.digests)
        for i, d in enumerate(summary.cols["digest"]):
            raw = bytes(d)
            if raw in want:
                names[raw] = (summary.namespaces[int(summary.cols["ns"][i])], summary.keys[i])
    pack = bytearray()
    members: list[tuple[bytes, int, Entry, fmt.RecordHeader, bytes, bytes]] = []
    for d in job.digests:
        with t.lock:
            p = t.pending.get(d)
        if p is None or p[0] is not seg or d not in names:
            continue
        e = p[1]
        try:
            buf, hdr = t.records.read_record(seg, e, *names[d])
        except (CorruptRecord, StorageError) as exc:
            log.warning("spill skipped block %s of segment %08x: %s", d.hex(), seg.id, exc)
            continue
        try:
            if members and len(pack) + hdr.span > t.object_bytes_max:
                _put_pack(t, seg, pack, members, bucket)
                pack, members = bytearray(), []
            members.append((d, len(pack) // PAGE, e, hdr, *names[d]))
            pack += buf.view[:hdr.span]
        finally:
            st.pool.release(buf)
    if members:
        _put_pack(t, seg, pack, members, bucket)


def _put_pack(t: G4Tier, seg: Segment, pack: bytearray,
              members: list[tuple[bytes, int, Entry, fmt.RecordHeader, bytes, bytes]],
              bucket: list[float]) -> None:
    with t.lock:  # the stamp first: a drop from now on covers this object after a restart
        stamp = t.new_stamp()
        members = [m for m in members if (p := t.pending.get(m[0])) is not None and p[0] is seg]
    if not members:
        return
    obj = G4Object(stamp, len(pack))
    builder = SummaryBuilder(stamp)
    for d, page, e, hdr, nsb, kb in members:
        builder.add(d, nsb, kb, page, e.length, e.csum, hdr.seq, hdr.created, hdr.expires,
                    hdr.flags)
    _throttle(t, len(pack), bucket)
    t.store.put(obj.name, pack)
    t.store.put(obj.manifest, builder.build(len(pack)).encode())
    with t.lock:
        local = t.add_object(obj)
        for d, page, e, _hdr, _n, _k in members:
            p = t.pending.get(d)
            if p is None or p[0] is not seg:
                continue  # overwritten or deleted meanwhile (its drop record covers it)
            del t.pending[d]
            old = t.index.insert(d, Entry(local, page, e.length, e.csum, e.exp, e.ns))
            if old is not None and old.seg in t.objects:
                t.objects[old.seg].live -= 1
            obj.live += 1
            t.counters["g4_spilled_blocks"] += 1
            t.counters["g4_spilled_bytes"] += e.length
        t.counters["g4_objects_uploaded"] += 1


def finish(t: G4Tier, job: SpillJob) -> None:
    """The job is done: forget what could not be uploaded, let the segment go."""
    with t.lock:
        if t.queue and t.queue[0] is job:
            t.queue.popleft()
            t.queued_bytes -= job.nbytes
        for d in job.digests:
            p = t.pending.get(d)
            if p is not None and p[0] is job.seg:
                del t.pending[d]
    t.engine.log.unpin(job.seg)


# ---------------------------------------------------------------------- GC
def gc(t: G4Tier, *, expired: bool) -> None:
    """Delete objects with no live block (after sweeping expired blocks when ``expired``)."""
    with t.lock:
        if expired:
            now = int(time.time())
            for d, e in list(t.index.items()):
                if e.exp and e.exp <= now:
                    t.index.remove(d)
                    if e.seg in t.objects:
                        t.objects[e.seg].live -= 1
        empty = [(local, o) for local, o in t.objects.items() if o.live <= 0]
    for local, o in empty:
        for name in (o.manifest, o.name):  # the manifest first: it never names a missing object
            with contextlib.suppress(G4NotFound):
                t.store.delete(name)
        with t.lock:
            if local in t.objects and t.objects[local].live <= 0:
                del t.objects[local]
                t.counters["g4_gc_objects"] += 1
