"""What TLS costs on bulk GET (a script, not a test): two ``kvstore serve --device memory``
processes on 127.0.0.1, one plain and one with ``--tls-cert/--tls-key`` (a certificate made for
the run), the same blocks in each (DRAM tier), read with the blocking SDK
(``Client.get_many_into``, one thread), rounds alternating plain/TLS so drift hits both.
Prints GB/s and the TLS/plain ratio; writes ``loadtest/results/tls-*.{json,md}``.

    .venv/bin/python loadtest/bench_tls.py [--block-kib 2048] [--blocks 64] [--batch 8]
                                           [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_engine import git_commit, machine  # noqa: E402
from kvstore_client import Client  # noqa: E402

from tests.tlscerts import CA  # noqa: E402

START_SECONDS_MAX = 60.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(tmp: Path, name: str, extra: list[str], dram: str) -> tuple[subprocess.Popen[bytes], int]:
    http, bulk = _port(), _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "clients")])
    out = tmp / f"{name}.out"
    with open(out, "wb") as o:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvstore", "serve", "--device", "memory", "--port", str(http),
             "--bulk-port", str(bulk), "--data-dir", str(tmp / name), "--capacity", "1GiB",
             "--segment-size", "64MiB", "--dram", dram, *extra],
            stdout=o, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + START_SECONDS_MAX
    while "kvstore: ready" not in out.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{name} server did not start")
        time.sleep(0.05)
    return proc, bulk


def measure(c: Client, keys: list[str], bufs: list[bytearray], batch: int,
            seconds: float) -> tuple[float, int]:
    """Bytes per second of get_many_into over ``keys`` for ``seconds``; the bytes moved."""
    moved, i = 0, 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        ks = [keys[(i + j) % len(keys)] for j in range(batch)]
        got = c.get_many_into(ks, bufs[:batch])
        assert all(n == len(bufs[0]) for n in got), got
        moved += sum(n or 0 for n in got)
        i += batch
    return moved / (time.perf_counter() - start), moved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--block-kib", type=int, default=2048)
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    bs = a.block_kib * 1024
    dram = f"{max(64, 2 * a.blocks * a.block_kib // 1024)}MiB"
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-tls-") as t:
        tmp = Path(t)
        ca = CA(tmp, "bench-ca")
        pair = ca.issue("server", server=True)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            p_plain, port_plain = serve(tmp, "plain", [], dram)
            procs.append(p_plain)
            p_tls, port_tls = serve(tmp, "tls", ["--tls-cert", str(pair.cert), "--tls-key",
                                                 str(pair.key)], dram)
            procs.append(p_tls)
            keys = [f"{i:032x}" for i in range(a.blocks)]
            payloads = [os.urandom(bs) for _ in range(a.blocks)]
            clients = {
                "plain": Client("127.0.0.1", port_plain, namespace="bench-tls", create=True,
                                pool_size=1),
                "tls": Client("127.0.0.1", port_tls, namespace="bench-tls", create=True,
                              ca=str(ca.pem), pool_size=1),
            }
            bufs = [bytearray(bs) for _ in range(a.batch)]
            for c in clients.values():
                for k, p in zip(keys, payloads, strict=True):
                    c.put(k, p)
                measure(c, keys, bufs, a.batch, 0.3)  # warm-up: connection, DRAM tier
            rates: dict[str, list[float]] = {"plain": [], "tls": []}
            for _ in range(a.rounds):
                for name, c in clients.items():
                    rates[name].append(measure(c, keys, bufs, a.batch, a.seconds)[0])
            for c in clients.values():
                c.close()
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)
    best = {k: max(v) for k, v in rates.items()}
    ratio = best["tls"] / best["plain"]
    res: dict[str, Any] = {
        "bench": "tls-bulk-get", "commit": git_commit(), "machine": machine(HERE),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": vars(a), "gbps_rounds": {k: [r / 1e9 for r in v] for k, v in rates.items()},
        "gbps_best": {k: v / 1e9 for k, v in best.items()}, "tls_over_plain": ratio,
    }
    line = (f"bulk GET {a.block_kib} KiB x{a.batch}/call, one client thread: plain "
            f"{best['plain'] / 1e9:.2f} GB/s, TLS {best['tls'] / 1e9:.2f} GB/s, "
            f"TLS/plain {ratio:.2f}")
    print(line)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = HERE / "results" / f"tls-{stamp}"
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(
        f"# TLS cost on bulk GET ({res['when']}, commit {res['commit']})\n\n{line}\n\n"
        f"Command: `.venv/bin/python loadtest/bench_tls.py "
        f"--block-kib {a.block_kib} --blocks {a.blocks} --batch {a.batch} "
        f"--seconds {a.seconds:g} --rounds {a.rounds}`\n\nRounds (GB/s): "
        f"{json.dumps(res['gbps_rounds'])}\n")


if __name__ == "__main__":
    main()
