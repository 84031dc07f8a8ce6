"""The engine's read paths: DRAM tier, flash reads with verification, ranged reads (the chunk
I/O is in ``ranges.py``), presence and prefix lookups, prefetch. A mixin of ``Engine`` (kept
apart so each module stays small). Every device read here is counted in ``flash_bytes_read``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.device import AlignedBuffer, IoOp
from kvstore.engine.index import Entry
from kvstore.engine.ranges import read_span, span_of
from kvstore.engine.segments import Segment, summary_path
from kvstore.engine.types import BlockMeta, LookupResult
from kvstore.errors import CorruptRecord, InvalidArgument, LimitExceeded, StorageError

if TYPE_CHECKING:
    from kvstore.engine.store import Engine

log = logging.getLogger("kvstore.engine")
PAGE = fmt.PAGE


@dataclass(frozen=True, slots=True)
class BlockView:
    meta: BlockMeta
    payload: memoryview  # read-only; valid only inside the engine.read() context
    # True when served from the DRAM tier: ``payload.obj`` is immutable and stays valid after
    # the context ends (hold a reference to it), so the bytes may be sent without a copy.
    stable: bool = False
    offset: int = 0  # ``payload`` is bytes [offset, offset + len(payload)) of the block


def check_batch(keys: Sequence[object]) -> None:
    if len(keys) > limits.batch_keys_max:
        raise LimitExceeded(f"batch larger than {limits.batch_keys_max} keys")


class EngineReads:
    """Read-side methods of ``Engine``; every attribute they use is set by Engine.__init__."""

    @contextlib.contextmanager
    def read(self, ns: str, key: str) -> Iterator[BlockView | None]:
        """Zero-copy read: yields a BlockView whose payload is valid inside the block, or None
        (a miss: absent, expired, corrupt or unreadable). Never yields with a lock held."""
        view = self._open_view(ns, key)
        if view is None:
            yield None
            return
        bv, buf = view
        try:
            yield bv
        finally:
            if buf is not None:
                self.pool.release(buf)

    @contextlib.contextmanager
    def read_range(self, ns: str, key: str, offset: int,
                   length: int | None = None) -> Iterator[BlockView | None]:
        """Like ``read``, for payload bytes ``[offset, offset + length)`` (clamped to the block;
        ``length=None``: to the end; ``offset < 0``: the last ``-offset`` bytes). The view's
        ``offset`` and ``len(payload)`` say which bytes it holds (empty past the end), and
        ``meta.length`` is the whole block's. From flash only the chunks covering the range are
        read, and each is verified whole (``ranges.py``); a DRAM hit is a slice."""
        view = self._open_view(ns, key, (offset, length))
        if view is None:
            yield None
            return
        bv, buf = view
        try:
            yield bv
        finally:
            if buf is not None:
                self.pool.release(buf)

    def _open_view(self, ns: str, key: str, rng: tuple[int, int | None] | None = None,
                   ) -> tuple[BlockView, AlignedBuffer | None] | None:
        """Locate and read a block (or the range ``rng`` of it); the caller releases the
        returned buffer (None for DRAM)."""
        with self._lock:
            _ns_id, _info, kb, digest = self._resolve(ns, key)
            self.counters["gets"] += 1
            e = self._live(digest, time.time())
            seg = None if e is None else self.segments.get(e.seg)
            if e is None or seg is None:
                if e is not None:  # the index points nowhere: forget the block
                    self._drop(digest, e)
                self.counters["misses"] += 1
                return None
            a, b = (0, e.length) if rng is None else span_of(rng[0], rng[1], e.length)
            self.index.touch(digest)
            reads = self.index.hits(digest)
            cached = self.dram.get(digest, (e.seg, e.page))
            if cached is not None:
                self.counters["hits_dram"] += 1
                self.counters["bytes_read"] += b - a
                data, meta = cached
                mv = memoryview(data).cast("B")
                return BlockView(meta, (mv if rng is None else mv[a:b]).toreadonly(),
                                 stable=True, offset=a), None
            seg.refs += 1
        try:
            if rng is None:
                buf, hdr = self._read_record(seg, e, ns.encode(), kb)
                po = hdr.payload_offset
            else:
                buf, hdr, po = read_span(self, seg, e, ns.encode(), kb, a, b)
        except CorruptRecord as exc:
            with self._lock:
                self._drop(digest, e)
                self.counters["misses"] += 1
                self.counters["checksum_failures"] += 1
            log.warning("dropping %s/%s at segment %08x page %d: %s", ns, key, e.seg, e.page, exc)
            self._bury(e.ns, ns.encode(), kb, digest)
            return None
        except StorageError as exc:  # maybe transient: a miss now, the block stays indexed
            with self._lock:
                self.counters["misses"] += 1
                self.counters["io_errors"] += 1
            log.error("read of %s/%s failed: %s", ns, key, exc)
            return None
        finally:
            self._unref(seg)
        with self._lock:
            self.counters["hits_flash"] += 1
            self.counters["bytes_read"] += b - a
        meta = self._meta(hdr)
        if rng is not None:  # a range is never promoted: DRAM keeps whole verified blocks
            return BlockView(meta, buf.view[po : po + b - a].toreadonly(), offset=a), buf
        promote = self.config.dram_promote_reads
        if promote and reads >= promote and e.length <= self.dram.capacity_bytes:
            data = bytes(buf.view[po : po + e.length])  # a hot block: keep it in DRAM
            self.pool.release(buf)
            with self._lock:
                if self.index.get(digest) == e:
                    self.dram.put(digest, (e.seg, e.page), data, meta)
                    self.counters["promoted_blocks"] += 1
            return BlockView(meta, memoryview(data).toreadonly(), stable=True), None
        return BlockView(meta, buf.view[po : po + e.length].toreadonly()), buf

    def _bury(self, ns_id: int, nsb: bytes, kb: bytes, digest: bytes) -> None:
        """Persist the loss of a corrupt block: a tombstone, so that after a restart the
        index does not point at the bad record again (exists/lookup would claim it)."""
        try:
            self._tombstone(ns_id, nsb, kb, digest, only_if_present=False)
        except StorageError as exc:  # best effort: the block is already a miss
            log.error("could not record the loss of a corrupt block: %s", exc)

    def read_dram(self, ns: str, key: str) -> BlockView | None:
        """A DRAM-tier hit without any I/O, or None (then call ``read``, which counts the
        miss). Cheap enough for an event loop: no thread hop for hot blocks. The view is
        ``stable``: it stays valid without a context."""
        with self._lock:
            _ns_id, _info, _kb, digest = self._resolve(ns, key)
            e = self._live(digest, time.time())
            if e is None:
                return None
            cached = self.dram.get(digest, (e.seg, e.page))
            if cached is None:
                return None
            self.counters["gets"] += 1
            self.counters["hits_dram"] += 1
            self.counters["bytes_read"] += e.length
            self.index.touch(digest)
        data, meta = cached
        return BlockView(meta, memoryview(data).cast("B").toreadonly(), stable=True)

    def head_dram(self, ns: str, key: str) -> BlockMeta | None:
        """Metadata of a DRAM-tier block without any I/O, or None (then call ``head``)."""
        with self._lock:
            _ns_id, _info, _kb, digest = self._resolve(ns, key)
            e = self._live(digest, time.time())
            cached = None if e is None else self.dram.get(digest, (e.seg, e.page))
            if cached is None:
                return None
            self.counters["heads"] += 1
            return cached[1]

    def _unref(self, seg: Segment) -> None:
        with self._lock:
            seg.refs -= 1
            if seg.retired and seg.refs == 0:
                self._free(seg)

    def _free(self, seg: Segment) -> None:
        """Close and delete a retired segment's files. Caller holds _lock; no refs remain."""
        assert seg.retired and seg.refs == 0
        self.retired.pop(seg.id, None)
        self.device.close_handle(seg.handle)
        self.device.unlink(seg.path)
        self.device.unlink(summary_path(self.config.data_dir, seg.id))

    def _flash_submit(self, ops: list[IoOp]) -> list[int]:
        """Device reads, counted in ``flash_bytes_read``; raises StorageError if one fails."""
        res = self.device.submit(ops)
        with self._lock:
            self.counters["flash_bytes_read"] += sum(r for r in res if r > 0)
        for op, r in zip(ops, res, strict=True):
            if r < 0:
                raise StorageError(f"{self.device.name}: read at {op.offset} failed with "
                                   f"errno {-r}")
        return res

    def _flash_read(self, handle: int, offset: int, view: memoryview) -> int:
        return self._flash_submit([IoOp(handle, offset, view)])[0]

    @staticmethod
    def _check_header(hdr: fmt.RecordHeader, nsb: bytes, kb: bytes, e: Entry) -> None:
        """The header read for index entry ``e`` must name that block. Raises CorruptRecord."""
        if hdr.namespace != nsb or hdr.key != kb or hdr.tombstone:
            raise CorruptRecord("record header names another block")
        if hdr.payload_len != e.length or hdr.checksum != e.csum:
            raise CorruptRecord("record header disagrees with the index")

    def _read_record(self, seg: Segment, e: Entry, nsb: bytes,
                     kb: bytes) -> tuple[AlignedBuffer, fmt.RecordHeader]:
        """Read and verify one record; the caller releases the buffer. Raises CorruptRecord."""
        hdr_len = fmt.header_len_for(nsb, kb, b"")
        want = fmt.record_span(hdr_len, e.length)
        buf = self.pool.acquire(want)
        try:
            off = e.page * PAGE
            got = self._flash_read(seg.handle, off, buf.view[:want])
            hdr = fmt.RecordHeader.decode(buf.view[: min(got, PAGE)])
            if hdr.span > want:  # metadata pushed the payload to the next page: read it all
                if hdr.span > buf.size:
                    self.pool.release(buf)
                    buf = self.pool.acquire(hdr.span)
                got = self._flash_read(seg.handle, off, buf.view[: hdr.span])
            self._check_header(hdr, nsb, kb, e)
            po = hdr.payload_offset
            if got < po + e.length:
                raise CorruptRecord("record truncated")
            if fmt.checksum(buf.view[po : po + e.length]) != hdr.checksum:
                raise CorruptRecord("payload checksum mismatch")
            return buf, hdr
        except BaseException:
            self.pool.release(buf)
            raise

    def get(self, ns: str, key: str) -> bytes | None:
        with self.read(ns, key) as v:
            return None if v is None else bytes(v.payload)

    def get_into(self, ns: str, key: str, out: object) -> int | None:
        target = memoryview(out).cast("B")  # type: ignore[arg-type]
        with self.read(ns, key) as v:
            if v is None:
                return None
            n = len(v.payload)
            if len(target) < n:
                raise InvalidArgument(f"buffer of {len(target)} bytes is smaller than {n}")
            target[:n] = v.payload
            return n

    def head(self, ns: str, key: str) -> BlockMeta | None:
        """Metadata without the payload: from DRAM, or one 4 KiB header read (CRC and names
        verified; the payload checksum is verified by reads, which return bytes)."""
        with self._lock:
            _ns_id, _info, kb, digest = self._resolve(ns, key)
            self.counters["heads"] += 1
            e = self._live(digest, time.time())
            if e is None:
                self.counters["misses"] += 1
                return None
            cached = self.dram.get(digest, (e.seg, e.page))
            if cached is not None:
                return cached[1]
            seg = self.segments.get(e.seg)
            if seg is None:
                return None
            seg.refs += 1
        buf = self.pool.acquire(PAGE)
        try:
            self._flash_read(seg.handle, e.page * PAGE, buf.view[:PAGE])
            hdr = fmt.RecordHeader.decode(buf.view[:PAGE])
            if (hdr.namespace, hdr.key) != (ns.encode(), kb) or hdr.tombstone or (
                    hdr.payload_len, hdr.checksum) != (e.length, e.csum):
                raise CorruptRecord("record header disagrees with the index")
            return self._meta(hdr)
        except CorruptRecord as exc:
            with self._lock:
                self._drop(digest, e)
                self.counters["checksum_failures"] += 1
            log.warning("dropping %s/%s: %s", ns, key, exc)
            self._bury(e.ns, ns.encode(), kb, digest)
            return None
        except StorageError as exc:  # maybe transient: unknown now, the block stays indexed
            with self._lock:
                self.counters["io_errors"] += 1
            log.error("header read of %s/%s failed: %s", ns, key, exc)
            return None
        finally:
            self.pool.release(buf)
            self._unref(seg)

    def exists(self, ns: str, key: str) -> bool:
        with self._lock:
            _i, _n, _kb, digest = self._resolve(ns, key)
            return self._live(digest, time.time()) is not None

    def exists_many(self, ns: str, keys: Sequence[str]) -> list[bool]:
        check_batch(keys)
        return self._present(ns, keys)[0].tolist()

    def _present(self: Engine, ns: str, keys: Sequence[str]) -> tuple[np.ndarray, list[bytes]]:
        nsb = ns.encode()
        digests = fmt.digests_of(nsb, keys)
        with self._lock:
            self.catalog.get(ns)
            return self.index.present_many(digests, int(time.time())), digests

    def lookup_prefix(self, ns: str, keys: Sequence[str], *, lease_seconds: float = 0.0) -> int:
        return self.lookup(ns, keys, lease_seconds=lease_seconds).found

    def lookup(self, ns: str, keys: Sequence[str], *, lease_seconds: float = 0.0) -> LookupResult:
        """The longest present prefix of ``keys``; with ``lease_seconds`` its blocks are pinned
        (never evicted) until the lease expires, as many as the leased-bytes budget allows:
        ``leased < found`` says the budget cut the lease short."""
        if len(keys) > limits.chain_keys_max:
            raise LimitExceeded(f"chain longer than {limits.chain_keys_max}")
        if not 0 <= lease_seconds <= limits.lease_seconds_max:
            raise InvalidArgument(f"lease_seconds must be in [0, {limits.lease_seconds_max}]")
        nsb = ns.encode()
        digests = fmt.digests_of(nsb, keys)
        with self._lock:  # presence and pins in one step: a reclaim cannot slip in between
            self.catalog.get(ns)
            present = self.index.present_many(digests, int(time.time()))
            misses = np.flatnonzero(~present)
            n = int(misses[0]) if len(misses) else len(keys)
            if not (lease_seconds and n):
                return LookupResult(n, 0)
            segs, lengths = self.index.locate_many(digests[:n])
            leased = self.leases.take(zip(digests[:n], segs.tolist(), lengths.tolist(),
                                          strict=True), lease_seconds)
            if leased < n:
                self.counters["leases_limited"] += 1
            return LookupResult(n, leased)

    def prefetch(self, ns: str, keys: Sequence[str]) -> int:
        """Stage blocks into the DRAM tier; returns how many are now staged."""
        check_batch(keys)
        staged = 0
        for k in keys:
            with self._lock:
                _i, _n, _kb, digest = self._resolve(ns, k)
                e = self._live(digest, time.time())
                if e is None:
                    continue
                if self.dram.get(digest, (e.seg, e.page)) is not None:
                    staged += 1
                    continue
            with self.read(ns, k) as v:
                if v is None or len(v.payload) > self.dram.capacity_bytes:
                    continue
                data = bytes(v.payload)
                with self._lock:
                    if self.index.get(digest) == e:
                        staged += self.dram.put(digest, (e.seg, e.page), data, v.meta)
        return staged

