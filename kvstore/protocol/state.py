"""The bulk connection's transition and flag tables: defined once, in the client distribution
(``kvstore_wire.state``)."""

from kvstore_wire.state import (
    ANSWERS,
    EXCLUSIVE_FLAGS,
    FLAGS,
    OUT_OF_BAND_FLAGS,
    REQUESTS,
    TRANSITIONS,
    Connection,
    Dir,
    Req,
    Role,
    State,
    Transition,
    check_flags,
    out_of_band,
    overwrite,
)

__all__ = [
    "ANSWERS", "EXCLUSIVE_FLAGS", "FLAGS", "OUT_OF_BAND_FLAGS", "REQUESTS", "TRANSITIONS",
    "Connection", "Dir", "Req", "Role", "State", "Transition", "check_flags", "out_of_band",
    "overwrite",
]
