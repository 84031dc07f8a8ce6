"""The in-memory index: a dict model checked against the numpy base + delta structure."""

from __future__ import annotations

import hashlib
import random

import numpy as np

from kvstore.engine.index import Entry, Index


def _d(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()


def _e(i: int, seg: int = 1) -> Entry:
    return Entry(seg, 1 + i % 200, i * 3, i * 7919, 0 if i % 2 else 1800000000, 1 + i % 3)


def test_insert_get_remove_in_delta_and_base() -> None:
    idx = Index(delta_max=1 << 20)
    for i in range(100):
        assert idx.insert(_d(i), _e(i)) is None
    assert len(idx) == 100
    assert idx.get(_d(5)) == _e(5)
    idx.merge()
    assert not idx.delta and len(idx) == 100
    assert idx.get(_d(5)) == _e(5) and _d(5) in idx
    # replace a base row: the old entry comes back, the new one lives in the delta
    assert idx.insert(_d(5), _e(5, seg=9)) == _e(5)
    assert idx.get(_d(5)) == _e(5, seg=9) and len(idx) == 100
    assert idx.remove(_d(6)) == _e(6)
    assert idx.remove(_d(6)) is None
    assert idx.get(_d(6)) is None and _d(6) not in idx and len(idx) == 99
    assert idx.get(_d(1000)) is None
    idx.merge()
    assert len(idx) == 99 and len(idx.base["hi"]) == 99  # dead rows dropped
    assert idx.get(_d(5)) == _e(5, seg=9)


def test_random_operations_match_a_dict() -> None:
    rng = random.Random(1)
    idx = Index(delta_max=64)  # small delta: merges happen all the time
    model: dict[bytes, Entry] = {}
    for step in range(5000):
        i = rng.randrange(400)
        op = rng.random()
        if op < 0.6:
            e = _e(i, seg=rng.randrange(1, 50))
            assert idx.insert(_d(i), e) == model.get(_d(i))
            model[_d(i)] = e
        elif op < 0.9:
            assert idx.remove(_d(i)) == model.pop(_d(i), None)
        else:
            idx.touch(_d(i))
        if step % 500 == 0:
            idx.merge()
        assert len(idx) == len(model)
    assert dict(idx.items()) == model
    for d, e in model.items():
        assert idx.get(d) == e


def test_touch_and_hits_saturate() -> None:
    idx = Index()
    idx.insert(_d(1), _e(1))
    for _ in range(300):
        idx.touch(_d(1))
    assert idx.hits(_d(1)) == 255
    idx.merge()
    assert idx.hits(_d(1)) == 255
    idx.insert(_d(2), _e(2))
    idx.merge()
    idx.touch(_d(2))
    assert idx.hits(_d(2)) == 1
    assert idx.hits(_d(3)) == 0
    idx.touch(_d(3))  # absent: no effect, no error


def test_digests_sharing_the_high_half() -> None:
    idx = Index()
    a = b"\x01" * 8 + b"\x02" * 8
    b = b"\x01" * 8 + b"\x03" * 8
    idx.insert(a, _e(1))
    idx.insert(b, _e(2))
    idx.merge()
    assert idx.get(a) == _e(1) and idx.get(b) == _e(2)
    idx.remove(a)
    assert idx.get(a) is None and idx.get(b) == _e(2)


def test_segment_digests_covers_delta_and_base() -> None:
    idx = Index()
    for i in range(10):
        idx.insert(_d(i), _e(i, seg=1 + i % 2))
    idx.merge()
    for i in range(10, 14):
        idx.insert(_d(i), _e(i, seg=2))
    idx.remove(_d(1))
    got = set(idx.segment_digests(2))
    assert got == {_d(i) for i in (3, 5, 7, 9, 10, 11, 12, 13)}
    assert set(idx.segment_digests(1)) == {_d(i) for i in (0, 2, 4, 6, 8)}
    assert idx.segment_digests(77) == []


def test_bulk_load_replaces_everything() -> None:
    idx = Index()
    idx.insert(_d(999), _e(999))
    n = 50
    digests = np.frombuffer(b"".join(_d(i) for i in range(n)), dtype="V16")
    idx.bulk_load(digests, np.full(n, 3, np.uint64), np.arange(1, n + 1, dtype=np.uint32),
                  np.arange(n, dtype=np.uint32) * 10, np.arange(n, dtype=np.uint64) + 5,
                  np.zeros(n, np.uint32), np.full(n, 2, np.uint16))
    assert len(idx) == n and idx.get(_d(999)) is None
    for i in range(n):
        assert idx.get(_d(i)) == Entry(3, i + 1, i * 10, i + 5, 0, 2)
    assert set(idx.segment_digests(3)) == {_d(i) for i in range(n)}


def test_memory_per_entry_after_merge_at_200k() -> None:
    n = 200_000
    idx = Index()
    for i in range(n):
        idx.insert(_d(i), _e(i))
    idx.merge()
    assert len(idx) == n
    per_entry = idx.memory_bytes() / n
    assert per_entry < 100, per_entry
    assert idx.get(_d(12345)) == _e(12345)


def test_present_many_matches_get_with_expiry_and_collisions() -> None:
    rng = random.Random(7)
    idx = Index(delta_max=50)
    now = 1_800_000_000
    model: dict[bytes, Entry] = {}
    # digests sharing their high half with a live or dead neighbour
    twins = [b"\x05" * 8 + bytes([i]) * 8 for i in range(6)]
    universe = [_d(i) for i in range(300)] + twins
    for step in range(3000):
        d = rng.choice(universe)
        if rng.random() < 0.7:
            e = _e(step)._replace(exp=rng.choice([0, now - 5, now, now + 5]))
            idx.insert(d, e)
            model[d] = e
        else:
            idx.remove(d)
            model.pop(d, None)
        if step % 300 == 0:
            probe = rng.sample(universe, 60) + twins
            got = idx.present_many(probe, now).tolist()
            want = [d in model and (model[d].exp == 0 or model[d].exp > now) for d in probe]
            assert got == want, step
    assert idx.present_many([], now).tolist() == []
