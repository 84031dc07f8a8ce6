"""The device contract the engine writes through, an aligned buffer pool, and MemoryDevice.

A device does positional I/O on files named by the engine. Offsets and lengths the engine passes
are multiples of ``limits.io_alignment_bytes`` and buffers come from ``AlignedBuffer`` (page
aligned mmap), so every device may use O_DIRECT. Devices must be safe to call from several
threads at once (the server runs engine calls in a small thread pool): an io_uring device keeps a
ring per thread.

Implementations: ``MemoryDevice`` here (tests, no files), ``PosixDevice`` and ``UringDevice`` in
``kvstore.io_uring``. One contract test suite runs against all of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kvstore import limits
from kvstore.engine.lockfile import LOCK_FILE, DirLock, lock_dir, locked_message
from kvstore.errors import DataDirLocked, StorageError

ALIGN = limits.io_alignment_bytes


def align_up(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def is_aligned_view(buf: memoryview) -> bool:
    """True when ``buf`` starts on a page boundary (usable for O_DIRECT)."""
    import ctypes

    if buf.readonly:
        return False
    try:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    except (TypeError, ValueError):
        return False
    return addr % ALIGN == 0


# ------------------------------------------------------------------ raw addresses and copies
# ``buffer_address`` gets the address of *any* C-contiguous buffer, read-only ones included,
# through the buffer protocol (``c_char.from_buffer`` refuses read-only views); it stays valid
# while the caller holds the memoryview (a memoryview pins its exporter's buffer).

class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None

_PYBUF_SIMPLE = 0  # contiguous bytes, read-only allowed


def buffer_address(view: memoryview) -> int:
    """Address of the first byte of a C-contiguous buffer (read-only or writable)."""
    if view.nbytes == 0:
        return 0
    pb = _PyBuffer()
    if _get_buffer(view, ctypes.byref(pb), _PYBUF_SIMPLE) != 0:  # pragma: no cover - raises
        raise BufferError("buffer does not export a contiguous address")
    try:
        return int(pb.buf or 0)
    finally:
        _release_buffer(ctypes.byref(pb))


# Copies from this size up go through ctypes.memmove, which releases the GIL (a memoryview slice
# assignment holds it for the whole memcpy: ~0.3 ms per 2 MiB during which no other thread, a
# lock holder included, runs). Below it the ctypes call costs more than it frees.
_NOGIL_COPY_BYTES_MIN = 64 * 1024


def copy_into(dst: memoryview, src: memoryview) -> None:
    """``dst[:len(src)] = src`` for 1-D byte views, releasing the GIL for large copies."""
    n = src.nbytes
    if n > dst.nbytes:
        raise ValueError(f"copy of {n} bytes into {dst.nbytes}")
    if n < _NOGIL_COPY_BYTES_MIN or dst.readonly:
        dst[:n] = src
        return
    ctypes.memmove(buffer_address(dst), buffer_address(src), n)


def copy_out(src: memoryview) -> bytes | memoryview:
    """A read-only copy of ``src`` that owns its memory (a DRAM-tier entry), made with the GIL
    released from 64 KiB up. ``bytes(src)`` of a 2 MiB block held the GIL 0.1-1.2 ms (most of
    it faulting in the pages malloc hands back after the tier evicted an entry), stalling the
    event loop and every other writer meanwhile; the copy costs the same here, but off the
    GIL. Readers take it through ``memoryview`` as they take ``bytes`` (and a donated buffer).
    """
    n = src.nbytes
    if n < _NOGIL_COPY_BYTES_MIN:
        return bytes(src)
    dst = np.empty(n, dtype=np.uint8).data  # uninitialised: its pages are touched by the copy
    copy_into(dst, src.cast("B") if src.format != "B" else src)
    return dst.toreadonly()  # holds the array; its only other view goes with this frame


# x86-64 and arm64 (4 KiB pages) transparent huge page size: a hardware constant, not a bound.
THP_BYTES = 2 * 1024 * 1024


def _anon_map(size: int) -> tuple[mmap.mmap, int]:
    """A private anonymous mapping holding ``size`` bytes at a returned offset.

    Buffers of 2 MiB and more start on a 2 MiB boundary and are madvised MADV_HUGEPAGE, so the
    kernel backs them with physically contiguous huge pages: an O_DIRECT op from such a buffer is
    one block-layer segment list of a few entries instead of 512 scattered 4 KiB pages, which a
    virtio disk (max_segments 254) must split into 2-4 requests. On the 2-core VM disk this
    doubled 2 MiB device bandwidth (see docs/ARCHITECTURE.md). ``mmap.mmap(-1, n)`` alone would
    be MAP_SHARED, i.e. shmem, which never gets huge pages (shmem_enabled=never).
    """
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    m = mmap.mmap(-1, size, flags=flags)
    if size < THP_BYTES:
        return m, 0
    off = (-_map_address(m)) % THP_BYTES
    if off:  # not 2 MiB aligned (older kernels align only some large mappings): over-map
        m.close()
        m = mmap.mmap(-1, size + THP_BYTES, flags=flags)
        off = (-_map_address(m)) % THP_BYTES
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            m.madvise(advice, off, size // THP_BYTES * THP_BYTES)
        except OSError:
            pass  # THP unavailable here: ordinary pages, still correct
    return m, off


def _map_address(m: mmap.mmap) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(m))


class AlignedBuffer:
    """A page-aligned (2 MiB aligned and huge-page backed from 2 MiB up), writable buffer
    backed by a private anonymous mmap."""

    __slots__ = ("_map", "_off", "view", "size")

    def __init__(self, size: int) -> None:
        size = align_up(max(size, ALIGN))
        self._map, self._off = _anon_map(size)
        self.view = memoryview(self._map)[self._off : self._off + size]
        self.size = size

    def address(self) -> int:
        return _map_address(self._map) + self._off

    def close(self) -> None:
        self.view.release()
        try:
            self._map.close()
        except BufferError:
            # A slice of the view is still alive (e.g. in the traceback of a logged
            # CorruptRecord); the mapping goes when the last view does. Closing must not fail.
            pass


class BufferPool:
    """Reuses aligned buffers by power-of-two size class (fresh mmaps page-fault at ~1 GB/s).

    Bounded: at most ``limits.buffer_pool_idle_bytes_max`` bytes of idle buffers are kept
    (enough to cover a connection's in-flight window of 2 MiB blocks, so a busy bulk PUT does
    not map and fault fresh memory per block); extra releases are unmapped.
    """

    def __init__(self, idle_bytes_max: int = limits.buffer_pool_idle_bytes_max) -> None:
        self._idle: dict[int, list[AlignedBuffer]] = {}
        self._idle_bytes = 0
        self._idle_bytes_max = idle_bytes_max
        self._lock = threading.Lock()

    @staticmethod
    def _size_class(n: int) -> int:
        n = max(n, ALIGN)
        return 1 << (n - 1).bit_length()

    def acquire(self, nbytes: int) -> AlignedBuffer:
        cls = self._size_class(nbytes)
        with self._lock:
            free = self._idle.get(cls)
            if free:
                self._idle_bytes -= cls
                return free.pop()
        return AlignedBuffer(cls)

    def release(self, buf: AlignedBuffer) -> None:
        with self._lock:
            if self._idle_bytes + buf.size <= self._idle_bytes_max:
                self._idle.setdefault(buf.size, []).append(buf)
                self._idle_bytes += buf.size
                return
        buf.close()

    def close(self) -> None:
        with self._lock:
            for bufs in self._idle.values():
                for b in bufs:
                    b.close()
            self._idle.clear()
            self._idle_bytes = 0


@dataclass(frozen=True, slots=True)
class StagedPayload:
    """A put payload already in O_DIRECT-ready memory: ``view`` starts on a page boundary and
    is ``align_up(length)`` bytes long; the bytes past ``length`` are the caller's scratch. The
    engine writes such a payload straight from it (no copy into a record buffer)."""

    view: memoryview
    length: int


@dataclass(frozen=True, slots=True)
class IoOp:
    """One positional I/O in a batch: read into or write from ``buf`` at ``offset``."""

    handle: int
    offset: int
    buf: memoryview
    write: bool = False


class Pending:
    """A batch begun with ``Device.start``: ``wait()`` returns the per-op results ``submit``
    would have returned (and may be called again; it returns the same list)."""

    __slots__ = ("_results", "_finish")

    def __init__(self, results: list[int], finish: Callable[[], None] | None = None) -> None:
        self._results = results
        self._finish = finish

    def wait(self) -> list[int]:
        if self._finish is not None:
            self._finish()  # if it raises, a later wait() tries again
            self._finish = None
        return self._results


class Device(ABC):
    """Positional file I/O. Handles are small ints owned by the device."""

    name: str = "abstract"
    direct: bool = False  # True when O_DIRECT is in use

    @abstractmethod
    def open(self, path: str, *, create: bool = True) -> int: ...

    @abstractmethod
    def close_handle(self, handle: int) -> None: ...

    @abstractmethod
    def size(self, handle: int) -> int: ...

    @abstractmethod
    def truncate(self, handle: int, size: int) -> None: ...

    @abstractmethod
    def sync(self, handle: int) -> None: ...

    def allocate(self, handle: int, size: int) -> None:  # noqa: B027 - optional hook
        """Reserve blocks for the first ``size`` bytes (fallocate) so later O_DIRECT writes do
        not allocate as they go. A no-op where the device has no such thing."""

    @abstractmethod
    def submit(self, ops: Sequence[IoOp]) -> list[int]:
        """Run a batch; return per-op results: bytes moved, or ``-errno``. Never raises for an
        individual op's failure; raises StorageError only when the device itself is broken."""

    def start(self, ops: Sequence[IoOp]) -> Pending:
        """Begin a batch and return while it is in flight, where the device can (io_uring:
        SQEs submitted on the calling thread's ring; POSIX: the batch's thread pool), so the
        caller prepares the next batch meanwhile. ``wait()`` on the result, *from the same
        thread*, before touching the buffers again. Default: runs ``submit`` now."""
        return Pending(self.submit(ops))

    # Small-file and directory helpers (catalogs, segment summaries). Buffered, not hot path.
    def unlink(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def rename(self, old: str, new: str) -> None:
        """Atomically rename a file; open handles stay valid."""
        os.replace(old, new)

    def listdir(self, directory: str) -> list[str]:
        os.makedirs(directory, exist_ok=True)
        return sorted(os.listdir(directory))

    def read_file(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_file_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` so a crash leaves the old or the new file, never a mix."""
        tmp = path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError:  # e.g. a full file system: leave no partial file taking space
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.replace(tmp, path)
        dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def lock_dir(self, directory: str) -> DirLock:
        """Take the exclusive lock of a data directory (``lockfile.lock_dir``: a ``flock``
        held until released or the process ends); ``DataDirLocked`` when it is held."""
        return lock_dir(directory)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release rings, fds and threads held by the device."""

    # Convenience wrappers built on submit(); they raise StorageError on short or failed I/O.
    def write(self, handle: int, offset: int, buf: memoryview) -> None:
        (res,) = self.submit([IoOp(handle, offset, buf, write=True)])
        if res != len(buf):
            raise StorageError(f"{self.name}: write at {offset} returned {res}, wanted {len(buf)}")

    def read_into(self, handle: int, offset: int, buf: memoryview) -> int:
        """Read up to len(buf) bytes; returns bytes read (short only at end of file)."""
        (res,) = self.submit([IoOp(handle, offset, buf)])
        if res < 0:
            raise StorageError(f"{self.name}: read at {offset} failed with errno {-res}")
        return res


class MemoryDevice(Device):
    """Files as bytearrays keyed by path. For tests and for `--device memory`.

    Files survive close/open within one MemoryDevice, so tests can "restart" an engine on the
    same device and inject faults by editing ``files[path]`` directly.
    """

    name = "memory"

    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}
        self._handles: dict[int, str] = {}
        self._next = 1
        self._lock = threading.Lock()
        self._locked: set[str] = set()  # data directories held by an open engine

    def open(self, path: str, *, create: bool = True) -> int:
        with self._lock:
            if path not in self.files:
                if not create:
                    raise FileNotFoundError(path)
                self.files[path] = bytearray()
            h = self._next
            self._next += 1
            self._handles[h] = path
            return h

    def _file(self, handle: int) -> bytearray:
        try:
            return self.files[self._handles[handle]]
        except KeyError:
            raise StorageError(f"memory: bad handle {handle}") from None

    def close_handle(self, handle: int) -> None:
        with self._lock:
            self._handles.pop(handle, None)

    def size(self, handle: int) -> int:
        return len(self._file(handle))

    def truncate(self, handle: int, size: int) -> None:
        with self._lock:
            f = self._file(handle)
            if size < len(f):
                del f[size:]
            else:
                f.extend(bytes(size - len(f)))

    def sync(self, handle: int) -> None:
        self._file(handle)

    def unlink(self, path: str) -> None:
        with self._lock:
            self.files.pop(path, None)

    def rename(self, old: str, new: str) -> None:
        with self._lock:
            self.files[new] = self.files.pop(old)
            for h, path in self._handles.items():
                if path == old:
                    self._handles[h] = new

    def listdir(self, directory: str) -> list[str]:
        pre = directory.rstrip("/") + "/"
        return sorted(p[len(pre):] for p in self.files if p.startswith(pre) and "/" not in p[len(pre):])

    def read_file(self, path: str) -> bytes | None:
        f = self.files.get(path)
        return None if f is None else bytes(f)

    def write_file_atomic(self, path: str, data: bytes) -> None:
        with self._lock:
            self.files[path] = bytearray(data)

    def lock_dir(self, directory: str) -> DirLock:
        """The same contract as a file lock, within this device: one holder per directory."""
        path = os.path.join(directory, LOCK_FILE)
        with self._lock:
            if directory in self._locked:
                raise DataDirLocked(locked_message(directory, os.getpid(), path),
                                    data_dir=directory, pid=os.getpid())
            self._locked.add(directory)

        def release() -> None:
            with self._lock:
                self._locked.discard(directory)

        return DirLock(path, release)

    def submit(self, ops: Sequence[IoOp]) -> list[int]:
        out: list[int] = []
        with self._lock:
            for op in ops:
                f = self._file(op.handle)
                n = len(op.buf)
                if op.write:
                    end = op.offset + n
                    if end > len(f):
                        f.extend(bytes(end - len(f)))
                    f[op.offset:end] = op.buf
                    out.append(n)
                else:
                    chunk = f[op.offset:op.offset + n]
                    op.buf[: len(chunk)] = chunk
                    out.append(len(chunk))
        return out
