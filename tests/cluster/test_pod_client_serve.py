"""A ``PodClient`` that learns membership from the registrations real ``kvstore serve``
processes write to a real etcd (not values written by the test): blocks it puts are read
byte-exact through it and through either node's S3 API."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from kvstore_client import PodClient

from .conftest import Etcd
from .nodes import PodNode

JOIN_SECONDS_MAX = 5.0


@pytest.fixture
def pod(etcd: Etcd, tmp_path: Path) -> Iterator[list[PodNode]]:
    args = ["--pod", "pc", "--etcd", etcd.url, "--etcd-lease-ttl", "3", "--etcd-timeout", "0.5"]
    nodes = [PodNode(tmp_path, i, args) for i in (1, 2)]
    try:
        yield [n.wait_ready() for n in nodes]
    finally:
        for n in nodes:
            n.kill()


def test_pod_client_from_etcd_reads_what_s3_serves(etcd: Etcd, pod: list[PodNode]) -> None:
    client = PodClient(etcd=etcd.url, pod="pc", namespace="pcns", create=True)
    with client:
        deadline = time.monotonic() + JOIN_SECONDS_MAX
        while {n.node_id for n in client.membership.nodes()} != {"node1", "node2"}:
            assert time.monotonic() < deadline, client.membership.nodes()
            time.sleep(0.05)
        keys = [f"{i:032x}" for i in range(24)]
        values = [os.urandom(1000 + i) for i in range(24)]
        assert all(client.put_many(keys, values))
        assert client.get_many(keys) == values
        assert client.lookup(keys) == len(keys)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    for node in pod:
        s3 = boto3.client("s3", endpoint_url=node.url, region_name="us-east-1",
                          aws_access_key_id="dev", aws_secret_access_key="dev",
                          config=Config(s3={"addressing_style": "path"},
                                        retries={"max_attempts": 1}))
        for k, v in zip(keys, values, strict=True):
            assert s3.get_object(Bucket="pcns", Key=k)["Body"].read() == v


def test_pod_stats_and_the_ui_pod_table(etcd: Etcd, pod: list[PodNode], tmp_path: Path) -> None:
    """/v1/pod/stats on any node lists every node with the figures its own /v1/stats has, and
    /ui (headless Chromium) shows one row per node with those block counts."""
    import json
    import subprocess

    from tests.api.browser import CHROMIUM_FLAGS, Dom, need_chromium

    client = PodClient(etcd=etcd.url, pod="pc", namespace="pcstats", create=True)
    with client:
        deadline = time.monotonic() + JOIN_SECONDS_MAX
        while len(client.membership.nodes()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        keys = [f"{i:032x}" for i in range(40)]
        assert all(client.put_many(keys, [os.urandom(500) for _ in keys]))
    a, b = pod
    status, doc = a.request("GET", "/v1/pod/stats")
    assert status == 200 and doc["self"] == "node1"
    rows = {n["node_id"]: n for n in doc["nodes"]}
    assert set(rows) == {"node1", "node2"} and all(n["reachable"] for n in rows.values())
    for node in pod:
        own = node.request("GET", "/v1/stats")[1]["stats"]
        assert rows[node.node_id]["blocks"] == own["blocks"]
    assert sum(n["blocks"] for n in rows.values()) == 40
    chromium = need_chromium()
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=4000", "--dump-dom", f"{a.url}/ui"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    d = Dom(dom)
    assert d.body.get("data-loaded") == "1", dom[-2000:]
    shown = dict(re.findall(r'data-node="(node\d)" data-blocks="(\d+)"', dom))
    assert shown == {k: str(v["blocks"]) for k, v in rows.items()}, json.dumps(rows)
