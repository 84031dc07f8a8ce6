"""The byte pipe under a connection: vectored send and ``recv_into``, sync and async.

The protocol generators (``_core``, ``_ops``, ``shm``, ``nixl``) yield two kinds of I/O: "send
these buffers in order" and "receive into this view". A ``Channel`` (blocking) or an
``AsyncChannel`` (asyncio) carries them out; ``drive`` and ``drive_async`` run a generator on
one. The ops never see a socket, so another transport (TLS, a Unix socket) is one more class
here: anything with ``send_all``, ``recv_into`` and ``close``.

Receives land in the memory the generator hands out (the caller's buffer, for a GET payload);
sends pass the caller's buffers as they are (``sendmsg``: nothing joined).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kvstore_client._core import RECV, SEND, Op

# sendmsg takes at most IOV_MAX (1024 on Linux) buffers per call.
IOV_MAX = 1024


class Channel(Protocol):
    """A connected, blocking byte pipe."""

    def send_all(self, bufs: Sequence[Any]) -> None:
        """Write every buffer, in order (vectored; nothing is joined)."""

    def recv_into(self, view: memoryview) -> int:
        """Receive once into ``view``; the byte count, 0 at EOF."""

    def close(self) -> None: ...


class AsyncChannel(Protocol):
    """A connected byte pipe driven by the running asyncio loop."""

    async def send_all(self, bufs: Sequence[Any]) -> None: ...

    async def recv_into(self, view: memoryview) -> int: ...

    def close(self) -> None: ...


def _views(bufs: Sequence[Any]) -> list[memoryview]:
    return [memoryview(b).cast("B") for b in bufs if len(b)]


class TcpChannel:
    """A blocking TCP socket (TCP_NODELAY); ``sendmsg`` of the caller's buffers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeout = sock.gettimeout()  # each wait's own bound

    @classmethod
    def connect(cls, host: str, port: int, timeout: float) -> TcpChannel:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def bound(self, remaining: float | None) -> None:
        """Bound the next waits by ``remaining`` seconds too (a caller's deadline); None: by
        the channel's own timeout only."""
        t = self.timeout
        if remaining is not None:
            t = remaining if t is None else min(t, remaining)
        self.sock.settimeout(t)

    def send_all(self, bufs: Sequence[Any]) -> None:
        views = _views(bufs)
        while views:
            n = self.sock.sendmsg(views[:IOV_MAX])
            while n and views:
                if n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][n:]
                    n = 0

    def recv_into(self, view: memoryview) -> int:
        return self.sock.recv_into(view)

    def close(self) -> None:
        self.sock.close()


class AsyncTcpChannel:
    """A non-blocking TCP socket driven by the loop's ``sock_*`` calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> AsyncTcpChannel:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send_all(self, bufs: Sequence[Any]) -> None:
        loop = asyncio.get_running_loop()
        for v in _views(bufs):
            await loop.sock_sendall(self.sock, v)

    async def recv_into(self, view: memoryview) -> int:
        return await asyncio.get_running_loop().sock_recv_into(self.sock, view)

    def close(self) -> None:
        self.sock.close()


# What a client connects with: (host, port, timeout) -> a connected channel.
Connector = Callable[[str, int, float], Channel]
AsyncConnector = Callable[[str, int, float], Any]  # -> Awaitable[AsyncChannel]


def drive(channel: Channel, op: Op, deadline: float | None = None) -> Any:
    """Run a protocol generator on a blocking channel; its return value. ``deadline``
    (``time.monotonic()`` seconds): every wait ends by then (``TimeoutError`` past it), on a
    channel that can bound its waits (``bound``)."""
    bound = getattr(channel, "bound", None) if deadline is not None else None
    try:
        req = next(op)
        while True:
            kind, arg = req
            if bound is not None:
                assert deadline is not None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("deadline passed")
                bound(remaining)
            if kind == RECV:
                res: Any = channel.recv_into(arg)
            elif kind == SEND:
                channel.send_all(arg)
                res = None
            else:
                raise AssertionError(kind)
            req = op.send(res)
    except StopIteration as stop:
        return stop.value
    finally:
        if bound is not None:
            bound(None)


async def drive_async(channel: AsyncChannel, op: Op) -> Any:
    """Run a protocol generator on an asyncio channel; its return value."""
    try:
        req = next(op)
        while True:
            kind, arg = req
            if kind == RECV:
                res: Any = await channel.recv_into(arg)
            elif kind == SEND:
                await channel.send_all(arg)
                res = None
            else:
                raise AssertionError(kind)
            req = op.send(res)
    except StopIteration as stop:
        return stop.value
