"""TLS to a bulk port served with ``kvstore serve --tls-cert/--tls-key`` (one more Channel).

Every client takes the same arguments and turns them into one ``ssl.SSLContext``::

    Client(host, port, namespace="ns", tls=True, ca="ca.pem")              # verify with ca.pem
    Client(host, port, namespace="ns", tls=True)                           # system trust store
    Client(..., tls=True, ca="ca.pem", cert="client.pem", key="client.key")  # mutual TLS
    Client(..., tls=my_ssl_context)                                        # yours, as it is

The server's certificate is always verified (hostname included: a certificate for 127.0.0.1
needs that IP in its subjectAltName). ``ca=`` alone turns TLS on.

``TlsChannel`` wraps a blocking socket (``sendall`` per buffer: an SSL socket has no
``sendmsg``); ``AsyncTlsChannel`` is an asyncio stream (the loop's ``sock_*`` calls do not speak
TLS), so an async receive is copied once from the stream into the caller's view.

shm and NIXL (``ShmClient``, ``NixlClient``) take ``connect=tls_connector(ctx)`` for their
control connection; their payloads never cross the network (same-host memory, or the NIXL
agent's own transport), so TLS does not cover them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence
from typing import Any

from kvstore_client.channel import AsyncConnector, Connector, TcpChannel

# An asyncio stream's buffer: reads up to this much ahead of the protocol.
_STREAM_LIMIT_BYTES = 4 << 20

TlsArg = bool | ssl.SSLContext


def client_context(tls: TlsArg = False, ca: str | None = None, cert: str | None = None,
                   key: str | None = None) -> ssl.SSLContext | None:
    """The context the arguments ask for; None: plain TCP."""
    if isinstance(tls, ssl.SSLContext):
        if ca or cert or key:
            raise ValueError("give ca/cert/key or an SSLContext as tls=, not both")
        return tls
    if not tls and ca is None and cert is None:
        return None
    if key is not None and cert is None:
        raise ValueError("key= needs cert= (the client certificate for mutual TLS)")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


class TlsChannel(TcpChannel):
    """A blocking TLS socket over TCP (TCP_NODELAY)."""

    @classmethod
    def connect_tls(cls, host: str, port: int, timeout: float,
                    ctx: ssl.SSLContext) -> TlsChannel:
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = ctx.wrap_socket(raw, server_hostname=host)  # handshake, bounded by timeout
        except BaseException:
            raw.close()
            raise
        return cls(sock)

    def send_all(self, bufs: Sequence[Any]) -> None:
        for b in bufs:
            if len(b):
                self.sock.sendall(memoryview(b).cast("B"))


class AsyncTlsChannel:
    """An asyncio TLS stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect_tls(cls, host: str, port: int, timeout: float,
                          ctx: ssl.SSLContext) -> AsyncTlsChannel:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=host, limit=_STREAM_LIMIT_BYTES,
            ssl_handshake_timeout=timeout), timeout)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return cls(reader, writer)

    async def send_all(self, bufs: Sequence[Any]) -> None:
        self.writer.writelines([memoryview(b).cast("B") for b in bufs if len(b)])
        await self.writer.drain()

    async def recv_into(self, view: memoryview) -> int:
        data = await self.reader.read(len(view))
        n = len(data)
        view[:n] = data
        return n

    def close(self) -> None:
        self.writer.close()


def tls_connector(ctx: ssl.SSLContext) -> Connector:
    """``connect=`` for the blocking clients (Client, ShmClient, NixlClient)."""
    def connect(host: str, port: int, timeout: float) -> TlsChannel:
        return TlsChannel.connect_tls(host, port, timeout, ctx)
    return connect


def async_tls_connector(ctx: ssl.SSLContext) -> AsyncConnector:
    """``connect=`` for AsyncClient."""
    async def connect(host: str, port: int, timeout: float) -> AsyncTlsChannel:
        return await AsyncTlsChannel.connect_tls(host, port, timeout, ctx)
    return connect
