"""check() must see what it claims to check: break one invariant at a time and look."""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any

import pytest

from kvstore.engine import format as fmt
from kvstore.engine.index import Entry
from kvstore.engine.segments import segment_path, summary_path
from kvstore.engine.store import Engine

from .conftest import NS, Engines, pattern


@pytest.fixture
def eng(engines: Engines) -> Engine:
    e = engines.open(dram_bytes=1 << 20)
    for i in range(8):
        e.put(NS, f"k{i}", pattern(i, 50_000 + i))
    assert e.check(deep=True) == []
    return e


def _digest(key: str) -> bytes:
    return fmt.digest_of(NS.encode(), key.encode())


def _restore(engines: Engines, eng: Engine) -> None:
    """The engine's memory is broken on purpose: don't let the fixture check it."""
    engines.abandon(eng)


def test_entry_pointing_at_a_missing_segment(engines: Engines, eng: Engine) -> None:
    e = eng.index.get(_digest("k1"))
    eng.index.insert(_digest("k1"), e._replace(seg=999))
    assert any("missing segment" in p for p in eng.check())
    _restore(engines, eng)


def test_entry_beyond_the_end_of_its_segment(engines: Engines, eng: Engine) -> None:
    e = eng.index.get(_digest("k1"))
    eng.index.insert(_digest("k1"), e._replace(page=10_000))
    assert any("beyond end" in p for p in eng.check())
    _restore(engines, eng)


def test_namespace_counts(engines: Engines, eng: Engine) -> None:
    eng.ns_count[1] += 1
    assert any("namespace counts" in p for p in eng.check())
    _restore(engines, eng)


def test_unknown_namespace_id(engines: Engines, eng: Engine) -> None:
    eng.index.insert(b"\x01" * 16, Entry(eng.active.id, 1, 1, 1, 0, 77))
    assert any("unknown namespace" in p for p in eng.check())
    _restore(engines, eng)


def test_file_size_disagrees_with_segment_end(engines: Engines, eng: Engine) -> None:
    f = eng.device.files[segment_path(eng.config.data_dir, eng.active.id)]
    f.extend(b"\0" * fmt.PAGE)  # an active segment may be longer (a recycled file) ...
    assert not any("file size" in p for p in eng.check())
    del f[-2 * fmt.PAGE:]  # ... but never shorter than what was written
    assert any("file size" in p for p in eng.check())
    _restore(engines, eng)


def test_dram_accounting(engines: Engines, eng: Engine) -> None:
    eng.dram.used_bytes += 1
    assert any("dram" in p for p in eng.check())
    _restore(engines, eng)


def test_deep_check_reads_every_record(engines: Engines, eng: Engine) -> None:
    e = eng.index.get(_digest("k3"))
    f = eng.device.files[segment_path(eng.config.data_dir, e.seg)]
    f[e.page * fmt.PAGE + fmt.PAGE + 10] ^= 0xFF
    assert eng.check() == []  # the shallow check reads nothing
    deep = eng.check(deep=True)
    assert len(deep) == 1 and _digest("k3").hex() in deep[0]
    assert eng.get(NS, "k3") == pattern(3, 50_003)  # still served from the verified DRAM copy
    eng.dram.clear()
    assert eng.get(NS, "k3") is None  # flash read: verified, dropped
    assert eng.check(deep=True) == []


def test_deep_check_sees_a_record_of_another_block(engines: Engines, eng: Engine) -> None:
    a, b = eng.index.get(_digest("k1")), eng.index.get(_digest("k2"))
    eng.index.insert(_digest("k1"), a._replace(seg=b.seg, page=b.page))
    assert any("another block" in p for p in eng.check(deep=True))
    _restore(engines, eng)


def test_no_active_segment(engines: Engines, eng: Engine) -> None:
    eng.active = None
    assert any("no active segment" in p for p in eng.check())
    _restore(engines, eng)


def test_a_segment_file_it_did_not_write(engines: Engines, eng: Engine) -> None:
    """A second process on the data directory, or a file copied in: recovery would load it."""
    files = eng.device.files
    foreign = segment_path(eng.config.data_dir, 0xFF)
    files[foreign] = bytearray(files[segment_path(eng.config.data_dir, eng.active.id)])
    problems = eng.check()
    assert len(problems) == 1 and "seg-000000ff.kvs" in problems[0]
    assert "not one this engine wrote" in problems[0]
    del files[foreign]
    stray = summary_path(eng.config.data_dir, eng.active.id)  # the active one has no summary
    files[stray] = bytearray(b"x")
    assert any("belongs to no sealed segment" in p for p in eng.check())
    del files[stray]
    assert eng.check() == []


def test_a_foreign_segment_file_on_disk(engines: Engines, file_engine: Engine) -> None:
    eng = file_engine
    for i in range(30):  # 50 KB blocks into 1 MiB segments: some get sealed
        eng.put(NS, f"k{i}", pattern(i, 50_000))
    assert eng.check() == []
    data_dir = eng.config.data_dir
    assert eng.active is not None
    foreign = segment_path(data_dir, eng.active.id + 7)
    shutil.copyfile(segment_path(data_dir, eng.active.id), foreign)
    problems = eng.check()
    assert any(os.path.basename(foreign) in p and "not one this engine wrote" in p
               for p in problems), problems
    os.unlink(foreign)
    assert eng.check() == []


def test_check_waits_for_a_completed_write_to_be_published(
        engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put whose write is complete but not yet published (its writer is slow to take the
    state lock) is not a leaked pending key: check() lets it publish, then finds nothing."""
    from kvstore.engine import batch

    eng = engines.open()
    eng.put(NS, "first", b"x" * 10)
    written = threading.Event()
    real = batch._publish_chunk

    def slow_publish(*args: Any, **kw: Any) -> None:
        written.set()
        time.sleep(0.3)  # check() runs meanwhile
        real(*args, **kw)

    monkeypatch.setattr(batch, "_publish_chunk", slow_publish)
    t = threading.Thread(target=lambda: eng.put(NS, "slow", b"y" * 70_000))
    t.start()
    assert written.wait(30)
    assert eng.check() == []
    t.join(30)
    assert not t.is_alive() and eng.get(NS, "slow") == b"y" * 70_000
