"""An embedded node: an engine and a bulk server on a background event-loop thread.

For tests and benchmarks that drive the server with blocking clients from the main thread, and
for embedding. A composition root like ``kvstore.server`` (it wires engine, service and
transport together), so it lives beside it, not in ``transport/``, which may not import the
engine. The constructor only records settings; ``start()`` opens the engine and starts
the loop thread; ``stop()`` drains and closes everything.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from kvstore import limits
from kvstore.auth import Tenants
from kvstore.engine.device import Device
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.service import Node
from kvstore.service.runner import EngineRunner
from kvstore.transport.bulk_server import BulkServer, start_bulk_server
from kvstore.transport.watchdog import BulkTimeouts


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()


class BackgroundBulkServer:
    def __init__(self, config: EngineConfig, device: Device, *, tenants: Tenants | None = None,
                 host: str = "127.0.0.1", port: int = 0, threads: int = 4,
                 timeouts: BulkTimeouts | None = None,
                 connections_max: int = limits.connections_max, metrics: Any = None,
                 engine_timeout_s: float = limits.engine_call_timeout_seconds_default,
                 engine_queue_max: int = limits.engine_queue_max) -> None:
        self.config = config
        self.device = device
        self.tenants = tenants or Tenants.development()
        self.host, self._port = host, port
        self.threads = threads
        self.timeouts = timeouts
        self.connections_max = connections_max
        self.metrics = metrics
        self.engine_timeout_s, self.engine_queue_max = engine_timeout_s, engine_queue_max
        self.engine: Engine | None = None
        self.runner: EngineRunner | None = None
        self.server: BulkServer | None = None
        self.node: Node | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def start(self) -> BackgroundBulkServer:
        self.engine = Engine.open(self.config, self.device)
        self.runner = EngineRunner(threads=self.threads, queue_max=self.engine_queue_max,
                                   timeout_s=self.engine_timeout_s)
        self.loop = new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kvstore-bulk",
                                        daemon=True)
        self._thread.start()
        self.node = Node(self.engine, self.runner, self.tenants, metrics=self.metrics)
        self.server = self.call(start_bulk_server(self.node, self.host, self._port,
                                                  timeouts=self.timeouts,
                                                  connections_max=self.connections_max))
        return self

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = limits.shutdown_seconds_max) -> None:
        if self.loop is None:
            return
        if self.server is not None:
            self.call(self.server.close(timeout), timeout + 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self.loop.close()
        self.loop = None
        if self.runner is not None:
            self.runner.close()
        if self.engine is not None:
            self.engine.close()

    def __enter__(self) -> BackgroundBulkServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
