"""Bulk PUT of a key that is already stored, on the wire: write-once by default, replaced with
the OVERWRITE flag, illegal flags refused (the server stays up)."""

from __future__ import annotations

import dataclasses
import os

import pytest
import xxhash
from kvstore_client import Client, _ops
from kvstore_client.client import SyncConnection

from kvstore import limits
from kvstore.engine.types import EngineConfig
from kvstore.errors import NotImplementedFeature, ProtocolError
from kvstore.io_uring.select import open_device
from kvstore.protocol import messages as msg
from kvstore.protocol.frames import FLAGS_V1, FrameFlags, FrameType, encode_frame
from kvstore.testing import BackgroundBulkServer

NS = "bulk-put"
OVERWRITE = int(FrameFlags.OVERWRITE)


def _connect(srv: BackgroundBulkServer) -> SyncConnection:
    return SyncConnection("127.0.0.1", srv.port, "dev", "", NS, create=True, timeout=10)


def _put(conn: SyncConnection, key: str, data: bytes, flags: int = 0) -> list[bool]:
    """One PUT_BATCH frame, built by hand (what any client, old or new, puts on the wire)."""
    core = conn.core
    h = msg.put_batch([key], [len(data)], [xxhash.xxh3_64_intdigest(data)])

    def op():
        rid = yield from core.send(FrameType.PUT_BATCH, h, [data], flags)
        f = yield from core.frame()
        assert f.request_id == rid and f.ftype is FrameType.RESULT
        return f.header

    return list(conn.run(op())["created"])


def _get(srv: BackgroundBulkServer, key: str) -> bytes | None:
    with Client(port=srv.port, namespace=NS, create=True, timeout=10) as c:
        return c.get(key)


def test_frame_without_the_flag_keeps_the_stored_bytes(bulk) -> None:
    old, new = os.urandom(100_000), os.urandom(100_000)
    conn = _connect(bulk)
    assert conn.core.window is not None and conn.core.window.flags & FrameFlags.OVERWRITE
    assert _put(conn, "k", old) == [True]
    assert _put(conn, "k", new) == [False]  # an old client's PUT: write-once, as before
    assert _get(bulk, "k") == old
    assert _put(conn, "k", new, OVERWRITE) == [True]  # the flag replaces
    assert _get(bulk, "k") == new
    assert _put(conn, "k", new, OVERWRITE) == [False]  # identical: nothing written
    assert _put(conn, "k", old) == [False]
    assert _get(bulk, "k") == new
    conn.close()
    assert bulk.engine.check() == []
    assert bulk.engine.count(NS) == 1


def test_replaced_block_survives_a_restart(tmp_path) -> None:
    """Real files: after a restart the index holds the replacing record, not the replaced one."""
    cfg = EngineConfig(data_dir=str(tmp_path / "data"), capacity_bytes=64 * limits.MiB,
                       segment_bytes=16 * limits.MiB, dram_bytes=0)
    old, new = os.urandom(5000), os.urandom(7000)
    with BackgroundBulkServer(cfg, open_device("auto", probe_dir=str(tmp_path))) as srv:
        with Client(port=srv.port, namespace=NS, create=True, timeout=10) as c:
            assert c.put("r", old) is True
            assert c.put("r", new, overwrite=True) is True
            assert c.put("r", old) is False
    with BackgroundBulkServer(cfg, open_device("auto", probe_dir=str(tmp_path))) as srv:
        with Client(port=srv.port, namespace=NS, timeout=10) as c:
            assert c.get("r") == new
        assert srv.engine is not None and srv.engine.check() == []


@pytest.mark.parametrize("ftype, header, flags", [
    (FrameType.GET_BATCH, {"keys": ["k"]}, OVERWRITE),  # a flag this frame does not take
    (FrameType.PING, {}, OVERWRITE),
    (FrameType.PUT_BATCH, msg.put_batch(["k"], [0], [0]), OVERWRITE | 8),  # a bit nobody knows
])
def test_illegal_flags_close_the_connection_not_the_server(bulk, ftype, header, flags) -> None:
    conn = _connect(bulk)
    conn.sock.sendall(encode_frame(ftype, 1, header, flags=flags))  # past the client's own check
    with pytest.raises(ProtocolError, match="flag"):
        conn.run(conn.core.frame())
    conn.close()
    with Client(port=bulk.port, namespace=NS, create=True, timeout=10) as c:
        c.put("after", b"ok")
        assert c.get("after") == b"ok"
    assert bulk.engine.check() == []


def test_overwrite_against_a_server_without_the_flag_fails_before_sending(bulk) -> None:
    """A server of the first release sends no ``flags`` in AUTH_OK (parsed as FLAGS_V1) and would
    close the connection on the unknown bit: the client refuses overwrite=True up front."""
    conn = _connect(bulk)
    assert conn.core.window is not None
    conn.core.window = dataclasses.replace(conn.core.window, flags=FLAGS_V1)
    with pytest.raises(NotImplementedFeature, match="overwrite"):
        conn.run(_ops.put_many(conn.core, ["k"], [b"new"], overwrite=True))
    assert not conn.core.conn.inflight
    assert conn.run(_ops.put_many(conn.core, ["k"], [b"v"])) == [True]  # still usable
    conn.close()
