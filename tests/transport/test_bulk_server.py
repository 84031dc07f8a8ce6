"""The bulk server against real sockets on 127.0.0.1: pipelining, disconnects, bounds,
credentials, checksums on the wire, flow control, drain."""

from __future__ import annotations

import os
import socket
import struct
import time
import zlib

import pytest
import xxhash
from corrupt import corrupt_reads, flip_byte
from kvstore_client import Client, _ops
from kvstore_client.client import SyncConnection

from kvstore import limits
from kvstore.auth import Tenants
from kvstore.errors import (
    AccessDenied,
    AuthenticationFailed,
    ChecksumMismatch,
    LimitExceeded,
    ProtocolError,
)
from kvstore.protocol import messages as msg
from kvstore.protocol.frames import FrameType, encode_frame
from kvstore.testing import BackgroundBulkServer

NS = "bulk-test"


def _connect(srv: BackgroundBulkServer, **kw) -> SyncConnection:
    return SyncConnection("127.0.0.1", srv.port, kw.pop("ak", "dev"), kw.pop("sk", ""), NS,
                          create=True, timeout=10)


def _healthy(srv: BackgroundBulkServer) -> None:
    with Client(port=srv.port, namespace=NS, create=True, timeout=10) as c:
        c.put("health", b"ok")
        assert c.get("health") == b"ok"
    assert srv.engine is not None and srv.engine.check() == []


def _wait_no_connections(srv: BackgroundBulkServer) -> None:
    deadline = time.monotonic() + 5
    while srv.server is not None and srv.server.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.server is not None and srv.server.connections == 0


def test_put_get_round_trip_many_pipelined_batches(bulk, monkeypatch) -> None:
    monkeypatch.setattr(_ops, "PUT_BATCH_BYTES", 256 * 1024)  # many PUT batches in flight
    vals = [os.urandom(n) for n in (1, 4096, 100_000, 300_000, 0, 77)] * 20
    keys = [f"k{i:03d}" for i in range(len(vals))]
    with Client(port=bulk.port, namespace=NS, create=True) as c:
        assert all(c.put_many(keys, vals))
        assert not any(c.put_many(keys[:5], vals[:5]))  # idempotent: already there
        bufs = [bytearray(len(v) + 10) for v in vals]
        got = c.get_many_into(keys + ["missing"], bufs + [bytearray(1)])
        assert got[:-1] == [len(v) for v in vals] and got[-1] is None
        assert all(bytes(b[:len(v)]) == v for b, v in zip(bufs, vals, strict=True))
    assert bulk.engine.check() == []


def test_raw_pipelining_answers_by_request_id(bulk) -> None:
    conn = _connect(bulk)
    core = conn.core
    reqs = [(FrameType.PING, {}), (FrameType.EXISTS_BATCH, {"keys": ["a", "b"]}),
            (FrameType.GET_BATCH, {"keys": ["a"]}), (FrameType.STATS, {})]
    rids = []
    wire = b""
    for ftype, h in reqs:
        rid = core.next_rid()
        core.conn.sent(ftype, rid)
        wire += encode_frame(ftype, rid, h)
        rids.append(rid)
    conn.sock.sendall(wire)  # all four in one write, before reading anything
    seen = {}
    while len(seen) < len(reqs):
        f = conn.run(core.frame())
        if f.ftype in (FrameType.RESULT, FrameType.END):
            seen[f.request_id] = f
    assert seen[rids[1]].header["exists"] == [False, False]
    assert seen[rids[2]].header["n"] == 0
    assert "stats" in seen[rids[3]].header
    conn.close()


def test_window_pauses_reading_instead_of_failing(bulk) -> None:
    conn = _connect(bulk)
    n = limits.connection_inflight_requests_max * 3
    wire = b"".join(encode_frame(FrameType.PING, i + 1, {}) for i in range(n))
    conn.sock.sendall(wire)  # the client ignores the window; the server just stops reading
    from kvstore.protocol.decoder import NEED_DATA, Decoder

    dec, got = Decoder(), 0
    while got < n:
        dec.receive_data(conn.sock.recv(65536))
        while (ev := dec.next_event()) is not NEED_DATA:
            assert ev.ftype is FrameType.RESULT
            got += 1
    conn.close()
    _healthy(bulk)


def test_client_disconnects_mid_put_and_mid_get(bulk) -> None:
    with Client(port=bulk.port, namespace=NS, create=True) as c:
        c.put_many([f"big{i}" for i in range(8)], [os.urandom(2 * limits.MiB)] * 8)
    # mid-PUT: announce 4 MiB, send 1 MiB, vanish
    conn = _connect(bulk)
    h = msg.put_batch(["x1", "x2"], [2 * limits.MiB] * 2, [0, 0])
    conn.sock.sendall(encode_frame(FrameType.PUT_BATCH, 1, h, 4 * limits.MiB) + b"\0" * limits.MiB)
    conn.sock.close()
    # mid-GET: ask for 16 MiB and vanish without reading
    conn = _connect(bulk)
    conn.sock.sendall(encode_frame(FrameType.GET_BATCH, 1, {"keys": [f"big{i}" for i in range(8)]}))
    conn.sock.recv(1000)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.sock.close()  # RST
    _wait_no_connections(bulk)
    _healthy(bulk)
    with Client(port=bulk.port, namespace=NS) as c:
        assert c.exists_many(["x1", "x2"]) == [False, False]


def _error_of(conn: SyncConnection) -> Exception:
    try:
        while True:
            f = conn.run(conn.core.frame())
            if f.ftype is FrameType.ERROR:
                return msg.parse_error(f.header)
    except Exception as exc:  # the connection-level error raises from frame()
        return exc


def test_oversized_header_is_an_error_frame_then_close(bulk) -> None:
    conn = _connect(bulk)
    pre = struct.pack("<4sBBHQIQ", b"KVB1", 1, int(FrameType.PING), 0, 1,
                      limits.frame_header_bytes_max + 1, 0)
    conn.sock.sendall(pre + struct.pack("<I", zlib.crc32(pre)))
    err = _error_of(conn)
    assert isinstance(err, ProtocolError) and "exceeds" in str(err)
    assert conn.sock.recv(10) == b""  # closed by the server
    _healthy(bulk)


def test_oversized_batch_is_a_request_error_and_the_connection_lives(bulk) -> None:
    conn = _connect(bulk)
    keys = [f"k{i}" for i in range(limits.batch_keys_max + 1)]
    with pytest.raises(LimitExceeded):
        conn.run(conn.core.simple(FrameType.EXISTS_BATCH, {"keys": keys}))
    # a PUT whose payload the server must skip
    h = msg.put_batch(["a"] * (limits.batch_keys_max + 1), [1] * (limits.batch_keys_max + 1),
                      [0] * (limits.batch_keys_max + 1))
    rid = conn.run(conn.core.send(FrameType.PUT_BATCH, h, [b"z" * (limits.batch_keys_max + 1)]))
    f = conn.run(conn.core.frame())
    assert f.request_id == rid and isinstance(msg.parse_error(f.header), LimitExceeded)
    assert conn.run(conn.core.simple(FrameType.PING, {})) == {}
    conn.close()


def test_garbage_before_hello(bulk) -> None:
    s = socket.create_connection(("127.0.0.1", bulk.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 64)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    assert data[:4] == b"KVB1" and data[5] == FrameType.ERROR
    s.close()
    _healthy(bulk)


def test_credentials(make_bulk) -> None:
    tenants = Tenants.from_dict({"tenants": [
        {"name": "acme", "access_key": "AKACME", "secret_key": "s3cret",
         "namespaces": ["acme-*"]},
        {"name": "other", "access_key": "AKOTHER", "secret_key": "x", "namespaces": ["*"]}]})
    srv = make_bulk(tenants)
    if True:  # noqa: SIM108 - keeps the block shape
        def client(ak: str, sk: str, ns: str) -> Client:
            return Client(port=srv.port, namespace=ns, access_key=ak, secret_key=sk,
                          create=True, retries=0)

        with pytest.raises(AuthenticationFailed):
            client("AKACME", "wrong", "acme-one").ping()
        with pytest.raises(AuthenticationFailed):
            client("NOBODY", "s3cret", "acme-one").ping()
        with pytest.raises(AccessDenied):
            client("AKACME", "s3cret", "beta-one").ping()
        with client("AKACME", "s3cret", "acme-one") as c:
            c.put("k", b"v")
            assert c.get("k") == b"v"
        with pytest.raises(AccessDenied):  # namespace owned by another tenant
            client("AKOTHER", "x", "acme-one").ping()
        assert srv.engine.namespace("acme-one").owner == "acme"


def test_put_with_bad_checksum_is_rejected_and_nothing_stored(bulk) -> None:
    conn = _connect(bulk)
    data = os.urandom(10_000)
    xxh = xxhash.xxh3_64_intdigest(data) ^ 1  # as if a bit flipped on the wire
    reqs = [(FrameType.PUT_BATCH, msg.put_batch(["bad"], [len(data)], [xxh]), [data], 0)]
    err = conn.run(conn.core.pipeline(reqs, lambda i, f: None))
    assert isinstance(err, ChecksumMismatch)
    assert conn.core.usable
    with Client(port=bulk.port, namespace=NS) as c:
        assert c.exists_many(["bad"]) == [False]
    conn.close()


def test_corrupted_get_is_detected_by_the_client(bulk) -> None:
    data = os.urandom(50_000)
    with Client(port=bulk.port, namespace=NS, create=True) as c:
        c.put("blk", data)
        with corrupt_reads(bulk.node.blocks, flip_byte(123)):
            with pytest.raises(ChecksumMismatch):
                c.get_into("blk", bytearray(len(data)))
        assert c.get("blk") == data  # the connection (and the stored block) are fine


def test_close_drains_and_refuses_new_connections(make_bulk) -> None:
    srv = make_bulk()
    port = srv.port
    c = Client(port=port, namespace=NS, create=True)
    c.put("a", b"1")  # leaves a pooled connection open across the stop
    srv.stop(timeout=1.0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    c.close()


def test_flash_backed_get_without_dram(tmp_path) -> None:
    """Blocks served from flash buffers (DRAM tier off): views stay valid until flushed."""
    from kvstore.engine.types import EngineConfig
    from kvstore.io_uring.select import open_device

    cfg = EngineConfig(data_dir=str(tmp_path), capacity_bytes=64 * limits.MiB,
                       segment_bytes=16 * limits.MiB, dram_bytes=0)
    with BackgroundBulkServer(cfg, open_device("posix")) as srv:
        vals = [os.urandom(2 * limits.MiB - i * 4096) for i in range(12)]
        keys = [f"f{i}" for i in range(12)]
        with Client(port=srv.port, namespace=NS, create=True, pool_size=2) as c:
            c.put_many(keys, vals)
            for _ in range(2):
                bufs = [bytearray(2 * limits.MiB) for _ in keys]
                assert c.get_many_into(keys, bufs) == [len(v) for v in vals]
                assert all(bytes(b[:len(v)]) == v for b, v in zip(bufs, vals, strict=True))
        assert srv.engine.stats()["hits_flash"] >= 24
        assert srv.engine.check() == []
