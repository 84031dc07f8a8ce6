"""How long a namespace created on one node takes to be usable on another (pod-wide namespaces).

    PYTHONPATH=$PWD:$PWD/clients .venv/bin/python loadtest/bench_pod_ns.py --rounds 20

Starts `kvstore pod up --nodes 2` (etcd + two nodes on 127.0.0.11/12), then per round creates a
bucket on node1 (S3 CreateBucket, plain HTTP in development mode) and polls node2's
`HEAD /<bucket>` until it answers 200 (bounded), recording the time from the create's answer.
Prints min/median/p90/max in milliseconds; stops the pod with SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLL_MAX_S = 5.0


def status(host: str, port: int, method: str, path: str) -> int:
    c = http.client.HTTPConnection(host, port, timeout=5)
    try:
        c.request(method, path, headers={"content-length": "0"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp()) / "up.out"
    with open(out, "wb") as f:
        up = subprocess.Popen([sys.executable, "-m", "kvstore", "pod", "up", "--nodes", "2",
                               "--port", "0", "--bulk-port", "0", "--capacity", "64MiB",
                               "--segment-size", "4MiB", "--dram", "16MiB"],
                              stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "kvstore pod: ready" not in out.read_text():
            if up.poll() is not None or time.monotonic() > deadline:
                print(out.read_text(), file=sys.stderr)
                return 1
            time.sleep(0.1)
        nodes = re.findall(r"kvstore pod: node\d\s+http://([\d.]+):(\d+)", out.read_text())
        (h1, p1), (h2, p2) = [(h, int(p)) for h, p in nodes]
        ms = []
        for i in range(args.rounds):
            name = f"ns-bench-{i:04d}"
            assert status(h1, p1, "PUT", f"/{name}") == 200
            t0 = time.perf_counter()
            while status(h2, p2, "HEAD", f"/{name}") != 200:
                if time.perf_counter() - t0 > POLL_MAX_S:
                    print(f"{name}: not on node2 within {POLL_MAX_S}s", file=sys.stderr)
                    return 1
                time.sleep(0.001)
            ms.append((time.perf_counter() - t0) * 1000)
        ms.sort()
        print(f"namespace create on node1 -> usable on node2, {len(ms)} rounds: "
              f"min {ms[0]:.1f} ms, median {statistics.median(ms):.1f} ms, "
              f"p90 {ms[int(len(ms) * 0.9) - 1]:.1f} ms, max {ms[-1]:.1f} ms")
        return 0
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)


if __name__ == "__main__":
    sys.exit(main())
