"""Sealing rolled segments off the write lock (``Sealer``).

Sealing a segment (``reclaim.seal``: wait for its writes in flight, fdatasync it, write its
summary file with an fsync and a directory fsync) took ~16 ms of a ~20 ms roll on the 2-core
VM disk, all of it under ``wlock``: every writer queued behind the roll and the device idled,
once per segment (every 256 MiB: ~20% of a 2.5 GB/s write stream). A roll from the batched
write path now only swaps the active segment (and reclaims) under ``wlock``, and hands the old
segment to this sealer's thread; other writers go on appending to the new segment meanwhile.

What callers see does not change: the writer whose call rolled waits for that seal before its
call returns (``wait_mine``; a single put the put writer wrote for it: its caller waits,
``wait_sealed``), and raises its error if it failed, so a single-threaded caller
finds every segment but the active one sealed when ``put_many`` returns, as before. A roll
from the other paths (tombstones, reinsertion) seals inline, as before. Reclaim, ``check()``
and ``close()`` seal what is still queued first (``seal_now``/``drain``). A crash before a
queued seal leaves two unsealed segments: recovery scans both and seals the older one, the
same as a crash between the steps of an inline roll. Acknowledgements are untouched: they still
follow log order within each segment (``SegmentLog.complete``), and a record in the new segment
was never waiting for the old one's summary (the summary only saves reopening a scan).

A roll that fails after deferring (no space for the next segment) takes its segment back
(``take_back``): it stays active and unsealed, as when an inline seal failed.

Bounded: at most ``limits.seal_queue_segments_max`` segments queued or sealing; past it a roll
seals inline. A failed background seal leaves the segment queued for a retry by the next roll,
``check()`` or ``close()``, and raises in the writer that rolled.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING

from kvstore import limits

if TYPE_CHECKING:
    from kvstore.engine.log import SegmentLog
    from kvstore.engine.segments import Segment

log = logging.getLogger("kvstore.engine")

# How long close() waits for the sealer thread to stop once its queue is empty.
_JOIN_SECONDS = 5.0


class Sealer:
    """One background thread sealing the segments rolls hand it, oldest first."""

    def __init__(self, lg: SegmentLog) -> None:
        self.lg = lg
        self._lock = threading.Lock()  # a leaf: no other lock is taken while holding it
        self._cv = threading.Condition(self._lock)
        self._queue: deque[Segment] = deque()  # waiting for the thread
        self._running: Segment | None = None  # being sealed by the thread
        self._inline: set[int] = set()  # ids being sealed by a caller (seal_now)
        self._failed: dict[int, BaseException] = {}  # segment id: error of its last seal
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._mine = threading.local()  # segments this thread's rolls deferred

    # ------------------------------------------------------------------ rolls
    def defer(self, seg: Segment) -> bool:
        """Queue ``seg`` (just rolled out, no new appends) for sealing; False when the queue
        is full or the sealer is stopped: the caller seals inline. Caller holds ``wlock``."""
        with self._lock:
            busy = len(self._queue) + (self._running is not None)
            if self._stopped or busy >= limits.seal_queue_segments_max:
                return False
            self._queue.append(seg)
            self._failed.pop(seg.id, None)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="kvstore-sealer",
                                                daemon=True)
                self._thread.start()
            self._cv.notify_all()
        mine = getattr(self._mine, "segs", None)
        if mine is None:
            mine = self._mine.segs = []
        mine.append(seg)
        return True

    def wait_mine(self) -> None:
        """Wait for the seals this thread's rolls deferred; raise the first one's error."""
        mine = getattr(self._mine, "segs", None)
        if not mine:
            return
        self._mine.segs = []
        first: BaseException | None = None
        with self._lock:
            for seg in mine:
                while self._busy(seg):
                    self._cv.wait()
                err = self._failed.get(seg.id)
                if err is not None and first is None:
                    first = err
        if first is not None:
            raise first

    def wait_sealed(self, seg: Segment) -> None:
        """Wait until ``seg`` is no longer queued or being sealed; raise its seal's error (a
        put whose reservation rolled ``seg`` out on the put writer's thread, ``coalesce.py``:
        its caller returns as if it had rolled on its own)."""
        with self._lock:
            while self._busy(seg):
                self._cv.wait()
            err = self._failed.get(seg.id)
        if err is not None:
            raise err

    def forget_mine(self) -> None:
        """Drop this thread's deferred seals unwaited: their waiters are elsewhere (the put
        writer's callers, ``wait_sealed``)."""
        self._mine.segs = []

    def pending(self, seg: Segment) -> bool:
        """Queued, being sealed, or its last seal failed (to be retried): unsealed by design."""
        with self._lock:
            return self._busy(seg) or seg.id in self._failed

    def _busy(self, seg: Segment) -> bool:
        """Queued or being sealed. Caller holds ``_lock``."""
        return seg in self._queue or self._running is seg or seg.id in self._inline

    # ------------------------------------------------------------------ inline seals

    def seal_now(self, seg: Segment) -> None:
        """Make sure ``seg`` is sealed: take it off the queue and seal it here, or wait for
        the thread to finish it. Raises the seal's error. Caller holds no state lock."""
        with self._lock:
            while self._running is seg or seg.id in self._inline:
                self._cv.wait()
            if seg in self._queue:
                self._queue.remove(seg)
            elif seg.id not in self._failed:
                return  # sealed (or never queued)
            self._failed.pop(seg.id, None)
            self._inline.add(seg.id)
        try:
            self._seal(seg, inline=True)
        finally:
            with self._lock:
                self._inline.discard(seg.id)
                self._cv.notify_all()

    def take_back(self, seg: Segment) -> bool:
        """Undo ``defer`` when the roll that deferred ``seg`` failed after it (a full file
        system creating the next segment): True when ``seg`` is still unsealed, so that the
        caller makes it the active segment again (the next append rolls it once more, as
        when an inline seal failed)."""
        with self._lock:
            while self._running is seg or seg.id in self._inline:
                self._cv.wait()
            if seg in self._queue:
                self._queue.remove(seg)
            self._failed.pop(seg.id, None)
            mine = getattr(self._mine, "segs", None)
            if mine and seg in mine:
                mine.remove(seg)
        return seg.builder is not None

    def retry_failed(self) -> None:
        """Seal here the segments whose background seal failed (each roll, first)."""
        with self._lock:
            if not self._failed:
                return
            live = self.lg.segments
            self._failed = {i: e for i, e in self._failed.items() if i in live}
            failed = [s for s in list(live.values()) if s.id in self._failed]
        for seg in failed:
            self.seal_now(seg)

    def drain(self) -> None:
        """Seal everything queued or failed (``check()``, ``close()``, and each roll first)."""
        while True:
            with self._lock:
                while self._running is not None or self._inline:
                    self._cv.wait()
                failed = [s for s in self.lg.segments.values() if s.id in self._failed]
                segs = list(self._queue) + failed
            if not segs:
                return
            for seg in segs:
                self.seal_now(seg)

    def stop(self) -> None:
        """Seal what is queued, then end the thread (``SegmentLog.close``)."""
        try:
            self.drain()
        finally:
            with self._lock:
                self._stopped = True
                self._cv.notify_all()
                thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(_JOIN_SECONDS)

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._cv.wait()
                if not self._queue:
                    return
                seg = self._running = self._queue.popleft()
            try:
                self._seal(seg, inline=False)
            finally:
                with self._lock:
                    self._running = None
                    self._cv.notify_all()

    def _seal(self, seg: Segment, *, inline: bool) -> None:
        from kvstore.engine.reclaim import seal

        if seg.builder is None or seg.retired:
            return
        try:
            seal(self.lg, seg)
        except BaseException as e:
            with self._lock:
                self._failed[seg.id] = e
            if inline:
                raise
            log.error("segment %08x: background seal failed (retried by the next roll): %s",
                      seg.id, e)
