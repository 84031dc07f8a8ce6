"""Writing puts: records packed into chunks, chunks written concurrently, acks in log order.

A chunk (one record, or many small ones up to ``limits.write_chunk_bytes_max``) is built in an
aligned buffer outside every lock: payload copy and padding. Under the write lock a *wave* of
chunks (up to ``limits.write_wave_chunks_max``, all in the active segment) only reserves its byte
ranges, takes sequence numbers, encodes header pages and adds summary rows. The wave's writes
then go to the device in one ``submit`` with no lock held, so one ``put_many`` keeps the device
queue as deep as several writer threads would, and several writers keep it deeper.

A put is acknowledged, and its blocks published in the index, only when every earlier byte of
the segment is written (``SegmentLog.complete``), and never after a failed write in the same
segment: recovery stops at the first bad header, so an acknowledged block must never sit
behind a hole. A record whose key another writer stored
between build and reservation is written as a void record (``FLAG_VOID``), never indexed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.device import IoOp, StagedPayload, copy_into, is_aligned_view
from kvstore.engine.state import EngineState, meta_of
from kvstore.engine.types import BlockMeta, PutResult
from kvstore.errors import (
    ChecksumMismatch,
    EntityTooLarge,
    InvalidArgument,
    LimitExceeded,
    StorageError,
)

if TYPE_CHECKING:
    from kvstore.engine.device import AlignedBuffer, BufferPool
    from kvstore.engine.log import SegmentLog
    from kvstore.engine.segments import Segment

PAGE = fmt.PAGE


def check_batch(keys: Sequence[object]) -> None:
    if len(keys) > limits.batch_keys_max:
        raise LimitExceeded(f"batch larger than {limits.batch_keys_max} keys")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated put, ready to be written."""

    ns: str
    key: str
    ns_id: int
    digest: bytes
    hdr: fmt.RecordHeader
    data: memoryview
    staged: memoryview | None = None  # page-aligned, padded payload to write in place


def prepare(st: EngineState, ns: str, key: str, data: object, checksum: int | None,
            ttl_seconds: float, meta: bytes) -> Prepared:
    """Validate one put and compute its checksum (outside all locks)."""
    staged = None
    if isinstance(data, StagedPayload):
        n = data.length
        view = data.view.cast("B")
        if n > len(view):
            raise InvalidArgument("staged payload shorter than its length")
        mv = view[:n]
        if n >= PAGE:  # small payloads go inline in the header page: copied as usual
            staged = view
            if len(staged) != fmt.align_up(n) or not is_aligned_view(staged):
                raise InvalidArgument("a staged payload must be page aligned and padded")
            staged[n:] = bytes(len(staged) - n)  # never write stale scratch to disk
    else:
        mv = memoryview(data).cast("B")  # type: ignore[arg-type]
        n = len(mv)
    with st.lock:
        ns_id, info, kb, digest = st.resolve(ns, key)
    if n > limits.block_bytes_max:
        raise EntityTooLarge(f"block of {n} bytes exceeds {limits.block_bytes_max}")
    if info.block_bytes and n != info.block_bytes:
        raise InvalidArgument(f"namespace {ns} takes blocks of exactly {info.block_bytes} bytes")
    if len(meta) > fmt.meta_bytes_max:
        raise LimitExceeded(f"metadata over {fmt.meta_bytes_max} bytes")
    if not 0 <= ttl_seconds <= limits.ttl_seconds_max:
        raise InvalidArgument("ttl_seconds out of range")
    nsb = ns.encode()
    log2 = fmt.chunk_log2_for(fmt.header_len_for(nsb, kb, meta), n)
    csum, chunks = fmt.checksums(mv, log2)
    if checksum is not None and checksum != csum:
        raise ChecksumMismatch("payload does not match its checksum")
    now = time.time()
    hdr = fmt.RecordHeader(nsb, kb, n, csum, 0, now,
                           now + ttl_seconds if ttl_seconds else 0.0, meta,
                           chunk_log2=log2 if chunks else 0, chunks=chunks)
    if hdr.span + PAGE > st.config.segment_bytes:
        raise EntityTooLarge("block does not fit in one segment")
    return Prepared(ns, key, ns_id, digest, hdr, mv, None if hdr.inline else staged)


def existing(st: EngineState, p: Prepared, overwrite: bool) -> PutResult | None:
    """The answer for a put that must not write (key present). Caller holds ``st.lock``."""
    e = st.live(p.digest, time.time())
    if e is None or (overwrite and (e.length != p.hdr.payload_len or e.csum != p.hdr.checksum)):
        return None
    st.counters["puts_existing"] += 1
    return PutResult(False, BlockMeta(p.ns, p.key, e.length, e.csum, 0, 0.0, e.exp, b""))


@dataclass
class _Chunk:
    items: list[int]  # indices into preps
    total: int
    buf: AlignedBuffer | None = None
    offs: list[int] | None = None  # record offsets inside the chunk
    seg: Segment | None = None
    off: int = 0  # chunk offset in the segment
    hdrs: list[fmt.RecordHeader] | None = None
    live: list[bool] | None = None  # False: written void (another writer stored the key)
    staged: memoryview | None = None  # one record whose payload is written in place

    def ops(self) -> list[IoOp]:
        assert self.seg is not None and self.buf is not None
        h = self.seg.handle
        if self.staged is None:
            return [IoOp(h, self.off, self.buf.view[: self.total], write=True)]
        return [IoOp(h, self.off, self.buf.view[:PAGE], write=True),
                IoOp(h, self.off + PAGE, self.staged, write=True)]


def write_batch(lg: SegmentLog, preps: list[Prepared], overwrite: bool,
                donate: bool = False) -> list[PutResult]:
    results: list[PutResult | None] = [None] * len(preps)
    todo: list[int] = []
    seen: set[bytes] = set()
    st = lg.state
    with st.lock:  # cheap early answer for keys already present
        for i, p in enumerate(preps):
            results[i] = existing(st, p, overwrite)
            if results[i] is None:
                if p.digest in seen:  # a key repeated within the batch is stored once
                    results[i] = _not_written(p)
                else:
                    seen.add(p.digest)
                    todo.append(i)
    chunks = _pack(st.config.segment_bytes, preps, todo)
    done = 0
    while done < len(chunks):
        done += _write_wave(lg, preps, chunks[done : done + limits.write_wave_chunks_max],
                            results, overwrite, donate)
    out = []
    for r in results:
        assert r is not None
        out.append(r)
    return out


def _not_written(p: Prepared) -> PutResult:
    return PutResult(False, BlockMeta(p.ns, p.key, p.hdr.payload_len, p.hdr.checksum, 0, 0.0))


def _pack(segment_bytes: int, preps: list[Prepared], todo: list[int]) -> list[_Chunk]:
    cap = max(PAGE, min(limits.write_chunk_bytes_max, segment_bytes - PAGE))
    chunks: list[_Chunk] = []
    for i in todo:
        span = preps[i].hdr.span
        if preps[i].staged is not None:  # header page + the caller's buffer, no copy
            chunks.append(_Chunk([i], span, staged=preps[i].staged))
            continue
        if not chunks or chunks[-1].staged is not None or chunks[-1].total + span > cap:
            chunks.append(_Chunk([], 0))
        chunks[-1].items.append(i)
        chunks[-1].total += span
    return chunks


def _build(pool: BufferPool, preps: list[Prepared], c: _Chunk) -> None:
    """Payloads and padding into an aligned buffer, outside every lock. Large copies release
    the GIL (``copy_into``): a slice assignment held it ~0.3 ms per 2 MiB, stalling the write
    lock's holder and every completion behind it (96% of the engine's GIL time)."""
    if c.staged is not None:
        c.buf = pool.acquire(PAGE)  # the header page; the payload stays where it is
        c.offs = [0]
        return
    c.buf = pool.acquire(c.total)
    c.offs = []
    o = 0
    for i in c.items:
        h = preps[i].hdr
        po, ln = h.payload_offset, h.payload_len
        view = c.buf.view[o : o + h.span]
        copy_into(view[po:], preps[i].data)  # GIL released: other writers run meanwhile
        tail = min(h.span, fmt.align_up(po + ln))
        view[po + ln : tail] = bytes(tail - po - ln)
        c.offs.append(o)
        o += h.span


def _reserve(lg: SegmentLog, preps: list[Prepared], c: _Chunk, overwrite: bool,
             first: bool) -> bool:
    """Claim the chunk's range in the active segment. Caller holds ``wlock``. Only the first
    chunk of a wave may roll the segment: rolling waits for writes in flight, and the wave's
    earlier chunks are reserved but not yet submitted."""
    if not lg.fits(c.total) and not first:
        return False
    seg = lg.room_for(c.total)
    st = lg.state
    assert c.buf is not None and c.offs is not None
    with st.lock:
        c.live = [not (preps[i].digest in lg.pending
                       or existing(st, preps[i], overwrite) is not None) for i in c.items]
        lg.pending.update(preps[i].digest for n, i in enumerate(c.items) if c.live[n])
    c.seg, c.off = seg, lg.reserve(seg, c.total)
    seq0 = lg.next_seqs(len(c.items))
    c.hdrs = []
    for n, i in enumerate(c.items):
        flags = preps[i].hdr.flags | (0 if c.live[n] else fmt.FLAG_VOID)
        hdr = replace(preps[i].hdr, seq=seq0 + n, flags=flags)
        hdr.encode_into(c.buf.view[c.offs[n] :])
        if c.live[n]:
            lg.add_rows(seg, c.off + c.offs[n], hdr, preps[i].digest)
        c.hdrs.append(hdr)
    return True


def _write_wave(lg: SegmentLog, preps: list[Prepared], wave: list[_Chunk],
                results: list[PutResult | None], overwrite: bool, donate: bool) -> int:
    """Write up to ``len(wave)`` chunks; returns how many were written (at least one)."""
    pool = lg.state.pool
    for c in wave:
        _build(pool, preps, c)
    taken: list[_Chunk] = []
    try:
        with lg.wlock:
            for c in wave:
                if not _reserve(lg, preps, c, overwrite, first=not taken):
                    break
                taken.append(c)
        _submit_and_publish(lg, preps, taken, results, donate)
    finally:
        for c in wave:
            if c.buf is not None:
                pool.release(c.buf)
                c.buf = None
    return len(taken)


def _submit_and_publish(lg: SegmentLog, preps: list[Prepared], taken: list[_Chunk],
                        results: list[PutResult | None], donate: bool) -> None:
    st = lg.state
    published: set[int] = set()
    try:
        ok = [False] * len(taken)
        try:
            ops = [c.ops() for c in taken]
            res = iter(st.device.submit([op for group in ops for op in group]))
            ok = [all(next(res) == len(op.buf) for op in group) for group in ops]
        finally:
            for n, c in enumerate(taken):  # every reserved range completes, even on failure
                assert c.seg is not None
                ok[n] = lg.complete(c.seg, c.off, c.off + c.total, ok[n])
        bad = [c for n, c in enumerate(taken) if not ok[n]]
        if bad:
            raise StorageError(f"{st.device.name}: write of {bad[0].total} bytes at "
                               f"{bad[0].off} failed")
        if st.config.sync_on_put:
            for seg in {id(c.seg): c.seg for c in taken}.values():
                st.device.sync(seg.handle)  # type: ignore[union-attr]
        for c in taken:
            _publish_chunk(lg, preps, c, results, donate)
            published.add(id(c))
    finally:
        stale = [preps[i].digest for c in taken if id(c) not in published
                 for n, i in enumerate(c.items) if c.live and c.live[n]]
        if stale:
            with st.lock:
                lg.pending.difference_update(stale)


def _publish_chunk(lg: SegmentLog, preps: list[Prepared], c: _Chunk,
                   results: list[PutResult | None], donate: bool) -> None:
    assert c.seg is not None and c.offs is not None and c.hdrs is not None and c.live is not None
    st = lg.state
    keeps: list[object] = []
    for n, i in enumerate(c.items):  # DRAM copies outside the lock
        p = preps[i]
        keep: object = None
        if c.live[n] and st.config.dram_on_put and p.hdr.payload_len <= st.dram.capacity_bytes:
            keep = p.data.toreadonly() if donate else bytes(p.data)
        keeps.append(keep)
    with st.lock:
        for n, i in enumerate(c.items):
            p = preps[i]
            if not c.live[n]:
                results[i] = _not_written(p)
                continue
            st.publish(c.seg.id, c.off + c.offs[n], c.hdrs[n], p.digest, p.ns_id, keeps[n])
            lg.pending.discard(p.digest)
            results[i] = PutResult(True, meta_of(c.hdrs[n]))
            st.counters["puts"] += 1
            st.counters["bytes_written"] += p.hdr.payload_len
