"""``BlockReader``: the engine's read side. A read resolves its key once, finds the block in
the DRAM tier or reads and verifies it from flash (``records.py``, ranges in ``ranges.py``),
and hands out a ``BlockLease``: the view stays valid until ``release()`` (or the end of a
``with`` block). Every read has a typed outcome (``types.ReadOutcome``): a hit, or a miss that
is absent, expired, corrupt (dropped and tombstoned) or an I/O error (the block stays).
Presence, prefix lookups (with their lookup leases) and prefetch are here too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.batch import check_batch
from kvstore.engine.device import AlignedBuffer, copy_into, copy_out
from kvstore.engine.log import SegmentLog
from kvstore.engine.ranges import span_of
from kvstore.engine.records import RecordIO
from kvstore.engine.state import EngineState, meta_of
from kvstore.engine.tiers import LowerTier
from kvstore.engine.types import BlockMeta, LookupResult, ReadOutcome
from kvstore.errors import CorruptRecord, InvalidArgument, LimitExceeded, StorageError

log = logging.getLogger("kvstore.engine")
PAGE = fmt.PAGE


@dataclass(frozen=True, slots=True)
class BlockView:
    meta: BlockMeta
    payload: memoryview  # read-only; valid until its lease is released
    # True when served from the DRAM tier: ``payload.obj`` is immutable and stays valid after
    # the lease ends (hold a reference to it), so the bytes may be sent without a copy.
    stable: bool = False
    offset: int = 0  # ``payload`` is bytes [offset, offset + len(payload)) of the block


class BlockLease:
    """One read's result: ``view`` (None on a miss) and ``outcome``. The view's payload is
    valid until ``release()``, which may be called more than once; ``with lease as view:``
    releases on leaving the block."""

    __slots__ = ("_release", "outcome", "view")

    def __init__(self, outcome: ReadOutcome, view: BlockView | None = None,
                 release: Callable[[], None] | None = None) -> None:
        self.outcome = outcome
        self.view = view
        self._release = release

    @classmethod
    def of(cls, view: BlockView) -> BlockLease:
        """A lease over a view that needs no release (a DRAM-tier hit)."""
        return cls(ReadOutcome.HIT, view)

    @property
    def found(self) -> bool:
        return self.view is not None

    @property
    def stable(self) -> bool:
        """A DRAM-tier view: immutable, valid after ``release()`` (a transport may keep a
        reference to its payload until the socket flushed it)."""
        return self.view is not None and self.view.stable

    def release(self) -> None:
        """Let go of the view's buffer (the payload is invalid afterwards)."""
        fn, self._release = self._release, None
        if fn is not None:
            fn()

    def __enter__(self) -> BlockView | None:
        return self.view

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class BlockReader:
    """Reads over the shared state, the log's segments (pinned while read) and record I/O."""

    def __init__(self, state: EngineState, seglog: SegmentLog, records: RecordIO) -> None:
        self.state = state
        self.log = seglog
        self.records = records

    # ------------------------------------------------------------------ leases
    def acquire(self, ns: str, key: str,
                rng: tuple[int, int | None] | None = None) -> BlockLease:
        """Locate and read a block (or the payload range ``rng`` = (offset, length) of it, as
        ``ranges.span_of`` reads it). Never returns with a lock held."""
        with self.state.lock:
            _ns_id, _info, kb, digest = self.state.resolve(ns, key)
        return self._read(ns, key, kb, digest, rng)

    def _read(self, ns: str, key: str, kb: bytes, digest: bytes,
              rng: tuple[int, int | None] | None) -> BlockLease:
        """``acquire`` for a key resolved already (``kb``, ``digest``)."""
        st = self.state
        with st.lock:
            st.counters["gets"] += 1
            e, outcome = st.find(digest, time.time())
            seg = None if e is None else self.log.segments.get(e.seg)
            lower = None
            if e is None or seg is None:
                if e is not None:  # the index points nowhere: forget the block
                    st.drop(digest, e)
                    outcome = ReadOutcome.ABSENT
                lower = st.lower if outcome is ReadOutcome.ABSENT else None
                if lower is None:
                    st.miss(outcome)
                    return BlockLease(outcome)
            else:
                a, b = (0, e.length) if rng is None else span_of(rng[0], rng[1], e.length)
                st.index.touch(digest)
                reads = st.index.hits(digest)
                cached = st.dram.get(digest, (e.seg, e.page))
                if cached is not None:
                    st.counters["hits_dram"] += 1
                    st.counters["bytes_read"] += b - a
                    data, meta = cached
                    mv = memoryview(data).cast("B")
                    mv = mv if rng is None else mv[a:b]
                    return BlockLease.of(BlockView(meta, mv.toreadonly(), stable=True, offset=a))
                self.log.pin(seg.id)
        if lower is not None:
            from kvstore.engine.below import read_lower

            return read_lower(self, lower, ns, key, kb, digest, rng)
        assert e is not None and seg is not None
        nsb = ns.encode()
        try:
            if rng is None:
                buf, hdr = self.records.read_record(seg, e, nsb, kb, plain=True)
                po = hdr.payload_offset
            else:
                buf, hdr, po = self.records.read_span(seg, e, nsb, kb, a, b)
        except CorruptRecord as exc:
            with st.lock:
                st.drop(digest, e)
                st.miss(ReadOutcome.CORRUPT)
                st.counters["checksum_failures"] += 1
            log.warning("dropping %s/%s at segment %08x page %d: %s", ns, key, e.seg, e.page, exc)
            self.bury(e.ns, nsb, kb, digest)
            return BlockLease(ReadOutcome.CORRUPT)
        except StorageError as exc:  # maybe transient: a miss now, the block stays indexed
            with st.lock:
                st.miss(ReadOutcome.IO_ERROR)
                st.counters["io_errors"] += 1
            log.error("read of %s/%s failed: %s", ns, key, exc)
            return BlockLease(ReadOutcome.IO_ERROR)
        finally:
            self.log.unpin(seg)
        with st.lock:
            st.counters["hits_flash"] += 1
            st.counters["bytes_read"] += b - a
        meta = meta_of(hdr)
        if rng is not None:  # a range is never promoted: DRAM keeps whole verified blocks
            return self._lease(BlockView(meta, buf.view[po : po + b - a].toreadonly(), offset=a),
                               buf)
        promote = st.config.dram_promote_reads
        if promote and reads >= promote and e.length <= st.dram.capacity_bytes:
            data = copy_out(buf.view[po : po + e.length])  # a hot block: keep it in DRAM
            st.pool.release(buf)
            with st.lock:
                if st.index.get(digest) == e:
                    st.dram.put(digest, (e.seg, e.page), data, meta)
                    st.counters["promoted_blocks"] += 1
            return BlockLease.of(BlockView(meta, memoryview(data).toreadonly(), stable=True))
        return self._lease(BlockView(meta, buf.view[po : po + e.length].toreadonly()), buf)

    def _lease(self, view: BlockView, buf: AlignedBuffer) -> BlockLease:
        pool = self.state.pool
        return BlockLease(ReadOutcome.HIT, view, lambda: pool.release(buf))

    def bury(self, ns_id: int, nsb: bytes, kb: bytes, digest: bytes) -> None:
        """Persist the loss of a corrupt block: a tombstone, so that after a restart the
        index does not point at the bad record again (exists/lookup would claim it)."""
        try:
            self.log.tombstone(ns_id, nsb, kb, digest, only_if_present=False)
        except StorageError as exc:  # best effort: the block is already a miss
            log.error("could not record the loss of a corrupt block: %s", exc)

    # ------------------------------------------------------------------ no I/O
    def read_dram(self, ns: str, key: str) -> BlockView | None:
        """A DRAM-tier hit without any I/O, or None (then ``acquire``, which counts the miss).
        Cheap enough for an event loop. The view is ``stable``: valid without a lease."""
        st = self.state
        with st.lock:
            _ns_id, _info, _kb, digest = st.resolve(ns, key)
            e = st.live(digest, time.time())
            if e is None:
                return None
            cached = st.dram.get(digest, (e.seg, e.page))
            if cached is None:
                return None
            st.counters["gets"] += 1
            st.counters["hits_dram"] += 1
            st.counters["bytes_read"] += e.length
            st.index.touch(digest)
        data, meta = cached
        return BlockView(meta, memoryview(data).cast("B").toreadonly(), stable=True)

    def head_dram(self, ns: str, key: str) -> BlockMeta | None:
        """Metadata of a DRAM-tier block without any I/O, or None (then call ``head``)."""
        st = self.state
        with st.lock:
            _ns_id, _info, _kb, digest = st.resolve(ns, key)
            e = st.live(digest, time.time())
            cached = None if e is None else st.dram.get(digest, (e.seg, e.page))
            if cached is None:
                return None
            st.counters["heads"] += 1
            return cached[1]

    # ------------------------------------------------------------------ convenience
    def get(self, ns: str, key: str) -> bytes | None:
        with self.acquire(ns, key) as v:
            return None if v is None else bytes(v.payload)

    def get_into(self, ns: str, key: str, out: object) -> int | None:
        target = memoryview(out).cast("B")  # type: ignore[arg-type]
        with self.acquire(ns, key) as v:
            if v is None:
                return None
            n = len(v.payload)
            if len(target) < n:
                raise InvalidArgument(f"buffer of {len(target)} bytes is smaller than {n}")
            copy_into(target, v.payload)  # GIL released for large blocks
            return n

    def head(self, ns: str, key: str) -> BlockMeta | None:
        """Metadata without the payload: from DRAM, or one 4 KiB header read (CRC and names
        verified; the payload checksum is verified by reads, which return bytes)."""
        st = self.state
        with st.lock:
            _ns_id, _info, kb, digest = st.resolve(ns, key)
            st.counters["heads"] += 1
            e, outcome = st.find(digest, time.time())
            below = e is None and outcome is ReadOutcome.ABSENT and st.lower is not None
            if e is None and not below:
                st.miss(outcome)
                return None
        if below:  # only below flash: a read-through (which re-admits it) answers
            with self._read(ns, key, kb, digest, None) as v:
                return None if v is None else v.meta
        with st.lock:
            assert e is not None
            cached = st.dram.get(digest, (e.seg, e.page))
            if cached is not None:
                return cached[1]
            seg = self.log.pin(e.seg)
            if seg is None:
                return None
        nsb = ns.encode()
        try:
            return meta_of(self.records.read_header(seg, e, nsb, kb))
        except CorruptRecord as exc:
            with st.lock:
                st.drop(digest, e)
                st.counters["checksum_failures"] += 1
            log.warning("dropping %s/%s: %s", ns, key, exc)
            self.bury(e.ns, nsb, kb, digest)
            return None
        except StorageError as exc:  # maybe transient: unknown now, the block stays indexed
            with st.lock:
                st.counters["io_errors"] += 1
            log.error("header read of %s/%s failed: %s", ns, key, exc)
            return None
        finally:
            self.log.unpin(seg)

    # ------------------------------------------------------------------ presence
    def exists(self, ns: str, key: str) -> bool:
        st = self.state
        with st.lock:
            _i, _n, _kb, digest = st.resolve(ns, key)
            if st.live(digest, time.time()) is not None:
                return True
            lower = st.lower
        return lower is not None and bool(lower.present_many([digest], int(time.time()))[0])

    def exists_many(self, ns: str, keys: Sequence[str]) -> list[bool]:
        check_batch(keys)
        return self._present(ns, keys)[0].tolist()

    def _present(self, ns: str, keys: Sequence[str]) -> tuple[np.ndarray, list[bytes]]:
        st = self.state
        digests = fmt.digests_of(ns.encode(), keys)
        with st.lock:
            st.catalog.get(ns)
            present = st.index.present_many(digests, int(time.time()))
            lower = st.lower
        return self._or_lower(lower, present, digests), digests

    @staticmethod
    def _or_lower(lower: LowerTier | None, present: np.ndarray,
                  digests: list[bytes]) -> np.ndarray:
        """``present``, or held by the tier below (its index: no I/O). A block below flash
        counts as present: a read fetches it (one ranged GET), far cheaper than a recompute."""
        missing = np.flatnonzero(~present)
        if lower is None or not len(missing):
            return present
        out = present.copy()
        out[missing] = lower.present_many([digests[i] for i in missing], int(time.time()))
        return out

    def lookup(self, ns: str, keys: Sequence[str], *, lease_seconds: float = 0.0) -> LookupResult:
        """The longest present prefix of ``keys``; with ``lease_seconds`` its blocks are pinned
        (never evicted) until the lease expires, as many as the leased-bytes budget allows:
        ``leased < found`` says the budget cut the lease short."""
        if len(keys) > limits.chain_keys_max:
            raise LimitExceeded(f"chain longer than {limits.chain_keys_max}")
        if not 0 <= lease_seconds <= limits.lease_seconds_max:
            raise InvalidArgument(f"lease_seconds must be in [0, {limits.lease_seconds_max}]")
        st = self.state
        digests = fmt.digests_of(ns.encode(), keys)
        with st.lock:  # presence and pins in one step: a reclaim cannot slip in between
            st.catalog.get(ns)
            present = st.index.present_many(digests, int(time.time()))
            misses = np.flatnonzero(~present)
            n = nf = int(misses[0]) if len(misses) else len(keys)  # nf: the prefix on flash
            if st.lower is not None and nf < len(keys):  # the chain goes on below flash
                below = self._or_lower(st.lower, present, digests)
                misses = np.flatnonzero(~below)
                n = int(misses[0]) if len(misses) else len(keys)
            if not (lease_seconds and nf):
                return LookupResult(n, 0)
            # only flash blocks can be pinned: the rest of the chain is found but not leased
            segs, lengths = st.index.locate_many(digests[:nf])
            leased = st.leases.take(zip(digests[:nf], segs.tolist(), lengths.tolist(),
                                        strict=True), lease_seconds)
            if leased < nf:
                st.counters["leases_limited"] += 1
            return LookupResult(n, leased)

    def prefetch(self, ns: str, keys: Sequence[str]) -> int:
        """Stage blocks into the DRAM tier; returns how many are now staged."""
        check_batch(keys)
        st = self.state
        staged = 0
        for k in keys:
            with st.lock:
                _i, _n, kb, digest = st.resolve(ns, k)
                e = st.live(digest, time.time())
                if e is None and st.lower is None:
                    continue
                if e is not None and st.dram.get(digest, (e.seg, e.page)) is not None:
                    staged += 1
                    continue
            with self._read(ns, k, kb, digest, None) as v:
                if e is None:  # fetched from below flash (re-admitted, as a put keeps it)
                    from kvstore.engine.below import stage_readmitted

                    staged += stage_readmitted(st, digest, v)
                    continue
                if v is None or len(v.payload) > st.dram.capacity_bytes:
                    continue
                data = copy_out(v.payload)
                with st.lock:
                    if st.index.get(digest) == e:
                        staged += st.dram.put(digest, (e.seg, e.page), data, v.meta)
        return staged
