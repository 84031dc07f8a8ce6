"""Server CPU per S3 HEAD: uvicorn on uvloop in this process, httperf keep-alive load, the event
loop thread's CPU time per answered request (RUSAGE_THREAD), optionally under cProfile.

    .venv/bin/python loadtest/profile_head.py                     # this tree, 2 x 15,000 HEADs
    .venv/bin/python loadtest/profile_head.py --root OLD_TREE     # another tree (A/B)
    .venv/bin/python loadtest/profile_head.py --bare              # bench_http's bare app
    .venv/bin/python loadtest/profile_head.py --no-guard          # kvstore without the guard
    .venv/bin/python loadtest/profile_head.py --profile --sort cumulative

The loop thread's own CPU is what a per-request cost cut moves, and it hardly moves with the
load of other processes on a shared machine (their time is not charged to this thread), unlike
requests per second. kvstore runs with the HTTP guard protocol, as ``kvstore serve`` does; the
bare app without it, as bench_http runs it. Needs httperf (apt-get install httperf).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import http.client
import importlib
import pstats
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _httperf(port: int, calls: int, conns: int) -> list[subprocess.Popen[str]]:
    cmd = ["httperf", "--server", "127.0.0.1", "--port", str(port), "--uri", "/bench/obj",
           "--method", "HEAD", "--num-conns", "1", "--num-calls", str(calls), "--hog"]
    return [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(conns)]


async def _wait(procs: list[subprocess.Popen[str]]) -> list[str]:
    while any(p.poll() is None for p in procs):
        await asyncio.sleep(0.05)
    return [p.stdout.read() if p.stdout else "" for p in procs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", default=str(HERE.parent), help="kvstore source tree to import")
    ap.add_argument("--bare", action="store_true", help="bench_http's bare app instead")
    ap.add_argument("--calls", type=int, default=15000, help="HEADs per connection")
    ap.add_argument("--conns", type=int, default=2, help="httperf processes (connections)")
    ap.add_argument("--no-guard", action="store_true",
                    help="kvstore on uvicorn's plain httptools protocol (what the guard costs)")
    ap.add_argument("--profile", action="store_true", help="cProfile the measured part")
    ap.add_argument("--sort", default="tottime", help="pstats sort key")
    args = ap.parse_args()
    if not 100 <= args.calls <= 1_000_000 or not 1 <= args.conns <= 16:
        raise SystemExit("--calls must be 100..1000000 and --conns 1..16")
    root = Path(args.root).resolve()
    sys.path[:0] = [str(root), str(root / "clients"), str(HERE)]

    import uvicorn
    import uvloop

    from kvstore.api.app import create_app
    from kvstore.api.http_guard import HttpGuardSettings, guarded_protocol
    from kvstore.api.metrics import Metrics
    from kvstore.auth import Tenants
    from kvstore.engine.store import Engine
    from kvstore.engine.types import EngineConfig
    from kvstore.io_uring.posix import PosixDevice
    from kvstore.service import Node
    from kvstore.service.runner import EngineRunner
    try:
        from kvstore.server import http_config_options
    except ImportError:  # an older tree (--root): the settings serve used then
        def http_config_options() -> dict[str, Any]:
            return {"lifespan": "on", "access_log": False, "server_header": False}

    # after kvstore: importing bench_http puts its own tree first on sys.path
    bench_http = importlib.import_module("bench_http")
    assert Path(sys.modules["kvstore"].__file__ or "").resolve().is_relative_to(root)

    data = tempfile.mkdtemp(prefix="kvstore-profile-head-")
    engine = Engine.open(EngineConfig(data_dir=data, capacity_bytes=256 << 20,
                                      segment_bytes=64 << 20, dram_bytes=64 << 20),
                         PosixDevice())
    runner = EngineRunner(threads=2)
    runner.start()
    metrics = Metrics(engine)
    node = Node(engine, runner, Tenants.development(), metrics=metrics)
    app: Any = bench_http.bare_app if args.bare else create_app(node)
    proto: Any = "httptools" if args.bare or args.no_guard else \
        guarded_protocol(HttpGuardSettings(), metrics)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # kvstore serve's uvicorn settings (no proxy-headers middleware), for both apps
    server = uvicorn.Server(uvicorn.Config(app, http=proto, loop="none", log_config=None,
                                           **http_config_options()))

    def prepare() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("PUT", "/bench", headers={"content-length": "0"})
        c.getresponse().read()
        c.request("PUT", "/bench/obj", body=bench_http.PAYLOAD)
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
        c.close()

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(prepare)
        await _wait(_httperf(port, 2000, args.conns))  # warm up
        prof = cProfile.Profile() if args.profile else None
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        if prof is not None:
            prof.enable()
        outs = await _wait(_httperf(port, args.calls, args.conns))
        if prof is not None:
            prof.disable()
        r1 = resource.getrusage(resource.RUSAGE_THREAD)
        ok = sum(int(o.split("2xx=")[1].split()[0]) for o in outs)
        cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
        print(f"{'bare' if args.bare else root}: {ok} HEADs answered 2xx of "
              f"{args.calls * args.conns}; loop-thread CPU {cpu / max(ok, 1) * 1e6:.1f} "
              "us per request")
        if prof is not None:
            pstats.Stats(prof).sort_stats(args.sort).print_stats(40)
        server.should_exit = True
        await task

    try:
        uvloop.run(run())
    finally:
        runner.close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
