"""``BlockService``: authorize, run inline or on the engine's threads, count errors.

Every front end calls this instead of the engine:

- **authorization**: every call names the tenant and the namespace and is checked by the one
  policy (``kvstore.auth.Policy``) against the namespace's owner, here and nowhere else;
- **inline or thread**: index look-ups (exists, lookup, head of a DRAM block) and DRAM hits run
  on the event loop; anything that may touch flash hops to ``EngineRunner``;
- **leases**: a read hands out the engine's ``BlockLease`` (``engine.acquire``: one read,
  released once), which a transport may hold until its socket flushed the bytes;
- **errors -> metrics**: ``failed(op, exc)`` classifies and counts every error answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from kvstore import limits
from kvstore.auth import Op, Policy, Tenant
from kvstore.engine.reader import BlockLease
from kvstore.engine.store import Engine
from kvstore.engine.types import BlockMeta, LookupResult, NamespaceInfo, PutResult
from kvstore.errors import AlreadyExists, KVStoreError, NamespaceNotFound
from kvstore.keys import validate_namespace
from kvstore.service import pod_blocks
from kvstore.service.quota import Quotas, payload_bytes
from kvstore.service.runner import EngineRunner

if TYPE_CHECKING:
    from kvstore.cluster.membership import NodeInfo
    from kvstore.service.forward import Forwarder

T = TypeVar("T")
log = logging.getLogger("kvstore.service")


class BlockService:
    def __init__(self, engine: Engine, runner: EngineRunner, policy: Policy,
                 metrics: Callable[[], Any]) -> None:
        self.engine = engine
        self.runner = runner
        self.policy = policy
        self._metrics = metrics
        # byte quotas per namespace and tenant, admitted before every write (service.quota)
        self.quotas = Quotas(engine, policy.tenants)
        # Told after a namespace is created (info) or deleted (None) here: the pod records it
        # pod-wide (kvstore.service.pod). None: a node on its own.
        self.namespace_hook: Callable[[str, NamespaceInfo | None], Awaitable[None]] | None = None
        # Any-node access (kvstore.service.forward): set by the server for a node in a pod.
        # Only calls that name the caller's tenant (the S3 and /v1 front ends) forward; the
        # bulk, shm and NIXL transports never do (one hop). None: a node on its own.
        self.forward: Forwarder | None = None

    # -- authorization -------------------------------------------------------------------
    def authorize(self, tenant: Tenant, ns: str, op: Op) -> NamespaceInfo | None:
        """Raise unless ``tenant`` may do ``op`` to ``ns``; the namespace (None: absent, which
        only CREATE accepts). A name is checked against the naming rules only when it is not
        in the catalog: one created under older, looser rules stays reachable (to read, move
        and delete), and a new one must keep today's.

        A name outside the tenant's patterns is refused before the catalog is asked: the
        denial does the same work whether the namespace exists or not (no timing or error
        difference to probe; tests/test_tenant_isolation.py)."""
        self.policy.check_name(tenant, ns)
        try:
            info: NamespaceInfo | None = self.engine.namespace(ns)
        except NamespaceNotFound:
            validate_namespace(ns)
            info = None
        self.policy.check(tenant, ns, op, None if info is None else info.owner)
        return info

    def namespace(self, tenant: Tenant, ns: str) -> NamespaceInfo:
        info = self.authorize(tenant, ns, Op.READ)
        assert info is not None  # the policy answers NamespaceNotFound for an absent one
        return info

    def namespaces(self, tenant: Tenant) -> list[NamespaceInfo]:
        """The namespaces ``tenant`` may see, by name."""
        return [i for i in self.engine.list_namespaces()
                if self.policy.visible(tenant, i.name, i.owner)]

    async def create_namespace(self, tenant: Tenant, ns: str, *, layout: dict[str, Any] | None = None,
                               block_bytes: int = 0, replicas: int = 1, quota_bytes: int = 0,
                               quota_mode: str = "evict") -> tuple[NamespaceInfo, bool]:
        """(namespace, created). An existing namespace the caller owns comes back with False;
        someone else's is ``NamespaceTaken`` (an AccessDenied), an ownerless one AccessDenied.
        ``replicas``: copies of each block in a pod (recorded pod-wide with the namespace).
        ``layout`` gets the tenant's salt (``Policy.salted_layout``) before it is recorded."""
        info = self.authorize(tenant, ns, Op.CREATE)
        if info is not None:
            return info, False
        layout = self.policy.salted_layout(tenant, layout)  # the tenant's salt: kvstore.auth
        try:
            info = await self.runner.call(self.engine.create_namespace, ns,
                                          owner=self.policy.owner_for_new(tenant), layout=layout,
                                          block_bytes=block_bytes, replicas=replicas,
                                          quota_bytes=quota_bytes, quota_mode=quota_mode)
        except AlreadyExists:  # created meanwhile: the policy decides again
            info = self.authorize(tenant, ns, Op.CREATE)
            if info is None:
                raise
            return info, False
        if self.namespace_hook is not None:
            await self.namespace_hook(ns, info)
        return info, True

    async def delete_namespace(self, tenant: Tenant, ns: str) -> None:
        self.authorize(tenant, ns, Op.DELETE)
        await self.runner.call(self.engine.delete_namespace, ns)
        if self.namespace_hook is not None:
            await self.namespace_hook(ns, None)

    # -- blocks ----------------------------------------------------------------------------
    async def put_many(self, tenant: Tenant, ns: str, items: list[tuple[str, object]], *,
                       checksums: Sequence[int] | None = None, ttl_seconds: float = 0.0,
                       overwrite: bool = False,
                       metas: Sequence[bytes] | None = None) -> list[bool]:
        """Store a batch in one engine call on a thread; one ``created`` flag per block.
        ``metas``: each block's opaque metadata (a forwarded S3 PUT's headers)."""
        self.authorize(tenant, ns, Op.WRITE)
        return await self.runner.call(self.put_many_sync, ns, items, checksums, ttl_seconds,
                                      overwrite, metas)

    def put_many_sync(self, ns: str, items: list[tuple[str, object]],
                      checksums: Sequence[int] | None, ttl_seconds: float,
                      overwrite: bool, metas: Sequence[bytes] | None = None) -> list[bool]:
        """Engine thread side of ``put_many`` (for callers already on a thread, after
        ``authorize``)."""
        self.quotas.admit(ns, sum(payload_bytes(d) for _k, d in items))
        res = self.engine.put_many(ns, items, checksums=checksums, ttl_seconds=ttl_seconds,
                                   overwrite=overwrite, metas=metas)
        out = [r.created for r in res]
        if overwrite and metas:  # same bytes, new metadata (a forwarded S3 PUT): rewrite it
            for i, (key, data) in enumerate(items):
                if not out[i] and res[i].meta.meta != metas[i]:
                    self.engine.delete(ns, key)
                    out[i] = self.engine.put(ns, key, data, meta=metas[i],
                                             ttl_seconds=ttl_seconds, overwrite=True).created
        return out

    def exists_many(self, tenant: Tenant, ns: str, keys: Sequence[str]) -> list[bool]:
        """Index only: inline."""
        self.authorize(tenant, ns, Op.READ)
        return self.engine.exists_many(ns, keys)

    def lookup(self, tenant: Tenant, ns: str, keys: Sequence[str], *,
               lease_seconds: float = 0.0) -> LookupResult:
        """Index only: inline. The engine's ``LookupResult`` (found, leased)."""
        self.authorize(tenant, ns, Op.READ)
        return self.engine.lookup(ns, keys, lease_seconds=lease_seconds)

    def stats(self, tenant: Tenant, ns: str) -> tuple[dict[str, int | float], int]:
        self.authorize(tenant, ns, Op.READ)
        return self.engine.stats(), self.engine.count(ns)

    async def exists_pod(self, tenant: Tenant, ns: str, keys: Sequence[str]) -> list[bool]:
        """``exists_many`` over the pod: each key asked at its owner (a node that does not
        answer: absent)."""
        if self.forward is None:
            return self.exists_many(tenant, ns, keys)
        self.authorize(tenant, ns, Op.READ)
        return await pod_blocks.exists(self, self.forward, tenant, ns, keys)

    async def lookup_pod(self, tenant: Tenant, ns: str, keys: Sequence[str], *,
                         lease_seconds: float = 0.0) -> LookupResult:
        """``lookup`` over the pod: the longest prefix of the chain present at its owners."""
        if self.forward is None:
            return self.lookup(tenant, ns, keys, lease_seconds=lease_seconds)
        self.authorize(tenant, ns, Op.READ)
        return await pod_blocks.lookup(self, self.forward, tenant, ns, keys, lease_seconds)

    async def delete_many(self, tenant: Tenant, ns: str, keys: Sequence[str], *,
                          pod: bool = False) -> int:
        """Delete here; with ``pod`` (the HTTP front ends) at each key's replicas and previous
        owner. The bulk port calls it without ``pod``: a forwarded request is never forwarded
        again (one hop)."""
        self.authorize(tenant, ns, Op.DELETE)
        if pod and self.forward is not None:
            return await pod_blocks.count_op(self, self.forward, "delete", tenant, ns, keys)
        return await self.runner.call(self.engine.delete_many, ns, keys)

    async def delete(self, tenant: Tenant, ns: str, key: str) -> bool:
        self.authorize(tenant, ns, Op.DELETE)
        if self.forward is not None:  # at every replica (this node's copy too, if any)
            return await pod_blocks.count_op(self, self.forward, "delete", tenant, ns, [key]) > 0
        return await self.runner.call(self.engine.delete, ns, key)

    async def prefetch(self, tenant: Tenant, ns: str, keys: Sequence[str], *,
                       pod: bool = False) -> int:
        """Stage blocks in DRAM here; with ``pod`` (the HTTP front ends) at their owners."""
        self.authorize(tenant, ns, Op.READ)
        if pod and self.forward is not None:
            return await pod_blocks.count_op(self, self.forward, "prefetch", tenant, ns, keys)
        return await self.runner.call(self.engine.prefetch, ns, keys)

    def pod_targets(self, ns: str, key: str) -> tuple[bool, list[NodeInfo]]:
        """Where a write of the block goes: (this node stores it, the other live replicas to
        forward it to). (True, []) on a node alone."""
        if self.forward is None:
            return True, []
        reps, _ = self.forward.owners(ns, key)
        if not reps:
            return True, []
        fw = self.forward
        return any(fw.is_self(n) for n in reps), [n for n in reps if not fw.is_self(n)]

    async def put_replicas(self, tenant: Tenant, ns: str, key: str, data: object,
                           nodes: list[NodeInfo], *, overwrite: bool,
                           meta: bytes = b"") -> bool | None:
        """After ``authorize`` for WRITE: store at the other replicas ``nodes``
        (``pod_targets``), with ``meta`` (the S3 metadata), in parallel. True: some node
        created it; False: every node that answered had it; None: none answered (a skipped
        write, counted and logged) or there was none. An overwrite also deletes the block at
        its previous owner (``pod_blocks.put``); call it with no ``nodes`` for that alone."""
        if self.forward is None:
            return None
        return await pod_blocks.put(self, self.forward, tenant, ns, key, data, nodes,
                                    overwrite=overwrite, meta=meta)

    def head_here(self, ns: str, key: str) -> BlockMeta | None:
        """``head``'s answer when it needs no I/O and no other node: a DRAM-tier block of a
        node on its own (no coroutine on the HEAD hot path); None: ask ``head``."""
        return self.engine.head_dram(ns, key) if self.forward is None else None

    async def head(self, ns: str, key: str, *, tenant: Tenant | None = None) -> BlockMeta | None:
        """After ``authorize`` for READ: from DRAM inline, else one header read on a thread.
        With ``tenant`` (an HTTP front end), a block of another node is asked there."""
        if tenant is not None and self.forward is not None:
            view = await pod_blocks.remote_view(self, self.forward, tenant, ns, key, "head")
            if view is not pod_blocks.LOCAL:
                return None if view is None else view.meta
        meta = self.engine.head_dram(ns, key)
        if meta is None:
            meta = await self.runner.call(self.engine.head, ns, key)
        return meta

    # -- reads -----------------------------------------------------------------------------
    def open(self, ns: str, key: str) -> asyncio.Future[BlockLease | None]:
        """Start reading one block of a namespace already authorized for READ (``authorize``
        once per batch): a DRAM hit is served inline (no thread hop, no I/O), anything else is
        read by an engine thread. The future's lease must be released."""
        try:
            view = self.engine.read_dram(ns, key)
        except KVStoreError:
            view = None  # let the engine thread raise the precise error
        if view is not None:
            fut: asyncio.Future[BlockLease | None] = asyncio.get_running_loop().create_future()
            fut.set_result(BlockLease.of(view))
            return fut
        return asyncio.ensure_future(self.runner.call(self.lease, ns, key))

    async def open_any(self, tenant: Tenant, ns: str, key: str) -> BlockLease | None:
        """``open`` for a front end that names the caller (the Redis listener): after
        ``authorize`` for READ, a block another node of the pod owns is read there (its bytes
        come back as a stable view); this node's blocks are opened here, zero-copy."""
        if self.forward is not None:
            view = await pod_blocks.remote_view(self, self.forward, tenant, ns, key, "get")
            if view is not pod_blocks.LOCAL:
                return None if view is None else BlockLease.of(view)
        return await self.open(ns, key)

    def lease(self, ns: str, key: str) -> BlockLease | None:
        """Engine thread: open a block (the flash read happens here); None on a miss."""
        lease = self.engine.acquire(ns, key)
        if lease.view is None:
            lease.release()
            return None
        return lease

    async def read(self, ns: str, key: str, fn: Callable[[Any], T], *,
                   span: tuple[int, int | None] | None = None, tenant: Tenant | None = None) -> T:
        """After ``authorize`` for READ: ``fn(view or None)`` over one block, inline for a DRAM
        hit, else on an engine thread (``span`` = (offset, length) reads only the chunks
        covering it). ``fn`` must not keep the view of a non-stable block. With ``tenant`` (an
        HTTP front end), a block of another node is read there (``fn`` gets its whole bytes)."""
        if tenant is not None and self.forward is not None:
            view = await pod_blocks.remote_view(self, self.forward, tenant, ns, key, "get")
            if view is not pod_blocks.LOCAL:
                return fn(view)
        hot = self.engine.read_dram(ns, key)
        if hot is not None:
            return fn(hot)

        def work() -> T:
            lease = self.engine.acquire(ns, key) if span is None else \
                self.engine.acquire_range(ns, key, *span)
            with lease as view:
                return fn(view)

        return await self.runner.call(work)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Compound work (S3 conditional puts, copies, listings) on an engine thread, for a
        caller that authorized it first; ``fn`` uses the ``*_sync`` calls below."""
        return await self.runner.call(fn, *args)

    # -- engine-thread side of compound work (after ``authorize``, inside ``run``) ---------
    def put_sync(self, ns: str, key: str, data: object, *, meta: bytes = b"",
                 overwrite: bool = False, donate: bool = False) -> PutResult:
        self.quotas.admit(ns, payload_bytes(data))
        return self.engine.put(ns, key, data, meta=meta, overwrite=overwrite, donate=donate)

    def head_sync(self, ns: str, key: str) -> BlockMeta | None:
        return self.engine.head(ns, key)

    def delete_sync(self, ns: str, key: str) -> bool:
        return self.engine.delete(ns, key)

    def reading(self, ns: str, key: str) -> BlockLease:
        """``with blocks.reading(ns, key) as view:`` (a ``BlockView`` or None on a miss)."""
        return self.engine.acquire(ns, key)

    def list_blocks(self, ns: str, *, prefix: str = "", start_after: str = "",
                    limit: int = limits.list_keys_max,
                    with_meta: bool = False) -> tuple[list[BlockMeta], bool]:
        """A page of the namespace's blocks, sorted. ``with_meta``: with each block's caller
        metadata (the S3 ETag, content type...), which the segment summaries a listing reads do
        not hold: one header read per block not in DRAM. A block gone since it was listed is
        listed as it was."""
        items, more = self.engine.list_blocks(ns, prefix=prefix, start_after=start_after,
                                              limit=limit)
        if with_meta:
            items = [b if b.meta else (self.engine.head(ns, b.key) or b) for b in items]
        return items, more

    # -- errors ----------------------------------------------------------------------------
    def failed(self, op: str, name: str) -> None:
        """Count one error answer (``kvstore_errors_total{op, error}``)."""
        m = self._metrics()
        if m is not None:
            try:
                m.error(op, name)
            except Exception:  # noqa: BLE001 - metrics never fail a request
                log.debug("metrics error() failed", exc_info=True)

    def observe(self, op: str, tier: str, nbytes: int, seconds: float) -> None:
        m = self._metrics()
        if m is not None:  # once per request: a try costs nothing, a suppress() a context
            try:
                m.observe(op, tier, nbytes, seconds)
            except Exception:  # noqa: BLE001 - metrics never fail a request
                log.debug("metrics observe() failed", exc_info=True)
