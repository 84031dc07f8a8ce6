"""kvstore's S3 ASGI app alone, without sockets or uvicorn: CPU per HEAD and per GET of one 2 MiB
DRAM-tier object, the app driven in a loop on uvloop with a scope like uvicorn's.

    .venv/bin/python loadtest/profile_s3_app.py                   # this tree
    .venv/bin/python loadtest/profile_s3_app.py --root OLD_TREE   # another tree (A/B)

What the app itself costs per request (request view, SigV4, policy, engine lookup, answer,
metrics), apart from uvicorn's parsing and socket writes, which ``profile_head.py`` includes.
Prints; records nothing (a figure quoted in loadtest/results/ names this command).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"httperf/0.9.0")]
PAYLOAD = bytes(range(256)) * 8192  # 2 MiB


def scope(method: str, path: str, headers: list[tuple[bytes, bytes]] = HEADERS) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555), "scheme": "http",
            "method": method, "root_path": "", "path": path, "raw_path": path.encode(),
            "query_string": b"", "headers": headers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", default=str(HERE.parent), help="kvstore source tree to import")
    ap.add_argument("--heads", type=int, default=20000, help="HEADs measured")
    ap.add_argument("--gets", type=int, default=5000, help="GETs measured")
    args = ap.parse_args()
    if not (100 <= args.heads <= 1_000_000 and 100 <= args.gets <= 1_000_000):
        raise SystemExit("--heads and --gets must be 100..1000000")
    root = Path(args.root).resolve()
    sys.path[:0] = [str(root), str(root / "clients")]

    import uvloop

    from kvstore.api.app import create_app
    from kvstore.api.metrics import Metrics
    from kvstore.auth import Tenants
    from kvstore.engine.store import Engine
    from kvstore.engine.types import EngineConfig
    from kvstore.io_uring.posix import PosixDevice
    from kvstore.service import Node
    from kvstore.service.runner import EngineRunner

    data = tempfile.mkdtemp(prefix="kvstore-profile-app-")
    engine = Engine.open(EngineConfig(data_dir=data, capacity_bytes=256 << 20,
                                      segment_bytes=64 << 20, dram_bytes=64 << 20),
                         PosixDevice())
    runner = EngineRunner(threads=2)
    runner.start()
    app = create_app(Node(engine, runner, Tenants.development(), metrics=Metrics(engine)))

    async def empty() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def body() -> dict[str, Any]:
        return {"type": "http.request", "body": PAYLOAD, "more_body": False}

    async def run() -> None:
        out: list[dict[str, Any]] = []

        async def send(m: dict[str, Any]) -> None:
            out.append(m)

        await app(scope("PUT", "/bench"), empty, send)
        await app(scope("PUT", "/bench/obj",
                        [*HEADERS, (b"content-length", str(len(PAYLOAD)).encode())]), body, send)
        assert out[-2]["status"] == 200, out[-2]
        for method, n in (("HEAD", args.heads), ("GET", args.gets)):
            sc = scope(method, "/bench/obj")
            for _ in range(min(n, 1000)):  # warm-up
                await app(dict(sc), empty, send)
            out.clear()
            t0 = time.thread_time()
            for _ in range(n):
                await app(dict(sc), empty, send)
            dt = time.thread_time() - t0
            assert all(m["status"] == 200 for m in out[::2]), "a request failed"
            out.clear()
            print(f"{root}: {method} {dt / n * 1e6:.2f} us CPU per request (app only)")

    try:
        uvloop.run(run())
    finally:
        runner.close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
