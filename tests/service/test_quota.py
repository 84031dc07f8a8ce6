"""Byte quotas (kvstore.service.quota) through the bulk port: a tenant quota from the
credentials file evicts the written namespace's oldest blocks; a strict namespace quota refuses
a whole batch with QuotaExceeded (the connection and the server stay up); a block larger than
the quota is refused in either mode."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from kvstore_client import Client, QuotaExceeded

from kvstore.auth import Tenants
from kvstore.testing import BackgroundBulkServer

BLOCK = 10_000
QUOTA = 100_000
TENANTS = Tenants.from_dict({"tenants": [
    {"name": "acme", "access_key": "AKIDACME", "secret_key": "acme-secret",
     "namespaces": ["acme-*"], "quota_bytes": QUOTA},
]})


def body(i: int) -> bytes:
    return (hashlib.blake2b(str(i).encode(), digest_size=50).digest() * (BLOCK // 50))


def client(srv: BackgroundBulkServer, ns: str) -> Client:
    return Client(port=srv.port, namespace=ns, access_key="AKIDACME", secret_key="acme-secret",
                  create=True, timeout=10, retries=0)


def test_tenant_quota_evicts_the_namespaces_oldest_blocks(
        make_bulk: Callable[..., BackgroundBulkServer]) -> None:
    srv = make_bulk(TENANTS)
    with client(srv, "acme-bulk") as c:
        for start in range(0, 40, 5):
            keys = [f"k{i:03d}" for i in range(start, start + 5)]
            c.put_many(keys, [body(i) for i in range(start, start + 5)])
            assert srv.engine is not None
            assert srv.engine.namespace_usage()["acme-bulk"][1] <= QUOTA
        assert c.get("k039") == body(39)
        assert c.get("k000") is None  # the oldest went first
        got = c.get_many([f"k{i:03d}" for i in range(40)])
        kept = [i for i, g in enumerate(got) if g is not None]
        assert kept == list(range(40 - len(kept), 40)) and len(kept) >= 5
        assert all(got[i] == body(i) for i in kept)
        with pytest.raises(QuotaExceeded):  # larger than the quota itself
            c.put("huge", b"z" * (QUOTA + 1))
        assert c.get("k039") == body(39)
    assert srv.engine.stats()["quota_evicted_blocks"] == 40 - len(kept)


def test_strict_namespace_quota_refuses_the_whole_batch(
        make_bulk: Callable[..., BackgroundBulkServer]) -> None:
    srv = make_bulk(Tenants.from_dict({"tenants": [
        {"name": "acme", "access_key": "AKIDACME", "secret_key": "acme-secret",
         "namespaces": ["acme-*"]}]}))
    assert srv.engine is not None
    srv.engine.create_namespace("acme-strict", owner="acme", quota_bytes=QUOTA,
                                quota_mode="strict")
    with client(srv, "acme-strict") as c:
        c.put_many([f"k{i}" for i in range(8)], [body(i) for i in range(8)])
        with pytest.raises(QuotaExceeded):
            c.put_many(["k8", "k9", "k10"], [body(8), body(9), body(10)])
        assert c.get_many(["k8", "k9", "k10"]) == [None, None, None]  # nothing written
        c.put_many(["k8", "k9"], [body(8), body(9)])  # exactly the quota: fits
        assert c.get_many([f"k{i}" for i in range(10)]) == [body(i) for i in range(10)]
        c.ping()
