"""Blocking client for the kvstore bulk port, with a connection pool and bounded retries.

::

    from kvstore_client import Client
    with Client("127.0.0.1", 8701, namespace="llama-3-8b", create=True) as c:
        c.put("k1", b"...")
        buf = bytearray(2 << 20)
        n = c.get_into("k1", buf)

Payloads of GET land straight in the caller's buffer (``socket.recv_into`` on slices of it);
PUT sends the caller's buffers with ``sendmsg`` (no joined copy). Every block's xxh3-64 travels
with it: the server verifies on PUT, the client verifies on GET.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kvstore_wire import limits
from kvstore_wire import messages as msg
from kvstore_wire.errors import KVStoreError
from kvstore_wire.frames import FrameType

from kvstore_client import _ops
from kvstore_client._core import Core, Op
from kvstore_client.channel import Channel, Connector, TcpChannel, drive
from kvstore_client.tls import TlsArg, client_context, tls_connector

__all__ = ["Client", "SyncConnection", "deadline", "drive", "is_retryable"]

_local = threading.local()


class deadline:  # noqa: N801 - used as a function: ``with deadline(seconds):``
    """``with deadline(seconds):`` every ``Client`` call made on this thread inside the block
    ends within ``seconds`` of entering it, however many waits it takes (connect, handshake,
    each batch): past it the call raises ``TimeoutError``. A connection left mid-answer is
    closed, not pooled. Nested blocks keep the earlier deadline."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + max(0.0, seconds)
        self._outer: float | None = None

    def __enter__(self) -> deadline:
        self._outer = getattr(_local, "at", None)
        if self._outer is not None:
            self.at = min(self.at, self._outer)
        _local.at = self.at
        return self

    def __exit__(self, *exc: object) -> None:
        _local.at = self._outer


def _remaining(at: float | None, timeout: float) -> float:
    """The connect/handshake bound: the timeout, cut to what is left of the deadline."""
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return min(timeout, left)


class SyncConnection:
    """One authenticated connection over a ``Channel`` (TCP unless ``connect`` says else)."""

    def __init__(self, host: str, port: int, access_key: str, secret_key: str, namespace: str,
                 *, create: bool = False, timeout: float = 30.0,
                 connect: Connector = TcpChannel.connect, at: float | None = None) -> None:
        self.channel: Channel = connect(host, port, _remaining(at, timeout))
        if isinstance(self.channel, TcpChannel):
            self.channel.timeout = timeout  # the connect may have been cut by the deadline
        self.core = Core()
        try:
            drive(self.channel, self.core.handshake(access_key, secret_key, namespace, create),
                  at)
        except BaseException:
            self.channel.close()
            raise

    @property
    def sock(self) -> socket.socket:
        """The TCP socket under the channel (tests and tools that poke at it)."""
        return self.channel.sock  # type: ignore[attr-defined]

    def run(self, op: Op, at: float | None = None) -> Any:
        return drive(self.channel, op, at)

    def close(self) -> None:
        self.channel.close()


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, KVStoreError):
        return exc.retryable
    return isinstance(exc, (ConnectionError, TimeoutError, socket.timeout))


class Client:
    """Thread-safe: each call borrows a pooled connection."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8701, *, namespace: str,
                 access_key: str = "dev", secret_key: str = "", create: bool = False,
                 timeout: float = 30.0, pool_size: int = 4, retries: int = 2,
                 backoff_seconds: float = 0.05, connect: Connector = TcpChannel.connect,
                 tls: TlsArg = False, ca: str | None = None, cert: str | None = None,
                 key: str | None = None) -> None:
        self.host, self.port, self.namespace = host, port, namespace
        ctx = client_context(tls, ca, cert, key)  # TLS: kvstore_client.tls
        self._channel = connect if ctx is None else tls_connector(ctx)
        self._creds = (access_key, secret_key)
        self._create = create
        self.timeout = timeout
        self.pool_size = max(1, min(pool_size, limits.connections_max))
        self.retries = max(0, min(retries, 10))
        self.backoff_seconds = backoff_seconds
        self._idle: list[SyncConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- pool and retries ----------------------------------------------------------------
    def _connect(self, at: float | None = None) -> SyncConnection:
        return SyncConnection(self.host, self.port, *self._creds, self.namespace,
                              create=self._create, timeout=self.timeout, connect=self._channel,
                              at=at)

    def _call(self, make: Callable[[Core], Op]) -> Any:
        attempt = 0
        at: float | None = getattr(_local, "at", None)  # ``with deadline(...)`` on this thread
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            try:
                if conn is None:
                    conn = self._connect(at)
                result = conn.run(make(conn.core), at)
            except BaseException as exc:
                if conn is not None and not conn.core.usable:  # mid-stream: state unknown
                    conn.close()
                    conn = None
                self._give_back(conn)
                if not is_retryable(exc) or attempt >= self.retries:
                    raise
                attempt += 1
                time.sleep(self.backoff_seconds * (2 ** (attempt - 1)))
                continue
            self._give_back(conn)
            return result

    def _give_back(self, conn: SyncConnection | None) -> None:
        if conn is None:
            return
        with self._lock:
            if not self._closed and conn.core.usable and len(self._idle) < self.pool_size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API -----------------------------------------------------------------------------
    def ping(self) -> float:
        t0 = time.perf_counter()
        self._call(lambda c: c.request(FrameType.PING, msg.Empty()))
        return time.perf_counter() - t0

    def stats(self) -> dict[str, Any]:
        r = self._call(lambda c: c.request(FrameType.STATS, msg.Empty()))
        return r.to_header()

    def key_salt(self) -> str:
        """The tenant's salt token the server named at AUTH (connecting if no connection is
        pooled): ``Layout.salted(token)`` is the layout whose fingerprint the server records
        for this tenant, so keys chained from it never meet another tenant's for the same
        prompt (unless both share a ``key_salt``). "" in development mode, and from a server
        that predates it."""
        return str(self._call(lambda c: c.salt_op()))

    def put(self, key: str, value: Any, *, ttl_seconds: float = 0.0,
            overwrite: bool = False) -> bool:
        """Store one block; see ``put_many``. Write-once: a key that is already stored keeps its
        bytes and this returns False, unless ``overwrite=True``."""
        return self.put_many([key], [value], ttl_seconds=ttl_seconds, overwrite=overwrite)[0]

    def put_many(self, keys: Sequence[str], values: Sequence[Any], *,
                 ttl_seconds: float = 0.0, overwrite: bool = False) -> list[bool]:
        """Store blocks. Blocks are write-once on purpose: a key names its content (a chained
        hash of the tokens), so a second PUT of a stored key writes nothing and the stored
        bytes stay, where S3 PutObject would replace them.

        Without ``overwrite``, result[i] is True when keys[i] was stored by this call and False
        when it was already present (its old bytes kept, nothing written).

        ``overwrite=True`` is for callers that mean to replace: result[i] is True when these
        bytes were written (the key was new or its block was replaced) and False when nothing
        was written because the stored block already has the same length and checksum (its
        ttl is not renewed) or another PUT of the same key was being written at that moment
        and stands. A new key and a replaced block both answer True: ask ``exists_many``
        first if the difference matters. Against a server too old for the flag this raises
        ``NotImplementedFeature`` before anything is sent."""
        return self._call(lambda c: _ops.put_many(c, keys, values, ttl_seconds, overwrite))

    def get(self, key: str) -> bytes | None:
        r = self._call(lambda c: _ops.get_many_into(c, [key], None))[0]
        return None if r is None else bytes(r)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The blocks of ``keys`` as bytes (None on a miss), one batched round trip."""
        got = self._call(lambda c: _ops.get_many_into(c, keys, None))
        return [None if r is None else bytes(r) for r in got]

    def get_into(self, key: str, buf: Any) -> int | None:
        return self.get_many_into([key], [buf])[0]

    def get_many_into(self, keys: Sequence[str], bufs: Sequence[Any]) -> list[int | None]:
        """Receive keys[i] straight into bufs[i] (bytearray, numpy array, ``tensor.numpy()``,
        mmap...); result[i] is the block's length or None on a miss. A key's bytes are those of
        its first PUT unless some caller replaced them with ``put(..., overwrite=True)``."""
        return self._call(lambda c: _ops.get_many_into(c, keys, bufs))

    def exists_many(self, keys: Sequence[str]) -> list[bool]:
        return self._call(lambda c: _ops.keyed(c, FrameType.EXISTS_BATCH, "exists", keys))

    def delete_many(self, keys: Sequence[str]) -> int:
        return self._call(lambda c: _ops.keyed(c, FrameType.DELETE_BATCH, "deleted", keys))

    def prefetch(self, keys: Sequence[str]) -> int:
        """Stage blocks in the server's DRAM tier; returns how many are staged."""
        return self._call(lambda c: _ops.keyed(c, FrameType.PREFETCH, "staged", keys))

    def lookup(self, keys: Sequence[str], *, lease_seconds: float = 0.0) -> int:
        """Length of the longest present prefix of the chain ``keys`` (one round trip); with a
        lease, the found blocks cannot be evicted until ``lease_seconds`` pass (reads do not end
        it), as many from the start of the prefix as the server's leased-bytes budget allows
        (the reply's ``leased`` count; ``POST /v1/{ns}/lookup`` also says ``lease_limited``)."""
        return self._call(lambda c: _ops.lookup(c, keys, lease_seconds))
