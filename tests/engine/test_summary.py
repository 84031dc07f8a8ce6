"""Segment summaries: columnar round trip, CRC rejection, and load_summary's fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from kvstore.engine import format as fmt
from kvstore.engine.device import MemoryDevice
from kvstore.engine.segments import load_summary, summary_path
from kvstore.engine.summary import SegmentSummary, SummaryBuilder
from kvstore.errors import CorruptRecord


def _builder(sid: int = 5, n: int = 20) -> SummaryBuilder:
    b = SummaryBuilder(sid)
    for i in range(n):
        ns = b"ns1" if i % 3 else b"other"
        key = f"key-{i:04d}".encode()
        b.add(fmt.digest_of(ns, key), ns, key, 1 + i, 100 * i, 1000 + i, i + 1,
              1700000000.0 + i, 0.0 if i % 2 else 1800000000.5, fmt.FLAG_TOMBSTONE * (i == 7))
    return b


def test_round_trip_keeps_every_column() -> None:
    s = _builder().build(end_offset=21 * fmt.PAGE)
    back = SegmentSummary.decode(s.encode())
    assert (back.segment_id, back.end_offset, back.count) == (5, 21 * fmt.PAGE, 20)
    assert back.namespaces == [b"other", b"ns1"]
    assert back.keys == s.keys
    for name in s.cols:
        assert np.array_equal(np.asarray(back.cols[name]), np.asarray(s.cols[name])), name
    assert bytes(back.cols["digest"][4]) == fmt.digest_of(b"ns1", b"key-0004")
    assert int(back.cols["flags"][7]) == fmt.FLAG_TOMBSTONE


def test_empty_summary_round_trips() -> None:
    s = SummaryBuilder(9).build(end_offset=fmt.PAGE)
    back = SegmentSummary.decode(s.encode())
    assert back.count == 0 and back.segment_id == 9 and back.end_offset == fmt.PAGE


def test_every_flipped_byte_is_rejected() -> None:
    raw = _builder(n=4).build(6 * fmt.PAGE).encode()
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x5A
        with pytest.raises(CorruptRecord):
            SegmentSummary.decode(bytes(bad))


def test_truncated_summary_is_rejected() -> None:
    raw = _builder().build(21 * fmt.PAGE).encode()
    for cut in (0, 3, len(raw) // 2, len(raw) - 1):
        with pytest.raises(CorruptRecord):
            SegmentSummary.decode(raw[:cut])


def test_load_summary_falls_back_to_none() -> None:
    dev = MemoryDevice()
    d = "/data"
    assert load_summary(dev, d, 5) is None  # missing
    raw = _builder(sid=5).build(21 * fmt.PAGE).encode()
    dev.write_file_atomic(summary_path(d, 5), raw)
    got = load_summary(dev, d, 5)
    assert got is not None and got.count == 20
    dev.write_file_atomic(summary_path(d, 6), raw)  # a summary under another segment's name
    assert load_summary(dev, d, 6) is None
    bad = bytearray(raw)
    bad[len(bad) // 2] ^= 1
    dev.write_file_atomic(summary_path(d, 5), bytes(bad))
    assert load_summary(dev, d, 5) is None
    dev.write_file_atomic(summary_path(d, 5), b"garbage")
    assert load_summary(dev, d, 5) is None
