"""Engine views a connection wrote to its socket without copying, kept until the kernel has
them: the bulk port and the Redis listener both send a pooled flash buffer as is, and the
buffer must not return to the pool while the transport still buffers bytes of it.

``LeaseHolder`` is the one implementation both protocols mix in. A lease is held with the
connection's byte count at the time of its write; once the transport's write buffer has
drained past that count the lease is released, checked by a short poll while any is held. A
closed connection releases everything (``release_held(all_=True)``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvstore.service import BlockLease

FLUSH_POLL_SECONDS = 0.0005


class LeaseHolder:
    """Mixed into an asyncio protocol that sets ``transport`` and ``closed`` and adds every byte
    it writes to ``_written``."""

    transport: asyncio.WriteTransport | None
    closed: bool

    def _init_held(self) -> None:
        self._written = 0
        self._held: deque[tuple[int, BlockLease]] = deque()
        self._poll: asyncio.TimerHandle | None = None

    def hold(self, lease: BlockLease) -> None:
        """Keep an engine view alive until the transport has flushed it (a stable DRAM view
        needs no holding: the bytes object it views lives as long as the buffer refers to it)."""
        t = self.transport
        if lease.stable or t is None or t.get_write_buffer_size() == 0 or self.closed:
            lease.release()
            return
        self._held.append((self._written, lease))
        self.release_held()

    def release_held(self, all_: bool = False) -> None:
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        pending = 0 if (all_ or self.transport is None) else self.transport.get_write_buffer_size()
        flushed = self._written - pending
        while self._held and (all_ or self._held[0][0] <= flushed):
            _, lease = self._held.popleft()
            with contextlib.suppress(Exception):
                lease.release()
        if self._held and not self.closed:
            self._poll = asyncio.get_running_loop().call_later(FLUSH_POLL_SECONDS,
                                                              self.release_held)
