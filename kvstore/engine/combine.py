"""Combined reservations: concurrent writers' chunks reserved under one hold of ``wlock``.

The write lock's holder stalls ~1 ms per hold on a busy 2-core host (it waits for the GIL at
each lock and allocation), which capped 32 single-put writers at ~900 reservations/s. So a
writer queues its chunk and one writer at a time (the combiner) reserves the queue in order
(``batch._reserve_in``), waking each owner to encode and start its own write.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvstore import limits

if TYPE_CHECKING:
    from kvstore.engine.batch import Prepared, _Chunk
    from kvstore.engine.log import SegmentLog

log = logging.getLogger("kvstore.engine")

@dataclass(eq=False)
class _Request:
    """A chunk waiting for a combiner to reserve it (``reserve_combined``)."""

    preps: list[Prepared]
    chunk: _Chunk
    overwrite: bool
    cond: threading.Condition
    done: bool = False
    error: BaseException | None = None


def reserve_combined(lg: SegmentLog, preps: list[Prepared], c: _Chunk, overwrite: bool) -> None:
    """``batch._reserve`` through the combining queue (module docstring). Only the
    combiner's first reservation of a hold may roll the segment: after it, chunks it reserved
    are not yet started (their owners are waking up, itself included), and rolling waits for
    every write in the segment. A chunk that does not fit ends the hold; its owner becomes the
    next combiner and rolls. Callers have no write of theirs in flight."""
    me = _Request(preps, c, overwrite, threading.Condition(lg.combine_lock))
    with lg.combine_lock:
        lg.combine_queue.append(me)
    while True:
        with lg.combine_lock:
            while lg.combining and not me.done:
                me.cond.wait()
            if me.done:
                break
            lg.combining = True
        try:
            _combine(lg)
        finally:
            with lg.combine_lock:
                lg.combining = False
                if lg.combine_queue:  # the head (not served: it did not fit) combines next
                    lg.combine_queue[0].cond.notify()
    if me.error is not None:
        raise me.error


def _combine(lg: SegmentLog) -> None:
    """Reserve the queue's chunks in order under one hold of ``wlock``: the head (which may
    roll the segment, on the first round only), then every following chunk that still fits,
    in one state-lock section. Small chunks reserved back to back become group commits
    (``group.py``)."""
    from kvstore.engine import batch as batch_mod  # its _reserve_in (profilers wrap it there)

    cap = lg.state.config.segment_bytes
    with lg.wlock:
        first = True
        while True:
            with lg.combine_lock:
                if not lg.combine_queue:
                    return
                head = lg.combine_queue[0]
                if not first and not lg.fits(head.chunk.total):
                    return
                lg.combine_queue.popleft()
            batch = [head]
            try:
                seg = lg.room_for(head.chunk.total, defer_seal=True)
                with lg.combine_lock:
                    room = cap - seg.end - head.chunk.total
                    while lg.combine_queue and lg.combine_queue[0].chunk.total <= room:
                        room -= lg.combine_queue[0].chunk.total
                        batch.append(lg.combine_queue.popleft())
                batch_mod._reserve_in(lg, seg, [(r.preps, r.chunk, r.overwrite) for r in batch])
            except BaseException as e:  # those writers' error (e.g. out of capacity)
                for r in batch:
                    r.error = e
            else:  # reserved: their owners must start and complete them, grouped or not
                try:
                    _group(batch)
                except Exception:  # an optimization only: each writer then writes its own
                    log.exception("group commit skipped")
                    for r in batch:
                        r.chunk.group = None
            first = False
            with lg.combine_lock:
                for r in batch:
                    r.done = True
                    r.cond.notify()


def _group(batch: list[_Request]) -> None:
    """Make each run of small chunks reserved back to back in ``batch`` one group, led by its
    first chunk's owner (a writer with nothing else in flight: it starts and reaps the op)."""
    from kvstore.engine.group import Group, eligible

    run: list[_Chunk] = []
    for r in [*batch, None]:
        c = r.chunk if r is not None else None
        if c is not None and eligible([c, c]) and \
                sum(x.total for x in run) + c.total <= limits.write_chunk_bytes_max:
            run.append(c)
            continue
        if len(run) >= 2:
            g = Group(run[0], run)
            for x in run:
                x.group = g
        run = [c] if c is not None and eligible([c, c]) else []
