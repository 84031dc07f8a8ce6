"""A/B the engine of two source trees on concurrent single puts, with fio in the same rounds.

    git archive <commit> kvstore | tar -x -C /tmp/old
    .venv/bin/python loadtest/ab_single_puts.py --a /tmp/old --b . [--depths 1,8,32] [--rounds 4]

Each run is a fresh process with one tree first on ``sys.path``: it opens an engine on real
files under ``--dir`` (io_uring device, DRAM tier off; ``--encrypt``: encryption at rest on),
and ``depth`` threads put ``--blocks`` blocks of 2 MiB between them with ``Engine.put`` (one
block a call: the put coalescer's path, ``kvstore/engine/coalesce.py``). It reports GB/s, the
process CPU per put, the device's mean in-flight depth and the coalescer's mean batch. Each
round runs fio (``--rw=write``, O_DIRECT, io_uring, same bytes and depth) and then A and B,
alternating their order; the report is each side's median (min-max), B / A, and each side over
fio's median. A script, not a test: the
numbers depend on the machine, its disk and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_SECONDS_MAX = 600  # one child or fio run gives up after this long

CHILD = r"""
import json, os, shutil, sys, threading, time
from kvstore import limits
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.io_uring.select import open_device
depth, n, d, enc = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
shutil.rmtree(d, ignore_errors=True)
os.makedirs(d)
dev = open_device("uring", probe_dir=d)
seg, bs = limits.segment_bytes_default, 2 << 20
cap = (n * bs * 13 // 10 // seg + 4) * seg
extra = {"master_key": os.urandom(32)} if enc else {}
eng = Engine.open(EngineConfig(data_dir=os.path.join(d, "store"), capacity_bytes=cap,
                               segment_bytes=seg, dram_bytes=0, dram_on_put=False, **extra), dev)
eng.create_namespace("bench")
payload = os.urandom(4096) * (bs // 4096)
keys = iter(range(n))
lock = threading.Lock()
def work():
    while True:
        with lock:
            i = next(keys, None)
        if i is None:
            return
        eng.put("bench", f"k{i:08d}", payload)
threads = [threading.Thread(target=work) for _ in range(depth)]
co = eng.log.coalescer
b0, p0 = co.batches, co.puts
dev.reset_depth()
t0, c0 = time.perf_counter(), time.process_time()
for t in threads:
    t.start()
for t in threads:
    t.join()
dt, dc = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"gbs": n * bs / dt / 1e9, "cpu_ms": dc / n * 1e3,
                  "inflight": dev.depth_stats()["total"]["mean"],
                  "batch": (co.puts - p0) / max(1, co.batches - b0)}))
eng.close()
shutil.rmtree(d, ignore_errors=True)
"""


def child(tree: str, depth: int, blocks: int, scratch: Path, encrypt: bool) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, str(ROOT / "clients")]))
    out = subprocess.run([sys.executable, "-c", CHILD, str(depth), str(blocks), str(scratch),
                          "1" if encrypt else "0"],
                         env=env, capture_output=True, text=True, cwd=tempfile.gettempdir(),
                         timeout=RUN_SECONDS_MAX, check=False)
    if out.returncode:
        raise SystemExit(f"{tree} depth {depth} failed:\n{out.stderr[-3000:]}")
    row: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def fio(depth: int, blocks: int, scratch: Path) -> float:
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            ["fio", "--name=w", f"--filename={scratch / 'f'}", f"--size={blocks * 2}M",
             "--bs=2M", "--rw=write", "--direct=1", "--ioengine=io_uring",
             f"--iodepth={depth}", "--output-format=terse", "--terse-version=3"],
            capture_output=True, text=True, timeout=RUN_SECONDS_MAX, check=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return float(out.stdout.split(";")[47]) * 1024 / 1e9  # write bandwidth, KiB/s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="tree A (a directory holding kvstore/)")
    ap.add_argument("--b", default=str(ROOT), help="tree B")
    ap.add_argument("--depths", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=1000, help="2 MiB blocks per run")
    ap.add_argument("--encrypt", action="store_true", help="encryption at rest (a random key)")
    ap.add_argument("--dir", default=str(ROOT / "data" / "bench-ab"), help="scratch (same disk)")
    a = ap.parse_args()
    depths = [int(x) for x in a.depths.split(",")]
    trees = {"A": str(Path(a.a).resolve()), "B": str(Path(a.b).resolve())}
    scratch = Path(a.dir)
    rows: dict[tuple[int, str], list[dict[str, float]]] = {}
    for r in range(a.rounds):
        for depth in depths:
            rows.setdefault((depth, "fio"), []).append({"gbs": fio(depth, a.blocks, scratch)})
            for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
                rows.setdefault((depth, side), []).append(
                    child(trees[side], depth, a.blocks, scratch, a.encrypt))
    print(f"A = {trees['A']}\nB = {trees['B']}\n{a.rounds} rounds, {a.blocks} x 2 MiB a run"
          + (", encrypted" if a.encrypt else ""))
    for depth in depths:
        f = statistics.median(x["gbs"] for x in rows[(depth, "fio")])
        line = f"depth {depth:>3}: fio {f:.2f} GB/s"
        meds = {}
        for side in ("A", "B"):
            rs = rows[(depth, side)]

            def med(k: str, rs: list[dict[str, float]] = rs) -> float:
                return statistics.median(x[k] for x in rs)

            meds[side] = med("gbs")
            line += (f" | {side} {med('gbs'):.2f} ({min(x['gbs'] for x in rs):.2f}-"
                     f"{max(x['gbs'] for x in rs):.2f}) /fio {med('gbs') / f:.2f}, "
                     f"cpu {med('cpu_ms'):.3f} ms/put, in flight {med('inflight'):.1f}, "
                     f"batch {med('batch'):.1f}")
        print(line + f" | B/A {meds['B'] / meds['A']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
