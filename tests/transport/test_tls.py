"""TLS on every TCP listener of a real ``kvstore serve`` on 127.0.0.1 (``--tls-cert``,
``--tls-key``, ``--tls-client-ca``): boto3 over HTTPS verified with the test's CA, the bulk SDK
(Client, AsyncClient, PodClient) over TLS, mutual TLS refusing a client without a certificate
(or with one from another CA), a plain-text client on a TLS port failing cleanly while the server
keeps serving, and bad certificate files refused at start with a message naming the file.
The certificates are made in the test (``tests/tlscerts.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvstore.config import ConfigError, from_argv
from kvstore.transport.tls import TlsFiles, TlsSetupError, server_context
from tests.serve_proc import child_env, free_ports
from tests.tlscerts import CA, Pair

START_SECONDS_MAX = 30.0
REGION = "us-east-1"
SMALL = ["--capacity", "32MiB", "--segment-size", "4MiB", "--dram", "8MiB"]
KEY = "ab" * 16
BLOCK = os.urandom(64 * 1024)
HANDSHAKE_S = 1.0  # the TLS server's --bulk-handshake-timeout
SILENT_WAIT_S = 20.0  # how long a silent peer waits to be closed (asyncio's default is 60 s)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    http: int
    bulk: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http}"

    def alive(self) -> bool:
        return self.proc.poll() is None


def _serve(tmp: Path, name: str, tls_args: list[str],
           ports: tuple[int, int] | None = None) -> Iterator[Serve]:
    http, bulk = ports or free_ports(2)
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvstore", "serve", "--port", str(http), "--bulk-port",
             str(bulk), "--data-dir", str(tmp / f"{name}-data"), *SMALL, *tls_args],
            stdout=o, stderr=e, env=child_env(), cwd=tmp)
    srv = Serve(proc, out, err, http, bulk)
    try:
        deadline = time.monotonic() + START_SECONDS_MAX
        while "kvstore: ready" not in out.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start: {err.read_text()[-2000:]}")
            time.sleep(0.05)
        yield srv
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | Pair]:
    d = tmp_path_factory.mktemp("tls")
    ca, rogue = CA(d, "ca"), CA(d, "rogue-ca")
    return {"ca": ca.pem, "server": ca.issue("server", server=True),
            "client": ca.issue("client", server=False),
            "rogue_client": rogue.issue("rogue-client", server=False),
            "other_server": rogue.issue("other-server", server=True)}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: dict) -> Iterator[Serve]:
    s = certs["server"]
    yield from _serve(tmp_path_factory.mktemp("srv"), "tls",
                      ["--tls-cert", str(s.cert), "--tls-key", str(s.key),
                       "--bulk-handshake-timeout", str(HANDSHAKE_S),
                       "--http-header-timeout", str(HANDSHAKE_S),
                       "--http-keepalive-timeout", str(HANDSHAKE_S)])


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, certs: dict) -> Iterator[Serve]:
    s = certs["server"]
    yield from _serve(tmp_path_factory.mktemp("msrv"), "mtls",
                      ["--tls-cert", str(s.cert), "--tls-key", str(s.key),
                       "--tls-client-ca", str(certs["ca"])])


def _s3(srv: Serve, verify: str | bool, client_cert: tuple[str, str] | None = None) -> object:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=srv.url, aws_access_key_id="dev",
                        aws_secret_access_key="dev-secret", region_name=REGION, verify=verify,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                      client_cert=client_cert))


# -- configuration ---------------------------------------------------------------------------

def test_flags_go_together(certs: dict) -> None:
    s = certs["server"]
    with pytest.raises(ConfigError, match="go together"):
        from_argv(["--tls-cert", str(s.cert)], {})
    with pytest.raises(ConfigError, match="needs --tls-cert"):
        from_argv(["--tls-client-ca", str(certs["ca"])], {})
    with pytest.raises(ConfigError, match="not readable"):
        from_argv(["--tls-cert", str(s.cert), "--tls-key", "/nonexistent/k.pem"], {})
    cfg = from_argv(["--tls-cert", str(s.cert), "--tls-key", str(s.key)], {})
    assert cfg.tls_cert == str(s.cert) and cfg.tls_client_ca is None


def test_bad_files_are_named(certs: dict, tmp_path: Path) -> None:
    s, other = certs["server"], certs["other_server"]
    with pytest.raises(TlsSetupError, match="does not match"):
        server_context(TlsFiles(str(s.cert), str(other.key)))
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate\n")
    with pytest.raises(TlsSetupError, match="not PEM"):
        server_context(TlsFiles(str(junk), str(s.key)))
    with pytest.raises(TlsSetupError, match="--tls-client-ca"):
        server_context(TlsFiles(str(s.cert), str(s.key), str(junk)))


def test_serve_refuses_mismatched_key(certs: dict, tmp_path: Path) -> None:
    s, other = certs["server"], certs["other_server"]
    res = subprocess.run([sys.executable, "-m", "kvstore", "serve", "--port", "0", "--bulk-port",
                          "0", "--data-dir", str(tmp_path / "d"), *SMALL, "--tls-cert",
                          str(s.cert), "--tls-key", str(other.key)],
                         capture_output=True, text=True, env=child_env(), timeout=60, check=False)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "does not match the certificate" in res.stderr and str(other.key) in res.stderr


# -- HTTPS -----------------------------------------------------------------------------------

def test_boto3_over_https(tls_server: Serve, certs: dict) -> None:
    c = _s3(tls_server, str(certs["ca"]))
    c.create_bucket(Bucket="tls-bucket")
    c.put_object(Bucket="tls-bucket", Key="obj", Body=BLOCK)
    assert c.get_object(Bucket="tls-bucket", Key="obj")["Body"].read() == BLOCK
    assert "https://127.0.0.1" in tls_server.out.read_text()


def test_https_verification_fails_with_another_ca(tls_server: Serve, certs: dict,
                                                  tmp_path: Path) -> None:
    from botocore.exceptions import SSLError

    rogue = tmp_path / "only-rogue.pem"
    rogue.write_bytes(certs["other_server"].cert.read_bytes())
    with pytest.raises(SSLError):
        _s3(tls_server, str(rogue)).list_buckets()


def test_plain_http_on_https_port_fails_and_server_stays_up(tls_server: Serve,
                                                            certs: dict) -> None:
    import http.client

    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", tls_server.http, timeout=10)
        try:
            with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
                conn.request("GET", "/healthz")
                conn.getresponse().read()
        finally:
            conn.close()
    assert tls_server.alive()
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    conn2 = http.client.HTTPSConnection("127.0.0.1", tls_server.http, timeout=10, context=ctx)
    conn2.request("GET", "/healthz")
    assert conn2.getresponse().status == 200
    conn2.close()


# -- bulk ------------------------------------------------------------------------------------

def test_bulk_sdk_over_tls(tls_server: Serve, certs: dict) -> None:
    from kvstore_client import Client

    with Client("127.0.0.1", tls_server.bulk, namespace="tls-bulk", create=True, tls=True,
                ca=str(certs["ca"]), timeout=10) as c:
        c.put(KEY, BLOCK)
        assert c.get(KEY) == BLOCK
        assert c.get_many([KEY, "cd" * 16]) == [BLOCK, None]


def test_async_and_pod_clients_over_tls(tls_server: Serve, certs: dict) -> None:
    from kvstore_client import AsyncClient, PodClient

    async def go() -> None:
        c = AsyncClient("127.0.0.1", tls_server.bulk, namespace="tls-async", create=True,
                        ca=str(certs["ca"]), timeout=10)
        try:
            await c.put(KEY, BLOCK)
            assert await c.get(KEY) == BLOCK
        finally:
            await c.close()

    asyncio.run(go())
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    with PodClient([("n1", f"127.0.0.1:{tls_server.bulk}")], namespace="tls-pod", create=True,
                   tls=ctx, timeout=10) as pod:
        pod.put(KEY, BLOCK)
        assert pod.get(KEY) == BLOCK


def test_plain_bulk_client_on_tls_port_fails_and_server_stays_up(tls_server: Serve,
                                                                 certs: dict) -> None:
    from kvstore_client import Client

    for _ in range(3):
        plain = Client("127.0.0.1", tls_server.bulk, namespace="tls-bulk", create=True,
                       timeout=5, retries=0)
        with pytest.raises(ConnectionError, match="closed"):  # the TLS handshake failed
            plain.get(KEY)
        plain.close()
    assert tls_server.alive()
    with Client("127.0.0.1", tls_server.bulk, namespace="tls-bulk", create=True, ca=str(
            certs["ca"]), timeout=10) as good:
        good.put(KEY, BLOCK)
        assert good.get(KEY) == BLOCK


def test_silent_peer_is_closed_at_the_handshake_bound(tls_server: Serve) -> None:
    """A TCP peer that never starts the TLS handshake (slowloris) is closed by
    --bulk-handshake-timeout on the bulk port and --http-header-timeout on HTTPS, not by
    asyncio's 60 s default."""
    for port in (tls_server.bulk, tls_server.http):  # and the HTTPS port's header timeout
        with socket.create_connection(("127.0.0.1", port), timeout=SILENT_WAIT_S) as s:
            assert s.recv(1) == b""
    assert tls_server.alive()


def test_tls_client_rejects_unverified_server(tls_server: Serve, certs: dict,
                                              tmp_path: Path) -> None:
    from kvstore_client import Client

    rogue = tmp_path / "only-rogue.pem"
    rogue.write_bytes(certs["other_server"].cert.read_bytes())
    c = Client("127.0.0.1", tls_server.bulk, namespace="tls-bulk", ca=str(rogue), timeout=5,
               retries=0)
    with pytest.raises(ssl.SSLCertVerificationError):
        c.get(KEY)
    c.close()


# -- mutual TLS ------------------------------------------------------------------------------

def test_mtls_requires_a_client_certificate(mtls_server: Serve, certs: dict) -> None:
    from kvstore_client import Client

    ca, good, rogue = str(certs["ca"]), certs["client"], certs["rogue_client"]
    for cert in (None, rogue):
        c = Client("127.0.0.1", mtls_server.bulk, namespace="mtls", create=True, ca=ca,
                   cert=None if cert is None else str(cert.cert),
                   key=None if cert is None else str(cert.key), timeout=5, retries=0)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            c.put(KEY, BLOCK)
        c.close()
    with Client("127.0.0.1", mtls_server.bulk, namespace="mtls", create=True, ca=ca,
                cert=str(good.cert), key=str(good.key), timeout=10) as ok:
        ok.put(KEY, BLOCK)
        assert ok.get(KEY) == BLOCK
    # HTTPS: the same rule
    from botocore.exceptions import ConnectionClosedError, SSLError

    with pytest.raises((SSLError, ConnectionClosedError)):
        _s3(mtls_server, ca).list_buckets()
    names = _s3(mtls_server, ca, (str(good.cert), str(good.key))).list_buckets()
    assert "mtls" in [b["Name"] for b in names["Buckets"]]
    assert mtls_server.alive() and "mutual TLS" in mtls_server.out.read_text()


def test_client_tls_arguments(certs: dict) -> None:
    from kvstore_client.tls import client_context

    assert client_context() is None
    ctx = client_context(ca=str(certs["ca"]))
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    own = ssl.create_default_context()
    assert client_context(own) is own
    with pytest.raises(ValueError, match="not both"):
        client_context(own, ca=str(certs["ca"]))
    with pytest.raises(ValueError, match="needs cert"):
        client_context(True, key=str(certs["client"].key))


def test_shm_control_connection_over_tls(tls_server: Serve, certs: dict) -> None:
    """shm's payloads stay in same-host memory; its control connection is the bulk one, TLS
    here like any other."""
    from kvstore_client.shm import ShmClient
    from kvstore_client.tls import client_context, tls_connector

    ctx = client_context(ca=str(certs["ca"]))
    assert ctx is not None
    with ShmClient(port=tls_server.bulk, namespace="tls-shm", size=1 << 20, create=True,
                   timeout=10, connect=tls_connector(ctx)) as c:
        c.region.view[:len(BLOCK)] = BLOCK
        c.put_many([KEY], [0], [len(BLOCK)])
        c.region.view[:len(BLOCK)] = bytes(len(BLOCK))
        assert c.get_many([KEY], [0], [len(BLOCK)]) == [len(BLOCK)]
        assert bytes(c.region.view[:len(BLOCK)]) == BLOCK



def test_pod_forwarding_over_mutual_tls(tmp_path: Path, certs: dict) -> None:
    """Two nodes (static --peers) with mutual TLS: an S3 PUT through one node and a GET through
    the other reach each block's owner over TLS (the node's own certificate as its client
    certificate, the client CA verifying peers); without TLS on the forwarding side, the
    blocks owned by the other node would be misses."""
    import json

    from kvstore.cluster.membership import StaticMembership, load_peers

    p = free_ports(4)  # distinct, for both nodes' HTTP and bulk ports
    ports = {1: (p[0], p[1]), 2: (p[2], p[3])}
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps([
        {"node_id": f"node{i}", "http": f"https://127.0.0.1:{h}", "bulk": f"127.0.0.1:{b}",
         "capacity_bytes": 32 << 20} for i, (h, b) in sorted(ports.items())]))
    s, ca = certs["server"], str(certs["ca"])
    tls = ["--tls-cert", str(s.cert), "--tls-key", str(s.key), "--tls-client-ca", ca]
    keys = [f"blk{i:02d}" for i in range(12)]
    owners = {k: StaticMembership(load_peers(str(peers))).owners("pod", k)[0].node_id
              for k in keys}
    assert set(owners.values()) == {"node1", "node2"}
    data = {k: os.urandom(2000 + 977 * i) for i, k in enumerate(keys)}
    client = (str(certs["client"].cert), str(certs["client"].key))
    with contextlib.ExitStack() as stack:
        nodes = [stack.enter_context(contextlib.contextmanager(_serve)(
            tmp_path, f"node{i}", [*tls, "--peers", str(peers), "--node-id", f"node{i}"],
            ports[i])) for i in (1, 2)]
        a, b = (_s3(n, ca, client) for n in nodes)
        for c in (a, b):  # static membership: namespaces are per node
            c.create_bucket(Bucket="pod")
        for k in keys:
            a.put_object(Bucket="pod", Key=k, Body=data[k])
        for k in keys:
            assert b.get_object(Bucket="pod", Key=k)["Body"].read() == data[k], owners[k]
        listed = b.list_objects_v2(Bucket="pod")  # merged from both nodes' HTTPS
        assert sorted(o["Key"] for o in listed.get("Contents", [])) == keys
        # the /ui pod table: the node reads the other's /metrics with its peer context
        import urllib.request

        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(*client)
        with urllib.request.urlopen(f"{nodes[1].url}/v1/pod/stats", context=ctx,
                                    timeout=30) as r:
            rows = json.loads(r.read())["nodes"]
        assert [(n["node_id"], n["reachable"]) for n in rows] == [("node1", True),
                                                                  ("node2", True)], rows


def test_graceful_stop_does_not_wait_for_idle_tls_clients(tmp_path: Path, certs: dict) -> None:
    """An idle HTTPS keep-alive client (boto3's pool) never answers the server's close_notify;
    the stop closes it after limits.tls_close_timeout_seconds instead of holding the drain to
    its bound and cutting it (the log line that says connections were cut)."""
    s = certs["server"]
    gen = _serve(tmp_path, "stop", ["--tls-cert", str(s.cert), "--tls-key", str(s.key),
                                    "--shutdown-seconds", "10"])
    srv = next(gen)
    c = _s3(srv, str(certs["ca"]))
    c.list_buckets()  # leaves a keep-alive connection in boto3's pool
    srv.proc.terminate()
    assert srv.proc.wait(30) == 0
    err = srv.err.read_text()
    assert "drain bound reached" not in err, err[-2000:]
    with contextlib.suppress(StopIteration):
        next(gen)


def test_redis_protocol_over_tls(tmp_path: Path, certs: dict) -> None:
    """--resp-port serves TLS with the same context (redis-py ssl=True, the CA verified); a
    plain-text Redis client on it fails and the server stays up."""
    import re

    import redis

    s = certs["server"]
    gen = _serve(tmp_path, "resp-tls", ["--tls-cert", str(s.cert), "--tls-key", str(s.key),
                                        "--resp-port", "0", "--resp-namespace", "tlsns"])
    srv = next(gen)
    try:
        m = re.search(r"Redis protocol on rediss://127\.0\.0\.1:(\d+)", srv.out.read_text())
        assert m, srv.out.read_text()
        port = int(m.group(1))
        r = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(certs["ca"]),
                        socket_timeout=10)
        assert r.set("k1", b"v" * 70_000) is True and r.get("k1") == b"v" * 70_000
        plain = redis.Redis(host="127.0.0.1", port=port, socket_timeout=3)
        with pytest.raises(redis.RedisError):
            plain.ping()
        assert r.ping() is True and srv.alive()
        r.close()
    finally:
        gen.close()
