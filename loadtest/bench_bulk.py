"""Bulk data plane vs its ceilings, side by side in one run (a script, not a test).

(a) bare uvloop BufferedProtocol server + blocking recv_into client moving 2 MiB messages;
(b) kvstore bulk GET of 2 MiB blocks from the DRAM tier; (c) the same from flash (DRAM off);
(d) bulk PUT to flash; (e) Redis (Debian redis-server, persistence off) GET/SET via redis-py
with hiredis; (f) the shared-memory transport, GET from the DRAM tier; plus fio O_DIRECT read and
write at the same block size and depth for (c) and (d). Every server runs in its own process so
client and server do not share a GIL. Prints ratios and writes loadtest/results/bulk-*.{json,md}.

    .venv/bin/python loadtest/bench_bulk.py [--blocks 128] [--seconds 3] [--depth 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_engine import fio, git_commit, machine  # noqa: E402

from kvstore import limits  # noqa: E402

BS = 2 * limits.MiB
NS = "bench-bulk"


# --- servers (child processes) -----------------------------------------------------------

def _bare_server(q: Any, distinct: int) -> None:
    """Answers each 16-byte request with one 2 MiB message. ``distinct`` > 1 cycles through that
    many different payloads, so the working set matches a kvstore GET of as many blocks (one
    hot payload measures cache bandwidth, not what moving 256 MiB of blocks costs)."""
    import itertools

    import uvloop

    unit = os.urandom(4096) * (BS // 4096)
    payloads = itertools.cycle([memoryview(bytearray(unit)) for _ in range(max(1, distinct))])

    class P(asyncio.BufferedProtocol):
        def connection_made(self, tr: Any) -> None:
            self.tr = tr
            self.buf = bytearray(65536)
            self.pending = 0

        def get_buffer(self, n: int) -> memoryview:
            return memoryview(self.buf)

        def buffer_updated(self, n: int) -> None:
            self.pending += n
            while self.pending >= 16:  # each 16-byte request asks for one message
                self.pending -= 16
                self.tr.writelines([b"%016d" % BS, next(payloads)])

    async def main() -> None:
        srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0)
        q.put(srv.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    uvloop.run(main())


def _kv_server(q: Any, data_dir: str, dram_bytes: int, capacity: int, device: str) -> None:
    import uvloop

    from kvstore.auth import Tenants
    from kvstore.engine.store import Engine
    from kvstore.engine.types import EngineConfig
    from kvstore.io_uring.select import open_device
    from kvstore.service import Node
    from kvstore.service.runner import EngineRunner
    from kvstore.transport.bulk_server import start_bulk_server

    async def main() -> None:
        cfg = EngineConfig(data_dir=data_dir, capacity_bytes=capacity,
                           segment_bytes=256 * limits.MiB, dram_bytes=dram_bytes)
        engine = Engine.open(cfg, open_device(device, probe_dir=data_dir))
        srv = await start_bulk_server(Node(engine, EngineRunner(), Tenants.development()),
                                      "127.0.0.1", 0)
        q.put((srv.port, engine.device_name))
        await asyncio.Event().wait()

    uvloop.run(main())


class Child:
    def __init__(self, target: Any, *args: Any) -> None:
        ctx = mp.get_context("spawn")
        self.q = ctx.Queue()
        self.p = ctx.Process(target=target, args=(self.q, *args), daemon=True)
        self.p.start()
        self.info = self.q.get(timeout=60)

    def stop(self) -> None:
        self.p.terminate()
        self.p.join(10)


# --- clients ---------------------------------------------------------------------------------

def timed(fn: Any, nbytes: int, seconds: float, rounds_max: int = 1000) -> float:
    """Repeat fn() (moving nbytes each) for about ``seconds``; GB/s (10^9 bytes/s)."""
    fn()  # warm-up (connections, page faults of client buffers)
    t0, n = time.perf_counter(), 0
    while n < rounds_max and (n == 0 or time.perf_counter() - t0 < seconds):
        fn()
        n += 1
    return n * nbytes / (time.perf_counter() - t0) / 1e9


def bench_bare(port: int, count: int, depth: int, seconds: float, distinct: bool) -> float:
    """Receive ``count`` messages per pass, into one buffer or into ``count`` distinct ones."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bufs = [memoryview(bytearray(BS + 16)) for _ in range(count if distinct else 1)]

    def one_pass() -> None:
        sent = 0
        for _ in range(min(depth, count)):
            s.sendall(b"x" * 16)
            sent += 1
        for i in range(count):
            buf = bufs[i % len(bufs)]
            got = 0
            while got < BS + 16:
                got += s.recv_into(buf[got:])
            if sent < count:
                s.sendall(b"x" * 16)
                sent += 1

    r = timed(one_pass, count * BS, seconds)
    s.close()
    return r


def bench_kv_get(port: int, keys: list[str], bufs: list[bytearray], seconds: float) -> float:
    from kvstore_client import Client

    with Client(port=port, namespace=NS, timeout=120) as c:
        def one_pass() -> None:
            got = c.get_many_into(keys, bufs)
            assert all(g == BS for g in got), "bulk GET missed blocks"

        return timed(one_pass, len(keys) * BS, seconds)


def fill(port: int, keys: list[str], value: bytes) -> float:
    from kvstore_client import Client

    with Client(port=port, namespace=NS, create=True, timeout=120) as c:
        t0 = time.perf_counter()
        c.put_many(keys, [value] * len(keys))
        return len(keys) * BS / (time.perf_counter() - t0) / 1e9


def bench_kv_put(port: int, n: int, value: bytes, seconds: float) -> float:
    """PUT passes of ``n`` new blocks each (a put of an existing key writes nothing)."""
    from kvstore_client import Client

    passes = iter(range(1_000_000))
    with Client(port=port, namespace=NS, timeout=120) as c:
        def one_pass() -> None:
            p = next(passes)
            res = c.put_many([f"put{p:06d}-{i:06d}" for i in range(n)], [value] * n)
            assert all(res), "bulk PUT did not store every block"

        return timed(one_pass, n * BS, seconds)


def bench_shm(port: int, keys: list[str], seconds: float) -> float:
    from kvstore_client.shm import ShmClient

    with ShmClient(port=port, namespace=NS, size=len(keys) * BS, timeout=120) as c:
        offs = [i * BS for i in range(len(keys))]
        caps = [BS] * len(keys)

        def one_pass() -> None:
            assert all(g == BS for g in c.get_many(keys, offs, caps)), "shm GET missed blocks"

        return timed(one_pass, len(keys) * BS, seconds)


def bench_redis(keys: list[str], value: bytes, seconds: float) -> dict[str, float] | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--save", "", "--appendonly", "no", "--port", str(port),
                             "--bind", "127.0.0.1", "--maxmemory", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        t0 = time.perf_counter()
        for k in keys:
            r.set(k, value)
        set_gbs = len(keys) * BS / (time.perf_counter() - t0) / 1e9

        def one_pass() -> None:
            for k in keys:
                assert len(r.get(k)) == BS

        return {"get": timed(one_pass, len(keys) * BS, seconds), "set": set_gbs}
    finally:
        proc.terminate()
        proc.wait(10)


# --- main ------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=128, help="2 MiB blocks per pass")
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--depth", type=int, default=8, help="messages in flight for (a) and fio")
    ap.add_argument("--dir", default=None, help="scratch dir on the disk under test")
    ap.add_argument("--device", default="auto", help="kvstore device: auto|uring|posix")
    ap.add_argument("--out", default=str(ROOT / "loadtest" / "results"))
    args = ap.parse_args()
    n, secs = max(8, min(args.blocks, 1024)), max(0.5, min(args.seconds, 60.0))
    base = Path(args.dir) if args.dir else ROOT / "data" / "bench"  # same disk as the repo
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-bulk-", dir=str(base)))
    keys = [f"{i:032x}" for i in range(n)]
    value = os.urandom(4096) * (BS // 4096)
    bufs = [bytearray(BS) for _ in keys]
    res: dict[str, Any] = {}
    try:
        bare = Child(_bare_server, 1)
        res["a_bare_uvloop_one_buffer"] = bench_bare(bare.info, n, args.depth, secs, False)
        bare.stop()
        bare = Child(_bare_server, n)
        res["a_bare_uvloop"] = bench_bare(bare.info, n, args.depth, secs, True)
        bare.stop()
        print(f"(a) bare uvloop 2 MiB messages: {res['a_bare_uvloop']:.2f} GB/s over {n} distinct "
              f"buffers each side (the working set of (b)); "
              f"{res['a_bare_uvloop_one_buffer']:.2f} GB/s reusing one hot buffer", flush=True)

        cap = max(4 * limits.GiB, 4 * n * BS)
        dram = Child(_kv_server, str(work / "dram"), 2 * n * BS, cap, args.device)
        res["device"] = dram.info[1]
        fill(dram.info[0], keys, value)
        res["b_bulk_get_dram"] = bench_kv_get(dram.info[0], keys, bufs, secs)
        print(f"(b) bulk GET, DRAM tier: {res['b_bulk_get_dram']:.2f} GB/s", flush=True)
        res["f_shm_get_dram"] = bench_shm(dram.info[0], keys, secs)
        print(f"(f) shm GET, DRAM tier: {res['f_shm_get_dram']:.2f} GB/s", flush=True)
        dram.stop()

        flash = Child(_kv_server, str(work / "flash"), 0, cap, args.device)
        res["d_bulk_put_flash_first_pass"] = fill(flash.info[0], keys, value)
        res["c_bulk_get_flash"] = bench_kv_get(flash.info[0], keys, bufs, secs)
        print(f"(c) bulk GET, flash: {res['c_bulk_get_flash']:.2f} GB/s", flush=True)
        res["d_bulk_put_flash"] = bench_kv_put(flash.info[0], n, value, secs)
        print(f"(d) bulk PUT to flash: {res['d_bulk_put_flash']:.2f} GB/s (new keys each pass, "
              f"after a warm-up pass); first pass into a cold server: "
              f"{res['d_bulk_put_flash_first_pass']:.2f} GB/s", flush=True)
        flash.stop()

        red = bench_redis(keys, value, secs)
        if red is not None:
            res["e_redis_get"], res["e_redis_set"] = red["get"], red["set"]
            print(f"(e) redis GET / SET: {red['get']:.2f} / {red['set']:.2f} GB/s", flush=True)

        if shutil.which("fio"):
            size = n * BS
            disk = str(machine(work)["disk"])
            res["fio_write"] = fio(work / "fio.dat", "write", args.depth, size, disk).gbps
            res["fio_read"] = fio(work / "fio.dat", "read", args.depth, size, disk).gbps
            print(f"fio O_DIRECT QD{args.depth} read / write: {res['fio_read']:.2f} / "
                  f"{res['fio_write']:.2f} GB/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ratio(a: str, b: str | float) -> float | None:
        den = res.get(b) if isinstance(b, str) else b
        return round(res[a] / den, 3) if res.get(a) and den else None

    ratios = {
        "b_over_a": ratio("b_bulk_get_dram", "a_bare_uvloop"),
        "b_over_a_one_buffer": ratio("b_bulk_get_dram", "a_bare_uvloop_one_buffer"),
        "b_over_e": ratio("b_bulk_get_dram", "e_redis_get"),
        "c_over_fio_read": ratio("c_bulk_get_flash", "fio_read"),
        "d_over_a": ratio("d_bulk_put_flash", "a_bare_uvloop"),
        "d_over_min_fio_write_a": ratio("d_bulk_put_flash", min(
            res.get("fio_write") or 1e9, res["a_bare_uvloop"])),
        "f_over_b": ratio("f_shm_get_dram", "b_bulk_get_dram"),
    }
    targets = {"b_over_a": 0.9, "b_over_e": 2.0, "c_over_fio_read": 0.85,
               "d_over_min_fio_write_a": 0.8, "f_over_b": 2.0}
    for k, v in ratios.items():
        t = targets.get(k)
        mark = "" if t is None or v is None else (" ok" if v >= t else f" MISS (target {t})")
        print(f"{k}: {v}{mark}")
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
              "machine": machine(base),
              "settings": {"block_bytes": BS, "blocks": n, "seconds": secs, "depth": args.depth,
                           "device": res.get("device"), "client": "kvstore_client.Client",
                           "get_batch_keys": 16},
              "gbps": {k: round(v, 3) for k, v in res.items() if isinstance(v, float)},
              "ratios": ratios, "targets": targets}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bulk-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Bulk data plane ({report['when']}, commit {report['commit']})", "",
             f"{n} blocks of 2 MiB, {secs}s per measurement, depth {args.depth}, device "
             f"{res.get('device')}. GB/s = 10^9 bytes/s.", "", "| case | GB/s |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report["gbps"].items()]
    lines += ["", "| ratio | value | target |", "|---|---:|---:|"]
    lines += [f"| {k} | {v} | {targets.get(k, '')} |" for k, v in ratios.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
