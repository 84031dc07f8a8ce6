"""Server CPU per S3 HEAD or DRAM GET through the whole HTTP stack but the socket: uvicorn's
httptools protocol (kvstore's connection guard, or the plain one) fed request bytes in this
process, the real ASGI app behind it, the answer written into an in-memory transport.

    .venv/bin/python loadtest/profile_protocol.py                  # kvstore (guard + app) and bare
    .venv/bin/python loadtest/profile_protocol.py --method GET
    .venv/bin/python loadtest/profile_protocol.py --root OLD_TREE  # another tree (A/B)

Unlike ``profile_head.py`` (httperf over loopback) no client shares the two cores and no
syscall is timed, so the figure moves only with the server's own work: each trial is
``--requests`` keep-alive requests on one connection, timed in thread CPU, and the minimum of
``--trials`` is printed (the least disturbed by other processes on a shared machine), for
kvstore as ``kvstore serve`` runs it and for ``bench_http``'s bare app on uvicorn's plain
protocol. It also counts gen-0 garbage collections: a request that leaves a reference cycle
behind makes them run (a guard binder that held its cycle cost 12 per 1000 HEADs, and in a
server's larger heap the gen-2 passes they lead to). Prints; records nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


async def _drive(proto_cls: Any, config: Any, request: bytes, n: int,
                 trials: int) -> tuple[float, float]:
    """(least CPU seconds per request of the trials, garbage collections per 1000 requests:
    above zero, requests leave reference cycles behind that only the collector frees)."""
    from uvicorn.server import ServerState

    state = ServerState()
    proto = proto_cls(config=config, server_state=state, app_state={})
    from kvstore.testing_http import MemoryTransport

    tr = MemoryTransport(keep_bytes=64)  # the status line is enough to check
    proto.connection_made(tr)
    best = float("inf")
    gc0 = gc.get_stats()[0]["collections"]
    for trial in range(trials + 1):  # the first is a warm-up
        t0 = time.thread_time()
        for _ in range(n):
            proto.data_received(request)
            for _turn in range(10_000):  # bounded: a request is answered in a few loop turns
                if proto.cycle is None or proto.cycle.response_complete:
                    break
                await asyncio.sleep(0)
            else:
                raise SystemExit("a request got no answer within 10000 loop turns")
        dt = (time.thread_time() - t0) / n
        if tr.closing or not all(c.startswith(b"HTTP/1.1 200") for c in tr.chunks[::2]):
            raise SystemExit(f"a request failed: {tr.chunks[-2:]!r}")
        tr.chunks.clear()
        if trial:
            best = min(best, dt)
    proto.connection_lost(None)
    return best, (gc.get_stats()[0]["collections"] - gc0) * 1000 / (n * (trials + 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", default=str(HERE.parent), help="kvstore source tree to import")
    ap.add_argument("--method", choices=("HEAD", "GET"), default="HEAD")
    ap.add_argument("--requests", type=int, default=5000, help="requests per trial")
    ap.add_argument("--trials", type=int, default=7)
    args = ap.parse_args()
    if not (100 <= args.requests <= 1_000_000 and 1 <= args.trials <= 100):
        raise SystemExit("--requests must be 100..1000000 and --trials 1..100")
    root = Path(args.root).resolve()
    sys.path[:0] = [str(root), str(root / "clients"), str(HERE)]

    import uvicorn
    import uvloop
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from kvstore.api.app import create_app
    from kvstore.api.http_guard import HttpGuardSettings, guarded_protocol
    from kvstore.api.metrics import Metrics
    from kvstore.auth import Tenants
    from kvstore.engine.store import Engine
    from kvstore.engine.types import EngineConfig
    from kvstore.io_uring.posix import PosixDevice
    from kvstore.server import http_config_options
    from kvstore.service import Node
    from kvstore.service.runner import EngineRunner

    bench_http = importlib.import_module("bench_http")  # after kvstore: it edits sys.path
    data = tempfile.mkdtemp(prefix="kvstore-profile-proto-")
    engine = Engine.open(EngineConfig(data_dir=data, capacity_bytes=256 << 20,
                                      segment_bytes=64 << 20, dram_bytes=64 << 20),
                         PosixDevice())
    runner = EngineRunner(threads=2)
    runner.start()
    metrics = Metrics(engine)
    node = Node(engine, runner, Tenants.development(), metrics=metrics)
    app = create_app(node)
    request = (f"{args.method} /bench/obj HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
               "User-Agent: httperf/0.9.0\r\n\r\n").encode()

    async def run() -> None:
        out: list[dict[str, Any]] = []

        async def send(m: dict[str, Any]) -> None:
            out.append(m)

        async def body() -> dict[str, Any]:
            return {"type": "http.request", "body": bench_http.PAYLOAD, "more_body": False}

        async def empty() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        base = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "scheme": "http", "root_path": "", "query_string": b""}
        await app({**base, "method": "PUT", "path": "/bench", "raw_path": b"/bench",
                   "headers": [(b"host", b"x")]}, empty, send)
        await app({**base, "method": "PUT", "path": "/bench/obj", "raw_path": b"/bench/obj",
                   "headers": [(b"host", b"x"), (b"content-length",
                                                 str(len(bench_http.PAYLOAD)).encode())]},
                  body, send)
        assert out[-2]["status"] == 200, out[-2]
        kv_cfg = uvicorn.Config(app, loop="none", log_config=None, **http_config_options())
        kv_cfg.load()
        bare_cfg = uvicorn.Config(bench_http.bare_app, loop="none", log_config=None,
                                  access_log=False)
        bare_cfg.load()
        guarded = guarded_protocol(HttpGuardSettings(), metrics)
        kv, kv_gc = await _drive(guarded, kv_cfg, request, args.requests, args.trials)
        bare, bare_gc = await _drive(HttpToolsProtocol, bare_cfg, request, args.requests,
                                     args.trials)
        print(f"{root}: {args.method} CPU per request, min of {args.trials} x "
              f"{args.requests}: kvstore {kv * 1e6:.1f} us, bare {bare * 1e6:.1f} us, "
              f"bare/kvstore {bare / kv:.2f}; gen-0 collections per 1000 requests: "
              f"kvstore {kv_gc:.1f}, bare {bare_gc:.1f}")

    try:
        uvloop.run(run())
    finally:
        runner.close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
