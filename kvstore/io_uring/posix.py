"""PosixDevice: positional preadv/pwritev, O_DIRECT where the filesystem allows.

The fallback where io_uring is blocked (Docker's default seccomp profile, io_uring_disabled).
os.preadv/os.pwritev release the GIL, so depth comes from threads: concurrent callers each run
their ops in their own thread, and one batch of several ops is spread over up to
``threads`` threads (the caller plus a small pool), so a single put_many keeps that many ops in
flight instead of running them one after another. Thread-safe: positional I/O shares no file
offset, and the handle table is locked.

``depth_stats()`` has two parts: ``callers`` (ops run on the calling threads) and ``pool``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from kvstore import limits
from kvstore.errors import StorageError
from kvstore.io_uring.depth import DepthGauge
from kvstore.io_uring.files import FileDevice, Task


class PosixDevice(FileDevice):
    name = "posix"

    def __init__(self, *, direct: bool = True,
                 threads: int = limits.posix_batch_threads) -> None:
        super().__init__(direct=direct)
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._threads = threads
        self._exec: ThreadPoolExecutor | None = None
        self._exec_lock = threading.Lock()
        self._callers = self.depth.part("callers")
        self._workers = self.depth.part("pool")

    def _executor(self) -> ThreadPoolExecutor:
        with self._exec_lock:
            if self._closed:
                raise StorageError("posix: device is closed")
            if self._exec is None:
                self._exec = ThreadPoolExecutor(self._threads - 1,
                                                thread_name_prefix="kvstore-posix-io")
            return self._exec

    def _run(self, tasks: list[Task], results: list[int]) -> None:
        stripes = min(len(tasks), self._threads)
        if stripes <= 1:
            self._run_stripe(tasks, results, self._callers)
            return
        pool = self._executor()
        futures: list[Future[None]] = [
            pool.submit(self._run_stripe, tasks[j::stripes], results, self._workers)
            for j in range(1, stripes)]
        try:
            self._run_stripe(tasks[0::stripes], results, self._callers)
        finally:
            # every stripe finishes before the caller's buffers may be reused or released
            errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e

    def _start(self, tasks: list[Task], results: list[int]) -> object:
        """Every stripe on the pool, so the caller returns while they run."""
        if self._threads == 1:  # no pool: the batch runs now
            return super()._start(tasks, results)
        stripes = min(len(tasks), self._threads - 1)
        pool = self._executor()
        return [pool.submit(self._run_stripe, tasks[j::stripes], results, self._workers)
                for j in range(stripes)]

    def _wait(self, handle: object) -> None:
        futures: list[Future[None]] = handle or []  # type: ignore[assignment]
        errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e

    def _run_stripe(self, tasks: list[Task], results: list[int], gauge: DepthGauge) -> None:
        for t in tasks:
            while True:
                view = _view_at(t.addr + t.done, t.length - t.done, t.write)
                gauge.submitted(1)
                try:
                    if t.write:
                        res = os.pwritev(t.fd, [view], t.offset + t.done)
                    else:
                        res = os.preadv(t.fd, [view], t.offset + t.done)
                except OSError as e:
                    res = -(e.errno or errno.EIO)
                finally:
                    gauge.completed()
                if self.settle(t, res, results):
                    break

    def close(self) -> None:
        self._closed = True  # no new batches; the pool finishes the ones it has
        with self._exec_lock:
            ex, self._exec = self._exec, None
        if ex is not None:
            ex.shutdown(wait=True)
        super().close()


def _view_at(addr: int, n: int, write: bool) -> memoryview:
    """A memoryview over raw memory the task owns (caller buffer or bounce buffer).

    The caller's memoryview keeps that memory alive for the whole submit() call. For writes the
    view is made read-only, so a read-only source buffer is never exposed as writable.
    """
    view = memoryview((ctypes.c_char * n).from_address(addr)).cast("B")
    return view.toreadonly() if write else view
