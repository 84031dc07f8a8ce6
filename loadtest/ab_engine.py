"""A/B the engine of two source trees: put_many then get of 2 MiB blocks, alternating runs.

    git archive <commit> kvstore | tar -x -C /tmp/old
    .venv/bin/python loadtest/ab_engine.py --a /tmp/old --b . [--runs 7] [--blocks 128]

Each run is a fresh process with one tree on ``sys.path``: it opens an engine on real files
(device "auto": io_uring, else POSIX; DRAM tier off, so every get reads and verifies flash),
writes ``--blocks`` 2 MiB blocks with ``put_many`` (``--batch`` a call), then reads each back with
``get``, and prints MiB/s. Runs alternate A, B, A, B...; the report is the median of each side and
the ratio B / A. A script, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys, time
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.io_uring.select import open_device
d, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bs = 2 << 20
dev = open_device("auto", probe_dir=d)
eng = Engine.open(EngineConfig(data_dir=os.path.join(d, "store"), capacity_bytes=(n + 64) * bs * 2,
                               segment_bytes=64 << 20, dram_bytes=0), dev)
eng.create_namespace("bench")
blocks = [os.urandom(bs) for _ in range(min(n, 16))]
keys = [f"k{i:06d}" for i in range(n)]
t = time.perf_counter()
for i in range(0, n, batch):
    eng.put_many("bench", [(k, blocks[j % len(blocks)]) for j, k in enumerate(keys[i:i + batch], i)])
put_s = time.perf_counter() - t
t = time.perf_counter()
for k in keys:
    assert eng.get("bench", k) is not None
get_s = time.perf_counter() - t
eng.close()
mib = n * bs / (1 << 20)
print(json.dumps({"put": mib / put_s, "get": mib / get_s, "device": dev.name}))
"""


def run(tree: str, blocks: int, batch: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ab-engine-", dir=os.environ.get("AB_DIR")) as d:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        out = subprocess.run([sys.executable, "-c", CHILD, d, str(blocks), str(batch)],
                             env=env, check=True, capture_output=True, text=True, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="baseline tree (holds kvstore/)")
    ap.add_argument("--b", required=True, help="candidate tree")
    ap.add_argument("--runs", type=int, default=7, help="runs per side")
    ap.add_argument("--blocks", type=int, default=128, help="2 MiB blocks per run")
    ap.add_argument("--batch", type=int, default=16, help="blocks per put_many")
    args = ap.parse_args()
    res: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for i in range(args.runs):
        for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
            r = run(getattr(args, side), args.blocks, args.batch)
            res[side].append(r)
            print(f"run {i} {side}: put {r['put']:.0f} MiB/s  get {r['get']:.0f} MiB/s "
                  f"({r['device']})", flush=True)
    for op in ("put", "get"):
        a = statistics.median(r[op] for r in res["a"])
        b = statistics.median(r[op] for r in res["b"])
        print(f"{op}: A {a:.0f} MiB/s, B {b:.0f} MiB/s, B/A = {b / a:.3f}")


if __name__ == "__main__":
    main()
