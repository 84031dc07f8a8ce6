"""Bulk protocol, sans-IO: frames, a decoder that fills caller memory, the connection table.

No asyncio, no sockets: the server (``kvstore.transport``) and the client SDK
(``kvstore_client``) both drive this code with bytes they move themselves.
"""

from kvstore.protocol.decoder import NEED_DATA, Decoder, Frame, PayloadChunk, PayloadEnd
from kvstore.protocol.frames import (
    PREAMBLE_BYTES,
    PROTOCOL_VERSION,
    FrameFlags,
    FrameType,
    encode_frame,
)
from kvstore.protocol.state import Connection, Role, State

__all__ = [
    "NEED_DATA", "PREAMBLE_BYTES", "PROTOCOL_VERSION", "Connection", "Decoder", "Frame",
    "FrameFlags", "FrameType", "PayloadChunk", "PayloadEnd", "Role", "State", "encode_frame",
]
