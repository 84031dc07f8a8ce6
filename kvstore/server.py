"""Process composition for `kvstore serve`.

Order on start: data dir, tenants, listening sockets (fail fast on a busy port), device, engine
(the data directory's lock, then recovery), bulk server, HTTP server (uvicorn on uvloop +
httptools; lifespan marks it ready).
Then it prints the endpoints and the chosen device.

Order on SIGTERM/SIGINT, all within ``cfg.shutdown_seconds`` (at most
``limits.shutdown_seconds_max``): not ready, stop accepting on both listeners, drain in-flight
requests, stop the engine runner (waits for engine calls already running), ``engine.close()``
(seals, syncs), exit 0. A second signal skips the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn

from kvstore import limits
from kvstore.api.access_log import LOGGER_NAME as ACCESS_LOGGER
from kvstore.api.access_log import AccessLog
from kvstore.api.app import create_app
from kvstore.api.control import ServerHealth
from kvstore.api.http_guard import HttpGuardSettings, guarded_protocol
from kvstore.api.metrics import Metrics
from kvstore.auth import Tenants
from kvstore.cluster.membership import Membership, StaticMembership, load_peers
from kvstore.config import ConfigError, G4Config, ServeConfig, format_size
from kvstore.engine.format import digest_of
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.errors import DataDirLocked, KVStoreError
from kvstore.g4 import G4Tier, ObjectStore, S3Target
from kvstore.io_uring.select import open_device
from kvstore.service import Node
from kvstore.service.forward import Forwarder
from kvstore.service.pod import PodNamespaces
from kvstore.service.runner import EngineRunner
from kvstore.transport.bulk_server import BulkServer, start_bulk_server
from kvstore.transport.kv_events import KvEventPublisher
from kvstore.transport.resp_server import RespServer, start_resp_server
from kvstore.transport.tls import TlsFiles, TlsSetupError, peer_context, server_context
from kvstore.transport.watchdog import BodyLimits, BulkTimeouts

log = logging.getLogger("kvstore.server")


# How long before uvicorn's graceful-shutdown timeout the server closes the connections still in
# a request itself (the loop ticks every 0.1 s, so this leaves uvicorn's timer well behind).
_CUT_MARGIN_S = 0.25
# Requests named in the one line that says connections were closed at the drain bound.
_CUT_SHOWN_MAX = 3


class StartupError(Exception):
    """The server could not start (port in use, data dir unusable, ...). Exit status 1."""


def http_config_options() -> dict[str, Any]:
    """The uvicorn settings of kvstore's HTTP listener besides its socket, protocol and TLS
    (``loadtest/profile_protocol.py`` runs the same). No ``Server`` header; kvstore's own
    access log (``--access-log``) instead of uvicorn's; and no proxy-headers middleware: kvstore
    is not deployed behind a proxy it must trust, and uvicorn's default trusts
    ``X-Forwarded-For`` from 127.0.0.1, so any local client could forge the address kvstore
    logs (it also cost every request a pass over its headers)."""
    return {"lifespan": "on", "access_log": False, "server_header": False,
            "proxy_headers": False}


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: this module owns SIGTERM/SIGINT (uvicorn's
    handler re-raises the signal after shutdown, which would turn a clean stop into -15)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    # With TLS: the handshake's bound (asyncio's default is 60 s, and a connection counts
    # against --max-connections only once its handshake is done).
    tls_handshake_s: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup for the sockets this module binds, with the TLS handshake bounded
        (uvicorn passes no ``ssl_handshake_timeout``); without TLS, uvicorn's own."""
        if self.tls_handshake_s is None or sockets is None or self.config.ssl is None:
            await super().startup(sockets=sockets)
            return
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            self.should_exit = True
            return
        config, loop = self.config, asyncio.get_running_loop()

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state,
                _loop=_loop)

        self.servers = [await loop.create_server(
            create_protocol, sock=sock, ssl=config.ssl, backlog=config.backlog,
            ssl_handshake_timeout=self.tls_handshake_s,
            ssl_shutdown_timeout=limits.tls_close_timeout_seconds) for sock in sockets]
        self.started = True


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (uvicorn listens on it); port 0 picks a free port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve {host!r}: {exc}") from None
    family, stype, proto, _, addr = infos[0]
    sock = socket.socket(family, stype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def warn_if_disk_smaller(data_dir: str, capacity: int, used: int) -> None:
    """The flash budget only holds if the file system can hold it: say so loudly otherwise
    (writes would fail with ENOSPC before eviction starts)."""
    try:
        st = os.statvfs(data_dir)
    except OSError:
        return
    room = st.f_bavail * st.f_frsize + used
    if room < capacity:
        log.warning("capacity %s is more than the file system can hold (%s free plus %s in "
                    "use): writes will fail before eviction frees space; lower --capacity",
                    format_size(capacity), format_size(st.f_bavail * st.f_frsize),
                    format_size(used))


def load_tenants(path: str | None) -> Tenants:
    """Tenants from the credentials file, or development mode without one."""
    if path is None:
        return Tenants.development()
    try:
        return Tenants.from_file(path)
    except (OSError, ValueError, KVStoreError) as exc:  # JSONDecodeError is a ValueError
        raise ConfigError(f"credentials file {path!r}: {exc}") from None


def tls_context(cfg: ServeConfig, *, peer: bool = False) -> ssl.SSLContext | None:
    """The listeners' TLS context, or with ``peer`` the one for reaching the other nodes' bulk
    ports (None: plain TCP), built once; bad files are a ConfigError."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    files = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    try:
        return peer_context(files) if peer else server_context(files)
    except TlsSetupError as exc:
        raise ConfigError(str(exc)) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def connection_bounds(cfg: ServeConfig) -> tuple[HttpGuardSettings, BulkTimeouts]:
    """The HTTP guard's settings and the bulk port's timeouts, from the resolved config."""
    body = BodyLimits(idle_seconds=cfg.body_idle_timeout_seconds,
                      min_rate_bytes_per_second=cfg.body_min_rate_bytes_per_second,
                      rate_window_seconds=cfg.body_rate_window_seconds,
                      rate_grace_seconds=cfg.body_rate_grace_seconds)
    http = HttpGuardSettings(
        header_seconds=cfg.http_header_timeout_seconds,
        keepalive_seconds=cfg.http_keepalive_timeout_seconds, body=body,
        connections_max=cfg.connections_max, probe_connections=cfg.probe_connections,
        tenant_connections_max=cfg.tenant_connections_max)
    bulk = BulkTimeouts(handshake_seconds=cfg.bulk_handshake_timeout_seconds,
                        idle_seconds=cfg.bulk_idle_timeout_seconds, body=body)
    return http, bulk


def build_membership(cfg: ServeConfig, http_port: int, bulk_port: int) -> Membership | None:
    """The pod membership the flags ask for (None: a node on its own). Ports are the bound
    ones, so port 0 advertises what the kernel picked."""
    if cfg.etcd is None and cfg.peers is None:
        return None
    host = _url_host(cfg.advertise or cfg.host)
    node_id = cfg.node_id or f"{cfg.advertise or cfg.host}:{http_port}"
    try:
        if cfg.peers is not None:
            nodes = load_peers(cfg.peers)
            if node_id not in {n.node_id for n in nodes}:
                raise StartupError(f"--node-id {node_id!r} is not in the peers file "
                                   f"{cfg.peers!r}")
            return StaticMembership(nodes, self_id=node_id)
        from kvstore.cluster.etcd import EtcdMembership, node_info, parse_endpoints

        assert cfg.pod is not None and cfg.etcd is not None  # validate_pod
        scheme = "https" if cfg.tls_cert else "http"
        me = node_info(node_id, f"{scheme}://{host}:{http_port}",
                       f"{host}:{bulk_port}" if bulk_port else "", cfg.capacity_bytes)
        return EtcdMembership(cfg.pod, parse_endpoints(cfg.etcd), me,
                              lease_ttl_s=cfg.etcd_lease_ttl_seconds,
                              call_timeout_s=cfg.etcd_timeout_seconds)
    except KVStoreError as exc:
        raise StartupError(str(exc)) from None


class Server:
    """One kvstore process. ``await Server(cfg).run()`` returns the exit status."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.health = ServerHealth()
        self._stop = asyncio.Event()
        self._g4: G4Tier | None = None  # the tier below flash, with --g4 (issue 13)
        self._signals = 0
        self._http: _UvicornServer | None = None
        self._events_bound = ""
        self._tls: ssl.SSLContext | None = None
        self._peer_tls: ssl.SSLContext | None = None

    def request_stop(self, signum: int | None = None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("stopping (%s): draining for at most %gs",
                     signal.Signals(signum).name if signum else "request", self.cfg.shutdown_seconds)
            self.health.set_draining()
            if self._http is not None:
                self._http.should_exit = True
            self._stop.set()
        elif self._http is not None:
            log.warning("second signal: not waiting for in-flight requests")
            self._http.force_exit = True

    async def run(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        tenants = load_tenants(cfg.credentials)
        self._tls = tls_context(cfg)
        self._peer_tls = tls_context(cfg, peer=True)
        if tenants.dev:
            log.warning("DEVELOPMENT MODE: no --credentials, so signatures are not checked (any "
                        "key and any SigV4 signature, or none, are accepted; SigV2 is refused as "
                        "in production) and every caller owns every namespace. Serving loopback "
                        "only.")
        http_sock = bind_socket(cfg.host, cfg.port)
        device = engine = runner = None
        events: KvEventPublisher | None = None
        try:
            try:
                os.makedirs(cfg.data_dir, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"cannot create data dir {cfg.data_dir!r}: {exc}") from None
            try:
                device = open_device(cfg.device, probe_dir=cfg.data_dir)
            except (KVStoreError, OSError, ValueError) as exc:
                raise StartupError(f"cannot open device {cfg.device!r}: {exc}") from None
            engine_cfg = EngineConfig(data_dir=cfg.data_dir, capacity_bytes=cfg.capacity_bytes,
                                      segment_bytes=cfg.segment_bytes, dram_bytes=cfg.dram_bytes,
                                      lease_budget_bytes=cfg.lease_budget_bytes,
                                      master_key=cfg.master_key)
            try:
                engine = await asyncio.to_thread(Engine.open, engine_cfg, device)
            except DataDirLocked as exc:  # names the directory and the PID that holds it
                raise StartupError(str(exc)) from None
            except (KVStoreError, OSError, ValueError) as exc:
                raise StartupError(f"cannot open the store in {cfg.data_dir!r}: {exc}") from None
            warn_if_disk_smaller(cfg.data_dir, cfg.capacity_bytes, engine.flash_used_bytes())
            if cfg.g4 is not None:
                self._g4 = start_g4(cfg.g4, engine)
            runner = EngineRunner(timeout_s=cfg.engine_timeout_seconds)
            runner.start()
            per_ns = tenants.dev if cfg.metrics_namespaces is None else cfg.metrics_namespaces
            metrics = Metrics(engine, per_namespace=per_ns)
            state = Node(engine, runner, tenants, metrics=metrics, domain=cfg.domain,
                         etag=cfg.etag)
            if self._stop.is_set():
                return 0  # stopped during recovery: nothing is serving yet
            events = self._start_kv_events(engine)
            return await self._serve(state, http_sock, metrics)
        finally:
            http_sock.close()
            await self._close(engine, runner, device)
            if events is not None:  # after the engine closed: its last removals go out too
                await asyncio.to_thread(events.close)

    def _start_kv_events(self, engine: Engine) -> KvEventPublisher | None:
        """The KV-event publisher when --kv-events is given, told of every block the engine
        stores or loses."""
        if self.cfg.kv_events is None:
            return None
        try:
            pub = KvEventPublisher(self.cfg.kv_events, digest_of).start()
        except KVStoreError as exc:
            raise StartupError(str(exc)) from None
        engine.observe_blocks(pub.submit)
        self._events_bound = pub.bound
        return pub

    async def _serve(self, state: Node, http_sock: socket.socket, metrics: Metrics) -> int:
        cfg = self.cfg
        http_guard, bulk_timeouts = connection_bounds(cfg)
        try:
            bulk = await start_bulk_server(state, cfg.host, cfg.bulk_port,
                                           timeouts=bulk_timeouts,
                                           connections_max=cfg.connections_max,
                                           tenant_connections_max=cfg.tenant_connections_max,
                                           tls=self._tls)
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.host}:{cfg.bulk_port} (bulk): "
                               f"{exc.strerror or exc}") from None
        bulk_port = bulk.port
        resp_server = await self._start_resp(state, bulk_timeouts)
        app: Any = create_app(state, self.health)
        if cfg.access_log:
            app = AccessLog(app)
        drain_s = max(0.5, cfg.shutdown_seconds - 2.0)  # leaves time to close the engine
        tls = self._tls
        tls_opts: dict[str, Any] = {} if tls is None else {
            "ssl_context_factory": lambda _cfg, _default: tls}
        self._http = _UvicornServer(uvicorn.Config(
            app, http=guarded_protocol(http_guard, metrics), loop="none", log_config=None,
            timeout_graceful_shutdown=int(drain_s) or 1, **http_config_options(),
            **tls_opts))  # the guard bounds connections
        if tls is not None:
            self._http.tls_handshake_s = cfg.http_header_timeout_seconds
        task = asyncio.create_task(self._http.serve(sockets=[http_sock]))
        while not self._http.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            await self._close_bulk(bulk, 1.0)
            if resp_server is not None:
                await resp_server.close(1.0)
            err = task.exception()
            raise StartupError(f"HTTP server failed to start: {err!r}")
        # what startup built (the apps, their routes and models, the index) lives as long as
        # the process: frozen out of the collector, so a full collection under load walks only
        # what requests made since, not the whole heap
        gc.collect()
        gc.freeze()
        membership = build_membership(cfg, http_sock.getsockname()[1], bulk_port)
        if membership is not None:
            state.membership = membership
            metrics.watch_pod(membership)
            state.blocks.forward = Forwarder(
                membership, timeout_s=cfg.forward_timeout_seconds, metrics=lambda: metrics,
                replicas_of=lambda ns: state.engine.namespace(ns).replicas,
                previous_owner_read=cfg.previous_owner_read, tls=self._peer_tls)
            if hasattr(membership, "publish_namespace"):
                PodNamespaces(state.blocks, membership)  # type: ignore[arg-type]
            await membership.start()
        self._announce(http_sock, bulk_port, state, resp_server)
        stop_wait = asyncio.create_task(self._stop.wait())
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        crashed = task.done() and not self._stop.is_set()
        if crashed:
            log.error("HTTP server stopped unexpectedly: %r", task.exception())
        if membership is not None:  # leave the pod first, so clients stop choosing this node
            await membership.stop()
        deadline = asyncio.get_running_loop().time() + cfg.shutdown_seconds - 1.0
        self.health.set_draining()
        self._http.should_exit = True
        closing_bulk = asyncio.create_task(self._close_bulk(bulk, drain_s))
        closing_resp = asyncio.create_task(resp_server.close(drain_s) if resp_server is not None
                                           else asyncio.sleep(0))
        cutter = asyncio.create_task(self._cut_after(self._cut_delay_s(drain_s)))
        for waiting in (task, closing_bulk, closing_resp):
            left = max(0.1, deadline - asyncio.get_running_loop().time())
            try:
                await asyncio.wait_for(asyncio.shield(waiting), left)
            except TimeoutError:
                log.warning("drain bound reached; closing with requests still in flight")
                self._cut_inflight()
                self._http.force_exit = True
            except Exception:  # noqa: BLE001 - keep shutting down
                log.exception("error while draining")
        cutter.cancel()
        if state.blocks.forward is not None:  # after the drain: requests in flight used them
            await state.blocks.forward.close()
        return 1 if crashed else 0

    async def _start_resp(self, state: Node, bulk_timeouts: BulkTimeouts) -> RespServer | None:
        """The Redis-protocol listener when --resp-port is given (the bulk port's handshake
        and body timeouts, its own idle timeout)."""
        cfg = self.cfg
        if cfg.resp_port is None:
            return None
        timeouts = dataclasses.replace(bulk_timeouts, idle_seconds=cfg.resp_idle_timeout_seconds)
        try:
            return await start_resp_server(state, cfg.host, cfg.resp_port,
                                           namespace=cfg.resp_namespace, timeouts=timeouts,
                                           connections_max=cfg.connections_max,
                                           tenant_connections_max=cfg.tenant_connections_max,
                                           tls=self._tls)
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.host}:{cfg.resp_port} (Redis protocol): "
                               f"{exc.strerror or exc}") from None
        except KVStoreError as exc:
            raise StartupError(f"--resp-namespace: {exc}") from None

    def _cut_delay_s(self, drain_s: float) -> float:
        """When to close the HTTP connections still in a request: at the drain bound, and
        before uvicorn's own graceful-shutdown timeout cancels their tasks (each cancelled task
        logs a CancelledError traceback)."""
        assert self._http is not None
        grace = self._http.config.timeout_graceful_shutdown
        bound = drain_s if grace is None else min(drain_s, float(grace))
        return max(0.0, bound - _CUT_MARGIN_S)

    async def _cut_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._cut_inflight()

    def _cut_inflight(self) -> None:
        """Abort the HTTP connections that are still in a request (a stalled upload, a client
        that stopped reading). Their handlers see the client go away and end on their own, so
        a graceful stop logs this one line, not a traceback per request."""
        if self._http is None:
            return
        conns = list(getattr(self._http.server_state, "connections", ()))
        if not conns:
            return
        what = []
        for conn in conns:
            scope = getattr(getattr(conn, "cycle", None), "scope", None) or {}
            if scope:
                what.append(f"{scope.get('method', '?')} {scope.get('path', '?')}")
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
        shown = ", ".join(what[:_CUT_SHOWN_MAX]) + (", ..." if len(what) > _CUT_SHOWN_MAX else "")
        log.warning("drain bound reached: closed %d HTTP connection(s) still in a request (%s)",
                    len(conns), shown or "no request read yet")

    async def _close_bulk(self, bulk: BulkServer | None, timeout: float) -> None:
        """Stop accepting bulk connections and drain them (``BulkServer.close``)."""
        if bulk is not None:
            await bulk.close(timeout=timeout)

    async def _close(self, engine: Engine | None, runner: EngineRunner | None,
                     device: Any) -> None:
        if runner is not None:
            await asyncio.to_thread(runner.close)  # waits for engine calls already running
        g4, self._g4 = self._g4, None
        if g4 is not None:  # after the runner (no read-through left), before the engine
            await asyncio.to_thread(g4.close)
        if engine is not None:
            await asyncio.to_thread(engine.close)
            log.info("engine closed")
        if device is not None:
            device.close()

    def _announce(self, http_sock: socket.socket, bulk_port: int, state: Node,
                  resp_server: RespServer | None = None) -> None:
        cfg = self.cfg
        host = _url_host(cfg.host)
        http_port = http_sock.getsockname()[1]
        web, tcp = ("https", "tls") if self._tls is not None else ("http", "tcp")
        mtls = "  (mutual TLS)" if cfg.tls_client_ca else ""
        lines = [
            f"kvstore: HTTP (S3 API and /v1) on {web}://{host}:{http_port}"
            f"  (docs {web}://{host}:{http_port}/docs){mtls}",
            f"kvstore: bulk on {tcp}://{host}:{bulk_port}{mtls}",
            *([] if resp_server is None else [
                f"kvstore: Redis protocol on {'rediss' if self._tls else 'redis'}://{host}:"
                f"{resp_server.port}  (default "
                f"namespace {cfg.resp_namespace})"]),
            f"kvstore: device: {state.engine.device_name}  data dir: {cfg.data_dir}  "
            f"capacity: {format_size(cfg.capacity_bytes)}  dram: {format_size(cfg.dram_bytes)}",
        ]
        m = state.membership
        if m is not None:
            lines.append(f"kvstore: pod: {cfg.pod or 'static'} ({m.kind})  node: {m.self_id}  "
                         f"nodes: {len(m.view())}" + ("" if m.connected else "  (etcd not "
                                                     "reachable yet)"))
        if cfg.kv_events is not None:
            lines.append(f"kvstore: KV events on {self._events_bound}  (ZMQ PUB, vLLM format)")
        if state.tenants.dev:
            lines.append("kvstore: DEVELOPMENT MODE (no credentials): signatures not checked")
        lines.append("kvstore: ready")
        for line in lines:
            log.info("%s", line.removeprefix("kvstore: "))
        print("\n".join(lines), flush=True)


def run(cfg: ServeConfig) -> int:
    """Run the server on uvloop (asyncio's loop where uvloop is missing); return exit status."""
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.access_log:  # asked for by name: shown whatever --log-level says
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            return runner.run(Server(cfg).run())
        except ConfigError as exc:
            print(f"kvstore: error: {exc}", file=sys.stderr, flush=True)
            return 2
        except StartupError as exc:
            print(f"kvstore: error: {exc}", file=sys.stderr, flush=True)
            return 1


def start_g4(g: G4Config, engine: Engine) -> G4Tier:
    """The G4 tier over the object store ``g`` names, attached to ``engine`` (issue 13)."""
    target = S3Target(g.bucket, g.prefix, g.endpoint, g.region, g.access_key, g.secret_key)
    tier = G4Tier(ObjectStore(target), engine, spill_bytes_per_second=g.spill_bytes_per_second)
    log.info("G4 tier: s3://%s/%s at %s (%s)", g.bucket, g.prefix, g.endpoint, g.region)
    return tier.start()
