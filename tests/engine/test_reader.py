"""The read side (``reader.py``): typed read outcomes, counted apart, and explicit leases."""

from __future__ import annotations

import ast
import errno
from collections.abc import Sequence
from pathlib import Path

import pytest

from kvstore.engine import batch, reader, state
from kvstore.engine import format as fmt
from kvstore.engine.device import IoOp, MemoryDevice
from kvstore.engine.segments import segment_path
from kvstore.engine.store import Engine
from kvstore.engine.types import ReadOutcome

from .conftest import NS, SEGMENT_BYTES, Engines, pattern

ROOT = Path(__file__).resolve().parents[2]


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


class _FailingReads(MemoryDevice):
    """Fails every read while ``failing`` is set (EIO), as a dying disk would."""

    failing = False

    def submit(self, ops: Sequence[IoOp]) -> list[int]:
        if self.failing and not any(op.write for op in ops):
            return [-errno.EIO] * len(ops)
        return super().submit(ops)


def _flip_payload_byte(eng: Engine, key: str) -> None:
    e = eng.index.get(fmt.digest_of(NS.encode(), key.encode()))
    assert e is not None
    eng.device.files[segment_path(eng.config.data_dir, e.seg)][e.page * fmt.PAGE + 2 * fmt.PAGE] ^= 1  # type: ignore[attr-defined]


def test_every_miss_says_why_and_is_counted_apart(engines: Engines,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(1_800_000_000.0)
    for mod in (batch, state, reader):
        monkeypatch.setattr(mod, "time", clock)
    dev = _FailingReads()
    engines.devices.append(dev)
    eng = engines.open(dev)
    eng.put(NS, "short", b"s" * 10, ttl_seconds=5)
    eng.put(NS, "bad", pattern(1, 50_000))
    eng.put(NS, "flaky", pattern(2, 50_000))
    eng.put(NS, "good", pattern(3, 50_000))
    _flip_payload_byte(eng, "bad")
    clock.now += 10

    def outcome(key: str) -> ReadOutcome:
        lease = eng.acquire(NS, key)
        try:
            assert (lease.view is not None) == (lease.outcome is ReadOutcome.HIT)
            return lease.outcome
        finally:
            lease.release()

    assert outcome("good") is ReadOutcome.HIT
    assert outcome("never-written") is ReadOutcome.ABSENT
    assert outcome("short") is ReadOutcome.EXPIRED
    assert outcome("bad") is ReadOutcome.CORRUPT
    dev.failing = True
    assert outcome("flaky") is ReadOutcome.IO_ERROR
    dev.failing = False
    st = eng.stats()
    assert (st["misses_absent"], st["misses_expired"], st["misses_corrupt"],
            st["misses_io_error"]) == (1, 1, 1, 1)
    assert st["misses"] == 4 and st["gets"] == 5
    # what each outcome means afterwards: corrupt is dropped, an I/O error keeps the block
    assert outcome("bad") is ReadOutcome.ABSENT and outcome("short") is ReadOutcome.ABSENT
    assert eng.get(NS, "flaky") == pattern(2, 50_000)


def test_ranged_reads_have_outcomes_too(engines: Engines) -> None:
    eng = engines.open()
    eng.put(NS, "k", pattern(4, 600_000))
    with eng.acquire_range(NS, "k", 1000, 10) as view:
        assert view is not None and bytes(view.payload) == pattern(4, 1010)[1000:]
    lease = eng.acquire_range(NS, "nope", 0, 10)
    assert lease.outcome is ReadOutcome.ABSENT and lease.view is None


def test_a_lease_keeps_its_bytes_until_released_even_past_reclaim(engines: Engines) -> None:
    eng = engines.open(capacity_bytes=8 * SEGMENT_BYTES, reinsert=False)
    data = pattern(7, 100_000)
    eng.put(NS, "k", data)
    sid = eng.index.get(fmt.digest_of(NS.encode(), b"k")).seg  # type: ignore[union-attr]
    lease = eng.acquire(NS, "k")
    assert lease.found and lease.view is not None and not lease.view.stable
    i = 0
    while sid in eng.segments or i < 200:  # reclaimed, and its file recycled and rewritten
        eng.put(NS, f"fill{i:05d}", pattern(i, 64 * 1024))
        i += 1
    assert eng.get(NS, "k") is None
    assert bytes(lease.view.payload) == data  # the lease's buffer is its own
    lease.release()
    lease.release()  # idempotent: the buffer went back to the pool once
    with eng.acquire(NS, "fill00199") as view:
        assert view is not None and bytes(view.payload) == pattern(199, 64 * 1024)


def test_no_module_opens_or_closes_a_read_by_hand() -> None:
    """Reads are leases (``acquire``/``release``); no production module drives a context
    manager by calling ``__enter__``/``__exit__`` itself."""
    bad = []
    for path in sorted((ROOT / "kvstore").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("__enter__", "__exit__")):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bad == []
