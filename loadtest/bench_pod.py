"""Pod client benchmark: placement balance, the pod layer's overhead, aggregate GET, lookup p99.

    PYTHONPATH=.:clients .venv/bin/python loadtest/bench_pod.py [--keys 1000000] [--trials 5]

- Placement balance (pure function, no servers): ``--keys`` block keys over 3 equal nodes
  (max/mean blocks per node, target <= 1.05) and over weights 1:2:3 (worst ratio of a node's
  share to its weight's share).
- ``kvstore serve`` processes on 127.0.0.11, .12, .13 (POSIX device on a temp dir, DRAM tier
  big enough to hold the blocks: this measures the clients, not the disk). GETs of
  ``--block-kib`` blocks in batches of ``--batch`` with ``get_many_into`` into preallocated
  buffers: ``PodClient`` over one node vs a plain ``Client`` on the same node (alternating
  trials, medians; overhead = 1 - pod/plain, target <= 10%); the same with 4 KiB blocks (per-call
  cost dominates); aggregate GET through ``PodClient`` over 1, 2 and 3 nodes (on a 2-core machine
  the cores bound it: servers and client share them).
- p99 of ``lookup`` of a 1,000-key chain across 3 nodes, all present (``--lookups`` calls; the
  client has placed the chain before, as an engine asking about the same prefixes does), and
  the same for chains never seen (placement computed inside the call).
- The hit rate of a warm 3-node pod (etcd membership) before and after a 4th node joins,
  through one node's S3 API and through the SDK, with the server's previous-owner read on and
  off (``pod_join.py``; ``--join-keys`` blocks). ``--only join`` runs just this part.

A script, not a test: figures depend on the machine and its load. Writes
loadtest/results/pod-*.{json,md} with the machine, the settings and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import pod_join  # noqa: E402
from bench_engine import git_commit, machine  # noqa: E402
from kvstore_client import Client, PodClient  # noqa: E402
from kvstore_wire import placement  # noqa: E402

HOSTS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
NS = "bench-pod"
START_SECONDS_MAX = 60.0


def balance(n_keys: int, weights: list[float]) -> dict[str, Any]:
    members = [placement.Member(f"n{i + 1}", w) for i, w in enumerate(weights)]
    counts = dict.fromkeys((m.node_id for m in members), 0)
    t0 = time.perf_counter()
    for i in range(n_keys):
        counts[placement.owners(NS, f"{i:032x}", members)[0].node_id] += 1
    secs = time.perf_counter() - t0
    total = sum(weights)
    ratio = {m.node_id: counts[m.node_id] / (n_keys * m.weight / total) for m in members}
    return {"weights": weights, "counts": counts,
            "max_over_mean": round(max(counts.values()) / (n_keys / len(members)), 4),
            "worst_share_over_target": round(max(ratio.values()), 4),
            "owners_per_s": round(n_keys / secs)}


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, tmp: Path, host: str, dram: str) -> None:
        self.host, self.bulk_port = host, _free_port(host)
        self.log = tmp / f"{host}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'clients'}"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvstore", "serve", "--host", host,
                 "--port", str(_free_port(host)), "--bulk-port", str(self.bulk_port),
                 "--data-dir", str(tmp / host), "--capacity", "1GiB", "--dram", dram,
                 "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS_MAX
        while "kvstore: ready" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.host} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _gets(client: Any, keys: list[str], bufs: list[bytearray], batch: int,
          seconds: float) -> float:
    """MiB/s of get_many_into over ``keys`` (looping) for about ``seconds``."""
    moved, t0 = 0, time.perf_counter()
    while True:
        for i in range(0, len(keys), batch):
            got = client.get_many_into(keys[i:i + batch], bufs[i:i + batch])
            if any(g is None for g in got):
                raise SystemExit("a block went missing during the benchmark")
            moved += sum(got)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return moved / elapsed / 2**20


def _blocks(n: int, size: int) -> tuple[list[str], list[bytes], list[bytearray]]:
    keys = [os.urandom(16).hex() for _ in range(n)]
    return keys, [os.urandom(size) for _ in range(n)], [bytearray(size) for _ in range(n)]


def overhead(node: Node, block: int, n: int, batch: int, trials: int,
             seconds: float) -> dict[str, Any]:
    keys, vals, bufs = _blocks(n, block)
    plain = Client(node.host, node.bulk_port, namespace=NS, create=True)
    pod = PodClient(nodes=[("n1", f"{node.host}:{node.bulk_port}")], namespace=NS)
    with plain, pod:
        plain.put_many(keys, vals)
        _gets(plain, keys, bufs, batch, seconds / 2)  # warm
        a, b = [], []
        for _ in range(trials):
            a.append(_gets(plain, keys, bufs, batch, seconds))
            b.append(_gets(pod, keys, bufs, batch, seconds))
        plain.delete_many(keys)
    pa, pb = statistics.median(a), statistics.median(b)
    return {"block_bytes": block, "batch": batch, "plain_mib_s": round(pa, 1),
            "pod_mib_s": round(pb, 1), "pod_over_plain": round(pb / pa, 3),
            "overhead": round(1 - pb / pa, 3), "plain_trials": [round(x, 1) for x in a],
            "pod_trials": [round(x, 1) for x in b]}


def aggregate(nodes: list[Node], block: int, n: int, batch: int, trials: int,
              seconds: float) -> list[dict[str, Any]]:
    out = []
    for k in range(1, len(nodes) + 1):
        specs = [(f"n{i + 1}", f"{x.host}:{x.bulk_port}") for i, x in enumerate(nodes[:k])]
        keys, vals, bufs = _blocks(n, block)
        with PodClient(nodes=specs, namespace=NS, create=True) as pod:
            pod.put_many(keys, vals)
            _gets(pod, keys, bufs, batch, seconds / 2)
            runs = [_gets(pod, keys, bufs, batch, seconds) for _ in range(trials)]
            pod.delete_many(keys)
        out.append({"nodes": k, "mib_s": round(statistics.median(runs), 1),
                    "trials": [round(x, 1) for x in runs]})
    return out


def lookup_p99(nodes: list[Node], chain_len: int, calls: int) -> dict[str, Any]:
    specs = [(f"n{i + 1}", f"{x.host}:{x.bulk_port}") for i, x in enumerate(nodes)]
    chain = [os.urandom(16).hex() for _ in range(chain_len)]
    with PodClient(nodes=specs, namespace=NS, create=True) as pod:
        pod.put_many(chain, [b"x" * 64] * chain_len)
        for _ in range(20):
            pod.lookup(chain)
        lat = []
        for _ in range(calls):
            t0 = time.perf_counter()
            found = pod.lookup(chain)
            lat.append(time.perf_counter() - t0)
            if found != chain_len:
                raise SystemExit(f"lookup found {found} of {chain_len}")
        # cold: a chain this client never placed (its owners computed in the call), absent
        cold = []
        for _ in range(max(10, calls // 5)):
            fresh = [os.urandom(16).hex() for _ in range(chain_len)]
            t0 = time.perf_counter()
            pod.lookup(fresh)
            cold.append(time.perf_counter() - t0)
        pod.delete_many(chain)
    return {"chain": chain_len, "nodes": len(nodes), "calls": calls, **_pcts(lat),
            "cold": {"calls": len(cold), **_pcts(cold)}}


def _pcts(lat: list[float]) -> dict[str, float]:
    ms = sorted(x * 1e3 for x in lat)
    return {"p50_ms": round(ms[len(ms) // 2], 3), "p99_ms": round(ms[int(len(ms) * 0.99)], 3),
            "max_ms": round(ms[-1], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000, help="keys for the balance check")
    ap.add_argument("--block-kib", type=int, default=256, help="GET block size (KiB)")
    ap.add_argument("--blocks", type=int, default=256, help="blocks per GET working set")
    ap.add_argument("--batch", type=int, default=32, help="keys per get_many_into call")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one trial")
    ap.add_argument("--lookups", type=int, default=500, help="lookup calls for the p99")
    ap.add_argument("--join-keys", type=int, default=3000,
                    help="blocks of the warm pod a 4th node joins")
    ap.add_argument("--join-block", type=int, default=4096, help="their size (bytes)")
    ap.add_argument("--only", choices=["all", "join"], default="all")
    ap.add_argument("--out", default=str(ROOT / "loadtest" / "results"))
    args = ap.parse_args()

    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
                              "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    if args.only == "join":
        with tempfile.TemporaryDirectory(prefix="bench-pod-") as tmp:
            report["machine"] = machine(Path(tmp))
            report["join"] = [pod_join.join(Path(tmp) / f"por-{on}", args.join_keys,
                                            args.join_block, on) for on in (True, False)]
        _write(args.out, report)
        return
    print("placement balance ...", flush=True)
    report["balance_equal"] = balance(args.keys, [1.0, 1.0, 1.0])
    report["balance_weighted"] = balance(args.keys, [1.0, 2.0, 3.0])
    block = args.block_kib * 1024
    with tempfile.TemporaryDirectory(prefix="bench-pod-") as tmp:
        report["machine"] = machine(Path(tmp))
        nodes = [Node(Path(tmp), h, "512MiB") for h in HOSTS]
        try:
            for n in nodes:
                n.wait_ready()
            print("overhead ...", flush=True)
            report["overhead"] = overhead(nodes[0], block, args.blocks, args.batch,
                                          args.trials, args.seconds)
            report["overhead_4k"] = overhead(nodes[0], 4096, args.blocks * 8, args.batch,
                                             args.trials, args.seconds)
            print("aggregate ...", flush=True)
            report["aggregate"] = aggregate(nodes, block, args.blocks, args.batch, args.trials,
                                            args.seconds)
            print("lookup ...", flush=True)
            report["lookup"] = lookup_p99(nodes, 1000, args.lookups)
        finally:
            for n in nodes:
                n.stop()
        print("join ...", flush=True)
        report["join"] = [pod_join.join(Path(tmp) / f"por-{on}", args.join_keys,
                                        args.join_block, on) for on in (True, False)]
    _write(args.out, report)


def _write(out_dir: str, report: dict[str, Any]) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"pod-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render(report))
    print(render(report))
    print(f"wrote {stem}.json and .md")


def render(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["settings"]
    if "balance_equal" not in r:  # --only join
        return "\n".join([
            f"# Pod: a 4th node joins a warm pod ({r['when']}, commit {r['commit']})", "",
            f"Machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gib']} GiB, Python "
            f"{m['python']}, kernel {m['kernel']}. etcd and `kvstore serve` on 127.0.0.11-14, "
            "client in this process; all share the cores.", "",
            f"Settings: {json.dumps(s)}", "", "| measure | result | target |", "|---|---|---|",
            *pod_join.render_rows(r["join"]), ""])
    be, bw, o, o4, lk = (r["balance_equal"], r["balance_weighted"], r["overhead"],
                         r["overhead_4k"], r["lookup"])
    lines = [f"# Pod client ({r['when']}, commit {r['commit']})", "",
             f"Machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gib']} GiB, Python {m['python']}, "
             f"kernel {m['kernel']}. Servers: `kvstore serve` on {', '.join(HOSTS)} (POSIX device, "
             "blocks in the DRAM tier), client in this process; all share the cores.", "",
             f"Settings: {json.dumps(s)}", "",
             "| measure | result | target |", "|---|---|---|",
             f"| balance, {s['keys']:,} keys, 3 equal nodes: max/mean | {be['max_over_mean']} "
             f"({be['counts']}) | <= 1.05 |",
             f"| balance, weights 1:2:3: worst share/target | {bw['worst_share_over_target']} "
             f"({bw['counts']}) | ~1 |",
             f"| GET {o['block_bytes'] // 1024} KiB x{o['batch']}: pod / plain, one node | "
             f"{o['pod_mib_s']} / {o['plain_mib_s']} MiB/s = {o['pod_over_plain']} "
             f"(overhead {o['overhead']:.1%}) | overhead <= 10% |",
             f"| GET 4 KiB x{o4['batch']}: pod / plain, one node | {o4['pod_mib_s']} / "
             f"{o4['plain_mib_s']} MiB/s = {o4['pod_over_plain']} (overhead {o4['overhead']:.1%})"
             " | |"]
    for a in r["aggregate"]:
        lines.append(f"| aggregate GET through PodClient, {a['nodes']} node(s) | {a['mib_s']} "
                     f"MiB/s (trials {a['trials']}) | cores bound it |")
    lines += [f"| lookup of a {lk['chain']}-key chain over {lk['nodes']} nodes ({lk['calls']} "
              f"calls) | p50 {lk['p50_ms']} ms, p99 {lk['p99_ms']} ms, max {lk['max_ms']} ms | "
              "p99 < 3 ms |",
              f"| same, cold (a new chain each call: placement computed in the call, all absent;"
              f" {lk['cold']['calls']} calls) | p50 {lk['cold']['p50_ms']} ms, p99 "
              f"{lk['cold']['p99_ms']} ms | |", *pod_join.render_rows(r.get("join", [])), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
