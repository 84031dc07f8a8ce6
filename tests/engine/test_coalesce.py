"""Put coalescing (engine/coalesce.py): concurrent single puts queue behind one leader, who
writes them as one batch; every put is acknowledged only once its bytes and every earlier
byte are written, a failed batch acknowledges none of its puts, and a put that waits too long
leaves the queue with a typed error."""

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
    """Run ``work(i)`` on ``n`` threads while the test holds the write lock: the first put
    leads (and waits for the lock), the others queue behind it. Returns once ``n - 1`` are
    queued and the lock has been held ``hold_s`` more seconds (then released)."""
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
        until(combining)  # the leader took its batch (itself) and waits for the lock
        for t in threads[1:]:
            t.start()
        until(queued)
        time.sleep(hold_s)
    return threads, outcome


@pytest.mark.parametrize(("bytes_max", "batches"), [(None, 2), (2 * BLOCK, 4)])
def test_queued_puts_are_written_as_one_batch(engines: Engines, bytes_max: int | None,
                                              batches: int) -> None:
    """The leader's own put, then everything that queued behind it in one batch; with a byte
    bound of two puts, the five queued go as 2 + 2 + 1 (in their order), all acknowledged."""
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
    # other flags wait for their own batch: the leader's, then one per flag set
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
    eng = engines.open()
    co = eng.log.coalescer
    monkeypatch.setattr(limits, "put_coalesce_wait_seconds_max", 0.2)
    threads, outcome = _queued(eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)),
                               n=2, hold_s=0.6)
    _join(threads)
    assert outcome[0] is None and eng.get(NS, "k0") == pattern(0, BLOCK)
    assert isinstance(outcome[1], StorageError) and "waited" in str(outcome[1])
    assert not eng.exists(NS, "k1")
    with co._lock:
        assert not co._queue and not co._leading  # nothing left waiting, nobody leading
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


def test_a_put_taken_into_a_stuck_batch_times_out_unacknowledged(
        engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put already in a leader's batch that waits too long leaves with StorageError; the
    batch still writes it (unacknowledged, not lost), and the leader's wake-up finds nobody."""
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
    # k0 leads and is stuck on the device; k1 leads the next batch (with k2) and is stuck too
    deadline = time.monotonic() + 30
    while not isinstance(outcome[2], StorageError):
        assert time.monotonic() < deadline, "the taken put did not time out"
        time.sleep(0.01)
    assert outcome[:2] == [None, None] and all(t.is_alive() for t in threads[:2])
    dev.gate.set()
    _join(threads)
    assert outcome[:2] == [None, None]
    assert co.puts - p0 == 3  # k2 was in k1's batch when it gave up
    # written anyway: unacknowledged, not lost
    assert all(eng.get(NS, f"k{i}") == pattern(i, BLOCK) for i in range(3))
    with co._lock:
        assert not co._queue and not co._leading
    assert eng.put(NS, "after", b"a").created
    assert eng.check(deep=True) == []


