"""PodClient against three real ``kvstore serve`` processes on 127.0.0.11/12/13, one of which
is SIGKILLed: its blocks become misses within the node timeout, every other block keeps being
served byte-exact, nothing raises; with two replicas the kill costs zero misses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kvstore_client import Client, PodClient
from kvstore_wire import placement

from tests.serve_proc import child_env

START_SECONDS_MAX = 30.0
HOSTS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
SMALL = ["--capacity", "32MiB", "--segment-size", "4MiB", "--dram", "8MiB"]
TIMEOUT_SECONDS = 0.5


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, tmp: Path, host: str) -> None:
        self.host, self.bulk_port = host, _free_port(host)
        self.out = tmp / f"{host}.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvstore", "serve", "--host", host,
                 "--port", str(_free_port(host)), "--bulk-port", str(self.bulk_port),
                 "--data-dir", str(tmp / host), *SMALL],
                stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=tmp)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS_MAX
        while "kvstore: ready" not in self.out.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"{self.host} not ready: {self.out.read_text()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def pod(tmp_path: Path):
    nodes = [Node(tmp_path, h) for h in HOSTS]
    try:
        for n in nodes:
            n.wait_ready()
        yield nodes
    finally:
        for n in nodes:
            n.kill()


def test_sigkill_of_a_node_turns_only_its_blocks_into_misses(pod) -> None:
    specs = [(f"n{i + 1}", f"{n.host}:{n.bulk_port}") for i, n in enumerate(pod)]
    members = [placement.Member(s[0]) for s in specs]
    keys = [os.urandom(16).hex() for _ in range(150)]
    vals = [os.urandom(2000 + i) for i in range(len(keys))]
    one = PodClient(nodes=specs, namespace="pod-r1", create=True, timeout=TIMEOUT_SECONDS)
    two = PodClient(nodes=specs, namespace="pod-r2", create=True, timeout=TIMEOUT_SECONDS,
                    replicas=2)
    with one, two:
        assert one.put_many(keys, vals) == [True] * len(keys)
        assert two.put_many(keys, vals) == [True] * len(keys)
        for (node_id, _), n in zip(specs, pod, strict=True):  # each node holds its share
            with Client(n.host, n.bulk_port, namespace="pod-r1") as plain:
                assert plain.exists_many(keys) == [
                    placement.owners("pod-r1", k, members)[0].node_id == node_id for k in keys]
        pod[1].kill()  # SIGKILL n2
        lost = [placement.owners("pod-r1", k, members)[0].node_id == "n2" for k in keys]
        assert 0 < sum(lost) < len(keys)
        for _ in range(3):  # before and after n2's breaker opens
            got = one.get_many(keys)
            assert got == [None if x else v for v, x in zip(vals, lost, strict=True)]
            assert two.get_many(keys) == vals  # replicas: zero misses
        assert one.lookup(keys) == lost.index(True)
        assert two.lookup(keys) == len(keys)
        st = one.stats()
        assert st["nodes"]["n2"] is None and st["nodes"]["n1"] and st["nodes"]["n3"]
        assert st["client"]["breakers"]["n2"] in ("open", "half-open")
        assert st["client"]["read_misses_failed"] >= sum(lost)
        assert two.stats()["client"]["read_misses_failed"] == 0
