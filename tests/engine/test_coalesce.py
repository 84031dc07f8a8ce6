"""Put coalescing (engine/coalesce.py): a single put with nothing else being written is written
on its caller's thread; concurrent ones queue for the engine's put writer, which writes them in
batches through one pipeline (puts that queue while it writes join it). Every put is
acknowledged only once its bytes and every earlier byte are written, and as soon as they are
(not when its whole batch is), a failed write acknowledges none of the puts behind it, and a
put that waits too long leaves with a typed error (written anyway if the writer had taken it).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Sequence

import pytest

from kvstore import limits
from kvstore.engine.device import IoOp, Pending
from kvstore.engine.store import Engine
from kvstore.errors import StorageError
from tests.engine.conftest import NS, Engines, pattern
from tests.engine.test_group import _join
from tests.engine.test_pipeline import DeferredDevice

WRITERS = 6
BLOCK = 64 * 1024


def _until(ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def _queued(eng: Engine, work: Callable[[int], object], n: int = WRITERS,
            hold_s: float = 0.0) -> tuple[list[threading.Thread], list[BaseException | None]]:
    """Run ``work(i)`` on ``n`` threads while the test holds the write lock: the first put is
    written on its own thread (nothing else is being written) and waits for the lock; the
    second starts the put writer, which takes it and waits for the lock too; the others queue
    for the writer. Returns once they are queued and the lock has been held ``hold_s`` more
    seconds (then released)."""
    outcome: list[BaseException | None] = [None] * n

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001 - checked by the test
            outcome[i] = e

    lg, co = eng.log, eng.log.coalescer
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]

    def combining(k: int) -> Callable[[], bool]:
        def ready() -> bool:
            with lg.combine_lock:
                return len(lg.combine_queue) == k
        return ready

    def queued() -> bool:
        with co._lock:
            return len(co._queue) == n - 2

    with lg.wlock:
        threads[0].start()
        _until(combining(1), "the first put did not wait for the lock")
        threads[1].start()
        _until(combining(2), "the put writer did not take the second put")
        for t in threads[2:]:
            t.start()
        _until(queued, "puts did not queue for the put writer")
        time.sleep(hold_s)
    return threads, outcome


def test_a_put_alone_is_written_on_its_callers_thread(engines: Engines) -> None:
    eng = engines.open()
    co = eng.log.coalescer
    d0, b0 = co.direct, co.batches
    for i in range(3):
        assert eng.put(NS, f"k{i}", pattern(i, BLOCK)).created
    assert (co.direct - d0, co.batches - b0) == (3, 0)
    assert co._thread is None  # no writer thread until puts overlap
    assert all(eng.get(NS, f"k{i}") == pattern(i, BLOCK) for i in range(3))
    assert eng.check(deep=True) == []


@pytest.mark.parametrize(("bytes_max", "batches"), [(None, 2), (2 * BLOCK, 3)])
def test_queued_puts_join_the_writers_pipeline(engines: Engines, bytes_max: int | None,
                                               batches: int) -> None:
    """The put the writer took, then the four that queued meanwhile, taken in one batch into
    the same pipeline; with a byte bound of two puts they join as 2 + 2 (in their order). All
    are acknowledged, and survive a crash."""
    dev = DeferredDevice()
    engines.devices.append(dev)
    eng = engines.open(dev)
    co = eng.log.coalescer
    if bytes_max is not None:
        co._batch_bytes_max = bytes_max
    b0, p0, d0 = co.batches, co.puts, co.direct
    threads, outcome = _queued(eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)))
    _join(threads)
    assert outcome == [None] * WRITERS
    assert (co.direct - d0, co.batches - b0, co.puts - p0) == (1, batches, WRITERS - 1)
    assert all(eng.get(NS, f"k{i}") == pattern(i, BLOCK) for i in range(WRITERS))
    assert eng.check(deep=True) == []
    eng = engines.reopen(eng, crash=True)
    assert all(eng.get(NS, f"k{i}") == pattern(i, BLOCK) for i in range(WRITERS))
    assert eng.check(deep=True) == []


class FailingDevice(DeferredDevice):
    """Fails (-EIO) the write of one payload, recognised by its first bytes."""

    def __init__(self, marker: bytes) -> None:
        super().__init__()
        self.marker = marker

    def _run(self, ops: Sequence[IoOp]) -> list[int]:
        out = super()._run(ops)
        return [-errno.EIO if op.write and self.marker in bytes(op.buf) else r
                for op, r in zip(ops, out, strict=True)]


def test_a_failed_write_acknowledges_none_of_the_puts_behind_it(engines: Engines) -> None:
    """k2's write fails: k0 and k1 (written before it) are acknowledged; k2 and the puts of
    the pipeline behind it in the segment are not, and are not there after a crash either."""
    dev = FailingDevice(pattern(2, BLOCK)[:256])
    engines.devices.append(dev)
    eng = engines.open(dev)
    eng.put(NS, "first", b"x" * 10)  # the active segment exists: no roll in the round
    threads, outcome = _queued(eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)))
    _join(threads)
    assert outcome[:2] == [None, None]
    assert all(isinstance(e, StorageError) for e in outcome[2:])
    assert all(not eng.exists(NS, f"k{i}") for i in range(2, WRITERS))
    assert eng.put(NS, "after", b"a" * 5000).created  # the broken segment rolls
    eng = engines.reopen(eng, crash=True)
    assert all(eng.get(NS, f"k{i}") == pattern(i, BLOCK) for i in range(2))
    assert eng.get(NS, "after") == b"a" * 5000
    assert all(eng.get(NS, f"k{i}") is None for i in range(2, WRITERS))
    assert eng.check(deep=True) == []


@pytest.mark.parametrize(("key", "overwrite"), [
    # a pipeline holds one put per key: each later write of the key is its own batch
    (lambda i: "same", lambda i: True),
    # other flags wait for their own batch
    (lambda i: f"k{i}", lambda i: bool(i % 2)),
], ids=["one-key", "other-flags"])
def test_puts_that_cannot_share_a_batch_wait_for_their_own(
        engines: Engines, key: Callable[[int], str], overwrite: Callable[[int], bool]) -> None:
    """The put written on its own thread, then the writer's three, one batch each."""
    eng = engines.open()
    co = eng.log.coalescer
    b0 = co.batches
    n = 4
    threads, outcome = _queued(
        eng, lambda i: eng.put(NS, key(i), pattern(i, BLOCK), overwrite=overwrite(i)), n=n)
    _join(threads)
    assert outcome == [None] * n
    assert co.batches - b0 == 3
    for i in range(n):  # a key written more than once holds one of its values
        assert eng.get(NS, key(i)) in {pattern(j, BLOCK) for j in range(n) if key(j) == key(i)}
    assert eng.check(deep=True) == []


def test_a_put_that_waits_too_long_leaves_with_a_storage_error(
        engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write lock is held past the bound: the put on its own thread waits for it (it is
    the writer), the one the put writer had taken leaves with StorageError and is written
    anyway (unacknowledged, not lost), the queued one leaves the queue, never written."""
    eng = engines.open()
    co = eng.log.coalescer
    monkeypatch.setattr(limits, "put_coalesce_wait_seconds_max", 0.2)
    threads, outcome = _queued(eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)),
                               n=3, hold_s=0.6)
    _join(threads)
    assert outcome[0] is None and eng.get(NS, "k0") == pattern(0, BLOCK)
    assert all(isinstance(e, StorageError) and "waited" in str(e) for e in outcome[1:])
    _until(lambda: eng.exists(NS, "k1"), "the taken put was never written")
    assert eng.get(NS, "k1") == pattern(1, BLOCK)
    assert not eng.exists(NS, "k2")
    with co._lock:
        assert not co._queue  # nothing left waiting
    assert eng.put(NS, "k2", b"later").created
    assert eng.check(deep=True) == []


class GatedDevice(DeferredDevice):
    """Writes started are held until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def start(self, ops: Sequence[IoOp]) -> Pending:
        inner = super().start(ops)
        results: list[int] = []

        def finish() -> None:
            assert self.gate.wait(30), "the test never opened the gate"
            results[:] = inner.wait()

        return Pending(results, finish)


def test_puts_taken_into_a_stuck_pipeline_time_out_unacknowledged(
        engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """The device holds every write: the puts in the writer's pipeline wait too long and leave
    with StorageError (the put on its own thread waits for its device), and are still
    written (unacknowledged, not lost) once the device answers."""
    dev = GatedDevice()
    engines.devices.append(dev)
    eng = engines.open(dev)
    dev.gate.set()
    eng.put(NS, "first", b"x" * 10)
    dev.gate.clear()
    monkeypatch.setattr(limits, "put_coalesce_wait_seconds_max", 0.3)
    co = eng.log.coalescer
    p0 = co.puts
    threads, outcome = _queued(eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)), n=3)
    _until(lambda: all(isinstance(e, StorageError) for e in outcome[1:]),
           "the taken puts did not time out")
    assert all("waited" in str(e) for e in outcome[1:])
    assert outcome[0] is None and threads[0].is_alive()
    assert co.puts - p0 == 2  # k2 joined k1's pipeline before it gave up
    dev.gate.set()
    _join(threads)
    assert outcome[0] is None
    _until(lambda: all(eng.exists(NS, f"k{i}") for i in range(3)),
           "the taken puts were never written")
    assert all(eng.get(NS, f"k{i}") == pattern(i, BLOCK) for i in range(3))
    with co._lock:
        assert not co._queue
    assert eng.put(NS, "after", b"a").created
    assert eng.check(deep=True) == []


class HoldingDevice(DeferredDevice):
    """Holds the write of one payload (recognised by its first bytes) until the test lets it
    go; every other write completes when waited for."""

    def __init__(self, marker: bytes) -> None:
        super().__init__()
        self.marker = marker
        self.release = threading.Event()
        self.held = threading.Event()

    def start(self, ops: Sequence[IoOp]) -> Pending:
        inner = super().start(ops)
        hold = any(op.write and self.marker in bytes(op.buf) for op in ops)
        results: list[int] = []

        def finish() -> None:
            if hold:
                self.held.set()
                assert self.release.wait(30), "the test never let the write go"
            results[:] = inner.wait()

        return Pending(results, finish)


def test_each_put_is_answered_as_soon_as_it_is_written(engines: Engines) -> None:
    """The writer answers a put once it and every earlier byte are written, while later puts
    of the same pipeline are still in flight; the held put is answered once it is written."""
    dev = HoldingDevice(pattern(3, BLOCK)[:256])
    engines.devices.append(dev)
    eng = engines.open(dev)
    n = 4
    threads, outcome = _queued(eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)), n=n)
    assert dev.held.wait(30), "the last put's write never started"
    for t in threads[:3]:  # answered while k3's write is held
        t.join(timeout=30)
        assert not t.is_alive()
    assert threads[3].is_alive() and outcome[:3] == [None] * 3
    assert not eng.exists(NS, "k3")  # not published before it is written
    dev.release.set()
    _join(threads)
    assert outcome == [None] * n
    assert all(eng.get(NS, f"k{i}") == pattern(i, BLOCK) for i in range(n))
    assert eng.check(deep=True) == []


def test_close_ends_the_writer_and_refuses_new_puts(engines: Engines) -> None:
    eng = engines.open()
    threads, outcome = _queued(eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)))
    _join(threads)
    assert outcome == [None] * WRITERS
    writer = eng.log.coalescer._thread
    assert writer is not None and writer.name == "kvstore-put-writer"
    engines.close(eng)
    assert not writer.is_alive()
    with pytest.raises(StorageError, match="closed"):
        eng.put(NS, "late", b"x")
    eng = engines.open(eng.device, eng.config, namespace=None)
    assert all(eng.get(NS, f"k{i}") == pattern(i, BLOCK) for i in range(WRITERS))
    assert not eng.exists(NS, "late")
    assert eng.check(deep=True) == []


def test_a_put_writer_that_cannot_start_fails_its_put_and_leaves_nothing_queued(
        engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    from kvstore.engine import coalesce

    class NoThreads(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread (test)")

    eng = engines.open()
    lg, co = eng.log, eng.log.coalescer
    outcome: list[BaseException | None] = []
    first = threading.Thread(target=lambda: eng.put(NS, "k0", pattern(0, BLOCK)))
    with lg.wlock:  # k0 is written on its own thread and waits for the lock
        first.start()
        _until(lambda: len(lg.combine_queue) == 1, "the first put did not wait for the lock")
        monkeypatch.setattr(coalesce.threading, "Thread", NoThreads)
        try:
            eng.put(NS, "k1", pattern(1, BLOCK))
        except StorageError as e:
            outcome.append(e)
        monkeypatch.undo()
    first.join(30)
    assert len(outcome) == 1 and "put writer" in str(outcome[0])
    with co._lock:
        assert not co._queue and co._thread is None
    assert eng.get(NS, "k0") == pattern(0, BLOCK) and not eng.exists(NS, "k1")
    assert eng.put(NS, "k1", pattern(1, BLOCK)).created
    assert eng.check(deep=True) == []
