"""Bulk frame layout: defined once, in the client distribution (``kvstore_wire.frames``)."""

from kvstore_wire.frames import (
    FLAGS_KNOWN,
    FLAGS_V1,
    MAGIC,
    PREAMBLE_BYTES,
    PROTOCOL_VERSION,
    REQUEST_ID_MAX,
    FrameFlags,
    FrameType,
    Preamble,
    decode_header,
    decode_preamble,
    encode_frame,
    pack_header,
    payload_bytes_max,
)

__all__ = [
    "FLAGS_KNOWN", "FLAGS_V1", "MAGIC", "PREAMBLE_BYTES", "PROTOCOL_VERSION", "REQUEST_ID_MAX",
    "FrameFlags", "FrameType", "Preamble", "decode_header", "decode_preamble", "encode_frame",
    "pack_header", "payload_bytes_max",
]
