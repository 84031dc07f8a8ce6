"""A TTFT / tokens-per-second model of a context tier: what reuse is worth on a GPU.

Pure functions, no I/O. Inputs: a model's layout (how many KV bytes a token costs and how many
FLOPs its prefill costs), a GPU's throughput and power, and the store's *measured* bandwidth and
latency (replay measures them). Outputs: per request time-to-first-token with and without reuse,
the bandwidth and block size where loading a prefix beats recomputing it, the sustained
tokens/s gain over a trace, and tokens per joule.

The model, stated so it can be argued with:
- Prefill is compute-bound: ``2 * active_params`` FLOPs per token for the weights, plus
  attention ``flops_per_pair * layers`` for each (query, key) pair, causal; it runs at
  ``mfu * peak_flops * gpus``.
- Decode is bandwidth-bound: one step of a batch of ``decode_batch`` sequences reads the weights
  once and each sequence's KV cache; a request owns ``1 / decode_batch`` of each step.
- Reuse of ``h`` prompt tokens costs ``latency + h * kv_bytes_per_token / bandwidth`` to load,
  then the prefill of the remaining tokens, which still attend to the loaded ones. ``serial``
  adds the two (the conservative figure); ``overlap`` loads layer by layer under the compute
  (what vLLM's and LMCache's layerwise connectors aim at) and takes the larger. An engine loads
  only when that beats recomputing, so the TTFT with the tier is never worse than without.
- Sustained throughput: loads run asynchronously (they do not hold the GPU's compute), so a
  request's GPU time is its remaining prefill plus its share of decode; the pod is bound by
  the larger of GPU time and store transfer time (bytes / bandwidth) — a slow store caps it.
- Energy: GPU power times GPU time, plus the storage node's power shared by the GPUs it serves.

The defaults are public figures, documented beside each and overridable; they are not
measurements of ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

TOKENS_PER_BLOCK = 512


@dataclass(frozen=True)
class ModelLayout:
    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    active_params: float
    # attention FLOPs per (query, key) pair per layer: 2*d for QK^T and 2*d for AV, d = all
    # query heads times head_dim (GQA shares K/V between heads, not the FLOPs)
    attn_flops_per_pair: float
    # MLA (DeepSeek): the cache holds one compressed latent + a rope key per token per layer
    mla_latent_dim: int = 0
    weight_bytes: float = 0.0
    gpus: int = 1  # tensor-parallel GPUs one replica of the model runs on

    def kv_bytes_per_token(self) -> int:
        if self.mla_latent_dim:
            return self.layers * self.mla_latent_dim * self.dtype_bytes
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def block_bytes(self, tokens: int = TOKENS_PER_BLOCK) -> int:
        return tokens * self.kv_bytes_per_token()


# Llama 3.1 (Meta's model cards and config.json): GQA with 8 KV heads of 128, bf16.
LLAMA_8B = ModelLayout("llama-3.1-8b", layers=32, kv_heads=8, head_dim=128, dtype_bytes=2,
                       active_params=8.03e9, attn_flops_per_pair=4 * 4096,
                       weight_bytes=16.1e9, gpus=1)
LLAMA_70B = ModelLayout("llama-3.1-70b", layers=80, kv_heads=8, head_dim=128, dtype_bytes=2,
                        active_params=70.6e9, attn_flops_per_pair=4 * 8192,
                        weight_bytes=141e9, gpus=4)
# DeepSeek-V3 (config.json): MLA, kv_lora_rank 512 + qk_rope_head_dim 64 cached per token and
# layer; 128 heads, q/k head dim 192, v head dim 128; 37B active of 671B; FP8 weights.
DEEPSEEK_V3 = ModelLayout("deepseek-v3-mla", layers=61, kv_heads=1, head_dim=576, dtype_bytes=2,
                          active_params=37e9, attn_flops_per_pair=2 * 128 * (192 + 128),
                          mla_latent_dim=512 + 64, weight_bytes=671e9, gpus=8)
LAYOUTS = {m.name: m for m in (LLAMA_8B, LLAMA_70B, DEEPSEEK_V3)}


@dataclass(frozen=True)
class Gpu:
    name: str = "H100-SXM"
    peak_flops: float = 989e12  # dense BF16 tensor FLOP/s (NVIDIA H100 datasheet)
    mfu: float = 0.45  # prefill model-FLOPs utilisation (typical of published engine runs)
    hbm_bytes_per_s: float = 3.35e12  # HBM3 (datasheet)
    hbm_efficiency: float = 0.7  # achieved fraction of HBM bandwidth in decode
    decode_batch: int = 64
    power_w: float = 700.0  # TDP (datasheet)


@dataclass(frozen=True)
class Store:
    """What the tier delivers to one model replica: measured by replay, or given."""
    bandwidth_bytes_per_s: float
    latency_s: float  # one lookup plus the first byte of a GET
    per_block_s: float = 0.0  # per-block overhead inside a batched GET
    power_w: float = 1000.0  # a storage node (CPU, NICs, flash), shared by ...
    gpus_per_node: int = 8  # ... the GPUs it serves


def prefill_seconds(m: ModelLayout, g: Gpu, start: int, end: int) -> float:
    """Compute time of prompt tokens [start, end) that attend to all tokens before them."""
    if end <= start:
        return 0.0
    new = end - start
    pairs = (end * end - start * start) / 2.0
    flops = 2.0 * m.active_params * new + m.attn_flops_per_pair * m.layers * pairs
    return flops / (g.peak_flops * g.mfu * m.gpus)


def decode_seconds_per_token(m: ModelLayout, g: Gpu, context: int) -> float:
    """A request's share of GPU time for one output token at ``context`` tokens of KV."""
    step_bytes = m.weight_bytes + g.decode_batch * context * m.kv_bytes_per_token()
    step = step_bytes / (g.hbm_bytes_per_s * g.hbm_efficiency * m.gpus)
    return step / g.decode_batch


def load_seconds(m: ModelLayout, s: Store, tokens: int) -> float:
    if tokens <= 0:
        return 0.0
    blocks = -(-tokens // TOKENS_PER_BLOCK)
    return s.latency_s + blocks * s.per_block_s + tokens * m.kv_bytes_per_token() / \
        s.bandwidth_bytes_per_s


@dataclass(frozen=True)
class Ttft:
    without: float
    serial: float  # load then prefill the rest (never worse than without: the engine chooses)
    overlap: float  # layerwise load under the prefill of the rest
    loaded_tokens: int


def ttft(m: ModelLayout, g: Gpu, s: Store, input_tokens: int, hit_tokens: int) -> Ttft:
    hit = max(0, min(hit_tokens, input_tokens - 1))  # the last token is always computed
    without = prefill_seconds(m, g, 0, input_tokens)
    if hit == 0:
        return Ttft(without, without, without, 0)
    load = load_seconds(m, s, hit)
    rest = prefill_seconds(m, g, hit, input_tokens)
    serial, overlap = load + rest, max(load, rest)
    # the engine loads only when it beats recomputing (the serial figure decides: conservative)
    loaded = hit if serial < without else 0
    return Ttft(without, min(serial, without), min(overlap, without), loaded)


def break_even_bandwidth(m: ModelLayout, g: Gpu, position: int = 0,
                         tokens: int = TOKENS_PER_BLOCK) -> float:
    """Bytes/s above which loading ``tokens`` at context ``position`` beats recomputing them."""
    return tokens * m.kv_bytes_per_token() / prefill_seconds(m, g, position, position + tokens)


def break_even_block_tokens(m: ModelLayout, g: Gpu, s: Store, position: int = 0) -> float:
    """Smallest block (tokens) whose load, with ``per_block_s`` overhead, beats recomputing it;
    infinite when the store's bandwidth is under the break-even bandwidth."""
    per_token_compute = prefill_seconds(m, g, position, position + TOKENS_PER_BLOCK) / \
        TOKENS_PER_BLOCK
    per_token_load = m.kv_bytes_per_token() / s.bandwidth_bytes_per_s
    if per_token_load >= per_token_compute:
        return float("inf")
    return max(1.0, s.per_block_s / (per_token_compute - per_token_load))


@dataclass(frozen=True)
class RequestHits:
    input_tokens: int
    output_tokens: int
    hit_blocks: int


@dataclass
class TraceFigures:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    reused_tokens: int = 0
    ttft_without: list[float] = field(default_factory=list)
    ttft_serial: list[float] = field(default_factory=list)
    ttft_overlap: list[float] = field(default_factory=list)
    gpu_seconds_without: float = 0.0
    gpu_seconds_with: float = 0.0
    store_seconds: float = 0.0


def trace_figures(m: ModelLayout, g: Gpu, s: Store,
                  requests: Iterable[RequestHits]) -> TraceFigures:
    f = TraceFigures()
    for r in requests:
        hit_tokens = min(r.hit_blocks * TOKENS_PER_BLOCK, r.input_tokens)
        t = ttft(m, g, s, r.input_tokens, hit_tokens)
        decode = sum_decode(m, g, r.input_tokens, r.output_tokens)
        f.requests += 1
        f.input_tokens += r.input_tokens
        f.output_tokens += r.output_tokens
        f.reused_tokens += t.loaded_tokens
        f.ttft_without.append(t.without)
        f.ttft_serial.append(t.serial)
        f.ttft_overlap.append(t.overlap)
        f.gpu_seconds_without += t.without + decode
        f.gpu_seconds_with += prefill_seconds(m, g, t.loaded_tokens, r.input_tokens) + decode
        f.store_seconds += t.loaded_tokens * m.kv_bytes_per_token() / s.bandwidth_bytes_per_s
    return f


def sum_decode(m: ModelLayout, g: Gpu, context: int, outputs: int) -> float:
    """Decode share of ``outputs`` tokens starting at ``context`` (closed form: linear KV)."""
    if outputs <= 0:
        return 0.0
    mean_context = context + (outputs - 1) / 2.0
    return outputs * decode_seconds_per_token(m, g, int(mean_context))


def percentile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return 0.0
    ys = sorted(xs)
    return ys[min(len(ys) - 1, max(0, round(q / 100.0 * (len(ys) - 1))))]


def summary(m: ModelLayout, g: Gpu, s: Store, requests: Sequence[RequestHits]) -> dict[str, Any]:
    """The figures a report prints, with the assumptions they rest on."""
    f = trace_figures(m, g, s, requests)
    # sustained: per model replica, bound by GPU time or by the store's transfer time
    busy_with = max(f.gpu_seconds_with, f.store_seconds)
    gain = f.gpu_seconds_without / busy_with if busy_with else 1.0
    gpu_power = g.power_w * m.gpus
    storage_share = s.power_w / s.gpus_per_node * m.gpus
    joules_without = gpu_power * f.gpu_seconds_without
    joules_with = (gpu_power + storage_share) * busy_with
    tokens = f.input_tokens + f.output_tokens
    return {
        "model": m.name, "gpu": g.name,
        "requests": f.requests,
        "reused_token_share": f.reused_tokens / f.input_tokens if f.input_tokens else 0.0,
        "ttft_p50_without_s": percentile(f.ttft_without, 50),
        "ttft_p50_with_serial_s": percentile(f.ttft_serial, 50),
        "ttft_p50_with_overlap_s": percentile(f.ttft_overlap, 50),
        "ttft_p99_without_s": percentile(f.ttft_without, 99),
        "ttft_p99_with_serial_s": percentile(f.ttft_serial, 99),
        "ttft_mean_speedup_serial": (sum(f.ttft_without) / sum(f.ttft_serial)
                                     if f.ttft_serial else 1.0),
        "sustained_tokens_per_s_gain": gain,
        "store_bound": f.store_seconds > f.gpu_seconds_with,
        "tokens_per_joule_without": tokens / joules_without if joules_without else 0.0,
        "tokens_per_joule_with": tokens / joules_with if joules_with else 0.0,
        "break_even_bandwidth_gb_s_at_0": break_even_bandwidth(m, g, 0) / 1e9,
        "break_even_bandwidth_gb_s_at_32k": break_even_bandwidth(m, g, 32768) / 1e9,
        "break_even_block_tokens": break_even_block_tokens(m, g, s),
        "kv_bytes_per_token": m.kv_bytes_per_token(),
        "assumptions": {"layout": asdict(m), "gpu": asdict(g), "store": asdict(s)},
    }


def with_overrides(g: Gpu, **kw: Any) -> Gpu:
    return replace(g, **{k: v for k, v in kw.items() if v is not None})
