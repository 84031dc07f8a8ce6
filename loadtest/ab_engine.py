"""A/B the engine of two source trees: put_many then get of blocks (2 MiB), alternating runs.

    git archive <commit> kvstore | tar -x -C /tmp/old
    .venv/bin/python loadtest/ab_engine.py --a /tmp/old --b . [--runs 7] [--blocks 128]

Each run is a fresh process with one tree on ``sys.path``: it opens an engine on real files
(``--device``, default "auto": io_uring, else POSIX; DRAM tier off, so every get reads and verifies flash),
writes ``--blocks`` 2 MiB blocks with ``put_many`` (``--batch`` a call), then reads each back with
``get``, and prints MiB/s and the process CPU seconds per GiB (the engine's own cost, less
sensitive to a shared disk than wall time). Runs alternate A, B, A, B...; the report is the median of each side and
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
d, n, batch, kind, bs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
dev = open_device(kind, probe_dir=d)
eng = Engine.open(EngineConfig(data_dir=os.path.join(d, "store"), capacity_bytes=max(64 << 20, (n + 64) * (bs + 4096) * 2),
                               segment_bytes=64 << 20, dram_bytes=0), dev)
eng.create_namespace("bench")
blocks = [os.urandom(bs) for _ in range(min(n, 16))]
keys = [f"k{i:06d}" for i in range(n)]
t, c = time.perf_counter(), time.process_time()
for i in range(0, n, batch):
    eng.put_many("bench", [(k, blocks[j % len(blocks)]) for j, k in enumerate(keys[i:i + batch], i)])
put_s, put_c = time.perf_counter() - t, time.process_time() - c
t, c = time.perf_counter(), time.process_time()
for k in keys:
    assert eng.get("bench", k) is not None
get_s, get_c = time.perf_counter() - t, time.process_time() - c
eng.close()
mib = n * bs / (1 << 20)
print(json.dumps({"put": mib / put_s, "get": mib / get_s, "put_cpu": put_c * 1024 / mib,
                  "get_cpu": get_c * 1024 / mib, "device": dev.name}))
"""


def run(tree: str, blocks: int, batch: int, device: str, bs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ab-engine-", dir=os.environ.get("AB_DIR")) as d:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        out = subprocess.run([sys.executable, "-c", CHILD, d, str(blocks), str(batch), device, str(bs)],
                             env=env, check=True, capture_output=True, text=True, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="baseline tree (holds kvstore/)")
    ap.add_argument("--b", required=True, help="candidate tree")
    ap.add_argument("--runs", type=int, default=7, help="runs per side")
    ap.add_argument("--blocks", type=int, default=128, help="2 MiB blocks per run")
    ap.add_argument("--batch", type=int, default=16, help="blocks per put_many")
    ap.add_argument("--block-bytes", type=int, default=2 << 20,
                    help="block size (small blocks show the per-call cost)")
    ap.add_argument("--device", default="auto", choices=("auto", "uring", "posix", "memory"),
                    help="memory: no disk, so the engine's own cost shows")
    args = ap.parse_args()
    res: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for i in range(args.runs):
        for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
            r = run(getattr(args, side), args.blocks, args.batch, args.device, args.block_bytes)
            res[side].append(r)
            print(f"run {i} {side}: put {r['put']:.0f} MiB/s  get {r['get']:.0f} MiB/s  "
                  f"cpu s/GiB put {r['put_cpu']:.3f} get {r['get_cpu']:.3f} ({r['device']})",
                  flush=True)
    for op, unit in (("put", "MiB/s"), ("get", "MiB/s"), ("put_cpu", "CPU s/GiB"),
                     ("get_cpu", "CPU s/GiB")):
        a = statistics.median(r[op] for r in res["a"])
        b = statistics.median(r[op] for r in res["b"])
        print(f"{op}: A {a:.3f} {unit}, B {b:.3f} {unit}, B/A = {b / a:.3f}")


if __name__ == "__main__":
    main()
