"""put_many's pipeline (batch._Pipeline): the depth one call hands the device, and that a failed
chunk in the middle of the pipeline acknowledges nothing after it."""

from __future__ import annotations

import errno
import threading
from collections.abc import Sequence

import pytest

from kvstore.engine.device import IoOp, MemoryDevice, Pending
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.errors import StorageError
from tests.engine.conftest import NS, Engines, pattern

SEGMENT = 16 * 1024 * 1024


class DeferredDevice(MemoryDevice):
    """A MemoryDevice whose ``start`` really defers the I/O until ``wait``: the writes a caller
    has started and not waited for are in flight, and counted."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak = 0
        self.fail_write_no: int | None = None  # the n-th write op (0-based) returns -EIO
        self.writes = 0

    def _count(self, n: int) -> None:
        self.in_flight += n
        self.peak = max(self.peak, self.in_flight)

    def submit(self, ops: Sequence[IoOp]) -> list[int]:
        self._count(len(ops))
        try:
            return self._run(ops)
        finally:
            self.in_flight -= len(ops)

    def _run(self, ops: Sequence[IoOp]) -> list[int]:
        out = []
        for op in ops:
            bad = op.write and self.writes == self.fail_write_no
            if op.write:
                self.writes += 1
            out.append(-errno.EIO if bad else super().submit([op])[0])
        return out

    def start(self, ops: Sequence[IoOp]) -> Pending:
        ops = list(ops)
        self._count(len(ops))
        results = [0] * len(ops)

        def finish() -> None:
            results[:] = self._run(ops)
            self.in_flight -= len(ops)

        return Pending(results, finish)


def _open(dev: DeferredDevice, tmp: str) -> Engine:
    cfg = EngineConfig(data_dir=tmp, capacity_bytes=8 * SEGMENT, segment_bytes=SEGMENT,
                       dram_bytes=0, dram_on_put=False)
    eng = Engine.open(cfg, dev)
    eng.create_namespace(NS)
    return eng


def test_put_many_of_eight_blocks_keeps_eight_writes_in_flight(tmp_path: object) -> None:
    """Before the pipeline, 8 x 1 MiB records went out as 3 writes of up to 8 MiB in one
    ``submit``: a depth of 3. Now each is its own chunk, all 8 started before the first wait."""
    dev = DeferredDevice()
    eng = _open(dev, str(tmp_path))
    items = [(f"k{i}", pattern(i, 1024 * 1024)) for i in range(8)]
    dev.peak = 0
    res = eng.put_many(NS, items)
    assert all(r.created for r in res)
    assert dev.peak == 8
    for k, v in items:
        assert eng.get(NS, k) == v
    eng.close()


def test_a_failed_chunk_mid_pipeline_acknowledges_nothing_after_it(tmp_path: object) -> None:
    dev = DeferredDevice()
    eng = _open(dev, str(tmp_path))
    items = [(f"k{i}", pattern(i, 1024 * 1024)) for i in range(8)]
    dev.writes, dev.fail_write_no = 0, 3
    with pytest.raises(StorageError):
        eng.put_many(NS, items)
    dev.fail_write_no = None
    assert dev.in_flight == 0  # every started write was waited for
    got = [eng.get(NS, k) for k, _ in items]
    # chunks finish in log order: the three before the failed one are stored, none after it
    assert got[:3] == [v for _, v in items[:3]]
    assert got[3:] == [None] * 5
    assert eng.check(deep=True) == []
    assert all(r.created for r in eng.put_many(NS, items[3:]))  # the log goes on
    eng.close()
    eng = Engine.open(eng.state.config, dev)
    assert [eng.get(NS, k) for k, _ in items] == [v for _, v in items]
    eng.close()


def test_concurrent_single_puts_through_the_combiner_roll_and_recover(engines: Engines) -> None:
    """16 writers of single puts on 1 MiB segments: reservations are combined (one writer
    reserves the queue), rolls happen mid-queue; every acknowledged block reads back, before
    and after a crash."""
    eng = engines.open(engines.device("real"))
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for j in range(12):
                assert eng.put(NS, f"t{t}-{j}", pattern(t * 100 + j, 150_000)).created
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors and not any(th.is_alive() for th in threads)
    assert eng.stats()["segments"] > 10
    want = {f"t{t}-{j}": pattern(t * 100 + j, 150_000) for t in range(16) for j in range(12)}
    assert all(eng.get(NS, k) == v for k, v in want.items())
    eng = engines.reopen(eng, crash=True)
    assert all(eng.get(NS, k) == v for k, v in want.items())
