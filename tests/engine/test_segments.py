"""Segment files: names, creation, the recovery scan and header verification."""

from __future__ import annotations

from kvstore.engine import format as fmt
from kvstore.engine.device import BufferPool, MemoryDevice
from kvstore.engine.segments import (
    create_segment,
    open_existing,
    parse_segment_name,
    scan_segment,
    segment_path,
    summary_path,
)

PAGE = fmt.PAGE
D = "/data"


def test_names() -> None:
    assert segment_path(D, 0x1A) == "/data/seg-0000001a.kvs"
    assert summary_path(D, 0x1A) == "/data/seg-0000001a.sum"
    assert parse_segment_name("seg-0000001a.kvs") == 0x1A
    for bad in ("seg-0000001a.sum", "seg-1a.kvs", "seg-zzzzzzzz.kvs", "x", "seg-0000001a.kvs.tmp"):
        assert parse_segment_name(bad) is None


def _append(dev: MemoryDevice, seg, key: bytes, payload: bytes, seq: int) -> int:
    hdr = fmt.RecordHeader(b"ns1", key, len(payload), fmt.checksum(payload), seq, 1.0)
    raw = bytearray(hdr.span)
    hdr.encode_into(memoryview(raw))
    raw[hdr.payload_offset : hdr.payload_offset + len(payload)] = payload
    off = seg.end
    dev.files[seg.path][off : off + len(raw)] = raw
    seg.end += len(raw)
    return off


def test_create_scan_and_stop_at_the_first_bad_header() -> None:
    dev, pool = MemoryDevice(), BufferPool()
    seg = create_segment(dev, D, 3, 1 << 20, pool, first_seq=1)
    assert seg.end == PAGE and len(dev.files[seg.path]) == PAGE
    offs = [_append(dev, seg, f"k{i}".encode(), bytes([i]) * (3000 + 4000 * i), i + 1)
            for i in range(4)]
    scan = scan_segment(dev, seg, pool)
    assert scan.end == seg.end and scan.builder.keys == [b"k0", b"k1", b"k2", b"k3"]
    assert [r[1] for r in scan.builder.rows] == [o // PAGE for o in offs]
    assert scan.corrupt == []
    # A bad payload under an intact header is one corrupt block: a tombstone row, and on.
    dev.files[seg.path][offs[2] + PAGE + 5] ^= 1  # payload of k2
    scan = scan_segment(dev, seg, pool)
    assert scan.end == seg.end and scan.builder.keys == [b"k0", b"k1", b"k2", b"k3"]
    assert scan.corrupt == [offs[2]]
    row = scan.builder.rows[2]
    assert row[1] == offs[2] // PAGE and row[7] & fmt.FLAG_TOMBSTONE and row[2] == 0
    assert not any(r[7] & fmt.FLAG_TOMBSTONE for i, r in enumerate(scan.builder.rows) if i != 2)
    dev.files[seg.path][offs[3] + PAGE + 9] ^= 1  # the last record: the same, its header holds
    scan = scan_segment(dev, seg, pool)
    assert scan.end == seg.end and scan.corrupt == [offs[2], offs[3]]
    dev.files[seg.path][offs[1] + 3] ^= 1  # header of k1: the scan cannot cross it
    scan = scan_segment(dev, seg, pool)
    assert scan.end == offs[1] and scan.builder.keys == [b"k0"]


def test_scan_stops_at_a_record_longer_than_the_file() -> None:
    dev, pool = MemoryDevice(), BufferPool()
    seg = create_segment(dev, D, 1, 1 << 20, pool, first_seq=1)
    _append(dev, seg, b"a", b"x" * 100, 1)
    off = _append(dev, seg, b"b", b"y" * 20_000, 2)
    del dev.files[seg.path][off + PAGE + 100 :]
    scan = scan_segment(dev, seg, pool)
    assert scan.end == off and scan.builder.keys == [b"a"]


def test_open_existing_verifies_the_header() -> None:
    dev, pool = MemoryDevice(), BufferPool()
    seg = create_segment(dev, D, 5, 1 << 20, pool, first_seq=1)
    again = open_existing(dev, D, 5, pool)
    assert again is not None and again.id == 5 and again.created == seg.created
    dev.files[segment_path(D, 6)] = bytearray(dev.files[seg.path])  # a copy under another id
    assert open_existing(dev, D, 6, pool) is None
    assert segment_path(D, 6) not in dev.files  # unusable files are removed
    dev.files[segment_path(D, 7)] = bytearray(b"short")
    assert open_existing(dev, D, 7, pool) is None
