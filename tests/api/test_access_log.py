"""`kvstore serve --access-log`: one line per request on kvstore.access, off by default.

Real `python -m kvstore serve` subprocesses on 127.0.0.1; the lines are read from their stderr.
"""

from __future__ import annotations

import http.client
import re
from pathlib import Path

from tests.test_serve import SMALL, Serve, free_port, stop

LINE = re.compile(r'kvstore\.access: 127\.0\.0\.1:\d+ "(?P<method>[A-Z]+) (?P<path>\S+)" '
                  r"(?P<status>\d{3}|-) sent=(?P<sent>\d+) received=(?P<received>\d+) "
                  r"(?P<ms>\d+\.\d{3})ms$")


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def access_lines(stderr: str) -> list[re.Match[str]]:
    found = []
    for line in stderr.splitlines():
        if "kvstore.access" in line:
            m = LINE.search(line)
            assert m, f"malformed access log line: {line!r}"
            found.append(m)
    return found


def serve(tmp_path: Path, name: str, *extra: str) -> tuple[Serve, int]:
    args = ["--port", str(free_port()), "--bulk-port", str(free_port()),
            "--data-dir", str(tmp_path / name), *SMALL, *extra]
    srv = Serve(tmp_path, args, name=name)
    return srv, srv.wait_ready()


def test_access_log_one_line_per_request(tmp_path: Path) -> None:
    # --log-level warning: the access log was asked for by name, so it shows anyway
    srv, port = serve(tmp_path, "on", "--access-log", "--log-level", "warning")
    payload = bytes(range(256)) * 40  # 10240 bytes
    try:
        health = request(port, "GET", "/healthz")
        assert health[0] == 200
        assert request(port, "PUT", "/logged")[0] == 200
        assert request(port, "PUT", "/logged/some%20key?x-id=PutObject", payload)[0] == 200
        got = request(port, "GET", "/logged/some%20key")
        assert got == (200, payload)
        missing = request(port, "GET", "/logged/absent")
        assert missing[0] == 404
        assert request(port, "HEAD", "/logged/some%20key")[0] == 200
    finally:
        stop(srv)
    lines = access_lines(srv.err)
    seen = [(m["method"], m["path"], m["status"], int(m["sent"]), int(m["received"]))
            for m in lines]
    assert seen == [
        ("GET", "/healthz", "200", len(health[1]), 0),
        ("PUT", "/logged", "200", 0, 0),
        ("PUT", "/logged/some%20key", "200", 0, len(payload)),  # no query string in the log
        ("GET", "/logged/some%20key", "200", len(payload), 0),
        ("GET", "/logged/absent", "404", len(missing[1]), 0),
        ("HEAD", "/logged/some%20key", "200", 0, 0),
    ]
    assert all(float(m["ms"]) >= 0.0 for m in lines)


def test_access_log_is_off_by_default(tmp_path: Path) -> None:
    srv, port = serve(tmp_path, "off")
    try:
        assert request(port, "GET", "/healthz")[0] == 200
        assert request(port, "PUT", "/quiet")[0] == 200
    finally:
        stop(srv)
    assert access_lines(srv.err) == []
    assert "kvstore.access" not in srv.err and '"GET /healthz' not in srv.err
