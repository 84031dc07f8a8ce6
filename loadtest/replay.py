"""Replay a Mooncake-format trace against a store, as an engine with a context tier would.

    python loadtest/replay.py --trace agentic.jsonl --target kvstore --block-bytes 64KiB \\
        [--capacity 1GiB] [--speed 10 | --as-fast-as-possible] [--requests N] [--json OUT]

For each request in timestamp order: one ``lookup`` of its chain (the longest stored prefix),
a GET of that prefix with every byte verified, then a PUT of the blocks it missed (what an
engine does after prefill). ``--concurrency`` requests run at once (threads); with ``--speed``
requests start no sooner than their timestamp divided by the speed.

Block ``h`` holds bytes derived from ``h`` alone, so any store's answer can be checked: a block
that comes back different is a *wrong byte* and is counted (it must be 0). A block the lookup
promised that the GET does not return is a *lost hit* (a store without leases can evict in
between); the hit counted is what was really served.

``--block-bytes`` scales blocks down so a trace fits this machine; the TTFT/TPS model (see
``model.py``) always uses the real layout's block size, at the bandwidth and latency measured
here. The JSON summary holds ``requests``, ``blocks_requested``, ``blocks_hit``, ``hit_ratio``
(``blocks_hit / blocks_requested``), the offline hit ratio of the same trace (unlimited
capacity) and, with ``--capacity``, an offline LRU's, bytes moved, latency percentiles, and the
model's figures for each layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import model  # noqa: E402
import targets  # noqa: E402
import traces  # noqa: E402
from tqdm import tqdm  # noqa: E402

INFLIGHT_MAX = 256
BATCH_BLOCKS_MAX = 256  # blocks per get/put call (the SDK's batch bound is larger)


def key_of(h: int) -> str:
    return f"{h:032x}"


def block_value(h: int, size: int) -> bytes:
    seed = hashlib.blake2b(h.to_bytes(8, "little"), digest_size=32).digest()
    reps = -(-size // len(seed))
    return (seed * reps)[:size]


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    blocks_requested: int = 0
    blocks_promised: int = 0
    blocks_hit: int = 0
    lost_hits: int = 0
    wrong_bytes: int = 0
    blocks_put: int = 0
    bytes_got: int = 0
    bytes_put: int = 0
    get_seconds: float = 0.0
    put_seconds: float = 0.0
    lookup_ms: list[float] = field(default_factory=list)
    get_ms: list[float] = field(default_factory=list)
    request_ms: list[float] = field(default_factory=list)
    per_request: list[tuple[int, int, int, int]] = field(default_factory=list)


def run_one(t: targets.Target, r: traces.Request, index: int, block_bytes: int,
            tally: Tally) -> None:
    keys = [key_of(h) for h in r.hash_ids]
    t0 = time.perf_counter()
    promised = t.lookup(keys) if keys else 0
    t1 = time.perf_counter()
    hit = 0
    for chunk_start in range(0, promised, BATCH_BLOCKS_MAX):
        chunk = keys[chunk_start:min(promised, chunk_start + BATCH_BLOCKS_MAX)]
        got = t.get_many(chunk)
        ok = 0
        for j, v in enumerate(got):
            if v is None:
                break
            if v != block_value(r.hash_ids[chunk_start + j], block_bytes):
                with tally.lock:
                    tally.wrong_bytes += 1
                break
            ok += 1
        hit += ok
        if ok < len(chunk):
            break
    t2 = time.perf_counter()
    missing = r.hash_ids[hit:]
    for i in range(0, len(missing), BATCH_BLOCKS_MAX):
        part = missing[i:i + BATCH_BLOCKS_MAX]
        t.put_many([key_of(h) for h in part], [block_value(h, block_bytes) for h in part])
    t3 = time.perf_counter()
    with tally.lock:
        tally.requests += 1
        tally.blocks_requested += len(keys)
        tally.blocks_promised += promised
        tally.blocks_hit += hit
        tally.lost_hits += promised - hit
        tally.blocks_put += len(missing)
        tally.bytes_got += hit * block_bytes
        tally.bytes_put += len(missing) * block_bytes
        tally.get_seconds += t2 - t1
        tally.put_seconds += t3 - t2
        tally.lookup_ms.append((t1 - t0) * 1e3)
        if promised:
            tally.get_ms.append((t2 - t1) * 1e3)
        tally.request_ms.append((t3 - t0) * 1e3)
        tally.per_request.append((index, r.input_length, r.output_length, hit))


def pct(xs: Sequence[float], q: float) -> float:
    return round(model.percentile(list(xs), q), 3)


def replay(t: targets.Target, reqs: Sequence[traces.Request], block_bytes: int,
           concurrency: int, speed: float | None, progress: bool = True) -> tuple[Tally, float]:
    tally = Tally()
    start = time.perf_counter()
    base = reqs[0].timestamp_ms if reqs else 0
    bar = tqdm(total=len(reqs), unit="req", disable=not progress, desc=t.name)
    gate = threading.BoundedSemaphore(min(INFLIGHT_MAX, max(1, concurrency) * 2))

    def done(_: object) -> None:
        gate.release()
        bar.update(1)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = []
        for i, r in enumerate(reqs):
            if speed:
                wait = (r.timestamp_ms - base) / 1000.0 / speed - (time.perf_counter() - start)
                if wait > 0:
                    time.sleep(wait)
            gate.acquire()
            f = pool.submit(run_one, t, r, i, block_bytes, tally)
            f.add_done_callback(done)
            futures.append(f)
        for f in futures:
            f.result()  # re-raise the first failure
    bar.close()
    return tally, time.perf_counter() - start


def summarize(tally: Tally, wall: float, reqs: Sequence[traces.Request], block_bytes: int,
              capacity_bytes: int | None, target: str) -> dict[str, Any]:
    offline = traces.offline_hits(reqs)
    out: dict[str, Any] = {
        "target": target, "requests": tally.requests, "blocks_requested": tally.blocks_requested,
        "blocks_hit": tally.blocks_hit,
        "hit_ratio": tally.blocks_hit / tally.blocks_requested if tally.blocks_requested else 0,
        "blocks_promised": tally.blocks_promised, "lost_hits": tally.lost_hits,
        "wrong_bytes": tally.wrong_bytes, "blocks_put": tally.blocks_put,
        "block_bytes": block_bytes, "bytes_got": tally.bytes_got, "bytes_put": tally.bytes_put,
        "wall_seconds": round(wall, 3),
        "get_gb_s": tally.bytes_got / tally.get_seconds / 1e9 if tally.get_seconds else 0.0,
        "put_gb_s": tally.bytes_put / tally.put_seconds / 1e9 if tally.put_seconds else 0.0,
        "lookup_ms": {"p50": pct(tally.lookup_ms, 50), "p99": pct(tally.lookup_ms, 99)},
        "get_ms": {"p50": pct(tally.get_ms, 50), "p99": pct(tally.get_ms, 99)},
        "request_ms": {"p50": pct(tally.request_ms, 50), "p99": pct(tally.request_ms, 99)},
        "offline_hit_ratio": offline.hit_ratio, "unique_blocks": offline.unique_blocks,
    }
    if capacity_bytes is not None:
        lru = traces.lru_hits(reqs, capacity_bytes // block_bytes)
        out["offline_lru_hit_ratio"] = lru.hit_ratio
        out["capacity_blocks"] = capacity_bytes // block_bytes
    out["model"] = model_figures(tally, out)
    # raw series for the plots (report.py): per request in trace order
    order = sorted(range(len(tally.per_request)), key=lambda i: tally.per_request[i][0])
    out["series"] = {
        "hit_blocks": [tally.per_request[i][3] for i in order],
        "chain_blocks": [len(reqs[tally.per_request[i][0]].hash_ids) for i in order],
        "input_tokens": [tally.per_request[i][1] for i in order],
        "output_tokens": [tally.per_request[i][2] for i in order],
        "request_ms": [round(tally.request_ms[i], 3) for i in order],
        "lookup_ms": [round(tally.lookup_ms[i], 3) for i in order],
    }
    return out


def model_figures(tally: Tally, out: dict[str, Any]) -> dict[str, Any]:
    """The TTFT/TPS model at the bandwidth and latency measured in this run."""
    bw = out["get_gb_s"] * 1e9 or 1e9
    latency = (out["lookup_ms"]["p50"] + out["get_ms"]["p50"]) / 1e3
    store = model.Store(bandwidth_bytes_per_s=bw, latency_s=latency)
    hits = [model.RequestHits(inp, outp, hit)
            for _, inp, outp, hit in sorted(tally.per_request)]
    gpu = model.Gpu()
    return {name: {k: v for k, v in model.summary(layout, gpu, store, hits).items()
                   if k != "assumptions"} | {"store_gb_s": bw / 1e9, "store_latency_s": latency}
            for name, layout in model.LAYOUTS.items()} | {
        "assumptions": {"gpu": dataclasses.asdict(gpu),
                        "store_bandwidth_gb_s": bw / 1e9, "store_latency_s": latency,
                        "note": "store figures measured at --block-bytes; see model.py"}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", required=True, type=Path)
    ap.add_argument("--target", default="kvstore", choices=sorted(targets.TARGETS))
    ap.add_argument("--block-bytes", default="64KiB", help="bytes per block (default 64KiB)")
    ap.add_argument("--layout", choices=sorted(model.LAYOUTS),
                    help="use this layout's real block size (512 tokens) instead")
    ap.add_argument("--capacity", default=None,
                    help="store capacity, e.g. 1GiB (default: 2x the trace's working set)")
    speed = ap.add_mutually_exclusive_group()
    speed.add_argument("--speed", type=float, default=None, help="timestamps divided by X")
    speed.add_argument("--as-fast-as-possible", action="store_true", help="ignore timestamps")
    ap.add_argument("--requests", type=int, default=None, help="replay the first N requests")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    reqs = traces.read(a.trace, a.requests)
    if a.layout:
        block_bytes = model.LAYOUTS[a.layout].block_bytes()
    else:
        block_bytes = targets.parse_size(a.block_bytes)
    working = traces.offline_hits(reqs).unique_blocks * block_bytes
    capacity = a.capacity or f"{max(64 * 2**20, 2 * working)}"
    t = targets.start(a.target, capacity, a.concurrency)
    try:
        tally, wall = replay(t, reqs, block_bytes, a.concurrency,
                             None if a.as_fast_as_possible else a.speed,
                             progress=not a.no_progress)
    finally:
        t.close()
    summary = summarize(tally, wall, reqs, block_bytes,
                        targets.parse_size(a.capacity) if a.capacity else None, a.target)
    summary["settings"] = {"trace": str(a.trace), "concurrency": a.concurrency,
                           "speed": a.speed, "capacity": capacity}
    short = {k: summary[k] for k in ("target", "requests", "blocks_requested", "blocks_hit",
                                     "hit_ratio", "offline_hit_ratio", "lost_hits",
                                     "wrong_bytes", "get_gb_s", "lookup_ms", "get_ms")}
    print(json.dumps(short, indent=1))
    if a.json:
        a.json.write_text(json.dumps(summary, indent=1))
    return 1 if tally.wrong_bytes else 0


if __name__ == "__main__":
    sys.exit(main())
