"""Buffer helpers shared by the file devices: byte views, raw addresses, alignment checks.

The devices hand raw addresses to the kernel (io_uring SQEs, O_DIRECT). ``buffer_address`` gets
the address of *any* C-contiguous buffer, read-only ones included, through the buffer protocol
(``PyObject_GetBuffer`` via ``ctypes.pythonapi``): ``ctypes.c_char.from_buffer`` refuses
read-only views, and copying a read-only payload just to learn its address would cost a memcpy
per write. The address stays valid while the caller holds the memoryview, because a memoryview
keeps its exporter's buffer pinned (a bytearray under an export cannot resize).
"""

from __future__ import annotations

import ctypes
from typing import Any

from kvstore.engine.device import ALIGN


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


def byte_view(buf: Any) -> memoryview | None:
    """A 1-D unsigned-byte view of ``buf``; None when it is not C-contiguous."""
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if not view.c_contiguous:
        return None
    return view.cast("B")


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


def aligned(n: int) -> bool:
    return n % ALIGN == 0


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
