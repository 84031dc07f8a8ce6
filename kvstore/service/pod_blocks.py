"""``BlockService``'s pod side: the block calls split by owner, forwarded, merged.

Each function is one parallel round over the owners concerned (this node's part runs on the
local engine as before), except a read that misses at the owner, which asks the previous
owner (the next node in rendezvous order: the owner before the last join) once more: no data
moves when a node joins, and a warm block is still found where it was written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kvstore.auth import Tenant
from kvstore.cluster.membership import NodeInfo
from kvstore.engine.reader import BlockView
from kvstore.engine.types import BlockMeta, LookupResult
from kvstore.service.forward import Forwarder, checksum_of

if TYPE_CHECKING:
    from kvstore.service.blocks import BlockService

LOCAL: Any = object()  # "this node's block: read it here"


def _view(ns: str, key: str, data: bytes) -> BlockView:
    """A view over forwarded bytes: immutable (``stable``), checksum as the owner stores it.
    The bulk protocol carries no creation time or S3 metadata: ``created`` is now."""
    meta = BlockMeta(ns, key, len(data), checksum_of(data), 0, time.time())
    return BlockView(meta, memoryview(data), stable=True)


async def remote_view(bs: BlockService, fw: Forwarder, tenant: Tenant, ns: str, key: str,
                      op: str) -> BlockView | None | Any:
    """The block read at its owner (a view, or None for a miss), or ``LOCAL`` when this node
    should read it itself. A miss at the owner asks the previous owner, one extra hop."""
    owner = fw.owner(ns, key)
    prev = fw.previous_owner(ns, key)
    if owner is None:  # ours: only a local miss goes on to the previous owner
        if prev is None or fw.is_self(prev) or bs.engine.exists_many(ns, [key])[0]:
            return LOCAL
        data = await fw.get(prev, tenant, ns, key, op=op)
        return LOCAL if data is None else _view(ns, key, data)
    data = await fw.get(owner, tenant, ns, key, op=op)
    if data is None and prev is not None:
        if fw.is_self(prev):
            return LOCAL
        data = await fw.get(prev, tenant, ns, key, op=op)
    return None if data is None else _view(ns, key, data)


def _parts(fw: Forwarder, ns: str, keys: Sequence[str]) -> tuple[list[int],
                                                                 list[tuple[NodeInfo, list[int]]]]:
    """(this node's key indexes, [(owner, its key indexes)]) in the caller's order."""
    local: list[int] = []
    remote: list[tuple[NodeInfo, list[int]]] = []
    for node_id, idxs in fw.group(ns, keys).items():
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
    """``delete`` or ``prefetch`` at each key's owner: the sum of the owners' counts (a node
    that does not answer counts 0)."""
    local, remote = _parts(fw, ns, keys)
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
