"""KVStoreSecondaryTier against vLLM's real SecondaryTierManager machinery: built by vLLM's own
SecondaryTierFactory from an out-of-tree ``module_path`` config, with a real OffloadingConfig
and a primary-tier buffer of chunk rows, against a real ``kvstore serve``: non-blocking
lookups (RETRY, then HIT/MISS), stores and loads of chunks through the thread pool, partial
loads naming their successful keys, chunks found by a second tier instance, and keys under the
tenant's salt token."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from kvstore_connectors.vllm.tier import KVStoreSecondaryTier
from serve_helpers import Server, doc_json
from vllm.v1.kv_offload.base import (
    LookupResult,
    Medium,
    OffloadingSpec,
    ReqContext,
    ScheduleEndContext,
    make_offload_key,
)
from vllm.v1.kv_offload.config import (
    OffloadingCacheConfig,
    OffloadingConfig,
    OffloadingGroupConfig,
    OffloadingModelConfig,
    OffloadingParallelConfig,
)
from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager, TransferJob
from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory

CHUNKS, CHUNK_BYTES = 8, 4096
POLL_SECONDS_MAX = 20.0


class Spec(OffloadingSpec):  # type: ignore[misc]
    """The offloading spec a tier is handed (only its config is read by tiers)."""

    def get_manager(self) -> Any:
        raise NotImplementedError("not used by secondary tiers")

    def get_worker(self, kv_caches: Any) -> Any:
        raise NotImplementedError("not used by secondary tiers")


def offloading_spec(model: str = "tiny-llama") -> Spec:
    cfg = OffloadingConfig(
        groups=(OffloadingGroupConfig(tokens_per_block=16, layer_names=("l0", "l1"),
                                      group_id=0),),
        worker_kv_bytes_per_block=CHUNK_BYTES, enable_kv_cache_events=False, extra_config={},
        engine_id="e0", model=OffloadingModelConfig(name=model, dtype="float16"),
        cache=OffloadingCacheConfig(tokens_per_hash=16, blocks_per_chunk=1),
        parallel=OffloadingParallelConfig(
            rank=0, world_size=1, tp_size=1, pp_size=1, pcp_size=1, dcp_size=1,
            data_parallel_index=0, data_parallel_size=1, data_parallel_rank_local=None,
            is_parallelism_agnostic=True))
    return Spec(cfg)


def make_tier(server: Server, primary: np.ndarray, model: str = "tiny-llama",
              **over: Any) -> Any:
    extra = doc_json("vllm-offloading")["kv_connector_extra_config"]
    assert extra["spec_name"] == "TieringOffloadingSpec"
    tier_config = dict(extra["secondary_tiers"][0], port=server.bulk, **over)  # what users paste
    tier = SecondaryTierFactory.create_secondary_tier(tier_config, memoryview(primary),
                                                      offloading_spec(model))
    assert isinstance(tier, KVStoreSecondaryTier) and isinstance(tier, SecondaryTierManager)
    return tier


def key(i: int) -> bytes:
    return make_offload_key(i.to_bytes(32, "big"), 0)


def resolve(tier: Any, keys: list[bytes], ctx: ReqContext) -> list[Any]:
    """Lookups as the scheduler makes them: RETRY until a step end has flushed the batch."""
    deadline = time.monotonic() + POLL_SECONDS_MAX
    for _ in range(2000):
        got = [tier.lookup(k, ctx) for k in keys]
        if LookupResult.RETRY not in got:
            return got
        tier.on_schedule_end(ScheduleEndContext(new_req_ids=(), preempted_req_ids=()))
        assert time.monotonic() < deadline, got
        time.sleep(0.01)
    raise AssertionError("lookups never resolved")


def finished(tier: Any, job_id: int) -> JobResult:
    deadline = time.monotonic() + POLL_SECONDS_MAX
    for _ in range(2000):
        for r in tier.get_finished_jobs():
            if r.job_id == job_id:
                return r
        assert time.monotonic() < deadline, f"job {job_id} never finished"
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} never finished")


def job(job_id: int, keys: list[bytes], chunks: list[int], promotion: bool,
        ctx: ReqContext) -> TransferJob:
    return TransferJob(job_id=job_id, keys=keys, chunk_ids=np.array(chunks, dtype=np.int64),
                       is_promotion=promotion, req_context=ctx)


def test_store_lookup_load_through_kvstore(kvstore_server: Server) -> None:
    rng = np.random.default_rng(3)
    # int8 rows, as vLLM's SharedOffloadRegion.create_kv_memoryview hands them over
    primary = rng.integers(-128, 128, size=(CHUNKS, CHUNK_BYTES), dtype=np.int8)
    original = primary.copy()
    tier = make_tier(kvstore_server, primary)
    assert tier.block_size_bytes == CHUNK_BYTES and tier.medium is Medium.STORAGE
    ctx = ReqContext(req_id="r1")
    tier.on_new_request(ctx)
    k = [key(i) for i in range(4)]
    assert tier.lookup(k[0], ctx) is LookupResult.RETRY          # non-blocking
    assert resolve(tier, k[:3], ctx) == [LookupResult.MISS] * 3

    tier.submit_store(job(1, k[:3], [0, 1, 2], False, ctx))
    r = finished(tier, 1)
    assert r.success and r.transfer_bytes == 3 * CHUNK_BYTES
    assert kvstore_server.get("/v1/namespaces/vllm-offload")["blocks"] == 3
    tier.submit_store(job(2, k[:2], [0, 1], False, ctx))           # already there: no bytes
    r = finished(tier, 2)
    assert r.success and r.transfer_bytes == 0
    tier.on_request_finished(ctx)

    ctx2 = ReqContext(req_id="r2")
    tier.on_new_request(ctx2)
    assert resolve(tier, [k[0], k[1], k[3]], ctx2) == [LookupResult.HIT, LookupResult.HIT,
                                                       LookupResult.MISS]
    primary[5:7] = 0
    tier.submit_load(job(3, k[:2], [5, 6], True, ctx2))
    r = finished(tier, 3)
    assert r.success
    assert np.array_equal(primary[5], original[0]) and np.array_equal(primary[6], original[1])

    # a partial load keeps what arrived and names it; the missing key becomes a miss
    primary[3:5] = 0
    tier.submit_load(job(4, [k[2], k[3]], [3, 4], True, ctx2))
    r = finished(tier, 4)
    assert not r.success and tuple(r.successful_keys) == (k[2],)
    assert np.array_equal(primary[3], original[2])
    tier.drain_jobs()
    assert not tier.has_pending_work()
    tier.on_request_finished(ctx2)
    tier.shutdown()

    # a new instance (another engine process) finds the chunks; another model does not
    again = make_tier(kvstore_server, np.zeros((CHUNKS, CHUNK_BYTES), dtype=np.int8))
    other = make_tier(kvstore_server, np.zeros((CHUNKS, CHUNK_BYTES), dtype=np.int8),
                      model="another-model")
    ctx3 = ReqContext(req_id="r3")
    assert resolve(again, k[:3], ctx3) == [LookupResult.HIT] * 3
    assert resolve(other, k[:3], ctx3) == [LookupResult.MISS] * 3
    again.shutdown()
    other.shutdown()


def test_bad_chunk_ids_and_a_down_store(kvstore_server: Server) -> None:
    primary = np.zeros((CHUNKS, CHUNK_BYTES), dtype=np.int8)
    tier = make_tier(kvstore_server, primary)
    ctx = ReqContext(req_id="r")
    with pytest.raises(ValueError, match="outside"):
        tier.submit_store(job(1, [key(1)], [CHUNKS], False, ctx))
    kvstore_server.stop()
    tier.submit_store(job(2, [key(1)], [0], False, ctx))
    assert not finished(tier, 2).success                  # reported, never lost
    tier.submit_load(job(3, [key(1)], [0], True, ctx))
    assert not finished(tier, 3).success
    tier.shutdown()


def test_tier_keys_are_the_tenants(tmp_path: Any) -> None:
    """Three tenants' tiers store the same OffloadKey, each in its own namespace: acme's
    kvstore key is its own, globex's and initech's (one shared key_salt) the same."""
    from test_vllm_connector import TENANTS

    srv = Server(tmp_path, TENANTS)
    primary = np.arange(CHUNKS * CHUNK_BYTES, dtype=np.int64).astype(np.int8).reshape(
        CHUNKS, CHUNK_BYTES)
    names = {}
    try:
        for t in TENANTS["tenants"]:
            tier = make_tier(srv, primary, namespace=f"{t['name']}-offload",
                             access_key=t["access_key"], secret_key=t["secret_key"])
            ctx = ReqContext(req_id=f"r-{t['name']}")
            tier.submit_store(job(1, [key(1)], [0], False, ctx))
            assert finished(tier, 1).success
            names[t["name"]] = tier.key(key(1))
            assert tier._fp == tier.base_layout.salted(tier.client.key_salt()).fingerprint()
            assert tier.client.exists_many([names[t["name"]]]) == [True]
            tier.shutdown()
    finally:
        srv.stop()
    assert names["globex"] == names["initech"] != names["acme"]
