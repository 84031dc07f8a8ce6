"""Virtual-host-style addressing behind ``--domain``: boto3 with ``addressing_style='virtual'``
and raw SigV4-signed requests whose Host header is ``bucket.DOMAIN``.

Nothing here resolves a name: the machine's /etc/hosts is never touched. boto3 builds its URLs
for ``http://bucket.kvs.test:PORT``, and a ``before-send`` hook (after signing) sends each
request to 127.0.0.1:PORT with the Host header it signed, exactly what a DNS record would do.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from kvstore.api.s3.http import host_bucket
from kvstore.auth import Tenants
from kvstore.config import ConfigError, from_argv
from tests.api.conftest import TENANT_DOC, LiveServer, boto_client

DOMAIN = "kvs.test"
KEY_ID, SECRET = "AKIAACME", "acme-secret-key"


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server(tenants=Tenants.from_dict(TENANT_DOC), domain=DOMAIN)


def _to_loopback(port: int) -> Callable[..., None]:
    def hook(request: Any, **_kw: Any) -> None:
        u = urlsplit(request.url)
        assert u.hostname is not None and u.hostname.endswith(DOMAIN)
        request.headers["Host"] = u.netloc
        request.url = urlunsplit((u.scheme, f"127.0.0.1:{port}", u.path, u.query, u.fragment))
    return hook


def _virtual_client(srv: LiveServer) -> Any:
    cfg = Config(s3={"addressing_style": "virtual"}, signature_version="s3v4",
                 retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30)
    c = boto3.client("s3", endpoint_url=f"http://{DOMAIN}:{srv.port}", region_name="us-east-1",
                     aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, config=cfg)
    c.meta.events.register("before-send.s3", _to_loopback(srv.port))
    return c


def _raw(srv: LiveServer, method: str, host: str, path: str,
         body: bytes = b"") -> tuple[int, bytes]:
    """A request signed by botocore's SigV4 signer for ``http://HOST:PORT/PATH``, sent to
    127.0.0.1 with that Host header."""
    url = f"http://{host}:{srv.port}{path}"
    req = AWSRequest(method=method, url=url, data=body)
    botocore.auth.S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", "us-east-1").add_auth(req)
    p = req.prepare()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        headers = dict(p.headers.items())
        headers["Host"] = f"{host}:{srv.port}"
        conn.request(method, path, p.body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_boto3_virtual_host_round_trip(srv: LiveServer) -> None:
    sent: list[tuple[str, str]] = []
    c = _virtual_client(srv)
    c.meta.events.register("before-send.s3",
                           lambda request, **_: sent.append((request.headers["Host"],
                                                             urlsplit(request.url).path)))
    c.create_bucket(Bucket="acme-vhost")
    c.put_object(Bucket="acme-vhost", Key="dir/obj one", Body=b"virtual bytes")
    assert c.get_object(Bucket="acme-vhost", Key="dir/obj one")["Body"].read() == b"virtual bytes"
    assert c.head_object(Bucket="acme-vhost", Key="dir/obj one")["ContentLength"] == 13
    listed = c.list_objects_v2(Bucket="acme-vhost", Prefix="dir/")
    assert [o["Key"] for o in listed["Contents"]] == ["dir/obj one"]
    # boto3 really addressed the bucket by host: the path never named it
    assert (f"acme-vhost.{DOMAIN}:{srv.port}", "/dir/obj%20one") in sent
    assert all(not path.startswith("/acme-vhost") for _h, path in sent)
    # and the same object is there path-style
    path_style = boto_client(srv.url, KEY_ID, SECRET)
    assert path_style.get_object(Bucket="acme-vhost", Key="dir/obj one")["Body"].read() == \
        b"virtual bytes"
    c.delete_object(Bucket="acme-vhost", Key="dir/obj one")
    with pytest.raises(ClientError) as ei:
        c.head_object(Bucket="acme-vhost", Key="dir/obj one")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_multipart_and_presign_virtual_host(srv: LiveServer) -> None:
    c = _virtual_client(srv)
    c.create_bucket(Bucket="acme-vmp")
    up = c.create_multipart_upload(Bucket="acme-vmp", Key="big")
    part = b"p" * (5 * 1024 * 1024)
    e1 = c.upload_part(Bucket="acme-vmp", Key="big", UploadId=up["UploadId"], PartNumber=1,
                       Body=part)["ETag"]
    e2 = c.upload_part(Bucket="acme-vmp", Key="big", UploadId=up["UploadId"], PartNumber=2,
                       Body=b"tail")["ETag"]
    c.complete_multipart_upload(Bucket="acme-vmp", Key="big", UploadId=up["UploadId"],
                                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1},
                                                           {"PartNumber": 2, "ETag": e2}]})
    assert c.head_object(Bucket="acme-vmp", Key="big")["ContentLength"] == len(part) + 4
    url = c.generate_presigned_url("get_object", Params={"Bucket": "acme-vmp", "Key": "big"},
                                   ExpiresIn=60)
    u = urlsplit(url)
    assert u.hostname == f"acme-vmp.{DOMAIN}"
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", f"{u.path}?{u.query}", headers={"Host": u.netloc,
                                                            "Range": "bytes=-4"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (206, b"tail")
    finally:
        conn.close()


def test_signature_covers_the_virtual_host(srv: LiveServer) -> None:
    assert _raw(srv, "PUT", f"acme-raw.{DOMAIN}", "/")[0] == 200
    assert _raw(srv, "PUT", f"acme-raw.{DOMAIN}", "/k", b"raw vhost") == (200, b"")
    assert _raw(srv, "GET", f"acme-raw.{DOMAIN}", "/k") == (200, b"raw vhost")
    # a key that reads like a control-plane path is still a key of the bucket
    assert _raw(srv, "PUT", f"acme-raw.{DOMAIN}", "/v1/namespaces", b"a key")[0] == 200
    assert _raw(srv, "GET", f"acme-raw.{DOMAIN}", "/v1/namespaces") == (200, b"a key")
    # signed for one bucket's host, sent to another's: the signature does not match
    url = f"http://acme-raw.{DOMAIN}:{srv.port}/k"
    req = AWSRequest(method="GET", url=url)
    botocore.auth.S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", "us-east-1").add_auth(req)
    p = req.prepare()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        headers = dict(p.headers.items())
        headers["Host"] = f"acme-other.{DOMAIN}:{srv.port}"
        conn.request("GET", "/k", None, headers)
        resp = conn.getresponse()
        assert resp.status == 403 and b"SignatureDoesNotMatch" in resp.read()
    finally:
        conn.close()


def test_path_style_and_service_calls_still_work(srv: LiveServer) -> None:
    assert _raw(srv, "PUT", "127.0.0.1", "/acme-path")[0] == 200
    assert _raw(srv, "PUT", "127.0.0.1", "/acme-path/x", b"path")[0] == 200
    assert _raw(srv, "GET", DOMAIN, "/acme-path/x") == (200, b"path")  # the bare domain
    status, body = _raw(srv, "GET", DOMAIN, "/")
    assert status == 200 and b"<Name>acme-path</Name>" in body  # ListBuckets
    assert _raw(srv, "GET", "127.0.0.1", "/healthz")[0] == 200


def test_without_domain_a_bucket_host_is_path_style(live_server: Callable[..., LiveServer]) -> None:
    plain = live_server(tenants=Tenants.from_dict(TENANT_DOC))
    assert _raw(plain, "PUT", "127.0.0.1", "/acme-nodomain")[0] == 200
    # no --domain: the Host header names nothing, the path is /bucket/key
    assert _raw(plain, "PUT", f"acme-nodomain.{DOMAIN}", "/acme-nodomain/k", b"v")[0] == 200
    assert _raw(plain, "GET", "127.0.0.1", "/acme-nodomain/k") == (200, b"v")


@pytest.mark.parametrize(("host", "bucket"), [
    (f"b1.{DOMAIN}", "b1"), (f"b1.{DOMAIN}:8700", "b1"), (f"A.B.{DOMAIN}.", "a.b"),
    (DOMAIN, None), (f"{DOMAIN}:80", None), (f"x{DOMAIN}", None), ("127.0.0.1:8700", None),
    ("[::1]:8700", None), ("", None), (None, None), (f".{DOMAIN}", None),
])
def test_host_bucket(host: str | None, bucket: str | None) -> None:
    assert host_bucket(host, DOMAIN) == bucket


def test_domain_flag_flows_through_config() -> None:
    assert from_argv(["--domain", "S3.Example.com"], {}).domain == "s3.example.com"
    assert from_argv([], {"KVSTORE_DOMAIN": "kvs.localhost"}).domain == "kvs.localhost"
    assert from_argv([], {}).domain is None
    for bad in ("kvs.test:8700", "-bad.test", "a..b", "a_b.test", "x" * 200):
        with pytest.raises(ConfigError):
            from_argv([f"--domain={bad}"], {})
