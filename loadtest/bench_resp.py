"""kvstore's Redis-protocol listener vs a real Redis, side by side (a script, not a test).

Both servers are separate processes on 127.0.0.1, driven by the same redis-py (hiredis) client:
Debian's redis-server with persistence off, and `kvstore serve --resp-port` on a scratch data
dir (the disk under test). SET then GET of 2 MiB values, one at a time and pipelined (depth
``--depth``), each GET answer checked for length, a sample of them byte for byte; and pipelined GETs from a raw
socket (no client-side parsing), what a native client such as LMCache's C++ one can get. kvstore is
measured twice for GET: from its DRAM tier (the default --dram) and from flash (``--dram`` at
its smallest, so every block is read from the segment files). Writes
loadtest/results/resp-*.{json,md}.

    .venv/bin/python loadtest/bench_resp.py [--values 128] [--seconds 3] [--depth 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import redis  # noqa: E402
from bench_engine import git_commit, machine  # noqa: E402

VALUE_BYTES = 2 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ping(r: redis.Redis, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        try:
            if r.ping():
                return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("server did not answer PING in 30 s")


def timed(fn: Callable[[], None], nbytes: int, seconds: float) -> float:
    """GB/s of the best pass among as many as fit in ``seconds`` (at least two)."""
    best = 0.0
    deadline = time.perf_counter() + seconds
    passes = 0
    while passes < 2 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        best = max(best, nbytes / (time.perf_counter() - t0) / 1e9)
        passes += 1
    return best


def measure(r: redis.Redis, values: list[bytes], depth: int, seconds: float,
            label: str) -> dict[str, float]:
    keys = [f"bench-{i}" for i in range(len(values))]
    total = len(values) * VALUE_BYTES

    def set_one() -> None:
        for k, v in zip(keys, values, strict=True):
            r.set(k, v)

    def set_pipe() -> None:
        for i in range(0, len(keys), depth):
            p = r.pipeline(transaction=False)
            for k, v in zip(keys[i:i + depth], values[i:i + depth], strict=True):
                p.set(k, v)
            p.execute()

    def get_one() -> None:
        for k in keys:
            assert len(r.get(k) or b"") == VALUE_BYTES

    def get_pipe() -> None:
        for i in range(0, len(keys), depth):
            p = r.pipeline(transaction=False)
            for k in keys[i:i + depth]:
                p.get(k)
            assert all(len(x or b"") == VALUE_BYTES for x in p.execute())

    host, port = r.connection_pool.connection_kwargs["host"], r.connection_pool.connection_kwargs[
        "port"]
    reply = len(b"$%d\r\n" % VALUE_BYTES) + VALUE_BYTES + 2
    sink = bytearray(reply * depth)
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_raw() -> None:
        """Pipelined GETs from a raw socket into one buffer: what the server can send when the
        client is not Python-bound (LMCache's C++ client)."""
        for i in range(0, len(keys), depth):
            batch = keys[i:i + depth]
            sock.sendall(b"".join(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k.encode())
                                  for k in batch))
            view, want = memoryview(sink), reply * len(batch)
            got = 0
            while got < want:
                n = sock.recv_into(view[got:want])
                assert n, "server closed"
                got += n
            assert sink[:1] == b"$" and sink[reply - 2: reply] == b"\r\n"

    out = {"set": timed(set_one, total, seconds), "set_pipelined": timed(set_pipe, total, seconds)}
    for k, v in list(zip(keys, values, strict=True))[:: max(1, len(keys) // 8)]:
        assert r.get(k) == v, f"{label}: wrong bytes for {k}"
    out["get"] = timed(get_one, total, seconds)
    out["get_pipelined"] = timed(get_pipe, total, seconds)
    out["get_pipelined_raw"] = timed(get_raw, total, seconds)
    sock.close()
    print(f"{label:>16}: " + "  ".join(f"{k} {v:.2f}" for k, v in out.items()) + "  GB/s",
          flush=True)
    return out


def bench_redis(values: list[bytes], depth: int, seconds: float) -> dict[str, float] | None:
    exe = shutil.which("redis-server")
    if exe is None:
        print("redis-server not found: skipping the baseline", flush=True)
        return None
    port = free_port()
    proc = subprocess.Popen([exe, "--save", "", "--appendonly", "no", "--port", str(port),
                             "--bind", "127.0.0.1", "--maxmemory", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(host="127.0.0.1", port=port)
        wait_ping(r, proc)
        return measure(r, values, depth, seconds, "redis")
    finally:
        proc.terminate()
        proc.wait(10)


def bench_kvstore(values: list[bytes], depth: int, seconds: float, data_dir: Path,
                  device: str, dram: str, label: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'clients'}"
    capacity = max(1024, 2 * len(values) * VALUE_BYTES // (1 << 20) + 512)
    log = open(data_dir.parent / f"{label}.out", "w+b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstore", "serve", "--port", "0", "--bulk-port", "0",
         "--resp-port", "0", "--data-dir", str(data_dir), "--device", device,
         "--capacity", f"{capacity}MiB", "--dram", dram, "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        port = 0
        for _ in range(600):
            log.seek(0)
            m = re.search(rb"redis://127\.0\.0\.1:(\d+)", log.read())
            if m:
                port = int(m.group(1))
                break
            if proc.poll() is not None:
                raise SystemExit(f"kvstore exited {proc.returncode}")
            time.sleep(0.05)
        r = redis.Redis(host="127.0.0.1", port=port)
        wait_ping(r, proc)
        return measure(r, values, depth, seconds, label)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--values", type=int, default=128, help="2 MiB values per pass")
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--depth", type=int, default=8, help="commands per pipeline")
    ap.add_argument("--trials", type=int, default=2, help="alternating rounds; best kept")
    ap.add_argument("--dir", default=None, help="scratch dir on the disk under test")
    ap.add_argument("--device", default="auto", help="kvstore device: auto|uring|posix")
    ap.add_argument("--out", default=str(HERE / "results"), help="where results go")
    args = ap.parse_args()
    values = [os.urandom(VALUE_BYTES) for _ in range(args.values)]
    scratch = Path(tempfile.mkdtemp(prefix="bench-resp-", dir=args.dir))
    res: dict[str, Any] = {}
    load = [os.getloadavg()[0]]
    try:
        for trial in range(args.trials):  # alternate the servers: a busy moment hits all three
            rows = {"redis": bench_redis(values, args.depth, args.seconds),
                    "kvstore_dram": bench_kvstore(values, args.depth, args.seconds,
                                                  scratch / f"d1-{trial}", args.device, "512MiB",
                                                  "kvstore (dram)"),
                    "kvstore_flash": bench_kvstore(values, args.depth, args.seconds,
                                                   scratch / f"d2-{trial}", args.device, "0",
                                                   "kvstore (flash)")}
            for name, row in rows.items():
                if row is not None:
                    best = res.setdefault(name, dict(row))
                    for k, v in row.items():
                        best[k] = max(best[k], v)
        load.append(os.getloadavg()[0])
        doc = {"script": "loadtest/bench_resp.py", "commit": git_commit(),
               "machine": machine(scratch), "settings": {k: v for k, v in vars(args).items() if k != "out"}, "load_average": load,
               "value_bytes": VALUE_BYTES, "results_gb_per_s": res}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"resp-{stamp}.json").write_text(json.dumps(doc, indent=2) + "\n")
    cols = ["set", "set_pipelined", "get", "get_pipelined", "get_pipelined_raw"]
    lines = [f"# Redis protocol: kvstore vs redis-server, 2 MiB values ({stamp})", "",
             f"commit {doc['commit']}; {args.values} values, pipeline depth {args.depth}, "
             f"best pass of {args.seconds:g} s, best of {args.trials} alternating trials; "
             f"redis-py with hiredis, one client thread; 1-min load average "
             f"{load[0]:.1f} -> {load[-1]:.1f} on {os.cpu_count()} cores; "
             f"machine: {doc['machine']}", "",
             "| server | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in res.items():
        if row:
            lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |")
    lines += ["", "GB/s (10^9 bytes per second). `kvstore_flash` runs with --dram 0: every "
              "GET reads the block from its segment file (O_DIRECT), checksum verified. "
              "`get_pipelined_raw`: the same pipelined GETs from a raw socket into one "
              "preallocated buffer (no redis-py parsing), what a native client sees."]
    (out / f"resp-{stamp}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / f'resp-{stamp}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
