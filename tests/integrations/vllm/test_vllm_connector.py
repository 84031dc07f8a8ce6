"""KVStoreConnector built from vLLM's own config objects (EngineArgs over the tiny model, a real
KVCacheConfig), no engine started: the scheduler and the workers derive one fingerprint from
the configs; the layout binds what changes the bytes; what the connector cannot serve is
refused at start-up with a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from kvstore_connectors.vllm.connector import KVStoreConnector
from tiny_model import write_tiny_llama
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.engine.arg_utils import EngineArgs
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec

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
