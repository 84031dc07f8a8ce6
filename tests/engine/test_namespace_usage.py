"""Per-namespace usage (live blocks and payload bytes) kept by the index: after puts,
overwrites, deletes, whole-segment eviction and a reopen it equals a scan (``check()`` also
compares them after every engine test)."""

from __future__ import annotations

from kvstore.engine.store import Engine

from .conftest import CAPACITY_BYTES, NS, Engines


def _scan(eng: Engine) -> dict[str, tuple[int, int]]:
    names = eng.state.catalog.id_to_name()
    out = {name: (0, 0) for name in names.values()}
    for _d, e in eng.index.items():
        n, b = out[names[e.ns]]
        out[names[e.ns]] = (n + 1, b + e.length)
    return out


def test_usage_follows_puts_overwrites_and_deletes(engines: Engines) -> None:
    eng = engines.open()
    eng.create_namespace("other")
    eng.put(NS, "a", b"x" * 1000)
    eng.put(NS, "b", b"y" * 3000)
    eng.put("other", "a", b"z" * 10)
    assert eng.namespace_usage() == {NS: (2, 4000), "other": (1, 10)}
    eng.put(NS, "a", b"w" * 500, overwrite=True)
    assert eng.namespace_usage()[NS] == (2, 3500)
    eng.delete(NS, "b")
    assert eng.namespace_usage() == {NS: (1, 500), "other": (1, 10)} == _scan(eng)
    eng = engines.reopen(eng)
    assert eng.namespace_usage() == {NS: (1, 500), "other": (1, 10)}
    eng = engines.reopen(eng, crash=True)
    assert eng.namespace_usage() == _scan(eng)


def test_usage_after_eviction_matches_a_scan(engines: Engines) -> None:
    eng = engines.open()
    block = 64 * 1024
    for i in range(3 * CAPACITY_BYTES // block):  # three times the capacity: evictions
        eng.put(NS, f"k{i}", bytes([i % 251]) * block)
    assert eng.stats()["evicted_segments"] > 0
    usage = eng.namespace_usage()
    assert usage == _scan(eng)
    assert usage[NS][1] == usage[NS][0] * block
