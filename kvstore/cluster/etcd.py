"""``EtcdMembership``: register this node under an etcd lease and watch the pod's keys.

Keys (values are JSON):

- ``/kvstore/<pod>/nodes/<node id>``: ``{"http", "bulk", "capacity_bytes", "epoch"}``, put with
  this node's lease; when the lease lapses (the node died) etcd deletes the key and every
  watcher drops the node;
- ``/kvstore/<pod>/namespaces/<name>``: ``{"owner", "layout", "block_bytes"}``, no lease: a
  namespace outlives the node that created it.

Client: ``aetcd`` (asyncio over grpc.aio; docs/ARCHITECTURE.md "The pod" says why). One session
is: connect to the next etcd URL, grant a lease, put this node's key, read both prefixes at one
revision, watch from the next revision, refresh the lease every TTL/3. Any failure (a call past
its timeout, the watch stream breaking, a refresh that finds the lease gone) ends the session:
the view is kept as it was (the node keeps serving what it knows), and a new session starts
after ``limits.etcd_retry_seconds``, which registers again under a new lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aetcd

from kvstore import limits
from kvstore.cluster.membership import Membership, NodeInfo
from kvstore.errors import InvalidArgument

log = logging.getLogger("kvstore.cluster.etcd")

NamespaceCallback = Callable[[str, "dict[str, Any] | None"], Awaitable[None]]


def parse_endpoints(urls: str | Sequence[str]) -> list[tuple[str, int]]:
    """``http://127.0.0.1:2379,127.0.0.2:2379`` -> [(host, port), ...]."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = []
    for raw in (u.strip() for u in items):
        if not raw:
            continue
        parts = urlsplit(raw if "://" in raw else f"http://{raw}")
        if parts.scheme not in ("http", "") or not parts.hostname:
            raise InvalidArgument(f"etcd URL {raw!r}: expected http://HOST:PORT (no TLS yet)")
        try:
            port = parts.port or 2379
        except ValueError:
            raise InvalidArgument(f"etcd URL {raw!r}: bad port") from None
        out.append((parts.hostname, port))
    if not out:
        raise InvalidArgument("no etcd URL given")
    return out


def pod_prefix(pod: str) -> str:
    return f"/kvstore/{pod}/"


async def read_pod(endpoints: Sequence[tuple[str, int]], pod: str,
                   timeout_s: float = limits.etcd_call_timeout_seconds_default,
                   ) -> tuple[dict[str, NodeInfo], dict[str, dict[str, Any]]]:
    """One read of a pod's nodes and namespaces (``kvstore pod status``)."""
    last: Exception | None = None
    for host, port in endpoints:
        client = aetcd.Client(host=host, port=port, timeout=timeout_s)
        try:
            res = await asyncio.wait_for(client.get_prefix(pod_prefix(pod).encode()), timeout_s)
            nodes, namespaces = _split(pod, [(kv.key, kv.value) for kv in res])
            return nodes, namespaces
        except Exception as exc:  # noqa: BLE001 - try the next URL
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), timeout_s)  # a grpc close can hang
    raise ConnectionError(f"no etcd answered at {endpoints}: {last!r}")


def _split(pod: str, kvs: list[tuple[bytes, bytes]],
           ) -> tuple[dict[str, NodeInfo], dict[str, dict[str, Any]]]:
    nodes: dict[str, NodeInfo] = {}
    namespaces: dict[str, dict[str, Any]] = {}
    for key, value in kvs:
        kind, name = _parse_key(pod, key)
        try:
            if kind == "nodes" and len(nodes) < limits.pod_nodes_max:
                nodes[name] = NodeInfo.from_json(name, value)
            elif kind == "namespaces" and len(namespaces) < limits.namespaces_max:
                doc = json.loads(value)
                if isinstance(doc, dict):
                    namespaces[name] = doc
        except (InvalidArgument, ValueError) as exc:
            log.warning("ignoring etcd key %r: %s", key, exc)
    return nodes, namespaces


def _parse_key(pod: str, key: bytes) -> tuple[str, str]:
    rest = key.decode("utf-8", "replace").removeprefix(pod_prefix(pod))
    kind, _, name = rest.partition("/")
    return kind, name


class EtcdMembership(Membership):
    kind = "etcd"

    def __init__(self, pod: str, endpoints: Sequence[tuple[str, int]], me: NodeInfo, *,
                 lease_ttl_s: float = limits.etcd_lease_ttl_seconds_default,
                 call_timeout_s: float = limits.etcd_call_timeout_seconds_default) -> None:
        super().__init__(me.node_id)
        self.pod = pod
        self.endpoints = list(endpoints)
        self.me = me
        self.lease_ttl_s = lease_ttl_s
        self.keepalive_s = lease_ttl_s / limits.etcd_keepalives_per_ttl
        self.call_timeout_s = min(call_timeout_s, self.keepalive_s)
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.registrations = 0  # sessions that registered this node (1 + re-registrations)
        self._on_namespace: list[NamespaceCallback] = []
        self._pending: dict[str, dict[str, Any] | None] = {}  # namespace writes etcd missed
        self._client: Any = None
        self._lease: Any = None
        self._connected = False
        self._registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next = 0

    @property
    def connected(self) -> bool:
        return self._connected

    def _key(self, kind: str, name: str) -> bytes:
        return f"{pod_prefix(self.pod)}{kind}/{name}".encode()

    # -- namespaces ------------------------------------------------------------------------
    def on_namespace(self, callback: NamespaceCallback) -> None:
        """``await callback(name, value)`` for each namespace put (value) or deleted (None) in
        etcd, including those found at each (re)connect."""
        self._on_namespace.append(callback)

    async def publish_namespace(self, name: str, value: dict[str, Any] | None) -> bool:
        """Record (value) or delete (None) a namespace pod-wide. False: etcd is unreachable;
        the write is kept and made when etcd is back."""
        self._pending[name] = value
        if not self._connected:
            return False
        try:
            await self._flush_one(name, value)
        except Exception as exc:  # noqa: BLE001 - etcd down: the session notices and retries
            log.warning("etcd: namespace %s not recorded yet (%r); retrying when etcd is back",
                        name, exc)
            return False
        return True

    async def _flush_one(self, name: str, value: dict[str, Any] | None) -> None:
        key = self._key("namespaces", name)
        if value is None:
            await self._call(self._client.delete(key))
        else:
            await self._call(self._client.put(key, json.dumps(value, sort_keys=True).encode()))
        if self._pending.get(name, 0) == value:
            self._pending.pop(name, None)

    async def _apply_namespace(self, name: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self.namespaces.pop(name, None)
        else:
            self.namespaces[name] = value
        for cb in list(self._on_namespace):
            try:
                await cb(name, value)
            except Exception:  # noqa: BLE001 - a failed local apply must not end the session
                log.exception("applying namespace %s from etcd failed", name)

    # -- life cycle ------------------------------------------------------------------------
    async def start(self, wait_s: float = limits.etcd_start_wait_seconds) -> None:
        """Start the session loop; wait (bounded) for the first registration."""
        self._task = asyncio.create_task(self._run(), name="etcd-membership")
        try:
            await asyncio.wait_for(self._registered.wait(), wait_s)
        except TimeoutError:
            log.warning("etcd %s not reachable within %gs: serving alone, registering when it "
                        "answers", self._urls(), wait_s)

    async def stop(self) -> None:
        """Revoke this node's lease (its key goes at once, not when the lease lapses), then end
        the session loop."""
        client, lease = self._client, self._lease
        if client is not None and lease is not None and self._connected:
            try:
                await asyncio.wait_for(lease.revoke(), self.call_timeout_s)
                log.info("etcd: deregistered %s", self.me.node_id)
            except Exception as exc:  # noqa: BLE001 - the lease lapses on its own
                log.warning("etcd: deregistering failed (%r); the lease lapses in %gs",
                            exc, self.lease_ttl_s)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # bounded: the session's own cleanup (closing the client) is bounded too, so this
            # only waits long when something below ignores cancellation
            await asyncio.wait({task}, timeout=2 * self.call_timeout_s + 1.0)
            if task.done() and not task.cancelled():
                with contextlib.suppress(Exception):
                    task.result()
        self._connected = False

    def _urls(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    async def _run(self) -> None:
        while True:
            host, port = self.endpoints[self._next % len(self.endpoints)]
            try:
                await self._session(host, port)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - etcd down or slow: keep the last view
                if self._connected:
                    log.warning("etcd %s:%d lost (%r): keeping the last view of %d node(s)",
                                host, port, exc, len(self._view))
                else:
                    log.debug("etcd %s:%d not reachable: %r", host, port, exc)
            finally:
                self._connected = False
                client, self._client, self._lease = self._client, None, None
                if client is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.close(), self.call_timeout_s)
            self._next += 1
            await asyncio.sleep(limits.etcd_retry_seconds)

    async def _call(self, aw: Awaitable[Any]) -> Any:
        return await asyncio.wait_for(aw, self.call_timeout_s)

    async def _session(self, host: str, port: int) -> None:
        self._client = client = aetcd.Client(host=host, port=port, timeout=self.call_timeout_s)
        ttl = max(1, round(self.lease_ttl_s))
        self._lease = lease = await self._call(client.lease(ttl))
        await self._call(client.put(self._key("nodes", self.me.node_id), self.me.to_json(),
                                    lease=lease))
        res = await self._call(client.get_prefix(pod_prefix(self.pod).encode()))
        revision = res.header.revision
        nodes, namespaces = _split(self.pod, [(kv.key, kv.value) for kv in res])
        self._connected = True
        self.registrations += 1
        log.info("etcd %s:%d: registered %s in pod %s (lease %ds), %d node(s)", host, port,
                 self.me.node_id, self.pod, ttl, len(nodes))
        self._set_view(nodes)
        # etcd's namespaces win, except those this node changed while etcd was away (pending)
        for name in sorted(set(self.namespaces) - set(namespaces) - set(self._pending)):
            await self._apply_namespace(name, None)
        for name, ns_value in sorted(namespaces.items()):
            if self.namespaces.get(name) != ns_value and name not in self._pending:
                await self._apply_namespace(name, ns_value)
        for name, pending in list(self._pending.items()):
            await self._flush_one(name, pending)
        self._registered.set()
        watch = await self._call(client.watch_prefix(pod_prefix(self.pod).encode(),
                                                     start_revision=revision + 1))
        tasks = [asyncio.create_task(self._watch(watch)),
                 asyncio.create_task(self._keepalive(lease))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # raises what ended the session
            raise ConnectionError("etcd watch ended")
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.cancel(), self.call_timeout_s)

    async def _keepalive(self, lease: Any) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            res = await self._call(lease.refresh())
            if int(getattr(res, "TTL", 0)) <= 0:  # lapsed or revoked: register again
                raise ConnectionError("etcd: this node's lease is gone")

    async def _watch(self, watch: Any) -> None:
        async for ev in watch:
            kind, name = _parse_key(self.pod, ev.kv.key)
            deleted = ev.kind == aetcd.EventKind.DELETE
            if kind == "nodes":
                view = dict(self._view)
                if deleted:
                    view.pop(name, None)
                elif name in view or len(view) < limits.pod_nodes_max:
                    try:
                        view[name] = NodeInfo.from_json(name, ev.kv.value)
                    except InvalidArgument as exc:
                        log.warning("ignoring node %s: %s", name, exc)
                self._set_view(view)
            elif kind == "namespaces":
                value = None
                if not deleted:
                    try:
                        value = json.loads(ev.kv.value)
                    except ValueError:
                        continue
                await self._apply_namespace(name, value if isinstance(value, dict) else None)


def node_info(node_id: str, http: str, bulk: str, capacity_bytes: int) -> NodeInfo:
    """This node's description, stamped with the start epoch."""
    return NodeInfo(node_id, http, bulk, capacity_bytes, epoch=round(time.time(), 3))
