"""Sealing rolled segments off the write lock (engine/sealer.py): the call that rolled returns
with the old segment sealed, other writers append meanwhile, and a seal that fails in the
background raises in the writer that rolled and is retried, never lost."""

from __future__ import annotations

import errno
import os
import threading

from kvstore.engine.device import MemoryDevice
from kvstore.engine.segments import summary_path
from kvstore.errors import StorageError
from tests.engine.conftest import NS, Engines, pattern

BLOCK = 300 * 1024  # three to a 1 MiB segment


class _SlowOrFailingSync(MemoryDevice):
    """``sync`` (the seal's fdatasync) can block until released, or fail once."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def sync(self, handle: int) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.fail_next:
            self.fail_next = False
            raise StorageError("memory: sync failed (test)")
        super().sync(handle)


def test_the_call_that_rolls_returns_with_the_old_segment_sealed(engines: Engines) -> None:
    eng = engines.open(engines.device("real"))
    for i in range(12):  # four segments
        eng.put(NS, f"k{i}", pattern(i, BLOCK))
        for seg in eng.segments.values():
            if seg is not eng.active:
                assert seg.builder is None and seg.sealed
                assert os.path.exists(summary_path(eng.config.data_dir, seg.id))
    assert len(eng.segments) >= 4
    eng = engines.reopen(eng, crash=True)
    assert all(eng.get(NS, f"k{i}") == pattern(i, BLOCK) for i in range(12))


def test_other_writers_append_while_a_segment_is_sealed(engines: Engines) -> None:
    """The rolling writer's seal blocks in fdatasync; another writer's put into the new
    segment is acknowledged meanwhile (before, it waited for the roll's whole seal)."""
    dev = _SlowOrFailingSync()
    engines.devices.append(dev)
    eng = engines.open(dev)
    for i in range(3):
        eng.put(NS, f"a{i}", pattern(i, BLOCK))
    dev.gate = threading.Event()
    dev.entered.clear()
    roller = threading.Thread(target=lambda: eng.put(NS, "roll", pattern(9, BLOCK)))
    roller.start()
    assert dev.entered.wait(30)  # the old segment is being sealed, off the write lock
    assert eng.put(NS, "meanwhile", pattern(10, 5000)).created
    assert eng.get(NS, "meanwhile") == pattern(10, 5000)
    assert roller.is_alive()  # its call waits for its seal
    dev.gate.set()
    roller.join(30)
    assert not roller.is_alive()
    assert eng.get(NS, "roll") == pattern(9, BLOCK)
    assert all(s.builder is None for s in eng.segments.values() if s is not eng.active)


def test_a_failed_background_seal_raises_in_the_roller_and_is_retried(engines: Engines) -> None:
    dev = _SlowOrFailingSync()
    engines.devices.append(dev)
    eng = engines.open(dev)
    for i in range(3):
        eng.put(NS, f"a{i}", pattern(i, BLOCK))
    first = eng.active
    dev.fail_next = True
    try:
        eng.put(NS, "roll", pattern(9, BLOCK))
        raised = False
    except StorageError:
        raised = True
    assert raised
    assert first is not None and first.builder is not None  # not sealed yet: retried later
    assert eng.get(NS, "roll") == pattern(9, BLOCK)  # written and acknowledged in the new one
    assert eng.check(deep=True) == []  # check() seals it first
    assert first.builder is None
    assert all(eng.get(NS, f"a{i}") == pattern(i, BLOCK) for i in range(3))
    eng = engines.reopen(eng, crash=True)
    assert eng.get(NS, "roll") == pattern(9, BLOCK)
    assert all(eng.get(NS, f"a{i}") == pattern(i, BLOCK) for i in range(3))


class _FullForSummaries(MemoryDevice):
    """Summary files (the seal's last step) fail with ENOSPC while ``full``, as on a full
    file system whose segment files were preallocated."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    def write_file_atomic(self, path: str, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device (test)")
        super().write_file_atomic(path, data)


def test_a_seal_a_full_disk_stops_is_pending_not_a_problem(engines: Engines) -> None:
    """A full disk that fails a background seal leaves a rolled segment unsealed: its records
    are synced and a reopen would scan it, so check() reports nothing while the disk is full,
    and seals it once there is room again."""
    dev = _FullForSummaries()
    engines.devices.append(dev)
    eng = engines.open(dev)
    for i in range(3):
        eng.put(NS, f"a{i}", pattern(i, BLOCK))
    first = eng.active
    dev.full = True
    try:
        eng.put(NS, "roll", pattern(9, BLOCK))
    except (OSError, StorageError):
        pass  # the roller hears of its seal's failure
    assert first is not None and first is not eng.active and first.builder is not None
    assert eng.check(deep=True) == []  # pending, retried: not an inconsistency
    assert all(eng.get(NS, f"a{i}") == pattern(i, BLOCK) for i in range(3))
    dev.full = False
    assert eng.check(deep=True) == []
    assert first.builder is None  # sealed now
    eng = engines.reopen(eng, crash=True)
    assert all(eng.get(NS, f"a{i}") == pattern(i, BLOCK) for i in range(3))
