"""The HTTP connection guard: uvicorn's httptools protocol plus what uvicorn does not bound.

uvicorn closes a keep-alive connection idle between requests, but a connection that sends
nothing after accept, half a request line, headers without their end, or a body at a byte a
second stays open for as long as the peer likes; and its ``limit_concurrency`` answers 503 to
every request, health probes included, while the cap is full of such sockets. This protocol
class (passed to ``uvicorn.Config(http=...)``) adds, per connection:

- a header deadline: request line and headers complete within ``header_seconds`` of the accept,
  or of the end of the previous response on a keep-alive connection (``header`` timeout);
- uvicorn's keep-alive timeout, counted (``keepalive``);
- a body watch while a request body is being read (``kvstore.transport.watchdog.BodyWatch``):
  no byte for ``body.idle_seconds`` (``body``) or under ``body.min_rate_bytes_per_second``
  over the rate window (``body_rate``). Time the server is not reading does not count;
- the connection cap: at ``connections_max`` open connections, a new one evicts the connection
  that has waited longest for its request headers (a silent socket, a keep-alive one between
  requests), so silent sockets can never lock anyone out; only when every connection is inside
  a request is the new one closed at accept;
- a reserved slice for health probes: at most ``connections_max - probe_connections``
  connections may be inside a request at once; past that, a request gets 503 SlowDown unless it
  is ``GET``/``HEAD`` ``/healthz`` or ``/readyz`` (which is answered, then its connection
  closed). So requests that hold their connection (slow bodies, long calls) cannot fail the
  kubelet's probes either;
- the per-tenant cap (``--max-connections-per-tenant``, ``kvstore.service.conn_caps``): a
  connection is bound to the tenant of its first signed request (``kvstore.api.conn_tenant``:
  the apps bind after the signature checks out, so a request refused at authentication binds
  nothing; in development mode every request is the development tenant's). A connection that would take a tenant past its cap is answered ``503 SlowDown``
  and closed; a later request signed by another tenant re-binds the connection to that tenant
  (which must have room: else the same 503 and close). Probes and ``/metrics`` never
  bind;
- a bound on the request line and headers: at most ``limits.http_header_bytes_max`` bytes from
  the end of the previous request (or the accept) to the end of this one's headers, counted as
  they arrive, before the parser sees them (httptools buffers a header without bound). One
  more byte: ``400 RequestHeaderSectionTooLarge`` (S3's code for it) and the connection closes
  (``refused{reason="header_too_large"}``).

A timed-out request that sent part of itself gets a 408 RequestTimeout (S3 XML, or JSON on
control paths) with ``connection: close``; a silent one is just closed. Every timeout counts in
``kvstore_connection_timeouts_total{port="http",kind=...}``, every refusal in
``kvstore_connections_refused_total{port="http",reason=...}``.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kvstore import errors as E
from kvstore import limits
from kvstore.api.conn_tenant import BIND_KEY
from kvstore.api.guard_answers import header_too_large_response, probes_only, timeout_response
from kvstore.service.conn_caps import TenantConnections
from kvstore.transport.watchdog import BodyLimits, BodyWatch

PROBE_PATHS = frozenset({b"/healthz", b"/readyz"})
_PROBE_METHODS = frozenset({b"GET", b"HEAD"})
PORT = "http"
TIMEOUT_KINDS = ("header", "keepalive", "body", "body_rate")
REFUSAL_REASONS = ("cap", "evicted", "probe_only", "tenant_cap", "header_too_large")


@dataclass(frozen=True, slots=True)
class HttpGuardSettings:
    """The HTTP listener's connection bounds (``kvstore.limits``; set by ``kvstore serve``)."""

    header_seconds: float = limits.http_header_timeout_seconds_default
    keepalive_seconds: float = limits.http_keepalive_timeout_seconds_default
    body: BodyLimits = field(default_factory=BodyLimits)
    connections_max: int = limits.connections_max
    probe_connections: int = limits.probe_connections_reserved_default
    tenant_connections_max: int | None = None  # None: connections_max

    def __post_init__(self) -> None:
        if not (self.keepalive_seconds > 0 and self.header_seconds > 0):
            raise ValueError("need keepalive_seconds > 0 and header_seconds > 0")
        if not 0 <= self.probe_connections < self.connections_max:
            raise ValueError("need 0 <= probe_connections < connections_max")

    @property
    def tenant_cap(self) -> int:
        """Connections one tenant may hold bound (``--max-connections-per-tenant``)."""
        return min(self.connections_max, self.tenant_connections_max or self.connections_max)

    @property
    def general_connections(self) -> int:
        """Connections that may be inside any request at once; the rest serve probes only."""
        return self.connections_max - self.probe_connections


class _Slots:
    """One listener's connections that count against the cap, those of them waiting for
    request headers, oldest deadline first (dicts keep insertion order), and the connections
    bound to each tenant."""

    def __init__(self, tenant_cap: int = limits.connections_max) -> None:
        self.active: set[GuardedHttpToolsProtocol] = set()
        self.waiting: dict[GuardedHttpToolsProtocol, None] = {}
        self.tenants = TenantConnections(tenant_cap)


class _Binder:
    """The ``bind_connection`` hook of one request (``kvstore.api.conn_tenant``)."""

    __slots__ = ("conn", "cycle")

    def __init__(self, conn: GuardedHttpToolsProtocol, cycle: Any) -> None:
        # the cycle by weak reference: the scope holds this binder and the cycle holds the
        # scope, so a strong one would make every request's objects a reference cycle that
        # only the garbage collector frees (a gen-0 collection every ~80 requests)
        self.conn, self.cycle = conn, weakref.ref(cycle)

    def __call__(self, tenant: str) -> None:
        try:
            self.conn.tenant_slot.bind(tenant)
        except E.LimitExceeded as exc:
            cycle = self.cycle()
            if cycle is not None:
                cycle.keep_alive = False  # answered, then closed
            self.conn._count_refused("tenant_cap")
            raise E.Busy(f"{exc.message}; retry later") from None


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the deadlines and the probe slots described above."""

    guard: ClassVar[HttpGuardSettings] = HttpGuardSettings()
    metrics: ClassVar[Any] = None  # kvstore.api.metrics.Metrics, or None
    slots: ClassVar[_Slots] = _Slots()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the header deadline runs under it, so a longer keep-alive would never be reached
        self.timeout_keep_alive = min(  # type: ignore[assignment]
            self.guard.keepalive_seconds, self.guard.header_seconds)
        self.limit_concurrency = None  # the cap is enforced at accept, below
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_deadline: float | None = None  # loop time; None inside a request
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: BodyWatch | None = None
        # a request whose body has not all arrived yet: watched from the first feed that ends
        # without it (a request that arrives whole, as a GET or HEAD does, never needs a watch)
        self._body_due = False
        self._body_clock = 0.0
        self._partial = False  # bytes of a request whose headers are not complete yet
        self.tenant_slot = self.slots.tenants.slot()  # bound at the first signed request
        # the head (request line and headers) being received, and its bytes so far: from the
        # accept or the previous request's end to this one's headers
        self._in_head = True
        self._head_bytes = 0

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        g, slots = self.guard, self.slots
        if len(slots.active) >= g.connections_max:
            oldest = next(iter(slots.waiting), None)
            if oldest is None:  # every connection is inside a request
                self._count_refused("cap")
                transport.close()
                return
            self._count_refused("evicted")
            oldest._close()
        slots.active.add(self)
        self._arm_header(g.header_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._receive_head(data)
        else:
            super().data_received(data)
        if self._body_due and self._body_timer is None and not self.transport.is_closing():
            if self._body is None:
                self._body = BodyWatch(self.guard.body)
            self._body_clock = self.loop.time()
            self._body_timer = self.loop.call_later(self.guard.body.tick_seconds, self._body_tick)

    def handle_websocket_upgrade(self) -> None:
        self._release()  # the websocket protocol owns the connection from here (the app
        super().handle_websocket_upgrade()  # closes websockets at once)

    # -- parser callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._partial = True

    def on_headers_complete(self) -> None:
        # every request passes here: kept to what it must do (profile_protocol.py)
        self._cancel_header()
        self._partial = False
        self._in_head = False
        slots = self.slots
        in_requests = len(slots.active) - len(slots.waiting)  # this one included
        reserved = in_requests > self.guard.general_connections
        if reserved and not self._is_probe():
            self._count_refused("probe_only")
            app = self.app
            self.app = probes_only
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            ext: dict[Any, Any] = self.scope.setdefault("extensions", {})
            ext[BIND_KEY] = _Binder(self, cycle)
            if reserved:
                cycle.keep_alive = False  # free the reserved slot after one answer
            if self._body is not None or self._body_timer is not None:
                self._stop_body()
            self._body_due = True  # until on_message_complete

    def on_body(self, body: bytes) -> None:
        watch = self._body
        if watch is None and self._body_due:
            watch = self._body = BodyWatch(self.guard.body)
        if watch is not None:
            watch.received(len(body))
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._body is not None or self._body_timer is not None:
            self._stop_body()
        self._body_due = False
        self._in_head, self._head_bytes = True, 0  # what follows is the next request's head

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # idle, waiting for the next request
            self._arm_header(self.guard.header_seconds)

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        if not self.transport.is_closing():
            self._count_timeout("keepalive")
        self._release()
        super().timeout_keep_alive_handler()

    # -- the head bound ------------------------------------------------------------------
    def _receive_head(self, data: bytes) -> None:
        """Feed ``data`` to the parser no further than the head bound allows: the head's bytes
        are counted before the parser sees them, and what follows the headers (a body, a
        pipelined request) is fed as it is."""
        if len(data) <= limits.http_header_bytes_max - self._head_bytes \
                and not self.transport.is_closing():  # the common case: all of it fits
            self._head_bytes += len(data)
            super().data_received(data)
            return
        view = memoryview(data)
        while view and not self.transport.is_closing():
            if not self._in_head:
                super().data_received(view)  # type: ignore[arg-type]  # httptools takes buffers
                return
            room = limits.http_header_bytes_max - self._head_bytes
            if room <= 0:
                self._head_too_large()
                return
            piece, view = view[:room], view[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)  # type: ignore[arg-type]

    def _head_too_large(self) -> None:
        self._count_refused("header_too_large")
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # no answer is being written: say why
            self.transport.write(header_too_large_response(self._path_so_far()))
        self._close()

    def _path_so_far(self) -> str:
        """The path of the request line, when it has been parsed ("" picks S3 XML)."""
        try:
            return httptools.parse_url(self.url).path.decode("latin-1")
        except (httptools.HttpParserInvalidURLError, AttributeError, TypeError, ValueError):
            return ""

    # -- deadlines -----------------------------------------------------------------------
    def _is_probe(self) -> bool:
        try:
            path = httptools.parse_url(self.url).path
        except httptools.HttpParserInvalidURLError:
            return False
        return path in PROBE_PATHS and self.parser.get_method() in _PROBE_METHODS

    # The header deadline is lazy: a keep-alive connection re-arms it after every answer and
    # drops it at every request's headers, so instead of a timer per request (call_later and
    # cancel each time) one timer stays pending and, when it fires, compares the clock with
    # the deadline now in force (none while a request is being served).
    def _arm_header(self, seconds: float) -> None:
        self.slots.waiting.pop(self, None)
        self.slots.waiting[self] = None  # the newest deadline goes last
        deadline = self._header_deadline = self.loop.time() + seconds
        timer = self._header_timer
        if timer is not None and timer.when() > deadline:  # a shorter deadline than pending
            timer.cancel()
            timer = None
        if timer is None:
            self._header_timer = self.loop.call_later(seconds, self._header_check)

    def _cancel_header(self) -> None:
        self._header_deadline = None
        self.slots.waiting.pop(self, None)

    def _header_check(self) -> None:
        self._header_timer = None
        deadline = self._header_deadline
        if deadline is None:  # inside a request; the answer's end arms a new timer
            return
        left = deadline - self.loop.time()
        if left > 0:
            self._header_timer = self.loop.call_later(left, self._header_check)
            return
        self._header_timeout()

    def _release(self) -> None:
        """This connection no longer holds a slot (closed, or being closed by us)."""
        self._cancel_header()
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._stop_body()
        self.slots.active.discard(self)
        self.tenant_slot.release()

    def _stop_body(self) -> None:
        self._body = None
        self._body_due = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _header_timeout(self) -> None:
        self._header_deadline = None
        self.slots.waiting.pop(self, None)
        if self.transport.is_closing():
            return
        self._count_timeout("header")
        if self._partial:
            self.transport.write(timeout_response(""))
        self._close()

    def _body_tick(self) -> None:
        self._body_timer = None
        watch = self._body
        if watch is None or self.transport.is_closing():
            return
        now = self.loop.time()
        dt, self._body_clock = now - self._body_clock, now
        cycle = self.cycle
        reading = not self.flow.read_paused and not cycle.waiting_for_100_continue
        verdict = watch.tick(dt, reading)
        if verdict is None:
            self._body_timer = self.loop.call_later(self.guard.body.tick_seconds, self._body_tick)
            return
        self._count_timeout(verdict.value)
        if not cycle.response_complete:
            answer = not cycle.response_started
            cycle.disconnected = True  # the app's receive() now says http.disconnect
            cycle.message_event.set()
            if answer:
                self.transport.write(timeout_response(self.scope.get("path", "")))
        self._close()

    def _close(self) -> None:
        """Close (a timeout, an eviction): the slot is free at once; abort if the peer has not
        let the last answer out in time."""
        self._release()
        self._unset_keepalive_if_required()
        self.transport.close()
        self.loop.call_later(limits.timeout_close_grace_seconds, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self in self.connections:
            self.transport.abort()

    # -- metrics -------------------------------------------------------------------------
    def _count_timeout(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.timeout(PORT, kind)

    def _count_refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.refused(PORT, reason)


def guarded_protocol(settings: HttpGuardSettings, metrics: Any = None) -> type[HttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` bound to these settings and metrics."""
    if metrics is not None:
        metrics.declare(PORT, TIMEOUT_KINDS, REFUSAL_REASONS)
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"guard": settings, "metrics": metrics, "slots": _Slots(settings.tenant_cap)})
