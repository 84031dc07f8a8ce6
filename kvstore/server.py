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
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn

from kvstore.api.access_log import LOGGER_NAME as ACCESS_LOGGER
from kvstore.api.access_log import AccessLog
from kvstore.api.app import create_app
from kvstore.api.control import ServerHealth
from kvstore.api.http_guard import HttpGuardSettings, guarded_protocol
from kvstore.api.metrics import Metrics
from kvstore.auth import Tenants
from kvstore.cluster.membership import Membership, StaticMembership, load_peers
from kvstore.config import ConfigError, ServeConfig, format_size
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.errors import DataDirLocked, KVStoreError
from kvstore.io_uring.select import open_device
from kvstore.service import Node
from kvstore.service.forward import Forwarder
from kvstore.service.pod import PodNamespaces
from kvstore.service.runner import EngineRunner
from kvstore.transport.bulk_server import BulkServer, start_bulk_server
from kvstore.transport.watchdog import BodyLimits, BulkTimeouts

log = logging.getLogger("kvstore.server")


# How long before uvicorn's graceful-shutdown timeout the server closes the connections still in
# a request itself (the loop ticks every 0.1 s, so this leaves uvicorn's timer well behind).
_CUT_MARGIN_S = 0.25
# Requests named in the one line that says connections were closed at the drain bound.
_CUT_SHOWN_MAX = 3


class StartupError(Exception):
    """The server could not start (port in use, data dir unusable, ...). Exit status 1."""


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: this module owns SIGTERM/SIGINT (uvicorn's
    handler re-raises the signal after shutdown, which would turn a clean stop into -15)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
        connections_max=cfg.connections_max, probe_connections=cfg.probe_connections)
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
        me = node_info(node_id, f"http://{host}:{http_port}",
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
        self._signals = 0
        self._http: _UvicornServer | None = None

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
        if tenants.dev:
            log.warning("DEVELOPMENT MODE: no --credentials, so signatures are not checked (any "
                        "key and any SigV4 signature, or none, are accepted; SigV2 is refused as "
                        "in production) and every caller owns every namespace. Serving loopback "
                        "only.")
        http_sock = bind_socket(cfg.host, cfg.port)
        device = engine = runner = None
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
                                      lease_budget_bytes=cfg.lease_budget_bytes)
            try:
                engine = await asyncio.to_thread(Engine.open, engine_cfg, device)
            except DataDirLocked as exc:  # names the directory and the PID that holds it
                raise StartupError(str(exc)) from None
            except (KVStoreError, OSError, ValueError) as exc:
                raise StartupError(f"cannot open the store in {cfg.data_dir!r}: {exc}") from None
            warn_if_disk_smaller(cfg.data_dir, cfg.capacity_bytes, engine.flash_used_bytes())
            runner = EngineRunner(timeout_s=cfg.engine_timeout_seconds)
            runner.start()
            metrics = Metrics(engine)
            state = Node(engine, runner, tenants, metrics=metrics, domain=cfg.domain,
                         etag=cfg.etag)
            if self._stop.is_set():
                return 0  # stopped during recovery: nothing is serving yet
            return await self._serve(state, http_sock, metrics)
        finally:
            http_sock.close()
            await self._close(engine, runner, device)

    async def _serve(self, state: Node, http_sock: socket.socket, metrics: Metrics) -> int:
        cfg = self.cfg
        http_guard, bulk_timeouts = connection_bounds(cfg)
        try:
            bulk = await start_bulk_server(state, cfg.host, cfg.bulk_port,
                                           timeouts=bulk_timeouts,
                                           connections_max=cfg.connections_max)
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.host}:{cfg.bulk_port} (bulk): "
                               f"{exc.strerror or exc}") from None
        bulk_port = bulk.port
        app: Any = create_app(state, self.health)
        if cfg.access_log:
            app = AccessLog(app)
        drain_s = max(0.5, cfg.shutdown_seconds - 2.0)  # leaves time to close the engine
        self._http = _UvicornServer(uvicorn.Config(
            app, http=guarded_protocol(http_guard, metrics), loop="none", lifespan="on",
            log_config=None, access_log=False, server_header=False,
            timeout_graceful_shutdown=int(drain_s) or 1))  # the guard bounds connections
        task = asyncio.create_task(self._http.serve(sockets=[http_sock]))
        while not self._http.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            await self._close_bulk(bulk, 1.0)
            err = task.exception()
            raise StartupError(f"HTTP server failed to start: {err!r}")
        membership = build_membership(cfg, http_sock.getsockname()[1], bulk_port)
        if membership is not None:
            state.membership = membership
            metrics.watch_pod(membership)
            state.blocks.forward = Forwarder(
                membership, timeout_s=cfg.forward_timeout_seconds, metrics=lambda: metrics,
                replicas_of=lambda ns: state.engine.namespace(ns).replicas,
                previous_owner_read=cfg.previous_owner_read)
            if hasattr(membership, "publish_namespace"):
                PodNamespaces(state.blocks, membership)  # type: ignore[arg-type]
            await membership.start()
        self._announce(http_sock, bulk_port, state)
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
        cutter = asyncio.create_task(self._cut_after(self._cut_delay_s(drain_s)))
        for waiting in (task, closing_bulk):
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
        if engine is not None:
            await asyncio.to_thread(engine.close)
            log.info("engine closed")
        if device is not None:
            device.close()

    def _announce(self, http_sock: socket.socket, bulk_port: int, state: Node) -> None:
        cfg = self.cfg
        host = _url_host(cfg.host)
        http_port = http_sock.getsockname()[1]
        lines = [
            f"kvstore: HTTP (S3 API and /v1) on http://{host}:{http_port}"
            f"  (docs http://{host}:{http_port}/docs)",
            f"kvstore: bulk on tcp://{host}:{bulk_port}",
            f"kvstore: device: {state.engine.device_name}  data dir: {cfg.data_dir}  "
            f"capacity: {format_size(cfg.capacity_bytes)}  dram: {format_size(cfg.dram_bytes)}",
        ]
        m = state.membership
        if m is not None:
            lines.append(f"kvstore: pod: {cfg.pod or 'static'} ({m.kind})  node: {m.self_id}  "
                         f"nodes: {len(m.view())}" + ("" if m.connected else "  (etcd not "
                                                     "reachable yet)"))
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
