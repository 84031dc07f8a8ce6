"""Where the engine's write path loses queue depth: a per-stage timing of put_many and of
concurrent single puts, with the device's measured in-flight depth.

    .venv/bin/python loadtest/profile_put_many.py                # 32 x 2 MiB, 5 calls
    .venv/bin/python loadtest/profile_put_many.py --threads 32   # + 32 threads of single puts
    .venv/bin/python loadtest/profile_put_many.py --full         # into recycled segment files
    .venv/bin/python loadtest/profile_put_many.py --block-bytes 65536 --threads 32  # small puts

Stages are timed by wrapping the engine's own functions for the run (nothing in the engine is
changed): ``prepare`` (validation and the checksum, per record, before any I/O), batch
``_pack``, ``_build`` (payload copy into the chunk buffer), waiting for ``SegmentLog.wlock``, ``_reserve``
(under it), ``device.submit`` (the I/O), ``SegmentLog.complete`` (marking the range written and waiting
for every earlier byte of the segment: the log-order acknowledgement) and ``_publish_chunk``.
"Device idle" is the part of the call with nothing in flight at the device (its DepthGauge).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvstore import limits  # noqa: E402
from kvstore.engine import batch as batch_mod  # noqa: E402
from kvstore.engine import format as fmt  # noqa: E402
from kvstore.engine.device import StagedPayload  # noqa: E402
from kvstore.engine.store import Engine  # noqa: E402
from kvstore.engine.types import EngineConfig  # noqa: E402
from kvstore.io_uring.posix import PosixDevice  # noqa: E402
from kvstore.io_uring.uring import UringDevice  # noqa: E402

BS = 2 * limits.MiB


class Stages:
    """Seconds per stage, summed over calls and threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def add(self, name: str, dt: float) -> None:
        with self._lock:
            self.seconds[name] += dt
            self.calls[name] += 1

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, timed into ``name``."""
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.add(name, time.perf_counter() - t0)
        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


class TimedLock:
    """Stands in for the engine's write lock: times the wait to acquire it and the hold."""

    def __init__(self, lock: Any, stages: Stages) -> None:
        self._lock, self._stages = lock, stages
        self._held = threading.local()

    def __enter__(self) -> TimedLock:
        t0 = time.perf_counter()
        self._lock.acquire()
        now = time.perf_counter()
        self._stages.add("wlock wait", now - t0)
        self._held.t = now
        return self

    def __exit__(self, *exc: object) -> None:
        self._stages.add("wlock held", time.perf_counter() - self._held.t)
        self._lock.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        t0 = time.perf_counter()
        got = bool(self._lock.acquire(blocking, timeout))
        now = time.perf_counter()
        self._stages.add("wlock wait" if got else "wlock try (busy)", now - t0)
        if got:
            self._held.t = now
        return got

    def release(self) -> None:
        self._stages.add("wlock held", time.perf_counter() - self._held.t)
        self._lock.release()


class _TimedPending:
    def __init__(self, wait: Callable[[], list[int]]) -> None:
        self.wait = wait


def instrument(eng: Engine, stages: Stages) -> None:
    from kvstore.engine import store as store_mod

    store_mod.prepare = stages.wrap("prepare+checksum", store_mod.prepare)  # type: ignore[assignment]
    lg = eng.log
    lg.complete = stages.wrap("complete (log-order wait)", lg.complete)  # type: ignore[method-assign]
    lg.wlock = TimedLock(lg.wlock, stages)  # type: ignore[assignment]
    eng.device.submit = stages.wrap("device.submit", eng.device.submit)  # type: ignore[method-assign]
    start = eng.device.start

    def timed_start(ops: Any) -> Any:
        t0 = time.perf_counter()
        pending = start(ops)
        stages.add("device.start", time.perf_counter() - t0)
        return _TimedPending(stages.wrap("device wait (Pending)", pending.wait))

    eng.device.start = timed_start  # type: ignore[method-assign]
    for name, label in (("_pack", "pack"), ("_build", "build (payload copy)"),
                        ("_reserve", "reserve (pipeline, under wlock)"),
                        ("_reserve_in", "reserve (combined, under wlock)"),
                        ("_publish_chunk", "publish")):
        setattr(batch_mod, name, stages.wrap(label, getattr(batch_mod, name)))
    fmt.checksum = stages.wrap("  of which checksum", fmt.checksum)  # type: ignore[assignment]
    from kvstore.engine import reclaim as reclaim_mod

    for name, label in (("roll", "segment roll (under wlock)"), ("seal", "  of which seal"),
                        ("_reclaim", "  of which reclaim"),
                        ("create_segment", "  of which create segment")):
        setattr(reclaim_mod, name, stages.wrap(label, getattr(reclaim_mod, name)))


def payloads(n: int, staged: bool) -> list[object]:
    from kvstore.engine.device import AlignedBuffer

    out: list[object] = []
    for i in range(n):
        data = bytes([i & 0xFF]) * 4096 * (BS // 4096)
        if staged:  # page-aligned caller memory: written in place, no copy
            buf = AlignedBuffer(BS)
            buf.view[:BS] = data
            out.append(StagedPayload(buf.view, BS))
        else:
            out.append(data)
    return out


def report(title: str, stages: Stages, wall: float, calls: int, threads: int,
           depth: dict[str, Any]) -> None:
    print(f"\n{title}: {calls} call(s), {wall * 1000 / calls:.2f} ms per call wall, "
          f"{calls * BS * (threads if threads else args.blocks) / wall / 1e9:.2f} GB/s")
    print(f"  device in flight: mean {depth['mean']:.1f}, mean while busy "
          f"{depth['mean_busy']:.1f}, peak {depth['peak']}, submits {depth['submits']} for "
          f"{depth['ops']} ops; device idle {max(0.0, 1 - depth['busy_fraction']) * 100:.0f}% "
          f"of the wall time")
    basis = wall * max(threads, 1)
    print(f"  {'stage':28s} {'ms/call':>9s} {'% of ' + ('thread time' if threads else 'wall'):>16s}"
          f" {'count/call':>10s}")
    for name, secs in sorted(stages.seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {secs * 1000 / calls:9.2f} {secs / basis * 100:15.0f}% "
              f"{stages.calls[name] / calls:10.1f}")


def depth_of(dev: Any) -> dict[str, Any]:
    t = dict(dev.depth_stats()["total"])
    t["busy_fraction"] = t["mean"] / t["mean_busy"] if t["mean_busy"] else 0.0
    return t


def main() -> int:
    global args, BS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=str(ROOT / "data" / "profile"))
    ap.add_argument("--blocks", type=int, default=32, help="records per put_many")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="also: single puts from N threads")
    ap.add_argument("--device", choices=("uring", "posix"), default="uring")
    ap.add_argument("--staged", action="store_true", help="StagedPayload (no payload copy)")
    ap.add_argument("--block-bytes", type=int, default=BS, help="payload bytes per put")
    ap.add_argument("--full", action="store_true",
                    help="fill a small store first: the timed puts go to recycled segment files")
    ap.add_argument("--wave-chunks", type=int, default=0,
                    help="override limits.write_wave_chunks_max for this run")
    args = ap.parse_args()
    BS = args.block_bytes
    if args.wave_chunks:
        limits.write_wave_chunks_max = args.wave_chunks
    d = Path(args.dir)
    shutil.rmtree(d, ignore_errors=True)
    dev = UringDevice() if args.device == "uring" else PosixDevice()
    total = (args.calls + 1) * args.blocks * BS + args.calls * max(args.threads, 1) * BS * 8
    seg = limits.segment_bytes_default
    cap = 4 * seg if args.full else (total * 2 // seg + 2) * seg
    cfg = EngineConfig(data_dir=str(d), capacity_bytes=cap, segment_bytes=seg, dram_bytes=0,
                       dram_on_put=False)
    eng = Engine.open(cfg, dev)
    eng.create_namespace("prof")
    if args.full:  # reach capacity (untimed): the timed puts reuse reclaimed segment files
        fill = bytes(BS)
        per = max(1, min(64, limits.batch_keys_max, 128 * limits.MiB // BS))
        for j in range(0, cap // BS, per):
            eng.put_many("prof", [(f"f{j + i}", fill) for i in range(per)])
    stages = Stages()
    instrument(eng, stages)
    data = payloads(args.blocks, args.staged)
    eng.put_many("prof", [(f"warm{i}", data[i]) for i in range(args.blocks)])  # segment, buffers
    print(f"limits: write_chunk_bytes_max {limits.write_chunk_bytes_max >> 20} MiB, "
          f"write_wave_chunks_max {limits.write_wave_chunks_max}; device {dev.name} "
          f"(batched SQEs: {getattr(dev, 'batched', None)}); payloads "
          f"{'staged (in place)' if args.staged else 'bytes (copied)'}")
    stages.reset()
    dev.reset_depth()
    t0 = time.perf_counter()
    for c in range(args.calls):
        res = eng.put_many("prof", [(f"c{c}-{i}", data[i]) for i in range(args.blocks)])
        assert all(r.created for r in res)
    wall = time.perf_counter() - t0
    report(f"put_many of {args.blocks} x {BS >> 10} KiB", stages, wall, args.calls, 0, depth_of(dev))
    if args.threads:
        stages.reset()
        dev.reset_depth()
        per = 8
        start = threading.Barrier(args.threads + 1)

        def work(tid: int) -> None:
            start.wait(timeout=60)
            for j in range(per):
                eng.put("prof", f"t{tid}-{j}", data[(tid + j) % len(data)])

        ts = [threading.Thread(target=work, args=(t,)) for t in range(args.threads)]
        for t in ts:
            t.start()
        start.wait(timeout=60)
        t0 = time.perf_counter()
        for t in ts:
            t.join(timeout=600)
        wall = time.perf_counter() - t0
        report(f"{args.threads} threads x {per} single puts of {BS >> 10} KiB", stages, wall / per * per,
               per, args.threads, depth_of(dev))
    eng.close()
    dev.close()
    shutil.rmtree(d, ignore_errors=True)
    return 0


args: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
