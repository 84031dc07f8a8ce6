"""A prototype of pipelined waves for Engine.put_many, for measurement only (profile_put_many.py
--pipeline): the engine is not changed. It uses batch.py's own steps and the devices'
``start()``: wave N+1 is built (payload copy) and reserved while wave N is in flight, and is
handed to the device before wave N is waited for, so the queue does not drain between waves.

Rules it keeps (the ones batch.py keeps): every reserved range is completed, failed or not;
acknowledgement (publish) follows ``_complete``'s log order. One more: a wave that would have
to roll the segment waits until this call's previous wave is finished, because rolling waits
for every write in flight and with io_uring only this thread reaps this thread's ring.
"""

from __future__ import annotations

from typing import Any

from kvstore import limits
from kvstore.engine import batch as b
from kvstore.engine.types import PutResult
from kvstore.errors import StorageError


def _fits(eng: Any, c: Any) -> bool:
    seg = eng.active
    return seg is not None and not seg.broken and seg.end + c.total <= eng.config.segment_bytes


def _finish(eng: Any, preps: list[Any], taken: list[Any], pending: Any,
            results: list[PutResult | None], donate: bool) -> None:
    ok = [False] * len(taken)
    try:
        res = iter(pending.wait())
        ok = [all(next(res) == len(op.buf) for op in c.ops()) for c in taken]
    finally:
        for n, c in enumerate(taken):
            eng._complete(c.seg, c.off, c.off + c.total, ok[n])
        for c in taken:
            if c.buf is not None:
                eng.pool.release(c.buf)
                c.buf = None
    if not all(ok):
        raise StorageError(f"{eng.device.name}: a pipelined wave failed")
    for c in taken:
        b._publish_chunk(eng, preps, c, results, donate)


def write_batch(eng: Any, preps: list[Any], overwrite: bool,
                donate: bool = False) -> list[PutResult]:
    results: list[PutResult | None] = [None] * len(preps)
    todo: list[int] = []
    seen: set[bytes] = set()
    with eng._lock:
        for i, p in enumerate(preps):
            results[i] = eng._existing(p, overwrite)
            if results[i] is None:
                if p.digest in seen:
                    results[i] = b._not_written(p)
                else:
                    seen.add(p.digest)
                    todo.append(i)
    chunks = b._pack(eng, preps, todo)
    done = 0
    prev: tuple[list[Any], Any] | None = None
    try:
        while done < len(chunks):
            wave = chunks[done : done + limits.write_wave_chunks_max]
            for c in wave:
                if c.buf is None:
                    b._build(eng, preps, c)  # overlaps the previous wave's I/O
            taken: list[Any] = []
            with eng._wlock:
                for c in wave:
                    if not _fits(eng, c) and (taken or prev is not None):
                        break  # rolling must wait for our own writes in flight
                    if not b._reserve(eng, preps, c, overwrite, first=not taken):
                        break
                    taken.append(c)
            if not taken:  # needs a roll: finish the previous wave first
                assert prev is not None
                _finish(eng, preps, *prev, results, donate)
                prev = None
                continue
            cur = (taken, eng.device.start([op for c in taken for op in c.ops()]))
            done += len(taken)
            if prev is not None:
                _finish(eng, preps, *prev, results, donate)
            prev = cur
        if prev is not None:
            p, prev = prev, None
            _finish(eng, preps, *p, results, donate)
    finally:
        if prev is not None:  # an error: still complete what was reserved
            try:
                _finish(eng, preps, *prev, results, donate)
            except StorageError:
                pass
        for c in chunks:
            if c.buf is not None:
                eng.pool.release(c.buf)
                c.buf = None
    out = []
    for r in results:
        assert r is not None
        out.append(r)
    return out


def build_nogil(eng: Any, preps: list[Any], c: Any) -> None:
    """batch._build with the payload copy done by ctypes.memmove, which releases the GIL (a
    memoryview slice assignment holds it for the whole 2 MiB memcpy, so every other thread,
    the write-lock holder included, waits for it)."""
    from kvstore.engine import format as fmt
    from kvstore.io_uring.buffers import copy_into

    if c.staged is not None:
        b._build(eng, preps, c)
        return
    c.buf = eng.pool.acquire(c.total)
    c.offs = []
    o = 0
    for i in c.items:
        h = preps[i].hdr
        po, ln = h.payload_offset, h.payload_len
        view = c.buf.view[o : o + h.span]
        copy_into(view[po : po + ln], preps[i].data)
        tail = min(h.span, fmt.align_up(po + ln))
        view[po + ln : tail] = bytes(tail - po - ln)
        c.offs.append(o)
        o += h.span
