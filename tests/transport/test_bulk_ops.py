"""The bulk port's request dispatch is a table: every request frame type of the connection
state table has exactly one handler, and nothing else is dispatched."""

from __future__ import annotations

from kvstore.protocol.frames import FrameType
from kvstore.protocol.state import REQUESTS
from kvstore.transport import bulk_ops


def test_every_request_type_has_one_handler_and_nothing_else_does() -> None:
    assert set(bulk_ops.HANDLERS) == set(REQUESTS)
    assert all(callable(h) for h in bulk_ops.HANDLERS.values())
    for ftype in FrameType:
        if ftype not in REQUESTS:
            assert ftype not in bulk_ops.HANDLERS, ftype
