"""The SDK with torch CPU tensors (the KV cache an engine actually holds). Runs where torch is
installed: `make test-nixl` installs it (CPU build) and runs this file too."""

from __future__ import annotations

import pytest
from kvstore_client import AsyncClient, Client

torch = pytest.importorskip("torch", reason="torch is not installed (make test-nixl installs it)")

NS = "torch-test"


def test_put_and_get_into_cpu_tensors(bulk) -> None:
    kv = torch.randn(4, 2, 16, 8, 64, dtype=torch.bfloat16)  # blocks x (K,V) x tokens x heads x dim
    keys = [f"blk{i}" for i in range(kv.shape[0])]
    with Client(port=bulk.port, namespace=NS, create=True) as c:
        # torch has no buffer protocol for bfloat16: send and receive through a uint8 view
        assert c.put_many(keys, [kv[i].view(torch.uint8).numpy() for i in range(4)]) == [True] * 4
        out = torch.empty_like(kv)
        got = c.get_many_into(keys, [out[i].view(torch.uint8).numpy() for i in range(4)])
        assert got == [kv[0].numel() * kv.element_size()] * 4
        assert torch.equal(out, kv)


async def test_async_client_into_a_tensor(bulk) -> None:
    t = torch.arange(1 << 20, dtype=torch.int32)
    async with AsyncClient(port=bulk.port, namespace=NS, create=True) as c:
        assert await c.put("t", t.numpy()) is True
        out = torch.zeros_like(t)
        assert await c.get_into("t", out.numpy()) == t.numel() * 4
    assert torch.equal(out, t)
