"""The vLLM connector's scheduler-side plan and settings (vLLM-free modules): which blocks a
step loads and saves, and the settings read from kv_connector_extra_config."""

from __future__ import annotations

import pytest
from kvstore_connectors.vllm.config import ConnectorConfig
from kvstore_connectors.vllm.plan import Backoff, Planner, StepPlan
from kvstore_wire.errors import InvalidNamespace

BS = 4
KEYS = [f"k{i}" for i in range(5)]       # 5 full prompt blocks


def test_lookup_leaves_the_last_token_to_compute() -> None:
    assert Planner.lookup_blocks(20, BS) == 4     # 5 whole blocks: the last is computed
    assert Planner.lookup_blocks(21, BS) == 5
    assert Planner.lookup_blocks(1, BS) == 0


def test_external_hit_is_loaded_then_the_rest_saved() -> None:
    p = Planner(BS)
    # local prefix cache holds 1 block, kvstore 3: 2 blocks (8 tokens) come from kvstore
    assert p.matched("r", KEYS, 21, num_computed_tokens=4, found=3) == 8
    p.allocated("r", [10, 11, 12, 13, 14, 15], num_external_tokens=8)
    plan = StepPlan()
    p.take_loads(plan)
    assert [(t.keys, t.block_ids) for t in plan.loads] == [(["k1", "k2"], [11, 12])]
    # the step computes the remaining 9 tokens: blocks 3 and 4 are new to kvstore
    p.scheduled("r", [10, 11, 12, 13, 14, 15], replace=True, computed_after_step=21, plan=plan)
    assert [(t.keys, t.block_ids) for t in plan.saves] == [(["k3", "k4"], [13, 14])]
    again = StepPlan()
    p.take_loads(again)
    p.scheduled("r", [16], replace=False, computed_after_step=22, plan=again)
    assert again.loads == [] and again.saves == []          # decode tokens are not stored
    p.finished("r")
    assert p.tracked() == 0


def test_chunked_prefill_saves_each_chunk_once_and_miss_saves_all() -> None:
    p = Planner(BS)
    assert p.matched("r", KEYS, 21, num_computed_tokens=0, found=0) == 0
    p.allocated("r", [1, 2, 3], num_external_tokens=0)
    plan = StepPlan()
    p.take_loads(plan)
    p.scheduled("r", [1, 2, 3], replace=True, computed_after_step=10, plan=plan)
    assert plan.loads == [] and [t.keys for t in plan.saves] == [["k0", "k1"]]
    plan2 = StepPlan()
    p.scheduled("r", [4, 5, 6], replace=False, computed_after_step=21, plan=plan2)
    assert [(t.keys, t.block_ids) for t in plan2.saves] == [(["k2", "k3", "k4"], [3, 4, 5])]


def test_a_local_hit_beyond_kvstore_is_saved_not_loaded() -> None:
    p = Planner(BS)
    assert p.matched("r", KEYS, 21, num_computed_tokens=12, found=1) == 0
    p.allocated("r", [7, 8, 9, 10, 11, 12], num_external_tokens=0)
    plan = StepPlan()
    p.take_loads(plan)
    p.scheduled("r", [7, 8, 9, 10, 11, 12], replace=True, computed_after_step=21, plan=plan)
    assert plan.loads == []
    assert [(t.keys, t.block_ids) for t in plan.saves] == [(["k1", "k2", "k3", "k4"],
                                                            [8, 9, 10, 11])]


def test_resumed_request_starts_over_and_finished_drops_pending_loads() -> None:
    p = Planner(BS)
    p.matched("r", KEYS, 21, 0, found=2)
    p.allocated("r", [1, 2, 3], num_external_tokens=8)
    p.finished("r")                                         # aborted before its step
    plan = StepPlan()
    p.take_loads(plan)
    assert plan.loads == []
    p.matched("r", KEYS, 21, 0, found=2)
    p.allocated("r", [9, 8, 7, 6, 5, 4], num_external_tokens=8)
    p.take_loads(plan)
    assert [t.block_ids for t in plan.loads] == [[9, 8]]


def test_config_from_extra() -> None:
    c = ConnectorConfig.from_extra({"host": "127.0.0.2", "port": "9000", "namespace": "ns-a",
                                    "create_namespace": "false", "lease_seconds": 5})
    assert (c.host, c.port, c.namespace, c.create_namespace, c.lease_seconds) == \
        ("127.0.0.2", 9000, "ns-a", False, 5.0)
    assert ConnectorConfig.from_extra(None) == ConnectorConfig()
    with pytest.raises(ValueError, match="unknown kvstore connector settings"):
        ConnectorConfig.from_extra({"bulk_port": 1})
    with pytest.raises(InvalidNamespace):
        ConnectorConfig.from_extra({"namespace": "A"})
    with pytest.raises(ValueError):
        ConnectorConfig.from_extra({"lease_seconds": 3600})
    with pytest.raises(ValueError):
        ConnectorConfig.from_extra({"create_namespace": "maybe"})


def test_backoff_after_a_failure() -> None:
    b = Backoff(5.0)
    assert b.allow(100.0)
    b.failed(100.0)
    assert not b.allow(101.0) and not b.allow(104.9)
    assert b.allow(105.0) and b.skipped == 2
    b.failed(200.0)
    b.succeeded()
    assert b.allow(200.1)
    with pytest.raises(ValueError):
        Backoff(-1)
    with pytest.raises(ValueError):
        ConnectorConfig.from_extra({"retry_after_seconds": -1})
    with pytest.raises(ValueError):
        ConnectorConfig.from_extra({"lookup_timeout_seconds": 0})
