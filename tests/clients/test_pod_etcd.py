"""PodClient learning its pod from a real etcd (Debian's etcd 3.4 on 127.0.0.1): nodes
registered under ``/kvstore/<pod>/nodes/<id>`` with a lease (written here the way the servers
write them) are used, a node that registers is used within 2 s, one whose lease is revoked drops
out, and with etcd killed the client keeps its last view and keeps serving."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kvstore_client import PodClient
from kvstore_client.pod_etcd import parse_registration

from kvstore import limits
from kvstore.cluster.membership import NodeInfo
from kvstore.engine.device import MemoryDevice
from kvstore.engine.types import EngineConfig
from kvstore.testing import BackgroundBulkServer

aetcd = pytest.importorskip("aetcd", reason="the etcd extra (aetcd) is not installed")
ETCD = shutil.which("etcd")
pytestmark = pytest.mark.skipif(ETCD is None, reason="needs Debian's etcd-server package")
POD, NS = "p1", "pod-etcd"
JOIN_SECONDS_MAX = 2.0
START_SECONDS_MAX = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port, peer = _free_port(), _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "etcd.log", "wb") as log:
        proc = subprocess.Popen([str(ETCD), "--data-dir", str(tmp_path / "etcd"),
                                 "--listen-client-urls", url, "--advertise-client-urls", url,
                                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                                 "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_SECONDS_MAX
    while b"ready to serve client requests" not in (tmp_path / "etcd.log").read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, "etcd did not start"
        time.sleep(0.05)
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


async def _etcd(url: str, op: str, key: str = "", value: bytes = b"", lease: int = 0) -> int:
    host, port = url.removeprefix("http://").split(":")
    c = aetcd.Client(host=host, port=int(port))
    try:
        if op == "register":
            grant = await c.lease(30)
            await c.put(key.encode(), value, lease=grant)
            return int(grant.id)
        await c.revoke_lease(lease)
        return 0
    finally:
        await c.close()


def _register(url: str, node_id: str, srv: BackgroundBulkServer) -> int:
    # the value exactly as `kvstore serve` registers it (the server's own encoder)
    value = NodeInfo(node_id=node_id, http="http://127.0.0.1:1", bulk=f"{srv.host}:{srv.port}",
                     capacity_bytes=64 * limits.MiB, epoch=1.0).to_json()
    return asyncio.run(_etcd(url, "register", f"/kvstore/{POD}/nodes/{node_id}", value))


@pytest.fixture
def servers() -> Iterator[list[BackgroundBulkServer]]:
    cfg = EngineConfig(data_dir="/mem", capacity_bytes=64 * limits.MiB,
                       segment_bytes=8 * limits.MiB, dram_bytes=8 * limits.MiB)
    started = [BackgroundBulkServer(cfg, MemoryDevice(), host=h, threads=2).start()
               for h in ("127.0.0.11", "127.0.0.12", "127.0.0.13")]
    yield started
    for s in started:
        s.stop(timeout=2.0)


def _wait_nodes(pod: PodClient, want: set[str]) -> float:
    t0 = time.monotonic()
    while {s.node_id for s in pod.membership.nodes()} != want:
        assert time.monotonic() - t0 < JOIN_SECONDS_MAX, pod.membership.nodes()
        time.sleep(0.02)
    return time.monotonic() - t0


def test_pod_client_learns_membership_from_etcd(etcd, servers) -> None:
    url, proc = etcd
    leases = {f"n{i + 1}": _register(url, f"n{i + 1}", s) for i, s in enumerate(servers[:2])}
    keys = [os.urandom(16).hex() for _ in range(60)]
    vals = [os.urandom(1000) for _ in keys]
    with PodClient(etcd=url, pod=POD, namespace=NS, create=True, timeout=0.5) as pod:
        _wait_nodes(pod, {"n1", "n2"})
        assert pod.put_many(keys, vals) == [True] * len(keys)
        assert pod.get_many(keys) == vals
        leases["n3"] = _register(url, "n3", servers[2])  # a node joins
        _wait_nodes(pod, {"n1", "n2", "n3"})
        more = [os.urandom(16).hex() for _ in range(60)]
        pod.put_many(more, vals)
        assert pod.stats()["nodes"]["n3"]["blocks"] > 0  # used once it is in the view
        asyncio.run(_etcd(url, "revoke", lease=leases["n1"]))  # its lease goes: it drops out
        _wait_nodes(pod, {"n2", "n3"})
        proc.send_signal(signal.SIGKILL)  # etcd dies: the last view stays and serves
        proc.wait(10)
        assert pod.get_many(more) is not None
        assert {s.node_id for s in pod.membership.nodes()} == {"n2", "n3"}
        assert pod.put_many(keys, vals) is not None and pod.get_many(keys) == vals


def test_registration_values_are_parsed_leniently() -> None:
    spec = parse_registration("n1", b'{"endpoints": {"bulk": "tcp://127.0.0.5:8701"}, '
                                    b'"capacity_bytes": 2048}')
    assert spec is not None and (spec.host, spec.port, spec.weight) == ("127.0.0.5", 8701, 2048.0)
    spec = parse_registration("n2", b'{"endpoints": {"bulk": {"host": "h", "port": 9}}}')
    assert spec is not None and (spec.node_id, spec.weight) == ("n2", 1.0)
    assert parse_registration("n3", b"not json") is None
    assert parse_registration("n4", b'{"endpoints": {}}') is None
