"""One bulk connection: a ``BufferedProtocol`` driving the sans-IO codec.

Receive: ``get_buffer`` hands the kernel either the decoder's small internal buffer or, while a
PUT payload is arriving, the aligned pool buffer that block must land in (zero-copy).
Send: frames are ``writelines([header, engine_view])``; the engine view stays referenced (the
``engine.read`` context stays open) until the transport reports those bytes flushed.

Flow control: parsing stops (and reading pauses) while the connection has
``connection_inflight_requests_max`` requests or ``connection_inflight_bytes_max`` PUT bytes in
flight; writers wait while the transport is above ``write_buffer_high_bytes`` (resume at
``write_buffer_low_bytes``). Requests run as tasks; a task is never cancelled while an engine
call holds one of its buffers: on disconnect, tasks notice ``closed`` and stop.

Timeouts (``ServerContext.timeouts``, a ``kvstore.transport.watchdog.BulkTimeouts``): one
watchdog timer per connection ticks a few times per shortest timeout. Before AUTH_OK the
connection must finish HELLO/AUTH within ``handshake_seconds``; after it, a connection with
nothing in flight and no bytes arriving for ``idle_seconds`` is closed; while a PUT payload is
arriving, a ``BodyWatch`` closes it when it stalls or falls under the rate floor. Each ends
with a connection-level ERROR ``RequestTimeout`` (retryable) and counts in
``kvstore_connection_timeouts_total{port="bulk",kind=...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from kvstore import limits
from kvstore.auth import Op, Tenant
from kvstore.engine.device import AlignedBuffer, BufferPool
from kvstore.errors import (
    AuthenticationFailed,
    Busy,
    KVStoreError,
    LimitExceeded,
    NamespaceNotFound,
    ProtocolError,
    RequestTimeout,
    ShuttingDown,
)
from kvstore.protocol import messages as msg
from kvstore.protocol.decoder import NEED_DATA, Decoder, Frame, PayloadEnd
from kvstore.protocol.frames import FrameType, encode_frame
from kvstore.protocol.state import Connection, Role, out_of_band
from kvstore.service import Node
from kvstore.service.conn_caps import TenantConnections
from kvstore.transport import bulk_ops
from kvstore.transport.held import LeaseHolder
from kvstore.transport.watchdog import BulkTimeouts, BulkWatch

log = logging.getLogger("kvstore.bulk")

# How long the release poll waits between checks while sent engine views are unflushed.


@dataclass
class ServerContext:
    """The bulk port's own bookkeeping beside the shared ``Node`` (engine, runner, auth and
    metrics live there): its buffer pool, its connections, its NIXL agent, its bounds."""

    node: Node
    pool: BufferPool
    connections: set[BulkProtocol] = field(default_factory=set)
    # connections not past AUTH_OK yet, oldest first: the ones evicted at the cap
    unauthenticated: dict[BulkProtocol, None] = field(default_factory=dict)
    closing: bool = False
    # kvstore.transport.nixl_agent.NixlServerAgent, created on the first NIXL_REGISTER
    nixl: Any = None
    timeouts: BulkTimeouts = field(default_factory=BulkTimeouts)
    connections_max: int = limits.connections_max
    # authenticated connections per tenant and the cap on each (kvstore.service.conn_caps):
    # one tenant cannot take every slot of the listener from the others
    tenant_conns: TenantConnections = field(
        default_factory=lambda: TenantConnections(limits.connections_max))

    def shm_close_all(self) -> None:
        """Drop every connection's shm region and NIXL peer, then the server's NIXL agent."""
        for c in list(self.connections):
            c.close_region()
        if self.nixl is not None:
            self.nixl.close()
            self.nixl = None


@dataclass
class _PendingPut:
    rid: int
    batch: msg.PutBatch
    bufs: list[AlignedBuffer]
    started: float


class BulkProtocol(LeaseHolder, asyncio.BufferedProtocol):
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.blocks = ctx.node.blocks
        self.runner = ctx.node.runner
        self.dec = Decoder()
        self.conn = Connection(Role.SERVER)
        self.transport: asyncio.Transport | None = None
        self.namespace = ""
        self.tenant: Tenant | None = None
        self._slot = ctx.tenant_conns.slot()  # the tenant this connection counts against
        self.closed = False
        self.inflight_bytes = 0
        self.region: Any = None  # kvstore.transport.shm.Region once registered
        self.nixl_peer: Any = None  # kvstore.transport.nixl.NixlPeer once registered
        self._hello: msg.Hello | None = None
        self._nonce = b""
        self._tasks: set[asyncio.Task[None]] = set()
        self._put: _PendingPut | None = None
        self._reading_paused = False
        self._write_ok: asyncio.Event | None = None
        self._init_held()  # _written, _held, _poll (held.py)
        self._watch_timer: asyncio.TimerHandle | None = None
        self._watchdog: BulkWatch | None = None
        self._rx = 0  # bytes received, ever
        self._lost = False  # connection_lost has run

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but they are ones
        t = cast(asyncio.Transport, transport)
        self.transport = t
        self._write_ok = asyncio.Event()
        self._write_ok.set()
        t.set_write_buffer_limits(high=limits.write_buffer_high_bytes,
                                          low=limits.write_buffer_low_bytes)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self.ctx
        if not ctx.closing and len(ctx.connections) >= ctx.connections_max and ctx.unauthenticated:
            # a peer that has not authenticated yet yields its slot to a newcomer
            self._metric("refused", "evicted")
            next(iter(ctx.unauthenticated))._give_up(Busy("too many connections"))
        if ctx.closing or len(ctx.connections) >= ctx.connections_max:
            err = ShuttingDown() if ctx.closing else Busy("too many connections")
            if not ctx.closing:
                self._metric("refused", "cap")
            self._fatal(err)
            return
        ctx.connections.add(self)
        ctx.unauthenticated[self] = None
        loop = asyncio.get_running_loop()
        self._watchdog = BulkWatch(self.ctx.timeouts, loop.time())
        self._watch_timer = loop.call_later(self.ctx.timeouts.tick_seconds, self._watch)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.dec.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._rx += nbytes
        self.dec.buffer_updated(nbytes)
        self._process()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost = True
        self.ctx.connections.discard(self)
        self.ctx.unauthenticated.pop(self, None)
        self._uncount()
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None
        if self._put is not None:  # payload never completed: no engine call holds these
            for b in self._put.bufs:
                self.ctx.pool.release(b)
            self._put = None
        self.release_held(all_=True)
        if self._write_ok is not None:
            self._write_ok.set()  # wake writers so they notice `closed`
        if not self._tasks:
            self.close_region()

    def pause_writing(self) -> None:
        assert self._write_ok is not None
        self._write_ok.clear()

    def resume_writing(self) -> None:
        assert self._write_ok is not None
        self._write_ok.set()
        self.release_held()

    # -- state for the server ------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return bool(self._tasks) or self._put is not None

    def begin_drain(self) -> None:
        """Server stopping: finish what is in flight; new requests get ShuttingDown."""
        self._process()

    def abort_connection(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.busy or self._held:
                self.transport.abort()
            else:
                self.transport.close()

    def close_region(self) -> None:
        if self.region is not None:
            self.region.close()
            self.region = None
        if self.nixl_peer is not None:
            self.nixl_peer.close()
            self.nixl_peer = None

    # -- receive path --------------------------------------------------------------------
    def _window_full(self) -> bool:
        return (len(self.conn.inflight) >= self.conn.inflight_requests_max
                or self.inflight_bytes >= limits.connection_inflight_bytes_max)

    def _process(self) -> None:
        try:
            while not self.closed:
                if not self.dec.in_payload and self._window_full():
                    self._pause_reading()
                    return
                ev = self.dec.next_event()
                if ev is NEED_DATA:
                    self._resume_reading()
                    return
                if isinstance(ev, Frame):
                    self._on_frame(ev)
                elif isinstance(ev, PayloadEnd):
                    self._on_payload_end()
                else:  # a payload chunk no target took: every payload gets targets or a skip
                    raise ProtocolError("unexpected payload bytes")
        except KVStoreError as exc:
            self._fatal(exc)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def _on_frame(self, f: Frame) -> None:
        self.conn.received(f.ftype, f.request_id, f.flags, f.payload_length)
        if f.ftype is FrameType.HELLO:
            self._hello = msg.Hello.from_header(f.header)
            self._nonce = os.urandom(msg.NONCE_BYTES)
            self.send(FrameType.CHALLENGE, 0, msg.Challenge(self._nonce).to_header())
            return
        if f.ftype is FrameType.AUTH:
            self._spawn(self._authenticate(msg.Auth.from_header(f.header).sig), None)
            return
        rid = f.request_id
        try:
            if self.ctx.closing:
                raise ShuttingDown("server is shutting down")
            if f.ftype is FrameType.PUT_BATCH and not out_of_band(f.flags):
                self._start_put(rid, msg.PutBatch.from_header(f.header, f.payload_length,
                                                              f.flags))
                return
            coro = bulk_ops.dispatch(self, f.ftype, rid, f.header, f.flags)
        except KVStoreError as exc:
            if isinstance(exc, ProtocolError):
                raise
            if self.dec.in_payload:
                self.dec.skip_payload()
            self.send_error(rid, exc)
            return
        if coro is not None:
            self._spawn(coro, rid)

    def _start_put(self, rid: int, batch: msg.PutBatch) -> None:
        bufs = [self.ctx.pool.acquire(n) for n in batch.lengths]
        self._put = _PendingPut(rid, batch, bufs, time.perf_counter())
        self.inflight_bytes += sum(batch.lengths)
        views = [b.view[:n] for b, n in zip(bufs, batch.lengths, strict=True) if n]
        if views:
            if self._watchdog is not None:
                self._watchdog.payload_started()
            self.dec.set_payload_targets(*views)
        else:  # all blocks empty: no payload, so no PayloadEnd will come
            self._on_payload_end()

    def _on_payload_end(self) -> None:
        put, self._put = self._put, None
        if self._watchdog is not None:
            self._watchdog.payload_ended()
        if put is None:  # the end of a skipped payload
            return
        self._spawn(bulk_ops.put_batch(self, put.rid, put.batch, put.bufs, put.started),
                    put.rid, nbytes=sum(put.batch.lengths))

    # -- tasks ---------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None], rid: int | None, nbytes: int = 0) -> None:
        task = asyncio.get_running_loop().create_task(self._run(coro, rid, nbytes))
        self._tasks.add(task)

    async def _run(self, coro: Coroutine[Any, Any, None], rid: int | None, nbytes: int) -> None:
        try:
            await coro
        except KVStoreError as exc:
            if rid is None:
                self._fatal(exc)
            else:
                self.send_error(rid, exc)
        except Exception as exc:  # never let one request take the server down
            log.exception("bulk request failed")
            err = KVStoreError(f"internal error: {type(exc).__name__}")
            self._fatal(err) if rid is None else self.send_error(rid, err)
        finally:
            self.inflight_bytes -= nbytes
            self._tasks.discard(asyncio.current_task())
            if self.closed:
                if not self._tasks:
                    self.close_region()
            else:
                self._process()

    async def _authenticate(self, sig: bytes) -> None:
        hello = self._hello
        assert hello is not None
        tenants = self.ctx.node.tenants
        if not tenants.dev:
            secret = tenants.secret_for(hello.access_key)
            if secret is None or not msg.verify(secret, self._nonce, hello.access_key,
                                                hello.namespace, sig):
                raise AuthenticationFailed("bad access key or signature")
        tenant = tenants.by_access_key(hello.access_key)
        try:  # every request is authorized again by the service; this answers HELLO early
            self.blocks.authorize(tenant, hello.namespace, Op.READ)
        except NamespaceNotFound:
            if not hello.create:
                raise
            await self.blocks.create_namespace(tenant, hello.namespace)
        try:
            self._slot.bind(tenant.name)  # LimitExceeded past the per-tenant cap
        except LimitExceeded:
            self._metric("refused", "tenant_cap")
            raise
        self.tenant, self.namespace = tenant, hello.namespace
        self.ctx.unauthenticated.pop(self, None)
        salt = self.blocks.policy.salt_token(tenant)  # the client salts its own fingerprints
        self.send(FrameType.AUTH_OK, 0,
                  msg.AuthOk(tenant.name, hello.namespace, salt=salt).to_header())

    def _uncount(self) -> None:
        self._slot.release()

    # -- watchdog ------------------------------------------------------------------------
    def _watch(self) -> None:
        """One watchdog tick: handshake deadline, idle timeout, PUT payload progress."""
        self._watch_timer = None
        if self.closed or self._watchdog is None:
            return
        loop = asyncio.get_running_loop()
        kind = self._watchdog.tick(loop.time(), self._rx, self.tenant is not None,
                                   self.busy or bool(self._held), not self._reading_paused)
        if kind is not None:
            self._time_out(kind)
        else:
            self._watch_timer = loop.call_later(self.ctx.timeouts.tick_seconds, self._watch)

    def _time_out(self, kind: str) -> None:
        self._metric("timeout", kind)
        log.debug("bulk: closing a connection: %s timeout", kind)
        self._give_up(RequestTimeout(f"connection closed: {kind} timeout"))

    def _give_up(self, exc: KVStoreError) -> None:
        """Close with a connection-level ERROR; the slot is free at once, and a peer that does
        not read the error frame is aborted after a grace period."""
        self.ctx.connections.discard(self)
        self.ctx.unauthenticated.pop(self, None)
        self._uncount()
        self._fatal(exc)
        asyncio.get_running_loop().call_later(limits.timeout_close_grace_seconds,
                                              self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self._lost and self.transport is not None:
            self.transport.abort()

    def _metric(self, what: str, label: str) -> None:
        m = self.ctx.node.metrics
        if m is not None and hasattr(m, what):
            with contextlib.suppress(Exception):
                getattr(m, what)("bulk", label)

    # -- send path -----------------------------------------------------------------------
    def send(self, ftype: FrameType, rid: int, header: dict[str, Any] | None = None,
             payload: Sequence[memoryview] = (), flags: int = 0) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        self.conn.sent(ftype, rid, flags)
        n = sum(len(p) for p in payload)
        head = encode_frame(ftype, rid, header, n, flags)
        if payload:
            self.transport.writelines([head, *payload])
        else:
            self.transport.write(head)
        self._written += len(head) + n

    def send_error(self, rid: int, exc: KVStoreError) -> None:
        if rid not in self.conn.inflight:  # already answered (or the peer is gone)
            log.warning("bulk: dropping error for finished request %d: %s", rid, exc)
            return
        self.blocks.failed("bulk", exc.name)
        self.send(FrameType.ERROR, rid, msg.ErrorInfo.of(exc).to_header())

    def _fatal(self, exc: KVStoreError) -> None:
        if not self.closed and self.transport is not None:
            with contextlib.suppress(KVStoreError):
                self.send(FrameType.ERROR, 0, msg.ErrorInfo.of(exc).to_header())
            self.closed = True
            self.transport.close()  # flushes the error frame, then closes

    async def writable(self) -> None:
        """Wait while the transport is above its high water mark."""
        assert self._write_ok is not None
        if not self._write_ok.is_set():
            await self._write_ok.wait()

    def observe(self, op: str, nbytes: int, started: float) -> None:
        self.blocks.observe(op, "bulk", nbytes, time.perf_counter() - started)
