"""KVStoreConnector built from vLLM's own config objects (EngineArgs over the tiny model, a real
KVCacheConfig), no engine started: the scheduler and the workers derive one fingerprint from
the configs; the layout binds what changes the bytes; what the connector cannot serve is
refused at start-up with a clear error; keys chain from the layout under the tenant's salt token
(two tenants never share keys for one prompt, two who share a ``key_salt`` do), with vLLM's
per-request ``cache_salt`` in the chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from kvstore_connectors.vllm.connector import KVStoreConnector
from serve_helpers import Server
from tiny_model import write_tiny_llama
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.engine.arg_utils import EngineArgs
from vllm.sampling_params import SamplingParams
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.request import Request

LAYERS = ["model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny-llama")


def vllm_config(model: Path, extra: dict[str, Any] | None = None, **kw: Any) -> Any:
    args = EngineArgs(model=str(model), skip_tokenizer_init=True, dtype="float32",
                      enforce_eager=True, max_model_len=256, block_size=32,
                      kv_transfer_config={"kv_connector": "KVStoreConnector",
                                          "kv_role": "kv_both",
                                          "kv_connector_module_path": "kvstore_connectors.vllm",
                                          "kv_connector_extra_config": extra or {}}, **kw)
    return args.create_engine_config()


def cache_config(dtype: torch.dtype = torch.float32, groups: int = 1) -> KVCacheConfig:
    spec = FullAttentionSpec(block_size=32, num_kv_heads=2, head_size=64, dtype=dtype)
    return KVCacheConfig(num_blocks=16, kv_cache_tensors=[],
                         kv_cache_groups=[KVCacheGroupSpec(LAYERS[g::groups], spec)
                                          for g in range(groups)])


def test_scheduler_and_worker_agree_and_the_layout_binds(model: Path) -> None:
    cfg = vllm_config(model)
    sched = KVStoreConnector(cfg, KVConnectorRole.SCHEDULER, cache_config())
    worker = KVStoreConnector(cfg, KVConnectorRole.WORKER, cache_config())
    assert sched.fingerprint == worker.fingerprint
    assert sched.layout.layout.model == str(model) and sched.block_size == 32
    half = KVStoreConnector(cfg, KVConnectorRole.SCHEDULER, cache_config(torch.float16))
    salted = KVStoreConnector(vllm_config(model, {"layout_salt": "fleet-b"}),
                              KVConnectorRole.SCHEDULER, cache_config())
    assert len({sched.fingerprint, half.fingerprint, salted.fingerprint}) == 3


def test_what_it_cannot_serve_is_refused(model: Path) -> None:
    with pytest.raises(ValueError, match="one KV cache group"):
        KVStoreConnector(vllm_config(model), KVConnectorRole.SCHEDULER, cache_config(groups=2))
    with pytest.raises(ValueError, match="unknown kvstore connector settings"):
        KVStoreConnector(vllm_config(model, {"bulk_port": 1}), KVConnectorRole.SCHEDULER,
                         cache_config())
    cfg = vllm_config(model)
    cfg.parallel_config.pipeline_parallel_size = 2
    with pytest.raises(ValueError, match="pipeline_parallel_size 1"):
        KVStoreConnector(cfg, KVConnectorRole.SCHEDULER, cache_config())


TENANTS = {"tenants": [
    {"name": "acme", "access_key": "AKIDACME", "secret_key": "acme-secret",
     "namespaces": ["acme-*"]},
    {"name": "globex", "access_key": "AKIDGLOBEX", "secret_key": "globex-secret",
     "namespaces": ["globex-*"], "key_salt": "pooled"},
    {"name": "initech", "access_key": "AKIDINITECH", "secret_key": "initech-secret",
     "namespaces": ["initech-*"], "key_salt": "pooled"},
]}


def test_keys_chain_from_the_tenant_salted_layout(model: Path, tmp_path: Path) -> None:
    srv = Server(tmp_path, TENANTS)
    prompt = list(range(3, 3 + 3 * 32 + 5))
    keys: dict[tuple[str, str | None], list[str]] = {}
    try:
        for t in TENANTS["tenants"]:
            extra = {"port": srv.bulk, "namespace": f"{t['name']}-vllm",
                     "access_key": t["access_key"], "secret_key": t["secret_key"]}
            sched = KVStoreConnector(vllm_config(model, extra), KVConnectorRole.SCHEDULER,
                                     cache_config())
            for salt in (None, "user-1"):   # vLLM's per-request cache_salt
                req = Request(f"r-{t['name']}-{salt}", prompt, SamplingParams(max_tokens=1),
                              None, cache_salt=salt)
                keys[(t["name"], salt)] = sched.request_keys(req)
            assert sched.chain_fingerprint() == sched.base_layout.salted(
                sched.client.key_salt()).fingerprint() != sched.fingerprint
            sched.shutdown()
    finally:
        srv.stop()
    assert all(len(k) == 3 for k in keys.values())
    assert not set(keys[("acme", None)]) & set(keys[("globex", None)])
    assert keys[("globex", None)] == keys[("initech", None)]     # both opted into "pooled"
    assert keys[("globex", "user-1")] == keys[("initech", "user-1")]
    assert not set(keys[("globex", "user-1")]) & set(keys[("globex", None)])


def test_no_keys_without_the_salt(model: Path) -> None:
    """kvstore unreachable: the scheduler derives no keys (nothing is looked up or saved under
    an unsalted key); vLLM computes the request locally."""
    extra = {"port": 1, "retry_after_seconds": 0, "lookup_timeout_seconds": 1}
    sched = KVStoreConnector(vllm_config(model, extra), KVConnectorRole.SCHEDULER,
                             cache_config())
    req = Request("r", list(range(3, 3 + 2 * 32 + 1)), SamplingParams(max_tokens=1), None)
    assert sched.chain_fingerprint() is None and sched.request_keys(req) == []
    assert sched.get_num_new_matched_tokens(req, 0) == (0, False)
