"""What one timed pass of bench_engine records, and how trials are summarized.

A pass is timed with wall clock and process CPU time, brackets /proc/diskstats of the bench
disk (so every row, fio's included, shows the block layer's view: ``aqu`` is the time-weighted
mean of requests in the disk queue, iostat's aqu-sz, and ``reqs_per_op`` how many requests one
2 MiB op became), and, for our own devices, resets and reads the device's DepthGauge (the ops
really in flight at the ring or the POSIX threads, mean and peak over the pass).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


def diskstats(disk: str) -> tuple[int, int, int] | None:
    """(reads completed, writes completed, weighted ms in queue) of ``disk``, or None."""
    try:
        with open("/proc/diskstats") as f:
            for ln in f:
                p = ln.split()
                if len(p) > 13 and p[2] == disk:
                    return int(p[3]), int(p[7]), int(p[13])
    except OSError:
        pass
    return None


@dataclass
class Sample:
    gbps: float
    cpu_cores: float  # process CPU seconds per wall second during the pass
    depth_mean: float | None = None  # device gauge: time-weighted mean in flight
    depth_peak: int | None = None
    aqu: float | None = None  # block layer: time-weighted mean requests in the disk queue
    reqs_per_op: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def timed(fn: Callable[[], object], nbytes: int, *, disk: str, write: bool, ops: int,
          dev: Any = None) -> Sample:
    """Run ``fn`` (moving ``nbytes`` in ``ops`` ops) and record a Sample."""
    if dev is not None and hasattr(dev, "reset_depth"):
        dev.reset_depth()
    d0 = diskstats(disk)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-9)
    cpu = time.process_time() - c0
    d1 = diskstats(disk)
    s = Sample(nbytes / dt / 1e9, cpu / dt)
    if dev is not None and hasattr(dev, "depth_stats"):
        total = dev.depth_stats()["total"]
        s.depth_mean, s.depth_peak = float(total["mean"]), int(total["peak"])
    if d0 is not None and d1 is not None:
        s.aqu = (d1[2] - d0[2]) / (dt * 1000)
        s.reqs_per_op = ((d1[1] - d0[1]) if write else (d1[0] - d0[0])) / max(ops, 1)
    return s


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Medians (and min, max of the bandwidth) over trials."""
    def med(name: str) -> float | None:
        vals = [getattr(s, name) for s in samples if getattr(s, name) is not None]
        return statistics.median(vals) if vals else None

    bw = [s.gbps for s in samples]
    out: dict[str, Any] = {"gbps": statistics.median(bw), "gbps_min": min(bw),
                           "gbps_max": max(bw), "trials": len(samples)}
    for name in ("cpu_cores", "depth_mean", "aqu", "reqs_per_op"):
        out[name] = med(name)
    peaks = [s.depth_peak for s in samples if s.depth_peak is not None]
    out["depth_peak"] = max(peaks) if peaks else None
    per = [s.cpu_cores / s.gbps for s in samples if s.gbps > 0]
    out["cores_per_gbps"] = statistics.median(per) if per else None
    return out
