"""aws-chunked decoding: AWS's published streaming-signature example, and bodies encoded by
botocore's own AwsChunkedWrapper (what boto3 >= 1.36 sends over TLS)."""

from __future__ import annotations

import io

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from kvstore.api.errors import S3Error
from kvstore.api.s3 import sigv4
from kvstore.api.s3.chunked import AwsChunkedDecoder
from kvstore.errors import AuthenticationFailed

# "Example: PUT Object" of the AWS S3 docs, "Signature Calculations for the Authorization
# Header: Transferring Payload in Multiple Chunks": 66560 bytes of 'a' in chunks of 64 KiB.
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
SIGS = ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]
HEADERS = {
    "host": "s3.amazonaws.com", "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "x-amz-content-sha256": sigv4.STREAMING_SIGNED, "content-encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560", "content-length": "66824",
}
SIGNED = ["content-encoding", "content-length", "host", "x-amz-content-sha256", "x-amz-date",
          "x-amz-decoded-content-length", "x-amz-storage-class"]


def _ctx() -> sigv4.SigningContext:
    key = sigv4.signing_key(SECRET, "20130524", "us-east-1", "s3")
    return sigv4.SigningContext(key, "20130524T000000Z", "20130524/us-east-1/s3/aws4_request",
                                SEED)


def _aws_body(sigs: list[str] = SIGS) -> bytes:
    return (b"10000;chunk-signature=" + sigs[0].encode() + b"\r\n" + b"a" * 65536 + b"\r\n"
            + b"400;chunk-signature=" + sigs[1].encode() + b"\r\n" + b"a" * 1024 + b"\r\n"
            + b"0;chunk-signature=" + sigs[2].encode() + b"\r\n\r\n")


def test_seed_signature_of_the_aws_example() -> None:
    creq = sigv4.canonical_request("PUT", "/examplebucket/chunkObject.txt", [], HEADERS, SIGNED,
                                   sigv4.STREAMING_SIGNED)
    key = sigv4.signing_key(SECRET, "20130524", "us-east-1", "s3")
    sts = sigv4.string_to_sign("20130524T000000Z", "20130524/us-east-1/s3/aws4_request", creq)
    assert sigv4.sign(key, sts) == SEED


@pytest.mark.parametrize("piece", [1, 7, 100, 4096, 1 << 20])
def test_signed_chunks_decode_in_any_split(piece: int) -> None:
    body = _aws_body()
    assert len(body) == 66824
    out = bytearray(66560)
    dec = AwsChunkedDecoder(memoryview(out), sigv4.STREAMING_SIGNED, _ctx())
    for i in range(0, len(body), piece):
        dec.feed(body[i:i + piece])
    assert dec.finish() == {}
    assert out == b"a" * 66560


def test_tampered_chunk_is_refused() -> None:
    body = bytearray(_aws_body())
    body[200] = ord("b")
    dec = AwsChunkedDecoder(memoryview(bytearray(66560)), sigv4.STREAMING_SIGNED, _ctx())
    with pytest.raises(AuthenticationFailed):
        dec.feed(bytes(body))


def test_wrong_final_signature_is_refused() -> None:
    body = _aws_body(SIGS[:2] + ["0" * 64])
    dec = AwsChunkedDecoder(memoryview(bytearray(66560)), sigv4.STREAMING_SIGNED, _ctx())
    with pytest.raises(AuthenticationFailed):
        dec.feed(body)


def test_development_mode_skips_chunk_signatures() -> None:
    out = bytearray(66560)
    dec = AwsChunkedDecoder(memoryview(out), sigv4.STREAMING_SIGNED, None)
    dec.feed(_aws_body(["1" * 64] * 3))
    dec.finish()
    assert out == b"a" * 66560


def test_development_mode_still_wants_a_trailer_signature() -> None:
    """Only comparing signatures is skipped without credentials: a signed-trailer body with no
    x-amz-trailer-signature is refused in both modes (anything but: users learn in production)."""
    body = (b"5;chunk-signature=" + b"1" * 64 + b"\r\nhello\r\n0;chunk-signature=" + b"2" * 64
            + b"\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n")
    dec = AwsChunkedDecoder(memoryview(bytearray(5)), sigv4.STREAMING_SIGNED_TRAILER, None)
    dec.feed(body)  # the chunk signatures are not compared
    with pytest.raises(AuthenticationFailed, match="trailer signature missing"):
        dec.finish()


def _botocore_body(data: bytes, chunk: int) -> bytes:
    w = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=Crc32Checksum,
                          checksum_name="x-amz-checksum-crc32", chunk_size=chunk)
    return w.read()


@pytest.mark.parametrize("size,chunk", [(0, 1024), (1, 1024), (100_000, 8192), (65536, 65536)])
def test_unsigned_trailer_from_botocore(size: int, chunk: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    body = _botocore_body(data, chunk)
    out = bytearray(size)
    dec = AwsChunkedDecoder(memoryview(out), sigv4.STREAMING_UNSIGNED_TRAILER)
    for i in range(0, len(body), 333):
        dec.feed(body[i:i + 333])
    trailers = dec.finish()
    assert out == data
    c = Crc32Checksum()
    c.update(data)
    assert trailers == {"x-amz-checksum-crc32": c.b64digest()}


def test_short_body_is_incomplete() -> None:
    body = _botocore_body(b"z" * 1000, 512)
    dec = AwsChunkedDecoder(memoryview(bytearray(1001)), sigv4.STREAMING_UNSIGNED_TRAILER)
    dec.feed(body)
    with pytest.raises(S3Error) as ei:
        dec.finish()
    assert ei.value.name == "IncompleteBody"


def test_long_body_is_refused() -> None:
    body = _botocore_body(b"z" * 1000, 512)
    dec = AwsChunkedDecoder(memoryview(bytearray(999)), sigv4.STREAMING_UNSIGNED_TRAILER)
    with pytest.raises(S3Error):
        dec.feed(body)


@pytest.mark.parametrize("junk", [b"zz\r\n", b"5\r\nabcdeXY", b"1" * 5000])
def test_garbage_is_a_typed_error(junk: bytes) -> None:
    dec = AwsChunkedDecoder(memoryview(bytearray(10)), sigv4.STREAMING_UNSIGNED_TRAILER)
    with pytest.raises(S3Error):
        dec.feed(junk)
        dec.finish()


def test_signed_trailer_roundtrip() -> None:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER: chunk signatures, then a signed trailer."""
    import hashlib

    ctx = _ctx()
    data = b"q" * 3000
    sig1 = sigv4.chunk_signature(ctx, SEED, hashlib.sha256(data).hexdigest())
    sig0 = sigv4.chunk_signature(ctx, sig1, sigv4.EMPTY_SHA256)
    trailer = b"x-amz-checksum-crc32:AAAAAA==\n"
    tsig = sigv4.trailer_signature(ctx, sig0, trailer)
    body = (b"bb8;chunk-signature=" + sig1.encode() + b"\r\n" + data + b"\r\n"
            + b"0;chunk-signature=" + sig0.encode() + b"\r\n"
            + b"x-amz-checksum-crc32:AAAAAA==\r\n"
            + b"x-amz-trailer-signature:" + tsig.encode() + b"\r\n\r\n")
    out = bytearray(3000)
    dec = AwsChunkedDecoder(memoryview(out), sigv4.STREAMING_SIGNED_TRAILER, ctx)
    dec.feed(body)
    assert dec.finish() == {"x-amz-checksum-crc32": "AAAAAA=="}
    bad = body.replace(b"AAAAAA==", b"BBBBBB==")
    dec = AwsChunkedDecoder(memoryview(bytearray(3000)), sigv4.STREAMING_SIGNED_TRAILER, ctx)
    with pytest.raises(AuthenticationFailed):
        dec.feed(bad)
