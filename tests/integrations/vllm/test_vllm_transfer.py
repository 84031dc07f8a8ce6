"""The worker's data path against a real server: vLLM-shaped paged KV tensors (the CPU
backend's [num_blocks, heads, block, 2*head] and the legacy [2, num_blocks, ...] layout) go
to kvstore and back bit-exact; a missing block is reported for recompute and never written."""

from __future__ import annotations

import pytest
import torch
from kvstore_client import Client
from kvstore_connectors.keys import prefix_keys
from kvstore_connectors.vllm.transfer import PagedKV, TransferCounters, load_blocks, save_blocks
from serve_helpers import Server

NUM_BLOCKS = 8
FP = bytes(range(16))


def caches(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.attn": torch.randn(*shape, generator=g).to(dtype) for i in range(3)}


@pytest.mark.parametrize("shape", [(NUM_BLOCKS, 2, 16, 2 * 32),      # CPU_ATTN
                                   (2, NUM_BLOCKS, 16, 2, 32),        # [2, blocks, N, H, C]
                                   (2 * NUM_BLOCKS, 2, 8, 2 * 32)])   # 2 kernel blocks each
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocks_round_trip_bit_exact(kvstore_server: Server, shape: tuple[int, ...],
                                     dtype: torch.dtype) -> None:
    names = ["layers.0.attn", "layers.1.attn", "layers.2.attn"]
    src = caches(shape, dtype, 1)
    dst = {k: torch.zeros_like(v) for k, v in src.items()}
    kv_src, kv_dst = PagedKV(src, names, NUM_BLOCKS), PagedKV(dst, names, NUM_BLOCKS)
    assert kv_src.block_bytes == sum(t.numel() * t.element_size() for t in src.values()) \
        // NUM_BLOCKS
    keys = prefix_keys(FP, list(range(4 * 16)), 16)
    counters = TransferCounters()
    with Client("127.0.0.1", kvstore_server.bulk, namespace="vllm-xfer", create=True) as c:
        save_blocks(c, kv_src, keys[:3], [5, 1, 6], counters)
        assert counters.saved_blocks == 3
        # block 3's key was never stored: its target block is reported and left untouched
        failed = load_blocks(c, kv_dst, keys, [0, 2, 3, 7], counters)
        assert failed == {7}
        save_blocks(c, kv_src, keys[:1], [5], counters)       # write-once: kept, not counted
        assert (counters.saved_blocks, counters.saved_existing_blocks) == (3, 1)
    for name in names:
        s, d = src[name], dst[name]
        pick = (lambda t, b: t[b]) if shape[0] != 2 else (lambda t, b: t[:, b])
        if shape[0] == 2 * NUM_BLOCKS:                          # kernel blocks 2b, 2b+1
            pick = lambda t, b: t[2 * b:2 * b + 2]             # noqa: E731
        for sb, db in ((5, 0), (1, 2), (6, 3)):
            assert torch.equal(pick(s, sb), pick(d, db)), (name, sb, db)
        assert not pick(d, 7).any()
        assert not pick(d, 1).any()


def test_wrong_size_block_is_never_written(kvstore_server: Server) -> None:
    names = ["layers.0.attn"]
    dst = {"layers.0.attn": torch.zeros(NUM_BLOCKS, 2, 16, 64)}
    kv = PagedKV(dst, names, NUM_BLOCKS)
    keys = prefix_keys(FP, list(range(32)), 16)
    with Client("127.0.0.1", kvstore_server.bulk, namespace="vllm-xfer", create=True) as c:
        c.put(keys[0], b"\x01" * 100)                           # another layout's bytes
        counters = TransferCounters()
        assert load_blocks(c, kv, keys[:1], [4], counters) == {4}
    assert counters.load_failed_blocks == 1 and not dst["layers.0.attn"].any()


def test_unregistered_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="not registered"):
        PagedKV({"a": torch.zeros(4, 2)}, ["a", "b"], 4)
    with pytest.raises(ValueError, match="no dimension"):
        PagedKV({"a": torch.zeros(3, 5)}, ["a"], 4)
