"""Leases: blocks a ``lookup`` pinned so that eviction cannot take them before they expire.

A lease pins one block (by digest) until its expiry (monotonic seconds); reads do not end it, so
an engine that looked a prefix up finds every leased block there for the whole lease, whoever
else reads it meanwhile. Reclaim moves pinned blocks forward (re-appends them) instead of
dropping them, so pins cost capacity: their total is bounded by a byte budget
(``budget_bytes``), counted as each block's largest possible record span. Past the budget a
lookup pins the longest prefix that fits and reports the rest unleased.

Why the budget guarantees progress: a roll reclaims oldest segments until the store is back
under its low watermark, re-appending what is pinned (and a bounded amount of hot blocks) into
fresh segments. Packed in order, every two consecutive fresh segments hold more than one
segment's room, so ``m`` bytes of moved records fill fewer than ``2 * m / room + 1`` segments.
With ``m <= (high_segments - 2) * room / 2`` (``budget_cap_bytes``) even a roll that reclaims
every old segment ends with at most ``high_segments - 1`` segments plus the one the caller's
record needs: usage stays within capacity, and the roll always finishes. While one victim is
emptied its blocks (at most one segment's room) open at most one fresh segment, so the store
holds at most one segment beyond what it held when the roll began: that segment must exist
below the capacity (``high_segments < max_segments``), or nothing is moved at all.

Not thread-safe: every method runs under the engine's ``_lock``.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterable

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.types import EngineConfig

log = logging.getLogger("kvstore.engine")
PAGE = fmt.PAGE


def lease_span(length: int) -> int:
    """The most flash one record of ``length`` payload bytes can take (header page + payload
    pages): what a pin is charged, whatever the record's metadata."""
    return PAGE + fmt.align_up(length)


def budget_cap_bytes(high_segments: int, max_segments: int, segment_bytes: int) -> int:
    """Most bytes a roll may move forward (pinned plus hot) and still finish within the high
    watermark (see the module docstring). Moving needs one segment beyond the high watermark
    (the fresh one, opened before the first victim is retired): without it, nothing moves."""
    if high_segments >= max_segments:
        return 0
    room = segment_bytes - PAGE
    return max(0, (high_segments - 2) * room // 2)


def lease_budget_bytes(config: EngineConfig, high_segments: int, max_segments: int) -> int:
    """The leased-bytes budget: the configured one (default a fraction of the capacity), lowered
    to what reclaim can always move (``budget_cap_bytes``; a store of few segments leases less,
    one of two segments nothing)."""
    asked = config.lease_budget_bytes
    if asked is None:
        asked = int(limits.leased_fraction_of_capacity_default * config.capacity_bytes)
    cap = budget_cap_bytes(high_segments, max_segments, config.segment_bytes)
    if asked > cap:
        log.info("lease budget lowered from %d to %d bytes: reclaim must be able to move every "
                 "leased block (a store of more, smaller segments leases more)", asked, cap)
    return min(asked, cap)


def hot_budget_bytes(config: EngineConfig, high_segments: int, max_segments: int,
                     leased_budget: int) -> int:
    """Bytes of hot (recently read) blocks one roll may re-append: a fraction of a segment, less
    whatever of the movable total the leased budget takes."""
    if not config.reinsert:
        return 0
    hot = int(limits.reinsert_fraction_max * config.segment_bytes) - PAGE
    cap = budget_cap_bytes(high_segments, max_segments, config.segment_bytes)
    return max(0, min(hot, cap - leased_budget))


class Leases:
    """Pins by digest: expiry and charged bytes, plus a heap to expire them in time order."""

    def __init__(self, budget_bytes: int, blocks_max: int) -> None:
        self.budget_bytes = budget_bytes
        self.blocks_max = blocks_max
        self.bytes = 0  # charged bytes of the pins held (expired ones until swept)
        self._pins: dict[bytes, tuple[float, int]] = {}  # digest -> (expiry, charged bytes)
        # (expiry, digest), one row per pin at most; a row older than its pin's renewal is
        # pushed again when it comes up, a row whose pin ended early is dropped then.
        self._heap: list[tuple[float, bytes]] = []
        self.moving: set[int] = set()  # segments being reclaimed: their blocks take no new pin

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def expire(self, now: float | None = None) -> None:
        """Drop the pins whose lease has ended."""
        now = self.now() if now is None else now
        heap = self._heap
        while heap and heap[0][0] <= now:
            _exp, digest = heapq.heappop(heap)
            pin = self._pins.get(digest)
            if pin is None:  # ended early (the block left the store)
                continue
            if pin[0] > now:  # renewed since this row was pushed: push it again, as renewed
                heapq.heappush(heap, (pin[0], digest))
                continue
            del self._pins[digest]
            self.bytes -= pin[1]

    def take(self, items: Iterable[tuple[bytes, int, int]], seconds: float) -> int:
        """Pin ``(digest, segment, payload length)`` items in order for ``seconds``, stopping at
        the first that does not fit the budget (or sits in a segment being reclaimed); returns
        how many are pinned. Renewing a pin extends it without charging it again."""
        now = self.now()
        self.expire(now)
        until = now + seconds
        n = 0
        for digest, seg, length in items:
            if seg in self.moving:
                break
            pin = self._pins.get(digest)
            if pin is None:
                charge = lease_span(length)
                if self.bytes + charge > self.budget_bytes or len(self._pins) >= self.blocks_max:
                    break
                self.bytes += charge
                self._pins[digest] = (until, charge)
                heapq.heappush(self._heap, (until, digest))
            elif pin[0] < until:  # a renewal: its heap row is pushed again when it comes up
                self._pins[digest] = (until, pin[1])
            n += 1
        if len(self._heap) > 2 * len(self._pins) + 1024:  # rows of ended pins: rebuild
            self._heap = [(exp, d) for d, (exp, _b) in self._pins.items()]
            heapq.heapify(self._heap)
        return n

    def pinned(self, digest: bytes, now: float) -> bool:
        pin = self._pins.get(digest)
        return pin is not None and pin[0] > now

    def pop(self, digest: bytes, default: float | None = None) -> float | None:
        """End a pin because its block left the store (deleted, replaced, expired, lost)."""
        pin = self._pins.pop(digest, None)
        if pin is None:
            return default
        self.bytes -= pin[1]
        return pin[0]

    def __len__(self) -> int:
        return len(self._pins)

    def __contains__(self, digest: object) -> bool:
        return digest in self._pins

    def check(self) -> list[str]:
        """Accounting problems (for ``Engine.check``)."""
        problems = []
        charged = sum(b for _e, b in self._pins.values())
        if charged != self.bytes:
            problems.append(f"leased bytes {self.bytes} != sum of pins {charged}")
        if self.bytes > self.budget_bytes:
            problems.append(f"leased bytes {self.bytes} over the budget {self.budget_bytes}")
        if len(self._pins) > self.blocks_max:
            problems.append(f"{len(self._pins)} leases over the bound {self.blocks_max}")
        if self.moving:
            problems.append(f"segments {sorted(self.moving)} still marked as being reclaimed")
        return problems
