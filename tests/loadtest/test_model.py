"""The TTFT/TPS model: pure functions, checked against hand-computed figures."""

from __future__ import annotations

import math

import model
import pytest

G = model.Gpu()
FAST = model.Store(bandwidth_bytes_per_s=1e15, latency_s=0.0)
SLOW = model.Store(bandwidth_bytes_per_s=1e6, latency_s=0.0)


def test_kv_bytes_per_token_of_the_documented_layouts() -> None:
    assert model.LLAMA_8B.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert model.LLAMA_70B.kv_bytes_per_token() == 2 * 80 * 8 * 128 * 2
    assert model.DEEPSEEK_V3.kv_bytes_per_token() == 61 * 576 * 2  # MLA: one latent per layer
    assert model.LLAMA_8B.block_bytes() == 64 * 2**20


def test_prefill_is_linear_plus_quadratic_attention() -> None:
    m = model.LLAMA_8B
    one = model.prefill_seconds(m, G, 0, 1000)
    expected = (2 * m.active_params * 1000 + m.attn_flops_per_pair * m.layers * 1000**2 / 2) / (
        G.peak_flops * G.mfu)
    assert one == pytest.approx(expected)
    # splitting a prompt does not change its total cost
    assert model.prefill_seconds(m, G, 0, 400) + model.prefill_seconds(m, G, 400, 1000) == \
        pytest.approx(one)
    assert model.prefill_seconds(m, G, 5, 5) == 0.0


def test_ttft_with_a_free_store_is_the_rest_of_the_prefill() -> None:
    m = model.LLAMA_70B
    t = model.ttft(m, G, FAST, 10_000, 8_192)
    assert t.without == pytest.approx(model.prefill_seconds(m, G, 0, 10_000))
    assert t.serial == pytest.approx(model.prefill_seconds(m, G, 8_192, 10_000), rel=1e-4)
    assert t.loaded_tokens == 8_192
    assert t.serial < t.without


def test_a_slow_store_is_not_used_and_never_makes_ttft_worse() -> None:
    t = model.ttft(model.LLAMA_8B, G, SLOW, 10_000, 8_192)
    assert t.serial == t.without and t.loaded_tokens == 0


def test_break_even_bandwidth_is_where_load_equals_recompute() -> None:
    m = model.LLAMA_8B
    bw = model.break_even_bandwidth(m, G, 0)
    at = model.Store(bandwidth_bytes_per_s=bw, latency_s=0.0)
    assert model.load_seconds(m, at, 512) == pytest.approx(model.prefill_seconds(m, G, 0, 512))
    # deeper in the context recompute costs more (attention), so less bandwidth suffices
    assert model.break_even_bandwidth(m, G, 32768) < bw
    assert math.isinf(model.break_even_block_tokens(m, G, SLOW))
    store = model.Store(bandwidth_bytes_per_s=bw * 4, latency_s=0.0, per_block_s=1e-3)
    n = model.break_even_block_tokens(m, G, store)
    per_tok = model.prefill_seconds(m, G, 0, 512) / 512
    assert n == pytest.approx(1e-3 / (per_tok - per_tok / 4))


def test_summary_gain_is_one_without_hits_and_above_one_with() -> None:
    none = [model.RequestHits(8192, 100, 0)] * 4
    full = [model.RequestHits(8192, 100, 15)] * 4
    s0 = model.summary(model.LLAMA_8B, G, FAST, none)
    s1 = model.summary(model.LLAMA_8B, G, FAST, full)
    assert s0["sustained_tokens_per_s_gain"] == pytest.approx(1.0)
    assert s1["sustained_tokens_per_s_gain"] > 1.0
    assert s1["reused_token_share"] == pytest.approx(15 * 512 / 8192)
    assert s1["ttft_p50_with_serial_s"] < s1["ttft_p50_without_s"]
    assert s1["assumptions"]["gpu"]["name"] == G.name


def test_a_store_bound_pod_is_capped_by_the_store() -> None:
    mid = model.Store(bandwidth_bytes_per_s=model.break_even_bandwidth(model.LLAMA_8B, G) * 1.01,
                      latency_s=0.0)
    m = model.LLAMA_8B
    s = model.summary(m, G, mid, [model.RequestHits(65536, 1, 127)])
    assert s["store_bound"] is True  # moving 65k tokens of KV takes longer than the GPU's work
    store_seconds = 127 * 512 * m.kv_bytes_per_token() / mid.bandwidth_bytes_per_s
    without = model.prefill_seconds(m, G, 0, 65536) + model.sum_decode(m, G, 65536, 1)
    assert s["sustained_tokens_per_s_gain"] == pytest.approx(without / store_seconds)
