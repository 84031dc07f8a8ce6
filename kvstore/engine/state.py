"""The engine's shared books: index, DRAM tier, catalog, lookup leases, counters.

Every part of the engine (``log.SegmentLog``, ``reader.BlockReader``, reclaim, recovery, the
checker, listing) works on one ``EngineState``; it is the narrow interface they share instead
of the ``Engine``'s attributes. Everything here is guarded by ``lock``, which is never held
across device I/O (the log's write lock, when both are taken, comes first).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.catalog import CATALOG_FILE, Catalog
from kvstore.engine.crypto import RecordCipher
from kvstore.engine.device import BufferPool, Device
from kvstore.engine.dram import DramTier
from kvstore.engine.index import Entry, Index
from kvstore.engine.leases import Leases, lease_budget_bytes
from kvstore.engine.tiers import LowerTier
from kvstore.engine.types import BlockMeta, EngineConfig, NamespaceInfo, ReadOutcome
from kvstore.keys import validate_key

STAT_NAMES = ("puts", "puts_existing", "gets", "hits_dram", "hits_flash", "misses",
              "bytes_written", "bytes_read", "checksum_failures", "evicted_segments",
              "evicted_blocks", "reinserted_blocks", "expired_blocks", "deletes", "io_errors", "heads",
              "recycled_segments", "promoted_blocks", "flash_bytes_read", "leases_limited",
              "leased_moved_blocks", "misses_absent", "misses_expired", "misses_corrupt",
              "misses_io_error", "hits_lower", "readmitted_blocks", "quota_evicted_blocks",
              "quota_evicted_bytes")

# the counter each kind of miss is also counted in (besides ``misses``)
MISS_COUNTERS = {ReadOutcome.ABSENT: "misses_absent", ReadOutcome.EXPIRED: "misses_expired",
                 ReadOutcome.CORRUPT: "misses_corrupt", ReadOutcome.IO_ERROR: "misses_io_error"}


@dataclass(frozen=True, slots=True)
class SegmentBudget:
    """How many segments the store may hold (``max``), when reclaim starts (``high``) and where
    it stops (``low``)."""

    max: int
    high: int
    low: int

    @classmethod
    def of(cls, config: EngineConfig) -> SegmentBudget:
        max_segs = config.capacity_bytes // config.segment_bytes
        high = max(2, min(max_segs, int(config.high_watermark * max_segs)))
        low = max(1, min(high - 1, int(config.low_watermark * max_segs)))
        return cls(max_segs, high, low)


class EngineState:
    """The books every engine part shares; the constructor does no I/O."""

    def __init__(self, config: EngineConfig, device: Device) -> None:
        self.config = config
        self.device = device
        self.pool = BufferPool()
        self.index = Index()
        self.dram = DramTier(config.dram_bytes)
        self.catalog = Catalog()
        self.cipher = RecordCipher(config.master_key)  # encryption at rest (crypto.py)
        self.counters = dict.fromkeys(STAT_NAMES, 0)
        self.lock = threading.RLock()
        self.budget = SegmentBudget.of(config)
        self.leases = Leases(lease_budget_bytes(config, self.budget.high, self.budget.max),
                             limits.leased_blocks_max)
        # Told when a block becomes present in the index (True) and when it stops being
        # present, whatever the cause: delete, eviction, expiry, a corrupt record (False):
        # ``observer(present, namespace id, digest, record meta bytes)``. Called under ``lock``,
        # so it must only queue (``Engine.observe_blocks``). A move by reclaim or an overwrite
        # keeps the block present: no call. None: nobody listens.
        self.observer: Callable[[bool, int, bytes, bytes], None] | None = None
        self.lower: LowerTier | None = None  # a tier below flash (G4), tiers.py

    # ------------------------------------------------------------------ keys
    def resolve(self, ns: str, key: str) -> tuple[int, NamespaceInfo, bytes, bytes]:
        """(namespace id, namespace, key bytes, digest). Raises InvalidKey, NamespaceNotFound."""
        kb = validate_key(key)
        ns_id, info = self.catalog.get(ns)
        return ns_id, info, kb, fmt.digest_of(ns.encode(), kb)

    def find(self, digest: bytes, now: float) -> tuple[Entry | None, ReadOutcome]:
        """The index entry and HIT, or None and why (ABSENT, or EXPIRED: the expired entry is
        removed). Caller holds ``lock``."""
        e = self.index.get(digest)
        if e is None:
            return None, ReadOutcome.ABSENT
        if e.exp and e.exp <= now:
            self.drop(digest, e)
            self.counters["expired_blocks"] += 1
            return None, ReadOutcome.EXPIRED
        return e, ReadOutcome.HIT

    def live(self, digest: bytes, now: float) -> Entry | None:
        """Index entry unless absent or expired. Caller holds ``lock``."""
        return self.find(digest, now)[0]

    def miss(self, outcome: ReadOutcome) -> None:
        """Count a read that found nothing, by why. Caller holds ``lock``."""
        self.counters["misses"] += 1
        self.counters[MISS_COUNTERS[outcome]] += 1

    @property
    def ns_count(self) -> dict[int, int]:
        """Live blocks per namespace id (the index keeps it; read-only here)."""
        return self.index.ns_blocks

    @property
    def ns_bytes(self) -> dict[int, int]:
        """Live payload bytes per namespace id (the index keeps it)."""
        return self.index.ns_bytes

    # ------------------------------------------------------------------ index changes
    def drop(self, digest: bytes, e: Entry | None = None) -> None:
        """Remove a block from the index and DRAM (only if it is still ``e``, when given).
        Caller holds ``lock``."""
        old = self.index.remove(digest) if e is None or self.index.get(digest) == e else None
        if old is not None and self.observer is not None:
            self.observer(False, old.ns, digest, b"")
        self.dram.discard(digest)
        self.leases.pop(digest, None)

    def publish(self, seg_id: int, off: int, hdr: fmt.RecordHeader, digest: bytes,
                ns_id: int, keep: object) -> None:
        """Make a durable record visible in the index (and DRAM when ``keep`` holds its
        payload). Caller holds ``lock``."""
        if self.lower is not None:  # a different version below flash is stale from now on
            self.lower.superseded(digest, -1 if hdr.tombstone else hdr.payload_len,
                                  hdr.checksum)
        if hdr.tombstone:
            self.drop(digest)
            return
        old = self.index.insert(digest, Entry(seg_id, off // fmt.PAGE, hdr.payload_len,
                                              hdr.checksum, math.ceil(hdr.expires), ns_id))
        if old is not None:
            self.dram.discard(digest)
            if (old.length, old.csum) != (hdr.payload_len, hdr.checksum):
                self.leases.pop(digest, None)  # overwritten: the leased version is gone
        elif self.observer is not None:
            self.observer(True, ns_id, digest, hdr.meta)
        if keep is not None:
            self.dram.put(digest, (seg_id, off // fmt.PAGE), keep, meta_of(hdr))

    def purge_expired(self, ns_id: int) -> None:
        """Drop the expired blocks of a namespace. Caller holds ``lock``."""
        now = time.time()
        for digest, e in list(self.index.items()):
            if e.ns == ns_id and e.exp and e.exp <= now:
                self.drop(digest, e)
                self.counters["expired_blocks"] += 1

    # ------------------------------------------------------------------ files
    def path(self, name: str) -> str:
        return os.path.join(self.config.data_dir, name)

    def save_catalog(self) -> None:
        self.device.write_file_atomic(self.path(CATALOG_FILE), self.catalog.encode())


def meta_of(hdr: fmt.RecordHeader) -> BlockMeta:
    """The public metadata of a record header."""
    return BlockMeta(hdr.namespace.decode(), hdr.key.decode("utf-8", "surrogatepass"),
                     hdr.payload_len, hdr.checksum, hdr.seq, hdr.created, hdr.expires, hdr.meta)
