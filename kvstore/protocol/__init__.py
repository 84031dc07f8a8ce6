"""Bulk protocol, sans-IO: frames, a decoder that fills caller memory, the connection table, and
every message as a frozen dataclass.

No asyncio, no sockets. The code is defined once, in the client distribution's
``kvstore_wire`` package (``clients/``): the server (``kvstore.transport``) and the client SDK
(``kvstore_client``) drive the same code with bytes they move themselves. These modules
re-export it so that server code imports ``kvstore.protocol``.
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
