"""Engine vs fio on the same disk, plus index memory per block and reopen time.

    .venv/bin/python loadtest/bench_engine.py            # full: 2 GiB per pass, 1M blocks
    .venv/bin/python loadtest/bench_engine.py --quick    # small smoke run

For each queue depth (default 1, 8, 32) and trial, in this order on the same filesystem:
fio (ioengine=io_uring, direct=1, bs=2M, sequential write then read of --size), the bare
UringDevice (one batch of all ops, ``depth`` kept in flight), PosixDevice from ``depth`` threads,
and the engine (DRAM tier off, so every get reads flash) doing 2 MiB puts then gets from
``depth`` threads, then (where the engine has ``put_many``) batched puts of ``depth`` blocks a
call from one thread. Medians over trials; ratio = engine / fio. Then the index: --blocks puts of
1-byte payloads, index bytes per block (the index's own accounting and the RSS delta), and the
time ``Engine.open`` takes to reopen that store. Results go to loadtest/results/engine-*.md|json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvstore import limits  # noqa: E402
from kvstore.engine.device import AlignedBuffer, IoOp  # noqa: E402
from kvstore.io_uring.posix import PosixDevice  # noqa: E402
from kvstore.io_uring.select import probe_uring  # noqa: E402
from kvstore.io_uring.uring import UringDevice  # noqa: E402

BS = 2 * limits.MiB
RUN_SECONDS_MAX = 600.0  # one pass of any kind gives up after this long


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

def fio(path: Path, rw: str, depth: int, size: int) -> float:
    out = sh("fio", "--name=bench", f"--filename={path}", "--ioengine=io_uring", "--direct=1",
             "--bs=2M", f"--iodepth={depth}", f"--rw={rw}", f"--size={size}",
             "--output-format=json")
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return float(job["read" if rw == "read" else "write"]["bw_bytes"])


def uring_pass(path: Path, write: bool, depth: int, size: int) -> float:
    dev = UringDevice(entries=depth)
    h = dev.open(str(path))
    bufs = [AlignedBuffer(BS) for _ in range(depth)]
    for b in bufs:
        b.view[:] = os.urandom(4096) * (BS // 4096)
    ops = [IoOp(h, i * BS, bufs[i % depth].view, write=write) for i in range(size // BS)]
    t0 = time.perf_counter()
    res = dev.submit(ops)
    dt = time.perf_counter() - t0
    dev.close()
    assert res == [BS] * len(ops), "device pass moved fewer bytes than asked"
    return size / dt


def threaded(depth: int, work: Callable[[int], None]) -> float:
    """Run ``work(tid)`` on ``depth`` threads; seconds from a common start to the last end."""
    start = threading.Barrier(depth + 1)
    errors: list[BaseException] = []

    def run(tid: int) -> None:
        start.wait(timeout=60)
        try:
            work(tid)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(depth)]
    for t in ts:
        t.start()
    start.wait(timeout=60)
    t0 = time.perf_counter()
    for t in ts:
        t.join(timeout=RUN_SECONDS_MAX)
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def posix_pass(path: Path, write: bool, depth: int, size: int) -> float:
    dev = PosixDevice()
    h = dev.open(str(path))
    n = size // BS

    def work(tid: int) -> None:
        buf = AlignedBuffer(BS)
        for i in range(tid, n, depth):
            assert dev.submit([IoOp(h, i * BS, buf.view, write=write)]) == [BS]

    dt = threaded(depth, work)
    dev.close()
    return size / dt


# --- the engine -----------------------------------------------------------------------------

def engine_api() -> tuple[type, type] | None:
    try:
        from kvstore.engine.store import Engine
        from kvstore.engine.types import EngineConfig
    except ImportError:
        return None
    return (Engine, EngineConfig) if hasattr(Engine, "open") else None


def engine_config(cfg_cls: type, data_dir: Path, payload_bytes: int) -> object:
    seg = limits.segment_bytes_default
    cap = max(2 * seg, (int(payload_bytes * 1.3) // seg + 2) * seg)
    return cfg_cls(data_dir=str(data_dir), capacity_bytes=cap, segment_bytes=seg,
                   dram_bytes=0, dram_on_put=False)


def engine_pass(api: tuple[type, type], data_dir: Path, depth: int, size: int) -> dict[str, float]:
    Engine, Cfg = api
    shutil.rmtree(data_dir, ignore_errors=True)
    eng = Engine.open(engine_config(Cfg, data_dir, 2 * size), UringDevice())
    eng.create_namespace("bench")
    n = size // BS
    payload = os.urandom(4096) * (BS // 4096)

    def put(tid: int) -> None:
        for i in range(tid, n, depth):
            eng.put("bench", f"k{i:08d}", payload)

    def get(tid: int) -> None:
        buf = bytearray(BS)
        for i in range(tid, n, depth):
            if eng.get_into("bench", f"k{i:08d}", buf) != BS:
                raise RuntimeError(f"engine get k{i:08d} missed")

    out: dict[str, float] = {}
    for name, fn in (("write", put), ("read", get)):
        c0 = time.process_time()
        dt = threaded(depth, fn)
        out[name] = size / dt
        out[f"{name}_cpu_cores"] = (time.process_time() - c0) / dt
    if hasattr(eng, "put_many"):  # batched puts: ``depth`` records per call, one thread
        keys = [f"b{i:08d}" for i in range(n)]
        c0, t0 = time.process_time(), time.perf_counter()
        for j in range(0, n, depth):
            res = eng.put_many("bench", [(k, payload) for k in keys[j : j + depth]])
            if not all(r.created for r in res):
                raise RuntimeError("put_many did not create every block")
        dt = time.perf_counter() - t0
        out["batch_write"] = size / dt
        out["batch_write_cpu_cores"] = (time.process_time() - c0) / dt
    hits_dram = eng.stats().get("hits_dram", 0)
    if hits_dram:
        print(f"warning: {hits_dram} gets hit DRAM although dram_bytes=0", file=sys.stderr)
    eng.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    out.update(full_store_write(api, data_dir, depth, size, payload))
    return out


def full_store_write(api: tuple[type, type], data_dir: Path, depth: int, size: int,
                     payload: bytes) -> dict[str, float]:
    """Puts into a store already at capacity: the steady state of a cache. Each new segment
    then reuses a reclaimed segment's file (overwrites, no block allocation)."""
    Engine, Cfg = api
    seg = limits.segment_bytes_default
    cap = max(4, size // seg) * seg
    cfg = Cfg(data_dir=str(data_dir), capacity_bytes=cap, segment_bytes=seg, dram_bytes=0,
              dram_on_put=False)
    eng = Engine.open(cfg, UringDevice())
    eng.create_namespace("bench")
    n = size // BS
    fill = [(f"f{i:08d}", payload) for i in range(cap // BS)]
    for j in range(0, len(fill), 64):  # reach capacity (untimed)
        eng.put_many("bench", fill[j : j + 64])

    def put(tid: int) -> None:
        for i in range(tid, n, depth):
            eng.put("bench", f"k{i:08d}", payload)

    c0 = time.process_time()
    dt = threaded(depth, put)
    st = eng.stats()
    eng.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    if not st.get("recycled_segments"):
        print("warning: the full-store pass recycled no segment file", file=sys.stderr)
    return {"full_write": size / dt, "full_write_cpu_cores": (time.process_time() - c0) / dt}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def index_bytes(eng: object) -> int | None:
    st = eng.stats()  # type: ignore[attr-defined]
    for k in ("index_bytes", "index_memory_bytes"):
        if k in st:
            return int(st[k])
    for v in vars(eng).values():
        if hasattr(v, "memory_bytes") and callable(v.memory_bytes):
            return int(v.memory_bytes())
    return None


def index_and_reopen(api: tuple[type, type], data_dir: Path, blocks: int) -> dict[str, object]:
    Engine, Cfg = api
    shutil.rmtree(data_dir, ignore_errors=True)
    cfg = engine_config(Cfg, data_dir, blocks * 2 * limits.io_alignment_bytes)
    eng = Engine.open(cfg, UringDevice())
    eng.create_namespace("bench")
    rss0 = rss_bytes()
    threads = 4

    def fill(tid: int) -> None:  # batched puts: tiny blocks are bound by per-I/O latency
        mine = range(tid, blocks, threads)
        for j in range(0, len(mine), 1024):
            eng.put_many("bench", [(f"k{i:08d}", b"x") for i in mine[j : j + 1024]])

    fill_s = threaded(threads, fill)
    rss1 = rss_bytes()
    idx = index_bytes(eng)
    count = eng.count("bench")
    eng.close()
    t0 = time.perf_counter()
    eng = Engine.open(cfg, UringDevice())
    reopen_s = time.perf_counter() - t0
    recount = eng.count("bench")
    sample_ok = all(eng.get("bench", f"k{i:08d}") == b"x" for i in range(0, blocks, blocks // 100 or 1))
    rss2 = rss_bytes()
    eng.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"blocks": blocks, "count_after_fill": count, "count_after_reopen": recount,
            "sample_reads_ok": sample_ok, "fill_seconds": round(fill_s, 2),
            "puts_per_second": round(blocks / fill_s),
            "index_bytes_per_block": None if idx is None else round(idx / blocks, 1),
            "rss_delta_bytes_per_block": round((rss1 - rss0) / blocks, 1),
            "rss_after_reopen_mib": round(rss2 / 2**20, 1),
            "reopen_seconds": round(reopen_s, 3)}


# --- report ---------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    t = text.strip().upper()
    for suffix, mult in (("GIB", limits.GiB), ("MIB", limits.MiB), ("KIB", limits.KiB)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def gbps(x: float) -> float:
    return round(x / 1e9, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=str(ROOT / "data" / "bench"), help="scratch dir (same disk)")
    ap.add_argument("--size", default="2GiB", help="bytes per pass (e.g. 2GiB, 512MiB)")
    ap.add_argument("--depths", default="1,8,32")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=1_000_000, help="blocks for the index test")
    ap.add_argument("--quick", action="store_true", help="512 MiB, 1 trial, 100k blocks")
    ap.add_argument("--no-engine", action="store_true", help="fio and devices only")
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
    rows: list[dict[str, object]] = []
    for depth in depths:
        samples: dict[str, list[float]] = {}
        for trial in range(a.trials):
            for rw in ("write", "read"):
                write = rw == "write"
                runs: list[tuple[str, Callable[[], float]]] = [
                    ("fio", lambda rw=rw, d=depth: fio(bench / "fio.dat", rw, d, size)),
                    ("uring_device",
                     lambda w=write, d=depth: uring_pass(bench / "dev.dat", w, d, size)),
                    ("posix_threads",
                     lambda w=write, d=depth: posix_pass(bench / "dev.dat", w, d, size)),
                ]
                for name, fn in runs:
                    samples.setdefault(f"{name}_{rw}", []).append(fn())
            if api is not None:
                e = engine_pass(api, bench / "engine", depth, size)
                for k, v in e.items():
                    samples.setdefault(f"engine_{k}", []).append(v)
            print(f"depth {depth} trial {trial + 1}: " + ", ".join(
                f"{k}={gbps(v[-1]) if 'cpu' not in k else round(v[-1], 2)}"
                for k, v in samples.items()), flush=True)
        row: dict[str, object] = {"depth": depth}
        for k, v in samples.items():
            med = statistics.median(v)
            row[k] = round(med, 2) if "cpu" in k else gbps(med)
        for rw in ("write", "read"):
            for name in ("uring_device", "posix_threads", "engine", "engine_batch",
                         "engine_full"):
                if f"{name}_{rw}" in row:
                    row[f"ratio_{name}_{rw}"] = round(
                        float(row[f"{name}_{rw}"]) / float(row[f"fio_{rw}"]), 3)
        rows.append(row)
    for f in ("fio.dat", "dev.dat"):
        (bench / f).unlink(missing_ok=True)
    index = index_and_reopen(api, bench / "index", a.blocks) if api is not None else None
    if index:
        print("index:", index)
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
              "machine": machine(bench),
              "settings": {"size_bytes": size, "block_bytes": BS, "depths": depths,
                           "trials": a.trials, "quick": a.quick, "engine": api is not None,
                           "dram_bytes": 0},
              "throughput_gbps": rows, "index": index,
              "targets": {"engine_over_fio_at_depth_ge_8": 0.85, "index_bytes_per_block": 100,
                          "reopen_seconds": 10}}
    write_report(report, Path(a.out))
    return 0


def write_report(report: dict[str, object], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = "engine-" + ("quick-" if report["settings"]["quick"] else "")  # type: ignore[index]
    stem += time.strftime("%Y%m%d-%H%M%S")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    lines = [f"# Engine vs fio ({report['when']}, commit {report['commit']})", "",
             "Machine: " + ", ".join(f"{k}={v}" for k, v in m.items()),  # type: ignore[union-attr]
             "", "Settings: " + json.dumps(report["settings"]), "",
             "Throughput in GB/s (medians); ratio = x / fio at the same depth.", ""]
    rows = report["throughput_gbps"]
    cols = [k for k in rows[0] if k != "depth"] if rows else []  # type: ignore[index]
    lines += ["| depth | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:  # type: ignore[union-attr]
        lines.append(f"| {r['depth']} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if report["index"]:
        lines += ["", "Index and reopen:", ""] + [f"- {k}: {v}" for k, v in
                                                  report["index"].items()]  # type: ignore[union-attr]
    lines += ["", "Targets: " + json.dumps(report["targets"]), ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    print(f"wrote {out / stem}.md and .json")


if __name__ == "__main__":
    sys.exit(main())
