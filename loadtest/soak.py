"""Load soak: CONNECTIONS concurrent connections mixing lookup, get and put for SECONDS against a
real ``kvstore serve`` on 127.0.0.1 (``make soak``).

Clients are asyncio: 90% of the connections are bulk-port SDK clients (``AsyncClient``, one
connection each), 10% keep-alive S3 connections (plain HTTP/1.1 GET and PUT, development mode).
Each connection loops: an op picked at random (lookup 50%, get 30%, put 20%), then a short think
time, so the soak holds every connection open and busy without being a throughput benchmark.
Gets and lookups ask for blocks written before (a preload) or by the soak itself; a get that
returns other bytes than were put is a wrong-bytes failure. The server's RSS is sampled every
second from /proc and checked against its configured budget (DRAM tier + buffer pool idle
bound + a fixed baseline). Any error answer other than Busy (the configured limits' 503) fails
the run.

Writes ``loadtest/results/soak-<stamp>.json`` and ``.md``: p50/p99/max per op, ops, errors by
kind, peak RSS against the budget, connections held. Exit status 1 on any failure.

    python loadtest/soak.py [--seconds 60] [--connections 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "clients")]

from kvstore_client import AsyncClient, Busy  # noqa: E402

from kvstore import limits  # noqa: E402

RESULTS = ROOT / "loadtest" / "results"
NS = "soak"
BLOCK = 16 * 1024
PRELOAD = 2000
THINK_S = 0.05  # per connection between ops
DRAM = 256 * limits.MiB
RSS_BASELINE = 384 * limits.MiB  # interpreter, FastAPI, uvicorn, index, sockets
RSS_BUDGET = DRAM + limits.buffer_pool_idle_bytes_max + RSS_BASELINE
S3_SHARE = 0.1


def body(key: str) -> bytes:
    unit = hashlib.blake2b(key.encode(), digest_size=64).digest()
    return unit * (BLOCK // 64)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Books:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = {"lookup": [], "get": [], "put": [],
                                            "s3_get": [], "s3_put": []}
        self.errors: dict[str, int] = {}
        self.wrong = 0
        self.keys: list[str] = []  # written and acknowledged

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__ + (": " + str(exc)[:60] if not isinstance(exc, Busy) else "")
        self.errors[name] = self.errors.get(name, 0) + 1


async def bulk_worker(i: int, port: int, books: Books, until: float, rng: random.Random) -> None:
    c = AsyncClient(port=port, namespace=NS, create=True, timeout=30, pool_size=1, retries=0)
    n = 0
    try:
        await c.ping()  # hold the connection from the start
        while time.monotonic() < until:
            op = rng.random()
            t0 = time.perf_counter()
            try:
                if op < 0.5:
                    start = rng.randrange(max(1, len(books.keys) - 8))
                    await c.lookup(books.keys[start:start + 8])
                    books.lat["lookup"].append(time.perf_counter() - t0)
                elif op < 0.8:
                    key = rng.choice(books.keys)
                    got = await c.get(key)
                    books.lat["get"].append(time.perf_counter() - t0)
                    if got is not None and got != body(key):
                        books.wrong += 1
                else:
                    key = f"w{i}-{n}"
                    n += 1
                    await c.put(key, body(key))
                    books.lat["put"].append(time.perf_counter() - t0)
                    books.keys.append(key)
            except Exception as exc:  # noqa: BLE001 - counted and judged at the end
                books.error(exc)
            await asyncio.sleep(THINK_S * rng.uniform(0.5, 1.5))
    finally:
        await c.close()


async def s3_worker(i: int, port: int, books: Books, until: float, rng: random.Random) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0

    async def request(method: str, path: str, data: bytes = b"") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        writer.write(head + data)
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        return status, await reader.readexactly(length)

    try:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            try:
                if rng.random() < 0.7:
                    key = rng.choice(books.keys)
                    status, got = await request("GET", f"/{NS}/{key}")
                    books.lat["s3_get"].append(time.perf_counter() - t0)
                    if status == 200 and got != body(key):
                        books.wrong += 1
                    elif status not in (200, 404):
                        books.errors[f"S3 {status}"] = books.errors.get(f"S3 {status}", 0) + 1
                else:
                    key = f"s{i}-{n}"
                    n += 1
                    status, _ = await request("PUT", f"/{NS}/{key}", body(key))
                    books.lat["s3_put"].append(time.perf_counter() - t0)
                    if status == 200:
                        books.keys.append(key)
                    else:
                        books.errors[f"S3 {status}"] = books.errors.get(f"S3 {status}", 0) + 1
            except Exception as exc:  # noqa: BLE001
                books.error(exc)
                return
            await asyncio.sleep(THINK_S * rng.uniform(0.5, 1.5))
    finally:
        writer.close()


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def soak(seconds: float, connections: int, http: int, bulk: int, pid: int) -> dict[str, Any]:
    books = Books()
    async with AsyncClient(port=bulk, namespace=NS, create=True, timeout=60) as c:
        for i in range(0, PRELOAD, 100):
            keys = [f"pre-{j}" for j in range(i, i + 100)]
            await c.put_many(keys, [body(k) for k in keys])
            books.keys += keys
    rss: list[int] = []
    until = time.monotonic() + seconds
    n_s3 = int(connections * S3_SHARE)
    tasks = [asyncio.create_task(s3_worker(i, http, books, until, random.Random(i)))
             for i in range(n_s3)]
    tasks += [asyncio.create_task(bulk_worker(i, bulk, books, until, random.Random(10**6 + i)))
              for i in range(connections - n_s3)]
    t0 = time.monotonic()
    while time.monotonic() < until:
        rss.append(rss_bytes(pid))
        await asyncio.sleep(1.0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    crashed = [repr(r) for r in results if isinstance(r, BaseException)]
    wall = time.monotonic() - t0
    ops = {op: {"count": len(v), "p50_ms": round(pct(v, 0.5) * 1e3, 2),
                "p99_ms": round(pct(v, 0.99) * 1e3, 2), "max_ms": round(max(v, default=0) * 1e3, 2)}
           for op, v in books.lat.items()}
    total = sum(len(v) for v in books.lat.values())
    return {"seconds": round(wall, 1), "connections": connections, "s3_connections": n_s3,
            "bulk_connections": connections - n_s3, "ops": ops, "ops_total": total,
            "ops_per_second": round(total / wall, 1), "errors": books.errors,
            "wrong_bytes": books.wrong, "workers_failed": crashed[:5],
            "rss_peak_bytes": max(rss, default=0), "rss_budget_bytes": RSS_BUDGET,
            "rss_samples": len(rss), "think_s": THINK_S, "block_bytes": BLOCK}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--connections", type=int, default=1000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * args.connections + 256  # this process's sockets, and the server's
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    tmp = Path(tempfile.mkdtemp(prefix="kvstore-soak-"))
    http, bulk = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "clients")])
    max_conn = args.connections + 128  # per listener; above the soak's connections
    cmd = [sys.executable, "-m", "kvstore", "serve", "--host", "127.0.0.1", "--port", str(http),
           "--bulk-port", str(bulk), "--data-dir", str(tmp / "data"), "--capacity", "4GiB",
           "--dram", f"{DRAM // limits.MiB}MiB", "--max-connections", str(max_conn)]
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while b"kvstore: ready" not in (tmp / "serve.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                print((tmp / "serve.log").read_text()[-3000:])
                return 1
            time.sleep(0.1)
        doc = asyncio.run(soak(args.seconds, args.connections, http, bulk, proc.pid))
        doc["server_alive"] = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    doc["server_exit"] = proc.returncode
    not_busy = {k: v for k, v in doc["errors"].items() if not k.startswith("Busy")
                and k != "S3 503"}
    doc["ok"] = bool(doc["server_alive"] and not not_busy and not doc["wrong_bytes"]
                     and not doc["workers_failed"] and doc["rss_peak_bytes"] <= RSS_BUDGET
                     and doc["seconds"] >= args.seconds)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"soak-{stamp}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# soak {stamp}: {args.connections} connections, {doc['seconds']} s",
             "", f"ok: {doc['ok']}; {doc['ops_total']} ops ({doc['ops_per_second']}/s); "
             f"errors {doc['errors'] or 'none'}; wrong bytes {doc['wrong_bytes']}; "
             f"server RSS peak {doc['rss_peak_bytes'] / limits.MiB:.0f} MiB of a "
             f"{RSS_BUDGET / limits.MiB:.0f} MiB budget", "",
             "| op | count | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    lines += [f"| {op} | {v['count']} | {v['p50_ms']} | {v['p99_ms']} | {v['max_ms']} |"
              for op, v in doc["ops"].items()]
    (RESULTS / f"soak-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
