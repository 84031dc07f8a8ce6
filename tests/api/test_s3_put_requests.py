"""How a PutObject may arrive, against a real server: ``Transfer-Encoding: chunked`` with no
Content-Length (raw requests: boto3 always sends a length), 411 with neither, Content-Encoding
kept exactly as sent minus ``aws-chunked``; and the checksums: a wrong x-amz-checksum-sha256 in
any form is BadDigest, CRC64NVME is verified and kept (boto3)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from awscrt import checksums as crt
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
BUCKET = "acme-put"
CREDS = Credentials("AKIAACME", "acme-secret-key")
MiB = limits.MiB


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

    def __init__(self, payload_hash: str) -> None:
        super().__init__(CREDS, "s3", "us-east-1")
        self._payload_hash = payload_hash

    def payload(self, request: AWSRequest) -> str:
        return self._payload_hash


def _send(srv: LiveServer, method: str, path: str, body: Any,
          headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A SigV4-signed raw request (x-amz-content-sha256 as given); an iterable body goes out
    with Transfer-Encoding: chunked and no Content-Length."""
    headers = {"x-amz-content-sha256": sigv4.UNSIGNED_PAYLOAD, **headers}
    req = AWSRequest(method=method, url=srv.url + path, headers=headers)
    _Signer(headers["x-amz-content-sha256"]).add_auth(req)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in req.headers.items():
            conn.putheader(k, v)
        if isinstance(body, bytes):
            conn.endheaders(body)
        else:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for piece in body:
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_chunked_put_without_content_length(srv: LiveServer, s3: Any) -> None:
    data = hashlib.shake_256(b"chunked").digest(3 * MiB + 17)
    status, headers, body = _send(srv, "PUT", f"/{BUCKET}/chunked", _pieces(data, 100_000), {})
    assert status == 200, body
    assert headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = s3.get_object(Bucket=BUCKET, Key="chunked")
    assert got["Body"].read() == data and got["ContentLength"] == len(data)
    status, _, body = _send(srv, "PUT", f"/{BUCKET}/chunked-empty", iter(()), {})
    assert status == 200, body
    assert s3.get_object(Bucket=BUCKET, Key="chunked-empty")["Body"].read() == b""


def test_chunked_put_past_the_block_limit_is_entity_too_large(srv: LiveServer, s3: Any) -> None:
    piece = b"z" * MiB
    n = limits.block_bytes_max // MiB + 1
    status, _, body = _send(srv, "PUT", f"/{BUCKET}/chunked-huge", iter([piece] * n), {})
    assert status == 400 and b"<Code>EntityTooLarge</Code>" in body
    assert str(limits.block_bytes_max).encode() in body
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key="chunked-huge")


def test_chunked_upload_part(srv: LiveServer, s3: Any) -> None:
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="chunked-part")["UploadId"]
    data = b"part sent chunked" * 1000
    status, headers, body = _send(srv, "PUT", f"/{BUCKET}/chunked-part?partNumber=1&uploadId={uid}",
                                  _pieces(data, 4096), {})
    assert status == 200, body
    assert headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
    s3.abort_multipart_upload(Bucket=BUCKET, Key="chunked-part", UploadId=uid)


def test_put_with_neither_length_nor_chunked_is_411(srv: LiveServer) -> None:
    status, _, body = _send(srv, "PUT", f"/{BUCKET}/nolength", b"", {})
    assert status == 411 and b"<Code>MissingContentLength</Code>" in body


@pytest.mark.parametrize("encoding", ["gzip", "gzip, br", "br,gzip", "x-custom;q=1"])
def test_content_encoding_is_returned_exactly(s3: Any, encoding: str) -> None:
    s3.put_object(Bucket=BUCKET, Key="enc", Body=b"\x1f\x8b...", ContentEncoding=encoding)
    assert s3.head_object(Bucket=BUCKET, Key="enc")["ContentEncoding"] == encoding
    assert s3.get_object(Bucket=BUCKET, Key="enc")["ContentEncoding"] == encoding


@pytest.mark.parametrize(("sent", "stored"), [
    ("aws-chunked", None), ("aws-chunked,gzip", "gzip"), ("gzip, aws-chunked", "gzip"),
    ("aws-chunked, gzip, br", "gzip, br"),
])
def test_aws_chunked_is_dropped_from_content_encoding(srv: LiveServer, s3: Any, sent: str,
                                                     stored: str | None) -> None:
    data = b"streamed" * 100
    wire = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=Crc32Checksum,
                             checksum_name="x-amz-checksum-crc32", chunk_size=256).read()
    status, _, body = _send(srv, "PUT", f"/{BUCKET}/enc-chunked", wire, {
        "content-encoding": sent, "x-amz-trailer": "x-amz-checksum-crc32",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-content-sha256": sigv4.STREAMING_UNSIGNED_TRAILER,
        "content-length": str(len(wire))})
    assert status == 200, body
    head = s3.head_object(Bucket=BUCKET, Key="enc-chunked")
    assert head.get("ContentEncoding") == stored
    assert s3.get_object(Bucket=BUCKET, Key="enc-chunked")["Body"].read() == data


@pytest.mark.parametrize(("sent", "stored"), [
    ("aws-chunked", None), ("aws-chunked, aws-chunked", None), ("gzip, aws-chunked", "gzip"),
    ("aws-chunked, gzip", "gzip"),
])
def test_aws_chunked_encoding_with_a_plain_body(s3: Any, sent: str, stored: str | None) -> None:
    """boto3 sends a plain, sha256-signed body whatever Content-Encoding says: the framing
    follows x-amz-content-sha256 (as AWS: ceph/s3-tests test_object_content_encoding_aws_chunked)
    and aws-chunked is still dropped from what is stored."""
    s3.put_object(Bucket=BUCKET, Key="enc-plain", Body=b"plain bytes", ContentEncoding=sent)
    head = s3.head_object(Bucket=BUCKET, Key="enc-plain")
    assert head.get("ContentEncoding") == stored
    assert s3.get_object(Bucket=BUCKET, Key="enc-plain")["Body"].read() == b"plain bytes"


@pytest.mark.parametrize("value", [
    base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode(),  # another digest
    "bad",  # not a digest at all
    base64.b64encode(b"short").decode(),  # base64, of the wrong size
])
def test_wrong_sha256_is_bad_digest(s3: Any, value: str) -> None:
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=BUCKET, Key="sha", Body=b"the bytes", ChecksumSHA256=value)
    assert ei.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key="sha")


def test_crc64nvme(s3: Any) -> None:
    data = hashlib.shake_256(b"crc64").digest(MiB + 5)
    want = base64.b64encode(crt.crc64nvme(data).to_bytes(8, "big")).decode()
    put = s3.put_object(Bucket=BUCKET, Key="crc64", Body=data, ChecksumAlgorithm="CRC64NVME")
    assert (put["ChecksumCRC64NVME"], put["ChecksumType"]) == (want, "FULL_OBJECT")
    head = s3.head_object(Bucket=BUCKET, Key="crc64", ChecksumMode="ENABLED")
    assert (head["ChecksumCRC64NVME"], head["ChecksumType"]) == (want, "FULL_OBJECT")
    got = s3.get_object(Bucket=BUCKET, Key="crc64", ChecksumMode="ENABLED")  # botocore checks
    assert got["Body"].read() == data
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=BUCKET, Key="crc64-bad", Body=data,
                      ChecksumCRC64NVME=base64.b64encode(b"\0" * 8).decode())
    assert ei.value.response["Error"]["Code"] == "BadDigest"


@pytest.mark.parametrize("algo", ["SHA512", "XXHASH64", "XXHASH3", "XXHASH128", "CRC32C"])
def test_the_other_sdk_checksums(s3: Any, algo: str) -> None:
    """botocore computes these (with the CRT); the server verifies and keeps them."""
    data = hashlib.shake_256(algo.encode()).digest(100_000)
    put = s3.put_object(Bucket=BUCKET, Key=f"sum-{algo}", Body=data, ChecksumAlgorithm=algo)
    head = s3.head_object(Bucket=BUCKET, Key=f"sum-{algo}", ChecksumMode="ENABLED")
    assert head[f"Checksum{algo}"] == put[f"Checksum{algo}"]
    with pytest.raises(ClientError) as ei:  # a value computed over other bytes
        s3.put_object(Bucket=BUCKET, Key=f"sum-{algo}", Body=data[1:],
                      **{f"Checksum{algo}": put[f"Checksum{algo}"]})
    assert ei.value.response["Error"]["Code"] == "BadDigest"


def _head_lines(sock: Any) -> list[bytes]:
    """The status line and headers of one answer read off a raw socket."""
    return recv_until(sock, b"\r\n\r\n").split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_expect_100_continue(srv: LiveServer) -> None:
    """A PUT refused before its body is read answers the error at once, not 100 Continue (the
    client then never sends the body), and closes the connection; an accepted one gets 100
    Continue, then its answer (ceph/s3-tests test_100_continue)."""
    import socket

    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(f"PUT /{BUCKET}/expect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Length: 8\r\nExpect: 100-continue\r\n\r\n".encode())
        lines = _head_lines(sock)  # unsigned, to a tenant's bucket: 403
        assert lines[0].startswith(b"HTTP/1.1 403"), lines
        assert b"connection: close" in [ln.lower() for ln in lines]
    path = f"/{BUCKET}/expect"
    headers = {"x-amz-content-sha256": hashlib.sha256(b"8 bytes!").hexdigest(),
               "content-length": "8", "expect": "100-continue"}
    req = AWSRequest(method="PUT", url=srv.url + path, headers=headers)
    _Signer(headers["x-amz-content-sha256"]).add_auth(req)
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n{head}\r\n".encode())
        assert _head_lines(sock)[0] == b"HTTP/1.1 100 Continue"
        sock.sendall(b"8 bytes!")
        assert _head_lines(sock)[0].startswith(b"HTTP/1.1 200"), "the PUT was not stored"
    got = boto_client(srv.url, CREDS.access_key, CREDS.secret_key).get_object(
        Bucket=BUCKET, Key="expect")["Body"].read()
    assert got == b"8 bytes!"
