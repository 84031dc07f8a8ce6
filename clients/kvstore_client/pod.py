"""Pod clients: the calls of ``Client`` / ``AsyncClient`` over every storage node of a pod.

::

    from kvstore_client import PodClient
    nodes = [("n1", "127.0.0.11:8701"), ("n2", "127.0.0.12:8701"), ("n3", "127.0.0.13:8701")]
    with PodClient(nodes=nodes, namespace="llama-3-8b", create=True) as pod:
        pod.put_many(keys, blocks)          # each block to its owner(s), nodes in parallel
        hit = pod.lookup(chain)             # one parallel round: longest prefix in the pod

Each batch is split by owner (``kvstore_wire.placement.owners``: weighted rendezvous over the
pod's nodes with the namespace's replica count), the per-node parts run in parallel (threads
here, tasks in ``AsyncPodClient``) and the answers are merged in the caller's order. A node that
fails or does not answer within ``timeout`` (a deadline for its whole part of the batch:
connect, handshake and every wait) is a miss for reads and a skipped write (counted in
``stats()["client"]``, logged), never an exception; after ``breaker_failures`` failures in a row
its breaker opens and calls skip it for ``breaker_open_seconds``, then one half-open probe
decides. With replicas, reads go to the first live replica and fall back to the next on a miss
or failure; writes go to every live replica.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kvstore_client import _pod, podlimits
from kvstore_client._pod import FAILED, MembershipSource, NodeSpec, Plan, StaticMembership
from kvstore_client._podview import NodeArg, PodBase
from kvstore_client.client import Client, deadline
from kvstore_client.pod_aio import AsyncPodClient
from kvstore_client.tls import TlsArg, client_context

__all__ = ["AsyncPodClient", "MembershipSource", "NodeSpec", "PodClient", "StaticMembership"]

class PodClient(PodBase):
    """Blocking pod client; thread-safe. Per-node parts of a batch run on a thread pool."""

    def __init__(self, nodes: Iterable[NodeArg] | None = None, *, namespace: str,
                 membership: MembershipSource | None = None, etcd: str | Sequence[str] = "",
                 pod: str = "", replicas: int | None = None,
                 access_key: str = "dev", secret_key: str = "", create: bool = False,
                 timeout: float = podlimits.node_timeout_seconds_default,
                 breaker_failures: int = podlimits.breaker_failures_default,
                 breaker_open_seconds: float = podlimits.breaker_open_seconds_default,
                 pool_size: int = 4, threads: int = podlimits.pod_threads_default,
                 tls: TlsArg = False, ca: str | None = None, cert: str | None = None,
                 key: str | None = None) -> None:
        kw = dict(access_key=access_key, secret_key=secret_key, create=create,
                  pool_size=pool_size, tls=client_context(tls, ca, cert, key) or False)
        self._pool = ThreadPoolExecutor(max(1, min(threads, podlimits.pod_threads_max)),
                                        thread_name_prefix="kvstore-pod")
        membership = _pod.etcd_membership(etcd, pod, membership)
        super().__init__(nodes, membership, namespace, replicas, timeout, breaker_failures,
                         breaker_open_seconds, kw)

    def _new_client(self, spec: NodeSpec) -> Client:
        # No retries inside a node: the fallback is the next replica, and a dead node must cost
        # one timeout, not several.
        return Client(spec.host, spec.port, namespace=self.namespace, timeout=self.timeout,
                      retries=0, **self._client_kw)

    def _drop_client(self, node_id: str) -> Any:
        c = super()._drop_client(node_id)
        if c is not None:
            c.close()
        return c

    def _renew_client(self, node_id: str) -> None:
        with self._view_lock:
            old = self._clients.get(node_id)
            spec = self._specs.get(node_id)
            if old is None or spec is None:
                return
            self._clients[node_id] = self._new_client(spec)
        old.close()

    def _part(self, node: str, call: Callable[[Client, list[int]], Any], idxs: list[int]) -> Any:
        client = self._clients.get(node)
        if client is None:
            return FAILED
        try:
            with deadline(self.timeout):  # the timeout bounds the whole part, every wait in it
                got = call(client, idxs)
        except BaseException as exc:
            if not _pod.is_node_failure(exc):
                raise
            self._failed(node, exc)
            self._renew_client(node)  # its pooled connections may all be dead
            return FAILED
        self.breakers[node].success()
        return got

    def _drive(self, plan: Plan, call: Callable[[Client, list[int]], Any]) -> Any:
        try:
            parts = next(plan)
            while True:
                items = [(p.lstrip("\0"), p, idxs) for p, idxs in parts.items()]
                # the caller's thread takes the first part itself (one node: no thread hop)
                futs = {p: self._pool.submit(self._part, node, call, idxs)
                        for node, p, idxs in items[1:]}
                node, p, idxs = items[0]
                answers = {p: self._part(node, call, idxs)}
                answers.update((q, f.result()) for q, f in futs.items())
                parts = plan.send(answers)
        except StopIteration as stop:
            return stop.value

    def close(self) -> None:
        for node in list(self._clients):
            self._drop_client(node)
        self._pool.shutdown(wait=True)
        self.membership.close()

    def __enter__(self) -> PodClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API (the calls of Client) -----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """``{"nodes": {node_id: that node's stats, or None if it did not answer},
        "client": this client's pod counters and breaker states}``."""
        self._refresh()
        nodes = list(self._clients)
        futs = {n: self._pool.submit(self._part, n, lambda c, _: c.stats(), [])
                for n in nodes if self._allow(n)}
        per = {n: (futs[n].result() if n in futs else FAILED) for n in nodes}
        return {"nodes": {n: (None if v is FAILED else v) for n, v in per.items()},
                "client": self.client_stats()}

    def put(self, key: str, value: Any, *, ttl_seconds: float = 0.0,
            overwrite: bool = False) -> bool:
        return self.put_many([key], [value], ttl_seconds=ttl_seconds, overwrite=overwrite)[0]

    def put_many(self, keys: Sequence[str], values: Sequence[Any], *,
                 ttl_seconds: float = 0.0, overwrite: bool = False) -> list[bool]:
        """``Client.put_many`` on every live owner; result[i] is True when some replica stored
        keys[i] in this call, False when it was present or no owner could take it."""
        if len(keys) != len(values):
            raise _pod.InvalidArgument("keys and values differ in length")
        plan = _pod.write_plan(self._owners(keys), self._allow, self.counters)
        return self._drive(plan, lambda c, ix: c.put_many(
            [keys[i] for i in ix], [values[i] for i in ix], ttl_seconds=ttl_seconds,
            overwrite=overwrite))

    def get(self, key: str) -> bytes | None:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        plan = _pod.read_plan(self._owners(keys), self._allow, lambda v: v is not None, None,
                              self.counters)
        return self._drive(plan, lambda c, ix: c.get_many(
            [keys[i] for i in ix]))

    def get_into(self, key: str, buf: Any) -> int | None:
        return self.get_many_into([key], [buf])[0]

    def get_many_into(self, keys: Sequence[str], bufs: Sequence[Any]) -> list[int | None]:
        """Receive keys[i] into bufs[i] from its owner (the next replica on a miss or failure);
        None on a miss, also when no owner answered."""
        plan = _pod.read_plan(self._owners(keys), self._allow, lambda v: v is not None, None,
                              self.counters)
        return self._drive(plan, lambda c, ix: c.get_many_into(
            [keys[i] for i in ix], [bufs[i] for i in ix]))

    def exists_many(self, keys: Sequence[str]) -> list[bool]:
        plan = _pod.read_plan(self._owners(keys), self._allow, bool, False, self.counters)
        return self._drive(plan, lambda c, ix: c.exists_many(
            [keys[i] for i in ix]))

    def delete_many(self, keys: Sequence[str]) -> int:
        plan = _pod.count_plan(self._delete_owners(keys), self._allow, every_replica=True)
        return self._drive(plan, lambda c, ix: c.delete_many(
            [keys[i] for i in ix]))

    def prefetch(self, keys: Sequence[str]) -> int:
        """Stage blocks in their owners' DRAM tiers; how many were staged."""
        plan = _pod.count_plan(self._owners(keys), self._allow, every_replica=False)
        return self._drive(plan, lambda c, ix: c.prefetch(
            [keys[i] for i in ix]))

    def lookup(self, keys: Sequence[str], *, lease_seconds: float = 0.0) -> int:
        """Longest present prefix of the chain ``keys`` across the pod, every owner asked in
        one parallel round (a lease, if asked, pins what each owner found)."""
        plan = _pod.lookup_plan(self._owners(keys), self._allow, self.counters)
        return self._drive(plan, lambda c, ix: c.lookup(
            [keys[i] for i in ix], lease_seconds=lease_seconds))
