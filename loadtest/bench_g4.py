"""G4 (issue 13): a block fetched from G4 vs from flash, and spilling under foreground GETs.

    python loadtest/bench_g4.py [--target seaweed|kvstore] [--block-kib 1024] [--seconds 8]

Engines on real files in a temporary directory, DRAM tier off (flash reads really read flash),
the object store a real server on 127.0.0.1 (``kvstore.testing_s3``: SeaweedFS, or another
``kvstore serve``).

1. **Hit**: after a working set 4x the flash capacity was written (and spilled), single-thread
   reads of blocks on flash vs blocks only in G4 (``Engine.get``: one ranged GET, verified,
   re-admitted), p50/p99 latency and GB/s; plus the same with --threads readers in parallel.
2. **Spill under load**: readers GET recently written blocks (flash hits) while a writer puts
   new ones at --write-mib-s; once without G4 and once with G4 spilling every retired
   segment. Foreground GET throughput with spilling over without; spill throughput (bytes
   uploaded per second of the run).

Results: ``loadtest/results/g4-<stamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH

from kvstore.engine import format as fmt  # noqa: E402
from kvstore.engine.store import Engine  # noqa: E402
from kvstore.engine.types import EngineConfig  # noqa: E402
from kvstore.g4 import G4Tier, ObjectStore, S3Target  # noqa: E402
from kvstore.io_uring.select import open_device  # noqa: E402
from kvstore.testing_s3 import KvstoreS3, SeaweedS3  # noqa: E402

MiB = 1 << 20
NS = "bench-g4"
RESULTS = Path(__file__).resolve().parent / "results"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else 0.0


def open_engine(path: Path, capacity: int, segment: int) -> Engine:
    path.mkdir(parents=True, exist_ok=True)
    cfg = EngineConfig(str(path), capacity_bytes=capacity, segment_bytes=segment, dram_bytes=0,
                       reinsert=False, dram_on_put=False, dram_promote_reads=0)
    eng = Engine.open(cfg, open_device("auto", probe_dir=str(path)))
    eng.create_namespace(NS)
    return eng


def attach(eng: Engine, s3: Any, prefix: str, rate: int) -> G4Tier:
    t = S3Target(s3.bucket, prefix, s3.endpoint, s3.region, s3.access_key, s3.secret_key)
    tier = G4Tier(ObjectStore(t), eng, spill_bytes_per_second=rate).start()
    deadline = time.monotonic() + 30
    while not tier.loaded and time.monotonic() < deadline:
        time.sleep(0.02)
    return tier


def drain(tier: G4Tier, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while tier.stats()["g4_upload_queue_segments"] and time.monotonic() < deadline:
        time.sleep(0.02)


def where(eng: Engine, key: str) -> str:
    d = fmt.digest_of(NS.encode(), key.encode())
    with eng.state.lock:
        return "flash" if eng.index.get(d) is not None else "g4"


def bench_hit(s3: Any, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    block = args.block_kib * 1024
    cap = args.capacity_mib * MiB
    eng = open_engine(tmp / "hit", cap, args.segment_mib * MiB)
    tier = attach(eng, s3, f"bench-hit-{time.time_ns()}", 1 << 40)
    try:
        payload = random.Random(1).randbytes(block)
        keys = [f"b{i:06d}" for i in range(4 * cap // block)]
        for i, k in enumerate(keys):
            eng.put(NS, k, payload)
            if i % 16 == 15:
                drain(tier)
        drain(tier)
        out: dict[str, Any] = {}
        for tierwant in ("flash", "g4"):
            lat: list[float] = []
            tried = 0
            for k in reversed(keys) if tierwant == "flash" else keys:
                if len(lat) >= args.samples or tried > 10 * args.samples:
                    break
                tried += 1
                if where(eng, k) != tierwant:
                    continue
                t0 = time.perf_counter()
                got = eng.get(NS, k)
                lat.append(time.perf_counter() - t0)
                assert got == payload
            out[tierwant] = {"reads": len(lat), "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
                             "GBps_1thread": len(lat) * block / sum(lat) / 1e9 if lat else 0.0}
        # parallel: --threads readers over blocks of one tier each
        for tierwant in ("flash", "g4"):
            pool = [k for k in keys if where(eng, k) == tierwant]
            random.Random(2).shuffle(pool)
            pool = pool[:args.samples]
            done = [0]
            lock = threading.Lock()

            def reader(mine: list[str], done: list[int] = done, lock: threading.Lock = lock) -> None:
                for k in mine:
                    if eng.get(NS, k) is not None:
                        with lock:
                            done[0] += 1

            t0 = time.perf_counter()
            ths = [threading.Thread(target=reader, args=(pool[i::args.threads],))
                   for i in range(args.threads)]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            el = time.perf_counter() - t0
            out[tierwant][f"GBps_{args.threads}threads"] = done[0] * block / el / 1e9
        out["g4_stats"] = {k: v for k, v in eng.stats().items() if k.startswith("g4_")}
        return out
    finally:
        tier.close()
        eng.close()


def bench_spill(s3: Any, tmp: Path, args: argparse.Namespace, with_g4: bool) -> dict[str, Any]:
    block = args.block_kib * 1024
    cap = args.capacity_mib * MiB
    eng = open_engine(tmp / f"spill-{with_g4}-{time.time_ns()}", cap, args.segment_mib * MiB)
    tier = attach(eng, s3, f"bench-spill-{time.time_ns()}",
                  args.spill_mib_s * MiB) if with_g4 else None
    try:
        payload = random.Random(3).randbytes(block)
        written: list[str] = []
        for i in range(cap // block // 2):  # a warm start: half the flash full
            written.append(f"w{i:07d}")
            eng.put(NS, written[-1], payload)
        if tier is not None:
            drain(tier)
        stop = threading.Event()
        gets = [0]
        lock = threading.Lock()
        st0 = eng.stats()
        spilled0 = st0.get("g4_spilled_bytes", 0)
        rolled0 = eng.log.next_segment_id

        def writer() -> None:  # at --write-mib-s: the same load with and without G4
            n0, t0 = len(written), time.perf_counter()
            while not stop.is_set():
                written.append(f"w{len(written):07d}")
                eng.put(NS, written[-1], payload)
                due = (len(written) - n0) * block / (args.write_mib_s * MiB)
                ahead = due - (time.perf_counter() - t0)
                if ahead > 0:
                    stop.wait(ahead)

        def reader(seed: int) -> None:
            rnd = random.Random(seed)
            while not stop.is_set():
                k = written[-1 - rnd.randrange(min(len(written), args.hot_blocks))]
                if eng.get(NS, k) is not None:
                    with lock:
                        gets[0] += 1

        ths = [threading.Thread(target=writer)] + [
            threading.Thread(target=reader, args=(i,)) for i in range(args.threads)]
        t0 = time.perf_counter()
        for th in ths:
            th.start()
        time.sleep(args.seconds)
        stop.set()
        for th in ths:
            th.join()
        el = time.perf_counter() - t0
        st = eng.stats()
        return {"g4": with_g4, "seconds": el, "gets_per_s": gets[0] / el,
                "get_GBps": gets[0] * block / el / 1e9,
                "written_MiBps": (len(written) - cap // block // 2) * block / el / MiB,
                "spilled_MiBps": (st.get("g4_spilled_bytes", 0) - spilled0) / el / MiB,
                "spill_dropped_blocks": st.get("g4_spill_dropped_blocks", 0),
                "evicted_blocks": st["evicted_blocks"],
                # segments opened during the run, and how many reused a reclaimed file (the
                # rest were new files, first writes to trimmed blocks on a discard mount)
                "segments_rolled": eng.log.next_segment_id - rolled0,
                "segments_recycled": st["recycled_segments"] - st0["recycled_segments"]}
    finally:
        if tier is not None:
            tier.close()
        eng.close()


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric field's median over the trials."""
    import statistics

    return {k: statistics.median(r[k] for r in runs) if isinstance(v, (int, float))
            and not isinstance(v, bool) else v for k, v in runs[0].items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", choices=("seaweed", "kvstore"), default="seaweed")
    ap.add_argument("--block-kib", type=int, default=1024)
    ap.add_argument("--capacity-mib", type=int, default=64)
    ap.add_argument("--segment-mib", type=int, default=8)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--write-mib-s", type=int, default=24)
    ap.add_argument("--spill-mib-s", type=int, default=64)
    ap.add_argument("--hot-blocks", type=int, default=24)
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-g4-"))
    s3: SeaweedS3 | KvstoreS3 = SeaweedS3() if args.target == "seaweed" else KvstoreS3(
        capacity="2GiB")
    s3.start()
    try:
        hit = bench_hit(s3, tmp, args)
        offs, ons = [], []
        for _ in range(args.trials):  # alternating: this VM's load drifts between runs
            offs.append(bench_spill(s3, tmp, args, False))
            ons.append(bench_spill(s3, tmp, args, True))
    finally:
        s3.close()
        shutil.rmtree(tmp, ignore_errors=True)
    base = median_run(offs)
    spill = median_run(ons)
    ratio = spill["gets_per_s"] / base["gets_per_s"] if base["gets_per_s"] else 0.0
    res = {"args": vars(args), "hit": hit, "spill_off": base, "spill_on": spill,
           "foreground_ratio": ratio, "trials_off": offs, "trials_on": ons,
           "trial_ratios": [b["gets_per_s"] / a["gets_per_s"] for a, b in zip(offs, ons,
                                                                             strict=True)]}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"g4-{stamp}.json").write_text(json.dumps(res, indent=1))
    md = [f"# G4 benchmark {stamp} ({args.target}, {args.block_kib} KiB blocks)", "",
          "| read from | reads | p50 ms | p99 ms | GB/s 1 thread | "
          f"GB/s {args.threads} threads |", "|---|---:|---:|---:|---:|---:|"]
    for t in ("flash", "g4"):
        h = hit[t]
        md.append(f"| {t} | {h['reads']} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | "
                  f"{h['GBps_1thread']:.3f} | {h[f'GBps_{args.threads}threads']:.3f} |")
    md += ["", "| run | GETs/s | GET GB/s | written MiB/s | spilled MiB/s | not spilled | "
           "segments opened / recycled |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in (("no G4 (median)", base), ("G4 spilling (median)", spill)):
        md.append(f"| {name} | {r['gets_per_s']:.0f} | {r['get_GBps']:.3f} | "
                  f"{r['written_MiBps']:.1f} | {r['spilled_MiBps']:.1f} | "
                  f"{r['spill_dropped_blocks']} | "
                  f"{r.get('segments_rolled', 0)} / {r.get('segments_recycled', 0)} |")
    md += ["", f"Foreground GETs with spilling / without (medians of {args.trials} alternating "
           f"trials of {args.seconds:g} s): **{ratio:.2f}** (target >= 0.9); per trial "
           + ", ".join(f"{r:.2f}" for r in res["trial_ratios"]) + ".",
           "", "Reproduce: `python loadtest/bench_g4.py " + " ".join(sys.argv[1:]) + "`"]
    (RESULTS / f"g4-{stamp}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
