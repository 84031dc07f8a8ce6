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

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvstore.errors import InvalidArgument
from kvstore.protocol import messages as msg
from kvstore.protocol.frames import FrameFlags, FrameType
from kvstore.transport.nixl_agent import NixlServerAgent, Staging, TransferStuck

if TYPE_CHECKING:
    from kvstore.service import BlockLease
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


async def register(p: BulkProtocol, rid: int, req: msg.NixlRegister) -> None:
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
    p.send(FrameType.RESULT, rid, msg.NixlRegistered(req.size, agent.name).to_header())


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
    lease: BlockLease
    payload: Any

    def exit(self) -> None:
        with contextlib.suppress(Exception):
            self.lease.release()


@dataclass
class _Packer:
    """Engine-thread side of a GET: fills a staging chunk with whole blocks in key order."""

    p: BulkProtocol
    req: msg.KeysRequest
    next: int = 0
    carry: _Open | None = None  # read, but did not fit the last chunk

    def _open(self, i: int) -> _Open | None:
        key = self.req.keys[i]
        lease = self.p.blocks.lease(self.p.namespace, key)
        if lease is None:
            return None
        bv = lease.view
        assert bv is not None  # the service answers a miss with no lease
        b = _Open(i, key, bv.meta.length, bv.meta.checksum, lease, bv.payload)
        assert self.req.capacities is not None
        if b.length > self.req.capacities[i]:
            b.exit()
            raise InvalidArgument(f"block {key} has {b.length} bytes; its slot holds "
                                  f"{self.req.capacities[i]}")
        return b

    @property
    def done(self) -> bool:
        return self.carry is None and (self.next >= len(self.req.keys) or self.p.closed)

    def fill(self, chunk: memoryview) -> tuple[list[tuple[int, str, int, int, int]], _Open | None]:
        """Pack whole blocks into ``chunk``: returns them as (index, key, length, checksum,
        chunk offset), and a block larger than a whole chunk, still open, for the caller to
        stream in pieces."""
        packed: list[tuple[int, str, int, int, int]] = []
        used = 0
        while True:
            b, self.carry = self.carry, None
            if b is None:
                if self.next >= len(self.req.keys) or self.p.closed:
                    return packed, None
                b = self._open(self.next)
                self.next += 1
                if b is None:
                    continue
            if b.length > len(chunk) - used:
                if used == 0:
                    return packed, b  # larger than a chunk: streamed by the caller
                self.carry = b
                return packed, None
            try:
                chunk[used:used + b.length] = b.payload
            finally:
                b.exit()
            packed.append((b.index, b.key, b.length, b.checksum, used))
            used += b.length

    def close(self) -> None:
        if self.carry is not None:
            self.carry.exit()
            self.carry = None


class _Chunks:
    """Staging chunks of one request: one, plus a second when one is free right away (double
    buffering: fill or store one chunk while the other transfers). A chunk whose transfer got
    stuck is not given back."""

    def __init__(self, staging: Staging) -> None:
        self.staging = staging
        self.ids: list[int] = []
        self.stuck: set[int] = set()

    async def __aenter__(self) -> _Chunks:
        self.ids.append(await self.staging.acquire())
        second = self.staging.try_acquire()
        if second is not None:
            self.ids.append(second)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.ids:
            if c not in self.stuck:
                self.staging.release(c)

    def pick(self, turn: int) -> tuple[int, memoryview, int]:
        c = self.ids[turn % len(self.ids)]
        return c, self.staging.chunk_view(c), self.staging.chunk_addr(c)

    async def transfer(self, peer: NixlPeer, chunk: int, op: str,
                       pieces: list[tuple[int, int, int]]) -> None:
        try:
            await peer.agent.transfer(op, peer.name, pieces)
        except TransferStuck:
            self.stuck.add(chunk)
            raise


def _copy(dst: memoryview, src: Any, start: int, n: int) -> None:
    dst[:n] = memoryview(src)[start:start + n]


async def _drain(task: asyncio.Task[Any] | None) -> None:
    """On an error path: let a transfer or store finish before its chunk goes back."""
    if task is not None:
        with contextlib.suppress(Exception):
            await task


def _checked(peer: NixlPeer, offsets: list[int] | None, sizes: list[int] | None) -> list[int]:
    assert offsets is not None and sizes is not None
    for o, n in zip(offsets, sizes, strict=True):
        peer.check(o, n)
    return offsets


async def get_batch(p: BulkProtocol, rid: int, req: msg.KeysRequest) -> None:
    peer = _peer(p)
    offsets = _checked(peer, req.offsets, req.capacities)
    staging = peer.agent.staging
    assert staging is not None
    packer = _Packer(p, req)
    found, turn = 0, 0
    pending: asyncio.Task[int] | None = None

    async def write(ch: _Chunks, c: int, base: int,
                    packed: list[tuple[int, str, int, int, int]]) -> int:
        await ch.transfer(peer, c, "WRITE", [(base + off, peer.address + offsets[i], n)
                                             for i, _, n, _, off in packed])
        for i, key, n, xxh, _ in packed:  # only now are the bytes in the client's region
            p.send(FrameType.BLOCK, rid, msg.BlockHeader(i, key, n, xxh).to_header(),
                   flags=FrameFlags.NIXL)
        return len(packed)

    async with _Chunks(staging) as ch:
        try:
            while not p.closed and not packer.done:
                if pending is not None and len(ch.ids) == 1:  # the only chunk is in flight
                    found += await pending
                    pending = None
                c, view, base = ch.pick(turn)
                turn += 1
                packed, big = await p.runner.call(packer.fill, view)
                if pending is not None:
                    found += await pending
                    pending = None
                if packed:
                    pending = asyncio.get_running_loop().create_task(write(ch, c, base, packed))
                if big is None:
                    continue
                if pending is not None:
                    found += await pending
                    pending = None
                try:
                    dst = peer.address + offsets[big.index]
                    for start in range(0, big.length, len(view)):
                        n = min(len(view), big.length - start)
                        await p.runner.call(_copy, view, big.payload, start, n)
                        await ch.transfer(peer, c, "WRITE", [(base, dst + start, n)])
                finally:
                    big.exit()
                p.send(FrameType.BLOCK, rid, msg.BlockHeader(big.index, big.key, big.length,
                                                             big.checksum).to_header(),
                       flags=FrameFlags.NIXL)
                found += 1
            if pending is not None:
                found += await pending
                pending = None
        finally:
            packer.close()
            await _drain(pending)
    p.send(FrameType.END, rid, msg.End(found).to_header())


def _store(p: BulkProtocol, batch: msg.PutBatch, idx: list[int], views: list[Any]) -> list[bool]:
    """Engine thread (authorized by ``bulk_ops.dispatch``)."""
    return p.blocks.put_many_sync(p.namespace, [(batch.keys[i], v) for i, v in zip(
        idx, views, strict=True)], [batch.checksums[i] for i in idx], batch.ttl_seconds,
        batch.overwrite)


async def put_batch(p: BulkProtocol, rid: int, batch: msg.PutBatch) -> None:
    peer = _peer(p)
    offsets = _checked(peer, batch.offsets, batch.lengths)
    staging = peer.agent.staging
    assert staging is not None
    size, lengths = staging.chunk_bytes, batch.lengths
    created: list[bool] = []
    storing: asyncio.Task[list[bool]] | None = None
    i, turn, total = 0, 0, len(batch.keys)
    async with _Chunks(staging) as ch:
        try:
            while i < total and not p.closed:
                if storing is not None and (len(ch.ids) == 1 or lengths[i] > size):
                    created += await storing
                    storing = None
                c, view, base = ch.pick(turn)
                turn += 1
                if lengths[i] > size:
                    created += await _put_large(p, batch, i, peer, ch, c)
                    i += 1
                    continue
                group, used = [], 0
                while i < total and lengths[i] <= size - used:
                    group.append((i, used))
                    used += lengths[i]
                    i += 1
                await ch.transfer(peer, c, "READ", [(base + off, peer.address + offsets[j],
                                                     lengths[j]) for j, off in group])
                if storing is not None:  # the other chunk's store ran during this READ
                    created += await storing
                    storing = None
                views = [view[off:off + lengths[j]] for j, off in group]
                storing = asyncio.get_running_loop().create_task(
                    p.runner.call(_store, p, batch, [j for j, _ in group], views))
            if storing is not None:
                created += await storing
                storing = None
        finally:
            await _drain(storing)
    p.send(FrameType.RESULT, rid, msg.PutResult(created).to_header())


async def _put_large(p: BulkProtocol, batch: msg.PutBatch, i: int, peer: NixlPeer, ch: _Chunks,
                     c: int) -> list[bool]:
    """A block larger than a staging chunk: READ it piece by piece into an aligned buffer."""
    n = batch.lengths[i]  # <= limits.block_bytes_max (parse_put_batch)
    assert batch.offsets is not None
    view, base = ch.staging.chunk_view(c), ch.staging.chunk_addr(c)
    buf = p.ctx.pool.acquire(n)
    try:
        src = peer.address + batch.offsets[i]
        for start in range(0, n, len(view)):
            m = min(len(view), n - start)
            await ch.transfer(peer, c, "READ", [(base, src + start, m)])
            buf.view[start:start + m] = view[:m]
        return await p.runner.call(_store, p, batch, [i], [buf.view[:n]])
    finally:
        p.ctx.pool.release(buf)
