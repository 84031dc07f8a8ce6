"""The client's transport seam: the ops run on any ``Channel`` / ``AsyncChannel`` (here one
that wraps TCP and counts bytes, as a TLS channel would wrap it), and a server's malformed
answer reaches the caller as a ProtocolError (a loopback peer that speaks the handshake, then
answers with hand-built RESULTs)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from kvstore_client import AsyncClient, Client
from kvstore_client.channel import AsyncTcpChannel, TcpChannel

from kvstore.errors import ProtocolError
from kvstore.protocol import messages as m
from kvstore.protocol.decoder import NEED_DATA, Decoder, Frame
from kvstore.protocol.frames import FrameType, encode_frame

NS = "channel-test"
PEER_SECONDS_MAX = 10.0


class Counting:
    """A Channel over another one, counting what crosses it."""

    def __init__(self, inner: TcpChannel) -> None:
        self.inner, self.sent, self.received = inner, 0, 0

    def send_all(self, bufs: Sequence[Any]) -> None:
        self.sent += sum(memoryview(b).nbytes for b in bufs)
        self.inner.send_all(bufs)

    def recv_into(self, view: memoryview) -> int:
        n = self.inner.recv_into(view)
        self.received += n
        return n

    def close(self) -> None:
        self.inner.close()


def test_sync_client_runs_on_any_channel(bulk) -> None:
    made: list[Counting] = []

    def connect(host: str, port: int, timeout: float) -> Counting:
        made.append(Counting(TcpChannel.connect(host, port, timeout)))
        return made[-1]

    data = os.urandom(300_000)
    with Client(port=bulk.port, namespace=NS, create=True, connect=connect) as c:
        assert c.put("k", data) is True
        assert c.get("k") == data
    assert made and sum(ch.sent for ch in made) > len(data)
    assert sum(ch.received for ch in made) > len(data)


async def test_async_client_runs_on_any_channel(bulk) -> None:
    made: list[AsyncTcpChannel] = []

    async def connect(host: str, port: int, timeout: float) -> AsyncTcpChannel:
        made.append(await AsyncTcpChannel.connect(host, port, timeout))
        return made[-1]

    async with AsyncClient(port=bulk.port, namespace=NS, create=True, connect=connect) as c:
        assert await c.put("a", b"xyz") is True
        assert await c.exists_many(["a", "b"]) == [True, False]
    assert len(made) == 1


class MalformedPeer:
    """A loopback peer that completes the handshake, then answers every request with
    ``answer`` (a RESULT header built by hand)."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(PEER_SECONDS_MAX)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _frames(self, conn: socket.socket, dec: Decoder) -> Frame:
        while True:
            ev = dec.next_event()
            if isinstance(ev, Frame):
                return ev
            if ev is NEED_DATA:
                data = conn.recv(65536)
                if not data:
                    raise ConnectionError("client left")
                dec.receive_data(data)

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(PEER_SECONDS_MAX)
            dec = Decoder()
            try:
                self._frames(conn, dec)  # HELLO
                conn.sendall(encode_frame(FrameType.CHALLENGE, 0,
                                          m.Challenge(b"n" * m.NONCE_BYTES).to_header()))
                self._frames(conn, dec)  # AUTH
                conn.sendall(encode_frame(FrameType.AUTH_OK, 0,
                                          m.AuthOk("dev", NS).to_header()))
                while True:
                    f = self._frames(conn, dec)
                    conn.sendall(encode_frame(FrameType.RESULT, f.request_id, self.answer))
            except (ConnectionError, OSError):
                return

    def close(self) -> None:
        self.sock.close()
        self.thread.join(PEER_SECONDS_MAX)


@pytest.mark.parametrize("call,answer", [
    (lambda c: c.exists_many(["a"]), {"exists": [1]}),  # an int where a bool belongs
    (lambda c: c.exists_many(["a", "b"]), {"exists": [True]}),  # one entry short
    (lambda c: c.delete_many(["a"]), {"deleted": 2}),  # more deleted than asked
    (lambda c: c.prefetch(["a"]), {"staged": "1"}),
    (lambda c: c.lookup(["a", "b"]), {"found": 3, "leased": 0}),  # a prefix past the chain
    (lambda c: c.put("a", b"x"), {"created": [1]}),
])
def test_a_malformed_result_is_a_protocol_error(call, answer) -> None:
    peer = MalformedPeer(answer)
    try:
        with Client(port=peer.port, namespace=NS, retries=0, timeout=PEER_SECONDS_MAX) as c:
            with pytest.raises(ProtocolError):
                call(c)
    finally:
        peer.close()


def test_shm_client_runs_on_the_channel_it_is_given(bulk) -> None:
    from kvstore_client.shm import ShmClient

    made: list[Counting] = []

    def connect(host: str, port: int, timeout: float) -> Counting:
        made.append(Counting(TcpChannel.connect(host, port, timeout)))
        return made[-1]

    data = os.urandom(5000)
    with ShmClient(port=bulk.port, namespace=NS, size=1 << 16, create=True,
                   connect=connect) as c:
        c.region.view[:len(data)] = data
        assert c.put_many(["s"], [0], [len(data)]) == [True]
        assert c.get_many(["s"], [8192], [len(data)]) == [len(data)]
        assert bytes(c.region.view[8192:8192 + len(data)]) == data
    assert len(made) == 1 and made[0].sent and made[0].received
