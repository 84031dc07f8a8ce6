"""On-disk formats: encode/decode round trips, and every flipped header byte is rejected."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.device import AlignedBuffer
from kvstore.errors import CorruptRecord

PAGE = fmt.PAGE


def _encoded(hdr: fmt.RecordHeader) -> tuple[bytes, int]:
    buf = AlignedBuffer(PAGE)
    n = hdr.encode_into(buf.view)
    raw = bytes(buf.view[:PAGE])
    buf.close()
    return raw, n


def _header(**kw: object) -> fmt.RecordHeader:
    base: dict[str, object] = dict(namespace=b"ns1", key=b"k" * 40, payload_len=9000,
                                   checksum=0x0123456789ABCDEF, seq=77, created=1700000000.25,
                                   expires=1700000100.5, meta=b"content-type: x")
    base.update(kw)
    return fmt.RecordHeader(**base)  # type: ignore[arg-type]


def test_segment_header_round_trip() -> None:
    h = fmt.SegmentHeader(segment_id=0x1234, created=1700000000.5, segment_bytes=1 << 20)
    raw = h.encode()
    assert len(raw) == PAGE
    assert fmt.SegmentHeader.decode(raw) == h


def test_segment_header_rejects_every_flipped_bit() -> None:
    raw = fmt.SegmentHeader(7, 1700000000.5, 1 << 20).encode()
    used = fmt._SEG.size + fmt._SEG_CRC.size
    for i in range(used):
        for bit in range(8):
            bad = bytearray(raw)
            bad[i] ^= 1 << bit
            with pytest.raises(CorruptRecord):
                fmt.SegmentHeader.decode(bytes(bad))
    with pytest.raises(CorruptRecord):
        fmt.SegmentHeader.decode(raw[: used - 1])


@pytest.mark.parametrize("payload_len", [0, 1, 100, PAGE, 3 * PAGE + 5])
def test_record_header_round_trip(payload_len: int) -> None:
    hdr = _header(payload_len=payload_len)
    raw, n = _encoded(hdr)
    assert n == hdr.header_len == fmt.header_len_for(hdr.namespace, hdr.key, hdr.meta)
    back = fmt.RecordHeader.decode(raw)
    assert back == hdr
    assert back.span == fmt.record_span(n, payload_len)
    assert back.span % PAGE == 0


def test_record_geometry_inline_and_paged() -> None:
    small = _header(payload_len=100, meta=b"")
    assert small.inline and small.payload_offset == small.header_len and small.span == PAGE
    big = _header(payload_len=PAGE)
    assert not big.inline and big.payload_offset == PAGE and big.span == 2 * PAGE
    exact = _header(payload_len=PAGE - _header(meta=b"").header_len, meta=b"")
    assert exact.inline and exact.span == PAGE


def test_tombstone_flag_round_trips() -> None:
    hdr = _header(payload_len=0, checksum=0, flags=fmt.FLAG_TOMBSTONE, meta=b"")
    raw, _n = _encoded(hdr)
    back = fmt.RecordHeader.decode(raw)
    assert back.tombstone and back.payload_len == 0


def test_record_header_rejects_every_flipped_bit() -> None:
    hdr = _header()
    raw, n = _encoded(hdr)
    for i in range(n):
        for bit in range(8):
            bad = bytearray(raw)
            bad[i] ^= 1 << bit
            with pytest.raises(CorruptRecord):
                fmt.RecordHeader.decode(bytes(bad))


def test_record_header_rejects_short_and_garbage_input() -> None:
    raw, n = _encoded(_header())
    with pytest.raises(CorruptRecord):
        fmt.RecordHeader.decode(raw[: n - 1])
    with pytest.raises(CorruptRecord):
        fmt.RecordHeader.decode(bytes(PAGE))
    with pytest.raises(CorruptRecord):
        fmt.RecordHeader.decode(b"\xff" * PAGE)
    with pytest.raises(CorruptRecord):
        fmt.RecordHeader.decode(b"")


def test_record_header_refuses_out_of_range_fields() -> None:
    buf = AlignedBuffer(PAGE)
    try:
        with pytest.raises(ValueError):
            _header(key=b"k" * (limits.key_bytes_max + 1)).encode_into(buf.view)
        with pytest.raises(ValueError):
            _header(meta=b"m" * (fmt.meta_bytes_max + 1)).encode_into(buf.view)
        # The largest legal header still fits in one page.
        hdr = _header(namespace=b"n" * limits.namespace_bytes_max,
                      key=b"k" * limits.key_bytes_max, meta=b"m" * fmt.meta_bytes_max)
        assert hdr.encode_into(buf.view) <= PAGE
        assert fmt.RecordHeader.decode(bytes(buf.view[:PAGE])) == hdr
    finally:
        buf.close()


def test_checksum_and_digest_are_stable() -> None:
    assert fmt.checksum(b"") == fmt.checksum(memoryview(b""))
    assert fmt.checksum(b"abc") == fmt.checksum(bytearray(b"abc"))
    d1 = fmt.digest_of(b"ns1", b"key")
    assert len(d1) == 16
    assert d1 == fmt.digest_of(b"ns1", b"key")
    # The separator keeps (ns, key) pairs apart that concatenate to the same bytes.
    assert fmt.digest_of(b"ns1", b"2key") != fmt.digest_of(b"ns12", b"key")
    assert fmt.digest_of(b"ns1", b"key") != fmt.digest_of(b"ns2", b"key")


def test_align_up() -> None:
    assert [fmt.align_up(n) for n in (0, 1, PAGE, PAGE + 1)] == [0, PAGE, PAGE, 2 * PAGE]


# A version 1 header as the code before chunk tables encoded it (5 MiB + 100 byte payload).
V1_HEADER = bytes.fromhex(
    "4b5652010100030007000200640050002a0000000000000000002040fc54d9410000000000000000efcdab89"
    "674523016e73316f6c642d6b65796d3176fdea39")


def test_version_1_headers_still_decode_and_encode_the_same() -> None:
    hdr = fmt.RecordHeader.decode(V1_HEADER + bytes(PAGE - len(V1_HEADER)))
    assert (hdr.version, hdr.namespace, hdr.key, hdr.meta) == (1, b"ns1", b"old-key", b"m1")
    assert (hdr.payload_len, hdr.checksum, hdr.seq) == (5 * limits.MiB + 100, 0x0123456789ABCDEF, 42)
    assert hdr.chunks == () and hdr.chunk_log2 == 0 and hdr.payload_offset == PAGE
    assert _encoded(hdr)[0][: len(V1_HEADER)] == V1_HEADER
    with pytest.raises(ValueError):  # version 1 has no chunk table
        _encoded(replace(hdr, chunk_log2=fmt.CHUNK_LOG2, chunks=(1,) * 6))


def _chunked(n: int) -> fmt.RecordHeader:
    log2 = fmt.chunk_log2_for(_header(meta=b"m").header_len, n)
    return _header(payload_len=n, meta=b"m", chunk_log2=log2,
                   chunks=tuple(range(1, fmt.chunk_count(n, log2) + 1)))


def test_chunk_table_round_trips_and_every_flipped_bit_is_rejected() -> None:
    hdr = _chunked(5 * limits.record_chunk_bytes + 123)
    assert hdr.version == fmt.RECORD_VERSION and len(hdr.chunks) == 6
    raw, n = _encoded(hdr)
    assert n == hdr.header_len == fmt.header_len_for(hdr.namespace, hdr.key, hdr.meta, 6)
    assert fmt.RecordHeader.decode(raw) == hdr
    for i in range(n):
        for bit in range(8):
            bad = bytearray(raw)
            bad[i] ^= 1 << bit
            with pytest.raises(CorruptRecord):
                fmt.RecordHeader.decode(bytes(bad))


def test_chunk_tables_must_match_the_payload() -> None:
    c = limits.record_chunk_bytes
    for hdr in (_header(payload_len=3 * c, chunk_log2=fmt.CHUNK_LOG2, chunks=(1, 2)),
                _header(payload_len=c, chunk_log2=fmt.CHUNK_LOG2, chunks=(1,)),  # one chunk
                _header(payload_len=3 * c, chunks=(1, 2, 3)),  # no chunk size
                _header(payload_len=3 * c, chunk_log2=5, chunks=(1,) * (3 * c >> 5))):
        with pytest.raises(ValueError):
            _encoded(hdr)


def test_chunk_size_choice() -> None:
    c, small = limits.record_chunk_bytes, _header(meta=b"").header_len
    assert fmt.chunk_log2_for(small, c) == 0  # one chunk: the payload checksum is enough
    assert fmt.chunk_log2_for(small, c + 1) == fmt.CHUNK_LOG2
    assert fmt.chunk_log2_for(small, limits.block_bytes_max) == fmt.CHUNK_LOG2
    assert fmt.chunk_log2_for(PAGE - 8 * 16, limits.block_bytes_max) == fmt.CHUNK_LOG2 + 2
    assert fmt.chunk_log2_for(PAGE - 15, limits.block_bytes_max) == 0  # not even two fit


def test_checksums_in_one_pass_match_separate_hashes() -> None:
    c = limits.record_chunk_bytes
    data = memoryview(bytes(range(256)) * ((3 * c + 77) // 256) + b"tail")
    whole, table = fmt.checksums(data, fmt.CHUNK_LOG2)
    assert whole == fmt.checksum(data)
    assert table == tuple(fmt.checksum(data[i : i + c]) for i in range(0, len(data), c))
    assert fmt.checksums(data[:100], 0) == (fmt.checksum(data[:100]), ())
