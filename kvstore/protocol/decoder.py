"""Sans-IO frame decoder: defined once, in the client distribution (``kvstore_wire.decoder``)."""

from kvstore_wire.decoder import (
    NEED_DATA,
    RECV_BUFFER_BYTES,
    Decoder,
    Event,
    Frame,
    PayloadChunk,
    PayloadEnd,
)

__all__ = ["NEED_DATA", "RECV_BUFFER_BYTES", "Decoder", "Event", "Frame", "PayloadChunk",
           "PayloadEnd"]
