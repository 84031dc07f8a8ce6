"""The /v1 control plane and the dispatcher, against a live uvicorn server on 127.0.0.1.

The server runs the real app (``create_app``) over a real engine on a POSIX device in a tmp dir;
blocks are put through the engine directly, then looked up, prefetched, checked and deleted
over HTTP. SigV4 requests are signed with botocore (explicit credentials and region).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from kvstore import keys, limits
from kvstore.api.app import create_app
from kvstore.auth import Tenants
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.io_uring.posix import PosixDevice
from kvstore.service import Node
from kvstore.service.runner import EngineRunner

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

LAYOUT = {"model": "test/llama-tiny", "dtype": "bfloat16", "num_layers": 2, "num_kv_heads": 2,
          "head_dim": 8, "tokens_per_block": 4}


class LiveServer:
    """create_app(state) on uvicorn in a thread, on 127.0.0.1 and a kernel-chosen port."""

    def __init__(self, state: Node) -> None:
        self.state = state
        self.app = create_app(state)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, http="httptools", loop="none", lifespan="on", log_config=None,
            access_log=False))
        self.thread = threading.Thread(target=self._run, name="live-server", daemon=True)

    def _run(self) -> None:
        import uvloop

        uvloop.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.sock.close()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, obj: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        body = None if obj is None else json.dumps(obj).encode()
        hdrs = {"content-type": "application/json", **(headers or {})}
        status, _, raw = self.request(method, path, body, hdrs)
        return status, (json.loads(raw) if raw else None)


def open_engine(path: Path) -> Engine:
    cfg = EngineConfig(data_dir=str(path), capacity_bytes=16 * limits.MiB,
                       segment_bytes=2 * limits.MiB, dram_bytes=4 * limits.MiB)
    return Engine.open(cfg, PosixDevice())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    engine = open_engine(tmp_path_factory.mktemp("control"))
    runner = EngineRunner(threads=2)
    srv = LiveServer(Node(engine, runner, Tenants.development())).start()
    yield srv
    srv.stop()
    runner.close()
    assert engine.check() == []
    engine.close()


def chain(n: int, seed: int = 0) -> list[str]:
    fp = keys.Layout(**LAYOUT).fingerprint()
    return keys.block_keys(fp, list(range(seed, seed + 4 * n)), 4)


def metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


# --- health, docs, dispatcher -------------------------------------------------------------------

def test_health_ready_and_docs(live: LiveServer) -> None:
    assert live.json("GET", "/healthz") == (200, {"status": "ok"})
    assert live.json("GET", "/readyz") == (200, {"ready": True, "reason": "ready"})
    status, doc = live.json("GET", "/openapi.json")
    assert status == 200 and "/v1/{ns}/lookup" in doc["paths"]
    assert live.request("GET", "/docs")[0] == 200


def test_non_control_paths_go_to_s3(live: LiveServer) -> None:
    status, headers, body = live.request("GET", "/some-bucket/some-key")
    assert headers["content-type"].startswith("application/xml")
    assert b"<Code>" in body and b"<RequestId>" in body
    assert status in (404, 501)  # S3App: NoSuchBucket; without it: NotImplemented


def test_unknown_v1_route_is_json_404(live: LiveServer) -> None:
    status, body = live.json("GET", "/v1/nope/nothing/here")
    assert status == 404 and body["error"]["name"] == "NoSuchKey"


def test_control_body_bound(live: LiveServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:  # declare a body past the bound; the answer comes before any of it is sent
        conn.putrequest("POST", "/v1/whatever/exists")
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(limits.control_body_bytes_max + 1))
        conn.endheaders()
        resp = conn.getresponse()
        status, raw = resp.status, resp.read()
    finally:
        conn.close()
    assert status == 413 and json.loads(raw)["error"]["name"] == "EntityTooLarge"
    assert live.json("GET", "/healthz")[0] == 200  # still up


def test_control_body_bound_without_content_length(live: LiveServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "control_body_bytes_max", 100)  # read per request
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:  # chunked: the size is only known by counting
        conn.request("POST", "/v1/whatever/exists", body=iter([b'{"keys": ["', b"a" * 200, b'"]}']),
                     headers={"content-type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        status, raw = resp.status, resp.read()
        assert resp.getheader("connection") != "close"  # the rest was drained: keep-alive
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert status == 413 and json.loads(raw)["error"]["name"] == "EntityTooLarge"


# --- namespaces ---------------------------------------------------------------------------------

def test_namespace_lifecycle_with_layout(live: LiveServer) -> None:
    layout = keys.Layout(**LAYOUT)
    status, ns = live.json("POST", "/v1/namespaces", {"name": "ns-life", "layout": LAYOUT})
    assert status == 201
    assert ns["fingerprint"] == layout.fingerprint_hex()
    assert ns["block_bytes"] == layout.block_bytes() == 2 * 2 * 2 * 8 * 4 * 2
    assert live.json("POST", "/v1/namespaces", {"name": "ns-life"})[1]["error"]["name"] \
        in ("AlreadyExists", "BucketAlreadyExists")
    names = [n["name"] for n in live.json("GET", "/v1/namespaces")[1]["namespaces"]]
    assert "ns-life" in names
    # the engine enforces the block size the layout fixes
    with pytest.raises(Exception, match="(?i)size|block"):
        live.state.engine.put("ns-life", "k1", b"x" * 10)
    live.state.engine.put("ns-life", "k1", b"x" * layout.block_bytes())
    status, one = live.json("GET", "/v1/namespaces/ns-life")
    assert status == 200 and one["blocks"] == 1 and one["layout"]["model"] == LAYOUT["model"]
    status, err = live.json("DELETE", "/v1/namespaces/ns-life")
    assert status == 409 and err["error"]["name"] == "BucketNotEmpty"
    assert live.json("POST", "/v1/ns-life/delete", {"keys": ["k1"]}) == (
        200, {"requested": 1, "deleted": 1})
    assert live.request("DELETE", "/v1/namespaces/ns-life")[0] == 204
    status, err = live.json("GET", "/v1/namespaces/ns-life")
    assert status == 404 and err["error"]["name"] == "NoSuchBucket"


def test_namespace_create_is_idempotent_for_the_same_body(live: LiveServer) -> None:
    body = {"name": "ns-again", "layout": LAYOUT}
    status, first = live.json("POST", "/v1/namespaces", body)
    assert status == 201
    live.state.engine.put("ns-again", "k1", b"x" * first["block_bytes"])
    status, again = live.json("POST", "/v1/namespaces", body)
    assert status == 200 and again == first  # same namespace, same creation time
    explicit = {**body, "block_bytes": first["block_bytes"]}  # what the layout derives anyway
    assert live.json("POST", "/v1/namespaces", explicit) == (200, first)
    for other in ({"name": "ns-again"},
                  {"name": "ns-again", "layout": {**LAYOUT, "num_layers": 4}},
                  {"name": "ns-again", "layout": {**LAYOUT, "revision": "r2"}},
                  {**body, "block_bytes": first["block_bytes"] * 2}):
        status, err = live.json("POST", "/v1/namespaces", other)
        assert status == 409 and "another layout" in err["error"]["message"], (other, err)
    assert live.state.engine.count("ns-again") == 1
    assert live.json("POST", "/v1/ns-again/delete", {"keys": ["k1"]})[0] == 200
    assert live.request("DELETE", "/v1/namespaces/ns-again")[0] == 204
    plain = {"name": "ns-plain"}
    assert live.json("POST", "/v1/namespaces", plain)[0] == 201
    assert live.json("POST", "/v1/namespaces", plain)[0] == 200
    assert live.request("DELETE", "/v1/namespaces/ns-plain")[0] == 204


def test_namespace_replica_count(live: LiveServer) -> None:
    """A namespace's replica count (for a pod) is kept with it: shown, asked again with the
    same or no count answers 200, with another count 409."""
    status, doc = live.json("POST", "/v1/namespaces", {"name": "ns-rep", "replicas": 3})
    assert status == 201 and doc["replicas"] == 3
    assert live.state.engine.namespace("ns-rep").replicas == 3
    assert live.json("GET", "/v1/namespaces/ns-rep")[1]["replicas"] == 3
    assert live.json("POST", "/v1/namespaces", {"name": "ns-rep", "replicas": 3})[0] == 200
    assert live.json("POST", "/v1/namespaces", {"name": "ns-rep"})[0] == 200
    status, err = live.json("POST", "/v1/namespaces", {"name": "ns-rep", "replicas": 2})
    assert status == 409 and "3 replica(s)" in err["error"]["message"]
    assert live.json("POST", "/v1/namespaces", {"name": "ns-one"})[1]["replicas"] == 1


@pytest.mark.parametrize(
    ("body", "name"),
    [({"name": "Bad_Name"}, "InvalidBucketName"),
     ({"name": "ab"}, "InvalidBucketName"),
     ({"name": "ns-bad", "layout": {**LAYOUT, "tp_rank": 2, "tp_size": 2}}, "InvalidArgument"),
     ({"name": "ns-bad", "layout": {**LAYOUT, "num_layers": 0}}, "InvalidArgument"),
     ({"name": "ns-bad", "block_bytes": -1}, "InvalidArgument"),
     ({"name": "ns-bad", "replicas": 0}, "InvalidArgument"),
     ({"name": "ns-bad", "replicas": limits.namespace_replicas_max + 1}, "InvalidArgument"),
     ({"nom": "ns-bad"}, "InvalidArgument")],
)
def test_namespace_create_rejects(live: LiveServer, body: dict, name: str) -> None:
    status, err = live.json("POST", "/v1/namespaces", body)
    assert status == 400 and err["error"]["name"] == name


# --- lookup, lease, exists, prefetch, delete, stats, check, metrics -----------------------------

def test_lookup_exists_prefetch_delete(live: LiveServer) -> None:
    engine = live.state.engine
    assert live.json("POST", "/v1/namespaces", {"name": "ns-kv"})[0] == 201
    ks = chain(10)
    for i, k in enumerate(ks[:6]):
        engine.put("ns-kv", k, bytes([i]) * 4096)
    assert live.json("POST", "/v1/ns-kv/lookup", {"keys": ks}) == (
        200, {"prefix_len": 6, "keys": 10, "leased": 0, "lease_seconds": 0.0,
              "lease_limited": False})
    assert live.json("POST", "/v1/ns-kv/lookup", {"keys": ks[1:]})[1]["prefix_len"] == 5
    assert live.json("POST", "/v1/ns-kv/lookup", {"keys": []})[1]["prefix_len"] == 0
    leases_before = engine.stats()["leases_active"]
    status, body = live.json("POST", "/v1/ns-kv/lookup", {"keys": ks, "lease_seconds": 2.5})
    assert status == 200 and body["prefix_len"] == 6 and body["leased"] == 6
    assert engine.stats()["leases_active"] >= leases_before + 6
    status, body = live.json("POST", "/v1/ns-kv/exists", {"keys": ks})
    assert body == {"exists": [True] * 6 + [False] * 4}
    status, body = live.json("POST", "/v1/ns-kv/prefetch", {"keys": ks})
    assert status == 200 and body == {"requested": 10, "staged": 6}
    assert engine.stats()["dram_used_bytes"] >= 6 * 4096
    status, body = live.json("POST", "/v1/ns-kv/delete", {"keys": ks[3:]})
    assert body == {"requested": 7, "deleted": 3}
    assert live.json("POST", "/v1/ns-kv/lookup", {"keys": ks})[1]["prefix_len"] == 3
    assert live.json("POST", "/v1/ns-kv/exists", {"keys": ks[:4]})[1]["exists"] == [
        True, True, True, False]
    assert live.json("POST", "/v1/check") == (200, {"ok": True, "problems": []})


def test_bounds_are_typed_4xx_and_server_stays_up(live: LiveServer) -> None:
    live.json("POST", "/v1/namespaces", {"name": "ns-bounds"})
    too_long = [f"k{i}" for i in range(limits.chain_keys_max + 1)]
    for path, bound_keys in (("lookup", too_long), ("exists", too_long), ("delete", too_long),
                             ("prefetch", too_long)):
        status, err = live.json("POST", f"/v1/ns-bounds/{path}", {"keys": bound_keys})
        assert status == 400 and err["error"]["name"] == "LimitExceeded", path
    status, err = live.json("POST", "/v1/ns-bounds/lookup",
                            {"keys": ["a"], "lease_seconds": limits.lease_seconds_max + 1})
    assert status == 400 and err["error"]["name"] == "LimitExceeded"
    status, err = live.json("POST", "/v1/ns-bounds/lookup", {"keys": ["a"], "lease_seconds": -1})
    assert status == 400 and err["error"]["name"] == "InvalidArgument"
    status, err = live.json("POST", "/v1/ns-bounds/exists", {"keys": ["x" * 1025]})
    assert status == 400 and err["error"]["name"] in ("InvalidKey", "InvalidArgument")
    status, err = live.json("POST", "/v1/no-such-ns/lookup", {"keys": ["a"]})
    assert status == 404 and err["error"]["name"] == "NoSuchBucket"
    status, _, raw = live.request("POST", "/v1/ns-bounds/lookup", b"{not json",
                                  {"content-type": "application/json"})
    assert status == 400 and json.loads(raw)["error"]["name"] == "InvalidArgument"
    assert live.json("GET", "/healthz")[0] == 200


def test_stats_and_metrics_follow_traffic(live: LiveServer) -> None:
    live.json("POST", "/v1/namespaces", {"name": "ns-metrics"})
    live.json("POST", "/v1/ns-metrics/lookup", {"keys": ["a"]})  # histograms exist once used
    status, st = live.json("GET", "/v1/stats")
    assert status == 200 and st["device"] == "posix" and st["ready"] is True
    assert {"blocks", "hits_dram", "misses", "flash_capacity_bytes"} <= set(st["stats"])
    status, headers, raw = live.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    before = raw.decode()
    for name in ("kvstore_ops_total", "kvstore_engine_hits_total", "kvstore_engine_misses_total",
                 "kvstore_evicted_blocks_total", "kvstore_checksum_failures_total",
                 "kvstore_capacity_bytes", "kvstore_used_bytes", "kvstore_op_seconds_bucket",
                 "kvstore_blocks"):
        assert name in before, name
    live.state.engine.put("ns-metrics", "a", b"q" * 1000)
    assert live.state.engine.get("ns-metrics", "a") == b"q" * 1000
    assert live.state.engine.get("ns-metrics", "b") is None
    for _ in range(3):
        live.json("POST", "/v1/ns-metrics/lookup", {"keys": ["a", "b"]})
    live.json("POST", "/v1/ns-metrics/lookup", {"keys": ["a"] * (limits.chain_keys_max + 1)})
    after = live.request("GET", "/metrics")[2].decode()
    assert metric(after, "kvstore_ops_total", op="lookup") == \
        metric(before, "kvstore_ops_total", op="lookup") + 3
    assert metric(after, "kvstore_op_seconds_count", op="lookup") >= 3
    assert metric(after, "kvstore_engine_misses_total") >= metric(before,
                                                                  "kvstore_engine_misses_total") + 1
    assert metric(after, "kvstore_blocks") == metric(before, "kvstore_blocks") + 1
    assert metric(after, "kvstore_namespace_bytes", namespace="ns-metrics") == 1000
    assert metric(after, "kvstore_namespace_blocks", namespace="ns-metrics") == 1
    assert live.json("GET", "/v1/stats")[1]["namespaces"]["ns-metrics"] == {
        "blocks": 1, "bytes": 1000, "quota_bytes": 0, "quota_mode": "evict",
        "tenant_quota_bytes": 0, "tenant_quota_mode": "evict"}
    assert metric(after, "kvstore_errors_total", error="LimitExceeded") >= 1


def test_lookup_of_a_maximal_chain(live: LiveServer) -> None:
    """A chain of exactly chain_keys_max keys is answered, and the server keeps answering."""
    live.json("POST", "/v1/namespaces", {"name": "ns-full"})
    ks = chain(limits.chain_keys_max, seed=7)
    status, body = live.json("POST", "/v1/ns-full/lookup", {"keys": ks})
    assert status == 200 and body["prefix_len"] == 0 and body["keys"] == limits.chain_keys_max
    assert live.json("GET", "/healthz")[0] == 200


def test_405_names_every_allowed_method(live: LiveServer) -> None:
    """RFC 9110: a 405 carries Allow; each method of a path is its own route, so Starlette's
    own header named only the first (schemathesis found both)."""
    status, headers, _ = live.request("PUT", "/v1/namespaces/some-ns", b"")
    assert status == 405
    assert headers["allow"] == "DELETE, GET"
    status, headers, _ = live.request("TRACE", "/v1/namespaces", b"")
    assert status == 405 and headers["allow"] == "GET, POST"
