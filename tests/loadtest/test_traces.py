"""The Mooncake trace format and the offline hit figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import traces


def _req(ts: int, ids: list[int], inp: int | None = None) -> traces.Request:
    return traces.Request(ts, inp if inp is not None else 512 * len(ids), 10, tuple(ids))


def test_round_trip_and_timestamp_order(tmp_path: Path) -> None:
    reqs = [_req(5, [1, 2]), _req(0, [1]), _req(3, [7, 8, 9], 1100)]
    p = tmp_path / "t.jsonl"
    traces.write(p, reqs)
    line = json.loads(p.read_text().splitlines()[0])
    assert set(line) == {"timestamp", "input_length", "output_length", "hash_ids"}
    back = traces.read(p)
    assert [r.timestamp_ms for r in back] == [0, 3, 5]
    assert traces.read(p, limit=2) == sorted(reqs, key=lambda r: r.timestamp_ms)[:2]


@pytest.mark.parametrize("line", [
    "not json", '{"timestamp": 1}', '{"timestamp": -1, "input_length": 1, "output_length": 1, '
    '"hash_ids": []}', '{"timestamp": 1, "input_length": 1, "output_length": 1, '
    '"hash_ids": ["a"]}'])
def test_bad_lines_name_the_line(tmp_path: Path, line: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"timestamp":0,"input_length":1,"output_length":1,"hash_ids":[0]}\n' + line)
    with pytest.raises(traces.TraceError, match="line 2"):
        traces.read(p)


def test_offline_hits_count_leading_prefixes_only() -> None:
    reqs = [_req(0, [1, 2, 3]), _req(1, [1, 2, 4]), _req(2, [9, 2, 3]), _req(3, [1, 2, 3, 5])]
    f = traces.offline_hits(reqs)
    # r1: 0; r2: 1,2 -> 2; r3: 9 missing first -> 0 (2 and 3 stored but not a prefix); r4: 3
    assert (f.blocks_hit, f.blocks_requested, f.unique_blocks) == (5, 13, 6)
    assert f.hit_ratio == pytest.approx(5 / 13)


def test_lru_hits() -> None:
    reqs = [_req(0, [1, 2]), _req(1, [3, 4]), _req(2, [1, 2])]
    assert traces.lru_hits(reqs, 4).blocks_hit == 2
    assert traces.lru_hits(reqs, 2).blocks_hit == 0  # 1 and 2 were evicted by 3 and 4
    assert traces.lru_hits(reqs, 0).blocks_hit == 0
    assert traces.lru_hits(reqs, 10**6) == traces.offline_hits(reqs)


def test_block_tokens_last_block_is_partial() -> None:
    r = _req(0, [1, 2, 3], 1100)
    assert [traces.block_tokens(r, i) for i in range(3)] == [512, 512, 76]
