"""Runs synchronous engine calls off the event loop, in a small bounded thread pool.

The engine is synchronous (DESIGN section 2); flash I/O blocks. The asyncio edges (HTTP API,
bulk port) reach it only through ``kvstore.service.BlockService``, which decides what runs inline
(index look-ups, DRAM hits) and what hops here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kvstore import limits
from kvstore.errors import Busy

T = TypeVar("T")


class EngineRunner:
    """Bounded: at most ``threads`` calls run at once and at most ``queue_max`` wait."""

    def __init__(self, threads: int = limits.engine_threads, queue_max: int = 1024) -> None:
        self._threads = threads
        self._queue_max = queue_max
        self._pending = 0
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="kvstore-io")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._pool is None:
            self.start()
        if self._pending >= self._queue_max:
            raise Busy("too many engine calls waiting")
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        finally:
            self._pending -= 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
