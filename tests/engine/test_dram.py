"""The DRAM tier: byte budget, LRU order, location tags, accounting."""

from __future__ import annotations

from kvstore.engine.dram import DramTier


def test_budget_is_never_exceeded_and_lru_goes_first() -> None:
    t = DramTier(100)
    assert t.put(b"a", (1, 1), b"x" * 40)
    assert t.put(b"b", (1, 2), b"y" * 40)
    assert t.get(b"a", (1, 1)) == (b"x" * 40, None)  # a is now most recent
    assert t.put(b"c", (1, 3), b"z" * 40)  # evicts b, the least recently used
    assert b"b" not in t and b"a" in t and b"c" in t
    assert t.used_bytes == 80 <= t.capacity_bytes
    assert t.put(b"d", (1, 4), b"w" * 100)  # takes everything
    assert len(t) == 1 and t.used_bytes == 100
    assert t.check() == []


def test_larger_than_the_tier_is_refused() -> None:
    t = DramTier(10)
    assert not t.put(b"a", (1, 1), b"x" * 11)
    assert len(t) == 0 and t.used_bytes == 0
    zero = DramTier(0)
    assert not zero.put(b"a", (1, 1), b"x")
    assert zero.check() == []


def test_location_tag_mismatch_is_a_miss_and_drops_the_entry() -> None:
    t = DramTier(100)
    t.put(b"a", (1, 5), b"old", "meta")
    assert t.get(b"a", (1, 5)) == (b"old", "meta")
    assert t.get(b"a", (2, 1)) is None  # the index moved: the cached bytes are stale
    assert b"a" not in t and t.used_bytes == 0
    assert t.get(b"a", (1, 5)) is None


def test_refresh_discard_clear_keep_accounting() -> None:
    t = DramTier(1000)
    t.put(b"a", (1, 1), b"x" * 10)
    t.put(b"a", (1, 2), b"x" * 30)  # refresh replaces, does not double count
    assert t.used_bytes == 30 and len(t) == 1
    t.discard(b"a")
    t.discard(b"missing")
    assert t.used_bytes == 0
    t.put(b"b", (1, 1), b"y" * 5)
    t.clear()
    assert t.used_bytes == 0 and len(t) == 0
    assert t.check() == []


def test_check_reports_broken_accounting() -> None:
    t = DramTier(100)
    t.put(b"a", (1, 1), b"x" * 10)
    t.used_bytes = 11
    assert t.check() != []
