"""Group commit (engine/group.py): small chunks of concurrent writers, reserved back to back by
one combiner, go to the device as one op; each writer still acknowledges only its own range in
log order, and a failed group op acknowledges none of them.

Concurrent *single* puts no longer reach the combiner side by side: they queue behind one
leader who writes them as one batch (coalesce.py, tested in test_coalesce.py). The combiner
serves concurrent ``write_batch`` callers (``put_many`` calls, and each coalesced batch behind
the one still reserving), so here each writer's put calls ``write_batch`` itself, as a
``put_many`` caller does, which keeps one small chunk per writer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from kvstore.engine.batch import Prepared, write_batch
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig, PutResult
from kvstore.errors import StorageError
from tests.engine.conftest import NS, Engines, pattern
from tests.engine.test_pipeline import DeferredDevice

WRITERS = 6
BLOCK = 64 * 1024


def _queued_writers(eng: Engine, work: Callable[[int], object]) -> tuple[list[threading.Thread],
                                                                     list[BaseException]]:
    """Start WRITERS threads running ``work(i)`` while the test holds the write lock, and
    return once all of them have queued their chunk for the combiner (the lock is released:
    the combiner then reserves the whole queue in one round)."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001 - checked by the test
            errors.append(e)

    lg = eng.log

    def uncoalesced(preps: list[Prepared], overwrite: bool, donate: bool) -> list[PutResult]:
        return write_batch(lg, preps, overwrite, donate)

    lg.write = uncoalesced  # type: ignore[method-assign]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(WRITERS)]
    with lg.wlock:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while True:  # the combiner waits for wlock with its own request at the head
            with lg.combine_lock:
                if len(lg.combine_queue) == WRITERS:
                    break
            assert time.monotonic() < deadline, "writers did not queue"
            time.sleep(0.001)
    return threads, errors


def deferred_engine(engines: Engines, config: EngineConfig | None = None,
                    ) -> tuple[DeferredDevice, Engine]:
    """An engine on a DeferredDevice whose active segment exists (no roll in the round)."""
    dev = DeferredDevice()
    engines.devices.append(dev)
    eng = engines.open(dev, config)
    eng.put(NS, "first", b"x" * 10)
    return dev, eng


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()


def test_concurrent_small_puts_are_written_by_one_op(engines: Engines) -> None:
    dev, eng = deferred_engine(engines)
    before = dev.writes
    threads, errors = _queued_writers(
        eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)))
    _join(threads)
    assert errors == []
    assert dev.writes - before == 1  # one device op for the six puts
    for i in range(WRITERS):
        assert eng.get(NS, f"k{i}") == pattern(i, BLOCK)
    eng = engines.reopen(eng, crash=True)
    for i in range(WRITERS):
        assert eng.get(NS, f"k{i}") == pattern(i, BLOCK)
    assert eng.check(deep=True) == []


def test_a_failed_group_op_acknowledges_none_of_its_puts(engines: Engines) -> None:
    dev, eng = deferred_engine(engines)
    dev.fail_write_no = dev.writes  # the group's op
    threads, errors = _queued_writers(
        eng, lambda i: eng.put(NS, f"k{i}", pattern(i, BLOCK)))
    _join(threads)
    assert len(errors) == WRITERS and all(isinstance(e, StorageError) for e in errors)
    assert all(not eng.exists(NS, f"k{i}") for i in range(WRITERS))
    assert eng.put(NS, "after", b"a" * 5000).created  # the broken segment rolls
    eng = engines.reopen(eng, crash=True)
    assert eng.get(NS, "after") == b"a" * 5000 and eng.get(NS, "first") == b"x" * 10
    assert all(eng.get(NS, f"k{i}") is None for i in range(WRITERS))
    assert eng.check(deep=True) == []


@pytest.mark.parametrize("block", [2 * 1024 * 1024])
def test_large_chunks_are_not_grouped(engines: Engines, block: int) -> None:
    """Past limits.group_commit_chunk_bytes_max a chunk is written by its own op."""
    dev, eng = deferred_engine(engines, engines.config(segment_bytes=64 * 1024 * 1024,
                                                       capacity_bytes=256 * 1024 * 1024))
    before = dev.writes
    threads, errors = _queued_writers(
        eng, lambda i: eng.put(NS, f"k{i}", pattern(i, block)))
    _join(threads)
    assert errors == []
    assert dev.writes - before == WRITERS
    assert all(eng.get(NS, f"k{i}") == pattern(i, block) for i in range(WRITERS))
