"""The Mooncake trace format (FAST'25 release; aiperf's ``mooncake_trace``) and offline figures.

One JSON object per line::

    {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48]}

``timestamp`` is in milliseconds from the start of the trace; each hash id names one block of
``TOKENS_PER_BLOCK`` (512) prompt tokens, and ids are prefix-aware: two requests share an id
only when they share the whole prefix up to and including that block. A block at position i
covers tokens [512 i, 512 (i + 1)); the last one may be partial (``input_length`` says).

Offline figures need no store: ``offline_hits`` replays the trace against an unbounded set
(what a tier of unlimited capacity would hit) and ``lru_hits`` against an LRU of a given
number of blocks. A hit is a *leading* run of present blocks, as an engine can only reuse a
prefix: a block present after a missing one does not count.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

TOKENS_PER_BLOCK = 512
# bounds for reading a trace file: a line longer than this or a chain longer than this is refused
LINE_BYTES_MAX = 16 * 1024 * 1024
CHAIN_BLOCKS_MAX = 1 << 16  # 32M tokens at 512 tokens a block
REQUESTS_MAX = 10_000_000


class TraceError(ValueError):
    """A trace line that does not follow the format (names the line)."""


@dataclass(frozen=True, slots=True)
class Request:
    timestamp_ms: int
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]

    def to_json(self) -> str:
        return json.dumps({"timestamp": self.timestamp_ms, "input_length": self.input_length,
                           "output_length": self.output_length,
                           "hash_ids": list(self.hash_ids)}, separators=(",", ":"))


def parse_line(line: str, lineno: int = 0) -> Request:
    if len(line) > LINE_BYTES_MAX:
        raise TraceError(f"line {lineno}: longer than {LINE_BYTES_MAX} bytes")
    try:
        obj = json.loads(line)
        ts, inp, out, ids = (obj["timestamp"], obj["input_length"], obj["output_length"],
                             obj["hash_ids"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TraceError(f"line {lineno}: not a trace record ({exc})") from None
    if not all(isinstance(v, int) and v >= 0 for v in (ts, inp, out)):
        raise TraceError(f"line {lineno}: timestamp, input_length, output_length must be "
                         "non-negative integers")
    if not isinstance(ids, list) or not all(isinstance(h, int) and h >= 0 for h in ids):
        raise TraceError(f"line {lineno}: hash_ids must be a list of non-negative integers")
    if len(ids) > CHAIN_BLOCKS_MAX:
        raise TraceError(f"line {lineno}: {len(ids)} blocks, more than {CHAIN_BLOCKS_MAX}")
    return Request(ts, inp, out, tuple(ids))


def read(path: str | Path, limit: int | None = None) -> list[Request]:
    """The trace's first ``limit`` requests in timestamp order (stable for equal timestamps)."""
    out: list[Request] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if len(out) >= REQUESTS_MAX:
                raise TraceError(f"line {lineno}: more than {REQUESTS_MAX} requests")
            out.append(parse_line(line, lineno))
    out.sort(key=lambda r: r.timestamp_ms)
    return out[:limit] if limit is not None else out


def write(path: str | Path, requests: Iterable[Request]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in requests:
            f.write(r.to_json() + "\n")
            n += 1
    return n


def leading_hits(chain: Sequence[int], present: object) -> int:
    """How many leading blocks of ``chain`` are in ``present`` (anything with ``in``)."""
    n = 0
    for h in chain:
        if h not in present:  # type: ignore[operator]
            break
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class HitFigures:
    requests: int
    blocks_requested: int
    blocks_hit: int
    unique_blocks: int

    @property
    def hit_ratio(self) -> float:
        return self.blocks_hit / self.blocks_requested if self.blocks_requested else 0.0


def offline_hits(requests: Sequence[Request]) -> HitFigures:
    """Hits of a tier that never evicts: each request reuses its longest stored prefix, then
    stores the rest of its chain."""
    seen: set[int] = set()
    hit = asked = 0
    for r in requests:
        hit += leading_hits(r.hash_ids, seen)
        asked += len(r.hash_ids)
        seen.update(r.hash_ids)
    return HitFigures(len(requests), asked, hit, len(seen))


def lru_hits(requests: Sequence[Request], capacity_blocks: int) -> HitFigures:
    """The same against an LRU of ``capacity_blocks`` blocks: a hit refreshes the prefix it
    used, stored blocks are the most recent, the least recently used block goes first."""
    if capacity_blocks < 0:
        raise ValueError("capacity_blocks must be >= 0")
    lru: OrderedDict[int, None] = OrderedDict()
    hit = asked = 0
    seen: set[int] = set()
    for r in requests:
        n = leading_hits(r.hash_ids, lru)
        hit += n
        asked += len(r.hash_ids)
        seen.update(r.hash_ids)
        for h in r.hash_ids:
            if h in lru:
                lru.move_to_end(h)
            elif capacity_blocks:
                lru[h] = None
                while len(lru) > capacity_blocks:
                    lru.popitem(last=False)
    return HitFigures(len(requests), asked, hit, len(seen))


def block_tokens(r: Request, index: int) -> int:
    """Prompt tokens in block ``index`` of request ``r`` (the last block may be partial)."""
    full = r.input_length // TOKENS_PER_BLOCK
    if index < full:
        return TOKENS_PER_BLOCK
    rest = r.input_length - full * TOKENS_PER_BLOCK
    return rest if index == full and rest else TOKENS_PER_BLOCK


def iter_chunks(seq: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]
