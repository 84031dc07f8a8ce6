"""Writing puts: records packed into chunks, chunks written concurrently, acks in log order.

A chunk (one record, or many small ones up to ``limits.write_chunk_bytes_max``; a call is cut
into at least ``limits.write_wave_chunks_max`` chunks where its records allow) is built in an
aligned buffer outside every lock: payload copy (GIL released) and padding. Under the write
lock a chunk only reserves its byte range, takes sequence numbers and adds summary rows; its
header pages are encoded after the lock and it is handed to the device (``Device.start``) with
no lock held. Chunks are pipelined (``_Pipeline``): up to ``limits.write_wave_chunks_max`` of one
call are in flight while the next is built and reserved, so one ``put_many`` keeps the device
queue as deep as several writer threads would, and several writers keep it deeper.

A put is acknowledged, and its blocks published in the index, only when every earlier byte of
the segment is written (``SegmentLog.complete``), and never after a failed write in the same
segment: recovery stops at the first bad header, so an acknowledged block must never sit
behind a hole. A record whose key another writer stored
between build and reservation is written as a void record (``FLAG_VOID``), never indexed.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.combine import reserve_combined
from kvstore.engine.device import IoOp, StagedPayload, copy_into, is_aligned_view
from kvstore.engine.publish import not_written as _not_written
from kvstore.engine.publish import publish_chunk as _publish_chunk
from kvstore.engine.state import EngineState
from kvstore.engine.types import BlockMeta, PutResult
from kvstore.errors import (
    NO_SPACE_ERRNOS,
    ChecksumMismatch,
    EntityTooLarge,
    InsufficientStorage,
    InvalidArgument,
    LimitExceeded,
    StorageError,
)

if TYPE_CHECKING:
    from kvstore.engine.crypto import RecordCipher
    from kvstore.engine.device import AlignedBuffer, BufferPool, Pending
    from kvstore.engine.group import Group
    from kvstore.engine.log import SegmentLog
    from kvstore.engine.segments import Segment

PAGE = fmt.PAGE
_NO_DATA = memoryview(b"")


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
    # checksum and chunk table not computed yet: ``_build`` computes them from the bytes it
    # stored (``settle_checksum``), inside the pipeline, while earlier chunks are in flight
    deferred: bool = False


def prepare(st: EngineState, ns: str, key: str, data: object, checksum: int | None,
            ttl_seconds: float, meta: bytes, *, defer: bool = False) -> Prepared:
    """Validate one put and compute its checksum (outside all locks). ``defer`` (no declared
    checksum to verify, and no overwrite comparing it): leave the checksum to ``_build``, so
    a put_many's checksums overlap its writes and each payload is read from memory once (the
    copy, then the checksum of the copy while it is in cache)."""
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
    cipher = st.cipher
    # an encrypted record has no chunk table (crypto.py): its GCM tag covers it whole
    log2 = 0 if cipher.enabled else fmt.chunk_log2_for(fmt.header_len_for(nsb, kb, meta), n)
    defer = defer and checksum is None
    if defer:  # placeholders of the right length: the header's size (and span) is final
        csum, chunks = 0, (0,) * fmt.chunk_count(n, log2)
    else:
        csum, chunks = fmt.checksums(mv, log2)
    if checksum is not None and checksum != csum:
        raise ChecksumMismatch("payload does not match its checksum")
    now = time.time()
    hdr = fmt.RecordHeader(nsb, kb, n, csum, 0, now,
                           now + ttl_seconds if ttl_seconds else 0.0, meta,
                           chunk_log2=log2 if chunks else 0, chunks=chunks)
    if cipher.enabled:  # encrypted into the chunk buffer (_build): nothing is written in place
        hdr = cipher.begin_seal(ns_id, hdr)
        staged = None
    if hdr.span + PAGE > st.config.segment_bytes:
        raise EntityTooLarge("block does not fit in one segment")
    return Prepared(ns, key, ns_id, digest, hdr, mv, None if hdr.inline else staged, defer)


def settle_checksum(preps: list[Prepared], i: int, stored: memoryview | None = None) -> None:
    """Compute a deferred checksum (and chunk table) of ``preps[i]``: from ``stored``, the
    plaintext bytes as copied into the chunk buffer, else from the caller's payload."""
    p = preps[i]
    if not p.deferred:
        return
    csum, chunks = fmt.checksums(p.data if stored is None else stored, p.hdr.chunk_log2)
    preps[i] = replace(p, hdr=replace(p.hdr, checksum=csum, chunks=chunks), deferred=False)


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
    seals: dict[int, tuple[bytes, int]] | None = None  # record n: (GCM tag, ciphertext xxh3)
    published: bool = False
    group: Group | None = None  # written with other writers' chunks by one op (group.py)
    rolled: Segment | None = None  # the active segment its reservation rolled out

    def ops(self) -> list[IoOp]:
        assert self.seg is not None and self.buf is not None
        h = self.seg.handle
        if self.staged is None:
            return [IoOp(h, self.off, self.buf.view[: self.total], write=True)]
        return [IoOp(h, self.off, self.buf.view[:PAGE], write=True),
                IoOp(h, self.off + PAGE, self.staged, write=True)]


# (index, result, the segment the put's reservation rolled out, if any: its seal is still
# under way when the answer comes)
Answer = Callable[[int, PutResult, "Segment | None"], None]
# More puts for a running call (``coalesce.py``): new ones, [] (none now: ask again after the
# next reap), or None (no more: the call ends once its writes are reaped)
More = Callable[[], "list[Prepared] | None"]


def write_batch(lg: SegmentLog, preps: list[Prepared], overwrite: bool,
                donate: bool = False, answer: Answer | None = None,
                more: More | None = None) -> list[PutResult]:
    """Write ``preps``; results in their order.

    ``answer(i, result, rolled)`` is called as soon as ``preps[i]`` is
    final (published, or not written), in log order, before later chunks are reaped, so a
    coalesced put's caller goes on while the batch's tail is in flight. ``more`` feeds the
    call new puts while its writes are in flight (appended to ``preps``, answered and
    returned like the others): one pipeline keeps the device queue full across batches."""
    results: list[PutResult | None] = []
    pipe = _Pipeline(lg, preps, results, overwrite, donate, answer, more)
    chunks = pipe.admit(0)
    if answer is not None:  # each answer names the segment its put rolled: callers wait
        try:
            pipe.run(chunks)
        finally:
            lg.sealer.forget_mine()
    else:
        try:
            pipe.run(chunks)
        except BaseException:
            with contextlib.suppress(Exception):
                lg.sealer.wait_mine()
            raise
        lg.sealer.wait_mine()  # a segment this call rolled is sealed before it returns
    out = []
    for r in results:
        assert r is not None
        out.append(r)
    return out


def _pack(segment_bytes: int, preps: list[Prepared], todo: list[int]) -> list[_Chunk]:
    cap = max(PAGE, min(limits.write_chunk_bytes_max, segment_bytes - PAGE))
    # at least write_wave_chunks_max chunks where the records allow it: a put_many of 8 x 2 MiB
    # is 8 ops in flight, not 3 of 6 MiB (the device queue is the call's depth)
    total = sum(preps[i].hdr.span for i in todo)
    cap = max(PAGE, min(cap, fmt.align_up(-(-total // limits.write_wave_chunks_max))))
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


def _build(pool: BufferPool, preps: list[Prepared], c: _Chunk,
           cipher: RecordCipher) -> None:
    """Payloads and padding into an aligned buffer, outside every lock. Large copies release
    the GIL (``copy_into``): a slice assignment held it ~0.3 ms per 2 MiB, stalling the write
    lock's holder and every completion behind it (96% of the engine's GIL time). An encrypted
    record's payload is encrypted into the buffer instead of copied (``crypto.py``); its tag
    and ciphertext checksum wait in ``c.seals`` for ``_encode``."""
    if c.staged is not None:
        settle_checksum(preps, c.items[0])
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
        if h.encrypted:  # encrypted straight into the buffer, no copy
            settle_checksum(preps, i)  # of the plaintext
            if c.seals is None:
                c.seals = {}
            c.seals[len(c.offs)] = cipher.seal_into(preps[i].ns_id, h, preps[i].data,
                                                    view[po : po + ln])
        else:
            copy_into(view[po:], preps[i].data)  # GIL released: other writers run meanwhile
            settle_checksum(preps, i, view[po : po + ln])  # of the bytes written, in cache
        tail = min(h.span, fmt.align_up(po + ln))
        view[po + ln : tail] = bytes(tail - po - ln)
        c.offs.append(o)
        o += h.span


def _reserve(lg: SegmentLog, preps: list[Prepared], c: _Chunk, overwrite: bool) -> None:
    """Claim the chunk's range in the active segment (rolling it when the chunk does not fit),
    take sequence numbers and add summary rows. Caller holds ``wlock``; the header pages are
    encoded after it is released (``_encode``)."""
    _reserve_in(lg, lg.room_for(c.total, defer_seal=True), [(preps, c, overwrite)])


def _reserve_in(lg: SegmentLog, seg: Segment,
                jobs: list[tuple[list[Prepared], _Chunk, bool]]) -> None:
    """``_reserve`` for chunks that all fit in ``seg``, the active segment, in order, with one
    section of the state's (contended) lock for them all. Caller holds ``wlock``."""
    st = lg.state
    seqs = []
    with st.lock:
        for preps, c, overwrite in jobs:
            c.live = [not (preps[i].digest in lg.pending
                           or existing(st, preps[i], overwrite) is not None) for i in c.items]
            lg.pending.update(preps[i].digest for n, i in enumerate(c.items) if c.live[n])
            seqs.append(lg.next_seq)  # as lg.next_seqs, inside this one section
            lg.next_seq += len(c.items)
    for (preps, c, _overwrite), seq0 in zip(jobs, seqs, strict=True):
        c.seg, c.off = seg, lg.reserve(seg, c.total)
        assert c.offs is not None and c.live is not None
        c.hdrs = []
        for n, i in enumerate(c.items):
            flags = preps[i].hdr.flags | (0 if c.live[n] else fmt.FLAG_VOID)
            hdr = replace(preps[i].hdr, seq=seq0 + n, flags=flags)
            if c.live[n]:
                lg.add_rows(seg, c.off + c.offs[n], hdr, preps[i].digest)
            c.hdrs.append(hdr)


def _encode(c: _Chunk) -> None:
    assert c.buf is not None and c.offs is not None and c.hdrs is not None
    for n, (o, hdr) in enumerate(zip(c.offs, c.hdrs, strict=True)):
        if c.seals is not None and n in c.seals:  # encrypted in _build: its tag and checksum
            tag, csum = c.seals[n]
            hdr = c.hdrs[n] = replace(hdr, tag=tag, sealed_checksum=csum)
        hdr.encode_into(c.buf.view[o:])


class _Pipeline:
    """One call's chunks through the device, up to ``limits.write_wave_chunks_max`` in flight:
    chunk N+1 is built (payload copy, GIL released), reserved and started while chunks up to N
    are in flight, so the queue does not drain between waves; chunks finish (wait, complete in
    log order, publish) oldest first.

    Deadlock rules, since only this thread reaps what it started (io_uring: its own ring):
    never *block* on ``wlock`` with a chunk in flight (its holder may be rolling the segment,
    which waits for every write in it, or appending a tombstone, which waits for every earlier
    byte): try it, and reap the oldest chunk when it is taken; and never roll the segment with
    a chunk in flight (reap them all first).
    """

    def __init__(self, lg: SegmentLog, preps: list[Prepared], results: list[PutResult | None],
                 overwrite: bool, donate: bool, answer: Answer | None = None,
                 more: More | None = None) -> None:
        self.lg, self.preps, self.results = lg, preps, results
        self.overwrite, self.donate = overwrite, donate
        self.answer, self.more = answer, more
        self.inflight: deque[tuple[_Chunk, Pending]] = deque()

    def admit(self, lo: int) -> list[_Chunk]:
        """Answer ``preps[lo:]`` that must not write (key present, or repeated among them) and
        pack the others into chunks."""
        preps, results, st = self.preps, self.results, self.lg.state
        results.extend([None] * (len(preps) - len(results)))
        todo: list[int] = []
        seen: set[bytes] = set()
        with st.lock:  # cheap early answer for keys already present
            for i in range(lo, len(preps)):
                p = preps[i]
                results[i] = existing(st, p, self.overwrite)
                if results[i] is None:
                    if p.digest in seen:  # a key repeated within the batch is stored once
                        settle_checksum(preps, i)
                        results[i] = _not_written(preps[i])
                    else:
                        seen.add(p.digest)
                        todo.append(i)
        if self.answer is not None:
            for i in range(lo, len(preps)):
                r = results[i]
                if r is not None:
                    self.answer(i, r, None)
        return _pack(st.config.segment_bytes, preps, todo)

    def _refill(self, chunks: list[_Chunk]) -> None:
        """Ask ``more`` for puts to join (only with room in flight); None: no more will."""
        if self.more is None or len(self.inflight) >= limits.write_wave_chunks_max:
            return
        new = self.more()
        if new is None:
            self.more = None
        elif new:
            lo = len(self.preps)
            self.preps.extend(new)
            chunks.extend(self.admit(lo))

    def run(self, chunks: list[_Chunk]) -> None:
        lg, pool = self.lg, self.lg.state.pool
        reserved: list[_Chunk] = []
        try:
            i = 0
            while True:
                if i == len(chunks):
                    self._refill(chunks)
                if i == len(chunks):
                    if not self.inflight:
                        break
                    self._finish_oldest()
                    continue
                if len(self.inflight) >= limits.write_wave_chunks_max:
                    self._finish_oldest()
                    continue
                c = chunks[i]
                if c.buf is None:
                    _build(pool, self.preps, c, lg.state.cipher)
                active = lg.active
                if not self._try_reserve(c):
                    self._finish_oldest()  # reap before waiting for the lock or rolling
                    continue
                if lg.active is not active:  # rolled: its puts' callers wait for the seal
                    c.rolled = active
                reserved.append(c)
                i += 1
                self._start(c)
        finally:
            self._drain()
            stale = [self.preps[i].digest for c in reserved if not c.published
                     for n, i in enumerate(c.items) if c.live and c.live[n]]
            if stale:
                with lg.state.lock:
                    lg.pending.difference_update(stale)
            for c in chunks:
                if c.buf is not None:
                    pool.release(c.buf)
                    c.buf = None

    def _try_reserve(self, c: _Chunk) -> bool:
        lg = self.lg
        if not self.inflight:
            reserve_combined(lg, self.preps, c, self.overwrite)
            return True
        if not lg.wlock.acquire(blocking=False):
            return False
        try:
            if self.inflight and not lg.fits(c.total):
                return False  # rolling waits for our own unreaped writes
            _reserve(lg, self.preps, c, self.overwrite)
        finally:
            lg.wlock.release()
        return True

    def _start(self, c: _Chunk) -> None:
        assert c.seg is not None
        g = c.group
        try:
            if g is None:
                _encode(c)
                pending = self.lg.state.device.start(c.ops())
            elif g.leader is c:  # group commit: every member's chunk in one op (group.py)
                for m in g.chunks:
                    _encode(m)
                pending = g.start(self.lg.state.device, self.lg.state.pool)
            else:
                pending = g.member(c)  # the leader encodes and writes this chunk
        except BaseException:
            if g is not None and g.leader is c:
                g.finish(-errno.EIO)  # the members' ranges fail with ours
            # every reserved range completes, even on failure
            self.lg.complete(c.seg, c.off, c.off + c.total, False)
            raise
        self.inflight.append((c, pending))

    def _finish_oldest(self) -> None:
        c, pending = self.inflight.popleft()
        lg, st = self.lg, self.lg.state
        assert c.seg is not None
        ok = False
        try:
            res = pending.wait()
            ok = all(r == len(op.buf) for r, op in zip(res, c.ops(), strict=True))
        finally:
            ok = lg.complete(c.seg, c.off, c.off + c.total, ok)
        if not ok:
            if any(-r in NO_SPACE_ERRNOS for r in res if isinstance(r, int)):
                raise InsufficientStorage(f"{st.device.name}: no space for a write of "
                                          f"{c.total} bytes (the file system is full)")
            raise StorageError(f"{st.device.name}: write of {c.total} bytes at {c.off} failed")
        if st.config.sync_on_put:
            st.device.sync(c.seg.handle)
        _publish_chunk(lg, self.preps, c, self.results, self.donate)
        c.published = True
        if c.buf is not None:  # back to the pool now: a long pipeline reuses it
            st.pool.release(c.buf)
            c.buf = None
        if self.answer is not None:
            for i in c.items:
                r = self.results[i]
                assert r is not None
                if self.more is not None:  # a long pipeline keeps no payload it wrote
                    self.preps[i] = replace(self.preps[i], data=_NO_DATA, staged=None)
                self.answer(i, r, c.rolled)

    def _drain(self) -> None:
        """After a failure: wait for and complete what is still in flight, acknowledging
        nothing (the caller raises)."""
        while self.inflight:
            c, pending = self.inflight.popleft()
            assert c.seg is not None
            ok = False
            with contextlib.suppress(Exception):
                res = pending.wait()
                ok = all(r == len(op.buf) for r, op in zip(res, c.ops(), strict=True))
            with contextlib.suppress(StorageError):
                self.lg.complete(c.seg, c.off, c.off + c.total, ok)
