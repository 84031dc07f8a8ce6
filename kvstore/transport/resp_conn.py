"""One Redis-protocol connection: a ``BufferedProtocol`` driving ``kvstore.protocol.resp``.

Pipelining: every command a read completes is decoded at once and started as a task (up to
``limits.resp_pipeline_commands_max`` unanswered, then reading pauses); answers leave in command
order, each waiting for its turn (the previous command's answer written). Reads (GET, MGET,
EXISTS, PING) overlap one another, so pipelined GETs keep the flash busy; any other command
starts only after everything before it finished, and commands after it wait for it: a pipeline
sees its own writes exactly as on Redis.

Zero copy: a long SET value is received straight into an aligned pool buffer the engine writes
in place; a GET answer is ``writelines([header, block view, CRLF])`` with the engine's lease held
until the transport has flushed those bytes (as on the bulk port).

Timeouts (``BulkTimeouts``, the bulk port's watchdog): with credentials, AUTH/HELLO must come
within the handshake timeout; an authenticated connection with nothing in flight and no bytes
arriving for the idle timeout is closed (silently, as Redis does: a pooled client reconnects);
a command whose bytes stall or crawl under the body rate floor is closed too. Each counts in
``kvstore_connection_timeouts_total{port="resp",kind=...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import cast

from kvstore import limits
from kvstore.auth import Tenant
from kvstore.engine.device import BufferPool
from kvstore.errors import KVStoreError, LimitExceeded, ProtocolError
from kvstore.protocol import resp
from kvstore.service import Node
from kvstore.service.conn_caps import TenantConnections
from kvstore.transport.held import LeaseHolder
from kvstore.transport.watchdog import BulkTimeouts, BulkWatch

log = logging.getLogger("kvstore.resp")

# Commands that only read: they may run while earlier reads are still running (at most
# limits.resp_read_ahead_blocks of them at once).
READS = frozenset({"GET", "MGET", "EXISTS", "PING"})
# Redis's answer at its client cap (redis-py raises ConnectionError for exactly this text);
# kvstore gives it at --max-connections and at --max-connections-per-tenant.
MAX_CLIENTS = "ERR max number of clients reached"


@dataclass
class RespContext:
    node: Node
    pool: BufferPool
    namespace: str  # where a key without '/' goes (--resp-namespace)
    timeouts: BulkTimeouts = field(default_factory=BulkTimeouts)
    connections_max: int = limits.connections_max
    connections: set[RespProtocol] = field(default_factory=set)
    # connections not past AUTH yet, oldest first: the ones evicted at the cap (as on the bulk
    # port), so sockets that never authenticate cannot lock clients out
    unauthenticated: dict[RespProtocol, None] = field(default_factory=dict)
    closing: bool = False
    # authenticated connections per tenant and the cap on each (kvstore.service.conn_caps)
    tenant_conns: TenantConnections = field(
        default_factory=lambda: TenantConnections(limits.connections_max))


class Turn:
    """One command's place in the answer order: ``await turn.wait()`` before writing."""

    __slots__ = ("conn", "prev", "started")

    def __init__(self, conn: RespProtocol, prev: asyncio.Future[None] | None) -> None:
        self.conn = conn
        self.prev = prev
        self.started = False  # some of this answer is written (an error now must close)

    async def wait(self) -> None:
        if self.prev is not None and not self.prev.done():
            await asyncio.shield(self.prev)
        await self.conn.writable()

    def write(self, *parts: bytes | memoryview) -> None:
        self.started = True
        self.conn.write(parts)


class RespProtocol(LeaseHolder, asyncio.BufferedProtocol):
    def __init__(self, ctx: RespContext) -> None:
        self.ctx = ctx
        self.blocks = ctx.node.blocks
        self.dec = resp.RespDecoder(ctx.pool.acquire)
        self.proto = 2
        tenants = ctx.node.tenants
        # without credentials every caller is the development tenant from the start (counted
        # at connection_made)
        self.tenant: Tenant | None = tenants.by_access_key("") if tenants.dev else None
        self._slot = ctx.tenant_conns.slot()  # the tenant this connection counts against
        self.name = b""
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._tail: asyncio.Future[None] | None = None  # done when the last answer is written
        self._last_write: asyncio.Future[None] | None = None  # done of the last non-read
        self._pending = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight_bytes = 0  # value bytes of decoded, unanswered commands
        # done futures of the last reads: a read starts once the one resp_read_ahead_blocks
        # before it is done (bounds the leases pipelined GETs hold; waits only on earlier ones)
        self._reads: deque[asyncio.Future[None]] = deque(maxlen=limits.resp_read_ahead_blocks)
        self._stopping = False  # a protocol error is queued: decode nothing more
        self._paused = False
        self._write_ok = asyncio.Event()
        self._write_ok.set()
        self._init_held()  # _written, _held, _poll (held.py)
        self._timer: asyncio.TimerHandle | None = None
        self._watch: BulkWatch | None = None
        self._rx = 0

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        t.set_write_buffer_limits(high=limits.write_buffer_high_bytes,
                                  low=limits.write_buffer_low_bytes)
        sock = t.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self.ctx
        if not ctx.closing and len(ctx.connections) >= ctx.connections_max and ctx.unauthenticated:
            # a peer that has not authenticated yet yields its slot to a newcomer
            self.metric("refused", "evicted")
            next(iter(ctx.unauthenticated)).evict()
        if ctx.closing or len(ctx.connections) >= ctx.connections_max:
            if not ctx.closing:
                self.metric("refused", "cap")
            t.write(resp.error(MAX_CLIENTS))
            self.closed = True
            t.close()
            return
        if self.tenant is not None:  # development mode: authenticated from the start
            try:
                self.authenticated(self.tenant)
            except RespReplyError as exc:
                t.write(resp.error(exc.text))
                self.closed = True
                t.close()
                return
        ctx.connections.add(self)
        if self.tenant is None:
            ctx.unauthenticated[self] = None
        loop = asyncio.get_running_loop()
        self._watch = BulkWatch(ctx.timeouts, loop.time())
        self._timer = loop.call_later(ctx.timeouts.tick_seconds, self._tick)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.dec.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._rx += nbytes
        self.dec.buffer_updated(nbytes)
        self._process()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        self.ctx.unauthenticated.pop(self, None)
        self._slot.release()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for buf in self.dec.abandon():
            self.ctx.pool.release(buf)
        self.release_held(all_=True)
        self._write_ok.set()

    def pause_writing(self) -> None:
        self._write_ok.clear()

    def resume_writing(self) -> None:
        self._write_ok.set()
        self.release_held()

    def authenticated(self, tenant: Tenant) -> None:
        """AUTH/HELLO named ``tenant``: count this connection against it (again when it was
        another tenant's). Past ``--max-connections-per-tenant``: the error Redis gives at its
        own client cap, after which the connection closes, unauthenticated."""
        try:
            self._slot.bind(tenant.name)
        except LimitExceeded:
            self.tenant = None
            self.metric("refused", "tenant_cap")
            raise RespReplyError(MAX_CLIENTS, close=True) from None
        self.tenant = tenant
        self.ctx.unauthenticated.pop(self, None)

    # -- receive path --------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._pending > 0 or bool(self._held)

    def _process(self) -> None:
        while not self.closed and not self._stopping:
            if (self._pending >= limits.resp_pipeline_commands_max
                    or self._inflight_bytes >= limits.resp_inflight_bytes_max
                    or (self.tenant is None and self._pending)):  # before AUTH: one at a time
                self._pause()
                return
            self.dec.preauth = self.tenant is None
            try:
                ev = self.dec.next_event()
            except ProtocolError as exc:
                self._stopping = True
                self._enqueue(None, exc)
                return
            if ev is resp.NEED_DATA:
                self._resume()
                break
            self._enqueue(ev, None)
        if self._watch is not None:
            if self.dec.in_command and self._watch.body is None:
                self._watch.payload_started()
            elif not self.dec.in_command and self._watch.body is not None:
                self._watch.payload_ended()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def _enqueue(self, cmd: resp.Command | None, fatal: KVStoreError | None) -> None:
        from kvstore.transport.resp_commands import execute

        loop = asyncio.get_running_loop()
        prev, done = self._tail, loop.create_future()
        self._tail = done
        self._pending += 1
        nbytes = 0 if cmd is None else sum(len(a) if isinstance(a, bytes) else a.length
                                           for a in cmd.args)
        self._inflight_bytes += nbytes
        is_read = cmd is not None and cmd.name in READS and not cmd.oversized
        gate = self._last_write if is_read else prev
        window = None
        if is_read:
            if len(self._reads) == self._reads.maxlen:
                window = self._reads[0]
            self._reads.append(done)
        else:
            self._last_write = done
        turn = Turn(self, prev)

        async def run() -> None:
            try:
                for g in (gate, window):
                    if g is not None and not g.done():
                        await asyncio.shield(g)
                if cmd is None:
                    assert fatal is not None
                    await turn.wait()
                    turn.write(resp.error("ERR " + (fatal.message or "Protocol error")))
                    self.close()
                    return
                await execute(self, cmd, turn)
            except RespReplyError as exc:
                await self._answer_error(turn, exc.text, exc.text.split(" ", 1)[0])
                if exc.close:
                    self.close()
            except KVStoreError as exc:
                await self._answer_error(turn, error_text(exc), exc.name)
            except Exception as exc:  # never let one command take the server down
                log.exception("resp command failed")
                await self._answer_error(turn, f"ERR internal error: {type(exc).__name__}",
                                         "InternalError")
            finally:
                if cmd is not None:
                    for buf in cmd.buffers():
                        self.ctx.pool.release(buf)
                done.set_result(None)
                self._pending -= 1
                self._inflight_bytes -= nbytes
                if not self.closed:
                    self._process()

        task = loop.create_task(run())
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _answer_error(self, turn: Turn, text: str, name: str) -> None:
        self.blocks.failed("resp", name)
        if turn.started:  # half an answer is on the wire: the stream cannot be repaired
            self.close()
            return
        await turn.wait()
        turn.write(resp.error(text))

    # -- watchdog ------------------------------------------------------------------------
    def _tick(self) -> None:
        self._timer = None
        if self.closed or self._watch is None:
            return
        loop = asyncio.get_running_loop()
        kind = self._watch.tick(loop.time(), self._rx, self.tenant is not None, self.busy,
                                not self._paused)
        if kind is not None:
            self.metric("timeout", kind)
            log.debug("resp: closing a connection: %s timeout", kind)
            self.close()
        else:
            self._timer = loop.call_later(self.ctx.timeouts.tick_seconds, self._tick)

    def metric(self, what: str, label: str) -> None:
        m = self.ctx.node.metrics
        if m is not None and hasattr(m, what):
            with contextlib.suppress(Exception):
                getattr(m, what)("resp", label)

    # -- send path -----------------------------------------------------------------------
    def write(self, parts: tuple[bytes | memoryview, ...]) -> None:
        t = self.transport
        if self.closed or t is None or t.is_closing():
            return
        if len(parts) == 1:
            t.write(parts[0])
        else:
            t.writelines(parts)
        self._written += sum(len(p) for p in parts)

    async def writable(self) -> None:
        if not self._write_ok.is_set():
            await self._write_ok.wait()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.ctx.connections.discard(self)
            self.ctx.unauthenticated.pop(self, None)
            self._slot.release()
            self.transport.close()  # flushes what is written, then closes (after QUIT's OK,
            # a protocol error's answer, a timeout)

    def evict(self) -> None:
        """Give this unauthenticated connection's slot to a newcomer: Redis's cap answer,
        closed now, aborted if the peer does not take the answer in time."""
        self.write((resp.error(MAX_CLIENTS),))
        self.close()
        t = self.transport
        if t is not None:
            asyncio.get_running_loop().call_later(limits.timeout_close_grace_seconds, t.abort)

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort() if self.busy else self.transport.close()


class RespReplyError(Exception):
    """An error answer in Redis's own words (``text`` starts with its code word: ``ERR``,
    ``NOAUTH``, ``WRONGPASS``, ...): protocol-level refusals that are no ``KVStoreError``."""

    def __init__(self, text: str, *, close: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.close = close  # close the connection once the answer is out


# A kvstore error's Redis code word where a client acts on it; ERR otherwise.
_CODES = {"SignatureDoesNotMatch": "WRONGPASS", "AccessDenied": "NOPERM"}


def error_text(exc: KVStoreError) -> str:
    """``ERR EntityTooLarge: ...``: the code word, then kvstore's error name and message."""
    return f"{_CODES.get(exc.name, 'ERR')} {exc.name}: {exc.message or exc.name}"
