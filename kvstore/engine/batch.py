"""Writing puts: records packed into chunks, chunks written concurrently, acks in log order.

A chunk (one record, or many small ones up to ``limits.write_chunk_bytes_max``) is built in an
aligned buffer outside every lock: payload copy and padding. Under the write lock the chunk only
reserves its range of the active segment, takes sequence numbers, encodes its header pages and
adds its summary rows. The device write then runs with no lock held, so several writers keep
the device's queue full (a single serialized writer reached half of fio's write bandwidth).
A put is acknowledged, and its blocks published in the index, only when every earlier byte of
the segment is written (``Engine._complete``): recovery stops at the first bad record, so an
acknowledged block must never sit behind a hole.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.types import BlockMeta, PutResult

if TYPE_CHECKING:
    from kvstore.engine.device import AlignedBuffer
    from kvstore.engine.segments import Segment
    from kvstore.engine.store import Engine, _Prepared

PAGE = fmt.PAGE


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
    cap = max(PAGE, min(limits.write_chunk_bytes_max, eng.config.segment_bytes - PAGE))
    chunk: list[int] = []
    size = 0
    for i in todo:
        span = preps[i].hdr.span
        if chunk and size + span > cap:
            _write_chunk(eng, preps, chunk, results, overwrite, donate)
            chunk, size = [], 0
        chunk.append(i)
        size += span
    if chunk:
        _write_chunk(eng, preps, chunk, results, overwrite, donate)
    out = []
    for r in results:
        assert r is not None
        out.append(r)
    return out



def _not_written(p: _Prepared) -> PutResult:
    return PutResult(False, BlockMeta(p.ns, p.key, p.hdr.payload_len, p.hdr.checksum, 0, 0.0))


def _write_chunk(eng: Engine, preps: list[_Prepared], chunk: list[int],
                 results: list[PutResult | None], overwrite: bool, donate: bool) -> None:
    while chunk:
        total = sum(preps[i].hdr.span for i in chunk)
        buf = eng.pool.acquire(total)
        try:
            offs = []
            o = 0
            for i in chunk:  # payloads and padding, outside every lock
                h = preps[i].hdr
                po, ln = h.payload_offset, h.payload_len
                view = buf.view[o : o + h.span]
                view[po : po + ln] = preps[i].data
                tail = min(h.span, fmt.align_up(po + ln))
                view[po + ln : tail] = bytes(tail - po - ln)
                offs.append(o)
                o += h.span
            with eng._wlock:
                with eng._lock:  # another writer may have stored one of these keys meanwhile
                    lost = [i for i in chunk if preps[i].digest in eng._pending
                            or eng._existing(preps[i], overwrite) is not None]
                    if not lost:
                        eng._pending.update(preps[i].digest for i in chunk)
                if lost:
                    for i in lost:
                        results[i] = _not_written(preps[i])
                    chunk = [i for i in chunk if i not in lost]
                    continue  # rebuild the chunk without them (rare)
                try:
                    seg = eng._room_for(total)
                    off = eng._reserve(seg, total)
                except BaseException:
                    with eng._lock:
                        eng._pending.difference_update(preps[i].digest for i in chunk)
                    raise
                seq0 = eng._next_seqs(len(chunk))
                hdrs = []
                for n, i in enumerate(chunk):
                    hdr = replace(preps[i].hdr, seq=seq0 + n)
                    hdr.encode_into(buf.view[offs[n] :])
                    eng._add_rows(seg, off + offs[n], hdr, preps[i].digest)
                    hdrs.append(hdr)
            _finish(eng, seg, off, total, buf, chunk, offs, hdrs, preps, results, donate)
            return
        finally:
            eng.pool.release(buf)


def _finish(eng: Engine, seg: Segment, off: int, total: int, buf: AlignedBuffer,
            chunk: list[int], offs: list[int], hdrs: list[fmt.RecordHeader],
            preps: list[_Prepared], results: list[PutResult | None], donate: bool) -> None:
    """Write the reserved chunk, wait for log order, publish."""
    published = False
    try:
        ok = False
        try:
            eng.device.write(seg.handle, off, buf.view[:total])
            ok = True
        finally:
            eng._complete(seg, off, off + total, ok)
        if eng.config.sync_on_put:
            eng.device.sync(seg.handle)
        keeps = []
        for i in chunk:  # DRAM copies outside the lock
            p = preps[i]
            keep: object = None
            if eng.config.dram_on_put and p.hdr.payload_len <= eng.dram.capacity_bytes:
                keep = p.data.toreadonly() if donate else bytes(p.data)
            keeps.append(keep)
        with eng._lock:
            for n, i in enumerate(chunk):
                p = preps[i]
                eng._publish(seg, off + offs[n], hdrs[n], p.digest, p.ns_id, keeps[n])
                eng._pending.discard(p.digest)
                results[i] = PutResult(True, eng._meta(hdrs[n]))
                eng.counters["puts"] += 1
                eng.counters["bytes_written"] += p.hdr.payload_len
            published = True
    finally:
        if not published:
            with eng._lock:
                eng._pending.difference_update(preps[i].digest for i in chunk)
