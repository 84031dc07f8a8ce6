"""``BlockService``'s pod side: the block calls split by owner, forwarded, merged.

Each function is one parallel round over the owners concerned (this node's part runs on the
local engine as before), except a read, which asks a block's replicas (the namespace's replica
count of nodes, in rendezvous order) one after the other and then the previous owner (the
next node in rendezvous order: the last replica before the latest join) once more: no data
moves when a node joins, and a warm block is still found where it was written. A hit at the
previous owner is copied forward to the replicas that missed it, in the background.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kvstore import limits
from kvstore.auth import Tenant
from kvstore.cluster.membership import NodeInfo
from kvstore.engine.reader import BlockView
from kvstore.engine.types import BlockMeta, LookupResult
from kvstore.service.forward import Forwarder, Record, checksum_of

log = logging.getLogger("kvstore.forward")

if TYPE_CHECKING:
    from kvstore.service.blocks import BlockService

LOCAL: Any = object()  # "this node's block: read it here"
SELF: Any = object()  # "this node" among the replicas a copy-forward writes to


def _view(ns: str, key: str, rec: Record) -> BlockView:
    """A view over a forwarded block: immutable (``stable``), checksum, metadata and creation
    time as the owner stores them."""
    data, meta, created, expires = rec
    bm = BlockMeta(ns, key, len(data), checksum_of(data), 0, created or time.time(), expires,
                   meta)
    return BlockView(bm, memoryview(data), stable=True)


def _has(bs: BlockService, ns: str, key: str) -> bool:
    return bool(bs.engine.exists_many(ns, [key])[0])


async def remote_view(bs: BlockService, fw: Forwarder, tenant: Tenant, ns: str, key: str,
                      op: str) -> BlockView | None | Any:
    """The block read in the pod (a view, or None for a miss), or ``LOCAL`` when this node
    should read it itself. The replicas are asked one after the other (this node first when it
    is one), then the previous owner once: one extra hop. A hit is copied forward to the
    replicas asked before it that answered a miss (``copy_forward``, in the background): a
    replica that missed a write, or the new owner after a join."""
    reps, prev = fw.owners(ns, key)
    if not reps:
        return LOCAL
    mine = any(fw.is_self(n) for n in reps)
    if mine and _has(bs, ns, key):
        return LOCAL
    missed: list[Any] = [SELF] if mine else []  # replicas that answered "not here"
    for node in reps:
        if fw.is_self(node):
            continue
        rec, answered = await fw.fetch(node, tenant, ns, key, op=op)
        if rec is not None:  # repair the replicas before it that answered a miss
            copy_forward(bs, fw, tenant, ns, key, rec, missed)
            return _view(ns, key, rec)
        if answered:
            missed.append(node)
    if prev is None:
        return None
    if fw.is_self(prev):
        if not _has(bs, ns, key):
            return None
        copy_forward(bs, fw, tenant, ns, key, None, missed)
        return LOCAL
    rec, _ = await fw.fetch(prev, tenant, ns, key, op=op)
    if rec is None:
        return None
    copy_forward(bs, fw, tenant, ns, key, rec, missed)
    return _view(ns, key, rec)


def copy_forward(bs: BlockService, fw: Forwarder, tenant: Tenant, ns: str, key: str,
                 rec: Record | None, targets: list[Any]) -> None:
    """Copy a block found at its previous owner (or at a later replica) to the replicas that
    missed it (``SELF``: this node), in the background; ``rec`` None: the block is this node's (read here). At most
    ``limits.copy_forward_inflight_max`` copies run at once on a node; one past it is dropped
    (the next read finds the block at the previous owner again). Counted in
    ``kvstore_copy_forward_total{outcome}`` (started, dropped, ok, failed)."""
    if not targets or (ns, key) in fw.copies:  # nothing to do, or already being copied
        return
    if len(fw.copies) >= limits.copy_forward_inflight_max:
        fw.count_copy("dropped")
        return
    fw.count_copy("started")
    task = asyncio.ensure_future(_copy(bs, fw, tenant, ns, key, rec, targets))
    fw.copies[(ns, key)] = task
    task.add_done_callback(lambda t: fw.copies.pop((ns, key), None) if fw.copies.get(
        (ns, key)) is t else None)


async def _copy(bs: BlockService, fw: Forwarder, tenant: Tenant, ns: str, key: str,
                rec: Record | None, targets: list[Any]) -> None:
    try:
        if rec is None:
            def read() -> Record | None:
                with bs.engine.acquire(ns, key) as v:
                    return None if v is None else (bytes(v.payload), v.meta.meta,
                                                   v.meta.created, v.meta.expires)

            rec = await bs.runner.call(read)
            if rec is None:
                fw.count_copy("failed")
                return
        data, meta, _, expires = rec
        ttl = 0.0
        if expires:  # the copy expires when the original does
            ttl = expires - time.time()
            if ttl <= 0:
                return
        for node in targets:
            if node is SELF:
                await bs.runner.call(functools.partial(bs.engine.put, ns, key, data, meta=meta,
                                                       ttl_seconds=ttl))
                ok = True
            else:
                ok = await fw.put(node, tenant, ns, key, data, overwrite=False, meta=meta,
                                  op="copy", ttl_seconds=ttl) is not None
            fw.count_copy("ok" if ok else "failed")
    except asyncio.CancelledError:  # the block is being deleted
        fw.count_copy("failed")
        raise
    except Exception as exc:  # noqa: BLE001 - a background copy must never surface
        fw.count_copy("failed")
        log.warning("copy-forward of %s/%s failed: %r", ns, key, exc)


async def put(bs: BlockService, fw: Forwarder, tenant: Tenant, ns: str, key: str, data: Any,
              nodes: list[NodeInfo], *, overwrite: bool, meta: bytes = b"") -> bool | None:
    """Store at each of ``nodes`` (other nodes' replicas), in parallel: True when some node
    created it, False when every node that answered had it, None when none answered (or there
    was none). An overwrite also deletes the block at its previous owner, in the same round:
    else a later miss at the replicas (an eviction) would read the old bytes back there."""
    stale = _stale(fw, ns, key, nodes) if overwrite else None
    got = await asyncio.gather(
        *(fw.put(n, tenant, ns, key, data, overwrite=overwrite, meta=meta) for n in nodes),
        _drop_stale(bs, fw, tenant, ns, key, stale))
    answered = [g for g in got[:len(nodes)] if g is not None]
    return any(answered) if answered else None


def _stale(fw: Forwarder, ns: str, key: str, nodes: list[NodeInfo]) -> Any:
    """The previous owner when it is not a replica (``SELF`` for this node), else None."""
    reps, prev = fw.owners(ns, key)
    if prev is None or any(prev.node_id == n.node_id for n in reps):
        return None
    return SELF if fw.is_self(prev) else prev


async def _drop_stale(bs: BlockService, fw: Forwarder, tenant: Tenant, ns: str, key: str,
                      stale: Any) -> None:
    if stale is None:
        return
    if stale is SELF:
        await bs.runner.call(bs.engine.delete, ns, key)
        return
    await fw.keyed("delete", stale, tenant, ns, lambda c: c.delete_many([key]), 0)


def _parts(fw: Forwarder, ns: str, keys: Sequence[str], every_replica: bool = False,
           ) -> tuple[list[int], list[tuple[NodeInfo, list[int]]]]:
    """(this node's key indexes, [(owner, its key indexes)]) in the caller's order."""
    local: list[int] = []
    remote: list[tuple[NodeInfo, list[int]]] = []
    for node_id, idxs in fw.group(ns, keys, every_replica=every_replica).items():
        node = None if node_id is None else fw.node(node_id)
        if node is None:
            local += idxs
        else:
            remote.append((node, idxs))
    return sorted(local), remote


async def exists(bs: BlockService, fw: Forwarder, tenant: Tenant, ns: str,
                 keys: Sequence[str]) -> list[bool]:
    local, remote = _parts(fw, ns, keys)
    out = [False] * len(keys)
    if local:
        for i, f in zip(local, bs.engine.exists_many(ns, [keys[i] for i in local]), strict=True):
            out[i] = f

    async def part(node: NodeInfo, idxs: list[int]) -> None:
        sub = [keys[i] for i in idxs]
        found = await fw.keyed("exists", node, tenant, ns,
                               lambda c: c.exists_many(sub), [False] * len(sub))
        for i, f in zip(idxs, found, strict=True):
            out[i] = bool(f)

    await asyncio.gather(*(part(n, idxs) for n, idxs in remote))
    return out


async def lookup(bs: BlockService, fw: Forwarder, tenant: Tenant, ns: str,
                 keys: Sequence[str], lease_seconds: float) -> LookupResult:
    """Each owner answers the longest present prefix of *its* keys in chain order; the pod's
    prefix ends at the earliest key some owner reports absent (a node that does not answer:
    its first key)."""
    local, remote = _parts(fw, ns, keys)
    answers: list[tuple[list[int], int, int]] = []  # (idxs, found, leased)
    if local:
        r = bs.engine.lookup(ns, [keys[i] for i in local], lease_seconds=lease_seconds)
        answers.append((local, r.found, r.leased))

    async def part(node: NodeInfo, idxs: list[int]) -> None:
        sub = [keys[i] for i in idxs]
        n = await fw.keyed("lookup", node, tenant, ns,
                           lambda c: c.lookup(sub, lease_seconds=lease_seconds), 0)
        answers.append((idxs, int(n), int(n) if lease_seconds > 0 else 0))

    await asyncio.gather(*(part(n, idxs) for n, idxs in remote))
    found = len(keys)
    for idxs, n, _ in answers:
        if n < len(idxs):
            found = min(found, idxs[n])
    leased = sum(sum(1 for i in idxs[:lz] if i < found) for idxs, _, lz in answers)
    return LookupResult(found=found, leased=leased)


async def count_op(bs: BlockService, fw: Forwarder, op: str, tenant: Tenant, ns: str,
                   keys: Sequence[str]) -> int:
    """``delete`` (at every replica) or ``prefetch`` (at one) of each key: the sum of the
    nodes' counts (a node that does not answer counts 0; with replicas, a delete counts each
    copy it removed)."""
    if op == "delete":
        fw.cancel_copies(ns, keys)
    local, remote = _parts(fw, ns, keys, every_replica=op == "delete")  # + previous owner
    local_fn = bs.engine.delete_many if op == "delete" else bs.engine.prefetch

    async def mine() -> int:
        return int(await bs.runner.call(local_fn, ns, [keys[i] for i in local])) if local else 0

    async def part(node: NodeInfo, idxs: list[int]) -> int:
        sub = [keys[i] for i in idxs]
        return int(await fw.keyed(op, node, tenant, ns,
                                  lambda c: c.delete_many(sub) if op == "delete"
                                  else c.prefetch(sub), 0))

    counts = await asyncio.gather(mine(), *(part(n, idxs) for n, idxs in remote))
    return sum(counts)
