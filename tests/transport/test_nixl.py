"""NIXL transport against a live bulk server on 127.0.0.1: register a region, PUT from it, GET
into it (one-sided transfers over UCX, CPU-only: UCX_TLS=sm,tcp,self), checksums, bad offsets,
disconnects. The live tests need the ``nixl`` extra (``make test-nixl``); the protocol-level
ones (flags, registration schema, a NIXL request without a region) always run."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from corrupt import corrupt_reads, flip_byte
from kvstore_client import Client
from kvstore_client.client import SyncConnection
from kvstore_client.nixl import NixlClient, nixl_available

from kvstore import limits
from kvstore.errors import (
    ChecksumMismatch,
    InvalidArgument,
    LimitExceeded,
    NotImplementedFeature,
    ProtocolError,
)
from kvstore.protocol import messages as msg
from kvstore.protocol.frames import FrameFlags, FrameType, encode_frame
from kvstore.testing import BackgroundBulkServer

NS = "nixl-test"
MiB = limits.MiB
HAVE_NIXL = nixl_available()
needs_nixl = pytest.mark.skipif(
    not HAVE_NIXL, reason="nixl is not importable (install the extra: make test-nixl)")
pytestmark = pytest.mark.timeout(60)  # a UCX hang must fail the test, not hang the suite


def _healthy(srv: BackgroundBulkServer) -> None:
    with Client(port=srv.port, namespace=NS, create=True, timeout=10) as c:
        c.put("health", b"ok")
        assert c.get("health") == b"ok"
    assert srv.engine is not None and srv.engine.check() == []


def _settle(srv: BackgroundBulkServer) -> None:
    """Wait (bounded) until no connection is left and every staging chunk is back."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        nx = srv.server.ctx.nixl if srv.server is not None else None
        if srv.server.connections == 0 and (nx is None or nx.staging.free == nx.staging.chunks):
            break
        time.sleep(0.01)
    assert srv.server.connections == 0
    nx = srv.server.ctx.nixl
    if nx is not None:
        assert nx.staging.free == nx.staging.chunks
        assert nx.peers == set()


# --- always run: schema and dispatch ------------------------------------------------------

def test_register_schema_is_bounded() -> None:
    ok = msg.parse_nixl_register(msg.nixl_register(b"md", 4096, 1 << 20))
    assert (ok.metadata, ok.address, ok.size) == (b"md", 4096, 1 << 20)
    with pytest.raises(LimitExceeded):
        msg.parse_nixl_register(msg.nixl_register(b"x" * (limits.nixl_metadata_bytes_max + 1),
                                                  4096, 10))
    with pytest.raises(LimitExceeded):
        msg.parse_nixl_register(msg.nixl_register(b"md", 4096, limits.nixl_region_bytes_max + 1))
    with pytest.raises(ProtocolError):
        msg.parse_nixl_register({"md": "not-bytes", "addr": 1, "size": 1})
    with pytest.raises(ProtocolError):
        msg.parse_nixl_register(msg.nixl_register(b"md", 0, 10))


def test_nixl_flag_without_region_and_on_wrong_requests(bulk) -> None:
    conn = SyncConnection("127.0.0.1", bulk.port, "dev", "", NS, create=True, timeout=10)
    with pytest.raises(InvalidArgument):  # NIXL GET before any NIXL_REGISTER
        conn.run(conn.core.simple(FrameType.GET_BATCH,
                                  msg.keys_request(["a"], offsets=[0], caps=[10]),
                                  flags=int(FrameFlags.NIXL)))
    with pytest.raises(InvalidArgument):  # NIXL PUT before any NIXL_REGISTER
        conn.run(conn.core.simple(FrameType.PUT_BATCH,
                                  msg.put_batch(["a"], [1], [0], offsets=[0]),
                                  flags=int(FrameFlags.NIXL)))
    assert conn.run(conn.core.simple(FrameType.PING, {})) == {}  # still usable
    with pytest.raises(ProtocolError):  # both transports at once: the connection closes
        conn.run(conn.core.simple(FrameType.GET_BATCH,
                                  msg.keys_request(["a"], offsets=[0], caps=[10]),
                                  flags=int(FrameFlags.NIXL | FrameFlags.SHM)))
    conn.close()
    _healthy(bulk)


@pytest.mark.skipif(HAVE_NIXL, reason="checks the answer of a server without nixl")
def test_register_without_nixl_is_not_implemented(bulk) -> None:
    conn = SyncConnection("127.0.0.1", bulk.port, "dev", "", NS, create=True, timeout=10)
    with pytest.raises(NotImplementedFeature):
        conn.run(conn.core.simple(FrameType.NIXL_REGISTER, msg.nixl_register(b"md", 4096, 64)))
    assert conn.run(conn.core.simple(FrameType.PING, {})) == {}
    conn.close()


# --- live NIXL transfers ------------------------------------------------------------------

@needs_nixl
def test_round_trip_of_2mib_blocks_across_chunks(bulk) -> None:
    n, size = 10, 2 * MiB  # 20 MiB: more than one 16 MiB staging chunk
    region = bytearray(32 * MiB)
    blocks = [os.urandom(size) for _ in range(n)]
    offs = [i * (3 * MiB) for i in range(n)]
    with NixlClient(port=bulk.port, namespace=NS, create=True, timeout=20) as c:
        reg = c.register(region)
        assert reg.size == len(region) and c.server_agent
        for o, b in zip(offs, blocks, strict=True):
            reg.view[o:o + size] = b
        keys = [f"b{i}" for i in range(n)]
        assert c.put_from_region(keys, offs, [size] * n) == [True] * n
        assert c.put_from_region(keys[:1], offs[:1], [size]) == [False]  # already there
        region[:] = bytes(len(region))
        got = c.get_into_region(keys + ["missing"], offs + [31 * MiB], [size] * n + [MiB])
        assert got == [size] * n + [None]
        for o, b in zip(offs, blocks, strict=True):
            assert region[o:o + size] == b
        # reversed order, default capacities (each slot runs to the next offset)
        region[:] = bytes(len(region))
        rev = [(n - 1 - i) * (3 * MiB) for i in range(n)]
        assert c.get_into_region(keys, rev) == [size] * n
        assert region[rev[0]:rev[0] + size] == blocks[0]
    with Client(port=bulk.port, namespace=NS) as tc:  # the same blocks over TCP
        assert tc.get("b3") == blocks[3]
    _settle(bulk)
    _healthy(bulk)


@needs_nixl
def test_put_from_region_is_write_once_unless_overwrite(bulk) -> None:
    old, new = os.urandom(MiB), os.urandom(3 * MiB)
    region = bytearray(8 * MiB)
    with NixlClient(port=bulk.port, namespace=NS, create=True) as c:
        reg = c.register(region)
        reg.view[:len(old)] = old
        reg.view[4 * MiB:4 * MiB + len(new)] = new
        assert c.put_from_region(["w"], [0], [len(old)]) == [True]
        assert c.put_from_region(["w"], [4 * MiB], [len(new)]) == [False]  # old bytes kept
        with Client(port=bulk.port, namespace=NS) as tc:
            assert tc.get("w") == old
        assert c.put_from_region(["w", "w2"], [4 * MiB, 0], [len(new), len(old)],
                                 overwrite=True) == [True, True]
        assert c.put_from_region(["w"], [4 * MiB], [len(new)], overwrite=True) == [False]
        region[:] = bytes(len(region))
        assert c.get_into_region(["w", "w2"], [0, 4 * MiB], [4 * MiB, 4 * MiB]) == [
            len(new), len(old)]
        assert region[:len(new)] == new and region[4 * MiB:4 * MiB + len(old)] == old
    _settle(bulk)
    _healthy(bulk)


@needs_nixl
def test_numpy_and_torch_regions_and_blocks_larger_than_a_chunk(make_bulk, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(limits, "nixl_staging_chunk_bytes", 1 * MiB)  # 2 MiB blocks stream
    srv = make_bulk()
    data = [os.urandom(2 * MiB + 123), os.urandom(100), os.urandom(0), os.urandom(MiB)]
    offs = [0, 3 * MiB, 3 * MiB + 4096, 4 * MiB]
    arr = np.zeros(6 * MiB, dtype=np.uint8)
    with NixlClient(port=srv.port, namespace=NS, create=True) as c:
        c.register(arr)
        for o, d in zip(offs, data, strict=True):
            arr[o:o + len(d)] = np.frombuffer(d, dtype=np.uint8)
        keys = ["l0", "l1", "l2", "l3"]
        assert c.put_from_region(keys, offs, [len(d) for d in data]) == [True] * 4
    t = torch.zeros(3 * MiB, dtype=torch.int16)  # 6 MiB, not uint8: registered as bytes
    with NixlClient(port=srv.port, namespace=NS) as c:
        reg = c.register(t)
        assert reg.size == 6 * MiB
        assert c.get_into_region(keys, offs, [3 * MiB, 4096, 4096, MiB]) == [len(d) for d in data]
        raw = t.view(torch.uint8).numpy()
        for o, d in zip(offs, data, strict=True):
            assert raw[o:o + len(d)].tobytes() == d
    assert srv.server.ctx.nixl.staging.chunk_bytes == MiB
    _settle(srv)


@needs_nixl
def test_checksums_verified_both_ways(bulk) -> None:
    region = bytearray(8 * MiB)
    data = os.urandom(2 * MiB)
    with NixlClient(port=bulk.port, namespace=NS, create=True) as c:
        reg = c.register(region)
        reg.view[:len(data)] = data
        assert c.put_from_region(["ck"], [0], [len(data)]) == [True]
        # corrupt on the server, after the engine verified the block
        with corrupt_reads(bulk.node.blocks, flip_byte(777, 0x01)):
            with pytest.raises(ChecksumMismatch):
                c.get_into_region(["ck"], [4 * MiB])
        assert c.get_into_region(["ck"], [4 * MiB]) == [len(data)]
        assert region[4 * MiB:4 * MiB + len(data)] == data
        # a PUT whose declared checksum is not the region's bytes: refused, nothing stored
        h = msg.put_batch(["bad"], [len(data)], [12345], offsets=[0])
        with pytest.raises(ChecksumMismatch):
            c._conn.run(c._conn.core.simple(FrameType.PUT_BATCH, h, flags=int(FrameFlags.NIXL)))
        assert c.get_into_region(["bad"], [0]) == [None]
    _settle(bulk)
    _healthy(bulk)


@needs_nixl
def test_bad_offsets_rejected_and_server_stays_up(bulk) -> None:
    region = bytearray(4 * MiB)
    with NixlClient(port=bulk.port, namespace=NS, create=True) as c:
        reg = c.register(region)
        reg.view[:1000] = os.urandom(1000)
        assert c.put_from_region(["a"], [0], [1000]) == [True]
        with pytest.raises(InvalidArgument):  # client-side: outside the region
            c.get_into_region(["a"], [4 * MiB - 10], [1000])
        with pytest.raises(InvalidArgument):  # client-side: overlapping slots
            c.get_into_region(["a", "a"], [0, 500], [1000, 1000])
        with pytest.raises(InvalidArgument):  # slot too small for the block
            c.get_into_region(["a"], [0], [999])
        with pytest.raises(InvalidArgument):
            c.register(bytearray(10))  # one region per client
        core, nixl = c._conn.core, int(FrameFlags.NIXL)
        for off in (1 << 40, 4 * MiB - 10):  # forged: the server checks the registered size
            with pytest.raises(InvalidArgument):
                c._conn.run(core.simple(FrameType.GET_BATCH, msg.keys_request(
                    ["a"], offsets=[off], caps=[1000]), flags=nixl))
            with pytest.raises(InvalidArgument):
                c._conn.run(core.simple(FrameType.PUT_BATCH, msg.put_batch(
                    ["z"], [1000], [0], offsets=[off]), flags=nixl))
        with pytest.raises(InvalidArgument):  # a second region on the same connection
            c._conn.run(core.simple(FrameType.NIXL_REGISTER,
                                    msg.nixl_register(b"md", reg.address, 10)))
        assert c.get_into_region(["a"], [8192]) == [1000]  # the connection still works
        # the same agent registered from another connection: refused (names are unique)
        md = c.agent.get_agent_metadata()
        other = SyncConnection("127.0.0.1", bulk.port, "dev", "", NS, timeout=10)
        with pytest.raises(InvalidArgument):
            other.run(other.core.simple(FrameType.NIXL_REGISTER,
                                        msg.nixl_register(md, reg.address, reg.size)))
        with pytest.raises(InvalidArgument):  # metadata NIXL cannot parse
            other.run(other.core.simple(FrameType.NIXL_REGISTER,
                                        msg.nixl_register(b"\x00garbage" * 8, 4096, 64)))
        other.close()
    _settle(bulk)
    _healthy(bulk)


@needs_nixl
def test_declared_region_larger_than_registered_memory_is_refused(bulk) -> None:
    from kvstore_client import nixl as cn

    api = cn._load()
    cn.ucx_env_defaults()
    buf = np.zeros(MiB, dtype=np.uint8)
    agent = api.nixl_agent(f"kvstore-test-{os.getpid()}", api.nixl_agent_config(backends=["UCX"]))
    reg = agent.register_memory([(int(buf.ctypes.data), MiB, 0, "")], "DRAM")
    conn = SyncConnection("127.0.0.1", bulk.port, "dev", "", NS, create=True, timeout=10)
    # claim 4 MiB although only 1 MiB is registered: NIXL itself refuses the transfer
    conn.run(conn.core.simple(FrameType.NIXL_REGISTER, msg.nixl_register(
        agent.get_agent_metadata(), int(buf.ctypes.data), 4 * MiB)))
    with Client(port=bulk.port, namespace=NS) as tc:
        tc.put("x", os.urandom(2 * MiB))
    with pytest.raises(InvalidArgument):
        conn.run(conn.core.simple(FrameType.GET_BATCH, msg.keys_request(
            ["x"], offsets=[MiB], caps=[2 * MiB]), flags=int(FrameFlags.NIXL)))
    assert conn.run(conn.core.simple(FrameType.PING, {})) == {}
    conn.close()
    _settle(bulk)
    agent.deregister_memory(reg)
    _healthy(bulk)


@needs_nixl
def test_client_disconnects_mid_transfer(bulk) -> None:
    n, size = 16, 2 * MiB
    region = bytearray(n * size)
    with NixlClient(port=bulk.port, namespace=NS, create=True) as c:
        reg = c.register(region)
        reg.view[:] = os.urandom(len(region))
        keys = [f"d{i}" for i in range(n)]
        offs = [i * size for i in range(n)]
        assert c.put_from_region(keys, offs, [size] * n) == [True] * n
        sock = c._conn.sock
        nixl = int(FrameFlags.NIXL)
        # a GET of 32 MiB (two chunks) and a PUT, then vanish without reading: RST
        sock.sendall(encode_frame(FrameType.GET_BATCH, 100, msg.keys_request(
            keys, offsets=offs, caps=[size] * n), flags=nixl))
        sock.sendall(encode_frame(FrameType.PUT_BATCH, 101, msg.put_batch(
            [f"p{i}" for i in range(n)], [size] * n, [0] * n, offsets=offs), flags=nixl))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        _settle(bulk)  # tasks finished, chunks back, the peer dropped
        _healthy(bulk)
        # region memory stays alive until here (the agent is closed by the context manager)
    with NixlClient(port=bulk.port, namespace=NS) as c2:
        region2 = bytearray(4 * MiB)
        c2.register(region2)
        assert c2.get_into_region(["d5"], [0]) == [size]
        assert region2[:size] == region[5 * size:6 * size]
    _settle(bulk)


@needs_nixl
def test_stop_with_registered_peers_closes_the_agent(make_bulk) -> None:
    srv = make_bulk()
    c = NixlClient(port=srv.port, namespace=NS, create=True)
    c.register(bytearray(MiB))
    ctx = srv.server.ctx
    assert ctx.nixl is not None and len(ctx.nixl.peers) == 1
    srv.stop(timeout=1.0)
    assert ctx.nixl is None
    c.close()


@needs_nixl
def test_a_process_with_an_agent_exits_cleanly() -> None:
    """nixl-cu12 1.5.1 crashes at exit (libnl-route's destructor) when UCX loads its IB modules
    on a host without RDMA devices; ucx_env_defaults keeps them out there."""
    code = ("from kvstore_client import nixl as n; api = n._load(); n.ucx_env_defaults(); "
            "a = api.nixl_agent('exit-check', api.nixl_agent_config(backends=['UCX'])); "
            "print('agent up')")
    env = {k: v for k, v in os.environ.items() if k not in ("UCX_MODULES", "UCX_TLS")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=env)
    assert "agent up" in r.stdout
    has_rdma = os.path.isdir("/sys/class/infiniband") and os.listdir("/sys/class/infiniband")
    if not has_rdma:
        assert r.returncode == 0, r.stderr[-2000:]
