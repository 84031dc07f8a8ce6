"""Buffer helpers shared by the file devices: byte views, raw addresses, alignment checks.

The devices hand raw addresses to the kernel (io_uring SQEs, O_DIRECT). ``buffer_address`` gets
the address of *any* C-contiguous buffer, read-only ones included, through the buffer protocol
(``PyObject_GetBuffer`` via ``ctypes.pythonapi``): ``ctypes.c_char.from_buffer`` refuses
read-only views, and copying a read-only payload just to learn its address would cost a memcpy
per write. The address stays valid while the caller holds the memoryview, because a memoryview
keeps its exporter's buffer pinned (a bytearray under an export cannot resize).
"""

from __future__ import annotations

from typing import Any

# buffer_address and copy_into live with AlignedBuffer in engine.device (the engine's own
# payload copies use them, and the engine may not import io_uring); re-exported here.
from kvstore.engine.device import ALIGN, buffer_address, copy_into

__all__ = ["aligned", "buffer_address", "byte_view", "copy_into"]


def byte_view(buf: Any) -> memoryview | None:
    """A 1-D unsigned-byte view of ``buf``; None when it is not C-contiguous."""
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if not view.c_contiguous:
        return None
    return view.cast("B")


def aligned(n: int) -> bool:
    return n % ALIGN == 0
