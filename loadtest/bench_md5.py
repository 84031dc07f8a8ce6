"""MD5 throughput on one core: hashlib against the SIMD lanes (native/md5lanes), per kernel and
number of streams hashed together, and the combiner (``Md5Lanes``) fed by threads as the S3
intake feeds it.

    .venv/bin/python loadtest/bench_md5.py            # 2 MiB bodies, 3 trials, best of each
    .venv/bin/python loadtest/bench_md5.py --quick    # 1 trial

Ratios are to hashlib measured in the same run. Results go to loadtest/results/md5-<time>.md
and .json with machine and commit. A script, not a test: the figures depend on the CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients")]

from kvstore.api.s3 import md5lanes  # noqa: E402

BODY = 2 << 20
STREAMS = (1, 2, 4, 8, 16)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def best_of(trials: int, fn: object) -> float:
    """Least seconds of ``trials`` calls of ``fn``."""
    best = float("inf")
    for _ in range(trials):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t)
    return best


def native_rows(bodies: list[bytes], trials: int) -> list[dict[str, object]]:
    import kvstore_md5lanes as native

    iv = bytes.fromhex("0123456789abcdeffedcba9876543210")
    rows = []
    for kernel, lanes in native.kernels():
        for k in STREAMS:
            def run(k: int = k, kernel: str = kernel) -> None:
                native.compress([bytearray(iv) for _ in range(k)], bodies[:k], kernel)
            secs = best_of(trials, run)
            rows.append({"kernel": kernel, "lanes": lanes, "streams": k,
                         "gbps": k * BODY / secs / 1e9})
    return rows


def combiner_rows(bodies: list[bytes], trials: int) -> list[dict[str, object]]:
    """Threads each hash one body in 512 KiB updates (the intake's batches) through one
    combiner, started together."""
    kernel = md5lanes.simd_kernel()
    if kernel is None:
        return []
    rows = []
    for k in (1, 4, 8):
        lanes = md5lanes.Md5Lanes(kernel)

        def one(body: bytes, lanes: md5lanes.Md5Lanes = lanes) -> str:
            h = lanes.new()
            for i in range(0, len(body), 512 << 10):
                h.update(body[i : i + (512 << 10)])
            return h.hexdigest()

        want = [hashlib.md5(b).hexdigest() for b in bodies[:k]]
        with ThreadPoolExecutor(k) as pool:
            def run(k: int = k, want: list[str] = want) -> None:
                if list(pool.map(one, bodies[:k])) != want:
                    raise AssertionError("the combiner's MD5 differs from hashlib's")
            best = best_of(trials, run)
            rows.append({"kernel": kernel, "threads": k, "gbps": k * BODY / best / 1e9,
                         "lanes_a_round": lanes.streams / max(lanes.rounds, 1)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 trial")
    ap.add_argument("--out", default=str(ROOT / "loadtest" / "results"))
    a = ap.parse_args()
    trials = 1 if a.quick else a.trials
    if not 1 <= trials <= 20:
        raise SystemExit("--trials 1-20")
    if not md5lanes.kernels():
        print("kvstore_md5lanes is not built: nothing to compare", file=sys.stderr)
        return 2
    bodies = [os.urandom(BODY) for _ in range(max(STREAMS))]
    base = BODY * 4 / best_of(trials, lambda: [hashlib.md5(b).digest() for b in bodies[:4]]) / 1e9
    native = native_rows(bodies, trials)
    comb = combiner_rows(bodies, trials)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    head = (f"# MD5 on one core: hashlib vs SIMD lanes ({time.strftime('%Y-%m-%d %H:%M:%S')}, "
            f"commit {commit()})\n\nMachine: {os.cpu_count()} cores ({cpu_name()}), Python "
            f"{platform.python_version()}, threading switch interval "
            f"{sys.getswitchinterval() * 1e3:g} ms. Bodies of {BODY >> 20} MiB, best of {trials}."
            f"\n\nhashlib: {base:.2f} GB/s (one stream at a time).\n")
    lines = [head, "| kernel | lanes | streams | GB/s | / hashlib |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['kernel']} | {r['lanes']} | {r['streams']} | {r['gbps']:.2f} | "
              f"{float(r['gbps']) / base:.2f} |" for r in native]  # type: ignore[arg-type]
    if comb:
        lines += ["", "Through the combiner (``Md5Lanes``), threads started together, 512 KiB "
                  "updates:", "", "| kernel | threads | GB/s | / hashlib | lanes a round |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['kernel']} | {r['threads']} | {r['gbps']:.2f} | "
                  f"{float(r['gbps']) / base:.2f} | {r['lanes_a_round']:.1f} |"  # type: ignore[arg-type]
                  for r in comb]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"md5-{stamp}.md").write_text(text)
    (out / f"md5-{stamp}.json").write_text(json.dumps(
        {"commit": commit(), "cpu": cpu_name(), "hashlib_gbps": base, "native": native,
         "combiner": comb, "trials": trials, "body_bytes": BODY}, indent=1))
    print(f"results: {out}/md5-{stamp}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
