"""--max-connections-per-tenant on every listener (``kvstore.service.conn_caps``), and the total
--max-connections on every listener.

The counter on its own first; then a real ``kvstore serve`` with three tenants on loopback,
HTTP (raw keep-alive connections signed by botocore, and boto3), Redis protocol (redis-py) and
the bulk port (the SDK): cap+1 connections of tenant A, the extra one refused with the
listener's typed answer and closed, tenant B still served, a closed connection frees its slot,
a connection signed (or AUTHed) by another tenant re-binds, and the server stays up.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from kvstore_client import Busy, Client
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvstore.errors import LimitExceeded
from kvstore.service.conn_caps import TenantConnections
from tests.serve_proc import ServeProc, free_port

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
A = ("AKIDCAPA", "secret-cap-a")
B = ("AKIDCAPB", "secret-cap-b")
C = ("AKIDCAPC", "secret-cap-c")
CAP = 2
WAIT_S = 15.0  # how long a slot may take to come back after a close (it takes milliseconds)
SMALL = ["--device", "memory", "--capacity", "32MiB", "--segment-size", "4MiB", "--dram", "8MiB",
         "--log-level", "warning"]


# -- the counter ----------------------------------------------------------------------------

def test_the_counter_caps_each_tenant_and_rebinds() -> None:
    counts = TenantConnections(2)
    s1, s2, s3, s4 = (counts.slot() for _ in range(4))
    s1.bind("a")
    s2.bind("a")
    with pytest.raises(LimitExceeded, match="at most 2"):
        s3.bind("a")
    assert s3.tenant is None and counts.count("a") == 2
    s3.bind("b")  # another tenant is not affected
    s1.bind("a")  # the same tenant again: no-op
    assert counts.tenants() == {"a": 2, "b": 1}
    s2.bind("b")  # re-bind: counts against b, no longer against a
    assert counts.tenants() == {"a": 1, "b": 2}
    with pytest.raises(LimitExceeded):
        s1.bind("b")  # b is full: s1 is unbound (its connection gets closed)
    assert s1.tenant is None and counts.tenants() == {"b": 2}
    s4.bind("a")
    for s in (s1, s2, s3, s4, s4):  # release is idempotent
        s.release()
    assert counts.tenants() == {}
    with pytest.raises(ValueError):
        TenantConnections(0)


# -- a real server --------------------------------------------------------------------------

def _wait_for(what: str, ok: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProc]:
    tmp = tmp_path_factory.mktemp("conncaps")
    creds = tmp / "tenants.json"
    creds.write_text(json.dumps({"tenants": [
        {"name": n, "access_key": k[0], "secret_key": k[1], "namespaces": [f"{n}-*"]}
        for n, k in (("ta", A), ("tb", B), ("tc", C))]}))
    resp_port = free_port()
    s = ServeProc(tmp / "data", tmp, *SMALL, "--credentials", str(creds),
                  "--max-connections-per-tenant", str(CAP), "--resp-port", str(resp_port))
    s.resp = resp_port  # type: ignore[attr-defined]
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def _sign(port: int, creds: tuple[str, str], method: str, path: str) -> dict[str, str]:
    req = AWSRequest(method=method, url=f"http://127.0.0.1:{port}{path}", data=b"")
    S3SigV4Auth(Credentials(*creds), "s3", "us-east-1").add_auth(req)
    headers = dict(req.headers.items())
    headers.setdefault("host", f"127.0.0.1:{port}")  # signed, but botocore leaves it to us
    return headers


class Http:
    """One keep-alive HTTP connection on a raw socket; each request signed by the tenant
    given, so which connection a request travels on is never in doubt."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)

    def list_buckets(self, creds: tuple[str, str], path: str = "/") -> tuple[int, bytes, str]:
        """(status, body, the connection header) of a signed GET (S3 ListBuckets unless
        ``path`` says otherwise); status 0 when the server had closed."""
        headers = _sign(self.port, creds, "GET", path)
        req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        try:
            self.sock.sendall(req.encode() + b"\r\n")
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return 0, b"", ""
                got += chunk
        except OSError:
            return 0, b"", ""
        head, _, body = got.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:])
        fields = {k.lower(): v for k, v in fields.items()}
        length = int(fields.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "closed inside a response"
            body += chunk
        return int(lines[0].split()[1]), body, fields.get("connection", "")

    def closed_by_server(self) -> bool:
        """The server closed this socket (EOF, or a reset): we never close it before asking."""
        self.sock.settimeout(WAIT_S)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    def reopen(self) -> None:
        self.sock.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT_S)

    def close(self) -> None:
        self.sock.close()


def _boto(port: int, creds: tuple[str, str]) -> Any:
    return boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=creds[0],
        aws_secret_access_key=creds[1], region_name="us-east-1",
        config=Config(signature_version="s3v4", retries={"max_attempts": 1, "mode": "standard"},
                      s3={"addressing_style": "path"}))


def _refused(srv: ServeProc, port: str) -> float:
    status, body = srv.request("GET", "/metrics")
    assert status == 200
    m = re.search(rf'kvstore_connections_refused_total{{port="{port}",reason="tenant_cap"}} '
                  r"(\S+)", body.decode())
    assert m, f"no tenant_cap counter for {port}"
    return float(m.group(1))


def test_http_tenant_past_its_cap_gets_slowdown_and_is_closed(srv: ServeProc) -> None:
    before = _refused(srv, "http")
    conns = [Http(srv.http) for _ in range(CAP + 1)]
    try:
        for c in conns[:CAP]:
            assert c.list_buckets(A)[0] == 200  # bound to ta, kept open
        status, body, connection = conns[CAP].list_buckets(A)
        assert status == 503 and b"<Code>SlowDown</Code>" in body, body
        assert b"--max-connections-per-tenant" in body and connection == "close"
        assert conns[CAP].closed_by_server()
        assert _refused(srv, "http") == before + 1
        # /v1 binds the same way (its answer is JSON)
        v1 = Http(srv.http)
        conns.append(v1)
        status, body, connection = v1.list_buckets(A, "/v1/namespaces")
        assert status == 503 and json.loads(body)["error"]["name"] == "SlowDown", body
        assert connection == "close" and v1.closed_by_server()
        # boto3 (its own new connection) as ta is refused too, as tb is served
        with pytest.raises(ClientError) as exc:
            _boto(srv.http, A).list_buckets()
        assert exc.value.response["Error"]["Code"] == "SlowDown"
        _boto(srv.http, B).create_bucket(Bucket="tb-served")
        # unsigned requests bind nothing: probes and /metrics still answer
        assert srv.request("GET", "/healthz")[0] == 200
        conns[0].close()  # frees one of ta's slots
        extra = Http(srv.http)
        conns.append(extra)
        _wait_for("ta's freed slot is given back",
                  lambda: extra.list_buckets(A)[0] == 200 or _reopen(extra))
        assert srv.proc.poll() is None
    finally:
        for c in conns:
            c.close()


def _reopen(c: Http) -> bool:
    """A refused connection is closed by the server: open a new one for the next try."""
    c.reopen()
    return False


def test_http_connection_signed_by_another_tenant_rebinds(srv: ServeProc) -> None:
    a1, a2 = Http(srv.http), Http(srv.http)
    more: list[Http] = []
    try:
        _wait_for("ta has room for two", lambda: _fill(a1, a2, A))
        assert a2.list_buckets(B)[0] == 200  # a2 now counts against tb, not ta
        a3 = Http(srv.http)
        more.append(a3)
        assert a3.list_buckets(A)[0] == 200  # so ta has room again
        b2, b3 = Http(srv.http), Http(srv.http)
        more += [b2, b3]
        assert b2.list_buckets(B)[0] == 200  # tb: a2 and b2
        assert b3.list_buckets(B)[0] == 503
        # re-binding into a full tenant: refused and closed, and its old slot is freed
        status, _, connection = a1.list_buckets(B)
        assert status == 503 and connection == "close" and a1.closed_by_server()
        a4 = Http(srv.http)
        more.append(a4)
        assert a4.list_buckets(A)[0] == 200  # ta: a3 and a4
    finally:
        for c in (a1, a2, *more):
            c.close()


def _fill(c1: Http, c2: Http, creds: tuple[str, str]) -> bool:
    """Both connections bound to ``creds``' tenant (connections of an earlier test may take a
    moment to be released)."""
    for c in (c1, c2):
        if c.list_buckets(creds)[0] != 200:
            _reopen(c)
            return False
    return True


def _redis(srv: ServeProc, creds: tuple[str, str]) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=srv.resp,  # type: ignore[attr-defined]
                       username=creds[0], password=creds[1], single_connection_client=True,
                       socket_timeout=WAIT_S, retry=Retry(NoBackoff(), 0))


def test_resp_tenant_past_its_cap_is_refused_at_auth(srv: ServeProc) -> None:
    before = _refused(srv, "resp")
    held = [_redis(srv, C) for _ in range(CAP)]
    extra: list[redis.Redis] = []
    try:
        for r in held:
            assert r.ping()
        with pytest.raises(redis.ConnectionError, match="max number of clients reached"):
            _redis(srv, C)  # connects and AUTHs at once
        assert _refused(srv, "resp") == before + 1
        other = _redis(srv, A)
        extra.append(other)
        other.set("ta-resp/k", b"v")  # another tenant is served
        assert other.get("ta-resp/k") == b"v"
        held[0].close()

        def pings() -> bool:
            try:
                again = _redis(srv, C)
            except redis.ConnectionError:
                return False
            extra.append(again)
            return bool(again.ping())
        _wait_for("tc's freed slot is given back", pings)
        # AUTH as another tenant on a live connection re-binds it: tc has room again
        assert held[1].execute_command("AUTH", A[0], A[1]) in (b"OK", "OK", True)
        fresh = _redis(srv, C)
        extra.append(fresh)
        assert fresh.ping()
        assert srv.proc.poll() is None
    finally:
        for r in held + extra:
            r.close()


def test_bulk_tenant_cap_counts_apart_from_http_and_resp(srv: ServeProc) -> None:
    """The listeners count apart: tb's HTTP and Redis connections take none of its bulk
    slots."""
    h = Http(srv.http)
    rs = _redis(srv, B)
    clients = [Client("127.0.0.1", srv.bulk, namespace="tb-bulk", access_key=B[0],
                      secret_key=B[1], create=True, pool_size=1, retries=0)
               for _ in range(CAP + 1)]
    try:
        _wait_for("tb bound on HTTP", lambda: h.list_buckets(B)[0] == 200 or _reopen(h))
        assert rs.ping()
        for c in clients[:CAP]:
            c.ping()
        with pytest.raises(LimitExceeded, match=f"at most {CAP}"):
            clients[CAP].ping()
    finally:
        h.close()
        rs.close()
        for c in clients:
            c.close()


# -- the total cap ----------------------------------------------------------------------------

def test_max_connections_holds_on_the_resp_and_bulk_listeners(tmp_path: Path) -> None:
    """``kvstore serve --max-connections`` reaches the Redis and bulk listeners (HTTP's cap,
    its evictions and its probe slots: tests/api/test_http_guard.py, on a real serve too)."""
    total = 3
    resp_port = free_port()
    s = ServeProc(tmp_path / "data", tmp_path, *SMALL, "--max-connections", str(total),
                  "--probe-connections", "1", "--resp-port", str(resp_port)).wait_ready()
    socks: list[socket.socket] = []
    clients: list[Client] = []
    try:
        # Redis protocol (development mode: a connection is authenticated at once)
        for _ in range(total):
            r = socket.create_connection(("127.0.0.1", resp_port), timeout=WAIT_S)
            socks.append(r)
            r.sendall(b"PING\r\n")
            assert r.recv(64) == b"+PONG\r\n"
        r = socket.create_connection(("127.0.0.1", resp_port), timeout=WAIT_S)
        socks.append(r)
        assert _read_to_eof(r) == b"-ERR max number of clients reached\r\n"
        # bulk: authenticated connections hold their slots; one more is told Busy
        for _ in range(total):
            c = Client("127.0.0.1", s.bulk, namespace="capns", create=True, pool_size=1,
                       retries=0)
            clients.append(c)
            c.ping()
        c = Client("127.0.0.1", s.bulk, namespace="capns", pool_size=1, retries=0)
        clients.append(c)
        with pytest.raises(Busy):
            c.ping()
        assert s.proc.poll() is None and s.request("GET", "/healthz")[0] == 200
    finally:
        for x in socks:
            x.close()
        for c in clients:
            c.close()
        s.stop()


def _read_to_eof(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk
