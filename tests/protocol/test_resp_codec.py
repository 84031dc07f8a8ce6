"""The sans-IO RESP codec: commands round-trip at every split, arbitrary bytes never crash it
(a command or ProtocolError, nothing else), the bounds hold, and replies parse with hiredis
(the parser redis-py uses)."""

from __future__ import annotations

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore import limits
from kvstore.errors import ProtocolError
from kvstore.protocol import resp

args_st = st.lists(st.binary(max_size=64), min_size=1, max_size=8)


def decode_all(data: bytes, step: int | None = None) -> list[list[bytes]]:
    dec = resp.RespDecoder()
    out: list[resp.Command] = []
    if step is None:
        out = dec.receive_data(data)
    else:
        for i in range(0, len(data), step):
            out += dec.receive_data(data[i:i + step])
    return [[resp.arg_bytes(a) for a in c.args] for c in out]


@given(st.lists(args_st, min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_commands_round_trip_at_every_split(cmds: list[list[bytes]]) -> None:
    data = b"".join(resp.encode_command(c) for c in cmds)
    assert decode_all(data) == cmds
    assert decode_all(data, step=1) == cmds
    for cut in range(len(data) + 1):  # two reads, split at every byte
        dec = resp.RespDecoder()
        got = dec.receive_data(data[:cut]) + dec.receive_data(data[cut:])
        assert [[resp.arg_bytes(a) for a in c.args] for c in got] == cmds


@given(st.binary(max_size=512))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    dec = resp.RespDecoder()
    try:
        for c in dec.receive_data(data):
            assert isinstance(c, resp.Command) and c.args
    except ProtocolError:
        pass


@given(st.lists(st.binary(min_size=1, max_size=32).filter(lambda b: not any(
    ch in b for ch in b" \t\r\n\x0b\x0c") and b[:1] != b"*"), min_size=1, max_size=5))
def test_inline_commands(words: list[bytes]) -> None:
    got = resp.RespDecoder().receive_data(b" ".join(words) + b"\r\n")
    assert len(got) == 1 and got[0].inline and list(got[0].args) == words


def test_long_bulk_lands_in_the_allocated_buffer() -> None:
    allocated: list[int] = []

    class Buf:
        def __init__(self, n: int) -> None:
            allocated.append(n)
            self.view = memoryview(bytearray(n + 4096))

    value = bytes(range(256)) * 1024  # 256 KiB, over resp_direct_bytes_min
    data = resp.encode_command([b"SET", b"k", value])
    dec = resp.RespDecoder(Buf)
    cmds = []
    for i in range(0, len(data), 1000):
        cmds += dec.receive_data(data[i:i + 1000])
    (cmd,) = cmds
    assert allocated == [len(value)]
    big = cmd.args[2]
    assert isinstance(big, resp.Bulk) and bytes(big) == value and cmd.buffers() == [big.buffer]


def test_oversized_value_is_skipped_and_flagged() -> None:
    n = limits.resp_bulk_bytes_max + 1
    data = (resp.array_header(3) + resp.bulk(b"SET") + resp.bulk(b"k") + resp.bulk_header(n)
            + b"\0" * n + b"\r\n" + resp.encode_command([b"PING"]))
    dec = resp.RespDecoder()
    cmds = []
    for i in range(0, len(data), 1 << 20):
        cmds += dec.receive_data(data[i:i + (1 << 20)])
    assert [c.name for c in cmds] == ["SET", "PING"]
    assert cmds[0].oversized == n and cmds[0].args[2] == b"" and cmds[1].oversized == 0


@pytest.mark.parametrize("data", [
    b"*1\r\n$" + str(limits.resp_oversized_skip_bytes_max + 1).encode() + b"\r\n",
    b"*" + str(limits.resp_array_len_max + 1).encode() + b"\r\n",
    b"*1\r\n$-5\r\n",
    b"*1\r\n:3\r\n",
    b"*x\r\n",
    b"*1\r\n$3\r\nabcXY",
    b"*" + b"1" * (limits.resp_header_bytes_max + 8),
    b"GET " + b"k" * limits.resp_inline_bytes_max,
])
def test_malformed_input_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        resp.RespDecoder().receive_data(data)


def test_command_bytes_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """All bulk bytes of one command are bounded (checked at each header, before any is
    allocated); the bound is read from ``kvstore.limits`` at use, so a small one tests it."""
    monkeypatch.setattr(limits, "resp_command_bytes_max", 100)
    ok = resp.encode_command([b"MSET", b"a" * 40, b"b" * 40])
    assert len(resp.RespDecoder().receive_data(ok)) == 1
    with pytest.raises(ProtocolError):
        resp.RespDecoder().receive_data(resp.encode_command([b"MSET", b"a" * 40, b"b" * 60]))


def test_incomplete_input_waits() -> None:
    dec = resp.RespDecoder()
    assert dec.receive_data(b"*2\r\n$3\r\nGET\r\n$1\r") == []
    assert dec.in_command
    assert [c.name for c in dec.receive_data(b"\nk\r\n")] == ["GET"]
    assert not dec.in_command


@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.binary(max_size=32),
    lambda kids: st.lists(kids, max_size=4), max_leaves=12), st.sampled_from([2, 3]))
def test_replies_parse_with_hiredis(value: object, proto: int) -> None:
    reader = hiredis.Reader()
    reader.feed(resp.encode(value, proto))
    got = reader.gets()

    def norm(v: object) -> object:
        if isinstance(v, bool):
            return int(v) if proto == 2 else v
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v

    assert got == norm(value)


def test_maps_and_errors() -> None:
    r = hiredis.Reader()
    r.feed(resp.encode({"server": "kvstore", "proto": 3}, 3))
    assert r.gets() == {b"server": b"kvstore", b"proto": 3}
    r.feed(resp.encode({"a": 1}, 2))
    assert r.gets() == [b"a", 1]
    r.feed(resp.error("ERR two\r\nlines"))
    err = r.gets()
    assert isinstance(err, hiredis.ReplyError) and str(err) == "ERR two  lines"


def test_preauth_bounds() -> None:
    dec = resp.RespDecoder()
    dec.preauth = True
    auth = resp.encode_command([b"AUTH", b"u" * 100, b"p" * limits.resp_preauth_bulk_bytes_max])
    assert len(dec.receive_data(auth)) == 1
    for data in (resp.encode_command([b"SET", b"k", b"v" * (limits.resp_preauth_bulk_bytes_max
                                                            + 1)]),
                 resp.encode_command([b"X"] * (limits.resp_preauth_array_len_max + 1))):
        d = resp.RespDecoder()
        d.preauth = True
        with pytest.raises(ProtocolError):
            d.receive_data(data)
