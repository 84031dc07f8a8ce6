"""One owner per data directory: an exclusive ``flock`` on ``<data_dir>/kvstore.lock``.

``Engine.open`` takes it before recovery and holds it until ``Engine.close``; a second opener
fails at once with ``DataDirLocked`` naming the directory and the holder's PID. Two engines
on one directory would both append to the same segment files at offsets the other does not
know, and each would recover only its own view: acknowledged blocks lost, ``check()`` happy.

``flock`` locks belong to the open file description, not the process, so a second open in the
same process is refused too, and the kernel drops the lock with the last descriptor: a crashed
or killed holder never leaves a stale lock behind. The file holds the holder's PID for the
error message only; the lock, not the file, is what counts, so the file is never removed (an
unlink racing an open would let two owners lock two different inodes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable

from kvstore.errors import DataDirLocked, StorageError

LOCK_FILE = "kvstore.lock"
_PID_BYTES_MAX = 32  # the PID line is a few digits; never read more than this


class DirLock:
    """A held data-directory lock. ``release()`` is idempotent."""

    def __init__(self, path: str, release: Callable[[], None]) -> None:
        self.path = path
        self._release: Callable[[], None] | None = release

    @property
    def held(self) -> bool:
        return self._release is not None

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def locked_message(data_dir: str, pid: int, path: str) -> str:
    holder = f"PID {pid}" if pid else "a process whose PID could not be read"
    return (f"data directory {data_dir!r} is already in use by {holder} (lock file {path}); "
            "one kvstore process per data directory")


def lock_dir(data_dir: str) -> DirLock:
    """Take the lock of ``data_dir`` (created if missing) or raise ``DataDirLocked`` at once."""
    path = os.path.join(data_dir, LOCK_FILE)
    try:
        os.makedirs(data_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open lock file {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise DataDirLocked(locked_message(data_dir, pid, path), data_dir=data_dir,
                            pid=pid) from None
    except OSError as exc:  # e.g. ENOLCK: a file system without flock
        os.close(fd)
        raise StorageError(f"cannot lock {path}: {exc.strerror or exc}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:  # the PID is for messages only; the lock is held either way
        pass
    return DirLock(path, lambda: _close(fd))


def _read_pid(fd: int) -> int:
    try:
        raw = os.pread(fd, _PID_BYTES_MAX, 0)
        return int(raw.split(b"\n", 1)[0])
    except (OSError, ValueError):
        return 0


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)  # closing the last descriptor drops the flock
