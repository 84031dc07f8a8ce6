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
from kvstore.engine.reader import BlockLease
from kvstore.errors import KVStoreError, ProtocolError
from kvstore.protocol import messages as msg
from kvstore.protocol.frames import FrameType
from kvstore.transport import nixl, shm

if TYPE_CHECKING:
    from kvstore.transport.bulk_conn import BulkProtocol

# Blocks of one GET_BATCH being read from the engine ahead of the socket (overlaps flash reads
# with sends; bounded so one request cannot pin many blocks).
GET_READ_AHEAD = limits.engine_threads  # flash reads in flight per GET: the device's queue depth


def dispatch(p: BulkProtocol, ftype: FrameType, rid: int, header: dict[str, Any],
             shm_flag: bool, nixl_flag: bool = False,
             overwrite: bool = False) -> Coroutine[Any, Any, None] | None:
    """Validate a request header now (errors answer at once) and return its task, or None when
    it was answered inline. Which flags a frame type may carry was checked by the connection
    table (``kvstore.protocol.state.FLAGS``) before this runs."""
    e, ns = p.engine, p.namespace
    if ftype is FrameType.PING:
        p.send(FrameType.RESULT, rid, {})
    elif ftype is FrameType.STATS:
        p.send(FrameType.RESULT, rid, {"stats": e.stats(), "namespace": ns,
                                       "blocks": e.count(ns)})
    elif ftype is FrameType.EXISTS_BATCH:
        req = msg.parse_keys_request(header)
        p.send(FrameType.RESULT, rid, {"exists": e.exists_many(ns, req.keys)})
    elif ftype is FrameType.LOOKUP:
        req = msg.parse_keys_request(header, chain=True)
        res = e.lookup(ns, req.keys, lease_seconds=req.lease_seconds)
        p.send(FrameType.RESULT, rid, {"found": res.found, "leased": res.leased})
    elif ftype is FrameType.DELETE_BATCH:
        return _simple(p, rid, "deleted", e.delete_many, msg.parse_keys_request(header).keys)
    elif ftype is FrameType.PREFETCH:
        return _simple(p, rid, "staged", e.prefetch, msg.parse_keys_request(header).keys)
    elif ftype is FrameType.GET_BATCH:
        req = msg.parse_keys_request(header, shm=shm_flag or nixl_flag)
        if nixl_flag:
            return nixl.get_batch(p, rid, req)
        if shm_flag:
            return shm.get_batch(p, rid, req)
        return get_batch(p, rid, req.keys)
    elif ftype is FrameType.PUT_BATCH:  # SHM/NIXL put (socket puts are received by the protocol)
        batch = msg.parse_put_batch(header, 0, shm=True, overwrite=overwrite)
        return nixl.put_batch(p, rid, batch) if nixl_flag else shm.put_batch(p, rid, batch)
    elif ftype is FrameType.SHM_REGISTER:
        return shm.register(p, rid, header)
    elif ftype is FrameType.NIXL_REGISTER:
        return nixl.register(p, rid, header)
    else:
        raise ProtocolError(f"{ftype.name} is not a request")
    return None


async def _simple(p: BulkProtocol, rid: int, field: str, fn: Any, keys: list[str]) -> None:
    n = await p.runner.call(fn, p.namespace, keys)
    p.send(FrameType.RESULT, rid, {field: n})


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
    p.send(FrameType.RESULT, rid, {"created": created})
    p.observe("bulk_put", sum(batch.lengths), started)


def _open_block(p: BulkProtocol, key: str) -> tuple[BlockLease, Any] | None:
    """Runs in an engine thread: enter ``engine.read`` (the flash read happens here)."""
    cm = p.engine.acquire(p.namespace, key)
    view = cm.view
    if view is None:
        cm.release()
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
        fut.set_result((BlockLease.of(view), view))
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
                cm.release()
                continue
            try:
                await p.writable()
                payload = bv.payload
                if p.ctx.block_filter is not None:
                    payload = p.ctx.block_filter(key, payload)
                p.send(FrameType.BLOCK, rid, msg.block(i, key, bv.meta.length, bv.meta.checksum),
                       (payload,))
            except BaseException:
                cm.release()
                raise
            if bv.stable:  # a DRAM-tier block is immutable and referenced by the transport
                cm.release()
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
                    opened[0].release()
    p.send(FrameType.END, rid, {"n": found})
    p.observe("bulk_get", nbytes, started)


def _create_task(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)
