"""Group commit: the small chunks of concurrent writers written by one device op.

A combiner (``combine.py``) reserves a queue of writers' chunks back to back in the active
segment. Each run of small ones among them (each at most
``limits.group_commit_chunk_bytes_max``, together at most ``limits.write_chunk_bytes_max``)
becomes a ``Group``, led by the owner of its first chunk (like every writer coming out of the
combining queue, it has nothing else in flight): the leader encodes every member's header
pages, copies the members' built chunks into one pooled buffer and writes the whole run with a
single op on its own ring; the other writers, instead of starting their own op, wait for the
leader to reap it. (Leading by the combiner itself formed almost no groups: the requests
queued while it holds the lock are served in later rounds than its own.) A 4 KiB O_DIRECT write costs about as much as a 1 MiB one here, so N
concurrent 64 KiB puts cost one device op instead of N (and one ``io_uring_enter``).

Acknowledgements do not change: each writer still completes its own range with
``SegmentLog.complete`` (log order, no ack behind a hole) and publishes its own records. The
leader signals the group as soon as its op is reaped, before it completes its own range (a
member's range may lie before the leader's). A failed or abandoned op fails every member (no
range of it is acknowledged); a member waits at most ``limits.write_wait_seconds_max``.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.engine.device import IoOp, Pending, copy_into

if TYPE_CHECKING:
    from kvstore.engine.batch import _Chunk
    from kvstore.engine.device import AlignedBuffer, BufferPool, Device


def eligible(chunks: list[_Chunk]) -> bool:
    """Whether these chunks, reserved back to back, may be written as one group."""
    return (len(chunks) >= 2 and sum(c.total for c in chunks) <= limits.write_chunk_bytes_max
            and all(c.staged is None and c.total <= limits.group_commit_chunk_bytes_max
                    for c in chunks))


class Group:
    """Chunks reserved back to back in one segment, written by their leader's one op."""

    def __init__(self, leader: _Chunk, chunks: list[_Chunk]) -> None:
        self.leader = leader
        self.chunks = chunks  # in offset order, contiguous, the leader's among them
        self.total = sum(c.total for c in chunks)
        self._cv = threading.Condition(threading.Lock())
        self._result: int | None = None  # bytes the op wrote, or -errno

    def start(self, device: Device, pool: BufferPool) -> Pending:
        """The leader's part: one buffer holding every member's chunk, written by one op.
        The members' header pages are encoded already (``batch._encode``)."""
        first = self.chunks[0]
        assert first.seg is not None
        buf = pool.acquire(self.total)
        try:
            for c in self.chunks:
                assert c.buf is not None
                copy_into(buf.view[c.off - first.off :], c.buf.view[: c.total])
            pending = device.start([IoOp(first.seg.handle, first.off, buf.view[: self.total],
                                         write=True)])
        except BaseException:
            pool.release(buf)
            raise
        return _LeaderPending(self, pending, pool, buf)

    def member(self, c: _Chunk) -> Pending:
        """A member's stand-in for its own op: waits for the leader to reap the group's."""
        results: list[int] = []
        return Pending(results, lambda: self._member_wait(c, results))

    def finish(self, result: int) -> None:
        """The op's result (bytes written or -errno): wakes the members."""
        with self._cv:
            if self._result is None:
                self._result = result
            self._cv.notify_all()

    def answer(self, c: _Chunk) -> list[int]:
        """What ``Device.start`` of the chunk alone would have answered."""
        r = self._result
        if r == self.total:
            return [c.total]
        return [r if r is not None and r < 0 else -errno.EIO]

    def _member_wait(self, c: _Chunk, results: list[int]) -> None:
        deadline = time.monotonic() + limits.write_wait_seconds_max
        with self._cv:
            while self._result is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break  # answered -EIO: the range fails, nothing after it is acknowledged
                self._cv.wait(left)
        results[:] = self.answer(c)


class _LeaderPending(Pending):
    """The leader's ``Pending``: reaps the group's op, then wakes the members (before the
    leader completes its own range, which may lie after theirs)."""

    __slots__ = ("_group", "_inner", "_pool", "_buf")

    def __init__(self, group: Group, inner: Pending, pool: BufferPool,
                 buf: AlignedBuffer) -> None:
        super().__init__([], self._reap)
        self._group, self._inner, self._pool, self._buf = group, inner, pool, buf

    def _reap(self) -> None:
        try:
            (res,) = self._inner.wait()
        except BaseException:
            self._group.finish(-errno.EIO)
            raise
        self._group.finish(res)
        self._pool.release(self._buf)  # the kernel is done with it
        self._results[:] = self._group.answer(self._group.leader)
