"""Frame preamble/header encoding: round trips and every rejection path."""

from __future__ import annotations

import struct
import zlib

import pytest

from kvstore import limits
from kvstore.errors import LimitExceeded, ProtocolError
from kvstore.protocol.frames import (
    FLAGS_KNOWN,
    PREAMBLE_BYTES,
    FrameFlags,
    FrameType,
    decode_header,
    decode_preamble,
    encode_frame,
    payload_bytes_max,
)


def test_round_trip() -> None:
    raw = encode_frame(FrameType.BLOCK, 7, {"i": 1, "key": "ab"}, payload_length=100)
    pre = decode_preamble(raw[:PREAMBLE_BYTES])
    assert (pre.ftype, pre.request_id, pre.payload_length) == (FrameType.BLOCK, 7, 100)
    assert decode_header(raw[PREAMBLE_BYTES:PREAMBLE_BYTES + pre.header_length]) == {
        "i": 1, "key": "ab"}


def _with(raw: bytes, offset: int, fmt: str, value: int, fix_crc: bool = True) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, value)
    if fix_crc:
        struct.pack_into("<I", b, 28, zlib.crc32(bytes(b[:28])))
    return bytes(b)


@pytest.mark.parametrize("mutate, match", [
    (lambda r: b"XXXX" + r[4:], "magic"),
    (lambda r: _with(r, 4, "<B", 9), "version"),
    (lambda r: _with(r, 5, "<B", 200), "unknown frame type"),
    (lambda r: _with(r, 6, "<H", 0x80), "flags"),
    (lambda r: _with(r, 16, "<I", limits.frame_header_bytes_max + 1), "header"),
    (lambda r: _with(r, 20, "<Q", 1), "payload"),
    (lambda r: _with(r, 8, "<Q", 5, fix_crc=False), "checksum"),
])
def test_bad_preamble(mutate, match) -> None:
    raw = encode_frame(FrameType.PING, 1, {})
    with pytest.raises(ProtocolError, match=match):
        decode_preamble(mutate(raw)[:PREAMBLE_BYTES])


def test_payload_bounds_per_type() -> None:
    assert payload_bytes_max(FrameType.PUT_BATCH) == limits.batch_bytes_max
    assert payload_bytes_max(FrameType.BLOCK) == limits.block_bytes_max
    with pytest.raises(LimitExceeded):
        encode_frame(FrameType.BLOCK, 1, {}, payload_length=limits.block_bytes_max + 1)
    with pytest.raises(LimitExceeded):
        encode_frame(FrameType.PING, 1, {}, payload_length=1)


def test_header_bound_on_encode() -> None:
    with pytest.raises(LimitExceeded):
        encode_frame(FrameType.PING, 1, {"x": b"a" * (limits.frame_header_bytes_max + 1)})


@pytest.mark.parametrize("raw", [b"\xc1", b"\x93\x01\x02\x03", b"\x81\x01\x02", b"\xda\xff"])
def test_bad_header(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_header(raw)


@pytest.mark.parametrize("flags", [FrameFlags.OVERWRITE, FrameFlags.OVERWRITE | FrameFlags.SHM,
                                   FrameFlags.OVERWRITE | FrameFlags.NIXL])
def test_overwrite_flag_round_trip(flags: FrameFlags) -> None:
    raw = encode_frame(FrameType.PUT_BATCH, 3, {"keys": ["k"]}, payload_length=10,
                       flags=int(flags))
    pre = decode_preamble(raw[:PREAMBLE_BYTES])
    assert (pre.ftype, pre.flags, pre.request_id) == (FrameType.PUT_BATCH, int(flags), 3)
    assert pre.flags & FrameFlags.OVERWRITE


@pytest.mark.parametrize("bit", [1 << b for b in range(16) if not (1 << b) & FLAGS_KNOWN])
def test_every_unknown_flag_bit_is_refused(bit: int) -> None:
    raw = encode_frame(FrameType.PUT_BATCH, 1, {}, flags=bit | int(FrameFlags.OVERWRITE))
    with pytest.raises(ProtocolError, match="unknown frame flags"):
        decode_preamble(raw[:PREAMBLE_BYTES])
