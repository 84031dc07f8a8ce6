"""Writing puts: records packed into chunks, chunks written concurrently, acks in log order.

A chunk (one record, or many small ones up to ``limits.write_chunk_bytes_max``) is built in an
aligned buffer outside every lock: payload copy and padding. Under the write lock a *wave* of
chunks (up to ``limits.write_wave_chunks_max``, all in the active segment) only reserves its byte
ranges, takes sequence numbers, encodes header pages and adds summary rows. The wave's writes
then go to the device in one ``submit`` with no lock held, so one ``put_many`` keeps the device
queue as deep as several writer threads would, and several writers keep it deeper.

A put is acknowledged, and its blocks published in the index, only when every earlier byte of
the segment is written (``Engine._complete``), and never after a failed write in the same
segment: recovery stops at the first bad header, so an acknowledged block must never sit
behind a hole. A record whose key another writer stored
between build and reservation is written as a void record (``FLAG_VOID``), never indexed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.device import IoOp
from kvstore.engine.types import BlockMeta, PutResult

if TYPE_CHECKING:
    from kvstore.engine.device import AlignedBuffer
    from kvstore.engine.segments import Segment
    from kvstore.engine.store import Engine, _Prepared

PAGE = fmt.PAGE


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


def write_batch(eng: Engine, preps: list[_Prepared], overwrite: bool,
                donate: bool = False) -> list[PutResult]:
    results: list[PutResult | None] = [None] * len(preps)
    todo: list[int] = []
    seen: set[bytes] = set()
    with eng._lock:  # cheap early answer for keys already present
        for i, p in enumerate(preps):
            results[i] = eng._existing(p, overwrite)
            if results[i] is None:
                if p.digest in seen:  # a key repeated within the batch is stored once
                    results[i] = _not_written(p)
                else:
                    seen.add(p.digest)
                    todo.append(i)
    chunks = _pack(eng, preps, todo)
    done = 0
    while done < len(chunks):
        done += _write_wave(eng, preps, chunks[done : done + limits.write_wave_chunks_max],
                            results, overwrite, donate)
    out = []
    for r in results:
        assert r is not None
        out.append(r)
    return out


def _not_written(p: _Prepared) -> PutResult:
    return PutResult(False, BlockMeta(p.ns, p.key, p.hdr.payload_len, p.hdr.checksum, 0, 0.0))


def _pack(eng: Engine, preps: list[_Prepared], todo: list[int]) -> list[_Chunk]:
    cap = max(PAGE, min(limits.write_chunk_bytes_max, eng.config.segment_bytes - PAGE))
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


def _build(eng: Engine, preps: list[_Prepared], c: _Chunk) -> None:
    """Payloads and padding into an aligned buffer, outside every lock."""
    if c.staged is not None:
        c.buf = eng.pool.acquire(PAGE)  # the header page; the payload stays where it is
        c.offs = [0]
        return
    c.buf = eng.pool.acquire(c.total)
    c.offs = []
    o = 0
    for i in c.items:
        h = preps[i].hdr
        po, ln = h.payload_offset, h.payload_len
        view = c.buf.view[o : o + h.span]
        view[po : po + ln] = preps[i].data
        tail = min(h.span, fmt.align_up(po + ln))
        view[po + ln : tail] = bytes(tail - po - ln)
        c.offs.append(o)
        o += h.span


def _reserve(eng: Engine, preps: list[_Prepared], c: _Chunk, overwrite: bool,
             first: bool) -> bool:
    """Claim the chunk's range in the active segment. Caller holds _wlock. Only the first
    chunk of a wave may roll the segment: rolling waits for writes in flight, and the wave's
    earlier chunks are reserved but not yet submitted."""
    seg = eng.active
    if seg is None or seg.broken or seg.end + c.total > eng.config.segment_bytes:
        if not first:
            return False
        seg = eng._room_for(c.total)
    assert c.buf is not None and c.offs is not None
    with eng._lock:
        c.live = [not (preps[i].digest in eng._pending
                       or eng._existing(preps[i], overwrite) is not None) for i in c.items]
        eng._pending.update(preps[i].digest for n, i in enumerate(c.items) if c.live[n])
    c.seg, c.off = seg, eng._reserve(seg, c.total)
    seq0 = eng._next_seqs(len(c.items))
    c.hdrs = []
    for n, i in enumerate(c.items):
        flags = preps[i].hdr.flags | (0 if c.live[n] else fmt.FLAG_VOID)
        hdr = replace(preps[i].hdr, seq=seq0 + n, flags=flags)
        hdr.encode_into(c.buf.view[c.offs[n] :])
        if c.live[n]:
            eng._add_rows(seg, c.off + c.offs[n], hdr, preps[i].digest)
        c.hdrs.append(hdr)
    return True


def _write_wave(eng: Engine, preps: list[_Prepared], wave: list[_Chunk],
                results: list[PutResult | None], overwrite: bool, donate: bool) -> int:
    """Write up to ``len(wave)`` chunks; returns how many were written (at least one)."""
    for c in wave:
        _build(eng, preps, c)
    taken: list[_Chunk] = []
    try:
        with eng._wlock:
            for c in wave:
                if not _reserve(eng, preps, c, overwrite, first=not taken):
                    break
                taken.append(c)
        _submit_and_publish(eng, preps, taken, results, donate)
    finally:
        for c in wave:
            if c.buf is not None:
                eng.pool.release(c.buf)
                c.buf = None
    return len(taken)


def _submit_and_publish(eng: Engine, preps: list[_Prepared], taken: list[_Chunk],
                        results: list[PutResult | None], donate: bool) -> None:
    published: set[int] = set()
    try:
        ok = [False] * len(taken)
        try:
            ops = [c.ops() for c in taken]
            res = iter(eng.device.submit([op for group in ops for op in group]))
            ok = [all(next(res) == len(op.buf) for op in group) for group in ops]
        finally:
            for n, c in enumerate(taken):  # every reserved range completes, even on failure
                assert c.seg is not None
                ok[n] = eng._complete(c.seg, c.off, c.off + c.total, ok[n])
        bad = [c for n, c in enumerate(taken) if not ok[n]]
        if bad:
            from kvstore.errors import StorageError

            raise StorageError(f"{eng.device.name}: write of {bad[0].total} bytes at "
                               f"{bad[0].off} failed")
        if eng.config.sync_on_put:
            for seg in {id(c.seg): c.seg for c in taken}.values():
                eng.device.sync(seg.handle)  # type: ignore[union-attr]
        for c in taken:
            _publish_chunk(eng, preps, c, results, donate)
            published.add(id(c))
    finally:
        stale = [preps[i].digest for c in taken if id(c) not in published
                 for n, i in enumerate(c.items) if c.live and c.live[n]]
        if stale:
            with eng._lock:
                eng._pending.difference_update(stale)


def _publish_chunk(eng: Engine, preps: list[_Prepared], c: _Chunk,
                   results: list[PutResult | None], donate: bool) -> None:
    assert c.seg is not None and c.offs is not None and c.hdrs is not None and c.live is not None
    keeps: list[object] = []
    for n, i in enumerate(c.items):  # DRAM copies outside the lock
        p = preps[i]
        keep: object = None
        if c.live[n] and eng.config.dram_on_put and p.hdr.payload_len <= eng.dram.capacity_bytes:
            keep = p.data.toreadonly() if donate else bytes(p.data)
        keeps.append(keep)
    with eng._lock:
        for n, i in enumerate(c.items):
            p = preps[i]
            if not c.live[n]:
                results[i] = _not_written(p)
                continue
            eng._publish(c.seg, c.off + c.offs[n], c.hdrs[n], p.digest, p.ns_id, keeps[n])
            eng._pending.discard(p.digest)
            results[i] = PutResult(True, eng._meta(c.hdrs[n]))
            eng.counters["puts"] += 1
            eng.counters["bytes_written"] += p.hdr.payload_len
