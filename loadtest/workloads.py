"""Workload generators for what a G3.5 tier sees, written in the Mooncake trace format.

    python loadtest/workloads.py agentic --sessions 200 --turns 8 --out agentic.jsonl
    python loadtest/workloads.py documents --docs 20 --requests 300 --out docs.jsonl
    python loadtest/workloads.py mixed --out mixed.jsonl

A prompt is a concatenation of *spans* (a system prompt, a user turn, a tool output, a model
answer, a document, a question), each with an identity and a length in tokens. Block ids are
interned from (previous block id, the span pieces inside the block), so they are prefix-aware
exactly as the published traces are: two prompts share block i only when their first
512 (i + 1) tokens are the same spans. Everything is seeded; the same arguments write the same
file.

Knobs (all flags, see ``--help``): sessions and turns of agentic conversations whose context
grows turn by turn with tool outputs; a few system prompts shared across sessions, chosen by a
Zipf law (``--zipf``); forks of a conversation (``--fork-prob``: a new session starts from
another's history); long documents (``--doc-tokens-min/max``, 100k–1M tokens) read by many
requests, document popularity Zipf; idle gaps (``--idle-prob``, ``--idle-ms``) that push a
session out of HBM and DRAM before it comes back.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from traces import TOKENS_PER_BLOCK, Request, offline_hits, write  # noqa: E402

Span = tuple[int, int]  # (span identity, tokens)
SPAN_TOKENS_MAX = 2_000_000
PROMPT_TOKENS_MAX = 2_000_000


class BlockNamer:
    """Prefix-aware block ids: the same span prefix always gets the same ids."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, tuple[tuple[int, int, int], ...]], int] = {}

    def chain(self, spans: Sequence[Span]) -> tuple[list[int], int]:
        """(block ids, prompt tokens) of a prompt made of ``spans``."""
        ids: list[int] = []
        parent = -1
        pieces: list[tuple[int, int, int]] = []
        filled = 0
        total = 0
        for span_id, tokens in spans:
            assert 0 < tokens <= SPAN_TOKENS_MAX
            total += tokens
            assert total <= PROMPT_TOKENS_MAX, "prompt too long"
            off = 0
            while off < tokens:
                take = min(tokens - off, TOKENS_PER_BLOCK - filled)
                pieces.append((span_id, off, off + take))
                off += take
                filled += take
                if filled == TOKENS_PER_BLOCK:
                    parent = self._intern(parent, pieces)
                    ids.append(parent)
                    pieces, filled = [], 0
        if pieces:
            ids.append(self._intern(parent, pieces))
        return ids, total

    def _intern(self, parent: int, pieces: list[tuple[int, int, int]]) -> int:
        k = (parent, tuple(pieces))
        got = self._ids.get(k)
        if got is None:
            got = self._ids[k] = len(self._ids)
        return got


def zipf_choice(rng: random.Random, n: int, s: float) -> int:
    """An index in [0, n) with P(i) proportional to 1 / (i + 1) ** s (s = 0: uniform)."""
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    return rng.choices(range(n), weights=weights)[0]


@dataclass(frozen=True)
class AgenticSpec:
    sessions: int = 100
    turns: int = 8
    system_prompts: int = 4
    system_tokens: int = 2048
    user_tokens: int = 256
    tool_tokens: int = 1536
    output_tokens: int = 256
    think_ms: int = 2000
    session_arrival_ms: int = 500
    idle_prob: float = 0.1
    idle_ms: int = 600_000
    fork_prob: float = 0.1
    zipf: float = 1.0
    seed: int = 1


def agentic(spec: AgenticSpec, namer: BlockNamer | None = None,
            start_id: int = 1_000_000) -> list[Request]:
    """Multi-turn agentic sessions: each turn's prompt is the whole history (system prompt,
    every user turn, tool output and model answer so far) plus the new user turn."""
    rng = random.Random(spec.seed)
    namer = namer or BlockNamer()
    next_span = start_id
    histories: list[list[Span]] = []
    out: list[Request] = []

    def span(tokens: int) -> Span:
        nonlocal next_span
        next_span += 1
        return (next_span, max(1, tokens))

    system = [span(spec.system_tokens) for _ in range(spec.system_prompts)]
    for s in range(spec.sessions):
        t = s * spec.session_arrival_ms + rng.randrange(max(1, spec.session_arrival_ms))
        if histories and rng.random() < spec.fork_prob:
            base = rng.choice(histories)
            history = list(base[:rng.randrange(1, len(base) + 1)])
        else:
            history = [system[zipf_choice(rng, spec.system_prompts, spec.zipf)]]
        for _ in range(spec.turns):
            history.append(span(int(spec.user_tokens * rng.uniform(0.5, 1.5))))
            ids, tokens = namer.chain(history)
            out_tokens = int(spec.output_tokens * rng.uniform(0.5, 1.5))
            out.append(Request(t, tokens, out_tokens, tuple(ids)))
            history.append(span(out_tokens))
            if rng.random() < 0.7:
                history.append(span(int(spec.tool_tokens * rng.uniform(0.25, 1.75))))
            t += spec.think_ms + (spec.idle_ms if rng.random() < spec.idle_prob else 0)
        histories.append(history)
    out.sort(key=lambda r: r.timestamp_ms)
    return out


@dataclass(frozen=True)
class DocumentSpec:
    docs: int = 10
    requests: int = 200
    doc_tokens_min: int = 100_000
    doc_tokens_max: int = 1_000_000
    question_tokens: int = 128
    output_tokens: int = 512
    interval_ms: int = 1000
    zipf: float = 1.0
    seed: int = 2


def documents(spec: DocumentSpec, namer: BlockNamer | None = None,
              start_id: int = 5_000_000) -> list[Request]:
    """Long documents read by many requests: a document (Zipf popularity) and a fresh
    question."""
    rng = random.Random(spec.seed)
    namer = namer or BlockNamer()
    docs = [(start_id + i, rng.randint(spec.doc_tokens_min, spec.doc_tokens_max))
            for i in range(spec.docs)]
    out: list[Request] = []
    for i in range(spec.requests):
        doc = docs[zipf_choice(rng, spec.docs, spec.zipf)]
        question = (start_id + spec.docs + i, spec.question_tokens)
        ids, tokens = namer.chain([doc, question])
        out.append(Request(i * spec.interval_ms + rng.randrange(spec.interval_ms), tokens,
                           spec.output_tokens, tuple(ids)))
    return out


def merge(*streams: list[Request]) -> list[Request]:
    return list(heapq.merge(*streams, key=lambda r: r.timestamp_ms))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="kind", required=True)
    for name, spec in (("agentic", AgenticSpec()), ("documents", DocumentSpec()),
                       ("mixed", None)):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, type=Path)
        fields = (AgenticSpec() if spec is None else spec).__dataclass_fields__
        for f in fields:
            default = getattr(AgenticSpec() if spec is None else spec, f)
            p.add_argument("--" + f.replace("_", "-"), type=type(default), default=default)
        if name == "mixed":
            p.add_argument("--docs", type=int, default=4)
            p.add_argument("--doc-requests", type=int, default=40)
    a = ap.parse_args(argv)
    vals = {k: v for k, v in vars(a).items() if k not in ("out", "kind", "docs", "doc_requests")}
    namer = BlockNamer()
    if a.kind == "agentic":
        reqs = agentic(AgenticSpec(**vals), namer)
    elif a.kind == "documents":
        reqs = documents(DocumentSpec(**vals), namer)
    else:
        span_ms = max(1, vals["sessions"] * vals["session_arrival_ms"])
        reqs = merge(agentic(AgenticSpec(**vals), namer),
                     documents(DocumentSpec(docs=a.docs, requests=a.doc_requests,
                                            doc_tokens_min=100_000, doc_tokens_max=200_000,
                                            interval_ms=max(1, span_ms // max(1, a.doc_requests)),
                                            seed=vals["seed"] + 1), namer))
    n = write(a.out, reqs)
    f = offline_hits(reqs)
    print(f"{a.out}: {n} requests, {f.blocks_requested} blocks asked, {f.unique_blocks} unique, "
          f"offline hit ratio {f.hit_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
