"""Decoder: events, payload straight into caller buffers, chunking, skipping, fuzzing."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore import limits
from kvstore.errors import ProtocolError
from kvstore.protocol.decoder import NEED_DATA, Decoder, Frame, PayloadChunk, PayloadEnd
from kvstore.protocol.frames import FrameType, encode_frame


def _events(dec: Decoder) -> list:
    out = []
    while (ev := dec.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def test_frames_without_payload_byte_by_byte() -> None:
    wire = encode_frame(FrameType.PING, 1, {}) + encode_frame(FrameType.STATS, 2, {"a": 1})
    dec = Decoder()
    got = []
    for i in range(len(wire)):
        dec.receive_data(wire[i:i + 1])
        got += _events(dec)
    assert [(f.ftype, f.request_id, f.header) for f in got] == [
        (FrameType.PING, 1, {}), (FrameType.STATS, 2, {"a": 1})]


def test_payload_chunks_when_no_target() -> None:
    payload = bytes(range(256)) * 1000
    wire = encode_frame(FrameType.BLOCK, 3, {"i": 0}, len(payload)) + payload
    dec = Decoder(buffer_bytes=4096)
    dec.receive_data(wire)
    evs = _events(dec)
    assert isinstance(evs[0], Frame) and evs[0].payload_length == len(payload)
    assert b"".join(e.data for e in evs if isinstance(e, PayloadChunk)) == payload
    assert isinstance(evs[-1], PayloadEnd)


def _recv_into_loop(dec: Decoder, wire: bytes, step: int, on_frame) -> list:
    """Simulate sock.recv_into: copy at most ``step`` bytes into get_buffer() each time."""
    pos, evs = 0, []
    while pos < len(wire):
        buf = dec.get_buffer()
        n = min(len(buf), step, len(wire) - pos)
        buf[:n] = wire[pos:pos + n]
        pos += n
        dec.buffer_updated(n)
        while (ev := dec.next_event()) is not NEED_DATA:
            evs.append(ev)
            if isinstance(ev, Frame) and ev.payload_length:
                on_frame(ev)
    return evs


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_payload_lands_in_targets(step: int) -> None:
    blocks = [random.Random(i).randbytes(n) for i, n in enumerate([5000, 0, 70000, 3])]
    wire = encode_frame(FrameType.PUT_BATCH, 9, {"n": 4}, sum(map(len, blocks)))
    wire += b"".join(blocks) + encode_frame(FrameType.PING, 10, {})
    dec = Decoder(buffer_bytes=1024)
    targets = [bytearray(len(b)) for b in blocks]
    evs = _recv_into_loop(dec, wire, step, lambda f: dec.set_payload_targets(*targets))
    assert [bytes(t) for t in targets] == blocks
    assert not any(isinstance(e, PayloadChunk) for e in evs)
    assert [type(e).__name__ for e in evs] == ["Frame", "PayloadEnd", "Frame"]


def test_large_payload_goes_to_target_not_internal_buffer() -> None:
    payload = b"x" * (2 * limits.MiB)
    wire = encode_frame(FrameType.BLOCK, 1, {}, len(payload)) + payload
    dec = Decoder()
    target = bytearray(len(payload))
    handed = []
    pos = 0
    while pos < len(wire):
        buf = dec.get_buffer()
        handed.append(len(buf))
        n = min(len(buf), len(wire) - pos)
        buf[:n] = wire[pos:pos + n]
        pos += n
        dec.buffer_updated(n)
        while (ev := dec.next_event()) is not NEED_DATA:
            if isinstance(ev, Frame):
                dec.set_payload_targets(target)
    assert target == payload
    # after the first 64 KiB read, the rest of the payload went straight into the target
    assert len(handed) <= 3


def test_partial_targets_then_chunks_and_skip() -> None:
    payload = b"a" * 100 + b"b" * 100
    wire = encode_frame(FrameType.PUT_BATCH, 1, {}, 200) + payload
    dec = Decoder()
    dec.receive_data(wire)
    assert isinstance(dec.next_event(), Frame)
    t = bytearray(100)
    dec.set_payload_targets(t)
    ev = dec.next_event()
    assert t == b"a" * 100 and isinstance(ev, PayloadChunk) and ev.data == b"b" * 100
    assert isinstance(dec.next_event(), PayloadEnd)

    dec = Decoder()
    dec.receive_data(wire + encode_frame(FrameType.PING, 2, {}))
    assert isinstance(dec.next_event(), Frame)
    dec.skip_payload()
    ev = dec.next_event()
    assert isinstance(ev, PayloadEnd)
    assert dec.next_event().ftype is FrameType.PING


def test_target_larger_than_payload_rejected() -> None:
    dec = Decoder()
    dec.receive_data(encode_frame(FrameType.BLOCK, 1, {}, 10))
    dec.next_event()
    with pytest.raises(ValueError):
        dec.set_payload_targets(bytearray(11))
    with pytest.raises(ValueError):
        dec.set_payload_targets(b"0123456789")  # read-only


def test_large_header_grows_buffer() -> None:
    hdr = {"keys": ["k" * 1000] * 300}
    wire = encode_frame(FrameType.EXISTS_BATCH, 1, hdr)
    dec = Decoder(buffer_bytes=1024)
    evs = _recv_into_loop(dec, wire, 999, lambda f: None)
    assert evs[0].header == hdr


def test_broken_decoder_stays_broken() -> None:
    dec = Decoder()
    dec.receive_data(b"\x00" * 64)
    with pytest.raises(ProtocolError):
        dec.next_event()
    with pytest.raises(ProtocolError):
        dec.next_event()
    with pytest.raises(ProtocolError):
        dec.get_buffer()


# --- fuzz: the decoder parses or raises ProtocolError, nothing else -----------------------

def _drive(dec: Decoder, data: bytes, use_targets: bool) -> None:
    dec.receive_data(data)
    for _ in range(10_000):
        ev = dec.next_event()
        if ev is NEED_DATA:
            return
        if use_targets and isinstance(ev, Frame) and ev.payload_length:
            dec.set_payload_targets(bytearray(ev.payload_length // 2))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.booleans())
def test_fuzz_random_bytes(data: bytes, use_targets: bool) -> None:
    try:
        _drive(Decoder(buffer_bytes=256), data, use_targets)
    except ProtocolError:
        pass


_VALID = (
    encode_frame(FrameType.HELLO, 0, {"v": 1, "access_key": "a", "namespace": "ns1"})
    + encode_frame(FrameType.PUT_BATCH, 1, {"keys": ["k"], "lengths": [5]}, 5) + b"hello"
    + encode_frame(FrameType.BLOCK, 1, {"i": 0, "len": 3}, 3) + b"abc"
    + encode_frame(FrameType.PING, 2, {})
)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=8),
       st.integers(0, len(_VALID)), st.booleans())
def test_fuzz_mutated_valid_frames(flips: list[tuple[int, int]], cut: int, use_targets: bool) -> None:
    b = bytearray(_VALID)
    for pos, val in flips:
        b[pos] = val
    try:
        _drive(Decoder(buffer_bytes=128), bytes(b[:cut]), use_targets)
    except ProtocolError:
        pass
