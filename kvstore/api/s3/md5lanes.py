"""MD5 ETags of concurrent PUTs hashed together, one SIMD lane per body: ``Md5Lanes``.

One body's MD5 cannot be split (each 64-byte block needs the state the previous one left), and a
core runs it at ~0.7 GB/s: on a 2-core node, MD5 ETags held PUT throughput at ~0.3 of a server
that only receives. Concurrent PUTs are independent streams, though, and a vector register holds
one 32-bit MD5 state word per stream: the native module ``kvstore_md5lanes``
(native/md5lanes) runs the compression function over 8 streams at once with AVX2 or AVX-512VL,
16 with AVX-512 (5-6x hashlib's throughput on one core when 8 bodies arrive together).

Here one combiner thread (``Md5Lanes``) runs every stream through the lanes, in rounds of at
most ``limits.s3_md5_lane_round_bytes`` of each queued stream (at most
``limits.s3_md5_lane_streams_max`` streams), the GIL released. The intake (``intake.py``) hands
it each batch of a body's pieces from the event loop (``LaneMd5.submit``): the combiner copies
them into the body's buffer and hashes them, and completes a future. A first version ran the
rounds on the hashing pool's threads, each blocked in the combiner to keep its body's lane
busy: 33 context switches per 2 MiB PUT on those threads, against 10 on the combiner's own;
in the same rounds 1.20x the PUT throughput at 0.81x the CPU. Bodies arrive side by side,
but their batches come a fraction of a millisecond apart, and rounds run at once hashed 2.4
streams a round under 8 writers: so before each round the combiner waits, at most
``limits.s3_md5_lane_gather_us``, until as many batches are queued as there are open streams
(bodies in flight), but never more than the lane count or one more than the last round had:
a body whose neighbours send nothing waits at most that long per round. A lone body never
waits, and a body that starts while no other is in flight hashes with hashlib on the pool. A
signed payload's batches are copied and SHA-256'd on the pool, whose thread then hands the
MD5 to the combiner and waits (``LaneMd5.update``), as CopyObject's does. A body's batches reach the combiner one at a time and
in order (the intake keeps one batch per request in flight), so each stream's blocks are
hashed in order. Partial blocks and the final padding are the stream's own (``LaneMd5``), as
are its 16 bytes of state: a result is the MD5 (tests compare it with hashlib's on random
bodies, split at random points, on every kernel the CPU runs). The thread exits after
``limits.s3_md5_lane_idle_seconds`` without work and on ``close``.

Without a SIMD kernel (no native module, or a CPU with neither AVX2 nor AVX-512) ``factory``
answers ``hashlib.md5``, and says so in the line for the server's start-up log.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from kvstore import limits
from kvstore.engine.device import copy_into

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


class _Job:
    """A stream's batch: whole blocks to hash, or (``pieces``) body pieces the combiner first
    copies into ``target`` at ``pos`` and then hashes (``LaneMd5.blocks_of``)."""

    __slots__ = ("stream", "state", "data", "pieces", "target", "pos", "done")

    def __init__(self, state: bytearray, data: memoryview | None,
                 stream: LaneMd5 | None = None, pieces: list[bytes] | None = None,
                 target: memoryview | None = None, pos: int = 0) -> None:
        self.stream = stream
        self.state = state
        self.data = data
        self.pieces = pieces
        self.target = target
        self.pos = pos
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()


class Md5Lanes:
    """The combiner: one thread of its own runs every stream's blocks through the lanes, in
    rounds. ``hash_blocks`` hands it a batch and waits (from a worker thread, never the event
    loop); ``submit_batch`` hands it body pieces to copy and hash and answers a future at once
    (the event loop's intake: no worker thread blocked per batch to keep a lane busy)."""

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
        self._work = threading.Condition(self._lock)  # the combiner waits on it for batches
        self._queue: deque[_Job] = deque()  # not yet done, in arrival order
        self._want = 1  # what the waiting combiner waits for: appends wake it when reached
        self._recent = self.lanes  # streams in the last round: a round waits for one more at most
        self._thread: threading.Thread | None = None
        self._closed = False
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

    def close(self) -> None:
        """Stop the combiner thread; batches still queued fail."""
        with self._lock:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._work.notify()
        for j in left:
            j.done.set_exception(RuntimeError("the MD5 combiner was closed"))

    def _enqueue(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the MD5 combiner was closed")
            self._queue.append(job)
            if len(self._queue) >= self._want:
                self._work.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kvstore-md5-lanes",
                                                daemon=True)
                self._thread.start()

    def hash_blocks(self, state: bytearray, data: memoryview) -> None:
        """Advance ``state`` over ``data`` (a multiple of 64 bytes); blocks until done."""
        assert len(data) % _BLOCK == 0
        if data:
            job = _Job(state, data)
            self._enqueue(job)
            job.done.result()

    def submit_batch(self, stream: LaneMd5, pieces: list[bytes], target: memoryview,
                     pos: int) -> concurrent.futures.Future[None]:
        """Copy ``pieces`` into ``target`` from ``pos`` and feed them to ``stream``, in the
        combiner's thread; the future is done when both are. One batch per stream at a time."""
        job = _Job(stream._state, None, stream, pieces, target, pos)
        self._enqueue(job)
        return job.done

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._want = 1
                    if not self._work.wait(limits.s3_md5_lane_idle_seconds) and not self._queue:
                        self._thread = None  # idle: the next batch starts a new one
                        return
                if self._closed:
                    self._thread = None
                    return
                self._gather(time.monotonic() + self.gather_s)
                n = min(len(self._queue), self.streams_max)
                batch = [self._queue.popleft() for _ in range(n)]
            try:
                self._round(batch)
            except BaseException as e:  # noqa: BLE001 - every stream of the round fails with it
                for j in batch:
                    j.state[:] = b""  # a poisoned state: the stream's digest raises
                    if not j.done.done():
                        j.done.set_exception(e)

    def _gather(self, deadline: float) -> None:
        """(Under the lock, before a round.) Wait, until ``deadline`` at the latest, for the
        other open streams' next batches, so that the round fills more lanes: at most the lane
        count, and one stream more than the last round had. A lone body does not wait."""
        want = min(self.open, self.lanes, self._recent + 1)
        self._want = max(want, 1)
        while len(self._queue) < want and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0 or not self._work.wait(left):
                break
        self._want = 1

    def _round(self, batch: list[_Job]) -> None:
        for j in batch:
            if j.data is None:  # body pieces: into the body's buffer, then its whole blocks
                assert j.pieces is not None and j.target is not None and j.stream is not None
                pos, start = j.pos, j.pos
                for p in j.pieces:
                    copy_into(j.target[pos : pos + len(p)], memoryview(p))  # GIL released
                    pos += len(p)
                j.pieces = None
                j.data = j.stream.blocks_of(j.target[start:pos])
        # a lone body (nobody else open) goes in one call: rounds only serve to take others in
        rb = self.round_bytes if len(batch) > 1 or self.open > 1 else max(
            len(j.data) for j in batch if j.data is not None)
        live = [j for j in batch if j.data]
        views = [j.data[:rb] for j in live if j.data is not None]
        _native.compress([j.state for j in live], views, self.kernel)
        unfinished = []
        with self._lock:
            self.rounds += 1
            self.streams += len(live)
            self._recent = len(live)
            for j in batch:
                assert j.data is not None
                j.data = j.data[rb:]
                if j.data:
                    unfinished.append(j)
            self._queue.extendleft(reversed(unfinished))  # ahead of streams that came later
        for j in batch:
            if j not in unfinished:
                j.done.set_result(None)


class _Stream:
    """A body's MD5, counted among the bodies in flight (``Md5Lanes.new`` counts it in) until
    ``close``: its digest was taken, or the body was abandoned and the stream collected."""

    __slots__ = ("_lanes", "_open")
    laned = False  # counted in ``Md5Lanes.open`` too: the combiner waits for its batches

    def __init__(self, lanes: Md5Lanes) -> None:
        self._lanes = lanes
        self._open = True

    def close(self) -> None:
        if self._open:
            self._open = False
            with self._lanes._lock:
                self._lanes.bodies -= 1
                if self.laned:
                    self._lanes.open -= 1

    def __del__(self) -> None:
        self.close()

    def hexdigest(self) -> str:
        return self.digest().hex()

    def digest(self) -> bytes:
        raise NotImplementedError


class LaneMd5(_Stream):
    """One stream in the lanes, as ``hashlib.md5()`` is: ``update`` (blocking, from a worker
    thread) or ``submit`` (the intake's batches), ``digest``/``hexdigest`` after the last byte."""

    __slots__ = ("_state", "_tail", "_length")
    laned = True

    def __init__(self, lanes: Md5Lanes) -> None:
        super().__init__(lanes)
        self._state = bytearray(_IV)
        self._tail = b""  # under one block, waiting for the bytes that complete it
        self._length = 0

    def blocks_of(self, data: Any) -> memoryview:
        """Take ``data`` in: complete the held tail (hashed here), keep the new one, and answer
        the whole blocks left to hash. Called by the one thread feeding this stream."""
        view = memoryview(data).cast("B")
        self._length += len(view)
        if self._tail:
            need = _BLOCK - len(self._tail)
            self._tail += bytes(view[:need])
            view = view[need:]
            if len(self._tail) < _BLOCK:
                return view[:0]
            _compress_one(self._state, self._tail)
            self._tail = b""
        whole = len(view) - len(view) % _BLOCK
        self._tail = bytes(view[whole:])
        return view[:whole]

    def update(self, data: Any, /) -> None:
        self._lanes.hash_blocks(self._state, self.blocks_of(data))

    def submit(self, pieces: list[bytes], target: memoryview,
               pos: int) -> concurrent.futures.Future[None]:
        """The intake's batch: copied into ``target`` at ``pos`` and hashed by the combiner."""
        return self._lanes.submit_batch(self, pieces, target, pos)

    def digest(self) -> bytes:
        self.close()
        if len(self._state) != 16:
            raise RuntimeError("this MD5 stream failed in its combiner round")
        state = bytearray(self._state)
        n = self._length
        last = self._tail + b"\x80" + b"\0" * ((55 - n) % _BLOCK) + struct.pack("<Q", 8 * n)
        _compress_one(state, last)
        return bytes(state)


class _SoloMd5(_Stream):
    """A body that started alone: hashlib's MD5."""

    __slots__ = ("_h",)

    def __init__(self, lanes: Md5Lanes) -> None:
        super().__init__(lanes)
        self._h = hashlib.md5()

    def update(self, data: Any, /) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        self.close()
        return self._h.digest()


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
