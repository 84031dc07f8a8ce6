"""Engine vs fio on the same disk, with the queue depth each row really reached.

    .venv/bin/python loadtest/bench_engine.py            # full: 2 GiB per pass, 5 trials
    .venv/bin/python loadtest/bench_engine.py --quick    # small smoke run

For each queue depth (default 1, 8, 32) and trial, in this order on the same filesystem:
fio (ioengine=io_uring, direct=1, bs=2M, sequential write then read of --size; for writes
also into a file it creates, ``fio_fresh_file``, on fresh blocks as a fresh store's), the bare
UringDevice (one batch of all ops, ``depth`` kept in flight; once with batched SQE submission,
once with pyuring's submit-per-op calls, once from 4 KiB-page buffers like fio's, and for writes
once into a newly preallocated file like the engine's fresh segments), PosixDevice
from ``depth`` threads, and the engine (DRAM tier off, so every get reads flash) doing 2 MiB puts
then gets from ``depth`` threads, batched puts of ``depth`` blocks a call from one thread, and
puts into a full store. Each row: median GB/s over the trials with min-max, the ratio to fio,
CPU cores and cores per GB/s, the device's measured in-flight depth (time-weighted mean / peak,
from its DepthGauge) and the disk queue seen by the block layer (aqu-sz, requests per op).
A line says whether the disk rewards depth (fio QD32 / fio QD1). Then the index: --blocks puts
of 1-byte payloads, index bytes per block and the time ``Engine.open`` takes to reopen that
store. Results go to loadtest/results/engine-*.md|json with machine, settings and commit.
``--encrypt`` adds the same engine passes with encryption at rest on (a random master key:
AES-256-GCM per record, ``engine/crypto.py``) as the rows ``engine_enc*``, beside the plain ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_engine_passes import (  # noqa: E402
    BS,
    engine_api,
    engine_pass,
    index_and_reopen,
    threaded,
)
from bench_measure import Sample, diskstats, summarize, timed  # noqa: E402

from kvstore import limits  # noqa: E402
from kvstore.engine.device import AlignedBuffer, IoOp  # noqa: E402
from kvstore.io_uring.posix import PosixDevice  # noqa: E402
from kvstore.io_uring.select import probe_uring  # noqa: E402
from kvstore.io_uring.uring import UringDevice  # noqa: E402


def sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(bench_dir: Path) -> dict[str, object]:
    mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "0")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    src_fs = sh("findmnt", "-no", "SOURCE,FSTYPE", "-T", str(bench_dir)).split()
    dev = os.path.basename(src_fs[0]) if src_fs else ""
    model = ""
    for p in (f"/sys/block/{dev}/device/model", f"/sys/block/{dev}/device/vendor"):
        if os.path.exists(p):
            model = open(p).read().strip() or model
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "disk": dev, "fstype": src_fs[1] if len(src_fs) > 1 else "", "disk_model": model,
            # relative to the repository: no path of this machine goes into a recorded result
            "io_uring_probe": probe_uring(str(bench_dir))[1].replace(str(ROOT) + os.sep, "")}


def git_commit() -> str:
    head = sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", str(ROOT), "status", "--porcelain", "--", "kvstore")
    return head + ("-dirty" if dirty else "")


# --- fio and the bare devices ---------------------------------------------------------------

def fio(path: Path, rw: str, depth: int, size: int, disk: str) -> Sample:
    d0 = diskstats(disk)
    out = sh("fio", "--name=bench", f"--filename={path}", "--ioengine=io_uring", "--direct=1",
             "--bs=2M", f"--iodepth={depth}", f"--rw={rw}", f"--size={size}",
             "--output-format=json")
    d1 = diskstats(disk)
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["read" if rw == "read" else "write"]
    runtime_s = max(float(side["runtime"]) / 1000, 1e-3)
    s = Sample(float(side["bw_bytes"]) / 1e9,
               (float(job["usr_cpu"]) + float(job["sys_cpu"])) / 100)
    if d0 is not None and d1 is not None:
        s.aqu = (d1[2] - d0[2]) / (runtime_s * 1000)
        s.reqs_per_op = ((d1[1] - d0[1]) if rw == "write" else (d1[0] - d0[0])) / (size // BS)
    return s


def fio_fresh(path: Path, depth: int, size: int, disk: str) -> Sample:
    """fio writing a file it creates (blocks the file system just freed and, mounted with
    ``discard``, just trimmed: the virtual disk allocates them again on this first write), as
    the engine's fresh store writes new segment files; the ``fio`` row overwrites its file."""
    path.unlink(missing_ok=True)
    try:
        return fio(path, "write", depth, size, disk)
    finally:
        path.unlink(missing_ok=True)


class _PlainBuffer:
    """A 2 MiB buffer of ordinary 4 KiB pages (shared anonymous mmap), as fio and the engine
    used before huge-page buffers: shows what the buffer's page size costs on this disk."""

    def __init__(self, n: int) -> None:
        self._map = mmap.mmap(-1, n)
        self.view = memoryview(self._map)


def uring_pass(path: Path, write: bool, depth: int, size: int, disk: str, *,
               batch: bool = True, huge: bool = True, fresh: bool = False) -> Sample:
    if fresh:  # a new preallocated file, as the engine's fresh segments are (unwritten extents)
        path.unlink(missing_ok=True)
        prepare_file(path, size)
    dev = UringDevice(entries=depth, batch=batch)
    h = dev.open(str(path))
    bufs: list[Any] = [AlignedBuffer(BS) if huge else _PlainBuffer(BS) for _ in range(depth)]
    for b in bufs:
        b.view[:] = os.urandom(4096) * (BS // 4096)
    n = size // BS
    ops = [IoOp(h, i * BS, bufs[i % depth].view, write=write) for i in range(n)]
    res: list[int] = []
    s = timed(lambda: res.extend(dev.submit(ops)), size, disk=disk, write=write, ops=n, dev=dev)
    dev.close()
    if fresh:
        path.unlink(missing_ok=True)
    assert res == [BS] * len(ops), "device pass moved fewer bytes than asked"
    return s


def posix_pass(path: Path, write: bool, depth: int, size: int, disk: str) -> Sample:
    dev = PosixDevice()
    h = dev.open(str(path))
    n = size // BS
    bufs = [AlignedBuffer(BS) for _ in range(depth)]

    def work(tid: int) -> None:
        for i in range(tid, n, depth):
            assert dev.submit([IoOp(h, i * BS, bufs[tid].view, write=write)]) == [BS]

    s = timed(lambda: threaded(depth, work), size, disk=disk, write=write, ops=n, dev=dev)
    dev.close()
    return s


def prepare_file(path: Path, size: int, *, written: bool = False) -> None:
    """Preallocate ``path`` (unwritten extents); ``written``: also write it once, untimed, so
    the device passes overwrite written blocks, as fio does after laying out its file."""
    with open(path, "ab") as f:
        os.posix_fallocate(f.fileno(), 0, size)
    if written:
        dev = UringDevice(entries=8)
        h = dev.open(str(path))
        buf = AlignedBuffer(BS)
        res = dev.submit([IoOp(h, i * BS, buf.view, write=True) for i in range(size // BS)])
        dev.close()
        assert res == [BS] * (size // BS), "could not lay out the device file"


# --- report ---------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    t = text.strip().upper()
    for suffix, mult in (("GIB", limits.GiB), ("MIB", limits.MiB), ("KIB", limits.KiB)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


DEVICE_TARGET, ENGINE_TARGET = 0.9, 0.85  # of fio: every depth / depth >= 8 (issue 15)
REWARDS_DEPTH = 1.2  # fio QD32 over QD1 above this: the disk rewards depth


def device_runs(bench: Path, rw: str, depth: int, size: int, disk: str,
                ) -> list[tuple[str, Callable[[], Sample]]]:
    w = rw == "write"
    dev_file = bench / "dev.dat"
    fresh = [("uring_device_fresh_file",
              lambda: uring_pass(bench / "fresh.dat", w, depth, size, disk, fresh=True)),
             ("fio_fresh_file", lambda: fio_fresh(bench / "fio_fresh.dat", depth, size, disk))]
    return [
        *(fresh if w else []),
        ("fio", lambda: fio(bench / "fio.dat", rw, depth, size, disk)),
        ("uring_device", lambda: uring_pass(dev_file, w, depth, size, disk)),
        ("uring_device_per_op", lambda: uring_pass(dev_file, w, depth, size, disk, batch=False)),
        ("uring_device_4k_pages", lambda: uring_pass(dev_file, w, depth, size, disk, huge=False)),
        ("posix_threads", lambda: posix_pass(dev_file, w, depth, size, disk)),
    ]


def run_depth(a: argparse.Namespace, bench: Path, depth: int, size: int, disk: str,
              api: tuple[type, type] | None) -> dict[tuple[str, str], list[Sample]]:
    samples: dict[tuple[str, str], list[Sample]] = {}
    make_dev = {"uring": UringDevice, "posix": PosixDevice}[a.engine_device]
    for trial in range(a.trials):
        for rw in ("write", "read"):
            runs = device_runs(bench, rw, depth, size, disk)
            k = trial % len(runs)  # rotate the order so no case always runs first
            for name, fn in runs[k:] + runs[:k]:
                samples.setdefault((name, rw), []).append(fn())
        for tag, eng_api in _engine_apis(api, a.encrypt):
            e = engine_pass(eng_api, make_dev, bench / "engine", depth, size, disk)
            for key, smp in e.items():
                case, rw = {"write": ("engine", "write"), "read": ("engine", "read"),
                            "batch_write": ("engine_batch", "write"),
                            "staged_write": ("engine_staged", "write"),
                            "full_write": ("engine_full", "write")}[key]
                samples.setdefault((case.replace("engine", "engine" + tag), rw), []).append(smp)
        print(f"depth {depth} trial {trial + 1}: " + ", ".join(
            f"{c}_{rw}={v[-1].gbps:.2f}" for (c, rw), v in samples.items()), flush=True)
    return samples


def _engine_apis(api: tuple[type, type] | None,
                 encrypt: bool) -> list[tuple[str, tuple[type, Any]]]:
    """("", plain engine) and, with ``encrypt``, ("_enc", the engine with a master key)."""
    if api is None:
        return []
    out: list[tuple[str, tuple[type, Any]]] = [("", api)]
    if encrypt:
        out.append(("_enc", (api[0], functools.partial(api[1],
                                                       master_key=os.urandom(32)))))
    return out


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=str(ROOT / "data" / "bench"), help="scratch dir (same disk)")
    ap.add_argument("--size", default="2GiB", help="bytes per pass (e.g. 2GiB, 512MiB)")
    ap.add_argument("--depths", default="1,8,32")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=1_000_000, help="blocks for the index test")
    ap.add_argument("--quick", action="store_true", help="512 MiB, 1 trial, 100k blocks")
    ap.add_argument("--no-engine", action="store_true", help="fio and devices only")
    ap.add_argument("--no-index", action="store_true", help="skip the index/reopen test")
    ap.add_argument("--engine-device", choices=("uring", "posix"), default="uring")
    ap.add_argument("--encrypt", action="store_true",
                    help="also run the engine with encryption at rest (rows engine_enc*)")
    ap.add_argument("--note", default="", help="free text recorded with the results")
    ap.add_argument("--out", default=str(ROOT / "loadtest" / "results"))
    a = ap.parse_args()
    size = parse_size(a.size)
    if a.quick:
        size, a.trials, a.blocks = 512 * limits.MiB, 1, min(a.blocks, 100_000)
    size = max(BS, size // BS * BS)
    depths = [int(d) for d in a.depths.split(",")]
    bench = Path(a.dir)
    bench.mkdir(parents=True, exist_ok=True)
    if not shutil.which("fio"):
        print("fio is not installed", file=sys.stderr)
        return 2
    ok, why = probe_uring(str(bench))
    if not ok:
        print(f"io_uring unavailable: {why}", file=sys.stderr)
        return 2
    api = None if a.no_engine else engine_api()
    print(f"engine: {'available' if api else 'NOT available (fio and devices only)'}")
    m = machine(bench)
    disk = str(m["disk"])
    load0 = loadavg()
    prepare_file(bench / "dev.dat", size, written=True)
    rows: list[dict[str, Any]] = []
    for depth in depths:
        samples = run_depth(a, bench, depth, size, disk, api)
        for (case, rw), smp in samples.items():
            rows.append({"depth": depth, "case": case, "rw": rw, **summarize(smp),
                         "samples": [x.as_dict() for x in smp]})
    for f in ("fio.dat", "dev.dat", "fresh.dat", "fio_fresh.dat"):
        (bench / f).unlink(missing_ok=True)
    index = None
    if api is not None and not a.no_index:
        index = index_and_reopen(api, {"uring": UringDevice, "posix": PosixDevice}[
            a.engine_device], bench / "index", a.blocks)
        print("index:", index)
    for r in rows:
        same = {x["case"]: x["gbps"] for x in rows if x["depth"] == r["depth"]
                and x["rw"] == r["rw"]}
        r["over_fio"] = r["gbps"] / same["fio"] if same.get("fio") else None
        r["over_device"] = r["gbps"] / same["uring_device"] if same.get("uring_device") else None
    m["loadavg_start"], m["loadavg_end"] = load0, loadavg()
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
              "machine": m, "note": a.note,
              "settings": {"size_bytes": size, "block_bytes": BS, "depths": depths,
                           "trials": a.trials, "quick": a.quick, "engine": api is not None,
                           "engine_device": a.engine_device, "dram_bytes": 0,
                           "encrypt": a.encrypt},
              "rows": rows, "depth_reward": depth_reward(rows), "index": index,
              "targets": {"device_over_fio_every_depth": DEVICE_TARGET,
                          "engine_over_fio_at_depth_ge_8": ENGINE_TARGET,
                          "index_bytes_per_block": 100, "reopen_seconds": 10}}
    write_report(report, Path(a.out))
    return 0


def depth_reward(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for rw in ("write", "read"):
        fio = {r["depth"]: r["gbps"] for r in rows if r["case"] == "fio" and r["rw"] == rw}
        lo, hi = min(fio, default=None), max(fio, default=None)
        out[rw] = fio[hi] / fio[lo] if lo is not None and hi != lo and fio[lo] else None
    return out


def _f(x: float | None, nd: int = 2) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def report_lines(report: dict[str, Any]) -> list[str]:
    rows = report["rows"]
    depths = report["settings"]["depths"]
    lines: list[str] = []
    dr = report["depth_reward"]
    for rw in ("write", "read"):
        if dr.get(rw):
            verdict = "rewards depth" if dr[rw] >= REWARDS_DEPTH else "does not reward depth"
            lines.append(f"- Disk {verdict} for {rw}s: fio QD{max(depths)} / QD{min(depths)} "
                         f"= {dr[rw]:.2f}.")
    checks = []
    for r in rows:
        if r["case"] == "fio" or r.get("over_fio") is None:
            continue
        if r["case"] == "uring_device":
            checks.append((r, DEVICE_TARGET))
        elif r["case"].startswith("engine") and r["depth"] >= 8:
            checks.append((r, ENGINE_TARGET))
    missed = [f"{r['case']} {r['rw']} QD{r['depth']} {r['over_fio']:.2f} < {t}"
              for r, t in checks if r["over_fio"] < t]
    fresh = {(r["depth"], r["case"]): r["gbps"] for r in rows if r["rw"] == "write"}
    pairs = [f"QD{d} {fresh[(d, 'engine')] / fresh[(d, 'fio_fresh_file')]:.2f}"
             for d in depths if fresh.get((d, "fio_fresh_file")) and (d, "engine") in fresh]
    if pairs:
        lines.append("- Fresh blocks: engine write (a fresh store) / fio_fresh_file (fio writing "
                     "a file it creates, on blocks as fresh): " + ", ".join(pairs) + ".")
    lines.append(f"- Targets (device >= {DEVICE_TARGET} of fio at every depth, engine >= "
                 f"{ENGINE_TARGET} at depth >= 8): "
                 + ("all met." if not missed else "missed: " + "; ".join(missed) + "."))
    for rw in ("write", "read"):
        lines += ["", f"### {rw.capitalize()}s", "",
                  "| depth | case | GB/s median (min-max) | / fio | / uring_device | CPU cores "
                  "| cores per GB/s | in flight mean / peak | disk aqu-sz | disk reqs/op |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r["rw"] != rw:
                continue
            depth = "" if r["depth_mean"] is None else \
                f"{r['depth_mean']:.1f} / {r['depth_peak']}"
            lines.append(
                f"| {r['depth']} | {r['case']} | {r['gbps']:.2f} ({r['gbps_min']:.2f}-"
                f"{r['gbps_max']:.2f}) | {_f(r['over_fio'])} | {_f(r.get('over_device'))} | "
                f"{_f(r['cpu_cores'])} | "
                f"{_f(r['cores_per_gbps'])} | {depth} | {_f(r['aqu'], 1)} | "
                f"{_f(r['reqs_per_op'])} |")
    return lines


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = "engine-" + ("quick-" if report["settings"]["quick"] else "")
    stem += time.strftime("%Y%m%d-%H%M%S")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    lines = [f"# Engine vs fio ({report['when']}, commit {report['commit']})", "",
             "Machine: " + ", ".join(f"{k}={v}" for k, v in m.items()), "",
             "Settings: " + json.dumps(report["settings"]), ""]
    if report["note"]:
        lines += [f"Note: {report['note']}", ""]
    lines += ["Medians over the trials, min-max beside them; / fio and / uring_device = ratio "
              "to that row at the same depth. uring_device_fresh_file writes a newly "
              "preallocated file, as the engine's fresh segments are; fio_fresh_file is fio "
              "writing a file it creates (the fio row overwrites one it wrote before). On a "
              "file system mounted with discard, fresh files sit on just-trimmed blocks that "
              "the virtual disk allocates again on their first write (docs/ARCHITECTURE.md). "
              "CPU cores = process CPU seconds per second (fio: its usr+sys). In flight "
              "= the device's DepthGauge over the pass (ops submitted and not yet reaped: "
              "time-weighted mean / peak). Disk aqu-sz and reqs/op come from /proc/diskstats "
              "(requests, after the block layer split or merged the 2 MiB ops).", ""]
    lines += report_lines(report)
    if report["index"]:
        lines += ["", "Index and reopen:", ""] + [f"- {k}: {v}" for k, v in
                                                  report["index"].items()]
    lines += ["", "Targets: " + json.dumps(report["targets"]), ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(report_lines(report)))
    print(f"wrote {out / stem}.md and .json")


if __name__ == "__main__":
    sys.exit(main())
