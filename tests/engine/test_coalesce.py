"""Put coalescing (engine/coalesce.py): concurrent single puts queue for the engine's put
writer, which writes them in batches through one pipeline (puts that queue while it writes
join it); every put is acknowledged only once its bytes and every earlier byte are written,
and as soon as they are (not when its whole batch is), a failed write acknowledges none of the
puts behind it, and a put that waits too long leaves with a typed error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from kvstore import limits
from kvstore.engine.device import IoOp, Pending
from kvstore.engine.store import Engine
from kvstore.errors import StorageError
from tests.engine.conftest import NS, Engines, pattern
from tests.engine.test_group import _join, deferred_engine
from tests.engine.test_pipeline import DeferredDevice

WRITERS = 6
BLOCK = 64 * 1024


def _queued(eng: Engine, work: Callable[[int], object], n: int = WRITERS,
            hold_s: float = 0.0) -> tuple[list[threading.Thread], list[BaseException | None]]:
    """Run ``work(i)`` on ``n`` threads while the test holds the write lock: the writer takes
    the first put (and waits for the lock), the others queue behind it. Returns once ``n - 1``
    are queued and the lock has been held ``hold_s`` more seconds (then released)."""
    outcome: list[BaseException | None] = [None] * n

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001 - checked by the test
            outcome[i] = e

    lg, co = eng.log, eng.log.coalescer
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]

    def until(ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not ready():
            assert time.monotonic() < deadline, "puts did not queue behind a leader"
            time.sleep(0.001)

    def combining() -> bool:
        with lg.combine_lock:
            return len(lg.combine_queue) == 1

    def queued() -> bool:
        with co._lock:
            return len(co._queue) == n - 1

    with lg.wlock:
        threads[0].start()
        until(combining)  # the writer took the first put and waits for the lock
        for t in threads[1:]:
            t.start()
        until(queued)
        time.sleep(hold_s)
    return threads, outcome


@pytest.mark.parametrize(("bytes_max", "batches"), [(None, 2), (2 * BLOCK, 4)])
def test_queued_puts_are_written_as_one_batch(engines: Engines, bytes_max: int | None,
                                              batches: int) -> None:
    """The first put, then everything that queued behind it in one batch joining the same
    pipeline; with a byte bound of two puts, the five queued join as 2 + 2 + 1 (in their
    order), all acknowledged."""
    dev = DeferredDevice()
    engines.devices.append(dev)
    eng = engines.open(dev)
    co = eng.log.coalescer
    if bytes_max is not None:
        co._batch_bytes_max = bytes_max
    b0, p0 = co.batches, co.puts
    threads, outcome = _queued(eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)))
    _join(threads)
    assert outcome == [None] * WRITERS
    assert (co.batches - b0, co.puts - p0) == (batches, WRITERS)
    assert all(eng.get(NS, f"k{i}") == pattern(i, BLOCK) for i in range(WRITERS))
    assert eng.check(deep=True) == []
    eng = engines.reopen(eng, crash=True)
    assert all(eng.get(NS, f"k{i}") == pattern(i, BLOCK) for i in range(WRITERS))
    assert eng.check(deep=True) == []


def test_a_failed_batch_acknowledges_none_of_its_puts(engines: Engines) -> None:
    dev, eng = deferred_engine(engines)
    dev.fail_write_no = dev.writes + 1  # the first op of the queued batch (the leader's is 0)
    threads, outcome = _queued(eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)))
    _join(threads)
    assert outcome[0] is None and eng.get(NS, "k0") == pattern(0, BLOCK)
    assert all(isinstance(e, StorageError) for e in outcome[1:])
    assert all(not eng.exists(NS, f"k{i}") for i in range(1, WRITERS))
    assert eng.put(NS, "after", b"a" * 5000).created  # the broken segment rolls
    eng = engines.reopen(eng, crash=True)
    assert eng.get(NS, "k0") == pattern(0, BLOCK) and eng.get(NS, "after") == b"a" * 5000
    assert all(eng.get(NS, f"k{i}") is None for i in range(1, WRITERS))
    assert eng.check(deep=True) == []


@pytest.mark.parametrize(("key", "overwrite", "batches"), [
    # a batch holds one put per key: each write of the same key is its own, later batch
    (lambda i: "same", lambda i: True, 4),
    # other flags wait for their own batch: the first put's, then one per flag set
    (lambda i: f"k{i}", lambda i: bool(i % 2), 3),
], ids=["one-key", "other-flags"])
def test_puts_that_cannot_share_a_batch_wait_for_their_own(
        engines: Engines, key: Callable[[int], str], overwrite: Callable[[int], bool],
        batches: int) -> None:
    eng = engines.open()
    co = eng.log.coalescer
    b0 = co.batches
    n = 4
    threads, outcome = _queued(
        eng, lambda i: eng.put(NS, key(i), pattern(i, BLOCK), overwrite=overwrite(i)), n=n)
    _join(threads)
    assert outcome == [None] * n
    assert co.batches - b0 == batches
    for i in range(n):  # a key written more than once holds one of its values
        assert eng.get(NS, key(i)) in {pattern(j, BLOCK) for j in range(n) if key(j) == key(i)}
    assert eng.check(deep=True) == []


def test_a_put_that_waits_too_long_leaves_with_a_storage_error(
        engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both puts wait past the bound while the write lock is held: the one the writer had
    taken is written anyway (unacknowledged, not lost), the queued one leaves the queue."""
    eng = engines.open()
    co = eng.log.coalescer
    monkeypatch.setattr(limits, "put_coalesce_wait_seconds_max", 0.2)
    threads, outcome = _queued(eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)),
                               n=2, hold_s=0.6)
    _join(threads)
    assert all(isinstance(e, StorageError) and "waited" in str(e) for e in outcome)
    deadline = time.monotonic() + 30
    while not eng.exists(NS, "k0"):  # the writer goes on once the lock is free
        assert time.monotonic() < deadline, "the taken put was never written"
        time.sleep(0.01)
    assert eng.get(NS, "k0") == pattern(0, BLOCK)
    assert not eng.exists(NS, "k1")
    with co._lock:
        assert not co._queue  # nothing left waiting
    assert eng.put(NS, "k1", b"later").created
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
    """Puts that joined a pipeline whose first write the device holds wait too long and leave
    with StorageError; the pipeline still writes them (unacknowledged, not lost)."""
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
    _join(threads)  # k0 is stuck on the device; k1 and k2 joined its pipeline meanwhile
    assert all(isinstance(e, StorageError) and "waited" in str(e) for e in outcome)
    assert co.puts - p0 == 3
    dev.gate.set()
    deadline = time.monotonic() + 30
    while not all(eng.exists(NS, f"k{i}") for i in range(3)):
        assert time.monotonic() < deadline, "the taken puts were never written"
        time.sleep(0.01)
    # written anyway: unacknowledged, not lost
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
