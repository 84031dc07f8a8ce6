"""Concurrent and batched puts: parallel device writes, acknowledgements in log order."""

from __future__ import annotations

import errno
import threading

import pytest

from kvstore.engine import format as fmt
from kvstore.engine.device import MemoryDevice
from kvstore.engine.store import Engine
from kvstore.errors import StorageError
from tests.engine.conftest import NS, Engines, pattern

PAGE = fmt.PAGE
WAIT_SECONDS = 30


def _run_threads(n: int, work) -> None:  # noqa: ANN001 - a callable of the thread index
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            work(t)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors[0]


def test_concurrent_writers_on_real_files_then_reopen(engines: Engines) -> None:
    eng = engines.open(engines.device("real"), capacity_bytes=256 << 20, segment_bytes=4 << 20)
    sizes = [100, 5000, 70_000, 300_000]

    def work(t: int) -> None:
        for i in range(60):
            k = i * 8 + t
            eng.put(NS, f"k{k}", pattern(k, sizes[k % 4]))
            if i % 10 == 0:
                eng.put_many(NS, [(f"m{t}-{i}-{j}", pattern(j, 3000)) for j in range(20)])

    _run_threads(8, work)
    assert eng.check(deep=True) == []
    for k in range(480):
        assert eng.get(NS, f"k{k}") == pattern(k, sizes[k % 4])
    eng = engines.reopen(eng, crash=True)  # abandon without close: what was acked is there
    for k in range(480):
        assert eng.get(NS, f"k{k}") == pattern(k, sizes[k % 4])
    assert eng.count(NS) == 480 + 8 * 6 * 20


def test_same_key_from_many_threads_is_stored_once(engine: Engine) -> None:
    created: list[bool] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        r = engine.put(NS, "same", pattern(7, 50_000))
        with lock:
            created.append(r.created)

    _run_threads(8, work)
    assert created.count(True) == 1
    assert engine.stats()["puts"] == 1
    assert engine.get(NS, "same") == pattern(7, 50_000)


def test_put_many_spans_segments_and_repeats_are_stored_once(engine: Engine) -> None:
    items = [(f"b{i}", pattern(i, 200_000)) for i in range(30)]  # 6 MiB over 1 MiB segments
    res = engine.put_many(NS, items + [("b3", b"other bytes, same key")])
    assert [r.created for r in res] == [True] * 30 + [False]
    assert engine.stats()["segments"] > 3
    for k, v in items:
        assert engine.get(NS, k) == v


def test_a_key_stored_by_another_writer_mid_batch_becomes_a_void_record(engines: Engines) -> None:
    """put_many builds its chunks before it reserves them; a key another writer stores in
    between is written void (never indexed, skipped by scans) and answered created=False."""
    import kvstore.engine.batch as batch

    eng = engines.open(engines.device("real"))
    real_build = batch._build
    raced = []

    def build_then_race(*args):  # noqa: ANN002 - whatever _build takes
        real_build(*args)
        if not raced:
            raced.append(True)
            assert eng.put(NS, "k1", b"the other writer").created

    batch._build = build_then_race
    try:
        res = eng.put_many(NS, [(f"k{i}", pattern(i, 5000)) for i in range(4)])
    finally:
        batch._build = real_build
    assert [r.created for r in res] == [True, False, True, True]
    assert eng.get(NS, "k1") == b"the other writer"
    eng = engines.reopen(eng, crash=True)
    assert eng.get(NS, "k1") == b"the other writer"
    assert [eng.get(NS, f"k{i}") for i in (0, 2, 3)] == [pattern(i, 5000) for i in (0, 2, 3)]
    assert eng.count(NS) == 4


def test_staged_payloads_are_written_in_place(engines: Engines) -> None:
    """A payload already in page-aligned memory (the bulk port receives PUTs that way) is
    written from there; its padding is zeroed, small ones go inline as usual."""
    import pytest

    from kvstore.engine.device import AlignedBuffer, StagedPayload, align_up
    from kvstore.errors import InvalidArgument

    eng = engines.open(engines.device("real"))
    items = []
    for i, n in enumerate([100, 4096, 70_001, 300_000]):
        buf = AlignedBuffer(n + 8192)
        buf.view[: buf.size] = b"\xee" * buf.size  # stale scratch that must not reach the disk
        buf.view[:n] = pattern(i, n)
        items.append((f"s{i}", StagedPayload(buf.view[: align_up(n)], n)))
    res = eng.put_many(NS, items)
    assert all(r.created for r in res)
    eng = engines.reopen(eng, crash=True)
    for i, n in enumerate([100, 4096, 70_001, 300_000]):
        assert eng.get(NS, f"s{i}") == pattern(i, n)
    odd = AlignedBuffer(3 * 4096)
    with pytest.raises(InvalidArgument):
        eng.put(NS, "odd", StagedPayload(odd.view[1 : 1 + 8192], 8000))


class _FailOneWriteLate(MemoryDevice):
    """Once armed, the first record write fails, but only after a later write to the same
    segment (another writer's) has landed: a hole before a fully written block."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.failing = threading.Event()  # the doomed write was submitted
        self.later_written = threading.Event()
        self._claimed = False
        self._claim = threading.Lock()

    def submit(self, ops):  # noqa: ANN001, ANN201 - the Device signature
        if not self.armed or not any(op.write and op.offset >= PAGE for op in ops):
            return super().submit(ops)
        with self._claim:
            doomed, self._claimed = not self._claimed, True
        if doomed:
            self.failing.set()
            self.later_written.wait(WAIT_SECONDS)
            return [-errno.EIO] * len(ops)
        out = super().submit(ops)
        self.later_written.set()
        return out


@pytest.mark.parametrize("then", ["crash", "roll"])
def test_no_acknowledgement_behind_a_failed_write(engines: Engines, then: str) -> None:
    """A write that fails leaves a hole the recovery scan cannot cross, so no later write of
    that segment may be acknowledged: only blocks acknowledged before it, and after the roll
    to a fresh segment, are promised, and they survive a crash. ``crash``: the broken segment
    is scanned at reopen; ``roll``: it is sealed first and its summary must not name them."""
    dev = _FailOneWriteLate()
    eng = engines.open(dev)
    kept = {f"b{i}": pattern(i, 20_000) for i in range(3)}
    for k, v in kept.items():
        assert eng.put(NS, k, v).created
    dev.armed = True
    outcome: dict[str, object] = {}

    def put(key: str) -> None:
        try:
            outcome[key] = eng.put(NS, key, pattern(9, 50_000)).created
        except StorageError as exc:
            outcome[key] = exc

    first = threading.Thread(target=put, args=("doomed",))
    first.start()
    assert dev.failing.wait(WAIT_SECONDS)  # reserved, its write is in flight
    second = threading.Thread(target=put, args=("behind",))
    second.start()
    first.join(WAIT_SECONDS)
    second.join(WAIT_SECONDS)
    assert isinstance(outcome["doomed"], StorageError)
    if outcome["behind"] is True:  # acknowledged: then it must survive (it did not, before)
        kept["behind"] = pattern(9, 50_000)
    dev.armed = False
    if then == "roll":
        assert eng.put(NS, "fresh", pattern(3, 20_000)).created  # seals the broken segment
        kept["fresh"] = pattern(3, 20_000)
    eng = engines.reopen(eng, crash=True)
    assert {k: eng.get(NS, k) for k in kept} == kept
    assert not eng.exists(NS, "doomed")  # no summary row points at the failed range
    assert "behind" not in kept, "a write behind a failed one was acknowledged"
    assert eng.put(NS, "later", pattern(4, 20_000)).created
    kept["later"] = pattern(4, 20_000)
    eng = engines.reopen(eng)
    assert {k: eng.get(NS, k) for k in kept} == kept
