"""The seam to a tier below flash (G4, ``kvstore.g4``): what the engine asks of it, nothing else.

The engine never imports an object-store client. It holds an optional ``LowerTier`` (attached
by the composition root, ``Engine.attach_lower``) and calls it at five points:

- reclaim, retiring a segment, offers its live blocks (``retiring``, under the state's lock:
  the tier queues them and returns at once, or declines; it never does I/O there);
- publish of a new record tells it a key was written again (``superseded``, under the lock, an
  index probe: a different version below is forgotten, the same bytes are kept);
- presence (``exists_many``, ``lookup``) asks its in-memory index (``present_many``), no I/O;
- a read that misses flash asks it for the record (``fetch``, no lock held, on an engine
  thread; blocking, bounded by the tier's timeouts): verified record bytes or None;
- a delete of a block only it holds (``forget``), of a namespace (``forget_namespace``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from kvstore.engine import format as fmt
    from kvstore.engine.index import Entry
    from kvstore.engine.segments import Segment


class LowerTier(Protocol):
    def retiring(self, seg: Segment, entries: list[tuple[bytes, Entry]]) -> bool:
        """Offered the live blocks of a segment reclaim retires. True: the tier took them and
        holds one pin on ``seg`` (the caller adds it), released with ``Engine.log.unpin`` once
        uploaded. Caller holds the state's lock; must not block."""
        ...

    def superseded(self, digest: bytes, length: int, csum: int) -> None:
        """A record for ``digest`` was published on flash (or a tombstone: length -1). Caller
        holds the state's lock; must not block."""
        ...

    def present_many(self, digests: list[bytes], now: int) -> np.ndarray:
        """Which of ``digests`` the tier holds, unexpired (its index only, no I/O)."""
        ...

    def fetch(self, digest: bytes, nsb: bytes, kb: bytes) -> tuple[bytes, fmt.RecordHeader] | None:
        """The block's record as written on flash (at least ``hdr.span`` bytes: header page,
        payload at ``hdr.payload_offset``) and its header, verified (the header names the
        block, the payload's xxh3 matches), or None (absent, unreachable, slow or corrupt)."""
        ...

    def holds(self, digest: bytes, length: int, csum: int) -> bool:
        """Whether the tier still holds this version of the block (no I/O). Caller may hold
        the state's lock."""
        ...

    def forget(self, digest: bytes) -> bool:
        """Drop a block (a delete). True when the tier held it."""
        ...

    def forget_namespace(self, ns_id: int) -> None:
        """Drop every block of a namespace being deleted. Caller holds the state's lock."""
        ...

    def stats(self) -> dict[str, int | float]:
        ...
