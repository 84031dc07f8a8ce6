"""Faults on real files: bit flips, torn tails, bad or missing summaries, crashes between the
steps of a segment roll. Recovery may drop blocks; it must never return other bytes."""

from __future__ import annotations

import os

import pytest

from kvstore.engine import format as fmt
from kvstore.engine.device import MemoryDevice
from kvstore.engine.segments import segment_path, summary_path
from kvstore.engine.store import Engine
from kvstore.errors import StorageError

from .conftest import NS, Engines, active_segment_file, pattern, segment_files

PAGE = fmt.PAGE


def _flip(path: str, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def _where(eng: Engine, key: str) -> tuple[str, int]:
    """(segment file, byte offset of the record) of a live block (white box)."""
    e = eng.index.get(fmt.digest_of(NS.encode(), key.encode()))
    assert e is not None
    return segment_path(eng.config.data_dir, e.seg), e.page * PAGE


def _fill(eng: Engine, n: int, size: int, prefix: str = "k") -> dict[str, bytes]:
    out = {}
    for i in range(n):
        key = f"{prefix}{i:04d}"
        out[key] = pattern(i, size)
        eng.put(NS, key, out[key])
    return out


@pytest.fixture
def real(engines: Engines) -> Engine:
    return engines.open(engines.device("real"))


@pytest.mark.parametrize("sealed", [False, True])
@pytest.mark.parametrize("where", ["payload", "header"])
def test_flipped_byte_is_a_miss_never_other_bytes(engines: Engines, real: Engine, sealed: bool,
                                                  where: str) -> None:
    eng = real
    blocks = _fill(eng, 5, 10_000)
    if sealed:
        _fill(eng, 6, 200_000, prefix="fill")  # roll: the first segment gets sealed
        assert eng.segments[eng.index.get(fmt.digest_of(b"ns1", b"k0002")).seg].builder is None
    path, off = _where(eng, "k0002")
    _flip(path, off + (PAGE + 1234 if where == "payload" else 30))
    before = eng.stats()["checksum_failures"]
    assert eng.get(NS, "k0002") is None
    st = eng.stats()
    assert st["checksum_failures"] == before + 1
    assert not eng.exists(NS, "k0002") and eng.count(NS) == len(eng.index)
    assert eng.get(NS, "k0002") is None  # the entry is gone: a plain miss now
    assert eng.stats()["checksum_failures"] == before + 1
    for k, v in blocks.items():
        if k != "k0002":
            assert eng.get(NS, k) == v
    assert eng.check(deep=True) == []


def test_flip_in_sealed_segment_seen_after_reopen(engines: Engines, real: Engine) -> None:
    blocks = _fill(real, 5, 10_000)
    _fill(real, 6, 200_000, prefix="fill")
    path, off = _where(real, "k0001")
    eng = engines.reopen(real)
    _flip(path, off + PAGE + 7)
    assert eng.check(deep=True) != []  # deep check finds it
    assert eng.get(NS, "k0001") is None
    assert eng.stats()["checksum_failures"] == 1
    for k, v in blocks.items():
        if k != "k0001":
            assert eng.get(NS, k) == v


@pytest.mark.parametrize("cut", ["mid_payload", "mid_header", "garbage", "zeros"])
def test_torn_tail_is_truncated_and_earlier_blocks_survive(engines: Engines, real: Engine,
                                                           cut: str) -> None:
    eng = real
    blocks = _fill(eng, 6, 9000)
    path = active_segment_file(eng)
    last_path, last_off = _where(eng, "k0005")
    assert last_path == path
    good_end = last_off  # everything before the last record is intact
    assert eng.active is not None
    size = eng.active.end  # the end of the last record (the file may be preallocated past it)
    engines.abandon(eng)  # crash
    with open(path, "r+b") as f:
        if cut == "mid_payload":
            f.truncate(last_off + PAGE + 100)
        elif cut == "mid_header":
            f.truncate(last_off + 20)
        elif cut == "garbage":
            f.seek(size)
            f.write(os.urandom(3 * PAGE + 77))
            good_end = size
        else:
            f.seek(size)
            f.write(bytes(2 * PAGE))
            good_end = size
    eng = engines.open(eng.device, eng.config, namespace=None)
    assert eng.active is not None and eng.active.end == good_end  # cut at the first bad record
    with open(path, "rb") as f:  # nothing of the bad tail is left (the rest is preallocated)
        f.seek(good_end)
        assert not any(f.read())
    for k, v in blocks.items():
        got = eng.get(NS, k)
        if k == "k0005" and cut.startswith("mid"):
            assert got is None
        else:
            assert got == v
    # the store keeps appending after the cut, and that survives another restart
    eng.put(NS, "after", b"a" * 5000)
    eng = engines.reopen(eng, crash=True)
    assert eng.get(NS, "after") == b"a" * 5000 and eng.get(NS, "k0004") == blocks["k0004"]


def test_record_whose_payload_never_landed_is_one_corrupt_block(engines: Engines,
                                                               real: Engine) -> None:
    """Full length on disk but the payload is stale (the header page landed, the rest not).
    Its header is intact, so it is one corrupt block, as a flipped byte would be: a miss,
    counted, and appends go on after it."""
    blocks = _fill(real, 3, 9000)
    path, off = _where(real, "k0002")
    assert real.active is not None
    end = real.active.end
    engines.abandon(real)
    with open(path, "r+b") as f:
        f.seek(off + PAGE)
        f.write(bytes(2 * PAGE))
    eng = engines.open(real.device, real.config, namespace=None)
    assert eng.get(NS, "k0002") is None and not eng.exists(NS, "k0002")
    assert eng.get(NS, "k0001") == blocks["k0001"]
    assert eng.active is not None and eng.active.end == end
    assert eng.stats()["checksum_failures"] == 1
    eng.put(NS, "after", b"a" * 5000)
    eng = engines.reopen(eng, crash=True)
    assert eng.get(NS, "after") == b"a" * 5000 and eng.get(NS, "k0002") is None


@pytest.mark.parametrize("damage", ["corrupt", "missing", "truncated", "wrong_id"])
def test_bad_or_missing_summary_means_a_scan(engines: Engines, real: Engine,
                                             damage: str) -> None:
    blocks = _fill(real, 12, 200_000)  # about three segments, two sealed
    real.delete(NS, "k0001")
    del blocks["k0001"]
    sealed = [s for s in real.segments.values() if s.builder is None]
    assert len(sealed) >= 2
    sid = sealed[0].id
    sum_path = summary_path(real.config.data_dir, sid)
    eng = engines.reopen(real)
    engines.close(eng)
    if damage == "corrupt":
        _flip(sum_path, os.path.getsize(sum_path) // 2)
    elif damage == "missing":
        os.unlink(sum_path)
    elif damage == "truncated":
        os.truncate(sum_path, 100)
    else:
        other = summary_path(real.config.data_dir, sealed[1].id)
        with open(other, "rb") as src, open(sum_path, "wb") as dst:
            dst.write(src.read())
    eng = engines.open(real.device, real.config, namespace=None)
    for k, v in blocks.items():
        assert eng.get(NS, k) == v
    assert eng.get(NS, "k0001") is None and eng.count(NS) == len(blocks)
    # the scanned segment got a fresh summary: the next open needs no scan of it
    assert os.path.exists(sum_path)
    eng = engines.reopen(eng)
    assert all(eng.get(NS, k) == v for k, v in blocks.items())


def test_corrupt_segment_header_drops_that_segment_only(engines: Engines, real: Engine) -> None:
    blocks = _fill(real, 12, 200_000)
    first = min(real.segments)
    lost = {k for k in blocks if real.index.get(fmt.digest_of(b"ns1", k.encode())).seg == first}
    assert lost and len(lost) < len(blocks)
    engines.close(real)
    _flip(segment_path(real.config.data_dir, first), 10)
    eng = engines.open(real.device, real.config, namespace=None)
    assert not os.path.exists(segment_path(real.config.data_dir, first))
    for k, v in blocks.items():
        assert eng.get(NS, k) == (None if k in lost else v)


def test_overwrite_lost_in_torn_tail_returns_an_older_version_or_nothing(
        engines: Engines, real: Engine) -> None:
    """Losing the tail reverts to an earlier prefix of history: a stale *version* may come
    back, never bytes that were not stored under the key."""
    real.put(NS, "k", b"v1" * 3000)
    _fill(real, 6, 200_000, prefix="fill")
    real.put(NS, "k", b"v2" * 3000, overwrite=True)
    path, off = _where(real, "k")
    engines.abandon(real)
    os.truncate(path, off + 100)
    eng = engines.open(real.device, real.config, namespace=None)
    assert eng.get(NS, "k") in (b"v1" * 3000, None)


def test_crash_between_roll_steps(engines: Engines, real: Engine) -> None:
    """Several unsealed segments (summaries lost) and an empty, header-less newest file."""
    blocks = _fill(real, 12, 200_000)
    d = real.config.data_dir
    engines.abandon(real)
    for p in os.listdir(d):
        if p.endswith(".sum"):
            os.unlink(os.path.join(d, p))
    newest = max(int(n[4:12], 16) for n in os.listdir(d) if n.endswith(".kvs"))
    open(segment_path(d, newest + 1), "wb").close()  # created, header never written
    open(os.path.join(d, "seg-00000099.sum"), "wb").close()  # summary of no segment
    open(os.path.join(d, "namespaces.msgpack.tmp"), "wb").close()  # interrupted catalog write
    eng = engines.open(real.device, real.config, namespace=None)
    assert all(eng.get(NS, k) == v for k, v in blocks.items())
    names = os.listdir(d)
    assert "seg-00000099.sum" not in names and "namespaces.msgpack.tmp" not in names
    assert os.path.basename(segment_path(d, newest + 1)) not in names
    # every segment but the active one is sealed again
    assert sum(1 for s in eng.segments.values() if s.builder is not None) == 1


def test_repeated_restarts_do_not_waste_segments(engines: Engines, real: Engine) -> None:
    eng = real
    eng.put(NS, "k", b"x")
    files = segment_files(eng.config.data_dir)
    for i in range(5):
        eng = engines.reopen(eng, crash=bool(i % 2))
    assert segment_files(eng.config.data_dir) == files
    assert eng.get(NS, "k") == b"x"


def test_reopen_on_memory_device_after_crash(engines: Engines) -> None:
    eng = engines.open()
    blocks = _fill(eng, 30, 70_000)
    eng.delete(NS, "k0003")
    del blocks["k0003"]
    eng = engines.reopen(eng, crash=True)
    assert {k: eng.get(NS, k) for k in blocks} == blocks
    assert eng.get(NS, "k0003") is None and eng.count(NS) == 29
    # sequence numbers keep growing after a restart
    seq = eng.put(NS, "new", b"n").meta.seq
    assert seq > max(eng.head(NS, k).seq for k in blocks)


def test_a_corrupt_block_found_by_a_read_stays_gone_after_reopen(engines: Engines) -> None:
    """The read that finds a corrupt record appends a tombstone, so a restart does not index
    the bad record again (exists/lookup_prefix would otherwise claim the block)."""
    dev = engines.device("real")
    eng = engines.open(dev)
    eng.put(NS, "good", pattern(1, 9000))
    eng.put(NS, "bad", pattern(2, 9000))
    e = eng.index.get(fmt.digest_of(NS.encode(), b"bad"))
    assert e is not None
    for i in range(20):  # roll on, so the bad record sits in a sealed segment with a summary
        eng.put(NS, f"filler{i}", pattern(i, 200_000))
    assert eng.active is not None and eng.active.id != e.seg and e.seg in eng.segments
    path = segment_path(eng.config.data_dir, e.seg)
    with open(path, "r+b") as f:  # flip a payload byte on disk
        f.seek(e.page * fmt.PAGE + fmt.PAGE + 100)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))
    assert eng.get(NS, "bad") is None
    assert eng.stats()["checksum_failures"] == 1
    eng = engines.reopen(eng)
    assert not eng.exists(NS, "bad") and eng.lookup_prefix(NS, ["bad"]) == 0
    assert eng.get(NS, "good") == pattern(1, 9000)


def test_preallocated_tail_is_not_a_torn_tail(engines: Engines, real: Engine,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A fresh segment is preallocated; a clean close trims it, a crash leaves zeros that a
    reopen drops quietly (a torn tail is warned about, preallocation is not)."""
    blocks = _fill(real, 3, 9000)
    path = active_segment_file(real)
    assert real.active is not None and os.path.getsize(path) > real.active.end
    end = real.active.end
    engines.abandon(real)  # crash: the zeros after the last record stay
    with caplog.at_level("INFO", logger="kvstore.engine"):
        eng = engines.open(real.device, real.config, namespace=None)
    assert "torn tail" not in caplog.text and "preallocated" in caplog.text
    assert eng.active is not None and eng.active.end == end
    assert all(eng.get(NS, k) == v for k, v in blocks.items())
    engines.close(eng)  # clean: the file ends at its last record
    assert os.path.getsize(path) == end


@pytest.mark.parametrize("restart", ["crash", "clean"])
def test_bad_payload_in_the_active_segment_drops_that_block_only(engines: Engines,
                                                                 real: Engine,
                                                                 restart: str) -> None:
    """One flipped payload byte is one corrupt block, not a torn tail: every later block of the
    segment survives, the loss is counted, and the block stays gone."""
    blocks = _fill(real, 8, 9000)
    path, off = _where(real, "k0002")
    assert path == active_segment_file(real)
    if restart == "crash":
        engines.abandon(real)
    else:
        engines.close(real)
    _flip(path, off + PAGE + 1234)
    eng = engines.open(real.device, real.config, namespace=None)
    assert eng.stats()["checksum_failures"] == 1
    assert eng.get(NS, "k0002") is None and not eng.exists(NS, "k0002")
    del blocks["k0002"]
    assert {k: eng.get(NS, k) for k in blocks} == blocks
    assert eng.count(NS) == len(blocks) and eng.check(deep=True) == []
    eng.put(NS, "after", pattern(9, 9000))  # appends go on in the same segment
    blocks["after"] = pattern(9, 9000)
    assert _where(eng, "after")[0] == path
    for crash in (False, True):
        eng = engines.reopen(eng, crash=crash)
        assert {k: eng.get(NS, k) for k in blocks} == blocks
        assert eng.get(NS, "k0002") is None and eng.stats()["checksum_failures"] == 1


def test_bad_payload_of_an_overwrite_does_not_bring_the_old_version_back(
        engines: Engines, real: Engine) -> None:
    """The corrupt record stands as a tombstone: the version it replaced (in an older, sealed
    segment) stays dead, now and after the active segment is sealed in turn."""
    real.put(NS, "k", b"v1" * 1500)
    _fill(real, 6, 200_000, prefix="fill")
    real.put(NS, "k", b"v2" * 1500, overwrite=True)
    later = _fill(real, 3, 9000, prefix="later")
    path, off = _where(real, "k")
    assert path == active_segment_file(real)
    engines.abandon(real)
    _flip(path, off + 500)  # inline payload: header and payload share the page
    eng = engines.open(real.device, real.config, namespace=None)
    assert eng.get(NS, "k") is None and eng.stats()["checksum_failures"] == 1
    assert {k: eng.get(NS, k) for k in later} == later
    _fill(eng, 6, 200_000, prefix="roll")  # seal the segment holding the corrupt record
    assert eng.active is not None and active_segment_file(eng) != path
    eng = engines.reopen(eng)
    assert eng.get(NS, "k") is None and not eng.exists(NS, "k")
    assert {k: eng.get(NS, k) for k in later} == later


class _ReadsFailPast(MemoryDevice):
    """Reads that reach past ``fail_from`` bytes fail with EIO (a sick disk), once armed."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_from: int | None = None

    def read_into(self, handle: int, offset: int, buf: memoryview) -> int:
        if self.fail_from is not None and offset + len(buf) > self.fail_from:
            raise StorageError("injected EIO")
        return super().read_into(handle, offset, buf)


def test_a_read_error_during_recovery_refuses_to_open_and_truncates_nothing(
        engines: Engines) -> None:
    """A failed read says nothing about the bytes behind it: recovery must not take it for a
    torn tail and cut the acknowledged blocks there. It refuses to open, and once the disk
    answers again every block is back."""
    dev = _ReadsFailPast()
    eng = engines.open(dev)
    blocks = _fill(eng, 20, 70_000)
    engines.abandon(eng)  # crash: the active segment is unsealed, so the next open scans it
    dev.fail_from = 10 * PAGE
    with pytest.raises(StorageError, match="refusing to open"):
        Engine.open(eng.config, dev)
    dev.fail_from = None
    eng = engines.open(dev, eng.config, namespace=None)  # the lock went with the failed open
    assert {k: eng.get(NS, k) for k in blocks} == blocks
