"""Development mode answers like production, except that it does not compare signatures.

Each request goes to two live servers, one in development mode and one with a credentials file,
signed with a key the credentials server knows; both must give the same status, error code and
message. SigV2 (header and presigned, as botocore's ``signature_version='s3'`` signs them) is
refused everywhere with a message that says how to ask the client for SigV4.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import HmacV1Auth, S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from kvstore.auth import Tenants
from tests.api.conftest import TENANT_DOC, LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
AK, SK = "AKIAACME", "acme-secret-key"
CREDS = Credentials(AK, SK)
BUCKET = "acme-parity"

Answer = tuple[int, str, str]  # status, error code, message


@pytest.fixture(scope="module")
def servers(module_server: Callable[..., LiveServer]) -> dict[str, LiveServer]:
    out = {"dev": module_server(), "prod": module_server(tenants=Tenants.from_dict(TENANT_DOC))}
    for srv in out.values():
        c = boto_client(srv.url, AK, SK, signature_version="s3v4")
        c.create_bucket(Bucket=BUCKET)
        c.put_object(Bucket=BUCKET, Key="present", Body=b"a block")
    return out


def _parse(status: int, raw: bytes) -> Answer:
    if raw.startswith(b"{"):
        err = json.loads(raw).get("error")
        return (status, err["name"], err["message"]) if err else (status, "", "")
    if raw.startswith(b"<?xml"):
        root = ET.fromstring(raw)
        return status, root.findtext("Code") or "", root.findtext("Message") or ""
    return status, "", ""


def send(srv: LiveServer, method: str, path: str, headers: dict[str, str],
         body: bytes = b"") -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return _parse(resp.status, resp.read())
    finally:
        conn.close()


def signed(srv: LiveServer, method: str, path: str, body: bytes = b"",
           signer: type = S3SigV4Auth, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Headers botocore's ``signer`` puts on the request (host included)."""
    req = AWSRequest(method=method, url=srv.url + path, data=body, headers=dict(extra or {}))
    if signer is HmacV1Auth:
        signer(CREDS).add_auth(req)
    else:
        signer(CREDS, "s3", "us-east-1").add_auth(req)
    headers = dict(req.headers.items())
    headers.setdefault("host", urlsplit(srv.url).netloc)
    return headers


def fetch(url: str) -> Answer:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, "", ""
    except urllib.error.HTTPError as exc:
        return _parse(exc.code, exc.read())


def both(servers: dict[str, LiveServer], ask: Callable[[LiveServer], Answer]) -> Answer:
    dev, prod = ask(servers["dev"]), ask(servers["prod"])
    assert dev == prod, f"development mode answered {dev}, production {prod}"
    return dev


def _assert_names_sigv4(answer: Answer) -> None:
    status, code, message = answer
    assert (status, code) == (400, "InvalidRequest"), answer
    for hint in ("Signature Version 4", "signature_version='s3v4'",
                 "aws configure set default.s3.signature_version s3v4",
                 "AWS_S3_SIGNATURE_VERSION"):
        assert hint in message, message


@contextmanager
def clock_at(moment: datetime.datetime) -> Iterator[None]:
    """botocore signs with this time (the server's clock is left alone)."""
    import botocore.auth

    class _Then(datetime.datetime):
        @classmethod
        def utcnow(cls) -> datetime.datetime:
            return moment.replace(tzinfo=None)

        @classmethod
        def now(cls, tz: Any = None) -> datetime.datetime:
            return moment if tz else moment.replace(tzinfo=None)

    real = botocore.auth.datetime.datetime
    botocore.auth.datetime.datetime = _Then  # type: ignore[misc]
    try:
        yield
    finally:
        botocore.auth.datetime.datetime = real  # type: ignore[misc]


def test_sigv2_header_is_refused_the_same_way_in_both_modes(
        servers: dict[str, LiveServer]) -> None:
    def ask_get(srv: LiveServer) -> Answer:
        v2 = boto_client(srv.url, AK, SK, signature_version="s3")
        with pytest.raises(ClientError) as ei:
            v2.get_object(Bucket=BUCKET, Key="present")
        r = ei.value.response
        return (r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"],
                r["Error"]["Message"])

    _assert_names_sigv4(both(servers, ask_get))
    # a PUT's body is not taken either, and the old bytes stay
    put = both(servers, lambda s: send(s, "PUT", f"/{BUCKET}/present",
                                        signed(s, "PUT", f"/{BUCKET}/present", b"v2 bytes",
                                               HmacV1Auth), b"v2 bytes"))
    _assert_names_sigv4(put)
    for srv in servers.values():
        c = boto_client(srv.url, AK, SK, signature_version="s3v4")
        assert c.get_object(Bucket=BUCKET, Key="present")["Body"].read() == b"a block"


def test_sigv2_presigned_url_is_refused_the_same_way_in_both_modes(
        servers: dict[str, LiveServer]) -> None:
    def ask(srv: LiveServer) -> Answer:
        v2 = boto_client(srv.url, AK, SK, signature_version="s3")
        url = v2.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "present"},
                                        ExpiresIn=60)
        assert "AWSAccessKeyId=" in url and "Signature=" in url, url  # really SigV2
        return fetch(url)

    _assert_names_sigv4(both(servers, ask))


def test_sigv4_presigned_url_still_works_in_both_modes(servers: dict[str, LiveServer]) -> None:
    for srv in servers.values():
        v4 = boto_client(srv.url, AK, SK, signature_version="s3v4")
        url = v4.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "present"},
                                        ExpiresIn=60)
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.read() == b"a block"


def test_v1_refuses_sigv2_the_same_way_in_both_modes(servers: dict[str, LiveServer]) -> None:
    _assert_names_sigv4(both(servers, lambda s: send(
        s, "GET", "/v1/namespaces", signed(s, "GET", "/v1/namespaces", signer=HmacV1Auth))))


def test_expired_and_overlong_presigned_urls_answer_the_same(
        servers: dict[str, LiveServer]) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=600)

    def expired(srv: LiveServer) -> Answer:
        v4 = boto_client(srv.url, AK, SK, signature_version="s3v4")
        with clock_at(past):
            url = v4.generate_presigned_url("get_object", ExpiresIn=60,
                                            Params={"Bucket": BUCKET, "Key": "present"})
        return fetch(url)

    assert both(servers, expired) == (403, "AccessDenied", "Request has expired")

    def overlong(srv: LiveServer) -> Answer:
        v4 = boto_client(srv.url, AK, SK, signature_version="s3v4")
        return fetch(v4.generate_presigned_url("get_object", ExpiresIn=8 * 24 * 3600,
                                               Params={"Bucket": BUCKET, "Key": "present"}))

    assert both(servers, overlong)[:2] == (400, "AuthorizationQueryParametersError")


def test_header_auth_mistakes_answer_the_same(servers: dict[str, LiveServer]) -> None:
    path = f"/{BUCKET}/present"
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)

    def skewed(srv: LiveServer) -> Answer:
        with clock_at(past):
            headers = signed(srv, "GET", path)
        return send(srv, "GET", path, headers)

    assert both(servers, skewed)[:2] == (403, "RequestTimeTooSkewed")

    def malformed(srv: LiveServer) -> Answer:
        headers = signed(srv, "GET", path)
        headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=" + AK
        return send(srv, "GET", path, headers)

    assert both(servers, malformed)[:2] == (400, "AuthorizationHeaderMalformed")

    def no_payload_hash(srv: LiveServer) -> Answer:  # plain SigV4Auth does not add one
        return send(srv, "GET", path, signed(srv, "GET", path, signer=SigV4Auth))

    assert both(servers, no_payload_hash)[:2] == (400, "InvalidRequest")


def test_v1_body_must_match_its_signed_hash_in_both_modes(servers: dict[str, LiveServer]) -> None:
    path = f"/v1/{BUCKET}/exists"
    meant, sent = b'{"keys": ["aa"]}', b'{"keys": ["bb"]}'

    def tampered(srv: LiveServer) -> Answer:
        headers = signed(srv, "POST", path, meant, extra={"content-type": "application/json"})
        assert headers["X-Amz-Content-SHA256"] == hashlib.sha256(meant).hexdigest()
        return send(srv, "POST", path, headers, sent)

    assert both(servers, tampered)[:2] == (400, "XAmzContentChecksumMismatch")
    ok = both(servers, lambda s: send(s, "POST", path, signed(
        s, "POST", path, meant, extra={"content-type": "application/json"}), meant))
    assert ok[0] == 200
