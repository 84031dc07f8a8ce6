"""What the POSIX and io_uring devices share: the handle table, O_DIRECT with a buffered
fallback, and turning a batch of ``IoOp`` into kernel-ready tasks (bouncing where needed).

Rules for every op, so the device contract holds for *any* memoryview:

- O_DIRECT needs the file offset, the length and the buffer address aligned to
  ``limits.io_alignment_bytes``. Aligned offset and length but an unaligned (or read-only and
  unaligned) buffer: the op goes through a page-aligned bounce buffer from the device's
  ``BufferPool`` (one memcpy). Unaligned offset or length: the op runs synchronously on a second,
  buffered fd of the same file (the kernel keeps page cache and direct I/O coherent: a direct
  read or write first flushes and invalidates the cached range).
- Read-only buffers are fine for writes (their address comes from the buffer protocol); a read
  into a read-only buffer answers ``-EFAULT``.
- A bad handle answers ``-EBADF`` from ``submit`` and ``StorageError`` from the other calls.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from kvstore.engine.device import (
    ALIGN,
    AlignedBuffer,
    BufferPool,
    Device,
    IoOp,
    Pending,
    align_up,
)
from kvstore.errors import StorageError
from kvstore.io_uring.buffers import aligned, buffer_address, byte_view, copy_into
from kvstore.io_uring.depth import DeviceDepth

log = logging.getLogger("kvstore.device")

# Rounds of resubmitting the remainder of a short read or write before giving up on an op. A
# regular file returns short only at end of file or on a signal, so a handful is plenty.
SHORT_IO_ROUNDS_MAX = 64


@dataclass(slots=True)
class _File:
    path: str
    fd: int
    direct: bool
    flags: int
    buffered_fd: int = -1  # opened on the first unaligned op of an O_DIRECT file


@dataclass(slots=True)
class Task:
    """One op ready for the kernel: raw address and length, and where its result goes."""

    index: int
    fd: int
    offset: int
    addr: int
    length: int
    write: bool
    direct: bool
    done: int = 0  # bytes moved so far (short I/O resumes from here)
    rounds: int = 0
    bounce: AlignedBuffer | None = None
    target: memoryview | None = None  # read bounce: copy bounce[:done] here at the end
    want: int = 0  # bytes the caller asked for (a read bounce may read a rounded-up length)


class FileDevice(Device):
    """Base for devices on real files. Subclasses implement ``_run(tasks, results)``."""

    def __init__(self, *, direct: bool = True) -> None:
        self.direct = direct
        self._want_direct = direct
        self._files: dict[int, _File] = {}
        self._next = 1
        self._lock = threading.Lock()
        self._pool = BufferPool()
        self._closed = False
        self.depth = DeviceDepth()  # what is really in flight: per ring (or worker) and total

    def depth_stats(self) -> dict[str, object]:
        """In-flight ops since the last ``reset_depth``: ``total`` and per ``parts`` (ring or
        worker), each with ``inflight``, ``peak``, time-weighted ``mean`` and ``mean_busy``,
        ``ops`` and ``submits`` (submission calls)."""
        return self.depth.stats()

    def reset_depth(self) -> None:
        self.depth.reset()

    # --- files ------------------------------------------------------------------------------

    def open(self, path: str, *, create: bool = True) -> int:
        if self._closed:
            raise StorageError(f"{self.name}: device is closed")
        flags = os.O_RDWR | (os.O_CREAT if create else 0) | getattr(os, "O_CLOEXEC", 0)
        direct = False
        fd = -1
        if self._want_direct and hasattr(os, "O_DIRECT"):
            try:
                fd = os.open(path, flags | os.O_DIRECT, 0o644)
                direct = True
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                log.warning("%s: O_DIRECT refused for %s (%s); using buffered I/O",
                            self.name, path, e.strerror)
                self.direct = False
        if fd < 0:
            fd = os.open(path, flags, 0o644)
        with self._lock:
            h = self._next
            self._next += 1
            self._files[h] = _File(path, fd, direct, flags)
        return h

    def _file(self, handle: int) -> _File:
        f = self._files.get(handle)
        if f is None:
            raise StorageError(f"{self.name}: bad handle {handle}")
        return f

    def close_handle(self, handle: int) -> None:
        with self._lock:
            f = self._files.pop(handle, None)
        if f is not None:
            os.close(f.fd)
            if f.buffered_fd >= 0:
                os.close(f.buffered_fd)

    def size(self, handle: int) -> int:
        return os.fstat(self._file(handle).fd).st_size

    def truncate(self, handle: int, size: int) -> None:
        try:
            os.ftruncate(self._file(handle).fd, size)
        except OSError as e:
            raise StorageError(f"{self.name}: truncate failed: {e}") from e

    def allocate(self, handle: int, size: int) -> None:
        try:
            os.posix_fallocate(self._file(handle).fd, 0, size)
        except OSError as e:  # not supported here (or out of space): appends allocate instead
            log.info("%s: fallocate of %d bytes not done: %s", self.name, size, e)

    def sync(self, handle: int) -> None:
        try:
            os.fdatasync(self._file(handle).fd)
        except OSError as e:
            raise StorageError(f"{self.name}: sync failed: {e}") from e

    def close(self) -> None:
        self._closed = True
        with self._lock:
            files = list(self._files.values())
            self._files.clear()
        for f in files:
            os.close(f.fd)
            if f.buffered_fd >= 0:
                os.close(f.buffered_fd)
        self._pool.close()

    def _buffered_fd(self, f: _File) -> int:
        if not f.direct:
            return f.fd
        with self._lock:
            if f.buffered_fd < 0:
                f.buffered_fd = os.open(f.path, f.flags & ~os.O_CREAT)
            return f.buffered_fd

    # --- batches ----------------------------------------------------------------------------

    def _plan_batch(self, ops: Sequence[IoOp]) -> tuple[list[Task], list[int]]:
        if self._closed:
            raise StorageError(f"{self.name}: device is closed")
        results = [0] * len(ops)
        tasks: list[Task] = []
        for i, op in enumerate(ops):
            task = self._plan(i, op, results)
            if task is not None:
                tasks.append(task)
        return tasks, results

    def submit(self, ops: Sequence[IoOp]) -> list[int]:
        tasks, results = self._plan_batch(ops)
        try:
            if tasks:
                self._run(tasks, results)
        finally:
            for t in tasks:
                self._finish(t, results)
        return results

    def start(self, ops: Sequence[IoOp]) -> Pending:
        tasks, results = self._plan_batch(ops)
        if not tasks:
            return Pending(results)
        try:
            handle = self._start(tasks, results)
        except BaseException:
            for t in tasks:
                self._finish(t, results)
            raise

        def finish() -> None:
            self._check_wait(handle)  # raises before anything is settled or released
            try:
                self._wait(handle)
            finally:
                for t in tasks:
                    self._finish(t, results)

        return Pending(results, finish)

    def _start(self, tasks: list[Task], results: list[int]) -> object:
        """Begin ``tasks``; returns what ``_wait`` needs. Default: all of it, now."""
        self._run(tasks, results)
        return None

    def _wait(self, handle: object) -> None:
        """Finish what ``_start`` began."""

    def _check_wait(self, handle: object) -> None:
        """Raise StorageError if ``handle`` cannot be waited for from here."""

    def _plan(self, i: int, op: IoOp, results: list[int]) -> Task | None:
        """Turn one op into a Task, or settle it here (errors, empty and unaligned ops)."""
        f = self._files.get(op.handle)
        if f is None:
            results[i] = -errno.EBADF
            return None
        view = byte_view(op.buf)
        if view is None or op.offset < 0:
            results[i] = -errno.EINVAL
            return None
        if not op.write and view.readonly:
            results[i] = -errno.EFAULT
            return None
        n = view.nbytes
        if n == 0:
            return None
        if f.direct and not (aligned(op.offset) and aligned(n)):
            results[i] = self._buffered_io(f, op.offset, view, op.write)
            return None
        addr = buffer_address(view)
        task = Task(i, f.fd, op.offset, addr, n, op.write, f.direct, want=n)
        if f.direct and not aligned(addr):
            bounce = self._pool.acquire(align_up(n))
            task.bounce = bounce
            task.addr = bounce.address()
            if op.write:
                copy_into(bounce.view, view)
            else:
                task.target = view
        return task

    def _buffered_io(self, f: _File, offset: int, view: memoryview, write: bool) -> int:
        """Synchronous buffered I/O for ops O_DIRECT cannot express (unaligned offset/length)."""
        try:
            fd = self._buffered_fd(f)
            done = 0
            for _ in range(SHORT_IO_ROUNDS_MAX):
                if write:
                    n = os.pwrite(fd, view[done:], offset + done)
                else:
                    n = os.preadv(fd, [view[done:]], offset + done)
                if n <= 0:
                    break
                done += n
                if done == view.nbytes:
                    break
            if write and done != view.nbytes:
                return -errno.EIO
            return done
        except OSError as e:
            return -(e.errno or errno.EIO)

    def _finish(self, t: Task, results: list[int]) -> None:
        if t.bounce is None:
            return
        if t.target is not None and results[t.index] > 0:
            n = min(results[t.index], t.want)
            copy_into(t.target, t.bounce.view[:n])
            results[t.index] = n
        self._pool.release(t.bounce)
        t.bounce = None

    @staticmethod
    def settle(t: Task, res: int, results: list[int]) -> bool:
        """Account one completion for ``t``. True when the op is finished, False to resubmit
        the remainder (``t.done`` advanced)."""
        if res < 0:
            results[t.index] = res  # even after partial progress: the op failed
            return True
        t.done += res
        t.rounds += 1
        if t.done >= t.length:
            results[t.index] = t.done
            return True
        if res == 0 or t.rounds >= SHORT_IO_ROUNDS_MAX:
            # reads: end of file; writes: the kernel would not take more bytes
            results[t.index] = -errno.EIO if t.write else t.done
            return True
        if t.direct and not aligned(res):
            # O_DIRECT returns an unaligned count only at end of file
            results[t.index] = -errno.EIO if t.write else t.done
            return True
        return False

    @abstractmethod
    def _run(self, tasks: list[Task], results: list[int]) -> None:
        """Move every task's bytes; store each final result with ``settle``."""


__all__ = ["ALIGN", "FileDevice", "Task", "SHORT_IO_ROUNDS_MAX"]
