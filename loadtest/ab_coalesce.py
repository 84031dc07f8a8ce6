"""A/B the put coalescer's byte bound: concurrent single puts into a fresh engine, alternating.

    .venv/bin/python loadtest/ab_coalesce.py                       # 32 threads, 2 MiB, 3 rounds
    .venv/bin/python loadtest/ab_coalesce.py --threads 8 --bounds 0,16

Each run opens an engine on real files under ``--dir`` (io_uring device, DRAM tier off), sets
the coalescer's byte bound (MiB; 0 = none, as before the bound), and has ``--threads`` threads
put ``--blocks`` blocks of ``--block-bytes`` between them; it prints GB/s, process CPU per put
and the mean batch. Bounds alternate within each round; the report is each bound's median.
A script, not a test: the numbers depend on the machine, its disk and its load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients")]

from kvstore.engine.store import Engine  # noqa: E402
from kvstore.engine.types import EngineConfig  # noqa: E402
from kvstore.io_uring.select import open_device  # noqa: E402


def run(base: str, bound_mib: int, threads: int, blocks: int,
        size: int) -> tuple[float, float, float]:
    d = tempfile.mkdtemp(dir=base)
    try:
        eng = Engine.open(EngineConfig(data_dir=os.path.join(d, "store"),
                                       capacity_bytes=(blocks + 64) * (size + 8192) * 2,
                                       segment_bytes=256 << 20, dram_bytes=0),
                          open_device("uring", probe_dir=d))
        eng.create_namespace("bench")
        co = eng.log.coalescer
        co._batch_bytes_max = bound_mib << 20 if bound_mib else 1 << 62
        payloads = [os.urandom(size) for _ in range(16)]
        per = blocks // threads

        def work(t: int) -> None:
            for i in range(per):
                eng.put("bench", f"k{t}-{i}", payloads[(t + i) % len(payloads)])

        ths = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        t0, c0 = time.perf_counter(), time.process_time()
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        mean = co.puts / max(co.batches, 1)
        eng.close()
        n = per * threads
        return n * size / wall / 1e9, cpu / n * 1e3, mean
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=str(ROOT / "data"), help="scratch dir (the disk to test)")
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=1024)
    ap.add_argument("--block-bytes", type=int, default=2 << 20)
    ap.add_argument("--bounds", default="0,16", help="byte bounds to compare, MiB (0: none)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if not (1 <= a.threads <= 256 and 1 <= a.rounds <= 20 and a.threads <= a.blocks <= 100_000):
        raise SystemExit("threads 1-256, rounds 1-20, threads <= blocks <= 100000")
    os.makedirs(a.dir, exist_ok=True)
    bounds = [int(b) for b in a.bounds.split(",")]
    got: dict[int, list[float]] = {b: [] for b in bounds}
    for r in range(a.rounds):
        for b in bounds:
            gbs, cpu, mean = run(a.dir, b, a.threads, a.blocks, a.block_bytes)
            got[b].append(gbs)
            print(f"round {r} bound {b or 'none'} MiB: {gbs:.2f} GB/s, {cpu:.2f} ms CPU/put, "
                  f"mean batch {mean:.1f}", flush=True)
    for b in bounds:
        print(f"bound {b or 'none'} MiB: median {statistics.median(got[b]):.2f} GB/s "
              f"(runs {', '.join(f'{g:.2f}' for g in got[b])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
