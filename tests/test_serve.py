"""`python -m kvstore serve` as a real subprocess on 127.0.0.1: endpoints, health, graceful stop,
refusals, and flag > env > config-file precedence."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kvstore import limits
from tests.serve_proc import ServeChild, free_port, free_ports

START_SECONDS_MAX = 30.0
REPO = Path(__file__).resolve().parent.parent
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SMALL = ["--capacity", "32MiB", "--segment-size", "4MiB", "--dram", "8MiB"]


class Serve(ServeChild):
    """One `kvstore serve` process; stdout and stderr go to files in the test's tmp dir."""

    def wait_ready(self) -> int:
        """Wait for 'kvstore: ready'; return the HTTP port it printed."""
        return self.wait_ready_port(START_SECONDS_MAX)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def get(port: int, path: str, method: str = "GET", body: object = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw and raw[:1] in b"{[" else raw)
    finally:
        conn.close()


def put_bucket(port: int, name: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("PUT", f"/{name}", body=b"", headers={"content-length": "0"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def stop(srv: Serve, sig: signal.Signals = signal.SIGTERM) -> float:
    t0 = time.monotonic()
    srv.proc.send_signal(sig)
    code = srv.wait_exit(limits.shutdown_seconds_max + 5)
    elapsed = time.monotonic() - t0
    assert code == 0, srv.err[-2000:]
    assert elapsed <= limits.shutdown_seconds_max, elapsed
    return elapsed


def test_serve_endpoints_health_and_graceful_stop(tmp_path: Path) -> None:
    port, bulk = free_ports(2)
    data = tmp_path / "nested" / "data"
    srv = Serve(tmp_path, ["--port", str(port), "--bulk-port", str(bulk), "--data-dir", str(data),
                           *SMALL])
    try:
        assert srv.wait_ready() == port
        out = srv.out
        assert f"http://127.0.0.1:{port}" in out
        assert re.search(r"device: (uring|posix)\b", out), out
        assert f"tcp://127.0.0.1:{bulk}" in out
        assert "DEVELOPMENT MODE" in out and "DEVELOPMENT MODE" in srv.err
        assert data.is_dir()
        assert get(port, "/healthz") == (200, {"status": "ok"})
        assert get(port, "/readyz") == (200, {"ready": True, "reason": "ready"})
        assert get(port, "/v1/namespaces", "POST", {"name": "kept-ns"})[0] == 201
        # an idle keep-alive connection must not hold up the stop
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        idle.request("GET", "/healthz")
        idle.getresponse().read()
        bulk_conn = socket.create_connection(("127.0.0.1", bulk), timeout=10)  # idle, too
        # a PUT in flight when SIGTERM arrives is drained: it completes, then the process exits 0
        assert put_bucket(port, "drain-bucket") == 200
        inflight = socket.create_connection(("127.0.0.1", port), timeout=10)
        inflight.sendall(b"PUT /drain-bucket/obj HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(PAYLOAD) + PAYLOAD[:4096])
        time.sleep(0.3)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert srv.proc.poll() is None  # still draining
        inflight.sendall(PAYLOAD[4096:])
        answer = inflight.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        inflight.close()
        assert srv.wait_exit(limits.shutdown_seconds_max + 5) == 0, srv.err[-2000:]
        assert time.monotonic() - t0 <= limits.shutdown_seconds_max
        idle.close()
        bulk_conn.close()
    finally:
        srv.kill()
    # the engine closed cleanly: a restart recovers the namespace (SIGINT stops it too)
    again = Serve(tmp_path, ["--port", str(port), "--bulk-port", str(bulk),
                             "--data-dir", str(data), *SMALL], name="again")
    try:
        again.wait_ready()
        status, body = get(port, "/v1/namespaces/kept-ns")
        assert status == 200 and body["name"] == "kept-ns"
        status, body = get(port, "/v1/check", "POST")
        assert body == {"ok": True, "problems": []}
        status, data = get(port, "/drain-bucket/obj")
        assert status == 200 and data == PAYLOAD  # the drained PUT was stored and synced
        stop(again, signal.SIGINT)
    finally:
        again.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--host", "0.0.0.0"], "refusing to listen on '0.0.0.0' without --credentials"),
     (["--capacity", "10XB"], "--capacity: cannot parse size '10XB'"),
     (["--device", "floppy"], "device must be one of")],
)
def test_refusals_exit_2_with_a_clear_message(tmp_path: Path, args: list[str],
                                              message: str) -> None:
    srv = Serve(tmp_path, [*args, "--data-dir", str(tmp_path / "d")])
    assert srv.wait_exit(START_SECONDS_MAX) == 2
    assert message in srv.err
    assert "Traceback" not in srv.err
    assert not (tmp_path / "d").exists()  # nothing was started or created


def test_busy_port_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        srv = Serve(tmp_path, ["--port", str(busy.getsockname()[1]), "--bulk-port",
                               str(free_port()), "--data-dir", str(tmp_path / "d"), *SMALL])
        assert srv.wait_exit(START_SECONDS_MAX) == 1
    assert "cannot listen on 127.0.0.1" in srv.err and "Traceback" not in srv.err
    assert not (tmp_path / "d").exists()


def test_flag_beats_env_beats_config_file(tmp_path: Path) -> None:
    p_file, p_env, p_flag = free_ports(3)
    conf = tmp_path / "kv.toml"
    conf.write_text(f'port = {p_file}\nbulk_port = {free_port()}\ndata_dir = "from-file"\n'
                    'capacity = "32MiB"\nsegment_size = "4MiB"\ndram = "8MiB"\n')
    env = {"KVSTORE_CONFIG": str(conf), "KVSTORE_PORT": str(p_env)}
    srv = Serve(tmp_path, [], env, name="env")
    try:
        assert srv.wait_ready() == p_env  # env beats the file
        assert (tmp_path / "from-file").is_dir()  # the file beats the default
        assert "capacity: 32MiB" in srv.out
        stop(srv)
    finally:
        srv.kill()
    srv = Serve(tmp_path, ["--port", str(p_flag)], env, name="flag")
    try:
        assert srv.wait_ready() == p_flag  # the flag beats env
        stop(srv)
    finally:
        srv.kill()


def test_credentials_turn_off_development_mode(tmp_path: Path) -> None:
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"tenants": [
        {"name": "acme", "access_key": "AKIDACME", "secret_key": "s", "namespaces": ["acme-*"]}]}))
    port = free_port()
    srv = Serve(tmp_path, ["--port", str(port), "--bulk-port", str(free_port()),
                           "--credentials", str(creds), "--data-dir", str(tmp_path / "d"), *SMALL])
    try:
        srv.wait_ready()
        assert "DEVELOPMENT MODE" not in srv.out
        assert get(port, "/healthz")[0] == 200
        status, body = get(port, "/v1/namespaces")
        assert status == 403 and body["error"]["name"] == "AccessDenied"
        stop(srv)
    finally:
        srv.kill()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    srv = Serve(tmp_path, ["--credentials", str(bad), "--data-dir", str(tmp_path / "d2")],
                name="bad")
    assert srv.wait_exit(START_SECONDS_MAX) == 2
    assert "credentials file" in srv.err and "Traceback" not in srv.err
    assert not (tmp_path / "d2").exists()


def test_capacity_beyond_the_disk_is_said_loudly(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    too_big = min(1 << 50, (free // limits.GiB + 2) * limits.GiB)  # parse_size caps at 1 PiB
    if too_big <= free:
        pytest.skip("the file system is larger than the biggest capacity serve accepts")
    port = free_port()
    srv = Serve(tmp_path, ["--port", str(port), "--bulk-port", str(free_port()),
                           "--data-dir", str(tmp_path / "d"), "--capacity", str(too_big),
                           "--segment-size", "1MiB", "--dram", "1MiB"])
    try:
        srv.wait_ready()
        assert "more than the file system can hold" in srv.err
        stop(srv)
    finally:
        srv.kill()


def test_graceful_stop_with_a_stalled_upload_logs_one_line(tmp_path: Path) -> None:
    """A client sent the headers and part of a PUT body, then stopped: at the drain bound the
    server closes it and says so in one line, not a CancelledError traceback, and exits 0."""
    port, bulk = free_ports(2)
    srv = Serve(tmp_path, ["--port", str(port), "--bulk-port", str(bulk),
                           "--data-dir", str(tmp_path / "data"), "--shutdown-seconds", "3", *SMALL])
    try:
        srv.wait_ready()
        assert put_bucket(port, "stall") == 200
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(b"PUT /stall/half HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Content-Length: 1048576\r\n\r\n" + PAYLOAD[:4096])
            status, _ = get(port, "/healthz")  # the request above is in flight by now
            assert status == 200
            stop(srv)
            stalled.settimeout(5)
            try:
                leftover = stalled.recv(65536)  # the server closed it, with no answer
            except ConnectionResetError:
                leftover = b""
    finally:
        srv.kill()
    err = srv.err
    for bad in ("Traceback", "CancelledError", "Exception in ASGI application", " ERROR "):
        assert bad not in err, err[-3000:]
    cut = [line for line in err.splitlines() if "drain bound reached" in line]
    assert len(cut) == 1 and "PUT /stall/half" in cut[0], err[-3000:]
    assert "engine closed" in err
    assert leftover == b""  # closed, not answered with uvicorn's 500


def test_second_server_on_one_data_dir_exits_1_naming_the_holder(tmp_path: Path) -> None:
    """Two servers on one data directory would each recover only their own writes: the second
    one must refuse at once, before recovery, and the first keep serving."""
    data = tmp_path / "data"
    port = free_port()
    first = Serve(tmp_path, ["--port", str(port), "--bulk-port", str(free_port()),
                             "--data-dir", str(data), *SMALL], name="first")
    try:
        first.wait_ready()
        assert put_bucket(port, "owned-bucket") == 200
        second = Serve(tmp_path, ["--port", str(free_port()), "--bulk-port", str(free_port()),
                                  "--data-dir", str(data), *SMALL], name="second")
        try:
            assert second.wait_exit(START_SECONDS_MAX) == 1
        finally:
            second.kill()
        assert str(data) in second.err and f"PID {first.proc.pid}" in second.err, second.err
        assert "Traceback" not in second.err and "kvstore: ready" not in second.out
        assert get(port, "/healthz") == (200, {"status": "ok"})  # the owner is undisturbed
        status, body = get(port, "/v1/check", "POST")
        assert status == 200 and body == {"ok": True, "problems": []}
        stop(first)
    finally:
        first.kill()
    third = Serve(tmp_path, ["--port", str(port), "--bulk-port", str(free_port()),
                             "--data-dir", str(data), *SMALL], name="third")
    try:
        third.wait_ready()  # the lock went with the first server
        assert get(port, "/v1/namespaces/owned-bucket")[0] == 200
        stop(third)
    finally:
        third.kill()


def test_connection_timeout_flags_reach_both_ports(tmp_path: Path) -> None:
    """`--bulk-handshake-timeout` and `--http-header-timeout` bound silent sockets of the real
    process (before them, both stayed open for as long as the peer liked); /metrics counts."""
    port, bulk = free_ports(2)
    srv = Serve(tmp_path, ["--port", str(port), "--bulk-port", str(bulk), "--data-dir",
                           str(tmp_path / "data"), *SMALL, "--bulk-handshake-timeout", "0.3",
                           "--http-header-timeout", "0.3", "--http-keepalive-timeout", "0.2"])
    try:
        srv.wait_ready()
        with socket.create_connection(("127.0.0.1", bulk), timeout=10) as b, \
                socket.create_connection(("127.0.0.1", port), timeout=10) as h:
            answer = b.recv(4096)  # an ERROR frame (RequestTimeout), then EOF
            assert answer and b"RequestTimeout" in answer
            while answer:
                answer = b.recv(4096)
            assert h.recv(4096) == b""  # closed without an answer: it asked nothing
        status, text = get(port, "/metrics")
        assert status == 200 and isinstance(text, bytes)
        assert b'kvstore_connection_timeouts_total{kind="handshake",port="bulk"} 1.0' in text
        assert b'kvstore_connection_timeouts_total{kind="header",port="http"} 1.0' in text
        stop(srv)
    finally:
        srv.kill()


def _subcommand_paths() -> list[list[str]]:
    """Every (sub)command of the `kvstore` CLI, found by walking the real parser."""
    import argparse

    from kvstore.__main__ import build_parser

    paths: list[list[str]] = [[]]

    def walk(p: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    paths.append([*prefix, name])
                    walk(child, [*prefix, name])

    walk(build_parser(), [])
    return paths


@pytest.mark.parametrize("path", _subcommand_paths(), ids=lambda p: " ".join(p) or "kvstore")
def test_every_help_prints(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` of every command prints and exits 0 (a literal '%' in a help text once made
    `kvstore serve --help` raise TypeError)."""
    from kvstore.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    assert "usage: kvstore" in capsys.readouterr().out
