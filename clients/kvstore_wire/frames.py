"""Bulk frame layout: a fixed binary preamble, a msgpack header, then raw payload bytes.

Preamble (32 bytes, little-endian)::

    magic     4s   b"KVB1"
    version   B    PROTOCOL_VERSION
    type      B    FrameType
    flags     H    FrameFlags (bits no version knows must be 0; which known bits a frame type
                   may carry is the ``FLAGS`` table of ``kvstore_wire.state``)
    request   Q    request id (0 = connection-level frame)
    hdr_len   I    length of the msgpack header that follows (<= limits.frame_header_bytes_max)
    pay_len   Q    length of the raw payload after the header (bounded per frame type)
    crc       I    CRC-32 of the 28 bytes above

The header is a msgpack map (string keys). The payload is opaque bytes: one block (BLOCK) or the
concatenation of a batch's blocks (PUT_BATCH). Nothing here does I/O.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

import msgpack

from kvstore_wire import limits
from kvstore_wire.errors import LimitExceeded, ProtocolError

MAGIC = b"KVB1"
PROTOCOL_VERSION = 1

_PRE = struct.Struct("<4sBBHQIQ")
_CRC = struct.Struct("<I")
PREAMBLE_BYTES = _PRE.size + _CRC.size  # 32
assert PREAMBLE_BYTES == 32

# Request ids are u64 on the wire; 0 is reserved for connection-level frames.
REQUEST_ID_MAX = (1 << 64) - 1


class FrameType(IntEnum):
    # handshake
    HELLO = 1  # c->s: version, access key, namespace
    CHALLENGE = 2  # s->c: server nonce
    AUTH = 3  # c->s: HMAC-SHA256 over the nonce
    AUTH_OK = 4  # s->c: namespace bound, the server's flow-control window
    # requests (c->s)
    PUT_BATCH = 10
    GET_BATCH = 11
    EXISTS_BATCH = 12
    LOOKUP = 13
    DELETE_BATCH = 14
    PREFETCH = 15
    STATS = 16
    PING = 17
    SHM_REGISTER = 18  # same-host shared-memory region (kvstore.transport.shm)
    NIXL_REGISTER = 19  # a NIXL agent's metadata + its registered region (kvstore.transport.nixl)
    # responses (s->c)
    RESULT = 30  # the single, final answer of a request
    BLOCK = 31  # one block of a GET_BATCH answer (payload = block bytes)
    END = 32  # last frame of a GET_BATCH answer
    ERROR = 33  # a request failed (request id != 0) or the connection failed (request id 0)


class FrameFlags(IntFlag):
    NONE = 0
    SHM = 1  # payload lives in the registered shared-memory region, not on the socket
    NIXL = 2  # payload moves by one-sided NIXL transfers to/from the client's registered region
    OVERWRITE = 4  # PUT_BATCH: replace a stored block (without it a PUT of a present key keeps it)


FLAGS_KNOWN = int(FrameFlags.SHM) | int(FrameFlags.NIXL) | int(FrameFlags.OVERWRITE)
# What a peer of the first release knew: a server that does not advertise its flags in AUTH_OK
# refuses any other bit (decode_preamble) by closing the connection.
FLAGS_V1 = int(FrameFlags.SHM) | int(FrameFlags.NIXL)


def payload_bytes_max(ftype: FrameType) -> int:
    """Largest payload a frame of ``ftype`` may carry."""
    if ftype == FrameType.PUT_BATCH:
        return limits.batch_bytes_max
    if ftype == FrameType.BLOCK:
        return limits.block_bytes_max
    return 0


@dataclass(frozen=True, slots=True)
class Preamble:
    ftype: FrameType
    flags: int
    request_id: int
    header_length: int
    payload_length: int


def pack_header(header: dict[str, Any] | None) -> bytes:
    raw: bytes = msgpack.packb(header or {}, use_bin_type=True)
    return raw


def encode_frame(
    ftype: FrameType,
    request_id: int,
    header: dict[str, Any] | None = None,
    payload_length: int = 0,
    flags: int = 0,
) -> bytes:
    """Preamble + msgpack header. The caller writes the ``payload_length`` payload bytes next
    (vectored, from its own buffers: they are never copied into this ``bytes``)."""
    raw = pack_header(header)
    if len(raw) > limits.frame_header_bytes_max:
        raise LimitExceeded(f"frame header of {len(raw)} bytes exceeds "
                            f"{limits.frame_header_bytes_max}")
    if payload_length > payload_bytes_max(ftype) or payload_length < 0:
        raise LimitExceeded(f"{ftype.name} payload of {payload_length} bytes exceeds "
                            f"{payload_bytes_max(ftype)}")
    if not 0 <= request_id <= REQUEST_ID_MAX:
        raise ValueError("request id out of range")
    pre = _PRE.pack(MAGIC, PROTOCOL_VERSION, int(ftype), flags, request_id, len(raw),
                    payload_length)
    return pre + _CRC.pack(zlib.crc32(pre)) + raw


def decode_preamble(buf: bytes | memoryview) -> Preamble:
    """Parse and check 32 preamble bytes; ProtocolError on anything illegal."""
    if len(buf) < PREAMBLE_BYTES:
        raise ProtocolError("short preamble")
    magic, version, ftype, flags, rid, hlen, plen = _PRE.unpack_from(buf, 0)
    (crc,) = _CRC.unpack_from(buf, _PRE.size)
    if magic != MAGIC:
        raise ProtocolError("bad frame magic")
    if zlib.crc32(buf[: _PRE.size]) != crc:
        raise ProtocolError("frame preamble checksum mismatch")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version}")
    try:
        ft = FrameType(ftype)
    except ValueError:
        raise ProtocolError(f"unknown frame type {ftype}") from None
    if flags & ~FLAGS_KNOWN:
        raise ProtocolError(f"unknown frame flags {flags:#x}")
    if hlen > limits.frame_header_bytes_max:
        raise ProtocolError(f"frame header of {hlen} bytes exceeds "
                            f"{limits.frame_header_bytes_max}", bound="frame_header_bytes_max")
    if plen > payload_bytes_max(ft):
        raise ProtocolError(f"{ft.name} payload of {plen} bytes exceeds "
                            f"{payload_bytes_max(ft)}", bound="payload_bytes_max")
    return Preamble(ft, flags, rid, hlen, plen)


def decode_header(raw: bytes | memoryview) -> dict[str, Any]:
    """Unpack a msgpack header map; ProtocolError on malformed input or a non-map."""
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"malformed frame header: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame header must be a map")
    return obj
