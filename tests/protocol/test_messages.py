"""Header schemas: builders round-trip through validators; bounds give typed errors."""

from __future__ import annotations

import pytest

from kvstore import limits
from kvstore.errors import InvalidKey, InvalidNamespace, LimitExceeded, NotFound, ProtocolError
from kvstore.protocol import messages as m
from kvstore.protocol.frames import FLAGS_KNOWN, FLAGS_V1, FrameFlags


def test_auth_signature() -> None:
    nonce = b"n" * m.NONCE_BYTES
    sig = m.sign("secret", nonce, "AK", "ns1")
    assert m.verify("secret", nonce, "AK", "ns1", sig)
    assert not m.verify("other", nonce, "AK", "ns1", sig)
    assert not m.verify("secret", nonce, "AK", "ns2", sig)  # namespace is bound


def test_hello() -> None:
    h = m.parse_hello(m.hello("AK", "my-ns", create=True))
    assert (h.access_key, h.namespace, h.create) == ("AK", "my-ns", True)
    with pytest.raises(InvalidNamespace):
        m.parse_hello(m.hello("AK", "NO"))
    with pytest.raises(ProtocolError):
        m.parse_hello({"v": 1, "namespace": "abc"})


def test_put_batch() -> None:
    h = m.put_batch(["a", "b"], [3, 4], [1, 2], ttl_seconds=5)
    pb = m.parse_put_batch(h, 7)
    assert pb.keys == ["a", "b"] and pb.lengths == [3, 4] and pb.ttl_seconds == 5.0
    with pytest.raises(ProtocolError, match="payload length"):
        m.parse_put_batch(h, 8)
    with pytest.raises(ProtocolError):
        m.parse_put_batch(m.put_batch(["a"], [3, 4], [1, 2]), 7)
    with pytest.raises(ProtocolError):
        m.parse_put_batch({"keys": ["a"], "lengths": [True], "checksums": [1]}, 1)
    with pytest.raises(InvalidKey):
        m.parse_put_batch(m.put_batch(["a\x00"], [1], [1]), 1)
    with pytest.raises(LimitExceeded):
        m.parse_put_batch(m.put_batch(["a"], [1], [1], ttl_seconds=-1), 1)
    shm = m.parse_put_batch(m.put_batch(["a"], [3], [1], offsets=[4096]), 0, shm=True)
    assert shm.offsets == [4096]
    assert not pb.overwrite and not shm.overwrite  # write-once unless the frame says otherwise
    assert m.parse_put_batch(h, 7, overwrite=True).overwrite


def test_batch_bounds() -> None:
    n = limits.batch_keys_max + 1
    with pytest.raises(LimitExceeded):
        m.parse_keys_request(m.keys_request(["k"] * n))
    big = limits.batch_bytes_max // limits.block_bytes_max + 1
    with pytest.raises(LimitExceeded):
        m.parse_put_batch(m.put_batch(["k"] * big, [limits.block_bytes_max] * big, [0] * big),
                          big * limits.block_bytes_max)
    with pytest.raises(ProtocolError):
        m.parse_put_batch(m.put_batch(["k"], [limits.block_bytes_max + 1], [0]), 0)
    with pytest.raises(LimitExceeded):
        m.parse_keys_request(m.keys_request(["k"], lease=limits.lease_seconds_max + 1))


def test_block_and_error() -> None:
    b = m.parse_block(m.block(2, "k", 10, 99), 10)
    assert (b.index, b.key, b.length, b.checksum) == (2, "k", 10, 99)
    with pytest.raises(ProtocolError):
        m.parse_block(m.block(2, "k", 10, 99), 11)
    err = m.parse_error(m.error(NotFound("gone")))
    assert isinstance(err, NotFound) and err.message == "gone"


def test_auth_ok_window_is_capped_by_local_limits() -> None:
    h = m.auth_ok("t", "ns1")
    h["inflight_requests_max"] = 10**9
    w = m.parse_auth_ok(h)
    assert w.inflight_requests_max == limits.connection_inflight_requests_max


def test_auth_ok_advertises_the_flags_the_server_knows() -> None:
    w = m.parse_auth_ok(m.auth_ok("t", "ns1"))
    assert w.flags == FLAGS_KNOWN and w.flags & FrameFlags.OVERWRITE
    old = m.auth_ok("t", "ns1")
    del old["flags"]  # a server of the first release says nothing: SHM and NIXL only
    assert m.parse_auth_ok(old).flags == FLAGS_V1
    assert not m.parse_auth_ok(old).flags & FrameFlags.OVERWRITE
    future = {**m.auth_ok("t", "ns1"), "flags": FLAGS_KNOWN | 1 << 15}
    assert m.parse_auth_ok(future).flags == FLAGS_KNOWN  # bits this side does not know drop
    with pytest.raises(ProtocolError):
        m.parse_auth_ok({**m.auth_ok("t", "ns1"), "flags": "all"})


def test_put_batch_metas_are_optional_and_bounded() -> None:
    from kvstore_wire import limits as wl
    from kvstore_wire.errors import LimitExceeded as WireLimit
    from kvstore_wire.messages import KeysRequest, PutBatch
    from kvstore_wire.results import BlockHeader

    b = PutBatch(["k1", "k2"], [1, 2], [0, 0], metas=[b"m1", b""])
    h = b.to_header()
    assert h["metas"] == [b"m1", b""]
    assert PutBatch.from_header(h, 3).metas == [b"m1", b""]
    plain = PutBatch(["k1"], [1], [0]).to_header()  # what an old peer sends, and parses
    assert "metas" not in plain and PutBatch.from_header(plain, 1).metas is None
    with pytest.raises(WireLimit):
        PutBatch.from_header({**plain, "metas": [b"x" * (wl.block_meta_bytes_max + 1)]}, 1)
    with pytest.raises(ProtocolError):
        PutBatch.from_header({**plain, "metas": [b"a", b"b"]}, 1)
    req = KeysRequest(["k1"], with_meta=True).to_header()
    assert KeysRequest.from_header(req).with_meta and not KeysRequest.from_header(
        {"keys": ["k1"]}).with_meta
    bh = BlockHeader(0, "k1", 3, 7, b"meta", 12.5, 99.0)
    assert BlockHeader.from_header(bh.to_header(), 3) == bh
    old = BlockHeader(0, "k1", 3, 7).to_header()
    assert "meta" not in old and BlockHeader.from_header(old, 3).meta == b""
