"""The S3 app under hostile or unusual input: aws-chunked bodies on the wire, digest
mismatches, unsupported features, oversized bodies, handler crashes. The server stays up."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from kvstore import limits
from kvstore.api.s3 import sigv4
from kvstore.auth import Tenants
from tests.api.conftest import TENANT_DOC, LiveServer, boto_client, recv_until

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
CREDS = Credentials("AKIAACME", "acme-secret-key")
BUCKET = "acme-app"


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    s = module_server(tenants=Tenants.from_dict(TENANT_DOC))
    boto_client(s.url, CREDS.access_key, CREDS.secret_key).create_bucket(Bucket=BUCKET)
    return s


@pytest.fixture(scope="module")
def s3(srv: LiveServer) -> Any:
    return boto_client(srv.url, CREDS.access_key, CREDS.secret_key)


class _Signer(S3SigV4Auth):
    """botocore's S3 signer, signing the x-amz-content-sha256 value the test chose."""

    def __init__(self, payload_hash: str | None) -> None:
        super().__init__(CREDS, "s3", "us-east-1")
        self._payload_hash = payload_hash

    def payload(self, request: AWSRequest) -> str:
        return self._payload_hash or super().payload(request)


def _send(srv: LiveServer, method: str, path: str, body: bytes, headers: dict[str, str],
          sign: bool = True) -> tuple[int, dict[str, str], bytes]:
    req = AWSRequest(method=method, url=srv.url + path, headers=headers)
    if sign:
        _Signer(headers.get("x-amz-content-sha256")).add_auth(req)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=dict(req.headers.items()))
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _trailer_body(data: bytes, checksum_cls: Any = Crc32Checksum) -> bytes:
    return AwsChunkedWrapper(io.BytesIO(data), checksum_cls=checksum_cls,
                             checksum_name="x-amz-checksum-crc32", chunk_size=16384).read()


def _trailer_headers(n: int) -> dict[str, str]:
    return {"content-encoding": "aws-chunked", "x-amz-trailer": "x-amz-checksum-crc32",
            "x-amz-decoded-content-length": str(n),
            "x-amz-content-sha256": sigv4.STREAMING_UNSIGNED_TRAILER}


def test_unsigned_trailer_body_as_boto3_sends_it(srv: LiveServer, s3: Any) -> None:
    data = os.urandom(100_000)
    st, hdrs, _ = _send(srv, "PUT", f"/{BUCKET}/trailer", _trailer_body(data),
                        _trailer_headers(len(data)))
    assert st == 200 and "x-amz-checksum-crc32" in hdrs
    g = s3.get_object(Bucket=BUCKET, Key="trailer")
    assert g["Body"].read() == data and "ContentEncoding" not in g


def test_bad_trailer_checksum_stores_nothing(srv: LiveServer, s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="trailer-bad", Body=b"earlier")
    body = _trailer_body(b"x" * 5000)
    good = Crc32Checksum()
    good.update(b"x" * 5000)
    body = body.replace(good.b64digest().encode(), b"AAAAAA==")
    st, _, raw = _send(srv, "PUT", f"/{BUCKET}/trailer-bad", body, _trailer_headers(5000))
    assert st == 400 and b"<Code>BadDigest</Code>" in raw
    assert s3.get_object(Bucket=BUCKET, Key="trailer-bad")["Body"].read() == b"earlier"


def _signed_streaming(srv: LiveServer, path: str, data: bytes, chunk: int,
                      tamper: bool = False) -> tuple[int, bytes]:
    headers = {"content-encoding": "aws-chunked", "x-amz-content-sha256": sigv4.STREAMING_SIGNED,
               "x-amz-decoded-content-length": str(len(data))}
    req = AWSRequest(method="PUT", url=srv.url + path, headers=headers)
    _Signer(sigv4.STREAMING_SIGNED).add_auth(req)
    auth = req.headers["Authorization"]
    seed = auth.rsplit("Signature=", 1)[1]
    amz_date = req.headers["X-Amz-Date"]
    ctx = sigv4.SigningContext(sigv4.signing_key(CREDS.secret_key, amz_date[:8], "us-east-1",
                                                 "s3"),
                               amz_date, f"{amz_date[:8]}/us-east-1/s3/aws4_request", seed)
    body, prev = b"", seed
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        prev = sigv4.chunk_signature(ctx, prev, hashlib.sha256(piece).hexdigest())
        body += b"%x;chunk-signature=%s\r\n%s\r\n" % (len(piece), prev.encode(), piece)
    prev = sigv4.chunk_signature(ctx, prev, sigv4.EMPTY_SHA256)
    body += b"0;chunk-signature=%s\r\n\r\n" % prev.encode()
    if tamper:
        body = body.replace(data[:16], bytes(16), 1)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("PUT", path, body=body, headers=dict(req.headers.items()))
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_signed_streaming_body(srv: LiveServer, s3: Any) -> None:
    data = os.urandom(200_000)
    st, _ = _signed_streaming(srv, f"/{BUCKET}/streamed", data, 65536)
    assert st == 200
    assert s3.get_object(Bucket=BUCKET, Key="streamed")["Body"].read() == data
    st, raw = _signed_streaming(srv, f"/{BUCKET}/streamed", os.urandom(200_000), 65536,
                                tamper=True)
    assert st == 403 and b"SignatureDoesNotMatch" in raw
    assert s3.get_object(Bucket=BUCKET, Key="streamed")["Body"].read() == data


def test_content_sha256_mismatch(srv: LiveServer) -> None:
    headers = {"x-amz-content-sha256": hashlib.sha256(b"declared").hexdigest()}
    st, _, raw = _send(srv, "PUT", f"/{BUCKET}/sha", b"actually sent", headers)
    assert st == 400 and b"XAmzContentChecksumMismatch" in raw


@pytest.mark.parametrize("call", [
    lambda s3: s3.get_object_tagging(Bucket=BUCKET, Key="k"),
    lambda s3: s3.put_object(Bucket=BUCKET, Key="k", Body=b"x", ServerSideEncryption="AES256"),
    lambda s3: s3.put_object(Bucket=BUCKET, Key="k", Body=b"x", StorageClass="GLACIER"),
    lambda s3: s3.put_object(Bucket=BUCKET, Key="k", Body=b"x", Tagging="a=b"),
    lambda s3: s3.restore_object(Bucket=BUCKET, Key="k", RestoreRequest={"Days": 1}),
])
def test_unsupported_features_answer_not_implemented(s3: Any, call: Callable[[Any], Any]) -> None:
    with pytest.raises(ClientError) as ei:
        call(s3)
    assert ei.value.response["Error"]["Code"] == "NotImplemented"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501


def test_oversized_body_is_refused_before_reading(srv: LiveServer, s3: Any) -> None:
    n = limits.http_body_bytes_max + 1
    req = AWSRequest(method="PUT", url=f"{srv.url}/{BUCKET}/huge",
                     headers={"Content-Length": str(n)})
    _Signer(sigv4.UNSIGNED_PAYLOAD).add_auth(req)
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(f"PUT /{BUCKET}/huge HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n{head}"
                     "\r\n".encode() + b"x" * 1000)
        reply = recv_until(sock, b"</Error>")
    assert reply.startswith(b"HTTP/1.1 400") and b"EntityTooLarge" in reply
    s3.put_object(Bucket=BUCKET, Key="after-huge", Body=b"still up")
    assert s3.get_object(Bucket=BUCKET, Key="after-huge")["Body"].read() == b"still up"


def test_oversized_body_through_boto3(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "http_body_bytes_max", 1024 * 1024)
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=BUCKET, Key="big", Body=b"z" * (2 * 1024 * 1024))
    assert ei.value.response["Error"]["Code"] == "EntityTooLarge"
    monkeypatch.undo()
    s3.put_object(Bucket=BUCKET, Key="big", Body=b"z" * (2 * 1024 * 1024))


def test_handler_crash_is_500_xml_and_server_stays_up(srv: LiveServer, s3: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    s3.put_object(Bucket=BUCKET, Key="crash", Body=b"ok")

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(srv.state.engine, "read", boom)
    monkeypatch.setattr(srv.state.engine, "read_dram", boom)  # the block is in the DRAM tier
    st, _, raw = _send(srv, "GET", f"/{BUCKET}/crash", b"", {
        "x-amz-content-sha256": sigv4.EMPTY_SHA256})
    assert st == 500 and b"<Code>InternalError</Code>" in raw and b"injected" not in raw
    monkeypatch.undo()
    assert s3.get_object(Bucket=BUCKET, Key="crash")["Body"].read() == b"ok"


def test_malformed_inputs_are_typed_errors(srv: LiveServer) -> None:
    sha = {"x-amz-content-sha256": hashlib.sha256(b"<not xml").hexdigest()}
    st, _, raw = _send(srv, "POST", f"/{BUCKET}?delete", b"<not xml", sha)
    assert st == 400 and b"MalformedXML" in raw
    st, _, raw = _send(srv, "GET", f"/{BUCKET}?list-type=2&continuation-token=%25%25", b"",
                       {"x-amz-content-sha256": sigv4.EMPTY_SHA256})
    assert st == 400 and b"InvalidArgument" in raw
    st, _, raw = _send(srv, "PATCH", f"/{BUCKET}/k", b"", {
        "x-amz-content-sha256": sigv4.EMPTY_SHA256})
    assert st == 405 and b"MethodNotAllowed" in raw
    long_key = "k" * (limits.key_bytes_max + 1)
    st, _, raw = _send(srv, "PUT", f"/{BUCKET}/{long_key}", b"x", {
        "x-amz-content-sha256": hashlib.sha256(b"x").hexdigest()})
    assert st == 400


def test_truncated_body_then_disconnect(srv: LiveServer, s3: Any) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"PUT /x-dev/k HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\nabc")
    s3.put_object(Bucket=BUCKET, Key="after-trunc", Body=b"fine")
    assert s3.head_object(Bucket=BUCKET, Key="after-trunc")["ContentLength"] == 4
    assert urlsplit(srv.url).hostname == "127.0.0.1"
