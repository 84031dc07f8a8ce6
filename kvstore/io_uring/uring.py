"""UringDevice: O_DIRECT positional I/O through io_uring (pyuring 0.3.0).

Rings come from ``rings.make_ring``: a ``BatchRing`` prepares every SQE of a batch in the ring's
memory and submits them with one ``io_uring_enter`` that also waits for the first completion
(pyuring's own ``*_async_ptr`` calls submit each op on its own; ``PerOpRing`` keeps that path
for builds whose layout does not check out). Completions are matched by ``user_data``. We never
wait with nothing in flight: that blocks forever.

A ``UringCtx`` may only be used from the thread that created it, so the device keeps one ring
per thread (``threading.local``), created on that thread's first batch. ``submit`` keeps up to
``entries`` ops in flight and refills the ring as completions arrive: the refills of one reaping
round go out together with the next wait, so the queue never drains between rounds. A short read
or write resubmits the remainder.

``depth_stats()`` reports what was really in flight (per ring and in total; ``depth.py``).

``submit_async`` is the asyncio variant: one ring owned by the event loop's thread, its
``ring_fd`` watched with ``loop.add_reader``, completions dispatched to futures by
``user_data``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Sequence
from typing import Any, cast

from kvstore import limits
from kvstore.engine.device import IoOp
from kvstore.errors import StorageError
from kvstore.io_uring.driver import Batch, RingDriver
from kvstore.io_uring.files import FileDevice, Task
from kvstore.io_uring.rings import RING_RETRIES_MAX, PerOpRing, make_ring

log = logging.getLogger("kvstore.device")

_RING_RETRIES_MAX = RING_RETRIES_MAX


class UringDevice(FileDevice):
    name = "uring"

    def __init__(self, *, entries: int = limits.uring_entries, direct: bool = True,
                 batch: bool = True) -> None:
        """``batch=False`` forces pyuring's submit-per-op path (for comparison runs)."""
        super().__init__(direct=direct)
        if not 1 <= entries <= 4096:
            raise ValueError("entries must be in 1..4096")
        self._entries = entries
        self._batch = batch
        self._local = threading.local()
        self._rings: list[PerOpRing] = []  # every ring created, closed by close()
        self._rings_lock = threading.Lock()
        self._ring_seq = 0
        self._aio: _AsyncRing | None = None

    @property
    def batched(self) -> bool | None:
        """Whether this thread's ring batches submissions (None before its first batch)."""
        drv = getattr(self._local, "driver", None)
        return None if drv is None else drv.ring.batched

    def _new_ring(self, label: str) -> PerOpRing:
        with self._rings_lock:
            self._ring_seq += 1
            name = f"ring{self._ring_seq}-{label}"
        try:
            ring = make_ring(self._entries, self.depth.part(name), batch=self._batch)
        except OSError as e:
            self.depth.forget(name)
            raise StorageError(f"uring: cannot create a ring: {e}") from e
        ring.name = name  # type: ignore[attr-defined]
        return ring

    # --- rings ------------------------------------------------------------------------------

    def _driver(self) -> RingDriver:
        drv = getattr(self._local, "driver", None)
        if drv is None:
            if self._closed:
                raise StorageError("uring: device is closed")
            ring = self._new_ring(threading.current_thread().name)
            drv = RingDriver(ring, self._entries, self.settle)
            self._local.driver = drv
            with self._rings_lock:
                self._rings.append(ring)
        return drv

    def _drop_ring(self, drv: RingDriver) -> None:
        """Forget a broken ring; the thread's next batch creates a fresh one."""
        if getattr(self._local, "driver", None) is drv:
            self._local.driver = None
        with self._rings_lock:
            if drv.ring in self._rings:
                self._rings.remove(drv.ring)
        self.depth.forget(getattr(drv.ring, "name", ""))
        drv.ring.close()

    def close(self) -> None:
        super().close()
        with self._rings_lock:
            rings, self._rings = self._rings, []
        for ring in rings:
            ring.close()  # pyuring's close() has no thread check
        if self._aio is not None:
            self._aio.close()
            self._aio = None

    # --- batches ----------------------------------------------------------------------------

    def _run(self, tasks: list[Task], results: list[int]) -> None:
        drv = self._driver()
        batch = Batch(tasks, results)
        drv.add(batch)
        self._wait_batch(drv, batch)

    def _start(self, tasks: list[Task], results: list[int]) -> object:
        drv = self._driver()
        batch = Batch(tasks, results)
        drv.add(batch)
        return drv, batch, threading.get_ident()

    def _check_wait(self, handle: object) -> None:
        if handle[2] != threading.get_ident():  # type: ignore[index]
            raise StorageError("uring: a started batch must be waited for on the thread that "
                               "started it (its ring belongs to that thread)")

    def _wait(self, handle: object) -> None:
        drv, batch, _tid = cast("tuple[RingDriver, Batch, int]", handle)
        self._wait_batch(drv, batch)

    def _wait_batch(self, drv: RingDriver, batch: Batch) -> None:
        try:
            drv.wait(batch)
        finally:
            if drv.broken is not None and drv.idle:
                self._drop_ring(drv)

    # --- asyncio ----------------------------------------------------------------------------

    async def submit_async(self, ops: Sequence[IoOp],
                           loop: asyncio.AbstractEventLoop | None = None) -> list[int]:
        """Like ``submit`` but awaits completions on the event loop instead of blocking a
        thread. Must be called from the loop's thread; the ring belongs to that loop."""
        if self._closed:
            raise StorageError("uring: device is closed")
        loop = loop or asyncio.get_running_loop()
        if self._aio is None or self._aio.loop is not loop:
            if self._aio is not None:
                self._aio.close()
            self._aio = _AsyncRing(self._new_ring("asyncio"), loop, self._entries)
        results = [0] * len(ops)
        tasks: list[Task] = []
        for i, op in enumerate(ops):
            task = self._plan(i, op, results)
            if task is not None:
                tasks.append(task)
        try:
            await asyncio.gather(*(self._aio.run(t, results, self.settle) for t in tasks))
        finally:
            for t in tasks:
                self._finish(t, results)
        return results


def _prep(ring: PerOpRing, t: Task, ud: int) -> bool:
    """Queue the rest of ``t``; False when the ring's submission queue is full."""
    return ring.prep(t.write, t.fd, t.addr + t.done, t.length - t.done, t.offset + t.done, ud)


async def _await_io(fut: asyncio.Future[int]) -> int:
    """Await an op's completion. If the caller is cancelled, still wait until the kernel is done
    with the buffer (it may be a pooled bounce buffer or the caller's), then re-raise."""
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        for _ in range(_RING_RETRIES_MAX):
            if fut.done():
                break
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                continue
        raise


class _AsyncRing:
    """A ring driven by the event loop: ``ring_fd`` readable -> drain CQEs -> resolve futures."""

    def __init__(self, ring: PerOpRing, loop: asyncio.AbstractEventLoop, entries: int) -> None:
        self.ring = ring
        self.loop = loop
        self._futures: dict[int, asyncio.Future[int]] = {}
        self._next = 1
        self._slots = asyncio.Semaphore(entries)
        loop.add_reader(ring.ring_fd, self._drain)

    def _drain(self) -> None:
        while True:
            cqe = self.ring.peek()
            if cqe is None:
                return
            fut = self._futures.pop(cqe[0], None)
            if fut is not None and not fut.done():
                fut.set_result(cqe[1])

    async def run(self, t: Task, results: list[int], settle: Any) -> None:
        while True:
            async with self._slots:
                ud = self._next
                self._next += 1
                fut: asyncio.Future[int] = self.loop.create_future()
                self._futures[ud] = fut
                try:
                    if not _prep(self.ring, t, ud):  # cannot happen: the semaphore bounds it
                        raise OSError(errno.EBUSY, "submission queue full")
                    self.ring.flush()
                except OSError as e:
                    self._futures.pop(ud, None)
                    results[t.index] = -(e.errno or errno.EIO)
                    return
                self._drain()  # the CQE may already be posted before the fd is polled
                res = await _await_io(fut)
            if settle(t, res, results):
                return

    def close(self) -> None:
        for fut in self._futures.values():
            fut.cancel()
        self._futures.clear()
        try:
            self.loop.remove_reader(self.ring.ring_fd)
        except (RuntimeError, ValueError, OSError):
            pass  # the loop is already closed
        self.ring.close()
