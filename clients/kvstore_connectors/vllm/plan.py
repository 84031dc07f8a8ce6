"""The scheduler side's bookkeeping, free of vLLM and torch: which blocks of which request to
load from kvstore before a step's forward, and which to save after it.

Per request the planner keeps its chained block keys (full prompt blocks only), its block
table as the scheduler outputs grow it, and how many leading blocks are known to be in kvstore
(found by the lookup, or saved). A step's plan loads the blocks the lookup found beyond the
local prefix-cache hit, and saves every full prompt block the step completes that kvstore does
not hold yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class BlockTransfer:
    """Blocks of one request to move: ``keys[i]`` is the kvstore key of vLLM block
    ``block_ids[i]``."""

    req_id: str
    keys: list[str]
    block_ids: list[int]


@dataclass
class StepPlan:
    loads: list[BlockTransfer] = field(default_factory=list)
    saves: list[BlockTransfer] = field(default_factory=list)


@dataclass
class _Tracked:
    keys: list[str]
    prompt_len: int
    stored: int                        # leading blocks kvstore is known to hold
    block_ids: list[int] = field(default_factory=list)


@dataclass
class _Match:
    keys: list[str]
    prompt_len: int
    local_blocks: int                  # blocks of the local prefix-cache hit
    found: int                         # leading blocks the lookup found in kvstore


class Planner:
    def __init__(self, block_size: int) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.block_size = block_size
        self._matches: dict[str, _Match] = {}
        self._tracked: dict[str, _Tracked] = {}
        self._loads: list[BlockTransfer] = []

    @staticmethod
    def lookup_blocks(prompt_len: int, block_size: int) -> int:
        """How many leading blocks a lookup may claim: vLLM must compute at least the last
        prompt token itself, so a prompt of whole blocks leaves its last block out."""
        return max(0, (prompt_len - 1) // block_size)

    def matched(self, req_id: str, keys: Sequence[str], prompt_len: int,
                num_computed_tokens: int, found: int) -> int:
        """Record a lookup's answer; return the tokens kvstore adds beyond the local hit."""
        local = num_computed_tokens // self.block_size
        self._matches[req_id] = _Match(list(keys), prompt_len, local, found)
        return max(0, found - local) * self.block_size

    def allocated(self, req_id: str, block_ids: Sequence[int], num_external_tokens: int) -> None:
        """After vLLM allocated the request's blocks (``block_ids``: all of them, in order):
        plan the load of the external tokens and start tracking the request. Called again
        for a request resumed after preemption, which starts over."""
        m = self._matches.pop(req_id, None)
        if m is None:                  # no lookup (e.g. the connector failed it): track only
            return
        self._tracked[req_id] = _Tracked(m.keys, m.prompt_len, stored=m.found)
        n = num_external_tokens // self.block_size
        if n > 0:
            first = m.local_blocks
            self._loads.append(BlockTransfer(req_id, m.keys[first:first + n],
                                             list(block_ids[first:first + n])))

    def scheduled(self, req_id: str, block_ids: Sequence[int] | None, *, replace: bool,
                  computed_after_step: int, plan: StepPlan) -> None:
        """One request in this step's scheduler output: update its block table (``replace``
        for a new or resumed request, else ``block_ids`` are appended) and plan the saves of
        the full prompt blocks computed by the end of the step."""
        t = self._tracked.get(req_id)
        if t is None:
            return
        if block_ids is not None:
            t.block_ids = list(block_ids) if replace else t.block_ids + list(block_ids)
        full = min(computed_after_step, t.prompt_len) // self.block_size
        full = min(full, len(t.keys), len(t.block_ids))
        if full > t.stored:
            plan.saves.append(BlockTransfer(req_id, t.keys[t.stored:full],
                                            t.block_ids[t.stored:full]))
            t.stored = full

    def take_loads(self, plan: StepPlan) -> None:
        plan.loads.extend(self._loads)
        self._loads = []

    def finished(self, req_id: str) -> None:
        self._matches.pop(req_id, None)
        self._tracked.pop(req_id, None)
        self._loads = [t for t in self._loads if t.req_id != req_id]

    def tracked(self) -> int:
        return len(self._tracked)


class Backoff:
    """After a failed call to kvstore, stop calling for ``seconds``: a store that is down or
    unreachable must cost each request nothing more than a skipped lookup or save, not a
    timeout on the scheduler's or the forward's path. The clock is passed in (monotonic)."""

    def __init__(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self.seconds = seconds
        self._until = 0.0
        self.skipped = 0

    def allow(self, now: float) -> bool:
        if now < self._until:
            self.skipped += 1
            return False
        return True

    def failed(self, now: float) -> None:
        self._until = now + self.seconds

    def succeeded(self) -> None:
        self._until = 0.0
