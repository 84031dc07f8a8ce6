"""kvstore.api.http_guard against a real `python -m kvstore serve` on 127.0.0.1, with small
timeouts set by its flags: silent sockets, half a request line, partial headers, a stalled or
too-slow body, the header deadline after a keep-alive response, the connection cap full of
silent sockets or of stalled requests while the health probes keep answering, and the
counters in /metrics.

No assertion is about time: a socket the server should close is waited for up to
``WAIT_SECONDS`` (many times the timeout under test) and the test fails if it is still open.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_proc import ServeChild

START_SECONDS_MAX = 30.0
WAIT_SECONDS = 15.0
SMALL = ["--device", "memory", "--capacity", "32MiB", "--segment-size", "4MiB", "--dram", "8MiB",
         "--log-level", "warning"]
# a stalled body hits the 0.4 s body timeout before the rate floor's 0.8 s grace ends
FAST = ["--http-header-timeout", "0.5", "--http-keepalive-timeout", "0.3",
        "--body-timeout", "0.4", "--body-min-rate", "64KiB", "--body-rate-window", "0.5",
        "--body-rate-grace", "0.8"]
BUCKET = "guard-bkt"


class Serve(ServeChild):
    """One `kvstore serve` process on free loopback ports."""

    def __init__(self, tmp: Path, flags: list[str]) -> None:
        super().__init__(tmp, ["--port", "0", "--bulk-port", "0", "--data-dir",
                               str(tmp / "data"), *SMALL, *flags])
        self.port = self.wait_ready_port(START_SECONDS_MAX)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT_SECONDS)
        try:
            c.request(method, path, body=body)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def counters(self) -> dict[tuple[str, str, str], float]:
        """(metric, port, kind or reason) -> value, for the timeout and refusal counters."""
        status, text = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for fam in text_string_to_metric_families(text.decode()):
            for s in fam.samples:
                if s.name in ("kvstore_connection_timeouts_total",
                              "kvstore_connections_refused_total"):
                    label = s.labels.get("kind") or s.labels["reason"]
                    out[(s.name.split("_")[2], s.labels["port"], label)] = s.value
        return out


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    s = Serve(tmp_path_factory.mktemp("guard"), FAST)
    assert s.request("PUT", f"/{BUCKET}")[0] == 200
    yield s
    s.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS)


def until_closed(sock: socket.socket) -> bytes:
    """All bytes the server sends until it closes the connection."""
    sock.settimeout(WAIT_SECONDS)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the server kept the connection open for {WAIT_SECONDS}s")
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def assert_408(answer: bytes, xml: bool = True) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in head.lower()
    assert b"RequestTimeout" in body
    assert (b"<Code>RequestTimeout</Code>" in body) is xml


def delta(before: dict, after: dict, key: tuple[str, str, str]) -> float:
    return after.get(key, 0) - before.get(key, 0)


def test_a_silent_socket_is_closed_after_the_header_timeout(srv: Serve) -> None:
    before = srv.counters()
    with connect(srv.port) as s:
        assert until_closed(s) == b""  # nothing asked, nothing answered
    assert delta(before, srv.counters(), ("timeouts", "http", "header")) == 1


@pytest.mark.parametrize("sent", [b"GET /hea", b"GET /healthz HTTP/1.1\r\nHost: x\r\nAcc"],
                         ids=["half-request-line", "partial-headers"])
def test_an_incomplete_request_gets_408_and_is_closed(srv: Serve, sent: bytes) -> None:
    before = srv.counters()
    with connect(srv.port) as s:
        s.sendall(sent)
        assert_408(until_closed(s))
    assert delta(before, srv.counters(), ("timeouts", "http", "header")) == 1


def test_the_header_deadline_runs_from_the_previous_response(srv: Serve) -> None:
    """uvicorn's keep-alive timer stops at the first byte; the header deadline does not."""
    before = srv.counters()
    with connect(srv.port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"ok"' not in first:
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /heal")  # a second request that never ends
        assert_408(until_closed(s))
    assert delta(before, srv.counters(), ("timeouts", "http", "header")) == 1


def test_an_idle_keepalive_connection_is_closed_and_counted(srv: Serve) -> None:
    before = srv.counters()
    with connect(srv.port) as s:
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert until_closed(s).startswith(b"HTTP/1.1 200 ")
    assert delta(before, srv.counters(), ("timeouts", "http", "keepalive")) == 1


def put_head(key: str, length: int, path: str = "") -> bytes:
    return (f"PUT {path or f'/{BUCKET}/{key}'} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize("path,xml", [("", True), ("/v1/namespaces", False)],
                         ids=["s3", "control"])
def test_a_stalled_body_gets_408(srv: Serve, path: str, xml: bool) -> None:
    before = srv.counters()
    with connect(srv.port) as s:
        s.sendall(put_head("stalled", 100_000, path) + b"x" * 1000)
        assert_408(until_closed(s), xml=xml)
    assert delta(before, srv.counters(), ("timeouts", "http", "body")) == 1
    assert srv.request("GET", f"/{BUCKET}/stalled")[0] == 404


def test_a_body_below_the_rate_floor_gets_408(srv: Serve) -> None:
    before = srv.counters()
    with connect(srv.port) as s:
        s.sendall(put_head("slow", 1 << 20))
        s.settimeout(0.02)
        for _ in range(2000):  # 200 bytes every 20 ms, ~10 KiB/s: under 64 KiB/s, never idle
            try:
                s.sendall(b"y" * 200)
                if s.recv(1, socket.MSG_PEEK):
                    break  # the answer has come
            except TimeoutError:
                continue
            except OSError:
                break
        assert_408(until_closed(s))
    assert delta(before, srv.counters(), ("timeouts", "http", "body_rate")) == 1
    assert srv.request("GET", f"/{BUCKET}/slow")[0] == 404


def test_a_body_at_full_speed_is_stored(srv: Serve) -> None:
    body = os.urandom(2 << 20)
    assert srv.request("PUT", f"/{BUCKET}/fast", body)[0] == 200
    assert srv.request("GET", f"/{BUCKET}/fast") == (200, body)


# -- the connection cap -------------------------------------------------------------------

CAP, PROBES = 20, 4


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[Serve]:
    s = Serve(tmp_path, ["--max-connections", str(CAP), "--probe-connections", str(PROBES),
                         "--http-header-timeout", "2", "--http-keepalive-timeout", "1", "--body-timeout", "2",
                         "--body-min-rate", "0"])
    assert s.request("PUT", f"/{BUCKET}")[0] == 200
    yield s
    s.stop()


def test_a_cap_full_of_silent_sockets_locks_nobody_out(capped: Serve) -> None:
    before = capped.counters()
    silent = [connect(capped.port) for _ in range(CAP)]
    try:
        assert capped.request("GET", "/healthz")[0] == 200
        assert capped.request("GET", "/readyz")[0] == 200
        assert capped.request("GET", "/v1/namespaces")[0] == 200
        assert capped.request("PUT", f"/{BUCKET}/during-flood", b"z" * 1000)[0] == 200
        for s in silent:  # evicted, or timed out: every one of them is closed
            assert until_closed(s) == b""
    finally:
        for s in silent:
            s.close()
    after = capped.counters()
    assert delta(before, after, ("refused", "http", "evicted")) >= 1
    assert (delta(before, after, ("refused", "http", "evicted"))
            + delta(before, after, ("timeouts", "http", "header"))) >= CAP


def test_stalled_requests_up_to_the_cap_leave_the_probes_answering(capped: Serve) -> None:
    """Requests inside their body hold their connections (no eviction); the probe slice keeps
    /healthz and /readyz answering; everything else gets 503 until the stalls time out."""
    before = capped.counters()
    stalled = []
    feeding = threading.Event()
    feeding.set()
    try:
        for i in range(CAP - PROBES):
            s = connect(capped.port)
            s.sendall(put_head(f"stall-{i}", 1 << 20).replace(
                b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
            got = b""
            while b"\r\n\r\n" not in got:  # the app is reading: this request holds its slot
                got += s.recv(100)
            assert got.startswith(b"HTTP/1.1 100 ")
            stalled.append(s)

        def feed() -> None:  # a byte often enough that the 2 s body timeout never fires
            while feeding.is_set():
                for s in stalled:
                    s.send(b"w")
                time.sleep(0.05)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        assert capped.request("GET", "/healthz")[0] == 200
        assert capped.request("GET", "/readyz")[0] == 200
        status, body = capped.request("GET", "/v1/namespaces")
        assert status == 503 and b"SlowDown" in body
        status, body = capped.request("GET", f"/{BUCKET}/x")
        assert status == 503 and b"<Code>SlowDown</Code>" in body
        feeding.clear()
        feeder.join(WAIT_SECONDS)
        for s in stalled:  # now they stall for real: 408 and closed
            assert_408(until_closed(s))
    finally:
        feeding.clear()
        for s in stalled:
            s.close()
    assert capped.request("GET", "/v1/namespaces")[0] == 200
    after = capped.counters()
    assert delta(before, after, ("timeouts", "http", "body")) == CAP - PROBES
    assert delta(before, after, ("refused", "http", "probe_only")) == 2


def test_websocket_upgrades_do_not_leak_connection_slots(capped: Serve) -> None:
    upgrade = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    for _ in range(CAP + 5):
        with connect(capped.port) as s:
            s.sendall(upgrade)
            until_closed(s)  # the app refuses websockets
    assert capped.request("GET", "/v1/namespaces")[0] == 200
