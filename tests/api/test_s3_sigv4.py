"""SigV4 verification against botocore's own signer and AWS's published example."""

from __future__ import annotations

import hashlib
import os
import time
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kvstore import limits
from kvstore.api.errors import S3Error
from kvstore.api.s3 import sigv4
from kvstore.api.s3.http import parse_query
from kvstore.auth import Tenants
from kvstore.errors import AccessDenied, AuthenticationFailed

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

TENANTS = Tenants.from_dict({"tenants": [
    {"name": "acme", "access_key": "AKIAACME", "secret_key": "s3cr3t/+key"}]})
CREDS = Credentials("AKIAACME", "s3cr3t/+key")


def _split(req: AWSRequest) -> tuple[str, list[tuple[str, str]], dict[str, str]]:
    u = urlsplit(req.url)
    headers = {k.lower(): v for k, v in req.headers.items()}
    headers.setdefault("host", u.netloc)
    return u.path, parse_query(u.query.encode()), headers


def _signed(method: str, url: str, body: bytes = b"", headers: dict | None = None,
            creds: Credentials = CREDS) -> AWSRequest:
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    req.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
    return req


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8700/bkt/plain-key",
    "http://127.0.0.1:8700/bkt/dir/with%20space/%E2%9C%93.bin",
    "http://127.0.0.1:8700/bkt?list-type=2&prefix=a%2Fb&delimiter=%2F&max-keys=7",
    "http://127.0.0.1:8700/bkt/k?uploads",
])
def test_header_signatures_from_botocore_verify(url: str) -> None:
    req = _signed("PUT", url, b"payload", {"Content-Type": "text/plain", "x-amz-meta-a": "b  c"})
    path, q, headers = _split(req)
    tenant, ctx = sigv4.authenticate(TENANTS, "PUT", path, q, headers, time.time())
    assert tenant.name == "acme"
    assert ctx is not None and ctx.seed_signature in headers["authorization"]


def test_wrong_secret_is_signature_does_not_match() -> None:
    req = _signed("GET", "http://127.0.0.1/bkt/k", creds=Credentials("AKIAACME", "wrong"))
    path, q, headers = _split(req)
    with pytest.raises(AuthenticationFailed) as ei:
        sigv4.authenticate(TENANTS, "GET", path, q, headers, time.time())
    assert ei.value.name == "SignatureDoesNotMatch"


def test_tampered_path_fails() -> None:
    req = _signed("GET", "http://127.0.0.1/bkt/k")
    _path, q, headers = _split(req)
    with pytest.raises(AuthenticationFailed):
        sigv4.authenticate(TENANTS, "GET", "/bkt/other", q, headers, time.time())


def test_unknown_access_key() -> None:
    req = _signed("GET", "http://127.0.0.1/bkt/k", creds=Credentials("AKIANOBODY", "x"))
    path, q, headers = _split(req)
    with pytest.raises(S3Error) as ei:
        sigv4.authenticate(TENANTS, "GET", path, q, headers, time.time())
    assert ei.value.name == "InvalidAccessKeyId"


def test_clock_skew_is_refused() -> None:
    req = _signed("GET", "http://127.0.0.1/bkt/k")
    path, q, headers = _split(req)
    later = time.time() + limits.clock_skew_seconds_max + 60
    with pytest.raises(S3Error) as ei:
        sigv4.authenticate(TENANTS, "GET", path, q, headers, later)
    assert ei.value.name == "RequestTimeTooSkewed"


def test_anonymous_refused_unless_development() -> None:
    with pytest.raises(AccessDenied):
        sigv4.authenticate(TENANTS, "GET", "/bkt/k", [], {"host": "x"}, time.time())
    tenant, ctx = sigv4.authenticate(Tenants.development(), "GET", "/bkt/k", [],
                                     {"host": "x"}, time.time())
    assert ctx is None and tenant.may_use("anything")


def test_development_accepts_any_signature() -> None:
    req = _signed("GET", "http://127.0.0.1/bkt/k", creds=Credentials("AKIAANY", "whatever"))
    path, q, headers = _split(req)
    headers["authorization"] = headers["authorization"][:-4] + "0000"
    tenant, _ = sigv4.authenticate(Tenants.development(), "GET", path, q, headers, time.time())
    assert tenant.name == ""


def _presign(url: str, expires: int, method: str = "GET") -> AWSRequest:
    req = AWSRequest(method=method, url=url)
    S3SigV4QueryAuth(CREDS, "s3", "us-east-1", expires=expires).add_auth(req)
    return req


def test_presigned_url_verifies_and_expires() -> None:
    req = _presign("http://127.0.0.1:8700/bkt/some%20key", 60)
    path, q, headers = _split(req)
    headers = {"host": "127.0.0.1:8700"}
    tenant, _ = sigv4.authenticate(TENANTS, "GET", path, q, headers, time.time())
    assert tenant.name == "acme"
    with pytest.raises(AccessDenied, match="Request has expired"):
        sigv4.authenticate(TENANTS, "GET", path, q, headers, time.time() + 120)
    with pytest.raises(AuthenticationFailed):
        sigv4.authenticate(TENANTS, "PUT", path, q, headers, time.time())


def test_presigned_expiry_is_bounded() -> None:
    req = _presign("http://127.0.0.1/bkt/k", 60)
    path, q, headers = _split(req)
    q = [(k, str(limits.presign_seconds_max + 1) if k == "X-Amz-Expires" else v) for k, v in q]
    with pytest.raises(S3Error) as ei:
        sigv4.authenticate(TENANTS, "GET", path, q, {"host": "127.0.0.1"}, time.time())
    assert ei.value.name == "AuthorizationQueryParametersError"


def test_aws_documented_get_example() -> None:
    """'Example: GET Object' of the AWS S3 SigV4 header-auth documentation."""
    headers = {
        "host": "examplebucket.s3.amazonaws.com", "range": "bytes=0-9",
        "x-amz-content-sha256": sigv4.EMPTY_SHA256, "x-amz-date": "20130524T000000Z",
    }
    creq = sigv4.canonical_request("GET", "/test.txt", [], headers,
                                   ["host", "range", "x-amz-content-sha256", "x-amz-date"],
                                   sigv4.EMPTY_SHA256)
    sts = sigv4.string_to_sign("20130524T000000Z", "20130524/us-east-1/s3/aws4_request", creq)
    assert sts.endswith("7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972")
    key = sigv4.signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524",
                            "us-east-1", "s3")
    assert sigv4.sign(key, sts) == \
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


def test_malformed_authorization_header() -> None:
    with pytest.raises(S3Error) as ei:
        sigv4.authenticate(TENANTS, "GET", "/b/k", [], {"authorization": "AWS4-HMAC-SHA256 x",
                                                        "host": "h"}, time.time())
    assert ei.value.name == "AuthorizationHeaderMalformed"


def test_development_checks_everything_but_the_signature() -> None:
    dev = Tenants.development()
    with pytest.raises(S3Error) as ei:
        sigv4.authenticate(dev, "GET", "/b/k", [], {"authorization": "AWS AK:c2ln", "host": "h"},
                           time.time())
    assert ei.value.name == "InvalidRequest" and "s3v4" in ei.value.message
    q = [("AWSAccessKeyId", "AK"), ("Expires", "1"), ("Signature", "c2ln")]
    with pytest.raises(S3Error, match="Signature Version 4"):
        sigv4.authenticate(dev, "GET", "/b/k", q, {"host": "h"}, time.time())
    req = _signed("GET", "http://127.0.0.1/bkt/k", creds=Credentials("AKIAANY", "whatever"))
    path, q, headers = _split(req)
    with pytest.raises(S3Error) as ei:
        sigv4.authenticate(dev, "GET", path, q, headers, time.time() + 3600)
    assert ei.value.name == "RequestTimeTooSkewed"
    tenant, ctx = sigv4.authenticate(dev, "GET", path, q, headers, time.time())
    assert tenant.name == "" and ctx is None


def test_wire_text_reads_utf8_bytes_and_keeps_latin1_ones() -> None:
    assert sigv4.wire_text("plain ascii") == "plain ascii"
    assert sigv4.wire_text("caf\u00c3\u00a9") == "caf\u00e9"  # UTF-8 bytes of "café"
    assert sigv4.wire_text("caf\u00e9") == "caf\u00e9"  # one latin-1 byte: not UTF-8, kept
