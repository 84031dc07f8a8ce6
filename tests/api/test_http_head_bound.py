"""The HTTP head bound (``limits.http_header_bytes_max``, ``kvstore.api.http_guard``) against a
real ``python -m kvstore serve``: a request line or headers past it get ``400
RequestHeaderSectionTooLarge`` and a closed connection, counted, while heads just under it,
keep-alive heads that add up to more, bodies, and pipelined requests are served as before, and
the server keeps serving everyone.

Before the bound, httptools grew one header without limit, in quadratic time: a peer could
hold megabytes per connection and the event loop for seconds within the header timeout.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from kvstore import limits
from tests.api.test_http_guard import Serve, connect, delta, until_closed

LIMIT = limits.http_header_bytes_max
BUCKET = "head-bkt"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    s = Serve(tmp_path_factory.mktemp("head"), ["--http-header-timeout", "20"])
    assert s.request("PUT", f"/{BUCKET}")[0] == 200
    yield s
    s.stop()


def head(path: str, pad: int, *, extra: bytes = b"") -> bytes:
    """A GET whose head is exactly ``pad`` bytes long (an ``x-pad`` header fills it)."""
    start = f"GET {path} HTTP/1.1\r\nhost: x\r\n".encode() + extra + b"x-pad: "
    end = b"\r\n\r\n"
    n = pad - len(start) - len(end)
    assert n > 0
    return start + b"p" * n + end


_LEFT: dict[int, bytes] = {}  # bytes read past a response, per socket (pipelined answers)


def read_response(sock: socket.socket) -> bytes:
    """One response with a content-length body (what came after it is kept for the next)."""
    sock.settimeout(30)
    got = _LEFT.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {got[:200]!r}"
        got += chunk
    headers, _, body = got.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in headers.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    _LEFT[sock.fileno()] = body[length:]
    return headers + b"\r\n\r\n" + body[:length]


def assert_too_large(answer: bytes, xml: bool = True) -> None:
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b"connection: close" in status.lower()
    assert b"RequestHeaderSectionTooLarge" in body
    assert (b"<Code>RequestHeaderSectionTooLarge</Code>" in body) is xml


def test_a_head_at_the_bound_is_served(srv: Serve) -> None:
    assert ("refused", "http", "header_too_large") in srv.counters()  # declared, at 0
    with connect(srv.port) as s:
        s.sendall(head("/healthz", LIMIT))
        assert read_response(s).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("xml,path", [(True, f"/{BUCKET}/k"), (False, "/v1/namespaces")],
                         ids=["s3", "control"])
def test_one_byte_more_is_refused_and_closed(srv: Serve, xml: bool, path: str) -> None:
    before = srv.counters()
    with connect(srv.port) as s:
        s.sendall(head(path, LIMIT + 1))
        assert_too_large(until_closed(s), xml=xml)
    assert delta(before, srv.counters(), ("refused", "http", "header_too_large")) == 1
    assert srv.request("GET", "/healthz")[0] == 200


def test_a_huge_header_is_cut_off_at_the_bound(srv: Serve) -> None:
    """64 MiB of one header value, streamed: the server answers once the bound is passed and
    closes; it never buffers (or parses) the rest."""
    with connect(srv.port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-huge: ")
        chunk = b"h" * (1 << 20)
        sent = 0
        try:
            for _ in range(64):
                s.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server
        answer = until_closed(s)
        assert answer == b"" or b"RequestHeaderSectionTooLarge" in answer, answer[:300]
    assert sent <= 32 << 20, "the server read on past the bound"  # socket buffers: a few MiB
    assert srv.request("GET", "/healthz")[0] == 200


@pytest.mark.parametrize("what", ["request-line", "many-headers"])
def test_a_long_request_line_or_many_headers_are_refused(srv: Serve, what: str) -> None:
    if what == "request-line":
        data = f"GET /{BUCKET}/{'u' * LIMIT} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
    else:
        data = (f"GET /{BUCKET}/k HTTP/1.1\r\nhost: x\r\n".encode()
                + b"".join(b"x-h%d: v\r\n" % i for i in range(LIMIT // 8)) + b"\r\n")
    with connect(srv.port) as s:
        s.sendall(data)
        assert_too_large(until_closed(s))


def test_heads_on_one_keepalive_connection_are_bounded_each(srv: Serve) -> None:
    """The bound is per request: heads that add up to several times it are served."""
    with connect(srv.port) as s:
        for _ in range(4):
            s.sendall(head("/healthz", LIMIT - 100))
            assert read_response(s).startswith(b"HTTP/1.1 200 ")


def test_a_body_in_the_same_write_as_its_head_is_not_head(srv: Serve) -> None:
    body = b"b" * (4 * LIMIT)
    req = (f"PUT /{BUCKET}/bodykey HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n"
           .encode() + body)
    with connect(srv.port) as s:
        s.sendall(req)  # one write: the kernel hands the server head and body together
        assert read_response(s).startswith(b"HTTP/1.1 200 ")
    assert srv.request("GET", f"/{BUCKET}/bodykey") == (200, body)


def test_pipelined_requests_are_each_bounded(srv: Serve) -> None:
    with connect(srv.port) as s:
        s.sendall(head("/healthz", LIMIT // 2) + head("/healthz", LIMIT // 2)
                  + head("/healthz", LIMIT // 2))
        for _ in range(3):
            assert read_response(s).startswith(b"HTTP/1.1 200 ")
        s.sendall(head("/healthz", 2 * LIMIT))
        answer = _LEFT.pop(s.fileno(), b"") + until_closed(s)
        assert_too_large(answer, xml=False)  # a control path: JSON
