"""PosixDevice: positional preadv/pwritev, O_DIRECT where the filesystem allows.

The fallback where io_uring is blocked (Docker's default seccomp profile, io_uring_disabled).
A batch runs op by op in the calling thread; the engine gets concurrency by calling from
several threads (os.preadv/os.pwritev release the GIL), which is as fast as io_uring for 2 MiB
blocks on these disks (see the notes on pyuring). Thread-safe: positional I/O shares no file
offset, and the handle table is locked.
"""

from __future__ import annotations

import ctypes
import errno
import os

from kvstore.io_uring.files import FileDevice, Task


class PosixDevice(FileDevice):
    name = "posix"

    def _run(self, tasks: list[Task], results: list[int]) -> None:
        for t in tasks:
            while True:
                view = _view_at(t.addr + t.done, t.length - t.done, t.write)
                try:
                    if t.write:
                        res = os.pwritev(t.fd, [view], t.offset + t.done)
                    else:
                        res = os.preadv(t.fd, [view], t.offset + t.done)
                except OSError as e:
                    res = -(e.errno or errno.EIO)
                if self.settle(t, res, results):
                    break


def _view_at(addr: int, n: int, write: bool) -> memoryview:
    """A memoryview over raw memory the task owns (caller buffer or bounce buffer).

    The caller's memoryview keeps that memory alive for the whole submit() call. For writes the
    view is made read-only, so a read-only source buffer is never exposed as writable.
    """
    view = memoryview((ctypes.c_char * n).from_address(addr)).cast("B")
    return view.toreadonly() if write else view
