"""``kvstore pod up`` (a test pod on this machine) and ``kvstore pod status`` (what a pod is
doing, from etcd and each node's ``/metrics``).

``pod up --nodes N`` starts Debian's ``etcd`` on 127.0.0.1 (temporary data directory) and N
``kvstore serve`` processes, node *i* on its own loopback address 127.0.0.(10+i), so node
addresses differ as they would on a network (all of 127/8 is loopback on Linux). It prints the
endpoints and one ``kvstore pod: ready`` line, and on SIGTERM or Ctrl-C stops the nodes (each
drains and deregisters), then etcd, and removes what it created. Exit status: 0 after a clean
stop, 1 when something could not start or a process died, 2 for bad arguments.

``pod status --etcd URL`` reads the pod's nodes from etcd and each one's ``/metrics``. Nodes
served with TLS are read over HTTPS: ``--tls-ca FILE`` verifies them with a private CA (else
the system trust store), ``--tls-cert``/``--tls-key`` present a client certificate to nodes
that require one (``serve --tls-client-ca``). A node that cannot be read (down, or a failed
handshake) is listed as DOWN with the reason; exit status 1 when etcd does not answer, 2 for
bad arguments (a TLS file that is missing or unusable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from kvstore import limits
from kvstore.cluster.status import node_stats, status_tls_context, summarize

# Nodes `pod up` starts at most: 127.0.0.11 .. 127.0.0.(10 + this).
POD_UP_NODES_MAX = 64
# Seconds for etcd to listen and for each node to print its ready line.
START_S = 60.0
# Seconds `pod status` waits for one node's /metrics.
ETCD_PACKAGE = "etcd-server"


def add_pod_arguments(sub: argparse._SubParsersAction) -> None:
    pod = sub.add_parser("pod", help="run a test pod here, or show a pod's state")
    cmds = pod.add_subparsers(dest="pod_command", metavar="POD_COMMAND")
    up = cmds.add_parser("up", help="start etcd and N nodes on 127.0.0.11, 127.0.0.12, ...")
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    up.add_argument("--pod", default="dev", help="pod name (default dev)")
    up.add_argument("--port", type=int, default=8700,
                    help="HTTP port of every node, each on its own address (default 8700; "
                         "0: any free port)")
    up.add_argument("--bulk-port", type=int, default=8701, help="bulk port (default 8701)")
    up.add_argument("--etcd-port", type=int, default=0,
                    help="etcd client port on 127.0.0.1 (default: a free one)")
    up.add_argument("--data-dir", default=None,
                    help="keep node data under DIR/nodeI (default: a temporary directory, "
                         "removed at stop)")
    up.add_argument("--capacity", default="1GiB", help="flash budget per node (default 1GiB)")
    up.add_argument("--dram", default="128MiB", help="DRAM tier per node (default 128MiB)")
    up.add_argument("--segment-size", default="64MiB", help="segment size (default 64MiB)")
    up.add_argument("--device", default="auto", help="I/O device (default auto)")
    up.add_argument("--etcd-lease-ttl", default=None, help="node lease TTL in seconds")
    st = cmds.add_parser("status", help="nodes, liveness, capacity and use, blocks, hit rate")
    st.add_argument("--etcd", required=True, help="etcd client URLs, comma-separated")
    st.add_argument("--pod", default="dev", help="pod name (default dev)")
    st.add_argument("--json", action="store_true", help="print one JSON document")
    st.add_argument("--tls-ca", default=None, metavar="FILE",
                    help="CA certificate (PEM) that signed the nodes' certificates, for nodes "
                         "served with --tls-cert (default: the system trust store)")
    st.add_argument("--tls-cert", default=None, metavar="FILE",
                    help="client certificate (PEM) for nodes that require mutual TLS "
                         "(--tls-client-ca)")
    st.add_argument("--tls-key", default=None, metavar="FILE",
                    help="the client certificate's private key (PEM)")


def run_pod_command(args: argparse.Namespace) -> int:
    if args.pod_command == "up":
        return pod_up(args)
    if args.pod_command == "status":
        return pod_status(args)
    print("kvstore: error: pod needs a command: up or status", file=sys.stderr)
    return 2


# -- pod up --------------------------------------------------------------------------------

def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def pump(self, out: TextIO) -> None:
        """Copy the child's stdout to ours (prefixed) and notice its ready line."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            out.write(f"[{self.name}] {line}")
            out.flush()
            if line.startswith("kvstore: ready"):
                self.ready.set()


def _stop(children: Sequence[_Child], timeout_s: float) -> None:
    for c in children:
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for c in children:
        try:
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait(10)


def pod_up(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= POD_UP_NODES_MAX:
        print(f"kvstore: error: --nodes must be in 1..{POD_UP_NODES_MAX}", file=sys.stderr)
        return 2
    etcd_bin = shutil.which("etcd")
    if etcd_bin is None:
        print(f"kvstore: error: the etcd binary is not installed; install Debian's "
              f"{ETCD_PACKAGE} package (apt-get install {ETCD_PACKAGE})", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    tmp = tempfile.mkdtemp(prefix="kvstore-pod-")
    data_root = args.data_dir or tmp
    nodes: list[_Child] = []
    etcd: _Child | None = None
    status = 1
    try:
        port = args.etcd_port or _free_port("127.0.0.1")
        url = f"http://127.0.0.1:{port}"
        peer = f"http://127.0.0.1:{_free_port('127.0.0.1')}"
        etcd_log = open(os.path.join(tmp, "etcd.log"), "w")  # noqa: SIM115 - closed by exit
        etcd = _Child("etcd", subprocess.Popen(
            [etcd_bin, "--name", "pod", "--data-dir", os.path.join(tmp, "etcd"),
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"pod={peer}"],
            stdout=etcd_log, stderr=subprocess.STDOUT, text=True))
        if not _wait_listening("127.0.0.1", port, etcd.proc, stop):
            print(f"kvstore: error: etcd did not start (log: {etcd_log.name})", file=sys.stderr)
            return 1
        print(f"kvstore pod: etcd on {url}", flush=True)
        for i in range(1, args.nodes + 1):
            host = f"127.0.0.{10 + i}"
            cmd = [sys.executable, "-m", "kvstore", "serve", "--host", host,
                   "--port", str(args.port), "--bulk-port", str(args.bulk_port),
                   "--pod", args.pod, "--etcd", url, "--node-id", f"node{i}",
                   "--data-dir", os.path.join(data_root, f"node{i}"),
                   "--capacity", args.capacity, "--dram", args.dram,
                   "--segment-size", args.segment_size, "--device", args.device]
            if args.etcd_lease_ttl:
                cmd += ["--etcd-lease-ttl", str(args.etcd_lease_ttl)]
            child = _Child(f"node{i}", subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=open(  # noqa: SIM115
                    os.path.join(tmp, f"node{i}.log"), "w"), text=True, bufsize=1))
            threading.Thread(target=child.pump, args=(sys.stdout,), daemon=True).start()
            nodes.append(child)
        deadline = time.monotonic() + START_S
        for c in nodes:
            while not c.ready.wait(0.1):
                if stop.is_set():
                    return 0
                if c.proc.poll() is not None or time.monotonic() > deadline:
                    print(f"kvstore: error: {c.name} did not start (log: "
                          f"{os.path.join(tmp, c.name + '.log')})", file=sys.stderr)
                    sys.stderr.write(_tail(os.path.join(tmp, f"{c.name}.log")))
                    return 1
        for c in nodes:
            text = "".join(c.lines)
            http = re.search(r"HTTP \(S3 API and /v1\) on (\S+)", text)
            bulk = re.search(r"bulk on tcp://(\S+)", text)
            print(f"kvstore pod: {c.name}  {http.group(1) if http else '?'}  bulk "
                  f"{bulk.group(1) if bulk else '-'}", flush=True)
        print(f"kvstore pod: ready ({args.nodes} nodes, pod {args.pod}; `kvstore pod status "
              f"--etcd {url} --pod {args.pod}`; Ctrl-C stops)", flush=True)
        status = 0
        while not stop.wait(0.2):
            dead = [c.name for c in [etcd, *nodes] if c.proc.poll() is not None]
            if dead:
                print(f"kvstore: error: {', '.join(dead)} exited; stopping the pod",
                      file=sys.stderr, flush=True)
                status = 1
                break
        return status
    finally:
        _stop(nodes, limits.shutdown_seconds_max + 2)
        if etcd is not None:
            _stop([etcd], 10)
        shutil.rmtree(tmp, ignore_errors=True)
        if status == 0:
            print("kvstore pod: stopped", flush=True)


def _wait_listening(host: str, port: int, proc: subprocess.Popen[str],
                    stop: threading.Event) -> bool:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and not stop.is_set() and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.05)
    return False


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path) as f:
            return f.read()[-n:]
    except OSError:
        return ""


# -- pod status ----------------------------------------------------------------------------

# What `pod status` reads of each node's /metrics (the Prometheus names kvstore.api.metrics
# exports for these engine stats). /metrics, unlike /v1/stats, needs no signature, so the
# status of a pod that runs with credentials needs none either.
def collect_status(etcd: str, pod: str, tls: ssl.SSLContext | None = None) -> dict[str, Any]:
    """The pod's state: nodes registered in etcd (their lease is alive), each node's stats
    (``tls``: the client context for nodes on HTTPS, ``status_tls_context``)."""
    from kvstore.cluster.etcd import parse_endpoints, read_pod

    nodes, namespaces = asyncio.run(read_pod(parse_endpoints(etcd), pod))
    out_nodes = []
    total: dict[str, float] = {"blocks": 0, "flash_used_bytes": 0, "capacity_bytes": 0,
                               "hits": 0, "misses": 0, "forwarded_requests": 0,
                               "forwarded_failed": 0}
    for node_id, info in sorted(nodes.items()):
        stats, error = node_stats(info.http, tls)
        row: dict[str, Any] = {"node_id": node_id, "http": info.http, "bulk": info.bulk,
                               "capacity_bytes": info.capacity_bytes, "epoch": info.epoch,
                               "registered": True, "reachable": stats is not None}
        if stats is not None:
            row.update(summarize(stats))
            for k in ("blocks", "flash_used_bytes", "hits", "misses", "forwarded_requests",
                      "forwarded_failed"):
                total[k] += row[k]
        else:
            row["error"] = error
        total["capacity_bytes"] += info.capacity_bytes
        out_nodes.append(row)
    seen = total["hits"] + total["misses"]
    return {"pod": pod, "etcd": etcd, "nodes": out_nodes, "namespaces": sorted(namespaces),
            "replicas": {name: int(doc.get("replicas", 1) or 1)
                         for name, doc in sorted(namespaces.items())},
            "total": {**{k: int(v) for k, v in total.items()},
                      "nodes": len(out_nodes),
                      "reachable": sum(1 for n in out_nodes if n["reachable"]),
                      "hit_rate": round(total["hits"] / seen, 4) if seen else None}}


def _ns_label(name: str, replicas: int) -> str:
    return name if replicas == 1 else f"{name} (x{replicas})"


def pod_status(args: argparse.Namespace) -> int:
    try:
        tls = status_tls_context(args.tls_ca, args.tls_cert, args.tls_key)
    except ValueError as exc:
        print(f"kvstore: error: {exc}", file=sys.stderr)
        return 2
    try:
        doc = collect_status(args.etcd, args.pod, tls)
    except (ConnectionError, ValueError) as exc:
        print(f"kvstore: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(f"pod {doc['pod']} (etcd {doc['etcd']}): {doc['total']['nodes']} node(s), "
          f"{doc['total']['reachable']} reachable, namespaces: "
          f"{', '.join(_ns_label(n, doc['replicas'].get(n, 1)) for n in doc['namespaces']) or '-'}")
    for n in doc["nodes"]:
        if n["reachable"]:
            rate = "-" if n["hit_rate"] is None else f"{n['hit_rate']:.1%}"
            ops = ", ".join(f"{op} {sum(by.values())}" for op, by in sorted(n["forwarded"].items())
                            if sum(by.values()))
            print(f"  {n['node_id']:<12} {n['http']:<28} up    blocks {n['blocks']:<8} "
                  f"flash {n['flash_used_bytes']}/{n['capacity_bytes']}  hit rate {rate}  "
                  f"forwarded {n['forwarded_requests']} ({n['forwarded_failed']} failed"
                  f"{'; ' + ops if ops else ''})")
        else:
            print(f"  {n['node_id']:<12} {n['http']:<28} DOWN  ({n['error']})")
    return 0
