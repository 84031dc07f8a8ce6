"""Any-node access: a request for a block another live node owns is forwarded to that owner.

``Forwarder`` is asked by ``BlockService`` (S3 object calls and the ``/v1`` block calls, after
the entry node authorized the tenant) "whose block is this?" (``owner``: None when it is this
node's, or when there is no pod) and then does the call at the owner over its **bulk port**
with the SDK's ``AsyncClient`` (one client implementation of the protocol, not a second one in
the server) and the SDK's per-node circuit breaker (``kvstore_client._pod.Breaker``).

- **One hop**: only the HTTP front ends (S3 and ``/v1``) forward; a forwarded request arrives
  on the owner's bulk port, whose handlers call the local engine only. The bulk port is the
  marker: a request that came over it is never forwarded again.
- **Peers authenticate as the caller**: every node of a pod reads the same credentials file,
  so the entry node opens the owner's bulk port with the caller's own access key (HELLO proves
  the secret as any SDK client does); the owner authorizes the same tenant with the same
  policy over the same pod-wide namespaces. No pod-wide super-credential exists to leak.
- **Failure is a miss**: each call is bounded by ``timeout_s`` (``--forward-timeout``); a node
  that does not answer (refused, reset, timed out, protocol error, bad digest) or whose breaker
  is open makes a read a miss and a write a skipped write, counted in
  ``kvstore_forwarded_requests_total{op, outcome}`` and logged; the caller's own mistakes
  (access denied, a bad key) still raise.
- **Bounded memory**: a forwarded block is one bulk GET/PUT of at most the block limit
  (64 MiB); clients are cached per (node, tenant, namespace), at most
  ``limits.forward_clients_max``, each with ``limits.forward_pool_connections`` idle sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from kvstore_client._pod import Breaker, is_node_failure
from kvstore_client.aio import AsyncClient
from kvstore_wire.checksum import block_checksum
from kvstore_wire.errors import NamespaceNotFound

from kvstore import limits
from kvstore.auth import Tenant
from kvstore.cluster.membership import Membership, NodeInfo

__all__ = ["Forwarder", "NodeInfo", "checksum_of"]

log = logging.getLogger("kvstore.forward")
T = TypeVar("T")
# a forwarded block: (bytes, stored metadata, created, expires: 0 = never)
Record = tuple[bytes, bytes, float, float]

OUTCOMES = ("ok", "miss", "failed", "breaker_open")
OPS = ("get", "head", "put", "delete", "exists", "lookup", "prefetch", "list", "copy")


class Forwarder:
    def __init__(self, membership: Membership, *,
                 timeout_s: float = limits.forward_timeout_seconds_default,
                 metrics: Callable[[], Any] = lambda: None,
                 replicas_of: Callable[[str], int] = lambda ns: 1,
                 previous_owner_read: bool = True, tls: ssl.SSLContext | None = None) -> None:
        self.membership = membership
        self.tls = tls  # the peers' bulk ports speak TLS (kvstore.transport.tls.peer_context)
        self.timeout_s = timeout_s
        self._replicas_of = replicas_of
        self.previous_owner_read = previous_owner_read
        self._metrics = metrics
        self._clients: OrderedDict[tuple[str, str, str, str], AsyncClient] = OrderedDict()
        self._breakers: dict[str, Breaker] = {}
        # copy-forwards in flight (pod_blocks.copy_forward), one per block at most
        self.copies: dict[tuple[str, str], asyncio.Future[None]] = {}

    # -- placement -------------------------------------------------------------------------
    def replicas(self, ns: str) -> int:
        """The namespace's replica count (1 when unknown here)."""
        try:
            n = int(self._replicas_of(ns))
        except Exception:  # noqa: BLE001 - an absent namespace: the caller's call says so
            return 1
        return max(1, min(n, limits.namespace_replicas_max))

    def ranked(self, ns: str, key: str, n: int = 1) -> list[NodeInfo]:
        """The block's ``n`` best owners in rendezvous order (empty: no pod view with us)."""
        m = self.membership
        if m.self_id not in m.view():
            return []
        return m.owners(ns, key, n)

    def owners(self, ns: str, key: str) -> tuple[list[NodeInfo], NodeInfo | None]:
        """(the block's live replicas, best first; its previous owner): the ``replicas(ns)``
        best nodes in rendezvous order, and the next one (the last replica before the latest
        join: the one extra node a read that missed at every replica asks; None when there is
        none, or when previous-owner reads are off). Both empty/None without a pod view."""
        r = self.replicas(ns)
        ranked = self.ranked(ns, key, r + 1)
        prev = ranked[r] if len(ranked) > r and self.previous_owner_read else None
        return ranked[:r], prev

    def owner(self, ns: str, key: str) -> NodeInfo | None:
        """The node a read of the block goes to when that is not this one (None: this node is
        a replica, or there is no pod: serve locally)."""
        reps, _ = self.owners(ns, key)
        if not reps or any(self.is_self(n) for n in reps):
            return None
        return reps[0]

    def previous_owner(self, ns: str, key: str) -> NodeInfo | None:
        """The node after the replicas in rendezvous order (see ``owners``)."""
        return self.owners(ns, key)[1]

    def is_self(self, node: NodeInfo) -> bool:
        return node.node_id == self.membership.self_id

    def group(self, ns: str, keys: Sequence[str], *,
              every_replica: bool = False) -> dict[str | None, list[int]]:
        """Key indexes by the node to ask (None: this node), in the caller's order: one node
        per key (this one when it is a replica, else the first replica), or with
        ``every_replica`` each of its replicas and its previous owner (a delete)."""
        out: dict[str | None, list[int]] = {}
        for i, k in enumerate(keys):
            if every_replica:  # and the previous owner: a delete must not leave a copy there
                reps, prev = self.owners(ns, k)
                nodes = [*reps, prev] if prev is not None else reps
                ids = {None if self.is_self(n) else n.node_id for n in nodes} or {None}
            else:
                o = self.owner(ns, k)
                ids = {None if o is None else o.node_id}
            for node_id in ids:
                out.setdefault(node_id, []).append(i)
        return out

    def node(self, node_id: str) -> NodeInfo | None:
        return self.membership.view().get(node_id)

    def peers(self) -> list[NodeInfo]:
        """Every live node but this one, by id."""
        v = self.membership.view()
        return [v[k] for k in sorted(v) if k != self.membership.self_id]

    # -- calls -----------------------------------------------------------------------------
    def breaker(self, node: NodeInfo) -> Breaker:
        b = self._breakers.get(node.node_id)
        if b is None:
            b = self._breakers[node.node_id] = Breaker(
                node.node_id, limits.forward_breaker_failures, limits.forward_breaker_open_seconds)
        return b

    def _client(self, node: NodeInfo, tenant: Tenant, ns: str) -> AsyncClient:
        ck = (node.node_id, node.bulk, tenant.access_key, ns)
        c = self._clients.get(ck)
        if c is not None:
            self._clients.move_to_end(ck)
            return c
        host, _, port = node.bulk.rpartition(":")
        # an unsigned /v1 call in development mode has no access key: the dev key then. One
        # retry, at once: a pooled connection the owner closed while idle is not a dead owner;
        # the whole call stays bounded by timeout_s (``call``'s wait_for).
        c = AsyncClient(host, int(port), namespace=ns, access_key=tenant.access_key or "dev",
                        secret_key=tenant.secret_key, timeout=self.timeout_s,
                        pool_size=limits.forward_pool_connections, retries=1,
                        backoff_seconds=0.0, tls=self.tls or False)
        self._clients[ck] = c
        while len(self._clients) > limits.forward_clients_max:
            _, old = self._clients.popitem(last=False)
            asyncio.ensure_future(old.close())
        return c

    def _drop(self, node: NodeInfo) -> None:
        for ck in [ck for ck in self._clients if ck[0] == node.node_id]:
            asyncio.ensure_future(self._clients.pop(ck).close())

    def count(self, op: str, outcome: str) -> None:
        m = self._metrics()
        if m is not None:
            with contextlib.suppress(Exception):
                m.forwarded(op, outcome)

    def count_copy(self, outcome: str) -> None:
        m = self._metrics()
        if m is not None:
            with contextlib.suppress(Exception):
                m.copy_forward(outcome)

    async def call(self, op: str, node: NodeInfo, tenant: Tenant, ns: str,
                   fn: Callable[[AsyncClient], Awaitable[T]], failed: T) -> tuple[T, bool]:
        """``fn(client)`` at ``node``: (its answer, True), or (``failed``, False) when the node
        did not answer in time or its breaker is open (counted, logged)."""
        b = self.breaker(node)
        if not node.bulk or not b.allow():
            self.count(op, "breaker_open")
            return failed, False
        try:
            res = await self._answer(node, tenant, ns, fn)
        except Exception as exc:
            if not is_node_failure(exc):
                b.success()  # it answered: the caller's mistake, raised as at the owner
                raise
            b.failure()
            self._drop(node)
            self.count(op, "failed")
            log.warning("forward %s %s/... to %s (%s) failed: %r", op, ns, node.node_id,
                        node.bulk, exc)
            return failed, False
        b.success()
        return res, True

    async def _answer(self, node: NodeInfo, tenant: Tenant, ns: str,
                      fn: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """``fn`` at ``node`` within ``timeout_s``. The entry node authorized the namespace,
        so an owner's NamespaceNotFound means that owner has not applied it from etcd's watch
        yet (created elsewhere a moment ago): asked again after a short pause until the
        timeout, when its answer stands."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            try:
                return await asyncio.wait_for(fn(self._client(node, tenant, ns)),
                                              max(0.0, deadline - loop.time()))
            except NamespaceNotFound:
                pause = limits.forward_namespace_retry_seconds
                if loop.time() + pause >= deadline:
                    raise
                await asyncio.sleep(pause)

    # -- the forwarded operations (each one node, one round) -------------------------------
    async def fetch(self, node: NodeInfo, tenant: Tenant, ns: str, key: str, *,
                    op: str = "get") -> tuple[Record | None, bool]:
        """(the block's bytes, metadata and creation time at ``node``, or None for a miss;
        whether the node answered)."""
        rec, ok = await self.call(op, node, tenant, ns, lambda c: c.get_record(key), None)
        if ok:
            self.count(op, "ok" if rec is not None else "miss")
        return rec, ok

    async def get(self, node: NodeInfo, tenant: Tenant, ns: str, key: str, *,
                  op: str = "get") -> bytes | None:
        """The block's bytes at ``node`` (None: a miss, or the node did not answer)."""
        rec, _ = await self.fetch(node, tenant, ns, key, op=op)
        return None if rec is None else rec[0]

    async def put(self, node: NodeInfo, tenant: Tenant, ns: str, key: str, data: Any, *,
                  overwrite: bool, meta: bytes = b"", op: str = "put",
                  ttl_seconds: float = 0.0) -> bool | None:
        """Store at ``node`` (with ``meta``, the S3 metadata): the created flag, or None for a
        skipped write."""
        created, ok = await self.call(
            op, node, tenant, ns,
            lambda c: c.put_many([key], [data], overwrite=overwrite, metas=[meta],
                                 ttl_seconds=ttl_seconds), None)
        if ok:
            self.count(op, "ok")
            return bool(created[0]) if created else False
        log.warning("write of %s/%s skipped: owner %s did not answer", ns, key, node.node_id)
        return None

    async def keyed(self, op: str, node: NodeInfo, tenant: Tenant, ns: str,
                    fn: Callable[[AsyncClient], Awaitable[T]], failed: T) -> T:
        res, ok = await self.call(op, node, tenant, ns, fn, failed)
        if ok:
            self.count(op, "ok")
        return res

    def cancel_copies(self, ns: str, keys: Sequence[str]) -> None:
        """Stop this node's copy-forwards of blocks being deleted (a copy that lands after the
        delete would bring the block back)."""
        if not self.copies:
            return
        for k in keys:
            task = self.copies.pop((ns, k), None)
            if task is not None:
                task.cancel()

    async def close(self) -> None:
        copies, self.copies = list(self.copies.values()), {}
        for t in copies:
            t.cancel()
        if copies:
            await asyncio.wait(copies, timeout=self.timeout_s)
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for c in clients:
            await c.close()


def checksum_of(data: bytes | bytearray | memoryview) -> int:
    """The engine's block checksum (xxh3-64) of forwarded bytes: the ETag the owner reports."""
    return int(block_checksum(data))
