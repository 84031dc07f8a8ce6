"""list_blocks: sorted, prefix, start_after, limit, truncated; only what the index still holds."""

from __future__ import annotations

import pytest

from kvstore import limits
from kvstore.engine.store import Engine
from kvstore.errors import InvalidArgument

from .conftest import NS, Engines, pattern


def _keys(eng: Engine, **kw: object) -> tuple[list[str], bool]:
    metas, truncated = eng.list_blocks(NS, **kw)  # type: ignore[arg-type]
    return [m.key for m in metas], truncated


def test_prefix_start_after_limit_truncated(engine: Engine) -> None:
    for k in ("b/2", "a/1", "a/3", "a/2", "c", "a/10"):
        engine.put(NS, k, k.encode())
    assert _keys(engine) == (["a/1", "a/10", "a/2", "a/3", "b/2", "c"], False)
    assert _keys(engine, prefix="a/") == (["a/1", "a/10", "a/2", "a/3"], False)
    assert _keys(engine, prefix="a/", limit=2) == (["a/1", "a/10"], True)
    assert _keys(engine, prefix="a/", start_after="a/10", limit=2) == (["a/2", "a/3"], False)
    assert _keys(engine, start_after="b/2") == (["c"], False)
    assert _keys(engine, start_after="c") == ([], False)
    assert _keys(engine, prefix="zzz") == ([], False)
    assert _keys(engine, limit=0) == ([], True)
    with pytest.raises(InvalidArgument):
        engine.list_blocks(NS, limit=limits.list_keys_max + 1)
    with pytest.raises(InvalidArgument):
        engine.list_blocks(NS, limit=-1)


def test_meta_fields(engine: Engine) -> None:
    res = engine.put(NS, "k", b"12345")
    (m,), _ = engine.list_blocks(NS)
    assert (m.namespace, m.key, m.length, m.checksum, m.seq) == (NS, "k", 5, res.meta.checksum,
                                                                 res.meta.seq)


def test_listing_skips_deleted_overwritten_and_other_namespaces(engines: Engines) -> None:
    eng = engines.open()
    eng.create_namespace("other")
    for i in range(40):
        eng.put(NS, f"k{i:02d}", pattern(i, 60_000))  # spans a few sealed segments
        eng.put("other", f"k{i:02d}", b"o")
    for i in range(0, 40, 4):
        eng.delete(NS, f"k{i:02d}")
    for i in range(1, 40, 4):
        eng.put(NS, f"k{i:02d}", b"new", overwrite=True)
    want = sorted(f"k{i:02d}" for i in range(40) if i % 4)
    for _ in range(2):
        keys, truncated = _keys(eng)
        assert keys == want and not truncated
        (m,), _ = eng.list_blocks(NS, prefix="k01")
        assert m.length == 3
        eng = engines.reopen(eng)


def test_pagination_visits_every_key_once(engine: Engine) -> None:
    want = sorted(f"key-{i:03d}" for i in range(250))
    for k in reversed(want):
        engine.put(NS, k, b"x")
    seen: list[str] = []
    after = ""
    for _ in range(20):
        page, truncated = _keys(engine, start_after=after, limit=37)
        seen += page
        if not truncated:
            break
        after = page[-1]
    assert seen == want


def test_unicode_keys_sort_by_utf8_bytes(engine: Engine) -> None:
    for k in ("é", "z", "a", "日本"):
        engine.put(NS, k, b"x")
    assert _keys(engine)[0] == sorted(["é", "z", "a", "日本"], key=lambda s: s.encode())


def test_listing_while_puts_run(engines: Engines) -> None:
    """list_blocks snapshots the active segment's rows while writers append to them."""
    import sys
    import threading
    import time

    engine = engines.open(segment_bytes=32 * limits.MiB)  # many rows in the active segment

    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set() and i < 50_000:
                engine.put(NS, f"w{i:06d}", b"x" * 10)
                written.append(i)
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: a snapshot meets appends in flight
    th = threading.Thread(target=writer)
    th.start()
    try:
        deadline = time.monotonic() + 1.5
        lists = 0
        while time.monotonic() < deadline:
            keys, _ = _keys(engine, limit=5)
            assert keys == sorted(keys)
            lists += 1
    finally:
        stop.set()
        th.join(30)
        sys.setswitchinterval(old)
    assert errors == [] and lists > 0 and written
    keys, truncated = _keys(engine, prefix="w", limit=limits.list_keys_max)
    assert keys == [f"w{i:06d}" for i in range(min(len(written), limits.list_keys_max))]
