"""asyncio client for the bulk port: same calls as ``Client``, awaitable.

Drives the same protocol generators as the sync client on an ``AsyncChannel``
(``kvstore_client.channel``: by default the loop's ``sock_recv_into`` straight into caller
memory and ``sock_sendall`` per buffer, nothing joined).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from kvstore_wire import limits
from kvstore_wire import messages as msg
from kvstore_wire.frames import FrameType

from kvstore_client import _ops
from kvstore_client._core import Core, Op
from kvstore_client.channel import AsyncChannel, AsyncConnector, AsyncTcpChannel, drive_async
from kvstore_client.client import is_retryable
from kvstore_client.tls import TlsArg, async_tls_connector, client_context


class AsyncConnection:
    def __init__(self, channel: AsyncChannel) -> None:
        self.channel = channel
        self.core = Core()

    @classmethod
    async def open(cls, host: str, port: int, access_key: str, secret_key: str, namespace: str,
                   *, create: bool, timeout: float,
                   connect: AsyncConnector = AsyncTcpChannel.connect) -> AsyncConnection:
        self = cls(await connect(host, port, timeout))
        try:
            await asyncio.wait_for(
                self.run(self.core.handshake(access_key, secret_key, namespace, create)), timeout)
        except BaseException:
            self.channel.close()
            raise
        return self

    async def run(self, op: Op) -> Any:
        return await drive_async(self.channel, op)

    def close(self) -> None:
        self.channel.close()


class AsyncClient:
    """Each call borrows a pooled connection; safe to use from many tasks of one loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8701, *, namespace: str,
                 access_key: str = "dev", secret_key: str = "", create: bool = False,
                 timeout: float = 30.0, pool_size: int = 4, retries: int = 2,
                 backoff_seconds: float = 0.05,
                 connect: AsyncConnector = AsyncTcpChannel.connect,
                 tls: TlsArg = False, ca: str | None = None, cert: str | None = None,
                 key: str | None = None) -> None:
        self.host, self.port, self.namespace = host, port, namespace
        ctx = client_context(tls, ca, cert, key)  # TLS: kvstore_client.tls
        self._channel = connect if ctx is None else async_tls_connector(ctx)
        self._creds = (access_key, secret_key)
        self._create = create
        self.timeout = timeout
        self.pool_size = max(1, min(pool_size, limits.connections_max))
        self.retries = max(0, min(retries, 10))
        self.backoff_seconds = backoff_seconds
        self._idle: list[AsyncConnection] = []
        self._closed = False

    async def _call(self, make: Callable[[Core], Op]) -> Any:
        attempt = 0
        while True:
            conn = self._idle.pop() if self._idle else None
            try:
                if conn is None:
                    conn = await AsyncConnection.open(
                        self.host, self.port, *self._creds, self.namespace,
                        create=self._create, timeout=self.timeout, connect=self._channel)
                result = await asyncio.wait_for(conn.run(make(conn.core)), self.timeout)
            except BaseException as exc:
                if conn is not None and not conn.core.usable:
                    conn.close()
                    conn = None
                self._give_back(conn)
                if not is_retryable(exc) or attempt >= self.retries:
                    raise
                attempt += 1
                await asyncio.sleep(self.backoff_seconds * (2 ** (attempt - 1)))
                continue
            self._give_back(conn)
            return result

    def _give_back(self, conn: AsyncConnection | None) -> None:
        if conn is None:
            return
        if not self._closed and conn.core.usable and len(self._idle) < self.pool_size:
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ping(self) -> float:
        t0 = time.perf_counter()
        await self._call(lambda c: c.request(FrameType.PING, msg.Empty()))
        return time.perf_counter() - t0

    async def stats(self) -> dict[str, Any]:
        r = await self._call(lambda c: c.request(FrameType.STATS, msg.Empty()))
        return r.to_header()

    async def key_salt(self) -> str:
        """The tenant's salt token the server named at AUTH (``Client.key_salt``)."""
        return str(await self._call(lambda c: c.salt_op()))

    async def put(self, key: str, value: Any, *, ttl_seconds: float = 0.0,
                  overwrite: bool = False) -> bool:
        """Write-once like ``Client.put``: a stored key keeps its bytes (False) unless
        ``overwrite=True``."""
        return (await self.put_many([key], [value], ttl_seconds=ttl_seconds,
                                    overwrite=overwrite))[0]

    async def put_many(self, keys: Sequence[str], values: Sequence[Any], *,
                       ttl_seconds: float = 0.0, overwrite: bool = False,
                       metas: Sequence[bytes] | None = None) -> list[bool]:
        """Same answers as ``Client.put_many``: blocks are write-once (a present key keeps its
        bytes, result False) unless ``overwrite=True`` replaces them (result True when written,
        False when the stored block was already identical). ``metas[i]``: opaque metadata
        (at most ``limits.block_meta_bytes_max`` bytes) stored with keys[i]; ``get_record``
        reads it back."""
        return await self._call(lambda c: _ops.put_many(c, keys, values, ttl_seconds, overwrite,
                                                        metas))

    async def get_record(self, key: str) -> tuple[bytes, bytes, float, float] | None:
        """(bytes, stored metadata, creation time, expiry or 0) of one block, or None on a
        miss. A server that predates metadata on the wire answers b"", 0.0 and 0.0."""
        r = (await self._call(lambda c: _ops.get_many_into(c, [key], None, with_meta=True)))[0]
        return None if r is None else (bytes(r[0]), r[1], r[2], r[3])

    async def get(self, key: str) -> bytes | None:
        r = (await self._call(lambda c: _ops.get_many_into(c, [key], None)))[0]
        return None if r is None else bytes(r)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        got = await self._call(lambda c: _ops.get_many_into(c, keys, None))
        return [None if r is None else bytes(r) for r in got]

    async def get_into(self, key: str, buf: Any) -> int | None:
        return (await self.get_many_into([key], [buf]))[0]

    async def get_many_into(self, keys: Sequence[str], bufs: Sequence[Any]) -> list[int | None]:
        return await self._call(lambda c: _ops.get_many_into(c, keys, bufs))

    async def exists_many(self, keys: Sequence[str]) -> list[bool]:
        return await self._call(lambda c: _ops.keyed(c, FrameType.EXISTS_BATCH, "exists", keys))

    async def delete_many(self, keys: Sequence[str]) -> int:
        return await self._call(lambda c: _ops.keyed(c, FrameType.DELETE_BATCH, "deleted", keys))

    async def prefetch(self, keys: Sequence[str]) -> int:
        return await self._call(lambda c: _ops.keyed(c, FrameType.PREFETCH, "staged", keys))

    async def lookup(self, keys: Sequence[str], *, lease_seconds: float = 0.0) -> int:
        return await self._call(lambda c: _ops.lookup(c, keys, lease_seconds))
