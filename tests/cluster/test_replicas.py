"""A namespace's replica count, on the server: recorded pod-wide in etcd with the namespace,
honoured by every node's forwarding (writes to every live replica, reads from any live one),
and learned by a ``PodClient`` built from etcd. With two replicas, a SIGKILLed node costs zero
misses through S3 on another node and through the SDK. Real etcd, real ``kvstore serve``
processes on 127.0.0.11-13."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kvstore_client import PodClient

from kvstore.cluster.membership import NodeInfo, StaticMembership

from .conftest import Etcd
from .nodes import PodNode, until
from .test_forward import local_has, s3

NS = "rep"
FAST = ["--etcd-lease-ttl", "2", "--etcd-timeout", "0.3", "--forward-timeout", "0.5"]


@pytest.fixture
def pod3(etcd: Etcd, tmp_path: Path) -> Iterator[list[PodNode]]:
    args = ["--pod", "t", "--etcd", etcd.url, *FAST]
    nodes = [PodNode(tmp_path, i, args) for i in (1, 2, 3)]
    try:
        ready = [n.wait_ready() for n in nodes]
        until(lambda: all(len(n.view()["nodes"]) == 3 for n in ready), "all see all")
        yield ready
    finally:
        for n in nodes:
            n.kill()


def _view(node: PodNode) -> StaticMembership:
    return StaticMembership([NodeInfo.from_dict(k, v) for k, v in node.view()["nodes"].items()])


def test_two_replicas_a_sigkill_costs_no_miss(etcd: Etcd, pod3: list[PodNode]) -> None:
    a, b, c = pod3
    st, doc = a.request("POST", "/v1/namespaces", json.dumps({"name": NS, "replicas": 2}).encode())
    assert st == 201 and doc["replicas"] == 2, doc
    rec = json.loads(etcd.keys(f"/kvstore/t/namespaces/{NS}")[f"/kvstore/t/namespaces/{NS}"])
    assert rec["replicas"] == 2
    for n in (b, c):  # every node has it, with its replica count
        until(lambda n=n: n.request("GET", f"/v1/namespaces/{NS}")[0] == 200, "ns on every node")
        assert n.request("GET", f"/v1/namespaces/{NS}")[1]["replicas"] == 2
    view = _view(a)
    keys = [f"blk{i:03d}" for i in range(30)]
    data = {k: os.urandom(1000 + 37 * i) for i, k in enumerate(keys)}
    owners = {k: {n.node_id for n in view.owners(NS, k, 2)} for k in keys}
    for k in keys:
        s3(a).put_object(Bucket=NS, Key=k, Body=data[k])
    for n in pod3:  # each block on exactly its two replicas
        assert local_has(n, keys, NS) == [n.node_id in owners[k] for k in keys]
    # the SDK learns the namespace's count from etcd (no replicas= given)
    with PodClient(etcd=etcd.url, pod="t", namespace=NS, timeout=0.5) as pod:
        until(lambda: len(pod.membership.nodes()) == 3, "sdk sees the pod")
        assert pod.get_many(keys[:1]) and pod.replicas == 2
        b.kill()  # SIGKILL: one replica of two thirds of the blocks is gone
        for k in keys:  # zero misses through S3 on another node, before and after the lapse
            assert s3(c).get_object(Bucket=NS, Key=k)["Body"].read() == data[k]
        assert pod.get_many(keys) == [data[k] for k in keys]
        until(lambda: "node2" not in a.view()["nodes"] and "node2" not in c.view()["nodes"],
              "b's lease lapses")
        for k in keys:
            for n in (a, c):
                assert s3(n).get_object(Bucket=NS, Key=k)["Body"].read() == data[k]
        assert pod.get_many(keys) == [data[k] for k in keys]
        # node1 and node3 are now both replicas of every key: a read at the replica that lacks
        # one (node2 held it) found it at the other and copied it over
        until(lambda: local_has(a, keys, NS) == [True] * len(keys)
              and local_has(c, keys, NS) == [True] * len(keys), "replicas repaired")
    # a delete through the pod reaches every replica (and the previous owner)
    doomed = keys[:5]
    with PodClient(etcd=etcd.url, pod="t", namespace=NS, timeout=0.5) as pod:
        until(lambda: len(pod.membership.nodes()) == 2, "sdk sees the two live nodes")
        assert pod.delete_many(doomed) == len(doomed)
    for n in (a, c):
        assert local_has(n, doomed, NS) == [False] * len(doomed)
