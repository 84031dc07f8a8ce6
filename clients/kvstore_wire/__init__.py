"""The kvstore bulk protocol, sans-IO, shared by the server and the client SDK.

Frames (``frames``), a decoder that fills caller memory (``decoder``), the connection's
transition and flag tables (``state``), every message as a frozen dataclass (``messages``:
handshake and requests; ``results``: BLOCK, END, ERROR and each RESULT), the block checksum
(``checksum``), and what both ends must agree on: keys (``keys``), errors (``errors``) and
bounds (``limits``). No asyncio, no sockets; msgpack and xxhash are its only dependencies.
The server re-exports these modules as ``kvstore.protocol``, ``kvstore.keys``,
``kvstore.errors`` and ``kvstore.limits``.
"""

from kvstore_wire.decoder import NEED_DATA, Decoder, Frame, PayloadChunk, PayloadEnd
from kvstore_wire.frames import (
    PREAMBLE_BYTES,
    PROTOCOL_VERSION,
    FrameFlags,
    FrameType,
    encode_frame,
)
from kvstore_wire.state import Connection, Role, State

__all__ = [
    "NEED_DATA", "PREAMBLE_BYTES", "PROTOCOL_VERSION", "Connection", "Decoder", "Frame",
    "FrameFlags", "FrameType", "PayloadChunk", "PayloadEnd", "Role", "State", "encode_frame",
]
