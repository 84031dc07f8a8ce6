"""Requests through the HTTP guard leave no reference cycles behind.

A request whose objects form a cycle is freed only by the garbage collector, so a hot path that
makes one (the guard's tenant binder once held its request's cycle object, which holds the
scope, which holds the binder; a failed engine call's futures held the exception whose
traceback held them) runs a gen-0 collection every few dozen requests, and gen-2 passes over
the whole server heap after them: a quarter of a HEAD's server CPU on the 2-core machine
(``loadtest/profile_protocol.py`` prints the count).

The real guarded uvicorn protocol and the real S3 app (a memory-device engine), fed request
bytes in this process with the collector off: after N requests of one kind, a collection
finds nothing unreachable that grew with N.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from uvicorn.server import ServerState

from kvstore.api.app import create_app
from kvstore.api.http_guard import HttpGuardSettings, guarded_protocol
from kvstore.api.metrics import Metrics
from kvstore.auth import Tenants
from kvstore.engine.device import MemoryDevice
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.server import http_config_options
from kvstore.service import Node
from kvstore.service.runner import EngineRunner
from kvstore.testing_http import MemoryTransport

REQUESTS = 300
BODY = b"x" * 70_000  # above the size the engine copies with the GIL released


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    engine = Engine.open(EngineConfig(data_dir=str(tmp_path), capacity_bytes=64 << 20,
                                      segment_bytes=8 << 20, dram_bytes=16 << 20),
                         MemoryDevice())
    runner = EngineRunner(threads=2)
    runner.start()
    try:
        yield Node(engine, runner, Tenants.development(), metrics=Metrics(engine))
    finally:
        runner.close()
        engine.close()


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
    if body or method == "PUT":
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


async def _serve(node: Node, requests: list[bytes]) -> tuple[bytes, int]:
    """Feed ``requests`` one after the other on one keep-alive connection; (what the server
    wrote, objects a collection found unreachable afterwards)."""
    cfg = uvicorn.Config(create_app(node), loop="none", log_config=None,
                         **http_config_options())
    cfg.load()
    proto = guarded_protocol(HttpGuardSettings(), node.metrics)(
        config=cfg, server_state=ServerState(), app_state={})
    tr = MemoryTransport()
    proto.connection_made(tr)
    gc.collect()
    gc.disable()
    try:
        for req in requests:
            proto.data_received(req)
            for _ in range(10_000):  # bounded: a request is answered in a few loop turns
                if proto.cycle is not None and proto.cycle.response_complete:
                    break
                await asyncio.sleep(0)
            else:
                raise AssertionError(f"no answer to {req[:40]!r}")
        proto.connection_lost(None)
        return tr.written(), gc.collect()
    finally:
        gc.enable()


@pytest.mark.parametrize("method,path,status", [
    ("HEAD", "/cyc/obj", b"200"), ("GET", "/cyc/obj", b"200"), ("PUT", "/cyc/new", b"200"),
    ("GET", "/cyc/absent", b"404"), ("HEAD", "/cyc/absent", b"404"), ("GET", "/cyc", b"200"),
    ("GET", "/healthz", b"200"),
])
def test_requests_leave_no_cycles(node: Node, method: str, path: str, status: bytes) -> None:
    async def run() -> None:
        setup, _ = await _serve(node, [_request("PUT", "/cyc"),
                                       _request("PUT", "/cyc/obj", BODY)])
        assert setup.count(b"HTTP/1.1 200") == 2, setup[:300]
        body = BODY if method == "PUT" else b""
        few_out, few = await _serve(node, [_request(method, path, body)] * 10)
        out, many = await _serve(node, [_request(method, path, body)] * REQUESTS)
        assert out.count(b"HTTP/1.1 " + status) == REQUESTS, out[:300]
        # what a collection finds must not grow with the number of requests
        assert many <= few + 20, (few, many)

    asyncio.run(run())
