"""Bulk-port connection timeouts against real sockets on 127.0.0.1 (small timeouts configured
here): a socket that never sends HELLO, half a preamble, an idle authenticated connection, a PUT
payload below the rate floor; and what the SDK and the metrics see."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import xxhash
from kvstore_client import Client
from kvstore_client.client import SyncConnection
from prometheus_client.parser import text_string_to_metric_families

from kvstore import limits
from kvstore.api.metrics import Metrics
from kvstore.engine.device import MemoryDevice
from kvstore.engine.types import EngineConfig
from kvstore.errors import RequestTimeout
from kvstore.protocol import messages as msg
from kvstore.protocol.decoder import NEED_DATA, Decoder, Frame
from kvstore.protocol.frames import FrameType, encode_frame
from kvstore.testing import BackgroundBulkServer
from kvstore.transport.watchdog import BodyLimits, BulkTimeouts

NS = "bulk-timeouts"
# Far above each configured timeout below: reaching it means the server did not close.
WAIT_SECONDS = 10.0
TIMEOUTS = BulkTimeouts(
    handshake_seconds=0.4, idle_seconds=0.6,
    body=BodyLimits(idle_seconds=0.6, min_rate_bytes_per_second=64 * limits.KiB,
                    rate_window_seconds=0.4, rate_grace_seconds=0.4))


def start(timeouts: BulkTimeouts, connections_max: int = limits.connections_max
          ) -> BackgroundBulkServer:
    cfg = EngineConfig(data_dir="/mem", capacity_bytes=64 * limits.MiB,
                       segment_bytes=8 * limits.MiB, dram_bytes=8 * limits.MiB)
    return BackgroundBulkServer(cfg, MemoryDevice(), timeouts=timeouts, metrics=Metrics(),
                                connections_max=connections_max).start()


@pytest.fixture
def server() -> Iterator[BackgroundBulkServer]:
    srv = start(TIMEOUTS)
    yield srv
    assert srv.engine is not None and srv.engine.check() == []
    srv.stop(timeout=2.0)


def counters(srv: BackgroundBulkServer, name: str, label: str) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(srv.metrics.render().decode()):
        for s in fam.samples:
            if s.name == name and s.labels["port"] == "bulk":
                out[s.labels[label]] = s.value
    return out


def timeouts(srv: BackgroundBulkServer) -> dict[str, float]:
    return counters(srv, "kvstore_connection_timeouts_total", "kind")


def frames_until_closed(sock: socket.socket) -> list[Frame]:
    """Every frame the server sends until it closes; fails if it keeps the socket open."""
    sock.settimeout(WAIT_SECONDS)
    dec, frames = Decoder(), []
    while True:
        try:
            n = sock.recv_into(dec.get_buffer())
        except TimeoutError:
            pytest.fail(f"the server kept the connection open for {WAIT_SECONDS}s")
        except ConnectionResetError:
            return frames
        if not n:
            return frames
        dec.buffer_updated(n)
        while (ev := dec.next_event()) is not NEED_DATA:
            if isinstance(ev, Frame):
                frames.append(ev)


def assert_timed_out(frames: list[Frame], kind: str) -> None:
    assert frames and frames[-1].ftype is FrameType.ERROR and frames[-1].request_id == 0
    err = msg.parse_error(frames[-1].header)
    assert isinstance(err, RequestTimeout) and kind in err.message and err.retryable


def test_a_socket_that_never_sends_hello_is_closed(server: BackgroundBulkServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        assert_timed_out(frames_until_closed(s), "handshake")
    assert timeouts(server)["handshake"] == 1


def test_half_a_preamble_or_a_hello_without_auth_is_closed(server: BackgroundBulkServer) -> None:
    hello = encode_frame(FrameType.HELLO, 0, msg.hello("dev", NS, create=True), 0)
    with socket.create_connection(("127.0.0.1", server.port)) as a, \
            socket.create_connection(("127.0.0.1", server.port)) as b:
        a.sendall(hello[:10])
        b.sendall(hello)  # gets its CHALLENGE, never answers it
        assert_timed_out(frames_until_closed(a), "handshake")
        got = frames_until_closed(b)
        assert got[0].ftype is FrameType.CHALLENGE
        assert_timed_out(got, "handshake")
    assert timeouts(server)["handshake"] == 2


def test_an_idle_authenticated_connection_is_closed(server: BackgroundBulkServer) -> None:
    conn = SyncConnection("127.0.0.1", server.port, "dev", "", NS, create=True, timeout=10)
    try:
        assert_timed_out(frames_until_closed(conn.sock), "idle")
    finally:
        conn.close()
    assert timeouts(server)["idle"] == 1


def test_a_busy_connection_is_not_idle_and_the_sdk_retries_a_closed_pooled_one(
        server: BackgroundBulkServer) -> None:
    with Client(port=server.port, namespace=NS, create=True, timeout=10) as c:
        # requests back to back for several idle timeouts: the connection stays
        deadline = time.monotonic() + 3 * TIMEOUTS.idle_seconds
        n = 0
        while time.monotonic() < deadline and n < 10_000:
            c.put(f"busy-{n}", b"x" * 100)
            n += 1
        assert timeouts(server).get("idle", 0) == 0
        # now let the pooled connection go idle until the server closes it
        deadline = time.monotonic() + WAIT_SECONDS
        while timeouts(server).get("idle", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert timeouts(server)["idle"] == 1
        assert c.get("busy-0") == b"x" * 100  # one retry on a new connection


def test_a_put_payload_below_the_rate_floor_is_closed(server: BackgroundBulkServer) -> None:
    conn = SyncConnection("127.0.0.1", server.port, "dev", "", NS, create=True, timeout=10)
    payload = bytes(range(256)) * 4096  # 1 MiB
    head = encode_frame(FrameType.PUT_BATCH, 1,
                        msg.put_batch(["slow"], [len(payload)], [xxhash.xxh3_64_intdigest(payload)]),
                        len(payload))
    s = conn.sock
    try:
        s.sendall(head)
        s.settimeout(0.05)
        closed = False
        for i in range(400):  # 1 KiB every 50 ms: ~20 KiB/s, under the 64 KiB/s floor
            try:
                s.sendall(payload[i * 1024:(i + 1) * 1024])
                if s.recv(1, socket.MSG_PEEK):
                    break  # the server answered (its ERROR frame)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert i < 399 or closed
        if not closed:
            assert_timed_out(frames_until_closed(s), "body_rate")
    finally:
        conn.close()
    assert timeouts(server)["body_rate"] == 1
    with Client(port=server.port, namespace=NS, create=True, timeout=10) as c:
        assert c.get("slow") is None  # the partial block was never stored
        assert c.put("fast", payload) and c.get("fast") == payload  # 1 MiB at full speed


def test_a_cap_full_of_unauthenticated_sockets_does_not_lock_clients_out() -> None:
    cap = 8
    srv = start(BulkTimeouts(handshake_seconds=30.0, idle_seconds=30.0), connections_max=cap)
    silent = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(cap)]
    try:
        with Client(port=srv.port, namespace=NS, create=True, timeout=10, retries=0) as c:
            c.put("k", b"v")  # before: Busy("too many connections")
            assert c.get("k") == b"v"
        frames = frames_until_closed(silent[0])  # the oldest gave way
        assert frames and msg.parse_error(frames[-1].header).name == "SlowDown"
        refused = counters(srv, "kvstore_connections_refused_total", "reason")
        assert refused["evicted"] >= 1 and refused["cap"] == 0
    finally:
        for s in silent:
            s.close()
        srv.stop(timeout=2.0)
