"""Leases (engine/leases.py): a lookup's lease pins its blocks through any amount of writes until
it expires, within the leased-bytes budget; past the budget a lookup pins fewer and says so."""

from __future__ import annotations

import pytest

from kvstore import limits
from kvstore.engine import leases as leases_mod
from kvstore.engine.leases import Leases, budget_cap_bytes, lease_span
from kvstore.engine.store import Engine

from .conftest import NS, Engines, pattern

MiB = limits.MiB
BLOCK = 256 * 1024


class FakeMonotonic:
    """Stands in for the ``time`` module inside engine/leases.py: leases expire without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _fill(eng: Engine, total: int, block: int = BLOCK, tag: str = "fill") -> None:
    """Write ``total`` bytes of other blocks, checking the capacity bound after each put."""
    for i in range(total // block):
        eng.put(NS, f"{tag}{i:05d}", pattern(i, block))
        assert eng.flash_used_bytes() <= eng.config.capacity_bytes


def _chain(eng: Engine, n: int, block: int = BLOCK, seed: int = 500) -> list[str]:
    keys = [f"lease{i:03d}" for i in range(n)]
    for i, k in enumerate(keys):
        eng.put(NS, k, pattern(seed + i, block))
    return keys


def test_leased_prefix_outlives_more_writes_than_the_store_holds(engines: Engines) -> None:
    """The issue's scenario: a 64 MiB store, 30 blocks leased for 60 s, 80 MiB written after.
    Before, reinsertion was capped at half a segment and most of the leased blocks were lost."""
    eng = engines.open(engines.device("real"), capacity_bytes=64 * MiB, segment_bytes=4 * MiB)
    chain = _chain(eng, 30)
    res = eng.lookup(NS, chain, lease_seconds=60)
    assert (res.found, res.leased, res.lease_limited(60)) == (30, 30, False)
    _fill(eng, 80 * MiB)
    st = eng.stats()
    assert st["evicted_segments"] > 0 and st["leased_moved_blocks"] >= 30
    assert st["leases_active"] == 30 and st["leased_bytes"] == 30 * lease_span(BLOCK)
    assert eng.lookup_prefix(NS, chain) == 30
    for i, k in enumerate(chain):
        assert eng.get(NS, k) == pattern(500 + i, BLOCK), k
    assert eng.check(deep=True) == []
    assert eng.get(NS, "fill00000") is None  # unleased, unread blocks were evicted as before


def test_the_budget_limits_leasing_and_the_answer_says_so(engines: Engines) -> None:
    budget = 10 * lease_span(BLOCK)
    eng = engines.open(capacity_bytes=64 * MiB, segment_bytes=4 * MiB, lease_budget_bytes=budget)
    assert eng.stats()["leased_bytes_budget"] == budget
    chain = _chain(eng, 30)
    res = eng.lookup(NS, chain, lease_seconds=60)
    assert (res.found, res.leased, res.lease_limited(60)) == (30, 10, True)
    st = eng.stats()
    assert st["leases_limited"] == 1 and st["leases_active"] == 10 and st["leased_bytes"] == budget
    again = eng.lookup(NS, chain[:10], lease_seconds=30)  # renewing needs no more budget
    assert (again.found, again.leased, again.lease_limited(30)) == (10, 10, False)
    assert eng.lookup(NS, chain, lease_seconds=0).leased == 0  # no lease asked: not limited
    _fill(eng, 80 * MiB)
    for i, k in enumerate(chain[:10]):  # the pinned prefix survives
        assert eng.get(NS, k) == pattern(500 + i, BLOCK), k
    assert eng.lookup_prefix(NS, chain) == 10  # the rest was evicted: the answer said so
    assert eng.check(deep=True) == []


def test_expired_leases_stop_pinning(engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeMonotonic()
    monkeypatch.setattr(leases_mod, "time", clock)
    eng = engines.open(capacity_bytes=64 * MiB, segment_bytes=4 * MiB)
    chain = _chain(eng, 30)
    assert eng.lookup(NS, chain, lease_seconds=5).leased == 30
    clock.now += 5.0  # the lease has ended
    st = eng.stats()
    assert st["leases_active"] == 0 and st["leased_bytes"] == 0
    _fill(eng, 80 * MiB)
    assert eng.stats()["leased_moved_blocks"] == 0
    assert all(eng.get(NS, k) is None for k in chain)  # evicted like any cold block
    assert eng.check(deep=True) == []


def test_a_store_leased_to_its_budget_keeps_taking_writes(engines: Engines) -> None:
    """Everything a client can lease is leased, again and again, while the store is rewritten
    three times over: reclaim always makes room (no CapacityExhausted), usage stays within
    capacity and every pinned block reads back exactly."""
    eng = engines.open(capacity_bytes=32 * MiB, segment_bytes=MiB,
                       lease_budget_bytes=int(limits.leased_fraction_of_capacity_max * 32 * MiB))
    pinned: dict[str, bytes] = {}
    for r in range(3):
        keys = [f"r{r}-{i:03d}" for i in range(24)]
        for i, k in enumerate(keys):
            eng.put(NS, k, pattern(r * 100 + i, BLOCK))
        res = eng.lookup(NS, list(pinned) + keys, lease_seconds=60)
        assert res.found == len(pinned) + len(keys)
        pinned.update({k: pattern(r * 100 + i, BLOCK) for i, k in
                       enumerate(keys[: res.leased - len(pinned)])})
        assert eng.stats()["leased_bytes"] <= eng.stats()["leased_bytes_budget"]
        _fill(eng, 32 * MiB, tag=f"f{r}-")
        for k, v in pinned.items():
            assert eng.get(NS, k) == v, k
        assert eng.check() == []
    st = eng.stats()
    assert st["leases_limited"] >= 1 and len(pinned) == st["leases_active"]
    assert st["leased_bytes"] > st["leased_bytes_budget"] - lease_span(BLOCK)  # leased to the brim
    assert eng.check(deep=True) == []


def test_pinned_blocks_larger_than_half_a_segment(engines: Engines) -> None:
    """The worst packing: each moved block takes a segment of its own."""
    big = 600 * 1024
    eng = engines.open(capacity_bytes=16 * MiB, segment_bytes=MiB)
    chain = _chain(eng, 12, block=big)
    res = eng.lookup(NS, chain, lease_seconds=60)
    assert 0 < res.leased < 12 and res.lease_limited(60)  # a 16-segment store leases 4 MiB
    _fill(eng, 64 * MiB, block=100_000)
    for i, k in enumerate(chain[: res.leased]):
        assert eng.get(NS, k) == pattern(500 + i, big), k
    assert eng.check(deep=True) == []


def test_few_segments_lower_the_budget(engines: Engines) -> None:
    four = engines.open(capacity_bytes=4 * MiB, segment_bytes=MiB)
    assert four.leases.budget_bytes == budget_cap_bytes(four.high_segments, 4, MiB) > 0
    chain = _chain(four, 8, block=100_000)
    res = four.lookup(NS, chain, lease_seconds=60)
    assert res.leased == four.leases.budget_bytes // lease_span(100_000) < 8
    _fill(four, 12 * MiB, block=100_000)
    for i, k in enumerate(chain[: res.leased]):
        assert four.get(NS, k) == pattern(500 + i, 100_000), k
    two = engines.open(capacity_bytes=2 * MiB, segment_bytes=MiB)
    assert two.leases.budget_bytes == 0  # reclaim of a 2-segment store can move nothing
    two.put(NS, "k", b"v")
    res = two.lookup(NS, ["k"], lease_seconds=5)
    assert (res.found, res.leased, res.lease_limited(5)) == (1, 0, True)
    full = engines.open(capacity_bytes=8 * MiB, segment_bytes=MiB, high_watermark=1.0)
    assert full.high_segments == full.max_segments and full.leases.budget_bytes == 0
    with pytest.raises(ValueError, match="lease_budget_bytes"):
        engines.config(capacity_bytes=64 * MiB, lease_budget_bytes=32 * MiB)


def test_delete_and_overwrite_end_a_lease(engines: Engines) -> None:
    eng = engines.open()
    eng.put(NS, "a", b"x" * 5000)
    eng.put(NS, "b", b"y" * 5000)
    assert eng.lookup(NS, ["a", "b"], lease_seconds=60).leased == 2
    eng.delete(NS, "a")
    eng.put(NS, "b", b"z" * 9000, overwrite=True)
    assert eng.stats()["leases_active"] == 0 and eng.stats()["leased_bytes"] == 0


def test_leases_unit() -> None:
    clock = FakeMonotonic()
    leases_mod_time = leases_mod.time
    leases_mod.time = clock  # type: ignore[assignment]
    try:
        pins = Leases(budget_bytes=3 * lease_span(100), blocks_max=10)
        items = [(bytes([i]) * 16, 1, 100) for i in range(5)]
        assert pins.take(items, 10) == 3 and pins.bytes == 3 * lease_span(100)
        assert pins.take(items[:3], 20) == 3 and pins.bytes == 3 * lease_span(100)  # renewed
        clock.now += 15
        assert pins.pinned(items[0][0], clock.now)  # the renewal holds
        pins.moving.add(1)
        assert pins.take(items[3:], 10) == 0  # blocks of a segment being reclaimed
        pins.moving.clear()
        assert pins.pop(items[0][0]) is not None and pins.bytes == 2 * lease_span(100)
        clock.now += 10
        pins.expire()
        assert len(pins) == 0 and pins.bytes == 0 and pins.check() == []
        for _ in range(3000):  # renewals do not grow the expiry heap without bound
            pins.take(items[:1], 1)
        assert len(pins._heap) <= 2 * len(pins) + 1024
    finally:
        leases_mod.time = leases_mod_time


def test_leases_taken_while_writers_roll_and_reclaim(engines: Engines) -> None:
    """Lookups pin blocks while other threads write the store over several times (rolls and
    reclaims racing with the pins): every block a lookup reported leased reads back exactly."""
    import threading
    import time

    eng = engines.open(capacity_bytes=16 * MiB, segment_bytes=MiB)
    block = 64 * 1024
    written: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    leased: dict[str, bytes] = {}
    done = threading.Event()

    def writer(t: int) -> None:
        try:
            for i in range(400):
                k, v = f"w{t}-{i:04d}", pattern(t * 1000 + i, block)
                eng.put(NS, k, v)
                with lock:
                    written.append((k, v))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def leaser() -> None:
        try:
            for _ in range(100_000):
                if done.is_set():
                    return
                time.sleep(0.001)  # let the writers move on between lookups
                with lock:
                    recent = written[-12:]
                if not recent:
                    continue
                res = eng.lookup(NS, [k for k, _v in recent], lease_seconds=60)
                leased.update(recent[: res.leased])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
    lt = threading.Thread(target=leaser)
    lt.start()
    for th in writers:
        th.start()
    for th in writers:
        th.join(120)
    done.set()
    lt.join(30)
    assert errors == []
    st = eng.stats()
    assert st["evicted_segments"] > 0 and st["leases_limited"] > 0 and leased
    assert st["leased_moved_blocks"] > 0
    assert len(leased) == st["leases_active"]
    for k, v in leased.items():
        assert eng.get(NS, k) == v, k
    assert eng.flash_used_bytes() <= eng.config.capacity_bytes
    assert eng.check(deep=True) == []
