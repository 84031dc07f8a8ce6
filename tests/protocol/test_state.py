"""The connection table: handshake order, request ids, answers, windows."""

from __future__ import annotations

import pytest

from kvstore.errors import ProtocolError
from kvstore.protocol.frames import FLAGS_KNOWN, FrameFlags
from kvstore.protocol.frames import FrameType as F
from kvstore.protocol.state import FLAGS, TRANSITIONS, Connection, Role, State


def _pair() -> tuple[Connection, Connection]:
    c, s = Connection(Role.CLIENT), Connection(Role.SERVER)
    for ftype, sender in ((F.HELLO, c), (F.CHALLENGE, s), (F.AUTH, c), (F.AUTH_OK, s)):
        sender.sent(ftype, 0)
        (s if sender is c else c).received(ftype, 0)
    return c, s


def test_handshake_reaches_ready_on_both_sides() -> None:
    c, s = _pair()
    assert c.ready and s.ready


@pytest.mark.parametrize("ftype", [F.PUT_BATCH, F.AUTH, F.CHALLENGE, F.RESULT, F.PING])
def test_nothing_but_hello_first(ftype: F) -> None:
    with pytest.raises(ProtocolError):
        Connection(Role.SERVER).received(ftype, 0 if ftype != F.PING else 1)


def test_handshake_error_closes() -> None:
    c = Connection(Role.CLIENT)
    c.sent(F.HELLO, 0)
    assert c.received(F.ERROR, 0).after is State.CLOSED
    with pytest.raises(ProtocolError):
        c.sent(F.PING, 1)


def test_request_lifecycle() -> None:
    c, s = _pair()
    for conn, send in ((c, True), (s, False)):
        (conn.sent if send else conn.received)(F.GET_BATCH, 5)
    for ftype in (F.BLOCK, F.BLOCK, F.END):
        s.sent(ftype, 5)
        c.received(ftype, 5)
    assert not c.inflight and not s.inflight
    with pytest.raises(ProtocolError, match="unknown request"):
        c.received(F.RESULT, 5)


def test_answer_must_fit_request() -> None:
    c, _ = _pair()
    c.sent(F.PUT_BATCH, 1)
    with pytest.raises(ProtocolError, match="does not answer"):
        c.received(F.BLOCK, 1)
    c2, _ = _pair()
    c2.sent(F.GET_BATCH, 1)
    with pytest.raises(ProtocolError, match="does not answer"):
        c2.received(F.RESULT, 1)


def test_duplicate_and_zero_request_ids() -> None:
    _, s = _pair()
    s.received(F.PING, 1)
    with pytest.raises(ProtocolError, match="already in flight"):
        s.received(F.PING, 1)
    with pytest.raises(ProtocolError, match="reserved"):
        s.received(F.PING, 0)


def test_window_bound() -> None:
    s = Connection(Role.SERVER, inflight_requests_max=2)
    s.received(F.HELLO, 0)
    s.sent(F.CHALLENGE, 0)
    s.received(F.AUTH, 0)
    s.sent(F.AUTH_OK, 0)
    s.received(F.PING, 1)
    s.received(F.PING, 2)
    with pytest.raises(ProtocolError, match="in flight"):
        s.received(F.PING, 3)


def test_connection_error_frame_closes() -> None:
    c, _ = _pair()
    c.sent(F.PING, 1)
    assert c.received(F.ERROR, 0).after is State.CLOSED
    assert not c.inflight


def test_server_cannot_send_requests_client_cannot_send_answers() -> None:
    c, s = _pair()
    with pytest.raises(ProtocolError):
        s.sent(F.PING, 1)
    with pytest.raises(ProtocolError):
        c.sent(F.RESULT, 1)


def test_table_is_the_only_source() -> None:
    # every state but CLOSED has at least one way out; CLOSED has none
    sources = {k[0] for k in TRANSITIONS}
    assert State.CLOSED not in sources
    assert sources == set(State) - {State.CLOSED}


SHM, NIXL, OVERWRITE = int(FrameFlags.SHM), int(FrameFlags.NIXL), int(FrameFlags.OVERWRITE)


@pytest.mark.parametrize("flags", [OVERWRITE, OVERWRITE | SHM, OVERWRITE | NIXL, SHM, NIXL, 0])
def test_put_batch_takes_overwrite_alone_or_with_one_transport(flags: int) -> None:
    c, s = _pair()
    c.sent(F.PUT_BATCH, 1, flags)
    s.received(F.PUT_BATCH, 1, flags)
    s.sent(F.RESULT, 1)
    c.received(F.RESULT, 1)
    assert not c.inflight and not s.inflight


@pytest.mark.parametrize("ftype, flags", [
    (F.GET_BATCH, OVERWRITE), (F.EXISTS_BATCH, OVERWRITE), (F.DELETE_BATCH, OVERWRITE),
    (F.PING, SHM), (F.LOOKUP, NIXL), (F.PUT_BATCH, SHM | NIXL),
    (F.GET_BATCH, SHM | NIXL | OVERWRITE)])
def test_flags_a_request_does_not_take_are_illegal(ftype: F, flags: int) -> None:
    _, s = _pair()
    with pytest.raises(ProtocolError, match="flag"):
        s.received(ftype, 1, flags)
    assert not s.inflight  # refused before it opened a request id
    c, _ = _pair()
    with pytest.raises(ProtocolError, match="flag"):  # the client refuses to send it too
        c.sent(ftype, 1, flags)


def test_answers_take_transport_flags_only() -> None:
    c, s = _pair()
    c.sent(F.GET_BATCH, 1)
    s.received(F.GET_BATCH, 1)
    s.sent(F.BLOCK, 1, SHM)
    c.received(F.BLOCK, 1, NIXL)
    with pytest.raises(ProtocolError, match="OVERWRITE"):
        c.received(F.BLOCK, 1, OVERWRITE)
    c.sent(F.PUT_BATCH, 2, OVERWRITE)
    with pytest.raises(ProtocolError, match="flag"):
        c.received(F.RESULT, 2, OVERWRITE)


def test_flag_table_names_known_bits_only() -> None:
    assert all(not bits & ~FLAGS_KNOWN for bits in FLAGS.values())
    assert {f for f, bits in FLAGS.items() if bits & OVERWRITE} == {F.PUT_BATCH}
