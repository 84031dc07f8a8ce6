"""Byte quotas (kvstore.service.quota) through S3 and /v1 on a real HTTP server: a namespace
quota set at create (/v1), evict mode keeps the namespace within it by deleting its oldest
blocks, strict mode refuses with S3 403 QuotaExceeded; a tenant quota from the credentials
file bounds all its buckets together; /v1/stats and /metrics show quotas and evictions."""

from __future__ import annotations

import hashlib
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from kvstore.auth import Tenants

LiveServer = Any  # tests/api/conftest.py's LiveServer


def metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total

BLOCK = 10_000  # bytes per object
QUOTA = 100_000  # ten objects


def body(i: int) -> bytes:
    return hashlib.blake2b(str(i).encode(), digest_size=64).digest() * (BLOCK // 64) + b"x" * (
        BLOCK % 64)


def s3(srv: LiveServer, ak: str = "dev", sk: str = "dev-secret") -> Any:
    return boto3.client("s3", endpoint_url=srv.url, aws_access_key_id=ak,
                        aws_secret_access_key=sk, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


def create(srv: LiveServer, name: str, **quota: Any) -> None:
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("POST", "/v1/namespaces", body=json.dumps({"name": name, **quota}),
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.status == 201, raw
        assert json.loads(raw)["quota_bytes"] == quota.get("quota_bytes", 0)
    finally:
        conn.close()


def get_json(srv: LiveServer, path: str) -> Any:
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.status == 200, raw
        return raw.decode() if path == "/metrics" else json.loads(raw)
    finally:
        conn.close()


def test_namespace_quota_evicts_its_own_oldest_blocks(live_server) -> None:
    srv = live_server()
    create(srv, "quota-evict", quota_bytes=QUOTA)
    create(srv, "quota-bystander")
    c = s3(srv)
    c.put_object(Bucket="quota-bystander", Key="keep", Body=body(-1))
    for i in range(30):
        c.put_object(Bucket="quota-evict", Key=f"k{i:03d}", Body=body(i))
    st = get_json(srv, "/v1/stats")
    ns = st["namespaces"]["quota-evict"]
    assert ns["quota_bytes"] == QUOTA and ns["quota_mode"] == "evict"
    assert 0 < ns["bytes"] <= QUOTA, ns
    assert c.get_object(Bucket="quota-evict", Key="k029")["Body"].read() == body(29)
    with pytest.raises(ClientError) as exc:  # the oldest went first
        c.get_object(Bucket="quota-evict", Key="k000")
    assert exc.value.response["Error"]["Code"] == "NoSuchKey"
    listed = [o["Key"] for o in c.list_objects_v2(Bucket="quota-evict").get("Contents", [])]
    assert listed == [f"k{i:03d}" for i in range(30 - len(listed), 30)]  # newest kept, in order
    for key in listed:
        assert c.get_object(Bucket="quota-evict", Key=key)["Body"].read() == body(int(key[1:]))
    # another namespace is never touched
    assert c.get_object(Bucket="quota-bystander", Key="keep")["Body"].read() == body(-1)
    assert st["stats"]["quota_evicted_blocks"] == 30 - len(listed)
    text = get_json(srv, "/metrics")
    assert metric(text, "kvstore_quota_evicted_blocks_total") == 30 - len(listed)
    assert metric(text, "kvstore_namespace_quota_bytes", namespace="quota-evict") == QUOTA
    assert srv.state.engine.check() == []


def test_strict_namespace_quota_refuses_with_quota_exceeded(live_server) -> None:
    srv = live_server()
    create(srv, "quota-strict", quota_bytes=QUOTA, quota_mode="strict")
    c = s3(srv)
    for i in range(10):
        c.put_object(Bucket="quota-strict", Key=f"k{i}", Body=body(i))
    with pytest.raises(ClientError) as exc:
        c.put_object(Bucket="quota-strict", Key="k10", Body=body(10))
    err = exc.value.response
    assert err["Error"]["Code"] == "QuotaExceeded", err
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403
    for i in range(10):  # nothing evicted, all still exact
        assert c.get_object(Bucket="quota-strict", Key=f"k{i}")["Body"].read() == body(i)
    c.delete_object(Bucket="quota-strict", Key="k0")  # room again
    c.put_object(Bucket="quota-strict", Key="k10", Body=body(10))
    text = get_json(srv, "/metrics")
    assert metric(text, "kvstore_errors_total", error="QuotaExceeded") >= 1


TENANTS = {"tenants": [
    {"name": "acme", "access_key": "AKIDACME", "secret_key": "acme-secret",
     "namespaces": ["acme-*"], "quota_bytes": QUOTA, "quota_mode": "strict"},
    {"name": "globex", "access_key": "AKIDGLOBEX", "secret_key": "globex-secret",
     "namespaces": ["globex-*"]},
]}


def test_tenant_quota_bounds_all_its_buckets_together(live_server) -> None:
    srv = live_server(tenants=Tenants.from_dict(TENANTS))
    acme, globex = s3(srv, "AKIDACME", "acme-secret"), s3(srv, "AKIDGLOBEX", "globex-secret")
    acme.create_bucket(Bucket="acme-a")
    acme.create_bucket(Bucket="acme-b")
    globex.create_bucket(Bucket="globex-a")
    for i in range(5):
        acme.put_object(Bucket="acme-a", Key=f"k{i}", Body=body(i))
        acme.put_object(Bucket="acme-b", Key=f"k{i}", Body=body(i))
    with pytest.raises(ClientError) as exc:
        acme.put_object(Bucket="acme-b", Key="k5", Body=body(5))
    assert exc.value.response["Error"]["Code"] == "QuotaExceeded"
    for i in range(20):  # another tenant has no quota: unaffected
        globex.put_object(Bucket="globex-a", Key=f"k{i}", Body=body(i))
    assert srv.state.engine.namespace_usage()["globex-a"][1] == 20 * BLOCK
