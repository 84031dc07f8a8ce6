"""The Redis-protocol listener (``kvstore serve --resp-port PORT``): an asyncio server whose
connections are ``kvstore.transport.resp_conn.RespProtocol``::

    server = await start_resp_server(node, host, port, namespace="default")
    ...
    await server.close(timeout)   # stop accepting, let answers in flight go out, close
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from kvstore import limits
from kvstore.engine.device import BufferPool
from kvstore.keys import validate_namespace
from kvstore.service import Node
from kvstore.service.conn_caps import TenantConnections
from kvstore.transport.resp_conn import RespContext, RespProtocol
from kvstore.transport.watchdog import BulkTimeouts

log = logging.getLogger("kvstore.resp")

TIMEOUT_KINDS = ("handshake", "idle", "body", "body_rate")


class RespServer:
    def __init__(self, ctx: RespContext, server: asyncio.base_events.Server) -> None:
        self.ctx = ctx
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self.ctx.connections)

    async def close(self, timeout: float = limits.shutdown_seconds_max) -> None:
        """Stop accepting; give commands in flight up to ``timeout`` seconds; close all."""
        timeout = max(0.0, min(timeout, limits.shutdown_seconds_max))
        self.ctx.closing = True
        self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conns = list(self.ctx.connections)
        while any(c.busy for c in conns) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for c in conns:
            c.abort()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), max(0.1, deadline - loop.time()))
        self.ctx.pool.close()


async def start_resp_server(node: Node, host: str, port: int, *, namespace: str,
                            timeouts: BulkTimeouts | None = None,
                            connections_max: int = limits.connections_max,
                            tenant_connections_max: int | None = None,
                            tls: ssl.SSLContext | None = None) -> RespServer:
    """Listen on ``host:port`` (0: any free port) and serve the Redis protocol through
    ``node``'s ``BlockService``; keys without a namespace go to ``namespace``. ``tls``: the
    server's one TLS context (``transport/tls.py``, as the HTTP and bulk listeners), with the
    handshake bounded like the bulk port's (``redis-cli --tls``, redis-py ``ssl=True``). At most
    ``connections_max`` connections (at the cap a newcomer evicts the oldest connection not
    authenticated yet; when all are, it is told ``max number of clients reached`` and closed), at most ``tenant_connections_max`` of them authenticated as one tenant (the same
    answer to the AUTH or HELLO past it, then closed; ``kvstore.service.conn_caps``)."""
    validate_namespace(namespace)
    node.runner.start()
    ctx = RespContext(node=node, pool=BufferPool(), namespace=namespace,
                      timeouts=timeouts or BulkTimeouts(), connections_max=connections_max,
                      tenant_conns=TenantConnections(
                          min(connections_max, tenant_connections_max or connections_max)))
    m = node.metrics
    if m is not None and hasattr(m, "declare"):
        m.declare("resp", TIMEOUT_KINDS, ("cap", "evicted", "tenant_cap"))
    loop = asyncio.get_running_loop()
    tout = ctx.timeouts
    server = await loop.create_server(
        lambda: RespProtocol(ctx), host, port, backlog=256, reuse_address=True, ssl=tls,
        ssl_handshake_timeout=tout.handshake_seconds if tls is not None else None,
        ssl_shutdown_timeout=limits.tls_close_timeout_seconds if tls is not None else None)
    for s in server.sockets:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = RespServer(ctx, server)
    log.info("Redis protocol listening on %s:%d (default namespace %s)", host, out.port,
             namespace)
    return out
