"""``SegmentLog``: the append path. Reserve -> write -> complete in log order -> publish.

The log owns the segment table (live, retired and free files, the active segment) and the
write lock ``wlock``, which serializes reservations, segment rolls and reclaim; the state's
``lock`` (taken after ``wlock`` when both are held) guards what the index and readers see.

1. ``reserve``: under ``wlock``, claim the next bytes of the active segment (rolling it, and
   reclaiming capacity, when a record does not fit: ``reclaim.roll``), take sequence numbers,
   encode header pages and add summary rows.
2. write: the device writes, with no lock held (``batch.py`` submits a wave of chunks at once).
3. ``complete``: mark the range written and wait until every earlier byte of the segment is,
   so acknowledgements follow log order; a failed range (or an earlier failed one) is never
   acknowledged, since recovery's scan stops at the first bad header.
4. ``state.publish``: only then does the index (and DRAM) show the record.

Segments a reader holds (``pin``) outlive their reclaim until the last ``unpin``.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.coalesce import PutCoalescer
from kvstore.engine.device import AlignedBuffer
from kvstore.engine.sealer import Sealer
from kvstore.engine.segments import Segment, free_path, load_summary, summary_path
from kvstore.engine.state import EngineState
from kvstore.engine.summary import SegmentSummary
from kvstore.errors import StorageError

if TYPE_CHECKING:
    from kvstore.engine.batch import Prepared
    from kvstore.engine.records import RecordIO
    from kvstore.engine.types import PutResult

PAGE = fmt.PAGE
log = logging.getLogger("kvstore.engine")


class SegmentLog:
    """The log of segment files and the one way records get into it."""

    def __init__(self, state: EngineState, records: RecordIO) -> None:
        self.state = state
        self.records = records  # reclaim reads blocks back through it to move them
        self.segments: dict[int, Segment] = {}  # live (not retired), ordered by id
        self.retired: dict[int, Segment] = {}  # reclaimed, waiting for readers to let go
        self.free_files: list[Segment] = []  # reclaimed files (still open) to recycle
        self.active: Segment | None = None
        self.next_segment_id = 1
        self.next_seq = 1
        self.coalescer = PutCoalescer(self._write_coalesced, self._wait_sealed)
        self.pending: set[bytes] = set()  # digests reserved in the log, not yet published
        self.wlock = threading.Lock()
        # combined reservations (batch._reserve_combined): writers queue their chunk and one of
        # them, the combiner, reserves the queue under one hold of wlock
        self.combine_lock = threading.Lock()
        self.combine_queue: deque[Any] = deque()
        self.combining = False
        self.sealer = Sealer(self)  # seals rolled segments off wlock (batched write path)
        # complete()/quiesce() sleepers per segment id: (end they wait for, ticket, condition)
        self._waiters: dict[int, list[tuple[int, int, threading.Condition]]] = {}
        self._ticket = 0

    # ------------------------------------------------------------------ 1. reserve
    def fits(self, span: int) -> bool:
        seg = self.active
        return seg is not None and not seg.broken and \
            seg.end + span <= self.state.config.segment_bytes

    def room_for(self, span: int, *, defer_seal: bool = False) -> Segment:
        """The active segment, rolled (and capacity reclaimed) when ``span`` doesn't fit.
        ``defer_seal``: the old segment is sealed on the sealer's thread (``sealer.py``); the
        caller must ``sealer.wait_mine()`` before its call returns. Caller holds ``wlock``."""
        if self.fits(span):
            assert self.active is not None
            return self.active
        from kvstore.engine.reclaim import roll

        return roll(self, span, defer=defer_seal)

    def reserve(self, seg: Segment, nbytes: int) -> int:
        """Claim the next ``nbytes`` of ``seg`` (the active segment). Caller holds ``wlock``."""
        off = seg.end
        seg.end += nbytes
        return off

    def next_seqs(self, n: int) -> int:
        """The first of ``n`` new sequence numbers."""
        with self.state.lock:
            first = self.next_seq
            self.next_seq += n
            return first

    def add_rows(self, seg: Segment, off: int, hdr: fmt.RecordHeader, digest: bytes) -> None:
        """Record a reserved record in the segment's summary (in log order, under ``wlock``)."""
        seg.records += 1
        assert seg.builder is not None
        seg.builder.add(digest, hdr.namespace, hdr.key, off // PAGE, hdr.payload_len,
                        hdr.checksum, hdr.seq, hdr.created, hdr.expires, hdr.flags)

    # ------------------------------------------------------------------ 3. complete
    def complete(self, seg: Segment, start: int, end: int, ok: bool) -> bool:
        """Mark [start, end) written (or failed) and wait until everything before ``end`` is
        written, so acknowledgements follow log order. False when this range or an earlier one
        of the segment failed: the caller must not acknowledge it, since recovery's scan may
        stop at the failed range and never reach this one."""
        with self.state.lock:
            seg.done[start] = end
            if not ok:
                seg.broken = True
                if seg.failed_at is None or start < seg.failed_at:
                    seg.failed_at = start
            advanced = seg.durable in seg.done
            while seg.durable in seg.done:
                seg.durable = seg.done.pop(seg.durable)
            if advanced:
                self._wake(seg)
            self._wait_durable(seg, end, "an earlier write in this segment did not complete")
            return ok and (seg.failed_at is None or seg.failed_at >= end)

    def quiesce(self, seg: Segment) -> None:
        """Wait until no write to ``seg`` is in flight. Caller holds ``wlock`` (no new ones)."""
        with self.state.lock:
            self._wait_durable(seg, seg.end, f"writes to segment {seg.id} did not complete")

    def _wait_durable(self, seg: Segment, end: int, why: str) -> None:
        """Sleep until ``seg.durable >= end``. Caller holds the state's ``lock``. Each waiter has
        its own condition, woken by ``_wake`` only once its range is covered: with 32 writers a
        shared ``notify_all`` per completion woke all 32 to find 31 still waiting, each wake a
        GIL handoff (and a lock acquisition) on the write path."""
        if seg.durable >= end:
            return
        deadline = time.monotonic() + limits.write_wait_seconds_max
        cond = threading.Condition(self.state.lock)
        self._ticket += 1
        heapq.heappush(self._waiters.setdefault(seg.id, []), (end, self._ticket, cond))
        while seg.durable < end:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageError(why)  # the heap entry goes when durable passes it
            cond.wait(left)

    def _wake(self, seg: Segment) -> None:
        """Notify the waiters of ``seg`` whose ranges ``durable`` now covers. Caller holds the
        state's ``lock``."""
        heap = self._waiters.get(seg.id)
        while heap and heap[0][0] <= seg.durable:
            heapq.heappop(heap)[2].notify()
        if heap is not None and not heap:
            del self._waiters[seg.id]

    # ------------------------------------------------------------------ whole appends
    def write(self, preps: list[Prepared], overwrite: bool, donate: bool) -> list[PutResult]:
        """Write a validated batch (``batch.py``): chunks in waves, acks in log order. A single
        put joins concurrent ones in one batch (``coalesce.py``)."""
        if len(preps) == 1:
            return [self.coalescer.write(preps[0], overwrite, donate)]
        from kvstore.engine.batch import write_batch

        return write_batch(self, preps, overwrite, donate)

    def _wait_sealed(self, seg: Segment) -> None:
        self.sealer.wait_sealed(seg)

    def _write_coalesced(self, preps: list[Prepared], overwrite: bool, donate: bool,
                         answer: Callable[[int, PutResult, Segment | None], None] | None,
                         more: Callable[[], list[Prepared] | None] | None) -> list[PutResult]:
        from kvstore.engine.batch import write_batch

        return write_batch(self, preps, overwrite, donate, answer, more)

    def append(self, buf: AlignedBuffer, hdr: fmt.RecordHeader, span: int, digest: bytes,
               ns_id: int, keep: object) -> fmt.RecordHeader:
        """Write one record (payload already in ``buf``) and publish it, synchronously, all
        four steps. Caller holds ``wlock`` (tombstones and reinsertion)."""
        st = self.state
        seg = self.room_for(span)
        off = self.reserve(seg, span)
        hdr = replace(hdr, seq=self.next_seqs(1))
        hdr.encode_into(buf.view)
        self.add_rows(seg, off, hdr, digest)
        ok = False
        try:
            st.device.write(seg.handle, off, buf.view[:span])
            ok = True
        finally:
            ok = self.complete(seg, off, off + span, ok)
        if not ok:
            raise StorageError(f"an earlier write in segment {seg.id} failed")
        if st.config.sync_on_put:
            st.device.sync(seg.handle)
        with st.lock:
            st.publish(seg.id, off, hdr, digest, ns_id, keep)
        return hdr

    def tombstone(self, ns_id: int, nsb: bytes, kb: bytes, digest: bytes, *,
                  only_if_present: bool) -> bool:
        """Append a tombstone (and drop the block from the index). False when
        ``only_if_present`` and the block is gone already."""
        st = self.state
        buf = st.pool.acquire(PAGE)
        try:
            hdr = fmt.RecordHeader(nsb, kb, 0, 0, 0, time.time(), flags=fmt.FLAG_TOMBSTONE)
            with self.wlock:
                if only_if_present:
                    with st.lock:
                        if st.index.get(digest) is None:
                            return False
                self.append(buf, hdr, PAGE, digest, ns_id, None)
            return True
        finally:
            st.pool.release(buf)

    # ------------------------------------------------------------------ readers' pins
    def pin(self, seg_id: int) -> Segment | None:
        """The live segment ``seg_id``, held open for a read until ``unpin``. Caller holds
        the state's ``lock``."""
        seg = self.segments.get(seg_id)
        if seg is not None:
            seg.refs += 1
        return seg

    def unpin(self, seg: Segment) -> None:
        with self.state.lock:
            seg.refs -= 1
            if seg.retired and seg.refs == 0:
                self._free(seg)

    def _free(self, seg: Segment) -> None:
        """Free a retired segment once its last pin (a reader, a G4 upload) is gone: keep its
        file, renamed ``free-*``, for the next segment to overwrite while the lease budget has
        room for it, else close and delete it. Overwriting a file's written blocks beats a new
        file's first writes to trimmed blocks (``loadtest/results/fresh-blocks-*``), and with a
        G4 tier nearly every reclaimed segment is pinned by its upload when retired. Caller
        holds ``lock``; no refs remain."""
        assert seg.retired and seg.refs == 0
        st = self.state
        dev, data_dir = st.device, st.config.data_dir
        self.retired.pop(seg.id, None)
        if len(self.segments) + len(self.free_files) + 1 <= st.budget.max:
            free = free_path(data_dir, seg.id)
            if seg.path != free:
                dev.rename(seg.path, free)  # first: a crash now leaves no segment to scan
                seg.path = free
            dev.unlink(summary_path(data_dir, seg.id))
            self.free_files.append(seg)
            return
        dev.close_handle(seg.handle)
        dev.unlink(seg.path)
        dev.unlink(summary_path(data_dir, seg.id))

    # ------------------------------------------------------------------ introspection
    def summary(self, seg: Segment) -> SegmentSummary | None:
        """The summary of a segment: the live builder for the active one, the file otherwise."""
        if seg.builder is not None:
            return seg.builder.build(seg.end)
        return load_summary(self.state.device, self.state.config.data_dir, seg.id)

    def summaries(self) -> Iterator[tuple[int, SegmentSummary | None]]:
        """(id, summary) of every live segment, oldest first: the active one as of this call
        (its builder, snapshotted under ``wlock``, which ``add_rows`` runs under), sealed ones
        loaded from their files as the caller iterates (None: unreadable)."""
        with self.wlock, self.state.lock:
            segs = list(self.segments.values())
            snaps = {s.id: s.builder.build(s.end) for s in segs if s.builder is not None}
        dev, data_dir = self.state.device, self.state.config.data_dir
        return ((s.id, snaps.get(s.id) or load_summary(dev, data_dir, s.id)) for s in segs)

    def flash_used_bytes(self) -> int:
        dev = self.state.device
        segs = list(self.segments.values()) + list(self.retired.values())
        return sum(s.end for s in segs) + sum(dev.size(s.handle) for s in self.free_files)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Drain writes, cut the active segment's preallocated tail, sync and close every
        file. The active segment stays unsealed: reopening scans it and keeps appending.
        Caller holds ``wlock``."""
        dev = self.state.device
        try:
            self.sealer.stop()  # rolled segments still queued get their summaries first
        except (OSError, StorageError) as exc:  # left unsealed: the next open scans them
            log.error("closing with a segment unsealed: %s", exc)
        if self.active is not None:
            with contextlib.suppress(StorageError):
                self.quiesce(self.active)
                # drop the preallocated tail: a clean file ends at its last record
                dev.truncate(self.active.handle, self.active.end)
        with self.state.lock:
            for seg in list(self.segments.values()) + list(self.retired.values()):
                with contextlib.suppress(StorageError):
                    dev.sync(seg.handle)
                dev.close_handle(seg.handle)
            for seg in self.free_files:
                dev.close_handle(seg.handle)
            self.segments.clear()
            self.free_files.clear()
