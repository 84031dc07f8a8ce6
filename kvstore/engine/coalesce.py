"""Concurrent single puts written as batches: one leader writes every queued put (flat combining).

Each single put used to drive its own write: reserve through the combiner, start on its own
ring, reap its own completion, then wait in ``SegmentLog.complete`` for every earlier byte.
With 32 writers on a 2-core host every step is a thread handoff through the GIL, and a put
whose owner is slow to get the GIL back holds up the acknowledgement of every later one: 32
writers kept ~9 writes in flight and reached a third of what the disk gave at depth 32.

Here a put that finds no leader becomes one: it takes every queued put (up to
``limits.put_coalesce_batch_max`` puts and ``put_coalesce_batch_bytes_max`` bytes, same
``overwrite``/``donate``, one per key) and writes them as one ``write_batch``: its pipeline
builds, starts and reaps them on one ring and completes them in log order on one thread. Puts that arrive meanwhile queue up. As soon as the leader
has *reserved* its last range it hands the lead to the head of the queue, so the next batch is
built, reserved and started while the previous one's tail is still in flight (the device
queue does not drain between batches, and a later batch is reserved behind an earlier one
exactly as concurrent writers are); then it reaps, and wakes its batch's puts with results.

Safety is ``write_batch``'s: nothing is acknowledged before every earlier byte is written. A
failed batch fails every put in it (some of its blocks may be stored: unacknowledged, never
lost). The early hand-off keeps ``batch._Pipeline``'s rules: after its last reservation a
leader only starts and reaps (it never takes ``wlock`` again), like any writer with writes in
flight, so the next leader may roll the segment: the roll waits for those writes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.errors import StorageError

if TYPE_CHECKING:
    from kvstore.engine.batch import Prepared
    from kvstore.engine.types import PutResult

# what a waiting put has been told: queued, taken into a leader's batch, lead, written
_QUEUED, _TAKEN, _LEAD, _DONE = 0, 1, 2, 3

WriteBatch = Callable[["list[Prepared]", bool, bool, "Callable[[], None]"], "list[PutResult]"]


@dataclass(eq=False)
class _Put:
    prep: Prepared
    overwrite: bool
    donate: bool
    cond: threading.Condition
    state: int = _QUEUED
    result: PutResult | None = None
    error: BaseException | None = None

    def outcome(self) -> PutResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class PutCoalescer:
    """Single puts from concurrent callers through one leader at a time (module docstring)."""

    def __init__(self, write: WriteBatch, batch_max: int = limits.put_coalesce_batch_max,
                 batch_bytes_max: int = limits.put_coalesce_batch_bytes_max) -> None:
        assert 1 <= batch_max <= limits.batch_keys_max and batch_bytes_max >= 1
        self._write = write
        self._batch_max = batch_max
        self._batch_bytes_max = batch_bytes_max
        self._lock = threading.Lock()
        self._queue: deque[_Put] = deque()
        self._leading = False  # a leader is taking puts (the next one queues)
        self.batches = 0  # batches written, and puts in them (stats: mean batch size)
        self.puts = 0

    def write(self, prep: Prepared, overwrite: bool, donate: bool) -> PutResult:
        me = _Put(prep, overwrite, donate, threading.Condition(self._lock))
        with self._lock:
            if self._leading:
                self._queue.append(me)
                self._wait(me)
                if me.state == _DONE:
                    return me.outcome()
            else:
                self._leading = True
        return self._lead(me)

    def _wait(self, me: _Put) -> None:
        """Sleep until a leader wrote ``me`` or handed it the lead. Caller holds the lock."""
        deadline = time.monotonic() + limits.put_coalesce_wait_seconds_max
        try:
            while me.state in (_QUEUED, _TAKEN):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                me.cond.wait(left)
        except BaseException:  # interrupted: leave nothing behind that waits for us
            self._abandon(me)
            raise
        if me.state in (_QUEUED, _TAKEN):
            self._abandon(me)
            raise StorageError(f"a put waited {limits.put_coalesce_wait_seconds_max:.0f} s for "
                               "the writes ahead of it (the device does not answer)")

    def _abandon(self, me: _Put) -> None:
        """``me`` gives up: out of the queue, or the lead it was handed passed on. A put
        already taken into a batch is written anyway (its caller is not told: unacknowledged;
        the leader's wake-up then finds nobody). Caller holds the lock."""
        if me.state == _QUEUED:
            self._queue.remove(me)
            me.state = _DONE
        elif me.state == _LEAD:
            me.state = _DONE
            self._pass_lead()

    def _pass_lead(self) -> None:
        """Wake the queue's head as the next leader, or let the next put lead. Caller holds
        the lock."""
        if self._queue:
            head = self._queue.popleft()
            head.state = _LEAD
            head.cond.notify()
        else:
            self._leading = False

    def _take(self, me: _Put) -> list[_Put]:
        """``me`` and the queued puts that can share its batch, in arrival order, up to the
        batch's count and byte bounds (a put past the byte bound waits for the next one)."""
        batch, keys = [me], {me.prep.digest}
        size = len(me.prep.data)
        with self._lock:
            keep: deque[_Put] = deque()
            while self._queue and len(batch) < self._batch_max:
                p = self._queue.popleft()
                if (p.overwrite, p.donate) == (me.overwrite, me.donate) \
                        and p.prep.digest not in keys:
                    if size + len(p.prep.data) > self._batch_bytes_max:
                        keep.append(p)  # the next batch's first
                        break
                    p.state = _TAKEN
                    batch.append(p)
                    keys.add(p.prep.digest)
                    size += len(p.prep.data)
                else:  # another batch's: keeps its place
                    keep.append(p)
            keep.extend(self._queue)
            self._queue = keep
        return batch

    def _lead(self, me: _Put) -> PutResult:
        batch = self._take(me)
        handed = False

        def hand_off() -> None:  # every range of the batch reserved: the next leader may go
            nonlocal handed
            if not handed:
                handed = True
                with self._lock:
                    self._pass_lead()

        try:
            results = self._write([p.prep for p in batch], me.overwrite, me.donate, hand_off)
        except BaseException as e:  # noqa: BLE001 - every put of the batch gets it
            for p in batch:
                p.error = e
        else:
            for p, r in zip(batch, results, strict=True):
                p.result = r
        finally:
            hand_off()
            with self._lock:
                self.batches += 1
                self.puts += len(batch)
                for p in batch[1:]:
                    p.state = _DONE
                    p.cond.notify()
        return me.outcome()
