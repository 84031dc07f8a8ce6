"""An in-memory ``asyncio.Transport`` for driving uvicorn's HTTP protocol (and kvstore's
connection guard) without a socket: ``MemoryTransport``. For tests that look at what one
connection's requests leave behind, and for ``loadtest/profile_protocol.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any


class MemoryTransport(asyncio.Transport):
    """Collects what the protocol writes (each write's first ``keep_bytes`` bytes, or all of
    it); never pauses, never closes by itself."""

    def __init__(self, keep_bytes: int | None = None) -> None:
        super().__init__()
        self.keep_bytes = keep_bytes
        self.chunks: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        keep = self.keep_bytes
        self.chunks.append(bytes(data if keep is None else data[:keep]))

    def written(self) -> bytes:
        return b"".join(self.chunks)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0
