"""Membership from etcd: the nodes registered under ``/kvstore/<pod>/nodes/<node_id>``.

Optional (``pip install "./clients[etcd]"``: ``aetcd``, asyncio on grpc.aio, the etcd v3 client
that works with current protobuf). The servers register themselves there under a lease, with a
JSON value naming their endpoints, capacity and start epoch; a node whose lease lapses is gone
from the prefix, hence from this view. ``EtcdMembership`` keeps the view on its own thread:
it lists the prefix, then watches it from the listed revision and lists again on every event
(a few nodes: a re-list is cheaper than being clever). When etcd is unreachable it keeps the
last view and retries (clients keep serving with what they knew).

It also reads the pod's namespaces (``/kvstore/<pod>/namespaces/<name>``, whose ``replicas``
field is the namespace's replica count: ``replicas(namespace)``, what a pod client uses unless
it was given ``replicas=``).

The value's fields read here: ``bulk`` — what ``kvstore serve`` writes (see
``kvstore.cluster.membership.NodeInfo.to_json``): ``{"bulk": "host:port", "http": URL,
"capacity_bytes": N, "epoch": T}`` — or ``endpoints.bulk``, as ``"host:port"``,
``"tcp://host:port"`` or ``{"host": ..., "port": ...}``; and for the placement weight ``weight`` if present, else
``capacity_bytes`` (rendezvous ranks do not change when every weight is scaled by one factor,
so capacity in bytes and capacity in GiB place alike), else 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from kvstore_wire.errors import InvalidArgument

from kvstore_client import podlimits
from kvstore_client._pod import NodeSpec

log = logging.getLogger("kvstore_client.pod")


def nodes_prefix(pod: str) -> str:
    return f"/kvstore/{pod}/nodes/"


def pod_prefix(pod: str) -> str:
    return f"/kvstore/{pod}/"


def parse_replicas(value: bytes) -> int | None:
    """A namespace record's replica count (None: unreadable or out of range)."""
    try:
        n = int(json.loads(value).get("replicas", 1) or 1)
    except (ValueError, TypeError, AttributeError):
        return None
    return n if 1 <= n <= podlimits.replicas_max else None


def parse_registration(node_id: str, value: bytes) -> NodeSpec | None:
    """The ``NodeSpec`` of one registration value, or None (logged) if it cannot be read."""
    try:
        d = json.loads(value)
        # a kvstore server writes {"http", "bulk", ...}; {"endpoints": {"bulk"}} is accepted too
        bulk = d["endpoints"]["bulk"] if "endpoints" in d else d["bulk"]
        if isinstance(bulk, dict):
            host, port = str(bulk["host"]), int(bulk["port"])
        else:
            parts = urlsplit(bulk if "//" in str(bulk) else f"tcp://{bulk}")
            host, port = str(parts.hostname), int(parts.port or 0)
        weight = float(d.get("weight") or d.get("capacity_bytes") or 1.0)
        return NodeSpec(str(d.get("node_id", node_id)), host, port, weight)
    except (ValueError, KeyError, TypeError, InvalidArgument) as exc:
        log.warning("etcd registration of node %r unreadable (%s): %.200r", node_id, exc, value)
        return None


class EtcdMembership:
    """A ``MembershipSource`` fed by an etcd prefix (list, then watch; re-list on events)."""

    def __init__(self, urls: str | Sequence[str], pod: str, *,
                 timeout: float = podlimits.etcd_timeout_seconds_default) -> None:
        try:
            import aetcd  # noqa: F401
        except ImportError:
            raise ImportError('etcd membership needs aetcd: pip install "kvstore-client[etcd]"'
                              ) from None
        endpoints = [urls] if isinstance(urls, str) else list(urls)
        self.urls = [u for e in endpoints for u in e.split(",") if u]
        if not self.urls:
            raise InvalidArgument("etcd= needs at least one URL")
        self.pod, self.timeout = pod, timeout
        self.prefix = pod_prefix(pod).encode()  # nodes and namespaces
        self._nodes_prefix = nodes_prefix(pod).encode()
        self._ns_prefix = f"{pod_prefix(pod)}namespaces/".encode()
        self._nodes: list[NodeSpec] = []
        self._replicas: dict[str, int] = {}
        self._version = 0
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._run(),), name="kvstore-pod-etcd",
                                        daemon=True)
        self._thread.start()
        if not self._first.wait(timeout):
            log.warning("etcd %s: no membership for pod %r within %.3gs (retrying)", self.urls,
                        pod, timeout)

    @property
    def version(self) -> int:
        return self._version

    def nodes(self) -> Sequence[NodeSpec]:
        with self._lock:
            return list(self._nodes)

    def replicas(self, namespace: str) -> int | None:
        """The namespace's replica count as recorded in etcd (None: not recorded)."""
        with self._lock:
            return self._replicas.get(namespace)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + podlimits.etcd_retry_seconds_max + 1)

    # -- the watcher thread --------------------------------------------------------------------
    def _set(self, nodes: list[NodeSpec], replicas: dict[str, int] | None = None) -> None:
        with self._lock:
            if nodes != self._nodes or (replicas is not None and replicas != self._replicas):
                self._nodes = nodes
                if replicas is not None:
                    self._replicas = replicas
                self._version += 1
                log.info("pod %s: %d node(s): %s", self.pod, len(nodes),
                         ", ".join(n.node_id for n in nodes))
        self._first.set()

    async def _list(self, client: Any) -> int:
        got = await asyncio.wait_for(client.get_prefix(self.prefix), self.timeout)
        nodes = []
        replicas: dict[str, int] = {}
        for kv in got:
            if kv.key.startswith(self._ns_prefix):
                r = parse_replicas(kv.value)
                if r is not None:
                    replicas[kv.key[len(self._ns_prefix):].decode(errors="replace")] = r
                continue
            if not kv.key.startswith(self._nodes_prefix):
                continue
            node_id = kv.key[len(self._nodes_prefix):].decode(errors="replace")
            spec = parse_registration(node_id, kv.value)
            if spec is not None:
                nodes.append(spec)
        self._set(sorted(nodes, key=lambda n: n.node_id), replicas)
        return int(got.header.revision)

    async def _pump(self, client: Any, watch: Any) -> None:
        async for _event in watch:
            await self._list(client)

    async def _run(self) -> None:
        import aetcd

        retry, i = podlimits.etcd_retry_seconds_min, 0
        while not self._stop.is_set():
            url = urlsplit(self.urls[i % len(self.urls)])
            i += 1
            client = aetcd.Client(host=url.hostname or "127.0.0.1", port=url.port or 2379,
                                  timeout=max(1, int(self.timeout)))
            try:
                revision = await self._list(client)
                retry = podlimits.etcd_retry_seconds_min
                watch = await asyncio.wait_for(
                    client.watch_prefix(self.prefix, start_revision=revision + 1), self.timeout)
                pump = asyncio.ensure_future(self._pump(client, watch))
                try:
                    waited = 0.0
                    while not self._stop.is_set():
                        await asyncio.sleep(podlimits.etcd_poll_seconds)
                        if pump.done():
                            pump.result()  # the watch broke: raise, reconnect
                            raise ConnectionError("etcd watch ended")
                        waited += podlimits.etcd_poll_seconds
                        if waited >= podlimits.etcd_relist_seconds:  # safety net
                            waited = 0.0
                            await self._list(client)
                finally:
                    pump.cancel()
            except Exception as exc:  # etcd down or unreachable: keep the last view
                log.warning("etcd %s: %r; keeping the last view of pod %s, retry in %.3gs",
                            url.netloc, exc, self.pod, retry)
                await asyncio.sleep(retry)
                retry = min(retry * 2, podlimits.etcd_retry_seconds_max)
            finally:
                try:
                    await asyncio.wait_for(client.close(), self.timeout)
                except Exception:  # noqa: BLE001 - closing a dead channel
                    pass
