"""The engine's passes for bench_engine: puts and gets from ``depth`` threads, batched puts,
staged puts (payloads already in page-aligned memory, as the bulk port and S3 hand them),
puts into a full store, and the index memory / reopen test. Each timed pass is a ``Sample``
(bench_measure) with the engine device's in-flight depth over that pass."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_measure import Sample, timed

from kvstore import limits

BS = 2 * limits.MiB
RUN_SECONDS_MAX = 600.0  # one pass of any kind gives up after this long


def threaded(depth: int, work: Callable[[int], None]) -> None:
    """Run ``work(tid)`` on ``depth`` threads from a common start; re-raise the first error."""
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
    for t in ts:
        t.join(timeout=RUN_SECONDS_MAX)
    if errors:
        raise errors[0]


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


def engine_pass(api: tuple[type, type], make_dev: Callable[[], Any], data_dir: Path,
                depth: int, size: int, disk: str) -> dict[str, Sample]:
    Engine, Cfg = api
    shutil.rmtree(data_dir, ignore_errors=True)
    dev = make_dev()
    eng = Engine.open(engine_config(Cfg, data_dir, 3 * size), dev)  # no pass reclaims
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

    out: dict[str, Sample] = {}
    for name, fn, write in (("write", put, True), ("read", get, False)):
        out[name] = timed(lambda fn=fn: threaded(depth, fn), size, disk=disk, write=write,
                          ops=n, dev=dev)
    if hasattr(eng, "put_many"):  # batched puts: ``depth`` records per call, one thread
        keys = [f"b{i:08d}" for i in range(n)]

        def batches() -> None:
            for j in range(0, n, depth):
                res = eng.put_many("bench", [(k, payload) for k in keys[j : j + depth]])
                if not all(r.created for r in res):
                    raise RuntimeError("put_many did not create every block")

        out["batch_write"] = timed(batches, size, disk=disk, write=True, ops=n, dev=dev)
    staged = staged_payloads(depth, payload)
    if staged:  # the engine writes these in place: no copy into a record buffer

        def put_staged(tid: int) -> None:
            for i in range(tid, n, depth):
                eng.put("bench", f"s{i:08d}", staged[tid][1])

        out["staged_write"] = timed(lambda: threaded(depth, put_staged), size, disk=disk,
                                    write=True, ops=n, dev=dev)
        for buf, _ in staged:
            buf.close()
    hits_dram = eng.stats().get("hits_dram", 0)
    if hits_dram:
        print(f"warning: {hits_dram} gets hit DRAM although dram_bytes=0", file=sys.stderr)
    eng.close()
    dev.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    out["full_write"] = full_store_write(api, make_dev, data_dir, depth, size, payload, disk)
    return out


def staged_payloads(depth: int, payload: bytes) -> list[tuple[Any, Any]]:
    """One page-aligned copy of ``payload`` per thread, as ``StagedPayload``s (empty when the
    engine has none): what the bulk port and S3 pass the engine after receiving a body."""
    try:
        from kvstore.engine.device import AlignedBuffer, StagedPayload, align_up
    except ImportError:
        return []
    out = []
    for _ in range(depth):
        buf = AlignedBuffer(len(payload))
        buf.view[: len(payload)] = payload
        out.append((buf, StagedPayload(buf.view[: align_up(len(payload))], len(payload))))
    return out


def full_store_write(api: tuple[type, type], make_dev: Callable[[], Any], data_dir: Path,
                     depth: int, size: int, payload: bytes, disk: str) -> Sample:
    """Puts into a store already at capacity: the steady state of a cache. Each new segment
    then reuses a reclaimed segment's file (overwrites, no block allocation)."""
    Engine, Cfg = api
    seg = limits.segment_bytes_default
    cap = max(4, size // seg) * seg
    cfg = Cfg(data_dir=str(data_dir), capacity_bytes=cap, segment_bytes=seg, dram_bytes=0,
              dram_on_put=False)
    dev = make_dev()
    eng = Engine.open(cfg, dev)
    eng.create_namespace("bench")
    n = size // BS
    fill = [(f"f{i:08d}", payload) for i in range(cap // BS)]
    for j in range(0, len(fill), 64):  # reach capacity (untimed)
        eng.put_many("bench", fill[j : j + 64])

    def put(tid: int) -> None:
        for i in range(tid, n, depth):
            eng.put("bench", f"k{i:08d}", payload)

    s = timed(lambda: threaded(depth, put), size, disk=disk, write=True, ops=n, dev=dev)
    st = eng.stats()
    eng.close()
    dev.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    if not st.get("recycled_segments"):
        print("warning: the full-store pass recycled no segment file", file=sys.stderr)
    return s


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


def index_and_reopen(api: tuple[type, type], make_dev: Callable[[], Any], data_dir: Path,
                     blocks: int) -> dict[str, object]:
    Engine, Cfg = api
    shutil.rmtree(data_dir, ignore_errors=True)
    cfg = engine_config(Cfg, data_dir, blocks * 2 * limits.io_alignment_bytes)
    eng = Engine.open(cfg, make_dev())
    eng.create_namespace("bench")
    rss0 = rss_bytes()
    threads = 4

    def fill(tid: int) -> None:  # batched puts: tiny blocks are bound by per-I/O latency
        mine = range(tid, blocks, threads)
        for j in range(0, len(mine), 1024):
            eng.put_many("bench", [(f"k{i:08d}", b"x") for i in mine[j : j + 1024]])

    t0 = time.perf_counter()
    threaded(threads, fill)
    fill_s = time.perf_counter() - t0
    rss1 = rss_bytes()
    idx = index_bytes(eng)
    count = eng.count("bench")
    eng.close()
    eng.device.close()
    t0 = time.perf_counter()
    eng = Engine.open(cfg, make_dev())
    reopen_s = time.perf_counter() - t0
    recount = eng.count("bench")
    step = blocks // 100 or 1
    sample_ok = all(eng.get("bench", f"k{i:08d}") == b"x" for i in range(0, blocks, step))
    rss2 = rss_bytes()
    eng.close()
    eng.device.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"blocks": blocks, "count_after_fill": count, "count_after_reopen": recount,
            "sample_reads_ok": sample_ok, "fill_seconds": round(fill_s, 2),
            "puts_per_second": round(blocks / fill_s),
            "index_bytes_per_block": None if idx is None else round(idx / blocks, 1),
            "rss_delta_bytes_per_block": round((rss1 - rss0) / blocks, 1),
            "rss_after_reopen_mib": round(rss2 / 2**20, 1),
            "reopen_seconds": round(reopen_s, 3)}
