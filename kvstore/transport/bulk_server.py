"""The bulk port: an asyncio server speaking ``kvstore.protocol`` (uvloop when installed).

Entry point for ``kvstore serve``::

    server = await start_bulk_server(node, host, port)   # node: kvstore.service.Node
    ...
    await server.close(timeout)      # stop accepting, drain in-flight requests, close

Each connection is a ``BulkProtocol`` (``kvstore.transport.bulk_conn``): PUT payloads land
straight in aligned buffers, GET payloads leave as vectored writes of engine views.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from kvstore import limits
from kvstore.engine.device import BufferPool
from kvstore.service import Node
from kvstore.service.conn_caps import TenantConnections
from kvstore.transport.bulk_conn import BulkProtocol, ServerContext
from kvstore.transport.watchdog import BulkTimeouts

log = logging.getLogger("kvstore.bulk")

# The kinds of timeout that end a bulk connection (metrics labels; see bulk_conn).
TIMEOUT_KINDS = ("handshake", "idle", "body", "body_rate")


class BulkServer:
    """A listening bulk port and its live connections."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def host(self) -> str:
        assert self._server is not None
        return str(self._server.sockets[0].getsockname()[0])

    @property
    def connections(self) -> int:
        return len(self.ctx.connections)

    async def _listen(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        # TLS: the handshake shares the HELLO/AUTH bound (a peer that never finishes it holds
        # no connection slot past that; BulkProtocol only sees the connection afterwards)
        handshake = self.ctx.timeouts.handshake_seconds if tls is not None else None
        self._server = await loop.create_server(
            lambda: BulkProtocol(self.ctx), host, port, backlog=256, reuse_address=True,
            ssl=tls, ssl_handshake_timeout=handshake,
            ssl_shutdown_timeout=limits.tls_close_timeout_seconds if tls is not None else None)
        for s in self._server.sockets:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self, timeout: float = limits.shutdown_seconds_max) -> None:
        """Stop accepting; let in-flight requests finish for up to ``timeout`` seconds (new
        requests get ShuttingDown); then close every connection."""
        timeout = max(0.0, min(timeout, limits.shutdown_seconds_max))
        self.ctx.closing = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conns = list(self.ctx.connections)
        for c in conns:
            c.begin_drain()
        while any(c.busy for c in conns) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for c in conns:
            c.abort_connection()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), max(0.1, deadline - loop.time()))
        self.ctx.shm_close_all()
        self.ctx.pool.close()


async def start_bulk_server(
    node: Node,
    host: str,
    port: int,
    *,
    timeouts: BulkTimeouts | None = None,
    connections_max: int = limits.connections_max,
    tenant_connections_max: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> BulkServer:
    """Listen on ``host:port`` (0 = any free port; see ``BulkServer.port``) and serve the bulk
    protocol through ``node`` (shared with the HTTP app). ``node.metrics`` is optional and
    duck-typed: ``observe(op, tier, nbytes, seconds)``, ``error(op, name)`` and, when present,
    ``timeout(port, kind)``, ``refused(port, reason)``, ``declare(port, kinds, reasons)``.
    ``timeouts`` bound silent and slow peers; at most ``connections_max`` connections are open
    (one more gets ``Busy`` and is closed), at most ``tenant_connections_max`` of them
    authenticated as one tenant (one more gets ``LimitExceeded`` at AUTH and is closed).
    ``tls``: serve TLS (``kvstore.transport.tls``)."""
    node.runner.start()
    metrics = node.metrics
    ctx = ServerContext(node=node, pool=BufferPool(), timeouts=timeouts or BulkTimeouts(),
                        connections_max=connections_max,
                        tenant_conns=TenantConnections(
                            min(connections_max, tenant_connections_max or connections_max)))
    if metrics is not None and hasattr(metrics, "declare"):
        metrics.declare("bulk", TIMEOUT_KINDS, ("cap", "evicted", "tenant_cap"))
    server = BulkServer(ctx)
    await server._listen(host, port, tls)
    log.info("bulk port listening on %s:%d%s", server.host, server.port,
             " (TLS)" if tls is not None else "")
    return server
