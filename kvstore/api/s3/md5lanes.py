"""MD5 ETags of concurrent PUTs hashed together, one SIMD lane per body: ``Md5Lanes``.

One body's MD5 cannot be split (each 64-byte block needs the state the previous one left), and a
core runs it at ~0.7 GB/s: on a 2-core node, MD5 ETags held PUT throughput at ~0.3 of a server
that only receives. Concurrent PUTs are independent streams, though, and a vector register holds
one 32-bit MD5 state word per stream: the native module ``kvstore_md5lanes``
(native/md5lanes) runs the compression function over 8 streams at once with AVX2 or AVX-512VL,
16 with AVX-512 (4-6x hashlib's throughput on one core when 8 bodies arrive together).

Here, worker threads (the S3 app's hashing pool, ``intake.py``) hand their batches to one
combiner: a thread that finds no leader becomes it, takes every queued batch (at most
``limits.s3_md5_lane_streams_max``), runs at most ``limits.s3_md5_lane_round_bytes`` of each
through the lanes with the GIL released, takes in what queued meanwhile, and leaves once its
own batch is done (a waiting thread then leads). Bodies arrive side by side, but their batches
reach the pool a fraction of a millisecond apart, and a leader that ran each round at once
hashed 2.4 streams a round under 8 writers: so before each round the leader waits, at most
``limits.s3_md5_lane_gather_us``, until as many batches are queued as there are open streams
(bodies in flight), but never more than the lane count or one more than the last round had:
a body whose neighbours send nothing waits at most that long per round. A lone body never
waits.
A body's batches reach the combiner one at a time and in order (the intake keeps one batch
per request in flight), so each stream's blocks are hashed in order. Partial blocks and the
final padding are the stream's own (``LaneMd5``), as are its 16 bytes of state: a result is
the MD5 (tests compare it with hashlib's on random bodies, split at random points, on every
kernel the CPU runs).

Without a SIMD kernel (no native module, or a CPU with neither AVX2 nor AVX-512) ``factory``
answers ``hashlib.md5``, and says so in the line for the server's start-up log.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from kvstore import limits

try:
    import kvstore_md5lanes as _native
except ImportError:  # pragma: no cover - the package is a dependency; a failed build lands here
    _native = None

_IV = struct.pack("<4I", 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_BLOCK = 64


class Md5Hash(Protocol):
    def update(self, data: Any, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


def kernels() -> list[tuple[str, int]]:
    """The native kernels this CPU runs, [(name, lanes)], the default first; [] without the
    native module."""
    return list(_native.kernels()) if _native is not None else []


def simd_kernel() -> str | None:
    """The default kernel when it hashes more than one stream at a time, else None."""
    ks = kernels()
    return ks[0][0] if ks and ks[0][1] > 1 else None


# what a queued batch has been told: wait, hashed (or failed), lead the next rounds
_QUEUED, _DONE, _LEAD = 0, 1, 2


class _Job:
    __slots__ = ("state", "data", "status", "wake")

    def __init__(self, state: bytearray, data: memoryview) -> None:
        self.state = state
        self.data = data  # whole blocks still to hash
        self.status = _QUEUED
        self.wake = threading.Lock()  # held until the job is done or handed the lead
        self.wake.acquire()

    def tell(self, status: int) -> None:
        self.status = status
        self.wake.release()


class Md5Lanes:
    """The combiner: ``hash_blocks`` runs a stream's whole blocks in a lane beside the other
    threads' streams. Blocking; call it from worker threads, never on the event loop. A waiting
    thread is woken once, when its batch is hashed or when it is handed the lead (the engine's
    put coalescer works the same way: ``kvstore.engine.coalesce``)."""

    def __init__(self, kernel: str, *, round_bytes: int = limits.s3_md5_lane_round_bytes,
                 streams_max: int = limits.s3_md5_lane_streams_max,
                 gather_s: float = limits.s3_md5_lane_gather_us / 1e6) -> None:
        assert _native is not None, "kvstore_md5lanes is not built"
        assert any(k == kernel for k, _ in kernels()), kernel
        assert round_bytes > 0 and round_bytes % _BLOCK == 0
        assert 0 < streams_max <= _native.STREAMS_MAX
        assert 0 <= gather_s <= 0.01
        self.kernel = kernel
        self.round_bytes = round_bytes
        self.streams_max = streams_max
        self.lanes = dict(kernels())[kernel]
        self.gather_s = gather_s
        self._lock = threading.Lock()
        self._gathered = threading.Condition(self._lock)  # only a gathering leader waits on it
        self._queue: deque[_Job] = deque()  # not yet done, in arrival order
        self._leading = False
        self._gathering = False
        self._want = 0  # what a gathering leader waits for: appends wake it when it is reached
        self._recent = self.lanes  # streams in the last round: a round waits for one more at most
        self.bodies = 0  # streams made and not yet finished (bodies in flight)
        self.open = 0  # of which hashed in lanes (the others alone, with hashlib)
        self.rounds = 0  # rounds run, and streams hashed in them (lanes used = streams / rounds)
        self.streams = 0

    def new(self) -> Md5Hash:
        """A stream for one body. A body that starts while no other is in flight hashes alone,
        with hashlib (OpenSSL's MD5 is ~5% faster than the portable kernel, and a lone body has
        no lanes to share): a single client's PUT is as fast as before the lanes."""
        with self._lock:
            alone = self.bodies == 0
            self.bodies += 1
            if not alone:
                self.open += 1
        return _SoloMd5(self) if alone else LaneMd5(self)

    def hash_blocks(self, state: bytearray, data: memoryview) -> None:
        """Advance ``state`` over ``data`` (a multiple of 64 bytes)."""
        assert len(data) % _BLOCK == 0
        if not data:
            return
        job = _Job(state, data)
        with self._lock:
            self._queue.append(job)
            lead = not self._leading
            if lead:
                self._leading = True
            elif self._gathering and len(self._queue) >= self._want:
                self._gathered.notify()  # once, when the round is full: not at every arrival
        if not lead:
            job.wake.acquire()
            if job.status == _DONE:
                return
            assert job.status == _LEAD
        try:
            while job.status != _DONE:
                self._round(job, time.monotonic() + self.gather_s)
        finally:
            with self._lock:  # hand the lead to the oldest waiting batch, if any
                nxt = next((j for j in self._queue if j.status == _QUEUED), None)
                if nxt is None:
                    self._leading = False
                else:
                    nxt.tell(_LEAD)

    def _gather(self, deadline: float) -> None:
        """(Leader, under the lock, before a round.) Wait, until ``deadline`` at the latest, for
        the other open streams' next batches, so that the round fills more lanes: at most the
        lane count, and one stream more than the last round had. A lone body does not wait."""
        want = min(self.open, self.lanes, self._recent + 1)
        if len(self._queue) >= want or time.monotonic() >= deadline:
            return
        self._want = want
        self._gathering = True
        try:
            while len(self._queue) < want:
                left = deadline - time.monotonic()
                if left <= 0 or not self._gathered.wait(left):
                    return
        finally:
            self._gathering = False

    def _round(self, own: _Job, deadline: float) -> None:
        with self._lock:
            self._gather(deadline)
            n = min(len(self._queue), self.streams_max)
            batch = [self._queue.popleft() for _ in range(n)]
        # the leader's own job is in this round, or (past streams_max queued) in a later one
        # a lone body (nobody else open) goes in one call: rounds only serve to take others in
        rb = self.round_bytes if n > 1 or self.open > 1 else len(own.data)
        views = [j.data[:rb] for j in batch]
        try:
            _native.compress([j.state for j in batch], views, self.kernel)
        except BaseException:  # every stream of the round fails with it, not only the leader's
            for j in batch:
                j.state[:] = b""  # a poisoned state: the stream's digest raises
                j.status = _DONE
                if j is not own:
                    j.wake.release()
            raise
        unfinished = []
        with self._lock:
            self.rounds += 1
            self.streams += len(batch)
            self._recent = len(batch)
            for j in batch:
                j.data = j.data[rb:]
                if j.data:
                    unfinished.append(j)
                elif j is own:
                    j.status = _DONE
                else:
                    j.tell(_DONE)
            self._queue.extendleft(reversed(unfinished))  # ahead of streams that came later


class LaneMd5:
    """One stream, as ``hashlib.md5()`` is: ``update`` (blocking, from a worker thread),
    ``digest``/``hexdigest`` after the last byte."""

    __slots__ = ("_lanes", "_state", "_tail", "_length", "_open")

    def __init__(self, lanes: Md5Lanes) -> None:  # counted in by ``Md5Lanes.new``
        self._lanes = lanes
        self._state = bytearray(_IV)
        self._tail = b""  # under one block, waiting for the bytes that complete it
        self._length = 0
        self._open = True

    def close(self) -> None:
        """No more bytes will come (the digest was taken, or the body was abandoned): a leader
        no longer waits for this stream. Also run when the stream is collected."""
        if self._open:
            self._open = False
            with self._lanes._lock:
                self._lanes.open -= 1
                self._lanes.bodies -= 1

    def __del__(self) -> None:
        self.close()

    def update(self, data: Any, /) -> None:
        view = memoryview(data).cast("B")
        self._length += len(view)
        if self._tail:
            need = _BLOCK - len(self._tail)
            self._tail += bytes(view[:need])
            view = view[need:]
            if len(self._tail) < _BLOCK:
                return
            _compress_one(self._state, self._tail)
            self._tail = b""
        whole = len(view) - len(view) % _BLOCK
        self._lanes.hash_blocks(self._state, view[:whole])
        self._tail = bytes(view[whole:])

    def digest(self) -> bytes:
        self.close()
        if len(self._state) != 16:
            raise RuntimeError("this MD5 stream failed in its combiner round")
        state = bytearray(self._state)
        n = self._length
        last = self._tail + b"\x80" + b"\0" * ((55 - n) % _BLOCK) + struct.pack("<Q", 8 * n)
        _compress_one(state, last)
        return bytes(state)

    def hexdigest(self) -> str:
        return self.digest().hex()


class _SoloMd5:
    """A body that started alone: hashlib's MD5, counted among the bodies in flight."""

    __slots__ = ("_lanes", "_h", "_open")

    def __init__(self, lanes: Md5Lanes) -> None:  # counted in by ``Md5Lanes.new``
        self._lanes = lanes
        self._h = hashlib.md5()
        self._open = True

    def close(self) -> None:
        if self._open:
            self._open = False
            with self._lanes._lock:
                self._lanes.bodies -= 1

    def __del__(self) -> None:
        self.close()

    def update(self, data: Any, /) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        self.close()
        return self._h.digest()

    def hexdigest(self) -> str:
        return self.digest().hex()


def _compress_one(state: bytearray, blocks: bytes) -> None:
    """A block or two of one stream (a completed tail, the padding): the portable kernel."""
    _native.compress([state], [blocks], "c")


def factory() -> tuple[Callable[[], Md5Hash], str]:
    """What makes a new MD5 for a PUT body, and a line for the start-up log saying which."""
    kernel = simd_kernel()
    if kernel is None:
        why = "no native module" if _native is None else "no SIMD kernel on this CPU"
        return hashlib.md5, f"MD5 ETags: hashlib ({why})"
    lanes = Md5Lanes(kernel)
    width = dict(kernels())[kernel]
    return lanes.new, f"MD5 ETags: {width} SIMD lanes ({kernel})"
