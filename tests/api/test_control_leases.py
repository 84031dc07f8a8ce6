"""Lookup leases over HTTP (POST /v1/{ns}/lookup with lease_seconds) on a live loopback server:
blocks written with S3 PutObject (boto3), leased, then outlived by more writes than the store
holds; the leased-bytes budget limits a lease and the answer says so."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kvstore import limits
from kvstore.engine.leases import lease_span
from tests.api.conftest import LiveServer

MiB = limits.MiB
BLOCK = 256 * 1024


def block(i: int) -> bytes:
    return bytes((i * 7 + j) & 0xFF for j in range(251)) * (BLOCK // 251) + bytes(BLOCK % 251)


def post(srv: LiveServer, path: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(doc), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_leased_blocks_survive_80_mib_of_writes_into_a_64_mib_store(
        live_server: Callable[..., LiveServer], s3_client: Callable[..., Any]) -> None:
    srv = live_server(capacity_bytes=64 * MiB, segment_bytes=4 * MiB, dram_bytes=0)
    s3 = s3_client(srv.url)
    s3.create_bucket(Bucket="kv-leases")
    chain = [f"blk-{i:02d}" for i in range(30)]
    for i, k in enumerate(chain):
        s3.put_object(Bucket="kv-leases", Key=k, Body=block(i))
    status, body = post(srv, "/v1/kv-leases/lookup", {"keys": chain, "lease_seconds": 60})
    assert status == 200
    assert body == {"prefix_len": 30, "keys": 30, "leased": 30, "lease_seconds": 60.0,
                    "lease_limited": False}
    filler = block(99)
    for i in range(80 * MiB // BLOCK):
        s3.put_object(Bucket="kv-leases", Key=f"fill-{i:04d}", Body=filler)
    st = srv.state.engine.stats()
    assert st["evicted_segments"] > 0 and st["flash_used_bytes"] <= 64 * MiB
    for i, k in enumerate(chain):
        assert s3.get_object(Bucket="kv-leases", Key=k)["Body"].read() == block(i), k
    assert post(srv, "/v1/kv-leases/lookup", {"keys": chain})[1]["prefix_len"] == 30
    assert post(srv, "/v1/check", {}) == (200, {"ok": True, "problems": []})


def test_the_lease_budget_limits_a_lookup_and_the_answer_says_so(
        live_server: Callable[..., LiveServer], s3_client: Callable[..., Any]) -> None:
    srv = live_server(capacity_bytes=64 * MiB, segment_bytes=4 * MiB, dram_bytes=0)
    s3 = s3_client(srv.url)
    s3.create_bucket(Bucket="kv-budget")
    budget = srv.state.engine.stats()["leased_bytes_budget"]
    n = budget // lease_span(BLOCK) + 5  # five more blocks than the budget can pin
    chain = [f"blk-{i:03d}" for i in range(n)]
    for i, k in enumerate(chain):
        s3.put_object(Bucket="kv-budget", Key=k, Body=block(i))
    status, body = post(srv, "/v1/kv-budget/lookup", {"keys": chain, "lease_seconds": 30})
    assert status == 200
    assert body == {"prefix_len": n, "keys": n, "leased": n - 5, "lease_seconds": 30.0,
                    "lease_limited": True}
    status, body = post(srv, "/v1/kv-budget/lookup", {"keys": chain})  # no lease: not limited
    assert (body["leased"], body["lease_limited"]) == (0, False)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    got = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert got["kvstore_leased_bytes"] == (n - 5) * lease_span(BLOCK)
    assert got["kvstore_leased_bytes_budget"] == budget
    assert got["kvstore_leases_limited_total"] == 1
