"""Replay against a real ``kvstore serve`` on loopback: its hit ratio is the offline one."""

from __future__ import annotations

import json
from pathlib import Path

import replay
import traces
import workloads


def _trace(tmp_path: Path) -> Path:
    reqs = workloads.agentic(workloads.AgenticSpec(sessions=12, turns=4, seed=5))
    p = tmp_path / "agentic.jsonl"
    traces.write(p, reqs)
    return p


def test_unlimited_capacity_hits_what_the_trace_allows(tmp_path: Path) -> None:
    p = _trace(tmp_path)
    out = tmp_path / "summary.json"
    rc = replay.main(["--trace", str(p), "--target", "kvstore", "--block-bytes", "4KiB",
                      "--concurrency", "1", "--as-fast-as-possible", "--json", str(out),
                      "--no-progress"])
    assert rc == 0
    s = json.loads(out.read_text())
    offline = traces.offline_hits(traces.read(p))
    assert s["requests"] == offline.requests
    assert s["blocks_requested"] == offline.blocks_requested
    assert s["blocks_hit"] == offline.blocks_hit  # exactly: one request at a time, no eviction
    assert s["hit_ratio"] == offline.hit_ratio
    assert s["wrong_bytes"] == 0 and s["lost_hits"] == 0
    assert set(s["model"]) >= {"llama-3.1-8b", "llama-3.1-70b", "deepseek-v3-mla"}


def test_block_values_are_distinct_and_deterministic() -> None:
    assert replay.block_value(1, 100) == replay.block_value(1, 100)
    assert replay.block_value(1, 100) != replay.block_value(2, 100)
    assert len(replay.block_value(3, 4097)) == 4097


def test_a_tenth_of_the_working_set_is_reported_beside_an_offline_lru(tmp_path: Path) -> None:
    reqs = workloads.agentic(workloads.AgenticSpec(sessions=40, turns=6, seed=6))
    p = tmp_path / "agentic.jsonl"
    traces.write(p, reqs)
    block = 64 * 1024
    working = traces.offline_hits(reqs).unique_blocks * block
    capacity = max(2 * 2**20, working // 10)
    out = tmp_path / "summary.json"
    rc = replay.main(["--trace", str(p), "--target", "kvstore", "--block-bytes", str(block),
                      "--capacity", str(capacity), "--concurrency", "1",
                      "--as-fast-as-possible", "--json", str(out), "--no-progress"])
    assert rc == 0
    s = json.loads(out.read_text())
    assert s["wrong_bytes"] == 0
    assert s["capacity_blocks"] == capacity // block
    lru = traces.lru_hits(reqs, capacity // block).hit_ratio
    assert s["offline_lru_hit_ratio"] == lru
    assert s["hit_ratio"] < s["offline_hit_ratio"]  # eviction cost hits
    print(f"hit ratio {s['hit_ratio']:.3f}, offline LRU {lru:.3f}, "
          f"unlimited {s['offline_hit_ratio']:.3f}")


def test_report_writes_tables_and_plots(tmp_path: Path) -> None:
    import report

    p = _trace(tmp_path)
    out = tmp_path / "summary.json"
    assert replay.main(["--trace", str(p), "--target", "kvstore", "--block-bytes", "8KiB",
                        "--concurrency", "2", "--as-fast-as-possible", "--json", str(out),
                        "--no-progress"]) == 0
    run = json.loads(out.read_text())
    paths = report.write([run], tmp_path / "rep", sweep=[run], header=["# test"])
    md = (tmp_path / "rep.md").read_text()
    assert "| kvstore | 8 KiB |" in md and "llama-3.1-70b" in md
    pngs = [q for q in paths if q.suffix == ".png"]
    assert len(pngs) == 4
    assert all(q.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for q in pngs)
