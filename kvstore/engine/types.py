"""Value types the engine hands to its callers (the API, transport and tests)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kvstore import limits


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine needs, resolved by the caller (no config dicts read deep inside)."""

    data_dir: str
    capacity_bytes: int = 10 * limits.GiB
    segment_bytes: int = limits.segment_bytes_default
    dram_bytes: int = limits.dram_bytes_default
    high_watermark: float = limits.capacity_high_watermark
    low_watermark: float = limits.capacity_low_watermark
    dram_on_put: bool = True  # keep freshly written blocks in DRAM (other nodes read them soon)
    dram_promote_reads: int = 2  # copy a block into DRAM on its Nth read from flash (0: never)
    reinsert: bool = True  # re-append recently read blocks when their segment is reclaimed
    sync_on_put: bool = False  # fdatasync after every put (O_DIRECT already bypasses the cache)
    # Bytes lookup leases may pin at once; None: limits.leased_fraction_of_capacity_default of
    # the capacity. The engine may lower it for stores of few segments (Engine.lease_budget_bytes).
    lease_budget_bytes: int | None = None
    # Encryption at rest (crypto.py): the 32-byte master key; None writes plaintext records.
    master_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not limits.segment_bytes_min <= self.segment_bytes <= limits.segment_bytes_max:
            raise ValueError("segment_bytes out of range")
        if self.segment_bytes % limits.io_alignment_bytes:
            raise ValueError("segment_bytes must be a multiple of the I/O alignment")
        if self.capacity_bytes < limits.capacity_segments_min * self.segment_bytes:
            raise ValueError("capacity must hold at least two segments")
        if not 0 < self.low_watermark < self.high_watermark <= 1.0:
            raise ValueError("need 0 < low_watermark < high_watermark <= 1")
        if self.master_key is not None and len(self.master_key) != limits.master_key_bytes:
            raise ValueError(f"master_key must be {limits.master_key_bytes} bytes")
        if self.dram_bytes < 0:
            raise ValueError("dram_bytes must be >= 0")
        lease_max = int(limits.leased_fraction_of_capacity_max * self.capacity_bytes)
        if self.lease_budget_bytes is not None and not 0 <= self.lease_budget_bytes <= lease_max:
            raise ValueError(f"lease_budget_bytes must be in [0, {lease_max}] "
                             f"({limits.leased_fraction_of_capacity_max:g} of the capacity)")


@dataclass(frozen=True, slots=True)
class BlockMeta:
    """What is known about one stored block without reading its payload."""

    namespace: str
    key: str
    length: int
    checksum: int  # xxh3-64 of the payload
    seq: int  # write sequence number (monotonic per store); a stable version id
    created: float  # unix seconds
    expires: float = 0.0  # unix seconds, 0 = never
    meta: bytes = b""  # caller metadata (S3 content-type, user metadata, client checksums)

    @property
    def etag(self) -> str:
        return f"{self.checksum:016x}"


@dataclass(frozen=True, slots=True)
class LookupResult:
    found: int  # length of the longest present prefix of the chain
    leased: int  # blocks of that prefix now pinned (0 without a lease)

    def lease_limited(self, lease_seconds: float) -> bool:
        """True when a lease was asked for and the budget pinned fewer blocks than found."""
        return lease_seconds > 0 and self.leased < self.found


@dataclass(frozen=True, slots=True)
class PutResult:
    created: bool  # False: the key already existed and nothing was written (idempotent put)
    meta: BlockMeta


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    name: str
    created: float
    owner: str = ""  # tenant that owns it ("" in development mode)
    layout: dict[str, object] = field(default_factory=dict)  # keys.Layout fields, if given
    fingerprint: str = ""  # hex layout fingerprint, if a layout was given
    block_bytes: int = 0  # exact block size the layout fixes, 0 = any
    replicas: int = 1  # copies of each block in a pod (distinct nodes); 1 on a node alone
    quota_bytes: int = 0  # most live payload bytes (kvstore.service.quota), 0 = no quota
    quota_mode: str = "evict"  # past the quota: "evict" its oldest blocks, or "strict" refuse


class ReadOutcome(enum.Enum):
    """What a read found. Every miss is one of the last four, counted in ``misses`` and in
    ``misses_<value>`` (``Engine.stats()``), so callers and metrics can tell them apart."""

    HIT = "hit"
    ABSENT = "absent"  # no such block (never written, deleted, evicted)
    EXPIRED = "expired"  # its TTL ran out (the block is dropped now)
    CORRUPT = "corrupt"  # failed verification: dropped and tombstoned
    IO_ERROR = "io_error"  # the device failed the read; the block stays (maybe transient)
