"""Shared-memory transport: register a region, PUT from it, GET into it, bounds and checks."""

from __future__ import annotations

import os

import pytest
from kvstore_client import Client
from kvstore_client.client import SyncConnection
from kvstore_client.shm import ShmClient

from kvstore.errors import InvalidArgument, ProtocolError
from kvstore.protocol.frames import FrameType

NS = "shm-test"


def test_put_and_get_through_the_region(bulk) -> None:
    blocks = [os.urandom(n) for n in (4096, 100_000, 1, 65536)]
    offs = [0, 8192, 200_000, 300_000]
    with ShmClient(port=bulk.port, namespace=NS, size=1 << 20, create=True) as c:
        for o, b in zip(offs, blocks, strict=True):
            c.region.view[o:o + len(b)] = b
        keys = [f"s{i}" for i in range(len(blocks))]
        assert c.put_many(keys, offs, [len(b) for b in blocks]) == [True] * 4
        c.region.view[:] = bytes(c.region.size)
        got = c.get_many(keys + ["nope"], offs + [500_000], [len(b) for b in blocks] + [10])
        assert got == [len(b) for b in blocks] + [None]
        for o, b in zip(offs, blocks, strict=True):
            assert bytes(c.region.view[o:o + len(b)]) == b
        region_path = c.region.path
    assert not os.path.exists(region_path)
    with Client(port=bulk.port, namespace=NS) as tc:  # the same blocks over TCP
        assert tc.get("s1") == blocks[1]
    assert bulk.engine.check() == []


def test_slot_too_small_and_outside_region(bulk) -> None:
    with ShmClient(port=bulk.port, namespace=NS, size=65536, create=True) as c:
        c.region.view[:1000] = os.urandom(1000)
        c.put_many(["a"], [0], [1000])
        with pytest.raises(InvalidArgument):
            c.get_many(["a"], [4096], [999])  # block does not fit its slot
        with pytest.raises(InvalidArgument):
            c.get_many(["a"], [65000], [1000])  # client-side bound check
        # a forged offset past the region is refused by the server, connection stays usable
        from kvstore.protocol import messages as msg

        with pytest.raises(InvalidArgument):
            c._conn.run(c._conn.core.simple(
                FrameType.GET_BATCH, msg.keys_request(["a"], offsets=[1 << 40], caps=[1000]),
                flags=1))
        assert c.get_many(["a"], [0], [1000]) == [1000]


def test_register_rejects_bad_names_and_requires_a_region(bulk) -> None:
    conn = SyncConnection("127.0.0.1", bulk.port, "dev", "", NS, create=True)
    with pytest.raises(InvalidArgument):
        conn.run(conn.core.simple(FrameType.SHM_REGISTER, {"name": "../etc/passwd", "size": 10}))
    with pytest.raises(InvalidArgument):
        conn.run(conn.core.simple(FrameType.SHM_REGISTER, {"name": "kvstore-absent", "size": 10}))
    from kvstore.protocol import messages as msg

    with pytest.raises(InvalidArgument):  # SHM GET without a registered region
        conn.run(conn.core.simple(
            FrameType.GET_BATCH, msg.keys_request(["a"], offsets=[0], caps=[10]), flags=1))
    with pytest.raises(ProtocolError):  # the SHM flag on a request that has no use for it
        conn.run(conn.core.simple(FrameType.PING, {}, flags=1))
    conn.close()


def test_put_from_the_region_is_write_once_unless_overwrite(bulk) -> None:
    old, new = os.urandom(70_000), os.urandom(90_000)
    with ShmClient(port=bulk.port, namespace=NS, size=1 << 20, create=True) as c:
        c.region.view[:len(old)] = old
        c.region.view[100_000:100_000 + len(new)] = new
        assert c.put_many(["w"], [0], [len(old)]) == [True]
        assert c.put_many(["w"], [100_000], [len(new)]) == [False]  # old bytes kept
        assert c.get_many(["w"], [300_000], [len(new)]) == [len(old)]
        assert bytes(c.region.view[300_000:300_000 + len(old)]) == old
        assert c.put_many(["w", "w2"], [100_000, 0], [len(new), len(old)],
                          overwrite=True) == [True, True]
        assert c.put_many(["w"], [100_000], [len(new)], overwrite=True) == [False]  # identical
        c.region.view[300_000:400_000] = bytes(100_000)
        assert c.get_many(["w"], [300_000], [len(new)]) == [len(new)]
        assert bytes(c.region.view[300_000:300_000 + len(new)]) == new
    with Client(port=bulk.port, namespace=NS) as tc:
        assert tc.get("w") == new and tc.get("w2") == old
    assert bulk.engine.check() == []
