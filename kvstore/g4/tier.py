"""``G4Tier``: the engine's ``LowerTier`` over an object store (docs/ARCHITECTURE.md, "G4").

Books, all behind ``lock`` (taken after the engine state's lock when both are held, never the
other way round):

- ``index``: the engine's ``Index`` class reused, digest -> Entry(seg = local object id, page =
  the record's page inside the object, length, checksum, expiry, namespace id): 44 bytes a
  block;
- ``objects``: local id -> ``G4Object`` (name stamp, size, live blocks);
- ``pending``: blocks of retiring segments queued for upload, still readable from their
  pinned flash segment (so a block is never in neither tier while it moves);
- ``queue``: the segments to upload (bounded in count and bytes, ``limits.g4_spill_queue_*``);
- ``dropped``: (digest, stamp) records not yet appended to the local drop log: a block deleted
  or overwritten is forgotten in every object up to that stamp after a restart too.

The worker thread (``spill.py``) loads the index from the objects' manifests, uploads, GCs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.index import Entry, Index
from kvstore.engine.records import RecordIO
from kvstore.errors import CorruptRecord, StorageError
from kvstore.g4.store import G4Unavailable, ObjectStore

if TYPE_CHECKING:
    from kvstore.engine.segments import Segment
    from kvstore.engine.store import Engine

log = logging.getLogger("kvstore.g4")
PAGE = fmt.PAGE

COUNTERS = ("g4_spilled_blocks", "g4_spilled_bytes", "g4_objects_uploaded", "g4_spill_dropped_blocks",
            "g4_spill_deduped_blocks", "g4_upload_failures", "g4_hits", "g4_hits_pending",
            "g4_misses", "g4_unavailable", "g4_corrupt", "g4_read_bytes", "g4_gc_objects",
            "g4_forgotten_blocks", "g4_loaded_blocks")


@dataclass
class G4Object:
    stamp: int  # its name, and its age: a later stamp wins for the same digest
    size: int
    live: int = 0

    @property
    def name(self) -> str:
        return f"{self.stamp:016x}.kvp"

    @property
    def manifest(self) -> str:
        return f"{self.stamp:016x}.sum"


@dataclass
class SpillJob:
    seg: Segment
    digests: list[bytes]
    nbytes: int
    stamps: list[int] = field(default_factory=list)


class G4Tier:
    """Attach with ``G4Tier(store, engine).start()``; ``close()`` before the engine's."""

    def __init__(self, store: ObjectStore, engine: Engine, *,
                 spill_bytes_per_second: int = limits.g4_spill_bytes_per_second_default,
                 queue_segments_max: int = limits.g4_spill_queue_segments_max,
                 queue_bytes_max: int = limits.g4_spill_queue_bytes_max,
                 object_bytes_max: int = limits.g4_object_bytes_max,
                 gc_interval_seconds: float = limits.g4_gc_interval_seconds) -> None:
        self.store, self.engine = store, engine
        self.records: RecordIO = engine.records
        self.rate = spill_bytes_per_second
        self.queue_segments_max, self.queue_bytes_max = queue_segments_max, queue_bytes_max
        self.object_bytes_max = object_bytes_max
        self.gc_interval_seconds = gc_interval_seconds
        self.lock = threading.Lock()
        self.wake = threading.Event()  # work for the worker (a queued segment, a drop)
        self.stopping = threading.Event()  # close(): ends the worker's waits
        self.index = Index()
        self.objects: dict[int, G4Object] = {}
        self.next_local = 1
        # highest stamp handed out or loaded; starts at now, so a drop recorded while the index
        # loads covers every object already there
        self.stamp_hw = int(time.time() * 1000) << 16
        self.pending: dict[bytes, tuple[Segment, Entry]] = {}
        self.queue: deque[SpillJob] = deque()
        self.queued_bytes = 0
        self.dropped: list[tuple[bytes, int]] = []
        self.drop_log: dict[bytes, int] = {}  # what the drop log file holds (spill.py)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.latency: deque[float] = deque(maxlen=limits.g4_latency_samples)
        self.loaded = False
        self.closed = False
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> G4Tier:
        from kvstore.g4.spill import run_worker

        self.engine.attach_lower(self)
        self.thread = threading.Thread(target=run_worker, args=(self,), name="kvstore-g4",
                                       daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop the worker; queued segments are let go (their blocks evicted as without G4)."""
        with self.lock:
            self.closed = True
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(limits.g4_upload_timeout_seconds + 5)
        self.engine.attach_lower(None)
        with self.lock:
            jobs = list(self.queue)
            self.queue.clear()
            self.pending.clear()
            self.queued_bytes = 0
        for job in jobs:
            self.engine.log.unpin(job.seg)

    def new_stamp(self) -> int:
        """A stamp later than any seen: milliseconds since the epoch, shifted, plus a count.
        Caller holds ``lock``."""
        self.stamp_hw = max(self.stamp_hw + 1, int(time.time() * 1000) << 16)
        return self.stamp_hw

    def add_object(self, obj: G4Object) -> int:
        """Caller holds ``lock``."""
        local = self.next_local
        self.next_local += 1
        self.objects[local] = obj
        return local

    def remove_entry(self, digest: bytes, drop: bool) -> bool:
        """Forget ``digest`` (and record the drop for restarts when ``drop``). Caller holds
        ``lock``."""
        hit = self.pending.pop(digest, None) is not None
        e = self.index.remove(digest)
        if e is not None:
            obj = self.objects.get(e.seg)
            if obj is not None:
                obj.live -= 1
            hit = True
        if hit and drop:
            self.dropped.append((digest, self.stamp_hw))
            self.counters["g4_forgotten_blocks"] += 1
            self.wake.set()
        return hit

    # ------------------------------------------------------------------ LowerTier
    def retiring(self, seg: Segment, entries: list[tuple[bytes, Entry]]) -> bool:
        with self.lock:
            fresh = []
            for d, e in entries:
                g = self.index.get(d)
                if g is not None and (g.length, g.csum) == (e.length, e.csum):
                    self.counters["g4_spill_deduped_blocks"] += 1  # already below
                    continue
                fresh.append((d, e))
            if not fresh:
                return False
            nbytes = sum(e.length for _d, e in fresh)
            if (self.closed or len(self.queue) >= self.queue_segments_max
                    or self.queued_bytes + nbytes > self.queue_bytes_max):
                self.counters["g4_spill_dropped_blocks"] += len(fresh)
                return False
            for d, e in fresh:
                self.pending[d] = (seg, e)
            self.queue.append(SpillJob(seg, [d for d, _e in fresh], nbytes))
            self.queued_bytes += nbytes
        self.wake.set()
        return True

    def superseded(self, digest: bytes, length: int, csum: int) -> None:
        with self.lock:
            if not self.loaded:  # the index may not hold it yet: the loader applies this
                self.dropped.append((digest, self.stamp_hw))
                return
            p = self.pending.get(digest)
            g = self.index.get(digest)
            same = (g is not None and (g.length, g.csum) == (length, csum)) or (
                p is not None and (p[1].length, p[1].csum) == (length, csum))
            if (p is not None or g is not None) and not same:
                self.remove_entry(digest, drop=True)

    def present_many(self, digests: list[bytes], now: int) -> np.ndarray:
        with self.lock:
            out = self.index.present_many(digests, now)
            if self.pending:
                for i, d in enumerate(digests):
                    if not out[i] and d in self.pending:
                        e = self.pending[d][1]
                        out[i] = e.exp == 0 or e.exp > now
            return out

    def forget(self, digest: bytes) -> bool:
        with self.lock:
            return self.remove_entry(digest, drop=True)

    def holds(self, digest: bytes, length: int, csum: int) -> bool:
        with self.lock:
            p = self.pending.get(digest)
            e = self.index.get(digest) if p is None else p[1]
            return e is not None and (e.length, e.csum) == (length, csum)

    def forget_namespace(self, ns_id: int) -> None:
        with self.lock:
            gone = [d for d, e in self.index.items() if e.ns == ns_id]
            gone += [d for d, (_s, e) in self.pending.items() if e.ns == ns_id]
            for d in gone:
                self.remove_entry(d, drop=True)

    def fetch(self, digest: bytes, nsb: bytes, kb: bytes) -> tuple[bytes, fmt.RecordHeader] | None:
        with self.lock:
            p = self.pending.get(digest)
            e = self.index.get(digest) if p is None else None
            obj = None if e is None else self.objects.get(e.seg)
        if p is not None:
            return self._fetch_pending(digest, p[0], p[1], nsb, kb)
        if e is None or obj is None:
            return None
        t0 = time.perf_counter()
        end = min(obj.size, e.page * PAGE + PAGE + fmt.align_up(e.length))
        try:
            raw = self.store.get_range(obj.name, e.page * PAGE, end)
        except G4Unavailable as exc:
            with self.lock:
                self.counters["g4_unavailable"] += 1
            log.debug("G4 read of %s failed: %s", digest.hex(), exc)
            return None
        try:
            hdr = verify(raw, nsb, kb, e)
        except CorruptRecord as exc:
            log.warning("G4 block %s in %s fails verification (%s): dropped", digest.hex(),
                        obj.name, exc)
            with self.lock:
                self.counters["g4_corrupt"] += 1
                if self.index.get(digest) == e:
                    self.remove_entry(digest, drop=True)
            return None
        with self.lock:
            self.latency.append(time.perf_counter() - t0)
            self.counters["g4_hits"] += 1
            self.counters["g4_read_bytes"] += e.length
        return raw, hdr

    def _fetch_pending(self, digest: bytes, seg: Segment, e: Entry, nsb: bytes,
                       kb: bytes) -> tuple[bytes, fmt.RecordHeader] | None:
        """A block queued for upload: read from its pinned (retired) flash segment."""
        st = self.engine.state
        with st.lock:
            if seg.refs <= 0:
                return None
            seg.refs += 1
        try:
            buf, hdr = self.records.read_record(seg, e, nsb, kb)
        except (CorruptRecord, StorageError):
            return None
        finally:
            self.engine.log.unpin(seg)
        try:
            record = bytes(buf.view[:hdr.span])
        finally:
            st.pool.release(buf)
        with self.lock:
            self.counters["g4_hits_pending"] += 1
        return record, hdr

    def stats(self) -> dict[str, int | float]:
        with self.lock:
            out: dict[str, int | float] = dict(self.counters)
            lat = sorted(self.latency)
            out.update(
                g4_blocks=len(self.index) + len(self.pending), g4_objects=len(self.objects),
                g4_upload_queue_segments=len(self.queue), g4_upload_queue_bytes=self.queued_bytes,
                g4_up=int(self.store.breaker.up and self.loaded),
                g4_read_p50_ms=lat[len(lat) // 2] * 1e3 if lat else 0.0,
                g4_read_p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else 0.0,
            )
            return out


def verify(raw: bytes, nsb: bytes, kb: bytes, e: Entry) -> fmt.RecordHeader:
    """The record in ``raw`` names the block, agrees with the index and its stored payload's
    xxh3 matches (for an encrypted record: its ciphertext's, ``stored_checksum``; the read
    decrypts and authenticates it after); its header. Raises CorruptRecord."""
    if len(raw) < PAGE:
        raise CorruptRecord("short G4 record")
    hdr = fmt.RecordHeader.decode(memoryview(raw)[:PAGE])
    RecordIO.check_header(hdr, nsb, kb, e)
    po = hdr.payload_offset
    payload = raw[po:po + e.length]
    if len(payload) != e.length:
        raise CorruptRecord("G4 record truncated")
    if fmt.checksum(payload) != hdr.stored_checksum:
        raise CorruptRecord("payload checksum mismatch")
    if len(raw) < hdr.span:
        raise CorruptRecord("G4 record shorter than its span")
    return hdr
