"""Generated workloads are prefix-aware, seeded and shaped as asked."""

from __future__ import annotations

from pathlib import Path

import traces
import workloads


def test_block_ids_are_prefix_aware() -> None:
    n = workloads.BlockNamer()
    a, ta = n.chain([(1, 1000), (2, 100)])
    b, tb = n.chain([(1, 1000), (3, 100)])
    c, _ = n.chain([(1, 1024)])
    assert (ta, tb) == (1100, 1100)
    assert len(a) == 3 and a[0] == b[0] and a[1] != b[1]  # block 1 holds span 2 vs span 3
    assert c[0] == a[0] and c[1] != a[1]  # a full block 1 of span 1 alone differs
    assert n.chain([(1, 1000), (2, 100)])[0] == a


def test_agentic_sessions_grow_and_share_system_prompts() -> None:
    spec = workloads.AgenticSpec(sessions=20, turns=4, fork_prob=0.0, seed=3)
    reqs = workloads.agentic(spec)
    assert len(reqs) == 80
    assert reqs == workloads.agentic(spec)  # seeded
    firsts = {r.hash_ids[0] for r in reqs}
    assert len(firsts) <= spec.system_prompts  # every prompt starts with a shared system prompt
    assert traces.offline_hits(reqs).hit_ratio > 0.5  # turns reuse their own history


def test_documents_are_long_and_shared(tmp_path: Path) -> None:
    spec = workloads.DocumentSpec(docs=3, requests=12, doc_tokens_min=100_000,
                                  doc_tokens_max=120_000)
    reqs = workloads.documents(spec)
    assert all(r.input_length >= 100_000 for r in reqs)
    assert traces.offline_hits(reqs).blocks_hit > 0
    out = tmp_path / "d.jsonl"
    assert workloads.main(["documents", "--docs", "2", "--requests", "5",
                           "--doc-tokens-min", "1000", "--doc-tokens-max", "2000",
                           "--out", str(out)]) == 0
    assert len(traces.read(out)) == 5
