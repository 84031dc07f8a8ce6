"""RingDriver: one thread's ring, shared by every batch that thread has in flight.

A batch (``Batch``: tasks and their results) is *added* (as many SQEs as the ring has room for
are prepared and submitted together, and the call returns) and later *waited* for. While a
thread waits for one batch it reaps whatever completes on its ring, settles it into the batch it
belongs to (matched by ``user_data``) and refills the ring from the queue of every batch, the
refills going to the kernel with the next wait. So a caller can have the next batch in flight
while it prepares a third, and the ring never drains between batches.

A ring the driver cannot trust any more (a submission failed, or waiting raised) is *broken*:
the driver waits, best effort, for what the kernel still has (the buffers must not be reused
under it), fails every unfinished op with -EIO, and the device replaces the ring.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from collections.abc import Callable

from kvstore.errors import StorageError
from kvstore.io_uring.files import Task
from kvstore.io_uring.rings import RING_RETRIES_MAX, PerOpRing

log = logging.getLogger("kvstore.device")

Settle = Callable[[Task, int, list[int]], bool]


class Batch:
    __slots__ = ("tasks", "results", "left")

    def __init__(self, tasks: list[Task], results: list[int]) -> None:
        self.tasks = tasks
        self.results = results
        self.left = len(tasks)  # tasks not settled yet


class RingDriver:
    def __init__(self, ring: PerOpRing, entries: int, settle: Settle) -> None:
        self.ring = ring
        self.entries = entries
        self._settle = settle
        self._inflight: dict[int, tuple[Batch, Task]] = {}
        self._queue: deque[tuple[Batch, Task]] = deque()
        self._ud = 1
        self.broken: str | None = None  # why the device must replace this ring

    @property
    def idle(self) -> bool:
        return not self._inflight and not self._queue

    def add(self, batch: Batch) -> None:
        """Queue ``batch`` and hand the kernel as much of it as the ring takes, now."""
        if self.broken is not None:
            raise StorageError(f"uring: ring is broken ({self.broken})")
        self._queue.extend((batch, t) for t in batch.tasks)
        try:
            self._fill()
            self.ring.flush()
        except OSError as e:
            self._break(f"submission failed: {e}")

    def wait(self, batch: Batch) -> None:
        """Drive the ring until every task of ``batch`` is settled."""
        retries = 0
        try:
            while batch.left:
                self._fill()
                if not self._inflight:
                    if self.broken is None:  # nothing in flight but tasks unsettled: a bug
                        self._break("tasks queued with nothing in flight")
                    return
                try:
                    got, res = self.ring.flush_and_wait()  # refills go out with this wait
                    retries = 0
                except OSError as e:
                    retries += 1
                    if e.errno in (errno.EINTR, errno.EAGAIN) and retries < RING_RETRIES_MAX:
                        continue
                    raise StorageError(f"uring: waiting for completions failed: {e}") from e
                self._complete(got, res)
                while self._inflight:
                    nxt = self.ring.peek()
                    if nxt is None:
                        break
                    self._complete(nxt[0], nxt[1])
        except BaseException as e:
            self._break(f"waiting raised {e!r}")
            raise

    def _fill(self) -> None:
        while self._queue and len(self._inflight) < self.entries and self.broken is None:
            b, t = self._queue[0]
            ud = self._ud
            try:
                queued = self.ring.prep(t.write, t.fd, t.addr + t.done, t.length - t.done,
                                        t.offset + t.done, ud)
            except OSError as e:
                if e.errno == errno.EINTR and self._inflight:
                    return  # reap, then try again
                self._break(f"submission failed: {e}", errno_=e.errno or errno.EIO)
                return
            if not queued:
                if not self._inflight:
                    self._break("submission queue full with nothing in flight")
                return  # the SQ is full: reap, then refill
            self._queue.popleft()
            self._inflight[ud] = (b, t)
            self._ud = ud + 1

    def _complete(self, ud: int, res: int) -> None:
        entry = self._inflight.pop(ud, None)
        if entry is None:
            return  # a stale completion (cannot happen on a ring nobody else uses)
        b, t = entry
        if self._settle(t, res, b.results):
            b.left -= 1
        else:
            self._queue.appendleft((b, t))  # short I/O: resubmit the remainder first

    def _break(self, why: str, errno_: int = errno.EIO) -> None:
        """Stop using this ring: settle queued ops with -errno, wait for the kernel to finish
        the ones it has (best effort), settle those with -EIO."""
        if self.broken is None:
            log.warning("uring: %s; the ring will be replaced", why)
            self.broken = why
        while self._queue:
            b, t = self._queue.popleft()
            b.results[t.index] = -errno_
            b.left -= 1
        for _ in range(len(self._inflight)):
            try:
                got, res = self.ring.flush_and_wait()
            except OSError:
                break
            entry = self._inflight.pop(got, None)
            if entry is not None:  # it did complete: its real result (a short one fails)
                b, t = entry
                if not self._settle(t, res, b.results):
                    b.results[t.index] = -errno.EIO
                b.left -= 1
        for b, t in self._inflight.values():  # the kernel may still hold these: never reused
            b.results[t.index] = -errno.EIO
            b.left -= 1
        self._inflight.clear()
