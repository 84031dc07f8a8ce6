"""The fingerprint of a vLLM deployment's KV blocks, from its configs alone.

The scheduler (which looks keys up) and every worker (which reads and writes the bytes) derive
it from the same ``VllmConfig`` and ``KVCacheConfig``, so they agree without talking. It binds
the model and revision, the cache dtype, the attention geometry of the one KV cache group
(layers, KV heads, head size, tokens per block, page bytes), the KV cache layout vLLM resolved,
the tensor- and pipeline-parallel rank and size, and the deployment's ``layout_salt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvstore_connectors.keys import EngineLayout, Layout


@dataclass(frozen=True)
class VllmGeometry:
    """What the connector needs of vLLM's KV cache: one attention group, its block size."""

    block_size: int
    layer_names: tuple[str, ...]
    num_kv_heads: int
    head_size: int
    dtype: str
    page_size_bytes: int
    kv_layout: str


def geometry(kv_cache_config: Any) -> VllmGeometry:
    """The single KV cache group of a ``KVCacheConfig``; hybrid models (several groups: sliding
    window beside full attention, Mamba) are refused rather than half-stored."""
    groups = list(kv_cache_config.kv_cache_groups)
    if len(groups) != 1:
        raise ValueError(f"the kvstore connector supports one KV cache group, this model has "
                         f"{len(groups)}")
    spec = groups[0].kv_cache_spec
    for name in ("block_size", "num_kv_heads", "head_size", "dtype"):
        if not hasattr(spec, name):
            raise ValueError(f"unsupported KV cache spec {type(spec).__name__} (no {name})")
    dtype = str(spec.dtype).removeprefix("torch.")
    return VllmGeometry(
        block_size=int(spec.block_size), layer_names=tuple(groups[0].layer_names),
        num_kv_heads=int(spec.num_kv_heads), head_size=int(spec.head_size), dtype=dtype,
        page_size_bytes=int(getattr(spec, "page_size_bytes", 0) or 0),
        kv_layout=str(getattr(kv_cache_config, "kv_cache_layout", "") or ""))


def engine_layout(vllm_config: Any, geo: VllmGeometry, tp_rank: int, *,
                  layout_salt: str = "") -> EngineLayout:
    model = vllm_config.model_config
    par = vllm_config.parallel_config
    tp_size = int(getattr(par, "tensor_parallel_size", 1) or 1)
    total_heads = getattr(model, "get_total_num_kv_heads", None)
    heads = int(total_heads()) if callable(total_heads) else geo.num_kv_heads * tp_size
    layout = Layout(
        model=str(model.model), dtype=geo.dtype, num_layers=len(geo.layer_names),
        num_kv_heads=max(heads, geo.num_kv_heads),
        head_dim=geo.head_size, tokens_per_block=geo.block_size,
        revision=str(getattr(model, "revision", None) or ""),
        tp_rank=tp_rank, tp_size=tp_size, tenant_salt=layout_salt)
    extra = {"pp_size": int(getattr(par, "pipeline_parallel_size", 1) or 1),
             "page_size_bytes": geo.page_size_bytes, "layers": list(geo.layer_names),
             # the KV heads of one shard: the spec already counts this rank's share
             "shard_kv_heads": geo.num_kv_heads}
    return EngineLayout(layout=layout, engine="vllm", kv_layout=geo.kv_layout, extra=extra)
