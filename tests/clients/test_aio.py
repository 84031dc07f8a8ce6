"""AsyncClient against a live server (the server runs on its own loop thread)."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from corrupt import corrupt_reads
from kvstore_client import AsyncClient

from kvstore.errors import ChecksumMismatch

NS = "aio-test"


async def test_async_calls(bulk) -> None:
    vals = [os.urandom(n) for n in (10, 70_000, 2 * 1024 * 1024)]
    keys = ["a", "b", "c"]
    async with AsyncClient(port=bulk.port, namespace=NS, create=True) as c:
        assert await c.ping() >= 0
        assert await c.put_many(keys, vals) == [True] * 3
        assert await c.get("b") == vals[1]
        out = np.zeros(len(vals[2]), dtype=np.uint8)
        assert await c.get_into("c", out) == len(vals[2])
        assert out.tobytes() == vals[2]
        assert await c.exists_many(["a", "zz"]) == [True, False]
        assert await c.lookup(["a", "b", "zz", "c"]) == 2
        assert await c.prefetch(["a"]) == 1
        assert await c.delete_many(["a"]) == 1
        assert (await c.stats())["blocks"] == 2
        # concurrent tasks share the pool
        res = await asyncio.gather(*(c.get(k) for k in ("b", "c", "b", "c", "a")))
        assert res == [vals[1], vals[2], vals[1], vals[2], None]


async def test_async_detects_corruption(bulk) -> None:
    async with AsyncClient(port=bulk.port, namespace=NS, create=True) as c:
        await c.put("x", b"y" * 1000)
        with corrupt_reads(bulk.node.blocks, lambda k, v: memoryview(bytes(v)[:-1] + b"z")):
            with pytest.raises(ChecksumMismatch):
                await c.get("x")
        assert await c.get("x") == b"y" * 1000


async def test_async_put_is_write_once_unless_overwrite(bulk) -> None:
    old, new = os.urandom(3000), os.urandom(2 * 1024 * 1024)
    async with AsyncClient(port=bulk.port, namespace=NS, create=True) as c:
        assert await c.put("w", old) is True
        assert await c.put("w", new) is False
        assert await c.get("w") == old
        assert await c.put("w", new, overwrite=True) is True
        out = np.zeros(len(new), dtype=np.uint8)
        assert await c.get_into("w", out) == len(new)
        assert out.tobytes() == new
        assert await c.put_many(["w", "v"], [old, old], overwrite=True) == [True, True]
        assert await c.get_many_into(["w", "v"], [bytearray(3000)] * 2) == [3000, 3000]
        assert await c.get("w") == old and await c.get("v") == old
    assert bulk.engine.check() == []
