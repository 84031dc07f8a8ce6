"""Capacity: whole-segment reclaim under a small budget, reinsertion of hot and leased blocks,
and readers that hold a segment while reclaim retires it."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.device import IoOp, MemoryDevice
from kvstore.engine.segments import free_path, segment_path
from kvstore.engine.store import Engine

from .conftest import NS, SEGMENT_BYTES, Engines, active_segment_file, pattern, segment_files

CAPACITY = 8 * SEGMENT_BYTES
BLOCK = 64 * 1024


def _seg_of(eng: Engine, key: str) -> int:
    e = eng.index.get(fmt.digest_of(NS.encode(), key.encode()))
    assert e is not None
    return e.seg


def _disk_bytes(data_dir: str) -> int:
    return sum(os.path.getsize(p) for p in segment_files(data_dir))


def test_eviction_keeps_usage_under_budget_and_keeps_serving(engines: Engines) -> None:
    eng = engines.open(engines.device("real"), capacity_bytes=CAPACITY, dram_bytes=256 * 1024)
    d = eng.config.data_dir
    hot = [f"hot{i}" for i in range(4)]
    for i, k in enumerate(hot):
        eng.put(NS, k, pattern(1000 + i, BLOCK))
    total = 10 * CAPACITY
    n = total // BLOCK
    for i in range(n):
        eng.put(NS, f"b{i:05d}", pattern(i, BLOCK))
        assert eng.flash_used_bytes() <= CAPACITY
        assert _disk_bytes(d) <= CAPACITY
        if i % 8 == 0:  # the hot set is read all the time
            for j, k in enumerate(hot):
                assert eng.get(NS, k) == pattern(1000 + j, BLOCK), (i, k)
        if i % 50 == 0:
            assert eng.check() == []
    st = eng.stats()
    assert st["evicted_segments"] > 0 and st["evicted_blocks"] > 0
    assert st["reinserted_blocks"] > 0
    assert st["flash_used_bytes"] <= CAPACITY and st["segments"] <= eng.max_segments
    assert len(segment_files(d)) <= CAPACITY // SEGMENT_BYTES
    # recent blocks are served, old ones are gone (a miss, never other bytes)
    for i in range(n - 40, n):
        assert eng.get(NS, f"b{i:05d}") == pattern(i, BLOCK)
    assert eng.get(NS, "b00000") is None
    for j, k in enumerate(hot):
        assert eng.get(NS, k) == pattern(1000 + j, BLOCK)
    assert eng.count(NS) == st["blocks"] < n
    eng = engines.reopen(eng, crash=True)
    assert eng.flash_used_bytes() <= CAPACITY and _disk_bytes(d) <= CAPACITY
    for i in range(n - 40, n):
        assert eng.get(NS, f"b{i:05d}") == pattern(i, BLOCK)


def test_cold_blocks_are_not_reinserted(engines: Engines) -> None:
    eng = engines.open(capacity_bytes=CAPACITY)
    for i in range(3 * CAPACITY // BLOCK):
        eng.put(NS, f"b{i:05d}", pattern(i, BLOCK))
    st = eng.stats()
    assert st["evicted_segments"] > 0 and st["reinserted_blocks"] == 0


def test_reinsertion_off(engines: Engines) -> None:
    eng = engines.open(capacity_bytes=CAPACITY, reinsert=False)
    eng.put(NS, "hot", b"h" * BLOCK)
    for i in range(3 * CAPACITY // BLOCK):
        eng.put(NS, f"b{i:05d}", pattern(i, BLOCK))
        eng.get(NS, "hot")
    assert eng.stats()["reinserted_blocks"] == 0
    assert eng.get(NS, "hot") is None


def test_leased_blocks_survive_a_reclaim(engines: Engines) -> None:
    eng = engines.open(capacity_bytes=CAPACITY)
    chain = [f"chain{i}" for i in range(6)]
    for i, k in enumerate(chain):
        eng.put(NS, k, pattern(500 + i, 20_000))
    first_seg = _seg_of(eng, chain[0])
    assert eng.lookup_prefix(NS, chain, lease_seconds=limits.lease_seconds_max) == 6
    i = 0
    while first_seg in eng.segments:
        eng.put(NS, f"fill{i:05d}", pattern(i, BLOCK))
        i += 1
        assert i < 10 * CAPACITY // BLOCK
    assert eng.stats()["reinserted_blocks"] >= 6
    assert eng.lookup_prefix(NS, chain) == 6
    for j, k in enumerate(chain):
        assert _seg_of(eng, k) != first_seg
        assert eng.get(NS, k) == pattern(500 + j, 20_000)
    assert eng.stats()["leases_active"] == 6  # reads do not end a lease: its expiry does


def test_unleased_unread_blocks_are_evicted(engines: Engines) -> None:
    eng = engines.open(capacity_bytes=CAPACITY)
    eng.put(NS, "cold", b"c" * 20_000)
    first_seg = _seg_of(eng, "cold")
    i = 0
    while first_seg in eng.segments:
        eng.put(NS, f"fill{i:05d}", pattern(i, BLOCK))
        i += 1
    assert eng.lookup_prefix(NS, ["cold"]) == 0 and eng.get(NS, "cold") is None


def test_reader_view_stays_correct_while_its_segment_is_reclaimed(engines: Engines) -> None:
    eng = engines.open(engines.device("real"), capacity_bytes=CAPACITY, reinsert=False)
    data = pattern(7, 100_000)
    eng.put(NS, "k", data)
    sid = _seg_of(eng, "k")
    path = segment_path(eng.config.data_dir, sid)
    with eng.read(NS, "k") as view:
        assert view is not None
        i = 0
        while sid in eng.segments:
            eng.put(NS, f"fill{i:05d}", pattern(i, BLOCK))
            i += 1
        assert eng.get(NS, "k") is None  # the block is gone from the index...
        assert bytes(view.payload) == data  # ...but the bytes this reader holds are intact
        assert eng.check() == []
    assert not os.path.exists(path)
    assert eng.retired == {}


def test_a_segment_freed_by_its_last_pin_is_recycled(engines: Engines) -> None:
    """A segment retired under a pin (a G4 upload's, or a read's in flight) keeps its file for
    the next segment to overwrite once the pin goes, as an unpinned one does: a new file's
    first writes land on trimmed blocks, slower here (loadtest/results/fresh-blocks-*)."""
    eng = engines.open(engines.device("real"), capacity_bytes=CAPACITY, reinsert=False)
    d = eng.config.data_dir
    eng.put(NS, "k", pattern(7, 100_000))
    sid = _seg_of(eng, "k")
    with eng.state.lock:  # the pin a G4 upload takes (below.py) until the upload is done
        seg = eng.log.pin(sid)
    assert seg is not None
    i = 0
    while sid in eng.segments:
        eng.put(NS, f"fill{i:05d}", pattern(i, BLOCK))
        i += 1
    assert eng.retired == {sid: seg} and eng.check() == []
    eng.log.unpin(seg)
    assert eng.retired == {}
    free = [s for s in eng.log.free_files if s.id == sid]
    assert free and os.path.exists(free_path(d, sid))
    assert not os.path.exists(segment_path(d, sid))
    assert eng.check() == []
    recycled = eng.stats()["recycled_segments"]
    while free[0] in eng.log.free_files:  # the next rolls take the free files, oldest first
        eng.put(NS, f"fill{i:05d}", pattern(i, BLOCK))
        i += 1
        assert i < 10 * CAPACITY // BLOCK
    assert eng.stats()["recycled_segments"] > recycled
    assert not os.path.exists(free_path(d, sid))
    assert eng.get(NS, "k") is None  # its old record stays dead in the new segment
    assert eng.get(NS, f"fill{i - 1:05d}") == pattern(i - 1, BLOCK)
    assert eng.check() == []


class _PausingDevice(MemoryDevice):
    """Holds reads issued by the thread named ``paused-reader`` until the test lets them go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def submit(self, ops: Sequence[IoOp]) -> list[int]:
        if threading.current_thread().name == "paused-reader" and not any(o.write for o in ops):
            self.entered.set()
            assert self.release.wait(30)
        return super().submit(ops)


def test_reclaim_never_frees_a_segment_under_a_read_in_flight(engines: Engines) -> None:
    dev = _PausingDevice()
    engines.devices.append(dev)
    eng = engines.open(dev, capacity_bytes=CAPACITY, reinsert=False)
    data = pattern(9, 100_000)
    eng.put(NS, "k", data)
    sid = _seg_of(eng, "k")
    path = segment_path(eng.config.data_dir, sid)
    got: list[bytes | None] = []
    reader = threading.Thread(target=lambda: got.append(eng.get(NS, "k")), name="paused-reader")
    reader.start()
    try:
        assert dev.entered.wait(10)  # the read is in flight, holding its segment
        i = 0
        while sid in eng.segments:
            eng.put(NS, f"fill{i:05d}", pattern(i, BLOCK))
            i += 1
        assert eng.get(NS, "k") is None  # retired: gone from the index at once
        assert sid in eng.retired and eng.retired[sid].refs == 1
        assert path in dev.files  # but its file stays while the read is in flight
        assert eng.flash_used_bytes() > sum(s.end for s in eng.segments.values())
        assert eng.check() == []
    finally:
        dev.release.set()
        reader.join(30)
    assert got == [data]  # the reader gets the bytes it asked for
    assert path not in dev.files and eng.retired == {}  # and the last reader frees the file


def test_concurrent_writers_and_readers_under_a_small_budget(engines: Engines) -> None:
    """Rolls, reclaims and reinsertion while several threads append and read at once."""
    eng = engines.open(engines.device("real"), capacity_bytes=CAPACITY, dram_bytes=128 * 1024)
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(t: int) -> None:
        try:
            for i in range(250):
                key = f"t{t}-{i:04d}"
                if t == 0 and i % 4 == 0:
                    eng.put_many(NS, [(f"{key}-{j}", pattern(t * 7 + j, 20_000)) for j in range(4)])
                else:
                    eng.put(NS, key, pattern(t * 100_000 + i, 30_000 + 1000 * (i % 7)))
                assert eng.flash_used_bytes() <= CAPACITY
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                for t in (1, 2):
                    for i in range(0, 250, 5):
                        got = eng.get(NS, f"t{t}-{i:04d}")
                        want = pattern(t * 100_000 + i, 30_000 + 1000 * (i % 7))
                        assert got is None or got == want
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
    rd = threading.Thread(target=reader)
    rd.start()
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    stop.set()
    rd.join(30)
    assert errors == []
    st = eng.stats()
    assert st["evicted_segments"] > 0 and st["flash_used_bytes"] <= CAPACITY
    assert _disk_bytes(eng.config.data_dir) <= CAPACITY
    eng.put(NS, "after", pattern(5, 40_000))  # and it keeps serving
    assert eng.get(NS, "after") == pattern(5, 40_000)
    assert eng.check(deep=True) == []


def test_recycled_segment_files_never_resurrect_their_old_records(engines: Engines) -> None:
    """A full store reuses a reclaimed segment's file for the next segment (overwrites beat
    appends to new files). The old records behind the new data must stay dead, also after a
    crash that leaves them in the active segment's file."""
    dev = engines.device("real")
    eng = engines.open(dev, capacity_bytes=4 << 20, segment_bytes=1 << 20)
    written: list[str] = []
    for i in range(60):
        eng.put(NS, f"k{i}", pattern(i, 100_000))
        written.append(f"k{i}")
        if eng.stats()["recycled_segments"] >= 2 and eng.active is not None \
                and eng.active.records == 1:
            break
    assert eng.stats()["recycled_segments"] >= 2
    present = {k for k in written if eng.exists(NS, k)}
    assert written[0] not in present  # the oldest were evicted
    assert os.path.getsize(active_segment_file(eng)) > eng.active.end  # old tail still there
    eng = engines.reopen(eng, crash=True)
    for k in written:
        got = eng.get(NS, k)
        if k in present:
            assert got == pattern(int(k[1:]), 100_000)
        else:
            assert got is None and not eng.exists(NS, k), f"{k} came back from a recycled file"
