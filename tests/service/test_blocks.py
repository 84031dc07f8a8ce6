"""``kvstore.service.BlockService``: authorization on every request (not only at HELLO), the
inline-or-thread choice, and leases that are released."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from kvstore_client import AccessDenied, Client

from kvstore import limits
from kvstore.auth import Op, Tenants
from kvstore.engine.device import MemoryDevice
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.service import Node
from kvstore.service.runner import EngineRunner
from kvstore.testing import BackgroundBulkServer

TENANTS = {"tenants": [
    {"name": "acme", "access_key": "AKIDACME", "secret_key": "acme-secret",
     "namespaces": ["shared-*"]},
    {"name": "globex", "access_key": "AKIDGLOBEX", "secret_key": "globex-secret",
     "namespaces": ["shared-*"]},
]}


def test_an_open_connection_is_refused_once_the_namespace_is_someone_elses(
        make_bulk: Callable[..., BackgroundBulkServer]) -> None:
    """The bulk port authorizes every request, so a connection made while acme owned the
    namespace does not keep serving it after it was deleted and re-created by globex."""
    srv = make_bulk(Tenants.from_dict(TENANTS))
    assert srv.engine is not None
    with Client(port=srv.port, namespace="shared-x", access_key="AKIDACME",
                secret_key="acme-secret", create=True, pool_size=1, retries=0) as c:
        c.put("k", b"v" * 100)
        assert c.get("k") == b"v" * 100
        srv.engine.delete_many("shared-x", ["k"])
        srv.engine.delete_namespace("shared-x")
        srv.engine.create_namespace("shared-x", owner="globex")
        srv.engine.put("shared-x", "k", b"globex's" * 10)
        with pytest.raises(AccessDenied):
            c.get("k")
    srv.engine.delete_many("shared-x", ["k"])


def _node() -> Node:
    cfg = EngineConfig(data_dir="/mem", capacity_bytes=64 * limits.MiB,
                       segment_bytes=8 * limits.MiB, dram_bytes=16 * limits.MiB)
    return Node(Engine.open(cfg, MemoryDevice()), EngineRunner(threads=2),
                Tenants.development())


def test_a_dram_hit_is_served_inline_and_a_miss_on_a_thread() -> None:
    node = _node()
    b = node.blocks
    dev = node.tenants.by_access_key("dev")
    try:
        async def main() -> None:
            await b.create_namespace(dev, "ns1")
            assert await b.put_many(dev, "ns1", [("hot", b"h" * 5000)]) == [True]
            b.authorize(dev, "ns1", Op.READ)
            fut = b.open("ns1", "hot")
            assert fut.done()  # no thread hop: the DRAM tier had it
            lease = fut.result()
            assert lease is not None and lease.stable and bytes(lease.view.payload) == b"h" * 5000
            lease.release()
            lease.release()  # idempotent
            miss = b.open("ns1", "absent")
            assert not miss.done()  # went to an engine thread
            assert await miss is None
            assert await b.read("ns1", "hot", lambda v: bytes(v.payload[:2])) == b"hh"

        asyncio.run(main())
        assert node.engine.check() == []
    finally:
        node.runner.close()
        node.engine.close()
