"""Runs synchronous engine calls off the event loop, in a small bounded thread pool.

The engine is synchronous (DESIGN section 2); flash I/O blocks. The asyncio edges (HTTP API,
bulk port) reach it only through ``kvstore.service.BlockService``, which decides what runs inline
(index look-ups, DRAM hits) and what hops here.

Bounded in count and in time, so a stalled or slow disk gives bounded errors rather than hung
clients and growing queues: at most ``queue_max`` calls run or wait (``limits.engine_queue_max``;
past it ``Busy`` at once), and a call that has not answered in ``timeout_s``
(``--engine-timeout``) answers ``Busy`` (503 SlowDown). A timed-out call that had not started is
cancelled; one already on a thread finishes whenever the disk lets it and keeps its place in the
count until then, and a ``BlockLease`` it returns late is released, never leaked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kvstore import limits
from kvstore.errors import Busy

T = TypeVar("T")


def _release_late(cf: concurrent.futures.Future[Any]) -> None:
    """Done callback of a call whose caller gave up: release what nobody will."""
    if cf.cancelled() or cf.exception() is not None:
        return
    release = getattr(cf.result(), "release", None)
    if callable(release):
        with contextlib.suppress(Exception):
            release()


class EngineRunner:
    """Bounded: at most ``threads`` calls run at once, at most ``queue_max`` run or wait, and
    each answers within ``timeout_s`` (else ``Busy``)."""

    def __init__(self, threads: int = limits.engine_threads,
                 queue_max: int = limits.engine_queue_max,
                 timeout_s: float = limits.engine_call_timeout_seconds_default) -> None:
        self._threads = threads
        self._queue_max = queue_max
        self.timeout_s = timeout_s
        self._pending = 0
        self.timeouts = 0  # calls answered Busy because the engine did not answer in time
        self._pool: ThreadPoolExecutor | None = None

    @property
    def pending(self) -> int:
        """Calls running or waiting for a thread (at most ``queue_max``)."""
        return self._pending

    def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="kvstore-io")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._pool is None:
            self.start()
        assert self._pool is not None
        if self._pending >= self._queue_max:
            raise Busy("too many engine calls waiting")
        loop = asyncio.get_running_loop()
        self._pending += 1
        cf = self._pool.submit(functools.partial(fn, *args, **kwargs))
        fut = asyncio.wrap_future(cf)
        expired: list[bool] = []

        def expire() -> None:
            if not fut.done():
                expired.append(True)
                fut.cancel()

        timer = loop.call_later(self.timeout_s, expire)  # one timer: cheap on the hot path
        try:
            result = await fut
        except asyncio.CancelledError:
            timer.cancel()
            self._abandon(loop, cf)
            if not expired:
                raise
            self.timeouts += 1
            raise Busy(f"storage did not answer within {self.timeout_s:g} s") from None
        except BaseException:
            timer.cancel()
            self._pending -= 1
            # the exception's traceback holds this frame and both futures hold the exception:
            # drop them here, or every failed call (a 404 is one) is a reference cycle that
            # only the garbage collector frees (tests/api/test_http_guard_cycles.py)
            fut = cf = None  # type: ignore[assignment]
            raise
        timer.cancel()
        self._pending -= 1  # counted down here, on the loop: no second wake-up per call
        return result

    def _abandon(self, loop: asyncio.AbstractEventLoop,
                 cf: concurrent.futures.Future[Any]) -> None:
        """The caller gave up on ``cf``: cancel it if it has not started; else it keeps its
        place in the count until its thread is done, and a lease it returns is released."""
        if cf.cancel():
            self._pending -= 1
            return

        def done(_f: concurrent.futures.Future[Any]) -> None:
            _release_late(_f)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to count
                loop.call_soon_threadsafe(self._finished)

        cf.add_done_callback(done)

    def _finished(self) -> None:
        self._pending -= 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
