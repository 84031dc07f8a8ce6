"""Request handlers of the bulk port. Each runs as a task of one ``BulkProtocol``.

Thin: parse the header, call ``kvstore.service.BlockService`` (which authorizes the call and
decides what runs inline and what hops to the engine's threads), encode the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from kvstore import limits
from kvstore.auth import Op
from kvstore.engine.device import AlignedBuffer, StagedPayload, align_up
from kvstore.errors import ProtocolError
from kvstore.protocol import messages as msg
from kvstore.protocol.frames import FrameFlags, FrameType
from kvstore.protocol.state import out_of_band
from kvstore.transport import nixl, shm

if TYPE_CHECKING:
    from kvstore.service import BlockLease
    from kvstore.transport.bulk_conn import BulkProtocol

# Blocks of one GET_BATCH being read from the engine ahead of the socket (overlaps flash reads
# with sends; bounded so one request cannot pin many blocks).
GET_READ_AHEAD = limits.engine_threads  # flash reads in flight per GET: the device's queue depth


def dispatch(p: BulkProtocol, ftype: FrameType, rid: int, header: dict[str, Any],
             flags: int = 0) -> Coroutine[Any, Any, None] | None:
    """Validate a request header now (errors answer at once) and return its task, or None when
    it was answered inline. Which flags a frame type may carry was checked by the connection
    table (``kvstore.protocol.state.FLAGS``) before this runs; what they mean for the header is
    the parser's (``msg.*.from_header(..., flags)``)."""
    b, t, ns = p.blocks, p.tenant, p.namespace
    if t is None:  # the connection table admits requests only after AUTH_OK
        raise ProtocolError(f"{ftype.name} before AUTH_OK")
    nixl_flag = bool(flags & FrameFlags.NIXL)
    if ftype is FrameType.PING:
        p.send(FrameType.RESULT, rid, msg.PingResult().to_header())
    elif ftype is FrameType.STATS:
        stats, count = b.stats(t, ns)
        p.send(FrameType.RESULT, rid, msg.StatsResult(stats, ns, count).to_header())
    elif ftype is FrameType.EXISTS_BATCH:
        req = msg.KeysRequest.from_header(header, ftype)
        p.send(FrameType.RESULT, rid, msg.ExistsResult(b.exists_many(t, ns, req.keys)).to_header())
    elif ftype is FrameType.LOOKUP:
        req = msg.KeysRequest.from_header(header, ftype)
        res = b.lookup(t, ns, req.keys, lease_seconds=req.lease_seconds)
        p.send(FrameType.RESULT, rid, msg.LookupResult(res.found, res.leased).to_header())
    elif ftype is FrameType.DELETE_BATCH:
        keys = msg.KeysRequest.from_header(header, ftype).keys
        return _simple(p, rid, msg.DeleteResult, b.delete_many(t, ns, keys))
    elif ftype is FrameType.PREFETCH:
        keys = msg.KeysRequest.from_header(header, ftype).keys
        return _simple(p, rid, msg.PrefetchResult, b.prefetch(t, ns, keys))
    elif ftype is FrameType.GET_BATCH:
        req = msg.KeysRequest.from_header(header, ftype, flags)
        b.authorize(t, ns, Op.READ)
        if nixl_flag:
            return nixl.get_batch(p, rid, req)
        if out_of_band(flags):
            return shm.get_batch(p, rid, req)
        return get_batch(p, rid, req.keys)
    elif ftype is FrameType.PUT_BATCH:  # SHM/NIXL put (socket puts are received by the protocol)
        batch = msg.PutBatch.from_header(header, 0, flags)
        b.authorize(t, ns, Op.WRITE)
        return nixl.put_batch(p, rid, batch) if nixl_flag else shm.put_batch(p, rid, batch)
    elif ftype is FrameType.SHM_REGISTER:
        return shm.register(p, rid, msg.ShmRegister.from_header(header))
    elif ftype is FrameType.NIXL_REGISTER:
        return nixl.register(p, rid, msg.NixlRegister.from_header(header))
    else:
        raise ProtocolError(f"{ftype.name} is not a request")
    return None


async def _simple(p: BulkProtocol, rid: int, result: Any, call: Coroutine[Any, Any, int]) -> None:
    n = await call
    p.send(FrameType.RESULT, rid, result(n).to_header())


async def put_batch(p: BulkProtocol, rid: int, batch: msg.PutBatch, bufs: list[AlignedBuffer],
                    started: float) -> None:
    """Store a socket PUT_BATCH: the engine verifies every checksum before it writes anything
    (a ChecksumMismatch stores nothing); a present key keeps its block unless the request
    carried OVERWRITE (``msg.PutBatch``)."""
    try:
        # payloads were received page-aligned into pool buffers: the engine writes them in place
        views: list[object] = [StagedPayload(b.view[: align_up(n)], n)
                               for b, n in zip(bufs, batch.lengths, strict=True)]
        assert p.tenant is not None
        created = await p.blocks.put_many(p.tenant, p.namespace,
                                          list(zip(batch.keys, views, strict=True)),
                                          checksums=batch.checksums,
                                          ttl_seconds=batch.ttl_seconds,
                                          overwrite=batch.overwrite)
    finally:
        for b in bufs:
            p.ctx.pool.release(b)
    p.send(FrameType.RESULT, rid, msg.PutResult(created).to_header())
    p.observe("bulk_put", sum(batch.lengths), started)


async def get_batch(p: BulkProtocol, rid: int, keys: list[str]) -> None:
    """Socket GET_BATCH (already authorized by ``dispatch``): up to ``GET_READ_AHEAD`` blocks
    opened ahead of the socket; each lease is held until the transport flushed its bytes."""
    started = time.perf_counter()
    found = nbytes = 0
    ahead: deque[tuple[int, str, asyncio.Future[BlockLease | None]]] = deque()
    loop_keys = iter(enumerate(keys))
    try:
        while True:
            while len(ahead) < GET_READ_AHEAD and not p.closed:
                nxt = next(loop_keys, None)
                if nxt is None:
                    break
                i, key = nxt
                ahead.append((i, key, p.blocks.open(p.namespace, key)))
            if not ahead:
                break
            i, key, fut = ahead.popleft()
            lease = await fut
            if lease is None:
                continue
            if p.closed:
                lease.release()
                continue
            bv = lease.view
            try:
                await p.writable()
                p.send(FrameType.BLOCK, rid,
                       msg.BlockHeader(i, key, bv.meta.length, bv.meta.checksum).to_header(),
                       (bv.payload,))
            except BaseException:
                lease.release()
                raise
            if lease.stable:  # a DRAM-tier block is immutable and referenced by the transport
                lease.release()
            else:
                p.hold(lease)  # a pooled flash buffer: keep it until the transport flushed it
            found += 1
            nbytes += bv.meta.length
    finally:
        # never abandon a read in flight: its block stays referenced until we release it
        while ahead:
            _, _, fut = ahead.popleft()
            with contextlib.suppress(Exception):
                opened = await fut
                if opened is not None:
                    opened.release()
    p.send(FrameType.END, rid, msg.End(found).to_header())
    p.observe("bulk_get", nbytes, started)
