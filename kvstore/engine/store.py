"""The flash engine: a log-structured store of KV blocks (Bitcask / CacheLib Navy style).

Synchronous and thread-safe. ``Engine`` is a facade over collaborators, each with one job:

- ``state.EngineState``: the shared books (index, DRAM tier, catalog, lookup leases,
  counters) behind ``state.lock``, never held across device I/O;
- ``log.SegmentLog``: the append path (reserve -> write -> complete in log order -> publish),
  the segment table and the write lock ``wlock`` (taken before ``state.lock``); segment roll
  and reclaim (``reclaim.py``) and batched puts (``batch.py``) work on it;
- ``records.RecordIO``: verified record reads (whole, or the chunks of a range);
- ``reader.BlockReader``: reads resolve a key once and hand out a ``BlockLease``.

Recovery, the checker and listing take the log (and through it the state), never the Engine.
See docs/ENGINE_API.md for the public contract and recovery.py for open().
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from kvstore import limits
from kvstore.engine.batch import check_batch, prepare
from kvstore.engine.device import Device
from kvstore.engine.dram import DramTier
from kvstore.engine.index import Index
from kvstore.engine.leases import Leases
from kvstore.engine.lockfile import DirLock
from kvstore.engine.log import SegmentLog
from kvstore.engine.reader import BlockLease, BlockReader, BlockView
from kvstore.engine.records import RecordIO
from kvstore.engine.segments import Segment
from kvstore.engine.state import STAT_NAMES, EngineState
from kvstore.engine.summary import SegmentSummary
from kvstore.engine.tiers import LowerTier
from kvstore.engine.types import (
    BlockMeta,
    EngineConfig,
    LookupResult,
    NamespaceInfo,
    PutResult,
)
from kvstore.errors import NamespaceNotEmpty, no_space

log = logging.getLogger("kvstore.engine")

__all__ = ["STAT_NAMES", "BlockLease", "BlockView", "Engine", "load_segment_summary"]


class Engine:
    """Open with ``Engine.open(config, device)``; the constructor does no I/O."""

    def __init__(self, config: EngineConfig, device: Device) -> None:
        self.config = config
        self.state = EngineState(config, device)
        self.records = RecordIO(self.state)
        self.log = SegmentLog(self.state, self.records)
        self.reader = BlockReader(self.state, self.log, self.records)
        self._closed = False
        self.dir_lock: DirLock | None = None  # held from open() to close()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, config: EngineConfig, device: Device) -> Engine:
        from kvstore.engine.recovery import recover

        eng = cls(config, device)
        # One owner per data directory, before recovery reads anything (lockfile.py).
        eng.dir_lock = device.lock_dir(config.data_dir)
        try:
            recover(eng.log)
        except BaseException:
            eng.dir_lock.release()
            raise
        log.info("engine open: %d blocks in %d segments on %s (%s)", len(eng.index),
                 len(eng.segments), config.data_dir, device.name)
        return eng

    def close(self) -> None:
        """Sync and close files. The active segment stays unsealed: reopening scans it and keeps
        appending to it, so repeated restarts waste no space."""
        self.log.coalescer.close()  # queued single puts are written first (needs wlock)
        with self.log.wlock:
            if self._closed:
                return
            self.log.close()
            with self.state.lock:
                self._closed = True
                self.state.dram.clear()
                self.state.pool.close()
                if self.dir_lock is not None:
                    self.dir_lock.release()  # last: every file is synced and closed

    def attach_lower(self, tier: LowerTier | None) -> None:
        """Attach (or detach: None) the tier below flash (G4, ``kvstore.g4``), ``tiers.py``."""
        with self.state.lock:
            self.state.lower = tier

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def device(self) -> Device:
        return self.state.device

    @device.setter
    def device(self, device: Device) -> None:  # tests wrap it to count or fail I/O
        self.state.device = device

    @property
    def device_name(self) -> str:
        return self.device.name

    def observe_blocks(self, fn: Callable[[bool, str, bytes, bytes], None] | None) -> None:
        """Call ``fn(present, namespace, digest, meta)`` when a block becomes present (a new
        key stored) or stops being present (deleted, evicted, expired, found corrupt); None
        stops. ``fn`` runs under the engine's lock on whichever thread changed the index: it
        must only queue (``kvstore.transport.kv_events``). ``digest`` is the block's index key,
        ``kvstore.engine.format.digest_of(namespace, key)``."""
        if fn is None:
            self.state.observer = None
            return
        names: dict[int, str] = {}  # at most limits.namespaces_max
        st = self.state

        def observer(present: bool, ns_id: int, digest: bytes, meta: bytes) -> None:
            name = names.get(ns_id)
            if name is None:
                names.update(st.catalog.id_to_name())
                name = names.get(ns_id, "")
            fn(present, name, digest, meta)

        self.state.observer = observer

    # ------------------------------------------------------------------ namespaces
    def create_namespace(self, name: str, *, owner: str = "", layout: dict | None = None,
                         block_bytes: int = 0, replicas: int = 1, quota_bytes: int = 0,
                         quota_mode: str = "evict") -> NamespaceInfo:
        st = self.state
        with st.lock:
            info = st.catalog.create(name, owner, layout, block_bytes, replicas, quota_bytes,
                                     quota_mode)
            st.cipher.add(st.catalog.keys, st.catalog.get(name)[0])
            st.save_catalog()
            return info

    def delete_namespace(self, name: str) -> None:
        st = self.state
        with self.log.wlock, st.lock:
            ns_id, _info = st.catalog.get(name)
            if st.ns_count.get(ns_id, 0):
                st.purge_expired(ns_id)
            if st.ns_count.get(ns_id, 0):
                raise NamespaceNotEmpty(f"namespace {name} is not empty")
            if st.lower is not None:  # its blocks below flash go with it (a cache, unlisted)
                st.lower.forget_namespace(ns_id)
            st.catalog.remove(name)
            st.cipher.forget(st.catalog.keys, ns_id)
            st.save_catalog()

    def namespace(self, name: str) -> NamespaceInfo:
        with self.state.lock:
            return self.state.catalog.get(name)[1]

    def list_namespaces(self) -> list[NamespaceInfo]:
        with self.state.lock:
            return sorted((info for _i, info in self.state.catalog.by_name.values()),
                          key=lambda n: n.name)

    def count(self, ns: str) -> int:
        st = self.state
        with st.lock:
            return st.ns_count.get(st.catalog.get(ns)[0], 0)

    # ------------------------------------------------------------------ writes
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
        # no overwrite: its comparison needs the checksum before the write path (batch.py)
        preps = [prepare(self.state, ns, k, d, checksums[i] if checksums else None, ttl_seconds,
                         metas[i] if metas else b"", defer=not overwrite)
                 for i, (k, d) in enumerate(items)]
        try:
            return self.log.write(preps, overwrite, donate)
        except OSError as exc:  # a full file system (segment create, summary, write): typed
            full = no_space(exc)
            if full is None:
                raise
            raise full from exc

    def delete(self, ns: str, key: str) -> bool:
        st = self.state
        with st.lock:
            ns_id, _info, kb, digest = st.resolve(ns, key)
            lower = st.lower
            if st.live(digest, time.time()) is None:
                gone = lower is not None and lower.forget(digest)  # only below flash
                if gone:
                    st.counters["deletes"] += 1
                return gone
        try:
            if not self.log.tombstone(ns_id, ns.encode(), kb, digest, only_if_present=True):
                return False
        except OSError as exc:
            full = no_space(exc)
            if full is None:
                raise
            raise full from exc
        with st.lock:
            st.counters["deletes"] += 1
        return True

    def delete_many(self, ns: str, keys: Sequence[str]) -> int:
        check_batch(keys)
        return sum(1 for k in keys if self.delete(ns, k))

    # ------------------------------------------------------------------ reads
    def acquire(self, ns: str, key: str) -> BlockLease:
        """Read a block: a lease whose ``view`` (None on a miss, ``outcome`` says why) stays
        valid until ``release()``; ``with engine.acquire(ns, key) as view:`` releases."""
        return self.reader.acquire(ns, key)

    def acquire_range(self, ns: str, key: str, offset: int,
                      length: int | None = None) -> BlockLease:
        """``acquire`` for payload bytes ``[offset, offset + length)`` (see ``read_range``)."""
        return self.reader.acquire(ns, key, (offset, length))

    def read(self, ns: str, key: str) -> BlockLease:
        """Zero-copy read as a context manager: ``with engine.read(ns, key) as view:`` (a
        ``BlockView`` or None). The same lease as ``acquire``."""
        return self.reader.acquire(ns, key)

    def read_range(self, ns: str, key: str, offset: int,
                   length: int | None = None) -> BlockLease:
        """Like ``read``, for payload bytes ``[offset, offset + length)`` (clamped to the block;
        ``length=None``: to the end; ``offset < 0``: the last ``-offset`` bytes). The view's
        ``offset`` and ``len(payload)`` say which bytes it holds (empty past the end), and
        ``meta.length`` is the whole block's. From flash only the chunks covering the range are
        read, and each is verified whole (``ranges.py``); a DRAM hit is a slice."""
        return self.reader.acquire(ns, key, (offset, length))

    def read_dram(self, ns: str, key: str) -> BlockView | None:
        return self.reader.read_dram(ns, key)

    def head_dram(self, ns: str, key: str) -> BlockMeta | None:
        return self.reader.head_dram(ns, key)

    def get(self, ns: str, key: str) -> bytes | None:
        return self.reader.get(ns, key)

    def get_into(self, ns: str, key: str, out: object) -> int | None:
        return self.reader.get_into(ns, key, out)

    def head(self, ns: str, key: str) -> BlockMeta | None:
        return self.reader.head(ns, key)

    def exists(self, ns: str, key: str) -> bool:
        return self.reader.exists(ns, key)

    def exists_many(self, ns: str, keys: Sequence[str]) -> list[bool]:
        return self.reader.exists_many(ns, keys)

    def lookup(self, ns: str, keys: Sequence[str], *, lease_seconds: float = 0.0) -> LookupResult:
        return self.reader.lookup(ns, keys, lease_seconds=lease_seconds)

    def lookup_prefix(self, ns: str, keys: Sequence[str], *, lease_seconds: float = 0.0) -> int:
        return self.reader.lookup(ns, keys, lease_seconds=lease_seconds).found

    def prefetch(self, ns: str, keys: Sequence[str]) -> int:
        return self.reader.prefetch(ns, keys)

    def list_blocks(self, ns: str, *, prefix: str = "", start_after: str = "",
                    limit: int = limits.list_keys_max) -> tuple[list[BlockMeta], bool]:
        from kvstore.engine.listing import list_blocks

        return list_blocks(self.log, ns, prefix, start_after, limit)

    def evict_oldest(self, ns: str, nbytes: int) -> tuple[int, int]:
        """Delete the namespace's oldest live blocks (segment order) until at least ``nbytes``
        payload bytes are gone or it has none left: the quota's eviction
        (``kvstore.service.quota``). (blocks, bytes) deleted, counted in ``quota_evicted_*``."""
        from kvstore.engine.listing import oldest_blocks

        blocks = freed = 0
        for key, length in oldest_blocks(self.log, ns, nbytes):
            if self.delete(ns, key):
                blocks, freed = blocks + 1, freed + length
        st = self.state
        with st.lock:
            st.counters["quota_evicted_blocks"] += blocks
            st.counters["quota_evicted_bytes"] += freed
        return blocks, freed

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, int | float]:
        st = self.state
        with st.lock:
            st.leases.expire()
            out: dict[str, int | float] = dict(st.counters)
            out.update(
                blocks=len(st.index), namespaces=len(st.catalog.by_name),
                flash_used_bytes=self.log.flash_used_bytes(),
                flash_capacity_bytes=self.config.capacity_bytes,
                dram_used_bytes=st.dram.used_bytes,
                dram_capacity_bytes=st.dram.capacity_bytes,
                segments=len(self.log.segments), leases_active=len(st.leases),
                leased_bytes=st.leases.bytes, leased_bytes_budget=st.leases.budget_bytes,
                index_memory_bytes=st.index.memory_bytes(),
            )
            lower = st.lower
        co = self.log.coalescer  # single puts: on their own thread, or by the put writer
        out.update(single_puts_direct=co.direct, single_puts_coalesced=co.puts,
                   single_put_batches=co.batches)
        if lower is not None:
            out.update(lower.stats())
        return out

    def namespace_usage(self) -> dict[str, tuple[int, int]]:
        """Live (blocks, payload bytes) per namespace name, from the index's own counters."""
        st = self.state
        with st.lock:
            names = st.catalog.id_to_name()
            return {name: (st.ns_count.get(i, 0), st.ns_bytes.get(i, 0))
                    for i, name in names.items()}

    def flash_used_bytes(self) -> int:
        return self.log.flash_used_bytes()

    def check(self, *, deep: bool = False) -> list[str]:
        from kvstore.engine.checker import check

        return check(self.log, deep=deep)

    # ------------------------------------------------------------------ white-box views
    # Read-only windows on the collaborators for tests and the checker's callers.
    @property
    def index(self) -> Index:
        return self.state.index

    @property
    def dram(self) -> DramTier:
        return self.state.dram

    @property
    def ns_count(self) -> dict[int, int]:
        return self.state.ns_count

    @property
    def segments(self) -> dict[int, Segment]:
        return self.log.segments

    @property
    def retired(self) -> dict[int, Segment]:
        return self.log.retired

    @property
    def active(self) -> Segment | None:
        return self.log.active

    @active.setter
    def active(self, seg: Segment | None) -> None:  # tests break the invariant on purpose
        self.log.active = seg

    @property
    def leases(self) -> Leases:
        return self.state.leases

    @property
    def max_segments(self) -> int:
        return self.state.budget.max

    @property
    def high_segments(self) -> int:
        return self.state.budget.high


def load_segment_summary(engine: Engine, seg: Segment) -> SegmentSummary | None:
    """The summary of a segment: the live builder for the active one, the file otherwise."""
    return engine.log.summary(seg)
