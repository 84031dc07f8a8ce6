"""S3 requests from plain HTTP tools (curl-style, unsigned, dev mode)."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_create_bucket_without_content_length(live_server: Callable[..., Any]) -> None:
    """`curl -XPUT /bucket` sends neither Content-Length nor Transfer-Encoding: an empty body."""
    srv = live_server()
    status, body = _request(srv.port, "PUT", "/plain-bucket")
    assert status == 200, body
    status, _ = _request(srv.port, "PUT", "/plain-bucket/obj", b"hello",
                         {"Content-Length": "5"})
    assert status == 200
    status, body = _request(srv.port, "GET", "/plain-bucket/obj")
    assert (status, body) == (200, b"hello")
    status, body = _request(srv.port, "HEAD", "/plain-bucket/obj")
    assert status == 200 and body == b""
    assert srv.state.engine.check() == []
