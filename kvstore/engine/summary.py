"""Segment summaries: the records of a sealed segment, columnar and CRC'd, so reopening a store
rebuilds the index without scanning segment payloads.

File ``seg-<id>.sum``::

    _HDR (magic, version, count, segment id, end offset, names length)
    msgpack {"ns": [namespace, ...], "keys": [key bytes, ...]}
    columns, each ``count`` long: digest (16 bytes), page (u32), length (u32), checksum (u64),
    seq (u64), created (f64), expires (f64), flags (u8), ns index (u16)
    CRC32 of everything above (u32)

A summary that fails its CRC is ignored and the segment is scanned instead: the summary is
derived data, never the only copy of anything.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import msgpack
import numpy as np

from kvstore.errors import CorruptRecord

SUMMARY_MAGIC = b"KVSSUM\x00\x01"
_HDR = struct.Struct("<8sHIQQI")
_CRC = struct.Struct("<I")

COLUMNS: tuple[tuple[str, str], ...] = (
    ("digest", "V16"), ("page", "<u4"), ("length", "<u4"), ("checksum", "<u8"),
    ("seq", "<u8"), ("created", "<f8"), ("expires", "<f8"), ("flags", "u1"), ("ns", "<u2"),
)


@dataclass
class SegmentSummary:
    segment_id: int
    end_offset: int  # first byte after the last good record
    namespaces: list[bytes]
    keys: list[bytes]
    cols: dict[str, np.ndarray]

    @property
    def count(self) -> int:
        return len(self.keys)

    def encode(self) -> bytes:
        names = msgpack.packb({"ns": self.namespaces, "keys": self.keys}, use_bin_type=True)
        parts = [_HDR.pack(SUMMARY_MAGIC, 1, self.count, self.segment_id, self.end_offset,
                           len(names)), names]
        for name, dt in COLUMNS:
            arr = np.ascontiguousarray(self.cols[name], dtype=np.dtype(dt))
            assert len(arr) == self.count, name
            parts.append(arr.tobytes())
        body = b"".join(parts)
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def decode(cls, raw: bytes) -> SegmentSummary:
        if len(raw) < _HDR.size + _CRC.size:
            raise CorruptRecord("short summary")
        (crc,) = _CRC.unpack_from(raw, len(raw) - _CRC.size)
        if zlib.crc32(memoryview(raw)[: len(raw) - _CRC.size]) != crc:
            raise CorruptRecord("summary CRC mismatch")
        magic, version, count, sid, end, names_len = _HDR.unpack_from(raw, 0)
        if magic != SUMMARY_MAGIC or version != 1:
            raise CorruptRecord("not a summary")
        p = _HDR.size
        names = msgpack.unpackb(raw[p : p + names_len], raw=True)
        p += names_len
        cols: dict[str, np.ndarray] = {}
        for name, dt in COLUMNS:
            d = np.dtype(dt)
            n = d.itemsize * count
            cols[name] = np.frombuffer(raw, dtype=d, count=count, offset=p)
            p += n
        if p != len(raw) - _CRC.size:
            raise CorruptRecord("summary length mismatch")
        return cls(sid, end, list(names[b"ns"]), list(names[b"keys"]), cols)


class SummaryBuilder:
    """Accumulates the records appended to the active segment."""

    def __init__(self, segment_id: int) -> None:
        self.segment_id = segment_id
        self._ns_ids: dict[bytes, int] = {}
        self.namespaces: list[bytes] = []
        self.keys: list[bytes] = []
        self.rows: list[tuple[bytes, int, int, int, int, float, float, int, int]] = []

    def add(self, digest: bytes, ns: bytes, key: bytes, page: int, length: int, checksum: int,
            seq: int, created: float, expires: float, flags: int) -> None:
        idx = self._ns_ids.get(ns)
        if idx is None:
            idx = self._ns_ids[ns] = len(self.namespaces)
            self.namespaces.append(ns)
        self.keys.append(key)
        self.rows.append((digest, page, length, checksum, seq, created, expires, flags, idx))

    def drop_from(self, page: int) -> None:
        """Forget the rows of records at or after ``page`` (writes that failed, or came after
        one that did: never acknowledged, so never to be indexed after a restart)."""
        keep = [i for i, r in enumerate(self.rows) if r[1] < page]
        self.rows = [self.rows[i] for i in keep]
        self.keys = [self.keys[i] for i in keep]

    def build(self, end_offset: int) -> SegmentSummary:
        cols: dict[str, np.ndarray] = {}
        for i, (name, dt) in enumerate(COLUMNS):
            if name == "digest":
                cols[name] = np.frombuffer(b"".join(r[0] for r in self.rows), dtype="V16")
            else:
                cols[name] = np.array([r[i] for r in self.rows], dtype=np.dtype(dt))
        return SegmentSummary(self.segment_id, end_offset, list(self.namespaces),
                              list(self.keys), cols)
