"""Every bulk message is a frozen dataclass with one encoder and one parser: each round-trips
through real frame bytes, every frame type has a schema, and malformed answers (results built
by hand, fuzzed) are a ProtocolError, never a wrong value or another exception."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvstore_wire import results as r

from kvstore import limits
from kvstore.errors import ChecksumMismatch, KVStoreError, ProtocolError
from kvstore.protocol import messages as m
from kvstore.protocol.decoder import NEED_DATA, Decoder, Frame
from kvstore.protocol.frames import FrameFlags, FrameType, encode_frame
from kvstore.protocol.state import FLAGS, OUT_OF_BAND_FLAGS, out_of_band

F = FrameType
NIXL, SHM, OVERWRITE = int(FrameFlags.NIXL), int(FrameFlags.SHM), int(FrameFlags.OVERWRITE)


def _through_a_frame(ftype: FrameType, header: dict[str, Any], payload: int = 0,
                     flags: int = 0) -> Frame:
    """Encode a frame, feed its bytes to a Decoder, return the decoded Frame."""
    dec = Decoder()
    dec.receive_data(encode_frame(ftype, 7, header, payload, flags) + b"\0" * payload)
    ev = dec.next_event()
    assert isinstance(ev, Frame) and ev is not NEED_DATA
    return ev


# (frame type, message, payload bytes, flags, how to parse the decoded frame)
CASES: list[tuple[FrameType, Any, int, int, Any]] = [
    (F.HELLO, m.Hello("ak", "ns-one", True), 0, 0, lambda f: m.Hello.from_header(f.header)),
    (F.CHALLENGE, m.Challenge(b"n" * m.NONCE_BYTES), 0, 0,
     lambda f: m.Challenge.from_header(f.header)),
    (F.AUTH, m.Auth(b"s" * m.SIGNATURE_BYTES), 0, 0, lambda f: m.Auth.from_header(f.header)),
    (F.AUTH_OK, m.AuthOk("t", "ns-one", m.Window(8, 1 << 20, 1 << 16, 16, 1 << 22, NIXL)), 0, 0,
     lambda f: m.AuthOk.from_header(f.header)),
    (F.PUT_BATCH, m.PutBatch(["a", "b"], [3, 0], [1, 2], 5.0), 3, 0,
     lambda f: m.PutBatch.from_header(f.header, f.payload_length, f.flags)),
    (F.PUT_BATCH, m.PutBatch(["a"], [3], [1], 0.0, [4096], True), 0, SHM | OVERWRITE,
     lambda f: m.PutBatch.from_header(f.header, f.payload_length, f.flags)),
    (F.PUT_BATCH, m.PutBatch(["a"], [3], [1], 0.0, [0]), 0, NIXL,
     lambda f: m.PutBatch.from_header(f.header, f.payload_length, f.flags)),
    (F.GET_BATCH, m.KeysRequest(["a", "b"]), 0, 0,
     lambda f: m.KeysRequest.from_header(f.header, f.ftype, f.flags)),
    (F.GET_BATCH, m.KeysRequest(["a"], 0.0, [0], [10]), 0, NIXL,
     lambda f: m.KeysRequest.from_header(f.header, f.ftype, f.flags)),
    (F.LOOKUP, m.KeysRequest(["a", "b"], 2.5), 0, 0,
     lambda f: m.KeysRequest.from_header(f.header, f.ftype, f.flags)),
    (F.EXISTS_BATCH, m.KeysRequest(["a"]), 0, 0,
     lambda f: m.KeysRequest.from_header(f.header, f.ftype)),
    (F.DELETE_BATCH, m.KeysRequest(["a"]), 0, 0,
     lambda f: m.KeysRequest.from_header(f.header, f.ftype)),
    (F.PREFETCH, m.KeysRequest(["a"]), 0, 0,
     lambda f: m.KeysRequest.from_header(f.header, f.ftype)),
    (F.PING, m.Empty(), 0, 0, lambda f: m.Empty.from_header(f.header)),
    (F.STATS, m.Empty(), 0, 0, lambda f: m.Empty.from_header(f.header)),
    (F.SHM_REGISTER, m.ShmRegister("kvstore-x", 4096), 0, 0,
     lambda f: m.ShmRegister.from_header(f.header)),
    (F.NIXL_REGISTER, m.NixlRegister(b"md", 4096, 1 << 20), 0, 0,
     lambda f: m.NixlRegister.from_header(f.header)),
    (F.BLOCK, r.BlockHeader(3, "k", 5, 99), 5, 0,
     lambda f: r.BlockHeader.from_header(f.header, f.payload_length, f.flags)),
    (F.BLOCK, r.BlockHeader(0, "k", 5, 99), 0, SHM,
     lambda f: r.BlockHeader.from_header(f.header, f.payload_length, f.flags)),
    (F.END, r.End(2), 0, 0, lambda f: r.End.from_header(f.header, 2)),
    (F.ERROR, r.ErrorInfo.of(ChecksumMismatch("bad")), 0, 0,
     lambda f: r.ErrorInfo.from_header(f.header)),
]
RESULT_CASES: list[tuple[FrameType, Any, int]] = [
    (F.PING, r.PingResult(), 0),
    (F.STATS, r.StatsResult({"blocks": 3, "hits": 1.5}, "ns-one", 3), 0),
    (F.PUT_BATCH, r.PutResult([True, False]), 2),
    (F.EXISTS_BATCH, r.ExistsResult([False, True, True]), 3),
    (F.LOOKUP, r.LookupResult(4, 2), 5),
    (F.DELETE_BATCH, r.DeleteResult(1), 2),
    (F.PREFETCH, r.PrefetchResult(2), 2),
    (F.SHM_REGISTER, r.ShmRegistered(4096), 0),
    (F.NIXL_REGISTER, r.NixlRegistered(1 << 20, "kvstore-server-1"), 0),
]


@pytest.mark.parametrize("ftype,message,payload,flags,parse", CASES,
                         ids=[f"{c[0].name}-{type(c[1]).__name__}-{c[3]}" for c in CASES])
def test_every_message_round_trips_through_frame_bytes(ftype, message, payload, flags,
                                                       parse) -> None:
    assert dataclasses.is_dataclass(message)
    assert type(message).__dataclass_params__.frozen  # type: ignore[attr-defined]
    for fld in dataclasses.fields(message):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(message, fld.name, None)
    if hasattr(message, "FRAME"):
        assert message.FRAME is ftype
    f = _through_a_frame(ftype, message.to_header(), payload, flags)
    assert parse(f) == message


@pytest.mark.parametrize("request_type,result,keys", RESULT_CASES,
                         ids=[c[0].name for c in RESULT_CASES])
def test_every_result_round_trips_through_frame_bytes(request_type, result, keys) -> None:
    assert r.RESULTS[request_type] is type(result)
    assert type(result).__dataclass_params__.frozen  # type: ignore[attr-defined]
    f = _through_a_frame(F.RESULT, result.to_header())
    assert r.parse_result(request_type, f.header, keys) == result


def test_every_frame_type_has_a_schema() -> None:
    covered = {c[0] for c in CASES} | {F.RESULT}
    assert covered == set(FrameType), set(FrameType) - covered
    # every request but GET_BATCH (answered by BLOCK ... END) has a RESULT dataclass
    from kvstore.protocol.state import REQUESTS
    assert set(r.RESULTS) == set(REQUESTS) - {F.GET_BATCH}


def test_error_info_rebuilds_the_class_and_bounds_the_message() -> None:
    info = r.ErrorInfo.of(ChecksumMismatch("x" * 5000))
    assert len(info.message) == r.ERROR_MESSAGE_CHARS_MAX
    exc = r.ErrorInfo.from_header(info.to_header()).exception()
    assert type(exc) is ChecksumMismatch
    assert type(r.ErrorInfo(9999, "Future", "m").exception()) is KVStoreError


def test_out_of_band_flags_are_the_state_tables() -> None:
    assert OUT_OF_BAND_FLAGS == SHM | NIXL
    for ftype in (F.PUT_BATCH, F.GET_BATCH, F.BLOCK):
        assert FLAGS[ftype] & OUT_OF_BAND_FLAGS == OUT_OF_BAND_FLAGS
    assert out_of_band(SHM) and out_of_band(NIXL) and not out_of_band(OVERWRITE)
    # an out-of-band frame with a socket payload is refused by the connection table
    from kvstore.protocol.state import Connection, Role
    conn = Connection(Role.SERVER)
    conn.received(F.HELLO, 0)
    conn.sent(F.CHALLENGE, 0)
    conn.received(F.AUTH, 0)
    conn.sent(F.AUTH_OK, 0)
    with pytest.raises(ProtocolError):
        conn.received(F.PUT_BATCH, 1, NIXL, payload_length=10)
    conn.received(F.PUT_BATCH, 1, NIXL, payload_length=0)


# --- malformed answers ------------------------------------------------------------------------

@pytest.mark.parametrize("request_type,header,keys", [
    (F.PUT_BATCH, {"created": [True]}, 2),  # one entry short
    (F.PUT_BATCH, {"created": [1, 0]}, 2),  # ints are not booleans
    (F.PUT_BATCH, {"created": "yes"}, 1),
    (F.PUT_BATCH, {}, 1),
    (F.EXISTS_BATCH, {"exists": [True, None]}, 2),
    (F.EXISTS_BATCH, {"exists": [True, True, True]}, 2),
    (F.LOOKUP, {"found": 6, "leased": 0}, 5),  # a prefix longer than the chain
    (F.LOOKUP, {"found": 2, "leased": 3}, 5),  # more leased than found
    (F.LOOKUP, {"found": True}, 5),  # a bool is not a count
    (F.LOOKUP, {"found": -1}, 5),
    (F.LOOKUP, {"found": 1.0}, 5),
    (F.DELETE_BATCH, {"deleted": 3}, 2),
    (F.DELETE_BATCH, {"deleted": "1"}, 2),
    (F.PREFETCH, {"staged": -2}, 2),
    (F.STATS, {"stats": [], "namespace": "n", "blocks": 0}, 0),
    (F.STATS, {"stats": {}, "namespace": "n"}, 0),
    (F.SHM_REGISTER, {"size": -1}, 0),
    (F.NIXL_REGISTER, {"size": 10, "agent": 5}, 0),
    (F.GET_BATCH, {}, 1),  # GET_BATCH is not answered by a RESULT
])
def test_malformed_results_are_protocol_errors(request_type, header, keys) -> None:
    with pytest.raises(ProtocolError):
        r.parse_result(request_type, header, keys)


@pytest.mark.parametrize("header,payload,flags", [
    ({"i": 0, "key": "k", "len": 4, "xxh": 1}, 5, 0),  # length differs from the payload
    ({"i": -1, "key": "k", "len": 4, "xxh": 1}, 4, 0),
    ({"i": 0, "key": "k", "len": limits.block_bytes_max + 1, "xxh": 1}, 0, SHM),
    ({"i": 0, "key": "k", "len": 4, "xxh": 1 << 64}, 4, 0),
    ({"i": 0, "key": b"k", "len": 4, "xxh": 1}, 4, 0),
    ({"i": True, "key": "k", "len": 4, "xxh": 1}, 4, 0),
])
def test_malformed_block_headers_are_protocol_errors(header, payload, flags) -> None:
    with pytest.raises(ProtocolError):
        r.BlockHeader.from_header(header, payload, flags)


def test_end_counts_at_most_the_keys_asked() -> None:
    with pytest.raises(ProtocolError):
        r.End.from_header({"n": 3}, 2)
    assert r.End.from_header({"n": 2}, 2) == r.End(2)


_FIELDS = ["created", "exists", "found", "leased", "deleted", "staged", "stats", "namespace",
           "blocks", "size", "agent", "n", "i", "key", "len", "xxh", "code", "name", "message",
           "tenant", "flags", "inflight_requests_max", "inflight_bytes_max", "block_bytes_max",
           "batch_keys_max", "batch_bytes_max", "shm", "nonce", "sig"]
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=12)
_headers = st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=6), _values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(header=_headers, keys=st.integers(0, 8), payload=st.integers(0, 8),
       flags=st.sampled_from([0, SHM, NIXL]))
def test_fuzzed_answers_parse_or_raise_protocol_errors(header, keys, payload, flags) -> None:
    """Whatever a peer sends, a parser answers a well-typed value or a ProtocolError."""
    parsers = [lambda h, t=t: r.parse_result(t, h, keys) for t in r.RESULTS] + [
        lambda h: r.BlockHeader.from_header(h, payload, flags),
        lambda h: r.End.from_header(h, keys),
        lambda h: r.ErrorInfo.from_header(h),
        lambda h: m.AuthOk.from_header(h),
        lambda h: m.Challenge.from_header(h),
    ]
    # decode the header from real frame bytes, as a peer's would be
    try:
        header = _through_a_frame(F.RESULT, header).header
    except Exception:  # floats like nan, or keys msgpack refuses: not a frame anyone can send
        return
    for parse in parsers:
        try:
            out = parse(header)
        except ProtocolError:
            continue
        for fld in dataclasses.fields(out):
            v = getattr(out, fld.name)
            if fld.name in ("created", "exists"):
                assert isinstance(v, list) and len(v) == keys
                assert all(type(x) is bool for x in v)
            elif fld.name in ("found", "deleted", "staged", "n"):
                assert type(v) is int and 0 <= v <= keys
