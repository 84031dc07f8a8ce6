"""The Redis-protocol listener against redis-py, redis-cli and raw sockets on 127.0.0.1 (an
in-process server on a MemoryDevice engine; one test runs `kvstore serve --resp-port`):
values round-trip byte for byte, pipelines answer in order and see their own writes, MGET and
MSET, AUTH and tenants, oversized values refused with the connection and server still up,
protocol errors, the idle timeout and the connection cap."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvstore import limits
from kvstore.api.metrics import Metrics
from kvstore.auth import Tenants
from kvstore.engine.device import MemoryDevice
from kvstore.engine.types import EngineConfig
from kvstore.io_uring.posix import PosixDevice
from kvstore.protocol import resp
from kvstore.testing import BackgroundBulkServer
from kvstore.transport.resp_server import RespServer, start_resp_server
from kvstore.transport.watchdog import BodyLimits, BulkTimeouts

WAIT_SECONDS = 10.0  # far above every configured timeout: reaching it means no close happened
CREDS = {"tenants": [
    {"name": "acme", "access_key": "AKACME", "secret_key": "acme-secret",
     "namespaces": ["acme-*"]},
    {"name": "beta", "access_key": "AKBETA", "secret_key": "beta-secret",
     "namespaces": ["beta-*"]},
]}


class Node:
    def __init__(self, tenants: Tenants | None = None, namespace: str = "default",
                 timeouts: BulkTimeouts | None = None, connections_max: int = 64,
                 dram_bytes: int = 128 * limits.MiB, data_dir: Path | None = None) -> None:
        cfg = EngineConfig(data_dir=str(data_dir or "/mem"), capacity_bytes=512 * limits.MiB,
                           segment_bytes=128 * limits.MiB, dram_bytes=dram_bytes)
        device = MemoryDevice() if data_dir is None else PosixDevice()
        self.bulk = BackgroundBulkServer(cfg, device, tenants=tenants,
                                         metrics=Metrics()).start()
        assert self.bulk.node is not None
        self.resp: RespServer = self.bulk.call(start_resp_server(
            self.bulk.node, "127.0.0.1", 0, namespace=namespace, timeouts=timeouts,
            connections_max=connections_max))
        self.port = self.resp.port

    def client(self, **kw: object) -> redis.Redis:
        # no retries: a refused AUTH must fail at once, not after redis-py's backoff
        kw.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=WAIT_SECONDS, **kw)

    def stop(self) -> None:
        self.bulk.call(self.resp.close(2.0))
        assert self.bulk.engine is not None and self.bulk.engine.check() == []
        self.bulk.stop(timeout=2.0)


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node()
    yield n
    n.stop()


@pytest.fixture
def auth_node() -> Iterator[Node]:
    n = Node(tenants=Tenants.from_dict(CREDS), namespace="acme-default")
    yield n
    n.stop()


def test_values_round_trip_byte_for_byte(node: Node) -> None:
    r = node.client()
    big = os.urandom(2 * limits.MiB + 17)  # received in place, answered zero-copy
    assert r.set("k", big) is True and r.get("k") == big
    assert r.set("small", b"v\r\n\0") and r.get("small") == b"v\r\n\0"
    assert r.get("missing") is None
    assert r.set("k", b"other", nx=True) is None and r.get("k") == big  # NX keeps it
    assert r.set("fresh", b"1", nx=True) is True
    assert r.set("k", b"") and r.get("k") == b""  # SET overwrites, as on Redis
    assert r.ping() is True and r.echo(b"hi") == b"hi"
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.set("k", b"v", xx=True)


def test_flash_reads_pipelined_are_byte_exact() -> None:
    """Without a DRAM tier every GET holds an engine lease over a pooled read buffer until the
    socket has flushed it: many large answers in flight at once must all arrive intact."""
    n = Node(dram_bytes=0)
    try:
        r = n.client()
        vals = [os.urandom(2 * limits.MiB - i) for i in range(24)]
        p = r.pipeline(transaction=False)
        for i, v in enumerate(vals):
            p.set(f"f{i}", v)
        assert p.execute() == [True] * len(vals)
        for _ in range(2):
            p = r.pipeline(transaction=False)
            for i in range(len(vals)):
                p.get(f"f{i}")
            assert p.execute() == vals
        assert r.mget([f"f{i}" for i in range(len(vals))]) == vals
        assert n.bulk.engine is not None and n.bulk.engine.stats()["hits_flash"] >= 3 * len(vals)
    finally:
        n.stop()


def test_a_corrupt_block_on_disk_is_a_miss_never_wrong_bytes(tmp_path: Path) -> None:
    """Real corrupted bytes in a real segment file: the engine's checksum (the same for every
    front end) turns the GET into a nil, the neighbour still reads, the server stays up."""
    n = Node(dram_bytes=0, data_dir=tmp_path)
    try:
        r = n.client()
        bad, good = os.urandom(1 * limits.MiB), os.urandom(1 * limits.MiB)
        assert r.set("bad", bad) and r.set("good", good)
        hits = []
        for seg in tmp_path.glob("*"):
            if seg.is_file():
                at = seg.read_bytes().find(bad[4096:4160])
                if at >= 0:
                    hits.append((seg, at))
        (seg, at), = hits
        fd = os.open(seg, os.O_RDWR)
        try:
            os.pwrite(fd, bytes([os.pread(fd, 1, at + 7)[0] ^ 0x01]), at + 7)
            os.fsync(fd)
        finally:
            os.close(fd)
        assert r.get("bad") is None and r.mget(["bad", "good"]) == [None, good]
        assert r.get("good") == good and r.ping()
        assert n.bulk.engine is not None and n.bulk.engine.stats()["misses_corrupt"] >= 1
    finally:
        n.stop()


def test_namespaces_from_keys(node: Node) -> None:
    r = node.client()
    r.set("models-a/x", b"in ns models-a")
    r.set("x", b"in the default ns")
    r.set("Not_A_Namespace/x", b"a default-namespace key with a slash")
    assert r.get("models-a/x") == b"in ns models-a" and r.get("x") == b"in the default ns"
    assert node.bulk.engine is not None
    names = {i.name for i in node.bulk.engine.list_namespaces()}
    assert names == {"models-a", "default"}
    assert node.bulk.engine.exists_many("default", ["x", "Not_A_Namespace/x"]) == [True, True]
    assert r.get("nons-here/x") is None and r.exists("nons-here/x") == 0


def test_pipeline_of_1000_commands_answers_in_order(node: Node) -> None:
    r = node.client()
    p = r.pipeline(transaction=False)
    for i in range(250):
        p.set(f"p{i}", f"v{i}".encode())
        p.get(f"p{i}")  # sees the SET just before it
        p.set(f"p{i}", f"w{i}".encode())
        p.get(f"p{i}")
    out = p.execute()
    assert len(out) == 1000
    for i in range(250):
        assert out[4 * i: 4 * i + 4] == [True, f"v{i}".encode(), True, f"w{i}".encode()]


def test_mget_mset_exists_del(node: Node) -> None:
    r = node.client()
    vals = {f"m{i}": os.urandom(100 + i * 30000) for i in range(20)}
    vals["other-ns/m"] = b"elsewhere"
    assert r.mset(vals) is True
    keys = [*vals, "nope", "m3"]
    assert r.mget(keys) == [*vals.values(), None, vals["m3"]]
    assert r.exists("m0", "m1", "m0", "nope", "other-ns/m") == 4  # repeats count, as on Redis
    assert r.delete("m0", "m1", "nope", "m0") == 2
    assert r.mget(["m0", "m2"]) == [None, vals["m2"]]
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("MSET", "a", "1", "b")


def test_oversized_value_refused_connection_and_server_up(node: Node) -> None:
    r = node.client()
    with pytest.raises(redis.ResponseError, match="EntityTooLarge"):
        r.set("huge", b"\0" * (limits.block_bytes_max + 1))
    assert r.get("huge") is None and r.ping() is True  # the same connection still works
    assert node.client().set("after", b"ok") and r.get("after") == b"ok"


def test_unknown_command_and_arity(node: Node) -> None:
    r = node.client()
    with pytest.raises(redis.ResponseError, match="unknown command 'FLUSHALL'"):
        r.execute_command("FLUSHALL")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get'"):
        r.execute_command("GET")
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.execute_command("SELECT", "1")
    assert r.execute_command("SELECT", "0") is True
    assert r.client_setname("eng") is True and r.client_getname() in ("eng", b"eng")


def test_resp3_hello(node: Node) -> None:
    r = node.client(protocol=3)
    assert r.set("k3", b"v") and r.get("k3") == b"v" and r.get("none") is None
    hello = r.execute_command("HELLO", "3")
    assert hello[b"proto"] == 3
    with pytest.raises(redis.ResponseError, match="NOPROTO"):
        r.execute_command("HELLO", "4")


def test_auth_tenants_and_failures(auth_node: Node) -> None:
    with pytest.raises(redis.AuthenticationError):
        auth_node.client(username="AKACME", password="wrong").ping()
    with pytest.raises(redis.AuthenticationError):
        auth_node.client(username="AKNOBODY", password="acme-secret").ping()
    with pytest.raises(redis.AuthenticationError):  # the one-argument form: user "default"
        auth_node.client(password="acme-secret").ping()
    for proto in (2, 3):  # RESP2: GET answers NOAUTH; RESP3: HELLO 3 without AUTH does
        with pytest.raises(redis.AuthenticationError, match="authenticated|Authentication req"):
            auth_node.client(protocol=proto).get("k")
    acme = auth_node.client(username="AKACME", password="acme-secret")
    assert acme.set("k", b"acme's") and acme.get("k") == b"acme's"  # acme-default, created
    assert acme.set("acme-two/k", b"2")
    beta = auth_node.client(username="AKBETA", password="beta-secret", protocol=3)  # HELLO AUTH
    assert beta.set("beta-x/k", b"b") and beta.get("beta-x/k") == b"b"
    for key in ("k", "acme-two/k"):  # bare keys go to acme-default: not beta's
        with pytest.raises(redis.exceptions.NoPermissionError, match="AccessDenied"):
            beta.get(key)
        with pytest.raises(redis.exceptions.NoPermissionError, match="AccessDenied"):
            beta.set(key, b"stolen")
    assert acme.get("k") == b"acme's"


def raw(node: Node) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", node.port), timeout=WAIT_SECONDS)
    return s


def read_until_closed(s: socket.socket) -> bytes:
    out = b""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"not closed within {WAIT_SECONDS}s; got {out!r}")


def test_protocol_error_answers_then_closes(node: Node) -> None:
    with raw(node) as s:
        s.sendall(b"PING\r\n*1\r\n$3\r\nGET\r\n" + b"*1\r\n:nonsense\r\n")
        out = read_until_closed(s)
    assert out.startswith(b"+PONG\r\n-ERR wrong number of arguments for 'get' command\r\n"
                          b"-ERR Protocol error: expected '$'"), out
    assert node.client().ping() is True


def test_idle_timeout_closes_quietly_and_counts() -> None:
    n = Node(timeouts=BulkTimeouts(handshake_seconds=0.3, idle_seconds=0.3))
    try:
        with raw(n) as s:
            s.sendall(b"PING\r\n")
            assert read_until_closed(s) == b"+PONG\r\n"
        r = n.client(retry=Retry(NoBackoff(), 1))  # a pooled connection closed while idle:
        # redis-py reconnects (its retry)
        assert r.ping() is True
        time.sleep(0.8)
        assert r.ping() is True
        metrics = n.bulk.metrics.render().decode()
        assert 'kvstore_connection_timeouts_total{kind="idle",port="resp"}' in metrics
        assert not any(line.startswith('kvstore_connection_timeouts_total{kind="idle",'
                                       'port="resp"} 0') for line in metrics.splitlines())
    finally:
        n.stop()


@pytest.mark.parametrize("kind", ["body", "body_rate"])
def test_a_value_that_stalls_or_crawls_is_closed_and_counted(kind: str) -> None:
    """Slowloris on the Redis port: a SET whose value stops arriving (``body``) or trickles
    in under the rate floor (``body_rate``) is closed, counted, and nothing is stored; the
    server keeps serving."""
    # each case fires its own timeout first: a stall before the rate grace ends, a crawl that
    # never goes quiet for the idle timeout
    idle, grace = (0.3, 5.0) if kind == "body" else (5.0, 0.4)
    body = BodyLimits(idle_seconds=idle, min_rate_bytes_per_second=64 * 1024,
                      rate_window_seconds=0.4, rate_grace_seconds=grace)
    n = Node(timeouts=BulkTimeouts(handshake_seconds=30.0, idle_seconds=30.0, body=body))
    try:
        with raw(n) as s:
            s.sendall(b"*3\r\n$3\r\nSET\r\n$7\r\nslowkey\r\n$1000000\r\n" + b"v" * 1000)
            if kind == "body":
                assert read_until_closed(s) == b""
            else:
                s.settimeout(0.05)
                deadline = time.monotonic() + WAIT_SECONDS
                closed = False
                while not closed and time.monotonic() < deadline:
                    try:
                        s.sendall(b"v" * 100)  # 100 bytes per 50 ms: 2 KB/s, under the floor
                        closed = s.recv(100) == b""
                    except TimeoutError:
                        continue
                    except OSError:
                        closed = True
                assert closed, "a crawling value kept its connection"
        metrics = n.bulk.metrics.render().decode()
        line = f'kvstore_connection_timeouts_total{{kind="{kind}",port="resp"}} 1.0'
        assert line in metrics, [m for m in metrics.splitlines() if "timeouts" in m]
        r = n.client()
        assert r.get("slowkey") is None and r.ping() is True
    finally:
        n.stop()


def test_connection_cap() -> None:
    n = Node(connections_max=2)
    try:
        a, b = raw(n), raw(n)
        a.sendall(b"PING\r\n")
        b.sendall(b"PING\r\n")
        assert a.recv(100) == b"+PONG\r\n" and b.recv(100) == b"+PONG\r\n"
        with raw(n) as c:
            assert read_until_closed(c) == b"-ERR max number of clients reached\r\n"
        a.close()
        deadline = time.monotonic() + WAIT_SECONDS
        while n.resp.connections > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert n.client().ping() is True
        b.close()
    finally:
        n.stop()


def test_silent_sockets_at_the_cap_yield_to_clients() -> None:
    """With credentials, a cap full of sockets that never AUTH locks nobody out: a newcomer
    evicts the oldest of them (as on the bulk port); authenticated connections are never
    evicted, and when every slot is one, the newcomer is refused."""
    n = Node(tenants=Tenants.from_dict(CREDS), namespace="acme-default", connections_max=3)
    silent = [raw(n) for _ in range(3)]
    clients: list[redis.Redis] = []
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while n.resp.connections < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(3):  # each evicts one silent socket
            c = n.client(username="AKACME", password="acme-secret",
                         single_connection_client=True)
            clients.append(c)
            assert c.ping() is True
        for s in silent:  # told why, then closed
            assert read_until_closed(s) == b"-ERR max number of clients reached\r\n"
        with raw(n) as late:  # every slot is authenticated now: refused, nobody evicted
            assert read_until_closed(late) == b"-ERR max number of clients reached\r\n"
        assert all(c.ping() is True for c in clients)
        metrics = n.bulk.metrics.render().decode()
        assert 'kvstore_connections_refused_total{port="resp",reason="evicted"} 3.0' in metrics
    finally:
        for s in silent:
            s.close()
        for c in clients:
            c.close()
        n.stop()


def redis_cli() -> str:
    path = shutil.which("redis-cli")
    assert path, "redis-cli is missing: install Debian's redis-tools (.ci/run does)"
    return path


def test_redis_cli(node: Node, tmp_path: Path) -> None:
    cli = [redis_cli(), "-h", "127.0.0.1", "-p", str(node.port)]

    def run(*args: str, stdin: bytes | None = None) -> bytes:
        return subprocess.run([*cli, *args], input=stdin, capture_output=True, check=True,
                              timeout=WAIT_SECONDS).stdout

    assert run("PING") == b"PONG\n"
    assert run("SET", "cli/k", "hello") == b"OK\n"  # 'cli' is too short for a namespace
    assert run("GET", "cli/k") == b"hello\n"
    value = os.urandom(3 * limits.MiB)
    assert run("-x", "SET", "cli-big/v", stdin=value) == b"OK\n"
    assert node.client().get("cli-big/v") == value
    out = run("--no-raw", "MGET", "cli/k", "absent")
    assert out == b'1) "hello"\n2) (nil)\n'
    assert run("EXISTS", "cli/k", "absent") == b"1\n"
    assert b"unknown command 'KEYS'" in run("KEYS", "*")
    pipe = b"".join(b"SET p%d v%d\r\nGET p%d\r\n" % (i, i, i) for i in range(100))
    out = run("--pipe", stdin=pipe)
    assert b"errors: 0, replies: 200" in out


def test_redis_cli_auth(auth_node: Node) -> None:
    cli = [redis_cli(), "-h", "127.0.0.1", "-p", str(auth_node.port), "--no-auth-warning"]
    ok = subprocess.run([*cli, "--user", "AKACME", "--pass", "acme-secret", "SET", "k", "v"],
                        capture_output=True, timeout=WAIT_SECONDS)
    assert ok.stdout == b"OK\n"
    bad = subprocess.run([*cli, "--user", "AKACME", "--pass", "nope", "GET", "k"],
                         capture_output=True, timeout=WAIT_SECONDS)
    assert b"WRONGPASS" in bad.stdout + bad.stderr
    anon = subprocess.run([*cli, "GET", "k"], capture_output=True, timeout=WAIT_SECONDS)
    assert b"NOAUTH" in anon.stdout + anon.stderr


def test_kvstore_serve_resp_port_survives_a_restart(tmp_path: Path) -> None:
    """`kvstore serve --resp-port 0 --resp-namespace NAME` as a real process: an LMCache-style
    bare key lands in NAME, and an acknowledged SET is still there after a graceful restart."""
    from test_serve import SMALL, Serve, stop

    args = ["--port", "0", "--bulk-port", "0", "--resp-port", "0", "--resp-namespace",
            "engine-kv", "--data-dir", str(tmp_path / "data"), *SMALL]
    key, value = "llama@0@0@00ab", os.urandom(1 * limits.MiB + 3)
    for run in range(2):
        srv = Serve(tmp_path, args, name=f"serve{run}")
        try:
            srv.wait_ready()
            m = re.search(r"Redis protocol on redis://127\.0\.0\.1:(\d+)  \(default namespace "
                          r"engine-kv\)", srv.out)
            assert m, srv.out
            r = redis.Redis(host="127.0.0.1", port=int(m.group(1)), socket_timeout=WAIT_SECONDS)
            if run == 0:
                assert r.set(key, value) and r.set("engine-kv/other", b"x")
            assert r.get(key) == value and r.exists(key, "other") == 2
            if run == 1:
                r.close()  # run 0 stops with the client's connection still open
        finally:
            assert stop(srv) >= 0 and srv.proc.returncode == 0, srv.err[-2000:]


def test_inline_commands_and_quit(node: Node) -> None:
    with raw(node) as s:  # as typed into telnet: inline commands, then QUIT flushes and closes
        s.sendall(b"SET inline-k v1\r\nGET inline-k\nEXISTS inline-k nope\r\nQUIT\r\nPING\r\n")
        assert read_until_closed(s) == b"+OK\r\n$2\r\nv1\r\n:1\r\n+OK\r\n"


def test_before_auth_a_peer_gets_short_commands_and_a_deadline() -> None:
    """With credentials, an unauthenticated peer cannot make the server buffer a value (Redis
    7's rule: short arguments only), its pipelined commands wait for its AUTH, and it must
    authenticate within the handshake timeout."""
    n = Node(tenants=Tenants.from_dict(CREDS), namespace="acme-default",
             timeouts=BulkTimeouts(handshake_seconds=0.3, idle_seconds=60))
    try:
        with raw(n) as s:
            s.sendall(resp.encode_command([b"SET", b"k", b"x" * limits.resp_direct_bytes_min]))
            assert read_until_closed(s) == b"-ERR Protocol error: invalid bulk length\r\n"
        value = os.urandom(300_000)
        with raw(n) as s:  # AUTH, a long SET and a GET in one write: decoded after the AUTH
            s.sendall(resp.encode_command([b"AUTH", b"AKACME", b"acme-secret"])
                      + resp.encode_command([b"SET", b"acme-x/k", value])
                      + resp.encode_command([b"GET", b"acme-x/k"]) + b"QUIT\r\n")
            assert read_until_closed(s) == (b"+OK\r\n+OK\r\n" + resp.bulk(value) + b"+OK\r\n")
        with raw(n) as s:  # silent: closed at the handshake deadline
            assert read_until_closed(s) == b""
        assert ('kvstore_connection_timeouts_total{kind="handshake",port="resp"} 1.0'
                in n.bulk.metrics.render().decode())
    finally:
        n.stop()
