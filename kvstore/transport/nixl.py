"""NIXL transport (server side): one-sided transfers to and from a client's registered memory.

Same shape as the shared-memory transport (``kvstore.transport.shm``): the client registers one
region per connection, then GET_BATCH / PUT_BATCH frames with the NIXL flag name offsets into it
instead of carrying payload; only small frames cross the socket.

- NIXL_REGISTER carries the client agent's metadata and its region (address, size). The server's
  agent (``nixl_agent.NixlServerAgent``, created on first use) loads the metadata; the peer is
  dropped when the connection ends.
- GET: blocks are read from the engine and packed into a registered staging chunk, then WRITTEN
  one-sided into the client's region at the requested offsets (one transfer per chunk); a BLOCK
  frame (length + checksum) follows once the data is there, and the client verifies it.
- PUT: the server READS the blocks from the client's region into a staging chunk and stores
  them; the engine verifies every block's checksum before it writes. Blocks larger than a chunk
  stream through it in pieces. A PUT spanning several chunks is stored chunk by chunk: an error
  in a later chunk leaves the earlier chunks' blocks stored (the request still fails).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvstore.errors import InvalidArgument
from kvstore.protocol import messages as msg
from kvstore.protocol.frames import FrameFlags, FrameType
from kvstore.transport.nixl_agent import NixlServerAgent, TransferStuck

if TYPE_CHECKING:
    from kvstore.transport.bulk_conn import BulkProtocol


@dataclass
class NixlPeer:
    """A client agent loaded into the server's agent, and the region it registered."""

    agent: NixlServerAgent
    name: str
    address: int
    size: int

    def check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidArgument("slot lies outside the registered NIXL region")

    def close(self) -> None:
        self.agent.remove_peer(self.name)


async def register(p: BulkProtocol, rid: int, header: dict[str, Any]) -> None:
    req = msg.parse_nixl_register(header)
    if p.nixl_peer is not None:
        raise InvalidArgument("a NIXL region is already registered on this connection")
    if p.ctx.nixl is None:
        p.ctx.nixl = NixlServerAgent()
    agent: NixlServerAgent = p.ctx.nixl
    await agent.ensure_open(p.runner)
    name = await p.runner.call(agent.add_peer, req.metadata)
    if p.closed:  # the client left while its metadata loaded
        agent.remove_peer(name)
        return
    p.nixl_peer = NixlPeer(agent, name, req.address, req.size)
    p.send(FrameType.RESULT, rid, {"size": req.size, "agent": agent.name})


def _peer(p: BulkProtocol) -> NixlPeer:
    if p.nixl_peer is None:
        raise InvalidArgument("no NIXL region registered on this connection")
    peer: NixlPeer = p.nixl_peer
    return peer


@dataclass
class _Open:
    """A block whose engine read is open (its view stays valid until ``exit``)."""

    index: int
    key: str
    length: int
    checksum: int
    cm: Any
    payload: Any

    def exit(self) -> None:
        with contextlib.suppress(Exception):
            self.cm.__exit__(None, None, None)


@dataclass
class _Packer:
    """Engine-thread side of a GET: fills a staging chunk with whole blocks in key order."""

    p: BulkProtocol
    req: msg.KeysRequest
    next: int = 0
    carry: _Open | None = None  # read, but did not fit the last chunk
    packed: list[tuple[int, str, int, int, int]] = field(default_factory=list)

    def _open(self, i: int) -> _Open | None:
        key = self.req.keys[i]
        cm = self.p.engine.read(self.p.namespace, key)
        bv = cm.__enter__()
        if bv is None:
            cm.__exit__(None, None, None)
            return None
        b = _Open(i, key, bv.meta.length, bv.meta.checksum, cm, bv.payload)
        assert self.req.capacities is not None
        if b.length > self.req.capacities[i]:
            b.exit()
            raise InvalidArgument(f"block {key} has {b.length} bytes; its slot holds "
                                  f"{self.req.capacities[i]}")
        if self.p.ctx.block_filter is not None:  # test hook: corrupt bytes on the way
            b.payload = self.p.ctx.block_filter(key, b.payload)
        return b

    def fill(self, chunk: memoryview) -> _Open | None:
        """Pack whole blocks into ``chunk`` (recorded in ``packed`` as (index, key, length,
        checksum, chunk offset)); returns a block larger than a whole chunk, still open, for
        the caller to stream in pieces."""
        self.packed = []
        used = 0
        while True:
            b, self.carry = self.carry, None
            if b is None:
                if self.next >= len(self.req.keys) or self.p.closed:
                    return None
                b = self._open(self.next)
                self.next += 1
                if b is None:
                    continue
            if b.length > len(chunk) - used:
                if used == 0:
                    return b  # larger than a chunk: streamed by the caller
                self.carry = b
                return None
            try:
                chunk[used:used + b.length] = b.payload
            finally:
                b.exit()
            self.packed.append((b.index, b.key, b.length, b.checksum, used))
            used += b.length

    def close(self) -> None:
        if self.carry is not None:
            self.carry.exit()
            self.carry = None


def _copy(dst: memoryview, src: Any, start: int, n: int) -> None:
    dst[:n] = memoryview(src)[start:start + n]


async def get_batch(p: BulkProtocol, rid: int, req: msg.KeysRequest) -> None:
    peer = _peer(p)
    assert req.offsets is not None and req.capacities is not None
    for o, c in zip(req.offsets, req.capacities, strict=True):
        peer.check(o, c)
    agent, staging = peer.agent, peer.agent.staging
    assert staging is not None
    chunk = await staging.acquire()
    view, base = staging.chunk_view(chunk), staging.chunk_addr(chunk)
    packer = _Packer(p, req)
    found = 0
    try:
        while not p.closed:
            big: _Open | None = await p.runner.call(packer.fill, view)
            if packer.packed:
                await agent.transfer("WRITE", peer.name, [
                    (base + off, peer.address + req.offsets[i], n)
                    for i, _, n, _, off in packer.packed])
                for i, key, n, xxh, _ in packer.packed:
                    p.send(FrameType.BLOCK, rid, msg.block(i, key, n, xxh), flags=FrameFlags.NIXL)
                found += len(packer.packed)
            if big is None:
                if packer.carry is None:
                    break
                continue
            try:
                dst = peer.address + req.offsets[big.index]
                for start in range(0, big.length, len(view)):
                    n = min(len(view), big.length - start)
                    await p.runner.call(_copy, view, big.payload, start, n)
                    await agent.transfer("WRITE", peer.name, [(base, dst + start, n)])
            finally:
                big.exit()
            p.send(FrameType.BLOCK, rid, msg.block(big.index, big.key, big.length, big.checksum),
                   flags=FrameFlags.NIXL)
            found += 1
    except TransferStuck:
        chunk = -1
        raise
    finally:
        packer.close()
        if chunk >= 0:
            staging.release(chunk)
    p.send(FrameType.END, rid, {"n": found})


def _store(p: BulkProtocol, batch: msg.PutBatch, idx: list[int], views: list[Any]) -> list[bool]:
    res = p.engine.put_many(p.namespace, [(batch.keys[i], v) for i, v in zip(idx, views,
                                                                             strict=True)],
                            checksums=[batch.checksums[i] for i in idx],
                            ttl_seconds=batch.ttl_seconds)
    return [r.created for r in res]


async def put_batch(p: BulkProtocol, rid: int, batch: msg.PutBatch) -> None:
    peer = _peer(p)
    assert batch.offsets is not None
    for o, n in zip(batch.offsets, batch.lengths, strict=True):
        peer.check(o, n)
    agent, staging = peer.agent, peer.agent.staging
    assert staging is not None
    chunk = await staging.acquire()
    view, base, size = staging.chunk_view(chunk), staging.chunk_addr(chunk), staging.chunk_bytes
    created: list[bool] = []
    i, total = 0, len(batch.keys)
    try:
        while i < total and not p.closed:
            if batch.lengths[i] > size:
                created += await _put_large(p, batch, i, peer, view, base)
                i += 1
                continue
            group, used = [], 0
            while i < total and batch.lengths[i] <= size - used:
                group.append((i, used))
                used += batch.lengths[i]
                i += 1
            await agent.transfer("READ", peer.name, [
                (base + off, peer.address + batch.offsets[j], batch.lengths[j])
                for j, off in group])
            views = [view[off:off + batch.lengths[j]] for j, off in group]
            created += await p.runner.call(_store, p, batch, [j for j, _ in group], views)
    except TransferStuck:
        chunk = -1
        raise
    finally:
        if chunk >= 0:
            staging.release(chunk)
    p.send(FrameType.RESULT, rid, {"created": created})


async def _put_large(p: BulkProtocol, batch: msg.PutBatch, i: int, peer: NixlPeer,
                     view: memoryview, base: int) -> list[bool]:
    """A block larger than a staging chunk: READ it piece by piece into an aligned buffer."""
    n = batch.lengths[i]  # <= limits.block_bytes_max (parse_put_batch)
    assert batch.offsets is not None
    buf = p.ctx.pool.acquire(n)
    try:
        src = peer.address + batch.offsets[i]
        for start in range(0, n, len(view)):
            m = min(len(view), n - start)
            await peer.agent.transfer("READ", peer.name, [(base, src + start, m)])
            buf.view[start:start + m] = view[:m]
        return await p.runner.call(_store, p, batch, [i], [buf.view[:n]])
    finally:
        p.ctx.pool.release(buf)
