"""Real ``kvstore serve`` processes on 127.0.0.11, 127.0.0.12 and a real etcd: registration,
lease lapse after SIGKILL, graceful deregistration, etcd killed and back, pod-wide namespaces
(S3 CreateBucket on one node, objects through another), static --peers."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.serve_proc import free_ports

from .conftest import Etcd
from .nodes import PodNode, until

FAST = ["--etcd-lease-ttl", "2", "--etcd-timeout", "0.3"]


@pytest.fixture
def pod(etcd: Etcd, tmp_path: Path) -> Iterator[list[PodNode]]:
    args = ["--pod", "t", "--etcd", etcd.url, *FAST]
    nodes = [PodNode(tmp_path, i, args) for i in (1, 2)]
    try:
        yield [n.wait_ready() for n in nodes]
    finally:
        for n in nodes:
            n.kill()


def s3(node: PodNode):  # noqa: ANN201 - a boto3 client
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    return boto3.client("s3", endpoint_url=node.url, region_name="us-east-1",
                        aws_access_key_id="dev", aws_secret_access_key="dev",
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


def test_nodes_register_and_see_each_other(etcd: Etcd, pod: list[PodNode]) -> None:
    a, b = pod
    keys = etcd.keys("/kvstore/t/nodes/")
    doc = json.loads(keys["/kvstore/t/nodes/node1"])
    assert doc["http"] == a.url and doc["bulk"].startswith("127.0.0.11:")
    assert doc["capacity_bytes"] == 32 << 20 and doc["epoch"] > 0
    until(lambda: set(a.view()["nodes"]) == {"node1", "node2"}, "a sees both")
    # each node learns of the other through its own etcd watch: b may be a moment behind a
    until(lambda: set(b.view()["nodes"]) == {"node1", "node2"}, "b sees both")
    view = b.view()
    assert view["kind"] == "etcd" and view["self"] == "node2" and view["connected"]
    assert view["nodes"]["node1"]["http"] == a.url
    assert "pod: t (etcd)  node: node1" in a.out
    until(lambda: b"kvstore_pod_nodes 2.0" in a.request("GET", "/metrics")[1], "metrics")
    text = a.request("GET", "/metrics")[1]
    assert b"kvstore_pod_membership_connected 1.0" in text
    assert b"kvstore_pod_registrations_total 1.0" in text


def test_sigkill_lapses_graceful_stop_deregisters(etcd: Etcd, tmp_path: Path,
                                                  pod: list[PodNode]) -> None:
    a, b = pod
    until(lambda: len(a.view()["nodes"]) == 2, "both registered")
    b.kill()  # SIGKILL: no deregistration, the lease lapses (TTL 2 s)
    until(lambda: set(a.view()["nodes"]) == {"node1"}, "b's lease lapses from a's view")
    c = PodNode(tmp_path, 3, ["--pod", "t", "--etcd", etcd.url, *FAST]).wait_ready()
    try:
        until(lambda: "node3" in a.view()["nodes"], "a sees c join")
        assert c.stop() == 0
        # revoked at stop: gone from etcd as soon as the process is
        assert "/kvstore/t/nodes/node3" not in etcd.keys("/kvstore/t/nodes/")
        until(lambda: "node3" not in a.view()["nodes"], "a drops c")
        assert "deregistered node3" in c.err
    finally:
        c.kill()


def test_etcd_down_nodes_keep_serving_and_reregister(etcd: Etcd, pod: list[PodNode]) -> None:
    a, b = pod
    assert a.request("PUT", "/kvb", b"")[0] == 200
    until(lambda: len(a.view()["nodes"]) == 2, "a sees both")
    # a namespace reaches the other nodes through etcd's watch (milliseconds; like S3's own
    # CreateBucket, eventually consistent): b must have it before etcd goes, or b (the
    # owner of some keys) answers NoSuchBucket for a PUT forwarded to it
    until(lambda: any(n["name"] == "kvb" for n in b.request("GET", "/v1/namespaces")[1]
                      ["namespaces"]), "b has the namespace", wait_s=5.0)
    etcd.kill()
    until(lambda: not a.view()["connected"], "a notices etcd is gone")
    assert set(a.view()["nodes"]) == {"node1", "node2"}  # the last view
    assert a.request("PUT", "/kvb/blk", b"x" * 4096)[0] == 200  # still serving
    assert a.request("GET", "/kvb/blk") == (200, b"x" * 4096)
    etcd.start()
    until(lambda: a.view()["connected"] and b.view()["connected"], "both reconnect")
    until(lambda: set(etcd.keys("/kvstore/t/nodes/")) == {"/kvstore/t/nodes/node1",
                                                         "/kvstore/t/nodes/node2"},
          "both registered again")
    assert "registered node1" in a.err.split("lost", 1)[-1]


def test_namespace_created_on_a_is_usable_on_b(pod: list[PodNode]) -> None:
    a, b = pod
    s3(a).create_bucket(Bucket="shared")
    until(lambda: any(n["name"] == "shared" for n in b.request("GET", "/v1/namespaces")[1]
                      ["namespaces"]), "b has the namespace", wait_s=5.0)
    s3(b).put_object(Bucket="shared", Key="k1", Body=b"block-bytes")
    assert s3(b).get_object(Bucket="shared", Key="k1")["Body"].read() == b"block-bytes"
    assert a.request("POST", "/v1/namespaces", json.dumps({"name": "ctl"}).encode())[0] in (
        200, 201)
    until(lambda: any(n["name"] == "ctl" for n in b.request("GET", "/v1/namespaces")[1]
                      ["namespaces"]), "b has the /v1 namespace", wait_s=5.0)
    s3(a).delete_bucket(Bucket="ctl")
    until(lambda: all(n["name"] != "ctl" for n in b.request("GET", "/v1/namespaces")[1]
                      ["namespaces"]), "b drops the deleted namespace", wait_s=5.0)


def test_static_peers(tmp_path: Path) -> None:
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps([
        {"node_id": "node1", "http": "http://127.0.0.11:1", "bulk": "127.0.0.11:2",
         "capacity_bytes": 1}, {"node_id": "node2", "http": "http://127.0.0.12:1"}]))
    n = PodNode(tmp_path, 1, ["--peers", str(peers)]).wait_ready()
    try:
        view = n.view()
        assert view["kind"] == "static" and sorted(view["nodes"]) == ["node1", "node2"]
    finally:
        assert n.stop() == 0


def test_forward_waits_for_a_namespace_the_owner_has_not_applied(tmp_path: Path) -> None:
    """A namespace created at one node reaches the others through etcd's watch a moment later.
    A forwarded call that meets the owner's NoSuchBucket in that moment is asked again within
    --forward-timeout (the entry node authorized the namespace, so the owner is just behind).
    Static --peers share no namespaces at all, which makes the moment as long as the test
    wants: the bucket is created at b 0.5 s after the PUTs through a began."""
    p = free_ports(4)  # distinct, for both nodes' HTTP and bulk ports
    ports = {1: (p[0], p[1]), 2: (p[2], p[3])}
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps([
        {"node_id": f"node{i}", "http": f"http://127.0.0.{10 + i}:{h}",
         "bulk": f"127.0.0.{10 + i}:{b}", "capacity_bytes": 32 << 20}
        for i, (h, b) in ports.items()]))
    # later flags win: each node listens on the ports the peers file names
    nodes = [PodNode(tmp_path, i, ["--peers", str(peers), "--forward-timeout", "5", "--port",
                                   str(ports[i][0]), "--bulk-port", str(ports[i][1])])
             for i in (1, 2)]
    try:
        a, b = (n.wait_ready() for n in nodes)
        s3(a).create_bucket(Bucket="late")
        timer = threading.Timer(0.5, lambda: s3(b).create_bucket(Bucket="late"))
        timer.start()
        bodies = {f"k{i}": os.urandom(1024) for i in range(16)}  # some keys are b's
        try:
            for k, body in bodies.items():
                s3(a).put_object(Bucket="late", Key=k, Body=body)
        finally:
            timer.join()
        for k, body in bodies.items():  # stored: none was a skipped write
            assert s3(a).get_object(Bucket="late", Key=k)["Body"].read() == body
        assert b"kvstore_forwarded_requests_total" in a.request("GET", "/metrics")[1]
    finally:
        for n in nodes:
            n.kill()
