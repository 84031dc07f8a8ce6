"""Request handlers of the bulk port. Each runs as a task of one ``BulkProtocol``.

Thin: parse the header, call ``kvstore.service.BlockService`` (which authorizes the call and
decides what runs inline and what hops to the engine's threads), encode the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Coroutine
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
    from kvstore.auth import Tenant
    from kvstore.service import BlockLease
    from kvstore.transport.bulk_conn import BulkProtocol

# Blocks of one GET_BATCH being read from the engine ahead of the socket (overlaps flash reads
# with sends; bounded so one request cannot pin many blocks).
GET_READ_AHEAD = limits.engine_threads  # flash reads in flight per GET: the device's queue depth


# A request handler: validates the header now (a bad one raises, answered at once) and either
# answers inline (returns None) or returns the coroutine the connection runs as its task.
Handler = Callable[["BulkProtocol", "Tenant", int, dict[str, Any], int],
                   Coroutine[Any, Any, None] | None]


def _ping(p: BulkProtocol, t: Tenant, rid: int, header: dict[str, Any], flags: int) -> None:
    p.send(FrameType.RESULT, rid, msg.PingResult().to_header())


def _stats(p: BulkProtocol, t: Tenant, rid: int, header: dict[str, Any], flags: int) -> None:
    stats, count = p.blocks.stats(t, p.namespace)
    p.send(FrameType.RESULT, rid, msg.StatsResult(stats, p.namespace, count).to_header())


def _exists(p: BulkProtocol, t: Tenant, rid: int, header: dict[str, Any], flags: int) -> None:
    req = msg.KeysRequest.from_header(header, FrameType.EXISTS_BATCH)
    found = p.blocks.exists_many(t, p.namespace, req.keys)
    p.send(FrameType.RESULT, rid, msg.ExistsResult(found).to_header())


def _lookup(p: BulkProtocol, t: Tenant, rid: int, header: dict[str, Any], flags: int) -> None:
    req = msg.KeysRequest.from_header(header, FrameType.LOOKUP)
    res = p.blocks.lookup(t, p.namespace, req.keys, lease_seconds=req.lease_seconds)
    p.send(FrameType.RESULT, rid, msg.LookupResult(res.found, res.leased).to_header())


def _delete(p: BulkProtocol, t: Tenant, rid: int, header: dict[str, Any],
            flags: int) -> Coroutine[Any, Any, None]:
    keys = msg.KeysRequest.from_header(header, FrameType.DELETE_BATCH).keys
    return _simple(p, rid, msg.DeleteResult, p.blocks.delete_many(t, p.namespace, keys))


def _prefetch(p: BulkProtocol, t: Tenant, rid: int, header: dict[str, Any],
              flags: int) -> Coroutine[Any, Any, None]:
    keys = msg.KeysRequest.from_header(header, FrameType.PREFETCH).keys
    return _simple(p, rid, msg.PrefetchResult, p.blocks.prefetch(t, p.namespace, keys))


def _get(p: BulkProtocol, t: Tenant, rid: int, header: dict[str, Any],
         flags: int) -> Coroutine[Any, Any, None]:
    req = msg.KeysRequest.from_header(header, FrameType.GET_BATCH, flags)
    p.blocks.authorize(t, p.namespace, Op.READ)
    if flags & FrameFlags.NIXL:
        return nixl.get_batch(p, rid, req)
    if out_of_band(flags):
        return shm.get_batch(p, rid, req)
    return get_batch(p, rid, req.keys, with_meta=req.with_meta)


def _put_oob(p: BulkProtocol, t: Tenant, rid: int, header: dict[str, Any],
             flags: int) -> Coroutine[Any, Any, None]:
    """SHM/NIXL PUT_BATCH (socket puts are received by the protocol, payload and all)."""
    batch = msg.PutBatch.from_header(header, 0, flags)
    p.blocks.authorize(t, p.namespace, Op.WRITE)
    if flags & FrameFlags.NIXL:
        return nixl.put_batch(p, rid, batch)
    return shm.put_batch(p, rid, batch)


def _shm_register(p: BulkProtocol, t: Tenant, rid: int, header: dict[str, Any],
                  flags: int) -> Coroutine[Any, Any, None]:
    return shm.register(p, rid, msg.ShmRegister.from_header(header))


def _nixl_register(p: BulkProtocol, t: Tenant, rid: int, header: dict[str, Any],
                   flags: int) -> Coroutine[Any, Any, None]:
    return nixl.register(p, rid, msg.NixlRegister.from_header(header))


# Every request a client may send once authenticated, and its handler (h11-style: the table
# is the protocol's surface; a frame type missing here is not a request).
HANDLERS: dict[FrameType, Handler] = {
    FrameType.PING: _ping,
    FrameType.STATS: _stats,
    FrameType.EXISTS_BATCH: _exists,
    FrameType.LOOKUP: _lookup,
    FrameType.DELETE_BATCH: _delete,
    FrameType.PREFETCH: _prefetch,
    FrameType.GET_BATCH: _get,
    FrameType.PUT_BATCH: _put_oob,
    FrameType.SHM_REGISTER: _shm_register,
    FrameType.NIXL_REGISTER: _nixl_register,
}


def dispatch(p: BulkProtocol, ftype: FrameType, rid: int, header: dict[str, Any],
             flags: int = 0) -> Coroutine[Any, Any, None] | None:
    """Validate a request header now (errors answer at once) and return its task, or None when
    it was answered inline. Which flags a frame type may carry was checked by the connection
    table (``kvstore.protocol.state.FLAGS``) before this runs; what they mean for the header is
    the parser's (``msg.*.from_header(..., flags)``)."""
    if p.tenant is None:  # the connection table admits requests only after AUTH_OK
        raise ProtocolError(f"{ftype.name} before AUTH_OK")
    handler = HANDLERS.get(ftype)
    if handler is None:
        raise ProtocolError(f"{ftype.name} is not a request")
    return handler(p, p.tenant, rid, header, flags)


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
                                          overwrite=batch.overwrite, metas=batch.metas)
    finally:
        for b in bufs:
            p.ctx.pool.release(b)
    p.send(FrameType.RESULT, rid, msg.PutResult(created).to_header())
    p.observe("bulk_put", sum(batch.lengths), started)


async def get_batch(p: BulkProtocol, rid: int, keys: list[str], *,
                    with_meta: bool = False) -> None:
    """Socket GET_BATCH (already authorized by ``dispatch``): up to ``GET_READ_AHEAD`` blocks
    opened ahead of the socket; each lease is held until the transport flushed its bytes.
    ``with_meta``: each BLOCK header also carries the block's metadata and creation time."""
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
            assert bv is not None  # the service answers a miss with no lease
            try:
                await p.writable()
                m = bv.meta
                bh = msg.BlockHeader(i, key, m.length, m.checksum, m.meta, m.created,
                                     m.expires) if with_meta \
                    else msg.BlockHeader(i, key, m.length, m.checksum)
                p.send(FrameType.BLOCK, rid, bh.to_header(), (bv.payload,))
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
