"""SigV4 corners against a live server with credentials: a request dated by the ``Date`` header
alone, clock skew past the bound, expired presigned URLs (S3's codes and messages)."""

from __future__ import annotations

import contextlib
import datetime
import email.header
import http.client
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from kvstore import limits
from kvstore.auth import Tenants
from tests.api.conftest import TENANT_DOC, LiveServer, boto_client

BUCKET = "acme-corners"
CREDS = Credentials("AKIAACME", "acme-secret-key")


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    s = module_server(tenants=Tenants.from_dict(TENANT_DOC))
    c = boto_client(s.url, "AKIAACME", "acme-secret-key")
    c.create_bucket(Bucket=BUCKET)
    c.put_object(Bucket=BUCKET, Key="k", Body=b"corner bytes")
    return s


def _signed(url: str, method: str = "GET", body: bytes = b"",
            headers: dict[str, str] | None = None) -> Any:
    """A request signed by botocore's own SigV4 signer (the reference implementation)."""
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    botocore.auth.S3SigV4Auth(CREDS, "s3", "us-east-1").add_auth(req)
    return req.prepare()


def _send(srv: LiveServer, prepared: Any) -> tuple[int, dict[str, str], bytes]:
    u = urlsplit(prepared.url)
    path = u.path + (f"?{u.query}" if u.query else "")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(prepared.method, path, prepared.body, dict(prepared.headers.items()))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def clock() -> Iterator[Callable[[float], None]]:
    """``clock(offset_s)`` moves botocore's signing clock (not the server's): both its Python
    signers and, where awscrt is installed, the CRT ones boto3 then prefers."""
    offset = [0.0]

    def now(remove_tzinfo: bool = True) -> datetime.datetime:
        t = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset[0])
        return t.replace(tzinfo=None) if remove_tzinfo else t

    def move(offset_s: float) -> None:
        offset[0] = offset_s

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(botocore.auth, "get_current_datetime", now))
        try:
            import botocore.crt.auth as crt_auth
        except ImportError:
            pass
        else:
            stack.enter_context(mock.patch.object(crt_auth, "get_current_datetime", now))
        yield move


def test_date_header_alone_dates_the_request(srv: LiveServer) -> None:
    p = _signed(f"{srv.url}/{BUCKET}/k", headers={"Date": "placeholder"})
    assert "X-Amz-Date" not in p.headers and "date" in p.headers["Authorization"]
    status, _h, body = _send(srv, p)
    assert (status, body) == (200, b"corner bytes")
    put = _signed(f"{srv.url}/{BUCKET}/by-date", "PUT", b"dated by Date",
                  headers={"Date": "placeholder"})
    assert _send(srv, put)[0] == 200
    got = _send(srv, _signed(f"{srv.url}/{BUCKET}/by-date"))
    assert got[0] == 200 and got[2] == b"dated by Date"


def test_date_header_is_still_verified(srv: LiveServer) -> None:
    """Signed with one Date, sent with another: the signature no longer matches."""
    p = _signed(f"{srv.url}/{BUCKET}/k", headers={"Date": "placeholder"})
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=5)
    p.headers["Date"] = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    status, _h, body = _send(srv, p)
    assert status == 403 and b"SignatureDoesNotMatch" in body


def test_no_date_at_all_is_refused(srv: LiveServer) -> None:
    p = _signed(f"{srv.url}/{BUCKET}/k")
    del p.headers["X-Amz-Date"]
    status, _h, body = _send(srv, p)
    assert status == 403 and b"AccessDenied" in body


@pytest.mark.parametrize("sign_with_date_header", [False, True])
@pytest.mark.parametrize("direction", [-1, 1])
def test_clock_skew_past_the_bound(srv: LiveServer, clock: Callable[[float], None],
                                   direction: int, sign_with_date_header: bool) -> None:
    clock(direction * (limits.clock_skew_seconds_max + 120))
    hdrs = {"Date": "placeholder"} if sign_with_date_header else {}
    status, _h, body = _send(srv, _signed(f"{srv.url}/{BUCKET}/k", headers=hdrs))
    assert status == 403 and b"<Code>RequestTimeTooSkewed</Code>" in body
    assert b"The difference between the request time and the current time is too large" in body
    # AWS's extra elements: the request's time as sent, the server's, and the bound
    err = ET.fromstring(body)
    server = datetime.datetime.strptime(err.findtext("ServerTime") or "", "%Y-%m-%dT%H:%M:%SZ")
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert abs((server - now).total_seconds()) < 60
    assert err.findtext("MaxAllowedSkewMilliseconds") == str(limits.clock_skew_seconds_max
                                                             * 1000)
    sent = datetime.datetime.strptime(err.findtext("RequestTime") or "", "%Y%m%dT%H%M%SZ")
    assert abs((sent - now).total_seconds() - direction * (limits.clock_skew_seconds_max
                                                           + 120)) < 60
    # inside the bound: accepted
    clock(direction * (limits.clock_skew_seconds_max - 120))
    assert _send(srv, _signed(f"{srv.url}/{BUCKET}/k", headers=hdrs))[0] == 200


def test_clock_skew_through_boto3(srv: LiveServer, clock: Callable[[float], None]) -> None:
    clock(-(limits.clock_skew_seconds_max + 60))
    c = boto_client(srv.url, "AKIAACME", "acme-secret-key")
    with pytest.raises(ClientError) as ei:
        c.head_object(Bucket=BUCKET, Key="k")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as ei:
        c.get_object(Bucket=BUCKET, Key="k")
    assert ei.value.response["Error"]["Code"] == "RequestTimeTooSkewed"


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
def test_expired_presigned_url(srv: LiveServer, clock: Callable[[float], None],
                               method: str) -> None:
    clock(-3600)
    c = boto_client(srv.url, "AKIAACME", "acme-secret-key", signature_version="s3v4")
    op = {"GET": "get_object", "HEAD": "head_object", "PUT": "put_object"}[method]
    url = c.generate_presigned_url(op, Params={"Bucket": BUCKET, "Key": "k"}, ExpiresIn=60)
    req = urllib.request.Request(url, method=method,
                                 data=b"must not land" if method == "PUT" else None)
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=10)
    assert ei.value.code == 403
    if method != "HEAD":
        body = ei.value.read()
        assert b"<Code>AccessDenied</Code>" in body and b"Request has expired" in body
        err = ET.fromstring(body)  # AWS's extra elements: the expiry asked, when, and now
        assert err.findtext("X-Amz-Expires") == "60"
        expires = datetime.datetime.strptime(err.findtext("Expires") or "", "%Y-%m-%dT%H:%M:%SZ")
        server = datetime.datetime.strptime(err.findtext("ServerTime") or "",
                                            "%Y-%m-%dT%H:%M:%SZ")
        assert 3400 < (server - expires).total_seconds() < 3600
    clock(0)
    got = _send(srv, _signed(f"{srv.url}/{BUCKET}/k"))
    assert got[2] == b"corner bytes"


def test_presigned_url_within_expiry_is_accepted(srv: LiveServer,
                                                 clock: Callable[[float], None]) -> None:
    clock(-30)
    c = boto_client(srv.url, "AKIAACME", "acme-secret-key", signature_version="s3v4")
    url = c.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"},
                                   ExpiresIn=300)
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == b"corner bytes"


def test_utf8_header_values_verify(srv: LiveServer) -> None:
    """boto3 signs the UTF-8 of a header's text and sends those bytes (an x-amz-meta-* value
    with accents): the signature verifies, and the value comes back as the same bytes."""
    c = boto_client(srv.url, "AKIAACME", "acme-secret-key")

    def accented(params: dict[str, Any], **_kw: Any) -> None:
        params["headers"]["x-amz-meta-greeting"] = "Hello World\u00e9 \u65e5\u672c"

    c.meta.events.register("before-call.s3.PutObject", accented)
    c.put_object(Bucket=BUCKET, Key="utf8-meta", Body=b"bar")
    status, headers, _body = _send(srv, _signed(f"{srv.url}/{BUCKET}/utf8-meta", "HEAD"))
    assert status == 200
    # AWS answers non-ASCII metadata RFC 2047 encoded (its docs, "User-defined object
    # metadata"): ASCII on the wire, whatever the client decodes headers as
    wire = headers["x-amz-meta-greeting"]
    assert wire.isascii() and wire.startswith("=?UTF-8?B?")
    (text, charset), = email.header.decode_header(wire)
    assert text.decode(charset) == "Hello World\u00e9 \u65e5\u672c"
    got = c.get_object(Bucket=BUCKET, Key="utf8-meta")["Metadata"]["greeting"]
    assert got == wire  # boto3 does not decode it, as with AWS
    c.put_object(Bucket=BUCKET, Key="ascii-meta", Body=b"x", Metadata={"m": "plain ascii"})
    assert c.head_object(Bucket=BUCKET, Key="ascii-meta")["Metadata"]["m"] == "plain ascii"
