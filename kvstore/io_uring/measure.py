"""Measure a device on the data directory's disk: what auto-selection decides on.

Each device writes then reads ``limits.device_probe_bytes`` of 2 MiB ops in one batch (so each
runs at the depth the engine's batches get from it: a ring keeps them all in flight, the POSIX
device spreads them over its threads), on a preallocated scratch file in ``probe_dir`` that is
removed afterwards. ``compare`` runs the devices in turns, twice in alternating order, and keeps
each one's best round, so a disk that warms up or a neighbour's burst does not decide alone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvstore import limits
from kvstore.engine.device import AlignedBuffer, Device, IoOp
from kvstore.errors import StorageError

OP_BYTES = 2 * limits.MiB
ROUNDS = 2


@dataclass(frozen=True, slots=True)
class Measurement:
    kind: str
    write_gbps: float
    read_gbps: float
    cpu_seconds_per_gb: float  # process CPU time per GB moved (both directions)

    @property
    def gbps(self) -> float:
        """Bandwidth over the write and the read pass together (bytes / total time)."""
        if self.write_gbps <= 0 or self.read_gbps <= 0:
            return 0.0
        return 2 / (1 / self.write_gbps + 1 / self.read_gbps)

    def describe(self) -> str:
        return (f"{self.kind} {self.gbps:.2f} GB/s (write {self.write_gbps:.2f}, read "
                f"{self.read_gbps:.2f}), {self.cpu_seconds_per_gb:.2f} CPU s/GB")


def measure_once(dev: Device, path: str, nbytes: int, bufs: list[AlignedBuffer]) -> Measurement:
    """One write pass then one read pass of ``nbytes`` through ``dev`` on ``path``."""
    n = max(1, nbytes // OP_BYTES)
    h = dev.open(path)
    try:
        dev.allocate(h, n * OP_BYTES)
        cpu0 = time.process_time()
        secs = []
        for write in (True, False):
            ops = [IoOp(h, i * OP_BYTES, bufs[i % len(bufs)].view[:OP_BYTES], write=write)
                   for i in range(n)]
            t0 = time.perf_counter()
            res = dev.submit(ops)
            secs.append(max(time.perf_counter() - t0, 1e-9))
            if res != [OP_BYTES] * n:
                bad = next(r for r in res if r != OP_BYTES)
                raise StorageError(f"{dev.name}: probe {'write' if write else 'read'} "
                                   f"returned {bad}")
        cpu = time.process_time() - cpu0
    finally:
        dev.close_handle(h)
    moved = n * OP_BYTES / 1e9
    return Measurement(dev.name, moved / secs[0], moved / secs[1], cpu / (2 * moved))


def compare(makers: dict[str, Callable[[], Device]], probe_dir: str | None,
            nbytes: int = limits.device_probe_bytes, depth: int = limits.device_probe_depth,
            ) -> tuple[dict[str, Measurement], dict[str, str]]:
    """The best of ``ROUNDS`` rounds per device kind, the order alternating between rounds,
    and the kinds that failed (kind -> why; they are not measured again)."""
    if probe_dir is not None:
        os.makedirs(probe_dir, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=".device-probe-", dir=probe_dir)
    os.close(fd)
    bufs = [AlignedBuffer(OP_BYTES) for _ in range(depth)]
    for i, b in enumerate(bufs):
        b.view[:OP_BYTES] = bytes([i + 1]) * OP_BYTES
    best: dict[str, Measurement] = {}
    failed: dict[str, str] = {}
    try:
        kinds = list(makers)
        for r in range(ROUNDS):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                if kind in failed:
                    continue
                try:
                    dev = makers[kind]()
                    try:
                        m = measure_once(dev, path, nbytes, bufs)
                    finally:
                        dev.close()
                except (StorageError, OSError) as e:
                    failed[kind] = str(e)
                    best.pop(kind, None)
                    continue
                if kind not in best or m.gbps > best[kind].gbps:
                    best[kind] = m
    finally:
        for b in bufs:
            b.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    return best, failed


def pick(results: dict[str, Measurement],
         margin: float = limits.device_choice_margin_fraction) -> tuple[str, str]:
    """The kind to use and why: the fastest, unless another is within ``margin`` of it and
    spends less CPU per byte."""
    ranked = sorted(results.values(), key=lambda m: m.gbps, reverse=True)
    top = ranked[0]
    ties = [m for m in ranked if m.gbps >= top.gbps * (1 - margin)]
    if len(ties) == 1:
        return top.kind, f"faster by more than {margin:.0%}"
    frugal = min(ties, key=lambda m: m.cpu_seconds_per_gb)
    return frugal.kind, (f"bandwidths within {margin:.0%} of each other: the one with the "
                         "least CPU per byte")
