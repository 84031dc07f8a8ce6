"""The DRAM tier: a byte-budgeted LRU cache of verified block payloads in front of flash.

Entries are tagged with the flash location they were read from (or written to), so an entry
is valid only while the index still points at that location: an overwrite, delete or eviction
can never serve stale bytes even if the DRAM entry was not dropped yet. Payloads are immutable
(``bytes``, or a read-only memoryview of memory nobody writes again: ``device.copy_out``, a
donated buffer), so a memoryview handed to a reader stays valid after the entry is evicted.

Not thread-safe on its own: the engine calls it under its lock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

Payload = bytes | memoryview  # immutable: nobody writes into a payload once it is in the tier


class DramTier:
    def __init__(self, capacity_bytes: int) -> None:
        assert capacity_bytes >= 0
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._items: OrderedDict[bytes, tuple[tuple[int, int], Payload, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._items

    def get(self, digest: bytes, loc: tuple[int, int]) -> tuple[Payload, Any] | None:
        """(payload, meta) when cached for exactly this flash location."""
        item = self._items.get(digest)
        if item is None:
            return None
        if item[0] != loc:
            self.discard(digest)
            return None
        self._items.move_to_end(digest)
        return item[1], item[2]

    def put(self, digest: bytes, loc: tuple[int, int], data: Any, meta: Any = None) -> bool:
        """Insert (or refresh); returns False when the block is larger than the whole tier."""
        n = len(data)
        if n > self.capacity_bytes:
            return False
        self.discard(digest)
        while self.used_bytes + n > self.capacity_bytes and self._items:
            _d, (_loc, old, _m) = self._items.popitem(last=False)
            self.used_bytes -= len(old)
        self._items[digest] = (loc, data, meta)
        self.used_bytes += n
        return True

    def discard(self, digest: bytes) -> None:
        item = self._items.pop(digest, None)
        if item is not None:
            self.used_bytes -= len(item[1])

    def clear(self) -> None:
        self._items.clear()
        self.used_bytes = 0

    def check(self) -> list[str]:
        total = sum(len(v[1]) for v in self._items.values())
        problems = []
        if total != self.used_bytes:
            problems.append(f"dram: used_bytes {self.used_bytes} != sum of entries {total}")
        if self.used_bytes > self.capacity_bytes:
            problems.append(f"dram: used {self.used_bytes} over capacity {self.capacity_bytes}")
        return problems
