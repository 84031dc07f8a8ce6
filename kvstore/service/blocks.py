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
import contextlib
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
from kvstore.service.runner import EngineRunner

if TYPE_CHECKING:
    from kvstore.service.forward import Forwarder

T = TypeVar("T")


class BlockService:
    def __init__(self, engine: Engine, runner: EngineRunner, policy: Policy,
                 metrics: Callable[[], Any]) -> None:
        self.engine = engine
        self.runner = runner
        self.policy = policy
        self._metrics = metrics
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
        only CREATE accepts)."""
        validate_namespace(ns)
        try:
            info: NamespaceInfo | None = self.engine.namespace(ns)
        except NamespaceNotFound:
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
                               block_bytes: int = 0) -> tuple[NamespaceInfo, bool]:
        """(namespace, created). An existing namespace the caller owns comes back with False;
        someone else's is ``NamespaceTaken`` (an AccessDenied), an ownerless one AccessDenied."""
        info = self.authorize(tenant, ns, Op.CREATE)
        if info is not None:
            return info, False
        try:
            info = await self.runner.call(self.engine.create_namespace, ns,
                                          owner=self.policy.owner_for_new(tenant), layout=layout,
                                          block_bytes=block_bytes)
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
                       overwrite: bool = False) -> list[bool]:
        """Store a batch in one engine call on a thread; one ``created`` flag per block."""
        self.authorize(tenant, ns, Op.WRITE)
        return await self.runner.call(self.put_many_sync, ns, items, checksums, ttl_seconds,
                                      overwrite)

    def put_many_sync(self, ns: str, items: list[tuple[str, object]],
                      checksums: Sequence[int] | None, ttl_seconds: float,
                      overwrite: bool) -> list[bool]:
        """Engine thread side of ``put_many`` (for callers already on a thread, after
        ``authorize``)."""
        res = self.engine.put_many(ns, items, checksums=checksums, ttl_seconds=ttl_seconds,
                                   overwrite=overwrite)
        return [r.created for r in res]

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

    async def delete_many(self, tenant: Tenant, ns: str, keys: Sequence[str]) -> int:
        self.authorize(tenant, ns, Op.DELETE)
        if self.forward is not None:
            return await pod_blocks.count_op(self, self.forward, "delete", tenant, ns, keys)
        return await self.runner.call(self.engine.delete_many, ns, keys)

    async def delete(self, tenant: Tenant, ns: str, key: str) -> bool:
        self.authorize(tenant, ns, Op.DELETE)
        if self.forward is not None and self.forward.owner(ns, key) is not None:
            return await pod_blocks.count_op(self, self.forward, "delete", tenant, ns, [key]) > 0
        return await self.runner.call(self.engine.delete, ns, key)

    async def prefetch(self, tenant: Tenant, ns: str, keys: Sequence[str]) -> int:
        self.authorize(tenant, ns, Op.READ)
        if self.forward is not None:
            return await pod_blocks.count_op(self, self.forward, "prefetch", tenant, ns, keys)
        return await self.runner.call(self.engine.prefetch, ns, keys)

    async def put_remote(self, tenant: Tenant, ns: str, key: str, data: object, *,
                         overwrite: bool) -> tuple[bool, bool | None]:
        """After ``authorize`` for WRITE: store at the block's owner when that is another node.
        (False, None): the block is this node's, store it here; (True, created): forwarded,
        ``created`` None when the owner did not answer (a skipped write, counted)."""
        owner = None if self.forward is None else self.forward.owner(ns, key)
        if owner is None:
            return False, None
        assert self.forward is not None
        return True, await self.forward.put(owner, tenant, ns, key, data, overwrite=overwrite)

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
        return self.engine.put(ns, key, data, meta=meta, overwrite=overwrite, donate=donate)

    def head_sync(self, ns: str, key: str) -> BlockMeta | None:
        return self.engine.head(ns, key)

    def delete_sync(self, ns: str, key: str) -> bool:
        return self.engine.delete(ns, key)

    def reading(self, ns: str, key: str) -> BlockLease:
        """``with blocks.reading(ns, key) as view:`` (a ``BlockView`` or None on a miss)."""
        return self.engine.acquire(ns, key)

    def list_blocks(self, ns: str, *, prefix: str = "", start_after: str = "",
                    limit: int = limits.list_keys_max) -> tuple[list[BlockMeta], bool]:
        return self.engine.list_blocks(ns, prefix=prefix, start_after=start_after, limit=limit)

    # -- errors ----------------------------------------------------------------------------
    def failed(self, op: str, name: str) -> None:
        """Count one error answer (``kvstore_errors_total{op, error}``)."""
        m = self._metrics()
        if m is not None:
            with contextlib.suppress(Exception):
                m.error(op, name)

    def observe(self, op: str, tier: str, nbytes: int, seconds: float) -> None:
        m = self._metrics()
        if m is not None:
            with contextlib.suppress(Exception):
                m.observe(op, tier, nbytes, seconds)
