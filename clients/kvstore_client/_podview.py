"""The state a pod client keeps between calls: its membership view (node ids, weights and one
per-node client), per-node circuit breakers and counters. Shared by ``PodClient`` and
``AsyncPodClient``; the I/O-free plans are in ``_pod``."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from kvstore_wire.placement import Member

from kvstore_client import _pod, podlimits
from kvstore_client._pod import MembershipSource, NodeSpec, StaticMembership

NodeArg = NodeSpec | dict[str, Any] | tuple[Any, ...] | str


class PodBase:
    """Membership view, breakers and counters, shared by the sync and async clients."""

    def __init__(self, nodes: Iterable[NodeArg] | None, membership: MembershipSource | None,
                 namespace: str, replicas: int | None, timeout: float, breaker_failures: int,
                 breaker_open_seconds: float, client_kw: dict[str, Any]) -> None:
        if (nodes is None) == (membership is None):
            raise _pod.InvalidArgument("give exactly one of nodes=[...], etcd= or membership=")
        self.membership: MembershipSource = membership or StaticMembership(nodes or [])
        self.namespace = namespace
        # None: the namespace's own count, as the membership source knows it (etcd), else 1
        self._replicas_arg = None if replicas is None else _pod.check_replicas(replicas)
        self.replicas = self._replicas_arg or 1
        self.timeout = _pod.check_timeout(timeout)
        self._breaker_args = (max(1, min(breaker_failures, podlimits.breaker_failures_max)),
                              min(breaker_open_seconds, podlimits.breaker_open_seconds_max))
        self._client_kw = client_kw
        self.counters = _pod.PodCounters()
        self.breakers: dict[str, _pod.Breaker] = {}
        self._clients: dict[str, Any] = {}
        # (members, owners memo) swapped as one object: a batch never mixes two views
        self._view: tuple[list[Member], dict[str, list[str]]] = ([], {})
        self._specs: dict[str, NodeSpec] = {}
        self._version: int | None = None
        self._view_lock = threading.Lock()
        self._refresh()

    def _new_client(self, spec: NodeSpec) -> Any:
        raise NotImplementedError

    def _refresh(self) -> None:
        """Rebuild the view when the membership source says it changed."""
        if self._version == self.membership.version:
            return
        with self._view_lock:
            version = self.membership.version
            specs = {s.node_id: s for s in self.membership.nodes()}
            for gone in set(self._clients) - set(specs):
                self._drop_client(gone)
            for node_id, spec in specs.items():
                cur = self._clients.get(node_id)
                if cur is None or (cur.host, cur.port) != (spec.host, spec.port):
                    if cur is not None:
                        self._drop_client(node_id)
                    self._clients[node_id] = self._new_client(spec)
                    self.breakers.setdefault(node_id, _pod.Breaker(node_id, *self._breaker_args))
            if self._replicas_arg is None:
                learned = getattr(self.membership, "replicas", None)
                n = learned(self.namespace) if callable(learned) else None
                self.replicas = n if isinstance(n, int) and 1 <= n <= podlimits.replicas_max \
                    else 1
            self._view = ([Member(s.node_id, s.weight) for s in specs.values()], {})
            self._specs = specs
            self._version = version

    def _drop_client(self, node_id: str) -> Any:
        return self._clients.pop(node_id, None)

    def _owners(self, keys: Sequence[str]) -> list[list[str]]:
        """Each key's owners, best first (``placement.owners``), memoized per view."""
        self._refresh()
        members, memo = self._view
        out = []
        missing = []
        for i, k in enumerate(keys):
            got = memo.get(k)
            out.append(got)
            if got is None:
                missing.append(i)
        if missing:
            placed = _pod.owners_of(self.namespace, [keys[i] for i in missing], members,
                                    self.replicas)
            if len(memo) + len(missing) > podlimits.placement_cache_entries_max:
                memo.clear()
            for i, own in zip(missing, placed, strict=True):
                out[i] = memo[keys[i]] = own
        return out  # type: ignore[return-value]

    def _delete_owners(self, keys: Sequence[str]) -> list[list[str]]:
        """Each key's owners and the next node in rank (the owner before the last join, which
        a server's previous-owner read may still find a copy at): what a delete must reach."""
        self._refresh()
        members, _ = self._view
        return _pod.owners_of(self.namespace, list(keys), members, self.replicas + 1)

    def _allow(self, node_id: str) -> bool:
        b = self.breakers.get(node_id)
        if b is not None and b.allow():
            return True
        self.counters.add(breaker_skips=1)
        return False

    def _failed(self, node_id: str, exc: BaseException) -> None:
        self.counters.add(node_failures=1)
        with self.counters.lock:
            per = self.counters.per_node_failures
            per[node_id] = per.get(node_id, 0) + 1
        _pod.log.info("pod node %s failed: %r", node_id, exc)
        if self.breakers[node_id].failure():
            self.counters.add(breaker_opens=1)

    def client_stats(self) -> dict[str, Any]:
        out = self.counters.snapshot()
        out["breakers"] = {n: b.state for n, b in self.breakers.items()}
        return out
