"""Request handlers of the bulk port. Each runs as a task of one ``BulkProtocol``.

Flash-touching engine calls go through ``EngineRunner``; index-only calls (exists, lookup,
stats) run inline, as docs/ENGINE_API.md allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from kvstore import limits
from kvstore.engine.device import AlignedBuffer, StagedPayload, align_up
from kvstore.errors import KVStoreError, ProtocolError
from kvstore.protocol import messages as msg
from kvstore.protocol.frames import FrameFlags, FrameType
from kvstore.protocol.state import out_of_band
from kvstore.transport import nixl, shm

if TYPE_CHECKING:
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
    e, ns = p.engine, p.namespace
    nixl_flag = bool(flags & FrameFlags.NIXL)
    if ftype is FrameType.PING:
        p.send(FrameType.RESULT, rid, msg.PingResult().to_header())
    elif ftype is FrameType.STATS:
        p.send(FrameType.RESULT, rid, msg.StatsResult(e.stats(), ns, e.count(ns)).to_header())
    elif ftype is FrameType.EXISTS_BATCH:
        req = msg.KeysRequest.from_header(header, ftype)
        p.send(FrameType.RESULT, rid, msg.ExistsResult(e.exists_many(ns, req.keys)).to_header())
    elif ftype is FrameType.LOOKUP:
        req = msg.KeysRequest.from_header(header, ftype)
        res = e.lookup(ns, req.keys, lease_seconds=req.lease_seconds)
        p.send(FrameType.RESULT, rid, msg.LookupResult(res.found, res.leased).to_header())
    elif ftype is FrameType.DELETE_BATCH:
        return _simple(p, rid, msg.DeleteResult, e.delete_many,
                       msg.KeysRequest.from_header(header, ftype).keys)
    elif ftype is FrameType.PREFETCH:
        return _simple(p, rid, msg.PrefetchResult, e.prefetch,
                       msg.KeysRequest.from_header(header, ftype).keys)
    elif ftype is FrameType.GET_BATCH:
        req = msg.KeysRequest.from_header(header, ftype, flags)
        if nixl_flag:
            return nixl.get_batch(p, rid, req)
        if out_of_band(flags):
            return shm.get_batch(p, rid, req)
        return get_batch(p, rid, req.keys)
    elif ftype is FrameType.PUT_BATCH:  # SHM/NIXL put (socket puts are received by the protocol)
        batch = msg.PutBatch.from_header(header, 0, flags)
        return nixl.put_batch(p, rid, batch) if nixl_flag else shm.put_batch(p, rid, batch)
    elif ftype is FrameType.SHM_REGISTER:
        return shm.register(p, rid, msg.ShmRegister.from_header(header))
    elif ftype is FrameType.NIXL_REGISTER:
        return nixl.register(p, rid, msg.NixlRegister.from_header(header))
    else:
        raise ProtocolError(f"{ftype.name} is not a request")
    return None


async def _simple(p: BulkProtocol, rid: int, result: Any, fn: Any, keys: list[str]) -> None:
    n = await p.runner.call(fn, p.namespace, keys)
    p.send(FrameType.RESULT, rid, result(n).to_header())


def _put_all(p: BulkProtocol, batch: msg.PutBatch, views: list[StagedPayload]) -> list[bool]:
    """Runs in an engine thread: store the batch (several records per device write). The engine
    verifies every checksum before it writes anything: a ChecksumMismatch stores nothing. A
    present key keeps its block unless the request carried OVERWRITE (``msg.PutBatch``)."""
    res = p.engine.put_many(p.namespace, list(zip(batch.keys, views, strict=True)),
                            checksums=batch.checksums, ttl_seconds=batch.ttl_seconds,
                            overwrite=batch.overwrite)
    return [r.created for r in res]


async def put_batch(p: BulkProtocol, rid: int, batch: msg.PutBatch, bufs: list[AlignedBuffer],
                    started: float) -> None:
    try:
        # payloads were received page-aligned into pool buffers: the engine writes them in place
        views = [StagedPayload(b.view[: align_up(n)], n)
                 for b, n in zip(bufs, batch.lengths, strict=True)]
        created = await p.runner.call(_put_all, p, batch, views)
    finally:
        for b in bufs:
            p.ctx.pool.release(b)
    p.send(FrameType.RESULT, rid, msg.PutResult(created).to_header())
    p.observe("bulk_put", sum(batch.lengths), started)


def _open_block(p: BulkProtocol, key: str) -> tuple[contextlib.AbstractContextManager[Any], Any] | None:
    """Runs in an engine thread: enter ``engine.read`` (the flash read happens here)."""
    cm = p.engine.read(p.namespace, key)
    view = cm.__enter__()
    if view is None:
        cm.__exit__(None, None, None)
        return None
    return cm, view


def _start_read(p: BulkProtocol, key: str) -> asyncio.Future[Any]:
    """A DRAM-tier hit is served inline (no thread hop, no I/O); anything else is read by an
    engine thread. Either way the result is a future of ``_open_block``'s answer."""
    try:
        view = p.engine.read_dram(p.namespace, key)
    except KVStoreError:
        view = None  # let the engine thread raise the precise error
    if view is not None:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result((contextlib.nullcontext(), view))
        return fut
    return _create_task(p.runner.call(_open_block, p, key))


async def get_batch(p: BulkProtocol, rid: int, keys: list[str]) -> None:
    started = time.perf_counter()
    found = nbytes = 0
    ahead: deque[Any] = deque()
    loop_keys = iter(enumerate(keys))
    try:
        while True:
            while len(ahead) < GET_READ_AHEAD and not p.closed:
                nxt = next(loop_keys, None)
                if nxt is None:
                    break
                i, key = nxt
                ahead.append((i, key, _start_read(p, key)))
            if not ahead:
                break
            i, key, fut = ahead.popleft()
            opened = await fut
            if opened is None:
                continue
            cm, bv = opened
            if p.closed:
                cm.__exit__(None, None, None)
                continue
            try:
                await p.writable()
                payload = bv.payload
                if p.ctx.block_filter is not None:
                    payload = p.ctx.block_filter(key, payload)
                p.send(FrameType.BLOCK, rid,
                       msg.BlockHeader(i, key, bv.meta.length, bv.meta.checksum).to_header(),
                       (payload,))
            except BaseException:
                cm.__exit__(None, None, None)
                raise
            if bv.stable:  # a DRAM-tier block is immutable and referenced by the transport
                cm.__exit__(None, None, None)
            else:
                p.hold(cm)  # a pooled flash buffer: keep it until the transport flushed it
            found += 1
            nbytes += bv.meta.length
    finally:
        # never abandon a read in flight: its block stays referenced until we exit it
        while ahead:
            _, _, fut = ahead.popleft()
            with contextlib.suppress(Exception):
                opened = await fut
                if opened is not None:
                    opened[0].__exit__(None, None, None)
    p.send(FrameType.END, rid, msg.End(found).to_header())
    p.observe("bulk_get", nbytes, started)


def _create_task(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)
