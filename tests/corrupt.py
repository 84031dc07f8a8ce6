"""Corrupt the bytes a bulk server sends, from the test side: the server's code has no hook.

``corrupt_reads(blocks, flip)`` wraps one ``BlockService``'s read calls (``open``, served on
the loop for DRAM hits, and ``lease``, the engine-thread read that socket, shm and NIXL GETs
use) so every lease it hands out carries ``flip(key, payload)`` instead of the stored bytes,
after the engine verified them: the transport then sends (or NIXL-writes) corrupted bytes with
the stored checksum, as a bad NIC, cable or DMA would, and the client must notice. Leaving the
``with`` block restores the service; the stored block is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from kvstore.service import BlockLease, BlockService

Flip = Callable[[str, memoryview], memoryview]


class _Corrupted:
    """A lease's view with another payload; everything else is the real view's."""

    def __init__(self, view: Any, payload: memoryview) -> None:
        self._view = view
        self.payload = payload

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)


def _corrupt(lease: BlockLease | None, key: str, flip: Flip) -> BlockLease | None:
    if lease is not None and not isinstance(lease.view, _Corrupted):  # open() may call lease()
        lease.view = _Corrupted(lease.view, flip(key, lease.view.payload))
    return lease


@contextlib.contextmanager
def corrupt_reads(blocks: BlockService, flip: Flip) -> Iterator[None]:
    open_, lease_ = blocks.open, blocks.lease

    def lease(ns: str, key: str) -> BlockLease | None:
        return _corrupt(lease_(ns, key), key, flip)

    def open(ns: str, key: str) -> asyncio.Future[BlockLease | None]:
        async def opened() -> BlockLease | None:
            return _corrupt(await open_(ns, key), key, flip)
        return asyncio.ensure_future(opened())

    blocks.lease = lease  # type: ignore[method-assign]
    blocks.open = open  # type: ignore[method-assign]
    try:
        yield
    finally:
        del blocks.lease, blocks.open  # the class's methods again


def flip_byte(at: int, mask: int = 0xFF) -> Flip:
    """A ``Flip`` that xors one byte of every payload (at ``at`` modulo its length)."""
    def flip(key: str, payload: memoryview) -> memoryview:
        b = bytearray(payload)
        b[at % len(b)] ^= mask
        return memoryview(b)
    return flip
