"""The flash engine: a log-structured store of KV blocks (Bitcask / CacheLib Navy style).

Synchronous and thread-safe. Two locks: ``_wlock`` serializes appends (puts, deletes,
reinsertion, segment roll and reclaim); ``_lock`` guards the index, segments, DRAM tier,
catalog and counters and is never held across device I/O. Lock order: ``_wlock`` then
``_lock``. See docs/ENGINE_API.md for the public contract and recovery.py for open().
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.catalog import CATALOG_FILE, Catalog
from kvstore.engine.device import (
    AlignedBuffer,
    BufferPool,
    Device,
    StagedPayload,
    is_aligned_view,
)
from kvstore.engine.dram import DramTier
from kvstore.engine.index import Entry, Index
from kvstore.engine.leases import Leases, lease_budget_bytes
from kvstore.engine.lockfile import DirLock
from kvstore.engine.reads import BlockView, EngineReads, check_batch
from kvstore.engine.segments import Segment, load_summary
from kvstore.engine.types import BlockMeta, EngineConfig, NamespaceInfo, PutResult
from kvstore.errors import (
    ChecksumMismatch,
    EntityTooLarge,
    InvalidArgument,
    LimitExceeded,
    NamespaceNotEmpty,
    StorageError,
)
from kvstore.keys import validate_key

log = logging.getLogger("kvstore.engine")
PAGE = fmt.PAGE

__all__ = ["BlockView", "Engine", "load_segment_summary"]

STAT_NAMES = ("puts", "puts_existing", "gets", "hits_dram", "hits_flash", "misses",
              "bytes_written", "bytes_read", "checksum_failures", "evicted_segments",
              "evicted_blocks", "reinserted_blocks", "expired_blocks", "deletes", "io_errors", "heads",
              "recycled_segments", "promoted_blocks", "flash_bytes_read", "leases_limited",
              "leased_moved_blocks")


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A validated put, ready to be written."""

    ns: str
    key: str
    ns_id: int
    digest: bytes
    hdr: fmt.RecordHeader
    data: memoryview
    staged: memoryview | None = None  # page-aligned, padded payload to write in place


class Engine(EngineReads):
    """Open with ``Engine.open(config, device)``; the constructor does no I/O."""

    def __init__(self, config: EngineConfig, device: Device) -> None:
        self.config = config
        self.device = device
        self.pool = BufferPool()
        self.index = Index()
        self.dram = DramTier(config.dram_bytes)
        self.catalog = Catalog()
        self.segments: dict[int, Segment] = {}  # live (not retired), ordered by id
        self.retired: dict[int, Segment] = {}  # reclaimed, waiting for readers to let go
        self.free_files: list[Segment] = []  # reclaimed files (still open) to recycle
        self.active: Segment | None = None
        self.next_segment_id = 1
        self.next_seq = 1
        self.ns_count: dict[int, int] = {}
        self.counters = dict.fromkeys(STAT_NAMES, 0)
        self._lock = threading.RLock()
        self._wlock = threading.Lock()
        self._io_done = threading.Condition(self._lock)
        self._pending: set[bytes] = set()  # digests reserved in the log, not yet published
        self._closed = False
        self.dir_lock: DirLock | None = None  # held from open() to close()
        max_segs = config.capacity_bytes // config.segment_bytes
        self.max_segments = max_segs
        self.high_segments = max(2, min(max_segs, int(config.high_watermark * max_segs)))
        self.low_segments = max(1, min(self.high_segments - 1, int(config.low_watermark * max_segs)))
        self.leases = Leases(lease_budget_bytes(config, self.high_segments, max_segs),
                             limits.leased_blocks_max)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, config: EngineConfig, device: Device) -> Engine:
        from kvstore.engine.recovery import recover

        eng = cls(config, device)
        # One owner per data directory, before recovery reads anything (lockfile.py).
        eng.dir_lock = device.lock_dir(config.data_dir)
        try:
            recover(eng)
        except BaseException:
            eng.dir_lock.release()
            raise
        log.info("engine open: %d blocks in %d segments on %s (%s)", len(eng.index),
                 len(eng.segments), config.data_dir, device.name)
        return eng

    def close(self) -> None:
        """Sync and close files. The active segment stays unsealed: reopening scans it and keeps
        appending to it, so repeated restarts waste no space."""
        with self._wlock:
            if self.active is not None and not self._closed:
                with contextlib.suppress(StorageError):
                    self._quiesce(self.active)
                    # drop the preallocated tail: a clean file ends at its last record
                    self.device.truncate(self.active.handle, self.active.end)
        with self._wlock, self._lock:
            if self._closed:
                return
            self._closed = True
            for seg in list(self.segments.values()) + list(self.retired.values()):
                with contextlib.suppress(StorageError):
                    self.device.sync(seg.handle)
                self.device.close_handle(seg.handle)
            for seg in self.free_files:
                self.device.close_handle(seg.handle)
            self.segments.clear()
            self.free_files.clear()
            self.dram.clear()
            self.pool.close()
            if self.dir_lock is not None:
                self.dir_lock.release()  # last: every file is synced and closed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def device_name(self) -> str:
        return self.device.name

    def _path(self, name: str) -> str:
        return os.path.join(self.config.data_dir, name)

    # ------------------------------------------------------------------ namespaces
    def create_namespace(self, name: str, *, owner: str = "", layout: dict | None = None,
                         block_bytes: int = 0) -> NamespaceInfo:
        with self._lock:
            info = self.catalog.create(name, owner, layout, block_bytes)
            self._save_catalog()
            return info

    def delete_namespace(self, name: str) -> None:
        with self._wlock, self._lock:
            ns_id, _info = self.catalog.get(name)
            if self.ns_count.get(ns_id, 0):
                self._purge_expired(ns_id)
            if self.ns_count.get(ns_id, 0):
                raise NamespaceNotEmpty(f"namespace {name} is not empty")
            self.catalog.remove(name)
            self.ns_count.pop(ns_id, None)
            self._save_catalog()

    def namespace(self, name: str) -> NamespaceInfo:
        with self._lock:
            return self.catalog.get(name)[1]

    def list_namespaces(self) -> list[NamespaceInfo]:
        with self._lock:
            return sorted((info for _i, info in self.catalog.by_name.values()),
                          key=lambda n: n.name)

    def count(self, ns: str) -> int:
        with self._lock:
            return self.ns_count.get(self.catalog.get(ns)[0], 0)

    def _save_catalog(self) -> None:
        self.device.write_file_atomic(self._path(CATALOG_FILE), self.catalog.encode())

    # ------------------------------------------------------------------ helpers
    def _resolve(self, ns: str, key: str) -> tuple[int, NamespaceInfo, bytes, bytes]:
        kb = validate_key(key)
        ns_id, info = self.catalog.get(ns)
        return ns_id, info, kb, fmt.digest_of(ns.encode(), kb)

    def _live(self, digest: bytes, now: float) -> Entry | None:
        """Index entry unless expired (an expired entry is removed). Caller holds _lock."""
        e = self.index.get(digest)
        if e is not None and e.exp and e.exp <= now:
            self._drop(digest, e)
            self.counters["expired_blocks"] += 1
            return None
        return e

    def _drop(self, digest: bytes, e: Entry | None = None) -> None:
        """Remove a block from the index and DRAM. Caller holds _lock."""
        old = self.index.remove(digest) if e is None or self.index.get(digest) == e else None
        if old is not None:
            self.ns_count[old.ns] = self.ns_count.get(old.ns, 1) - 1
        self.dram.discard(digest)
        self.leases.pop(digest, None)

    def _purge_expired(self, ns_id: int) -> None:
        now = time.time()
        for digest, e in list(self.index.items()):
            if e.ns == ns_id and e.exp and e.exp <= now:
                self._drop(digest, e)
                self.counters["expired_blocks"] += 1

    # ------------------------------------------------------------------ writes
    def _prepare(self, ns: str, key: str, data: object, checksum: int | None,
                 ttl_seconds: float, meta: bytes) -> _Prepared:
        """Validate one put and compute its checksum (outside all locks)."""
        staged = None
        if isinstance(data, StagedPayload):
            n = data.length
            view = data.view.cast("B")
            if n > len(view):
                raise InvalidArgument("staged payload shorter than its length")
            mv = view[:n]
            if n >= PAGE:  # small payloads go inline in the header page: copied as usual
                staged = view
                if len(staged) != fmt.align_up(n) or not is_aligned_view(staged):
                    raise InvalidArgument("a staged payload must be page aligned and padded")
                staged[n:] = bytes(len(staged) - n)  # never write stale scratch to disk
        else:
            mv = memoryview(data).cast("B")  # type: ignore[arg-type]
            n = len(mv)
        with self._lock:
            ns_id, info, kb, digest = self._resolve(ns, key)
        if n > limits.block_bytes_max:
            raise EntityTooLarge(f"block of {n} bytes exceeds {limits.block_bytes_max}")
        if info.block_bytes and n != info.block_bytes:
            raise InvalidArgument(f"namespace {ns} takes blocks of exactly {info.block_bytes} bytes")
        if len(meta) > fmt.meta_bytes_max:
            raise LimitExceeded(f"metadata over {fmt.meta_bytes_max} bytes")
        if not 0 <= ttl_seconds <= limits.ttl_seconds_max:
            raise InvalidArgument("ttl_seconds out of range")
        nsb = ns.encode()
        log2 = fmt.chunk_log2_for(fmt.header_len_for(nsb, kb, meta), n)
        csum, chunks = fmt.checksums(mv, log2)
        if checksum is not None and checksum != csum:
            raise ChecksumMismatch("payload does not match its checksum")
        now = time.time()
        hdr = fmt.RecordHeader(nsb, kb, n, csum, 0, now,
                               now + ttl_seconds if ttl_seconds else 0.0, meta,
                               chunk_log2=log2 if chunks else 0, chunks=chunks)
        if hdr.span + PAGE > self.config.segment_bytes:
            raise EntityTooLarge("block does not fit in one segment")
        return _Prepared(ns, key, ns_id, digest, hdr, mv, None if hdr.inline else staged)

    def _existing(self, p: _Prepared, overwrite: bool) -> PutResult | None:
        """The answer for a put that must not write (key present). Caller holds _lock."""
        e = self._live(p.digest, time.time())
        if e is None or (overwrite and (e.length != p.hdr.payload_len or e.csum != p.hdr.checksum)):
            return None
        self.counters["puts_existing"] += 1
        return PutResult(False, BlockMeta(p.ns, p.key, e.length, e.csum, 0, 0.0, e.exp, b""))

    def put(self, ns: str, key: str, data: object, *, checksum: int | None = None,
            ttl_seconds: float = 0.0, meta: bytes = b"", overwrite: bool = False,
            donate: bool = False) -> PutResult:
        return self.put_many(ns, [(key, data)], checksums=None if checksum is None else [checksum],
                             ttl_seconds=ttl_seconds, metas=[meta], overwrite=overwrite,
                             donate=donate)[0]

    def put_many(self, ns: str, items: Sequence[tuple[str, object]], *,
                 checksums: Sequence[int | None] | None = None, ttl_seconds: float = 0.0,
                 metas: Sequence[bytes] | None = None, overwrite: bool = False,
                 donate: bool = False) -> list[PutResult]:
        """Put a batch; records are written contiguously, several per device write.

        Validation errors raise before anything is written. Results are in input order.
        ``donate=True``: the caller hands the buffers over and never mutates them again, so the
        DRAM tier may keep them as they are instead of copying (saves a copy per block).
        """
        check_batch(items)
        preps = [self._prepare(ns, k, d, checksums[i] if checksums else None, ttl_seconds,
                               metas[i] if metas else b"") for i, (k, d) in enumerate(items)]
        from kvstore.engine.batch import write_batch

        return write_batch(self, preps, overwrite, donate)

    def _reserve(self, seg: Segment, nbytes: int) -> int:
        """Claim the next ``nbytes`` of the active segment. Caller holds _wlock."""
        off = seg.end
        seg.end += nbytes
        return off

    def _complete(self, seg: Segment, start: int, end: int, ok: bool) -> bool:
        """Mark [start, end) written (or failed) and wait until everything before ``end`` is
        written, so acknowledgements follow log order. False when this range or an earlier one
        of the segment failed: the caller must not acknowledge it, since recovery's scan may
        stop at the failed range and never reach this one."""
        deadline = time.monotonic() + limits.write_wait_seconds_max
        with self._io_done:
            seg.done[start] = end
            if not ok:
                seg.broken = True
                if seg.failed_at is None or start < seg.failed_at:
                    seg.failed_at = start
            while seg.durable in seg.done:
                seg.durable = seg.done.pop(seg.durable)
            self._io_done.notify_all()
            while seg.durable < end:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StorageError("an earlier write in this segment did not complete")
                self._io_done.wait(left)
            return ok and (seg.failed_at is None or seg.failed_at >= end)

    def _quiesce(self, seg: Segment) -> None:
        """Wait until no write to ``seg`` is in flight. Caller holds _wlock (no new ones)."""
        deadline = time.monotonic() + limits.write_wait_seconds_max
        with self._io_done:
            while seg.durable < seg.end:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StorageError(f"writes to segment {seg.id} did not complete")
                self._io_done.wait(left)

    def _add_rows(self, seg: Segment, off: int, hdr: fmt.RecordHeader, digest: bytes) -> None:
        """Record a reserved record in the segment's summary (in log order, under _wlock)."""
        seg.records += 1
        assert seg.builder is not None
        seg.builder.add(digest, hdr.namespace, hdr.key, off // PAGE, hdr.payload_len,
                        hdr.checksum, hdr.seq, hdr.created, hdr.expires, hdr.flags)

    def _publish(self, seg: Segment, off: int, hdr: fmt.RecordHeader, digest: bytes,
                 ns_id: int, keep: object) -> None:
        """Make a durable record visible in the index (and DRAM). Caller holds _lock."""
        if hdr.tombstone:
            self._drop(digest)
            return
        old = self.index.insert(digest, Entry(seg.id, off // PAGE, hdr.payload_len,
                                              hdr.checksum, math.ceil(hdr.expires), ns_id))
        if old is not None:
            self.ns_count[old.ns] = self.ns_count.get(old.ns, 1) - 1
            self.dram.discard(digest)
            if (old.length, old.csum) != (hdr.payload_len, hdr.checksum):
                self.leases.pop(digest, None)  # overwritten: the leased version is gone
        self.ns_count[ns_id] = self.ns_count.get(ns_id, 0) + 1
        if keep is not None:
            self.dram.put(digest, (seg.id, off // PAGE), keep, self._meta(hdr))

    def _next_seqs(self, n: int) -> int:
        with self._lock:
            first = self.next_seq
            self.next_seq += n
            return first

    def _append(self, buf: AlignedBuffer, hdr: fmt.RecordHeader, span: int, digest: bytes,
                ns_id: int, keep: object) -> fmt.RecordHeader:
        """Write one record (payload already in ``buf``) and publish it, synchronously.
        Caller holds _wlock (tombstones and reinsertion)."""
        seg = self._room_for(span)
        off = self._reserve(seg, span)
        hdr = replace(hdr, seq=self._next_seqs(1))
        hdr.encode_into(buf.view)
        self._add_rows(seg, off, hdr, digest)
        ok = False
        try:
            self.device.write(seg.handle, off, buf.view[:span])
            ok = True
        finally:
            ok = self._complete(seg, off, off + span, ok)
        if not ok:
            raise StorageError(f"an earlier write in segment {seg.id} failed")
        if self.config.sync_on_put:
            self.device.sync(seg.handle)
        with self._lock:
            self._publish(seg, off, hdr, digest, ns_id, keep)
        return hdr

    @staticmethod
    def _meta(hdr: fmt.RecordHeader) -> BlockMeta:
        return BlockMeta(hdr.namespace.decode(), hdr.key.decode("utf-8", "surrogatepass"),
                         hdr.payload_len, hdr.checksum, hdr.seq, hdr.created, hdr.expires,
                         hdr.meta)

    def delete(self, ns: str, key: str) -> bool:
        with self._lock:
            ns_id, _info, kb, digest = self._resolve(ns, key)
            if self._live(digest, time.time()) is None:
                return False
        if not self._tombstone(ns_id, ns.encode(), kb, digest, only_if_present=True):
            return False
        self.counters["deletes"] += 1
        return True

    def _tombstone(self, ns_id: int, nsb: bytes, kb: bytes, digest: bytes, *,
                   only_if_present: bool) -> bool:
        """Append a tombstone (and drop the block from the index)."""
        buf = self.pool.acquire(PAGE)
        try:
            hdr = fmt.RecordHeader(nsb, kb, 0, 0, 0, time.time(), flags=fmt.FLAG_TOMBSTONE)
            with self._wlock:
                if only_if_present:
                    with self._lock:
                        if self.index.get(digest) is None:
                            return False
                self._append(buf, hdr, PAGE, digest, ns_id, None)
            return True
        finally:
            self.pool.release(buf)

    def delete_many(self, ns: str, keys: Sequence[str]) -> int:
        check_batch(keys)
        return sum(1 for k in keys if self.delete(ns, k))

    # ------------------------------------------------------------------ capacity
    def _room_for(self, span: int) -> Segment:
        """The active segment, rolled (and capacity reclaimed) when ``span`` doesn't fit."""
        seg = self.active
        if seg is not None and not seg.broken and seg.end + span <= self.config.segment_bytes:
            return seg
        from kvstore.engine.reclaim import roll

        return roll(self, span)

    # ------------------------------------------------------------------ reads
    def list_blocks(self, ns: str, *, prefix: str = "", start_after: str = "",
                    limit: int = limits.list_keys_max) -> tuple[list[BlockMeta], bool]:
        from kvstore.engine.listing import list_blocks

        return list_blocks(self, ns, prefix, start_after, limit)

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, int | float]:
        with self._lock:
            self.leases.expire()
            out: dict[str, int | float] = dict(self.counters)
            out.update(
                blocks=len(self.index), namespaces=len(self.catalog.by_name),
                flash_used_bytes=self.flash_used_bytes(),
                flash_capacity_bytes=self.config.capacity_bytes,
                dram_used_bytes=self.dram.used_bytes,
                dram_capacity_bytes=self.dram.capacity_bytes,
                segments=len(self.segments), leases_active=len(self.leases),
                leased_bytes=self.leases.bytes, leased_bytes_budget=self.leases.budget_bytes,
                index_memory_bytes=self.index.memory_bytes(),
            )
            return out

    def flash_used_bytes(self) -> int:
        segs = list(self.segments.values()) + list(self.retired.values())
        return sum(s.end for s in segs) + sum(self.device.size(s.handle) for s in self.free_files)

    def check(self, *, deep: bool = False) -> list[str]:
        from kvstore.engine.checker import check

        return check(self, deep=deep)


def load_segment_summary(engine: Engine, seg: Segment):  # noqa: ANN201 - internal helper
    """The summary of a segment: the live builder for the active one, the file otherwise."""
    if seg.builder is not None:
        return seg.builder.build(seg.end)
    return load_summary(engine.device, engine.config.data_dir, seg.id)

