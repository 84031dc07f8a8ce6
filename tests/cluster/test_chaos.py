"""Pod chaos: a workload through S3 on one node and through the SDK's ``PodClient`` runs while
the other nodes are SIGKILLed and restarted and etcd is killed and restarted. The workload may
see misses (a block whose owner is down), never an error answer or other bytes than were put;
afterwards every node's ``POST /v1/check`` is clean."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import threading
import time
from pathlib import Path

from kvstore_client import PodClient

from .conftest import Etcd
from .nodes import PodNode, until

NS = "chaos"
FAST = ["--etcd-lease-ttl", "2", "--etcd-timeout", "0.3", "--forward-timeout", "0.5"]
OPS_MAX = 20_000  # bounds the workload loop whatever the timing
PAUSE_S = 1.0
QUOTA = 1 << 30  # recorded pod-wide with the namespace; far above what the workload writes  # between chaos steps: the workload runs through each state


def content(key: str) -> bytes:
    unit = hashlib.blake2b(key.encode(), digest_size=64).digest()
    return unit * (1 + int.from_bytes(unit[:2], "little") % 64)


class Workload:
    def __init__(self, node: PodNode, etcd_url: str) -> None:
        self.node, self.etcd_url = node, etcd_url
        self.keys: list[str] = []
        self.errors: list[str] = []
        self.wrong: list[str] = []
        self.hits = self.misses = self.puts = 0
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def s3(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.node.host, self.node.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers={"content-length": str(len(body))})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def run(self) -> None:
        rng = random.Random(7)
        with PodClient(etcd=self.etcd_url, pod="t", namespace=NS, timeout=0.5) as pod:
            for i in range(OPS_MAX):
                if self.halt.is_set():
                    return
                try:
                    self.step(i, rng, pod)
                except Exception as exc:  # noqa: BLE001 - any exception is an error
                    self.errors.append(f"op {i}: {exc!r}")

    def step(self, i: int, rng: random.Random, pod: PodClient) -> None:
        if i % 3 == 0 or not self.keys:
            key = f"k{i:05d}"
            status, raw = self.s3("PUT", f"/{NS}/{key}", content(key))
            if status != 200:
                self.errors.append(f"PUT {key}: {status} {raw[:200]!r}")
                return
            self.keys.append(key)
            self.puts += 1
        elif i % 3 == 1:
            key = rng.choice(self.keys)
            status, raw = self.s3("GET", f"/{NS}/{key}")
            if status == 200:
                self.hits += 1
                if raw != content(key):
                    self.wrong.append(key)
            elif status == 404 and b"NoSuchKey" in raw:
                self.misses += 1
            else:
                self.errors.append(f"GET {key}: {status} {raw[:200]!r}")
        else:
            keys = [rng.choice(self.keys) for _ in range(8)]
            for k, got in zip(keys, pod.get_many(keys), strict=True):
                if got is None:
                    self.misses += 1
                elif got == content(k):
                    self.hits += 1
                else:
                    self.wrong.append(k)

    def stop(self) -> None:
        self.halt.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def test_kill_and_restart_nodes_and_etcd_under_a_workload(etcd: Etcd, tmp_path: Path) -> None:
    args = ["--pod", "t", "--etcd", etcd.url, *FAST]
    nodes = {i: PodNode(tmp_path, i, args) for i in (1, 2, 3)}
    try:
        for n in nodes.values():
            n.wait_ready()
        until(lambda: all(len(n.view()["nodes"]) == 3 for n in nodes.values()), "all see all")
        a = nodes[1]
        st, doc = a.request("POST", "/v1/namespaces", json.dumps(
            {"name": NS, "quota_bytes": QUOTA}).encode())
        assert st == 201, doc
        for n in nodes.values():  # pod-wide, with its quota (the pod's namespace record)
            until(lambda n=n: n.request("GET", f"/v1/namespaces/{NS}")[0] == 200, "ns everywhere")
            assert n.request("GET", f"/v1/namespaces/{NS}")[1]["quota_bytes"] == QUOTA
        load = Workload(a, etcd.url)
        time.sleep(PAUSE_S)

        def restart(i: int) -> None:
            nodes[i] = PodNode(tmp_path, i, args)
            nodes[i].wait_ready()

        steps = [lambda: nodes[2].kill(), lambda: restart(2), etcd.kill, etcd.start,
                 lambda: nodes[3].kill(), etcd.kill, lambda: restart(3), etcd.start,
                 lambda: nodes[2].kill(), lambda: restart(2)]
        for step in steps:
            step()
            time.sleep(PAUSE_S)
        until(lambda: all(len(n.view()["nodes"]) == 3 for n in nodes.values()), "all back")
        time.sleep(PAUSE_S)
        load.stop()
        print(f"chaos: {load.puts} puts, {load.hits} hits, {load.misses} misses, "
              f"{len(load.errors)} errors, {len(load.wrong)} wrong")
        assert not load.wrong, load.wrong[:5]
        assert not load.errors, load.errors[:5]
        assert load.puts > 20 and load.hits > 20, (load.puts, load.hits)
        for n in nodes.values():
            st, doc = n.request("POST", "/v1/check")
            assert st == 200 and doc["ok"], (n.node_id, doc)
    finally:
        for n in nodes.values():
            n.kill()
