"""Ranged reads (``Engine.read_range``, ``ranges.py``): only the chunks covering a range come
off flash, each verified whole; the bytes returned are exactly the range; a corrupt chunk is
refused (and the block tombstoned); version 1 records without a chunk table stay readable."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.device import AlignedBuffer, MemoryDevice
from kvstore.engine.segments import segment_path
from kvstore.engine.store import Engine

from .conftest import NS, CountingDevice, Engines, pattern

PAGE = fmt.PAGE
M = limits.MiB
CHUNK = limits.record_chunk_bytes
SIZE = 5 * CHUNK + 123  # six chunks, the last one partial


def _open(engines: Engines, device: object = None, **kw: object) -> tuple[Engine, CountingDevice]:
    dev = CountingDevice(device if device is not None else MemoryDevice())  # type: ignore[arg-type]
    engines.devices.append(dev)
    opts: dict[str, object] = {"segment_bytes": 64 * M, "capacity_bytes": 128 * M}
    opts.update(kw)
    return engines.open(dev, **opts), dev


def _range(eng: Engine, dev: CountingDevice, key: str, offset: int,
           length: int | None) -> tuple[bytes | None, int, int]:
    """(bytes returned or None, the view's offset, bytes the device read for it)."""
    before, counted = dev.bytes_read, eng.stats()["flash_bytes_read"]
    with eng.read_range(NS, key, offset, length) as v:
        got = None if v is None else (bytes(v.payload), v.offset)
    read = dev.bytes_read - before
    assert eng.stats()["flash_bytes_read"] - counted == read  # the engine counts what it reads
    return (None, -1, read) if got is None else (got[0], got[1], read)


def _want(data: bytes, offset: int, length: int | None) -> tuple[bytes, int]:
    """The reference answer: Python slicing, and where it starts."""
    if offset < 0:
        return data[offset:], max(0, len(data) + offset)
    return (data[offset:] if length is None else data[offset : offset + length],
            min(offset, len(data)))


def _where(eng: Engine, key: str) -> tuple[str, int]:
    e = eng.index.get(fmt.digest_of(NS.encode(), key.encode()))
    assert e is not None
    return segment_path(eng.config.data_dir, e.seg), e.page * PAGE


def test_a_100_byte_range_of_a_60_mib_block_reads_one_chunk_and_a_page(engines: Engines) -> None:
    eng, dev = _open(engines)
    data = pattern(1, 60 * M)
    assert eng.put(NS, "big", data).created
    for offset in (0, 30 * M + 5, 60 * M - 100):
        got, at, read = _range(eng, dev, "big", offset, 100)
        assert got == data[offset : offset + 100] and at == offset
        assert read <= CHUNK + PAGE, f"a 100-byte range read {read} bytes"
    before = dev.bytes_read
    with eng.read(NS, "big") as v:  # a full read still reads (and verifies) everything
        assert v is not None and v.payload == data
    assert dev.bytes_read - before >= 60 * M


@pytest.mark.parametrize(("offset", "length"), [
    (0, 100), (CHUNK - 1, 2), (CHUNK, CHUNK), (CHUNK, CHUNK + 1), (2 * CHUNK - 1, 1),
    (5 * CHUNK, 123), (5 * CHUNK + 100, None), (5 * CHUNK - 10, 50), (0, None),
    (-1, None), (-123, None), (-(CHUNK + 1), None), (-(10 * CHUNK), None),
    (SIZE, 10), (SIZE + 5, None), (0, 0), (3, 0), (0, 10 * CHUNK),
])
def test_ranges_return_exact_bytes_and_read_only_their_chunks(engines: Engines, offset: int,
                                                              length: int | None) -> None:
    eng, dev = _open(engines)
    data = pattern(2, SIZE)
    eng.put(NS, "b", data)
    got, at, read = _range(eng, dev, "b", offset, length)
    want, start = _want(data, offset, length)
    assert got == want and at == start
    if want:  # the header page and the chunks from the first to the last byte wanted
        first = start // CHUNK * CHUNK
        last = min((start + len(want) - 1) // CHUNK * CHUNK + CHUNK, SIZE)
        assert read == PAGE + fmt.align_up(last) - first
    else:  # nothing to return: the header page alone
        assert read == PAGE


def test_small_blocks_and_bad_arguments(engines: Engines) -> None:
    eng, dev = _open(engines)
    small, one = pattern(3, 1000), pattern(4, CHUNK)
    eng.put(NS, "small", small)
    eng.put(NS, "one", one)
    assert _range(eng, dev, "small", 10, 20)[:2] == (small[10:30], 10)
    got, _at, read = _range(eng, dev, "one", CHUNK - 7, None)  # one chunk: the whole record
    assert got == one[-7:] and read == PAGE + CHUNK
    assert _range(eng, dev, "absent", 0, 1)[0] is None
    from kvstore.errors import InvalidArgument

    for bad in ((0, -1), (-5, 3)):
        with pytest.raises(InvalidArgument), eng.read_range(NS, "small", *bad):
            pass


def test_a_dram_hit_is_a_slice_without_io(engines: Engines) -> None:
    eng, dev = _open(engines, dram_bytes=16 * M)
    data = pattern(5, SIZE)
    eng.put(NS, "hot", data)  # dram_on_put keeps it
    before = eng.stats()["hits_dram"]
    with eng.read_range(NS, "hot", 2 * CHUNK - 3, 10) as v:
        assert v is not None and v.stable and v.offset == 2 * CHUNK - 3
        assert bytes(v.payload) == data[2 * CHUNK - 3 : 2 * CHUNK + 7]
    assert dev.bytes_read == 0 and eng.stats()["hits_dram"] == before + 1


def _flip(path: str, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        b = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([b[0] ^ 0x40]), offset)
    finally:
        os.close(fd)


def test_a_corrupt_chunk_is_refused_and_tombstones_the_block(engines: Engines) -> None:
    eng, dev = _open(engines, engines.device("real"), segment_bytes=16 * M, capacity_bytes=32 * M)
    data, other = pattern(6, SIZE), pattern(7, SIZE)
    eng.put(NS, "bad", data)
    eng.put(NS, "good", other)
    eng.put(NS, "fill", pattern(12, 10 * M))  # rolls: the first segment is sealed
    path, off = _where(eng, "bad")
    assert eng.active is not None and path != segment_path(eng.config.data_dir, eng.active.id)
    _flip(path, off + PAGE + 2 * CHUNK + 777)  # one payload byte of chunk 2, on disk
    # Until a read touches chunk 2, ranges over intact chunks are served, verified.
    for offset, length in ((0, 100), (CHUNK, CHUNK), (3 * CHUNK, CHUNK + 5), (-50, None)):
        assert _range(eng, dev, "bad", offset, length)[0] == _want(data, offset, length)[0]
    assert eng.stats()["checksum_failures"] == 0
    # A range over the bad chunk is refused: a miss, never other bytes.
    got, _at, read = _range(eng, dev, "bad", 2 * CHUNK + 700, 100)
    assert got is None and read <= PAGE + CHUNK
    st = eng.stats()
    assert st["checksum_failures"] == 1
    # The block is corrupt, so it is gone, as after a full read that finds a bad checksum.
    assert not eng.exists(NS, "bad") and eng.get(NS, "bad") is None
    assert _range(eng, dev, "bad", 0, 100)[0] is None
    assert _range(eng, dev, "good", 2 * CHUNK + 700, 100)[0] == other[2 * CHUNK + 700 :][:100]
    eng = engines.reopen(eng)  # the tombstone keeps it gone after a restart
    assert not eng.exists(NS, "bad") and eng.get(NS, "good") == other


def test_a_straddling_range_over_a_corrupt_chunk_is_refused(engines: Engines) -> None:
    eng, dev = _open(engines)
    data = pattern(8, SIZE)
    eng.put(NS, "b", data)
    path, off = _where(eng, "b")
    assert isinstance(dev.inner, MemoryDevice)
    dev.inner.files[path][off + PAGE + 5 * CHUNK + 122] ^= 1  # the last byte of the payload
    assert _range(eng, dev, "b", 0, 5 * CHUNK)[0] == data[: 5 * CHUNK]
    assert _range(eng, dev, "b", 5 * CHUNK - 1, 2)[0] is None
    assert eng.stats()["checksum_failures"] == 1 and not eng.exists(NS, "b")


def _rewrite_as_version_1(dev: MemoryDevice, path: str, off: int) -> None:
    """Rewrite a record's header as this code's predecessor wrote it (version 1, no chunk
    table; ``test_format`` pins those bytes to a header the old code encoded)."""
    f = dev.files[path]
    hdr = fmt.RecordHeader.decode(bytes(f[off : off + PAGE]))
    old = replace(hdr, version=1, chunk_log2=0, chunks=())
    buf = AlignedBuffer(PAGE)
    try:
        n = old.encode_into(buf.view)
        end = PAGE if not old.inline else n  # an inline payload follows the header
        if not old.inline:
            buf.view[n:] = bytes(PAGE - n)
        f[off : off + end] = buf.view[:end]
    finally:
        buf.close()


def test_version_1_records_stay_readable_and_ranges_verify_the_whole_block(
        engines: Engines) -> None:
    eng, dev = _open(engines)
    big, small = pattern(9, SIZE), pattern(10, 500)
    eng.put(NS, "old-big", big)
    eng.put(NS, "old-small", small)
    where = {k: _where(eng, k) for k in ("old-big", "old-small")}
    engines.close(eng)
    assert isinstance(dev.inner, MemoryDevice)
    for path, off in where.values():
        _rewrite_as_version_1(dev.inner, path, off)
    eng = engines.open(dev, eng.config, namespace=None)  # recovery scans the old records
    assert eng.get(NS, "old-big") == big and eng.get(NS, "old-small") == small
    got, _at, read = _range(eng, dev, "old-big", CHUNK + 5, 100)
    assert got == big[CHUNK + 5 : CHUNK + 105]
    assert read >= SIZE  # no table: the range costs a full read, verified by the whole checksum
    assert _range(eng, dev, "old-small", -10, None)[0] == small[-10:]
    path, off = where["old-big"]
    dev.inner.files[path][off + PAGE + 4 * CHUNK] ^= 1
    assert _range(eng, dev, "old-big", 0, 100)[0] is None  # refused: the whole checksum fails
    assert eng.stats()["checksum_failures"] == 1 and not eng.exists(NS, "old-big")


@pytest.mark.parametrize(("meta_bytes", "chunk_log2"), [
    (2540, fmt.CHUNK_LOG2 + 1),  # room for 52 entries: 60 chunks do not fit, 30 of 2 MiB do
    # a full header page: the room kept for an encryption trailer (format.SEAL_BYTES) holds 4
    # entries, so 4 chunks of 16 MiB (a payload whose table fits nowhere has none: test_format)
    (fmt.meta_bytes_max, fmt.CHUNK_LOG2 + 4),
])
def test_a_full_header_page_takes_larger_chunks_or_none(engines: Engines, meta_bytes: int,
                                                        chunk_log2: int) -> None:
    eng, dev = _open(engines, namespace="n" * limits.namespace_bytes_max)
    ns, key = "n" * limits.namespace_bytes_max, "k" * limits.key_bytes_max
    data = pattern(11, 60 * M)
    eng.put(ns, key, data, meta=b"m" * meta_bytes)
    e = eng.index.get(fmt.digest_of(ns.encode(), key.encode()))
    assert e is not None and isinstance(dev.inner, MemoryDevice)
    f, off = dev.inner.files[segment_path(eng.config.data_dir, e.seg)], e.page * PAGE
    hdr = fmt.RecordHeader.decode(bytes(f[off : off + PAGE]))
    assert hdr.chunk_log2 == chunk_log2 and hdr.header_len <= PAGE
    before = dev.bytes_read
    with eng.read_range(ns, key, 7 * M + 3, 100) as v:
        got = None if v is None else bytes(v.payload)
    read = dev.bytes_read - before
    assert got == data[7 * M + 3 : 7 * M + 103]
    assert read < 2 << chunk_log2 if chunk_log2 else read >= 60 * M


def test_reinserted_blocks_keep_their_chunk_table(engines: Engines) -> None:
    # No lease budget: in a store this small the default one takes the whole reclaim reserve
    # and leaves nothing for hot blocks (see leases.py).
    eng, dev = _open(engines, segment_bytes=8 * M, capacity_bytes=48 * M, lease_budget_bytes=0)
    blocks = {f"b{i}": pattern(20 + i, 3 * M + 9) for i in range(12)}
    eng.put(NS, "b0", blocks["b0"])
    assert eng.get(NS, "b0") == blocks["b0"]  # read once: reclaim re-appends it
    for k in list(blocks)[1:]:
        eng.put(NS, k, blocks[k])
    assert eng.stats()["reinserted_blocks"] >= 1 and eng.exists(NS, "b0")
    got, _at, read = _range(eng, dev, "b0", 2 * M + 1, 10)
    assert got == blocks["b0"][2 * M + 1 : 2 * M + 11] and read <= PAGE + CHUNK
