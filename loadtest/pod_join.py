"""The hit rate of a warm 3-node pod before and after a 4th node joins (``bench_pod.py``).

A real etcd (Debian's ``etcd``) on 127.0.0.1 and ``kvstore serve --pod --etcd`` on
127.0.0.11-13; ``--keys`` blocks written through a ``PodClient`` that learned the pod from etcd
(each block on its rendezvous owner). Reads go through node 1's S3 API (GET, one keep-alive
connection), which forwards to the owner. Then node 4 (127.0.0.14) joins: about a quarter of
the keys now rank node 4 first, and node 4 has none of them. Measured, each as hits / keys:

- ``before``: through node 1, 3 nodes;
- ``after``: through node 1, the first pass after the join (the previous-owner read finds a
  moved key at the node that owned it before; the hit is copied forward to node 4);
- ``after_again``: a second pass, once the copies are done (served by node 4 itself);
- ``sdk_before`` / ``sdk_after``: the same keys through the ``PodClient`` before the join and
  right after it, before any S3 read (the SDK asks the owner only, no previous-owner read:
  its drop is the share of keys that moved); ``sdk_after_copies``: once node 1's reads have
  copied the moved blocks forward.

Run once with the previous-owner read on (the default) and once with every node started with
``--no-previous-owner-read``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from kvstore_client import PodClient
from kvstore_wire import placement

ROOT = Path(__file__).resolve().parent.parent
NS = "bench-join"
POD = "bench"
START_SECONDS_MAX = 60.0
WAIT_SECONDS_MAX = 30.0


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _until(cond: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"not within {WAIT_SECONDS_MAX}s: {what}")
        time.sleep(0.05)


class Etcd:
    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise SystemExit("etcd not installed: apt-get install etcd-server")
        port, peer = _free_port("127.0.0.1"), _free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{port}"
        peer_url = f"http://127.0.0.1:{peer}"
        self.log = open(tmp / "etcd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, "--name", "b", "--data-dir", str(tmp / "etcd"), "--listen-client-urls",
             self.url, "--advertise-client-urls", self.url, "--listen-peer-urls", peer_url,
             "--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"b={peer_url}"],
            stdout=self.log, stderr=subprocess.STDOUT)

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        _until(listening, "etcd listens")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


class Node:
    def __init__(self, tmp: Path, i: int, args: list[str]) -> None:
        self.host, self.node_id = f"127.0.0.{10 + i}", f"node{i}"
        self.port = _free_port(self.host)
        self.log = tmp / f"{self.node_id}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'clients'}"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvstore", "serve", "--host", self.host, "--port",
                 str(self.port), "--bulk-port", str(_free_port(self.host)), "--node-id",
                 self.node_id, "--data-dir", str(tmp / self.node_id), "--capacity", "256MiB",
                 "--segment-size", "16MiB", "--dram", "64MiB", "--log-level", "warning", *args],
                stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> Node:
        deadline = time.monotonic() + START_SECONDS_MAX
        while "kvstore: ready" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.node_id} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def metric(self, name: str) -> dict[str, float]:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {m.group(1): float(m.group(2))
                for m in re.finditer(rf"^{name}{{(.*?)}} (\S+)$", text, re.M)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _http_hits(node: Node, keys: list[str], want: dict[str, bytes]) -> int:
    """GETs of every key through ``node``'s S3 API on one keep-alive connection: the hits
    (byte-exact; a wrong byte aborts the benchmark)."""
    conn = http.client.HTTPConnection(node.host, node.port, timeout=30)
    hits = 0
    try:
        for k in keys:
            conn.request("GET", f"/{NS}/{k}")
            r = conn.getresponse()
            body = r.read()
            if r.status == 200:
                if body != want[k]:
                    raise SystemExit(f"wrong bytes for {k}")
                hits += 1
            elif r.status != 404:
                raise SystemExit(f"GET {k}: HTTP {r.status}")
    finally:
        conn.close()
    return hits


def _sdk_hits(pod: PodClient, keys: list[str]) -> int:
    return sum(1 for i in range(0, len(keys), 256) for g in pod.get_many(keys[i:i + 256])
               if g is not None)


def join(tmp: Path, n_keys: int, block: int, previous_owner_read: bool) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    etcd = Etcd(tmp)
    args = ["--pod", POD, "--etcd", etcd.url, "--etcd-lease-ttl", "5", "--etcd-timeout", "1",
            "--forward-timeout", "2"]
    if not previous_owner_read:
        args.append("--no-previous-owner-read")
    nodes = [Node(tmp, i, args) for i in (1, 2, 3)]
    try:
        for n in nodes:
            n.wait_ready()
        a = nodes[0]
        _until(lambda: len(a.get_json("/v1/pod")["nodes"]) == 3, "node1 sees 3 nodes")
        req = urllib.request.Request(f"http://{a.host}:{a.port}/v1/namespaces", method="POST",
                                     data=json.dumps({"name": NS}).encode(),
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=10).close()
        keys = [os.urandom(16).hex() for _ in range(n_keys)]
        data = {k: os.urandom(block) for k in keys}
        with PodClient(etcd=etcd.url, pod=POD, namespace=NS, timeout=2.0) as pod:
            _until(lambda: len(pod.membership.nodes()) == 3, "the SDK sees 3 nodes")
            for i in range(0, n_keys, 256):
                pod.put_many(keys[i:i + 256], [data[k] for k in keys[i:i + 256]])
            before = _http_hits(a, keys, data)
            sdk_before = _sdk_hits(pod, keys)
            nodes.append(Node(tmp, 4, args).wait_ready())
            _until(lambda: len(a.get_json("/v1/pod")["nodes"]) == 4, "node1 sees node4")
            _until(lambda: len(pod.membership.nodes()) == 4, "the SDK sees node4")
            members = [placement.Member(f"node{i}") for i in (1, 2, 3, 4)]
            moved = sum(1 for k in keys if placement.owners(NS, k, members)[0].node_id == "node4")
            sdk_after = _sdk_hits(pod, keys)  # the SDK asks owners only: moved keys miss
            t0 = time.perf_counter()
            after = _http_hits(a, keys, data)
            after_s = time.perf_counter() - t0

            def copies_done() -> bool:
                c = a.metric("kvstore_copy_forward_total")
                return c.get('outcome="started"', 0) <= c.get('outcome="ok"', 0) + c.get(
                    'outcome="failed"', 0)
            _until(copies_done, "copy-forwards done")
            t0 = time.perf_counter()
            after_again = _http_hits(a, keys, data)
            again_s = time.perf_counter() - t0
            sdk_copied = _sdk_hits(pod, keys)  # after the copy-forwards: at node 4 now
        copies = a.metric("kvstore_copy_forward_total")
        return {"previous_owner_read": previous_owner_read, "keys": n_keys, "block_bytes": block,
                "moved_to_node4": moved, "moved_share": round(moved / n_keys, 4),
                "before": round(before / n_keys, 4), "after": round(after / n_keys, 4),
                "after_again": round(after_again / n_keys, 4),
                "sdk_before": round(sdk_before / n_keys, 4),
                "sdk_after": round(sdk_after / n_keys, 4),
                "sdk_after_copies": round(sdk_copied / n_keys, 4),
                "after_pass_s": round(after_s, 2), "after_again_pass_s": round(again_s, 2),
                "copy_forward": {k.split('"')[1]: int(v) for k, v in copies.items()}}
    finally:
        for n in nodes:
            n.stop()
        etcd.stop()


def render_rows(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for j in rows:
        mode = "on" if j["previous_owner_read"] else "off (--no-previous-owner-read)"
        out.append(f"| hit rate, warm 3-node pod + a 4th node, previous-owner read {mode}; "
                   f"{j['keys']} keys of {j['block_bytes']} B, {j['moved_share']:.1%} moved to "
                   f"node 4 | S3 via node 1: before {j['before']:.1%}, after {j['after']:.1%}, "
                   f"second pass {j['after_again']:.1%}; SDK: before {j['sdk_before']:.1%}, "
                   f"after {j['sdk_after']:.1%}, after the copies {j['sdk_after_copies']:.1%}; "
                   f"copy-forward {j['copy_forward']} | drop <= "
                   "moved share |")
    return out
