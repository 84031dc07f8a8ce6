"""Multipart uploads as S3 has them, through boto3 (and raw requests where boto3 cannot send
it) against a real server: the minimum part size, a repeated Complete, GET/HEAD by partNumber,
multipart checksums (COMPOSITE and FULL_OBJECT), and EntityTooLarge as early as it is known."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
from collections.abc import Callable
from typing import Any

import pytest
from awscrt import checksums as crt
from botocore.exceptions import ClientError

from kvstore import limits
from tests.api.conftest import LiveServer, boto_client, bucket_client, pseudo_random, upload_parts

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "mpf-b"
MiB = limits.MiB
MIN = limits.multipart_part_bytes_min


def _code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server()


@pytest.fixture(scope="module")
def s3(srv: LiveServer) -> Any:
    return bucket_client(srv.url, BUCKET)


def _upload(s3: Any, key: str, parts: list[bytes], **create: Any) -> tuple[str, list[dict]]:
    return upload_parts(s3, BUCKET, key, parts, **create)


def test_small_parts_but_the_last_are_entity_too_small(s3: Any) -> None:
    uid, listed = _upload(s3, "small", [pseudo_random(MiB, 1), pseudo_random(MiB, 2)])
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="small", UploadId=uid,
                                     MultipartUpload={"Parts": listed})
    assert _code(ei.value) == "EntityTooSmall"
    assert str(MIN) in ei.value.response["Error"]["Message"]
    # the upload is still open: a Complete of the last part alone (any size) succeeds
    s3.complete_multipart_upload(Bucket=BUCKET, Key="small", UploadId=uid,
                                 MultipartUpload={"Parts": listed[1:]})
    assert s3.get_object(Bucket=BUCKET, Key="small")["Body"].read() == pseudo_random(MiB, 2)


def test_minimum_sized_parts_and_a_small_last_part_complete(s3: Any) -> None:
    parts = [pseudo_random(MIN, 3), pseudo_random(1, 4)]
    uid, listed = _upload(s3, "min", parts)
    s3.complete_multipart_upload(Bucket=BUCKET, Key="min", UploadId=uid,
                                 MultipartUpload={"Parts": listed})
    assert s3.get_object(Bucket=BUCKET, Key="min")["Body"].read() == b"".join(parts)


def test_repeated_complete_answers_the_same(s3: Any) -> None:
    parts = [pseudo_random(MIN, 5), pseudo_random(100, 6)]
    uid, listed = _upload(s3, "again", parts)
    first = s3.complete_multipart_upload(Bucket=BUCKET, Key="again", UploadId=uid,
                                         MultipartUpload={"Parts": listed})
    second = s3.complete_multipart_upload(Bucket=BUCKET, Key="again", UploadId=uid,
                                          MultipartUpload={"Parts": listed})
    assert (second["ETag"], second["Key"], second["Bucket"]) == \
        (first["ETag"], first["Key"], first["Bucket"])
    with pytest.raises(ClientError) as ei:  # other parts than those completed
        s3.complete_multipart_upload(Bucket=BUCKET, Key="again", UploadId=uid,
                                     MultipartUpload={"Parts": listed[:1]})
    assert _code(ei.value) == "InvalidPart"
    with pytest.raises(ClientError) as ei:  # the upload itself is gone
        s3.list_parts(Bucket=BUCKET, Key="again", UploadId=uid)
    assert _code(ei.value) == "NoSuchUpload"
    assert s3.get_object(Bucket=BUCKET, Key="again")["Body"].read() == b"".join(parts)


def test_get_and_head_by_part_number(s3: Any) -> None:
    parts = [pseudo_random(MIN, 7), pseudo_random(MIN + 11, 8), pseudo_random(999, 9)]
    uid, listed = _upload(s3, "byparts", parts)
    s3.complete_multipart_upload(Bucket=BUCKET, Key="byparts", UploadId=uid,
                                 MultipartUpload={"Parts": listed})
    total = sum(map(len, parts))
    start = 0
    for n, p in enumerate(parts, 1):
        got = s3.get_object(Bucket=BUCKET, Key="byparts", PartNumber=n)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["Body"].read() == p
        assert got["PartsCount"] == 3 and got["ContentLength"] == len(p)
        assert got["ContentRange"] == f"bytes {start}-{start + len(p) - 1}/{total}"
        head = s3.head_object(Bucket=BUCKET, Key="byparts", PartNumber=n)
        assert (head["ContentLength"], head["PartsCount"]) == (len(p), 3)
        start += len(p)
    assert "PartsCount" not in s3.head_object(Bucket=BUCKET, Key="byparts")
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=BUCKET, Key="byparts", PartNumber=4)
    assert _code(ei.value) == "InvalidPartNumber"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    with pytest.raises(ClientError) as ei:
        s3.head_object(Bucket=BUCKET, Key="byparts", PartNumber=4)
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=BUCKET, Key="byparts", PartNumber=1, Range="bytes=0-1")
    assert _code(ei.value) == "InvalidRequest"


def test_part_number_one_of_a_plain_object_is_the_whole_object(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="plain", Body=b"one piece")
    got = s3.get_object(Bucket=BUCKET, Key="plain", PartNumber=1)
    assert got["Body"].read() == b"one piece" and "PartsCount" not in got
    assert s3.head_object(Bucket=BUCKET, Key="plain", PartNumber=1)["ContentLength"] == 9
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=BUCKET, Key="plain", PartNumber=2)
    assert _code(ei.value) == "InvalidPartNumber"


@pytest.mark.parametrize(("algo", "fn"), [
    ("SHA256", lambda b: hashlib.sha256(b).digest()),
    ("CRC32", lambda b: __import__("zlib").crc32(b).to_bytes(4, "big")),
])
def test_composite_checksum(s3: Any, algo: str, fn: Callable[[bytes], bytes]) -> None:
    parts = [pseudo_random(MIN, 10), pseudo_random(2000, 11)]
    key = f"composite-{algo}"
    uid, listed = _upload(s3, key, parts, ChecksumAlgorithm=algo)
    assert [p[f"Checksum{algo}"] for p in listed] == [_b64(fn(p)) for p in parts]
    lp = s3.list_parts(Bucket=BUCKET, Key=key, UploadId=uid)
    assert (lp["ChecksumAlgorithm"], lp["ChecksumType"]) == (algo, "COMPOSITE")
    ups = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key)["Uploads"]
    assert [(u["UploadId"], u["ChecksumAlgorithm"], u["ChecksumType"]) for u in ups] == [
        (uid, algo, "COMPOSITE")]
    assert [p[f"Checksum{algo}"] for p in lp["Parts"]] == [_b64(fn(p)) for p in parts]
    with pytest.raises(ClientError) as ei:  # not the type the upload was created with
        s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid,
                                     MultipartUpload={"Parts": listed}, ChecksumType="FULL_OBJECT")
    assert _code(ei.value) == "InvalidRequest"
    done = s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid,
                                        MultipartUpload={"Parts": listed})
    want = _b64(fn(b"".join(fn(p) for p in parts))) + "-2"
    assert (done[f"Checksum{algo}"], done["ChecksumType"]) == (want, "COMPOSITE")
    head = s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert (head[f"Checksum{algo}"], head["ChecksumType"]) == (want, "COMPOSITE")


def test_full_object_crc64nvme_checksum(s3: Any) -> None:
    parts = [pseudo_random(MIN, 12), pseudo_random(3000, 13)]
    whole = _b64(crt.crc64nvme(b"".join(parts)).to_bytes(8, "big"))
    uid, listed = _upload(s3, "full", parts, ChecksumAlgorithm="CRC64NVME",
                          ChecksumType="FULL_OBJECT")
    with pytest.raises(ClientError) as ei:  # a full-object checksum that does not match
        s3.complete_multipart_upload(Bucket=BUCKET, Key="full", UploadId=uid,
                                     MultipartUpload={"Parts": listed},
                                     ChecksumCRC64NVME=_b64(b"\0" * 8), ChecksumType="FULL_OBJECT")
    assert _code(ei.value) == "BadDigest"
    done = s3.complete_multipart_upload(Bucket=BUCKET, Key="full", UploadId=uid,
                                        MultipartUpload={"Parts": listed},
                                        ChecksumCRC64NVME=whole, ChecksumType="FULL_OBJECT")
    assert (done["ChecksumCRC64NVME"], done["ChecksumType"]) == (whole, "FULL_OBJECT")
    head = s3.head_object(Bucket=BUCKET, Key="full", ChecksumMode="ENABLED")
    assert (head["ChecksumCRC64NVME"], head["ChecksumType"]) == (whole, "FULL_OBJECT")
    # botocore validates a full-object checksum of a GET against the bytes it received
    got = s3.get_object(Bucket=BUCKET, Key="full", ChecksumMode="ENABLED")
    assert got["Body"].read() == b"".join(parts)


def test_a_part_with_a_wrong_checksum_is_bad_digest(s3: Any) -> None:
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="badpart",
                                     ChecksumAlgorithm="SHA256")["UploadId"]
    with pytest.raises(ClientError) as ei:
        s3.upload_part(Bucket=BUCKET, Key="badpart", UploadId=uid, PartNumber=1,
                       Body=b"part bytes", ChecksumSHA256=_b64(hashlib.sha256(b"other").digest()))
    assert _code(ei.value) == "BadDigest"
    assert s3.list_parts(Bucket=BUCKET, Key="badpart", UploadId=uid).get("Parts", []) == []
    s3.abort_multipart_upload(Bucket=BUCKET, Key="badpart", UploadId=uid)


def test_checksum_type_the_algorithm_cannot_have_is_refused(s3: Any) -> None:
    with pytest.raises(ClientError) as ei:
        s3.create_multipart_upload(Bucket=BUCKET, Key="bad", ChecksumAlgorithm="SHA256",
                                   ChecksumType="FULL_OBJECT")
    assert _code(ei.value) == "InvalidRequest"


def test_too_large_upload_is_refused_at_create_when_its_size_is_known(s3: Any) -> None:
    def add_size(request: Any, **_: Any) -> None:
        request.headers["x-amz-mp-object-size"] = str(limits.block_bytes_max + 1)

    s3.meta.events.register("before-sign.s3.CreateMultipartUpload", add_size)
    try:
        with pytest.raises(ClientError) as ei:
            s3.create_multipart_upload(Bucket=BUCKET, Key="huge")
    finally:
        s3.meta.events.unregister("before-sign.s3.CreateMultipartUpload", add_size)
    assert _code(ei.value) == "EntityTooLarge"
    assert str(limits.block_bytes_max) in ei.value.response["Error"]["Message"]


def test_the_part_that_crosses_the_block_limit_is_refused_before_its_body(
        srv: LiveServer, s3: Any) -> None:
    half = limits.block_bytes_max // 2
    uid, _ = _upload(s3, "cross", [pseudo_random(half, 14), pseudo_random(half, 15)])
    # part 3 declares 5 MiB and sends none of it: the answer comes before the body
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.putrequest("PUT", f"/{BUCKET}/cross?partNumber=3&uploadId={uid}")
        conn.putheader("Content-Length", str(MIN))
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 400 and b"<Code>EntityTooLarge</Code>" in body
    assert str(limits.block_bytes_max).encode() in body
    with pytest.raises(ClientError) as ei:  # boto3 sees the same
        s3.upload_part(Bucket=BUCKET, Key="cross", UploadId=uid, PartNumber=3, Body=b"x")
    assert _code(ei.value) == "EntityTooLarge"
    # replacing a part within the room left is fine
    s3.upload_part(Bucket=BUCKET, Key="cross", UploadId=uid, PartNumber=2, Body=b"y")
    s3.abort_multipart_upload(Bucket=BUCKET, Key="cross", UploadId=uid)


def test_checksum_given_only_on_complete(s3: Any) -> None:
    """No algorithm on Create (boto3's parts carry CRC32 by default): a full-object CRC32C or a
    composite CRC32 of the parts' own checksums given on Complete is checked and kept."""
    import zlib

    import crc32c

    parts = [pseudo_random(MIN, 16), pseudo_random(10, 17)]
    whole = _b64(crc32c.crc32c(b"".join(parts)).to_bytes(4, "big"))
    uid, listed = _upload(s3, "late-full", parts)
    done = s3.complete_multipart_upload(Bucket=BUCKET, Key="late-full", UploadId=uid,
                                        MultipartUpload={"Parts": listed}, ChecksumCRC32C=whole)
    assert (done["ChecksumCRC32C"], done["ChecksumType"]) == (whole, "FULL_OBJECT")
    uid, listed = _upload(s3, "late-composite", parts)
    crcs = [zlib.crc32(p).to_bytes(4, "big") for p in parts]
    # botocore's default (when_supported) sends a CRC32 with each part
    assert [p["ChecksumCRC32"] for p in listed] == [_b64(c) for c in crcs]
    comp = _b64(zlib.crc32(b"".join(crcs)).to_bytes(4, "big")) + "-2"
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="late-composite", UploadId=uid,
                                     MultipartUpload={"Parts": listed},
                                     ChecksumCRC32=_b64(b"\0" * 4) + "-2")
    assert _code(ei.value) == "BadDigest"
    done = s3.complete_multipart_upload(Bucket=BUCKET, Key="late-composite", UploadId=uid,
                                        MultipartUpload={"Parts": listed}, ChecksumCRC32=comp)
    assert (done["ChecksumCRC32"], done["ChecksumType"]) == (comp, "COMPOSITE")


def test_part_read_from_flash_reads_only_that_part(live_server: Callable[..., LiveServer]) -> None:
    """No DRAM tier: a GET by partNumber locates the part with a HEAD, then reads (and
    verifies) only the chunks covering it, not the whole block."""
    srv = live_server(dram_bytes=0)
    c = boto_client(srv.url)
    c.create_bucket(Bucket=BUCKET)
    parts = [pseudo_random(MIN, 20), pseudo_random(MIN, 21), pseudo_random(MIN, 22), pseudo_random(77, 23)]
    uid, listed = _upload(c, "flash", parts)
    c.complete_multipart_upload(Bucket=BUCKET, Key="flash", UploadId=uid,
                                MultipartUpload={"Parts": listed})
    for n, p in enumerate(parts, 1):
        before = srv.state.engine.stats()["bytes_read"]
        got = c.get_object(Bucket=BUCKET, Key="flash", PartNumber=n)
        assert got["Body"].read() == p and got["PartsCount"] == 4
        read = srv.state.engine.stats()["bytes_read"] - before
        assert len(p) <= read < sum(map(len, parts)) // 2, read


def test_copy_source_range_is_strict(s3: Any) -> None:
    """UploadPartCopy's range is stricter than a GET's Range, as S3's: a malformed value is
    400 InvalidArgument, one past the source's end is InvalidRange (never clamped), and a
    valid one copies exactly those bytes (ceph/s3-tests test_multipart_copy_*_range)."""
    s3.put_object(Bucket=BUCKET, Key="range-src", Body=b"01234")
    up = s3.create_multipart_upload(Bucket=BUCKET, Key="range-dst")["UploadId"]
    src = {"Bucket": BUCKET, "Key": "range-src"}

    def copy(rng: str) -> Any:
        return s3.upload_part_copy(Bucket=BUCKET, Key="range-dst", UploadId=up, PartNumber=1,
                                   CopySource=src, CopySourceRange=rng)

    for bad in ["0-2", "bytes=0", "bytes=hello-world", "bytes=0-bar", "bytes=hello-",
                "bytes=0-2,3-5", "bytes=-2", "bytes=3-1", "items=0-2"]:
        with pytest.raises(ClientError) as ei:
            copy(bad)
        assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400, bad
        assert _code(ei.value) == "InvalidArgument", bad
    for past in ["bytes=0-21", "bytes=5-5", "bytes=2-5"]:
        with pytest.raises(ClientError) as ei:
            copy(past)
        assert _code(ei.value) == "InvalidRange", past
    etag = copy("bytes=1-3")["CopyPartResult"]["ETag"]
    assert etag == f'"{hashlib.md5(b"123").hexdigest()}"'
    s3.complete_multipart_upload(Bucket=BUCKET, Key="range-dst", UploadId=up,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert s3.get_object(Bucket=BUCKET, Key="range-dst")["Body"].read() == b"123"


def test_delete_bucket_takes_its_open_uploads_with_it(s3: Any) -> None:
    """As AWS: open uploads do not keep a bucket without objects alive; a bucket with objects
    is BucketNotEmpty and keeps its uploads."""
    b = "mpf-gone"
    s3.create_bucket(Bucket=b)
    up = s3.create_multipart_upload(Bucket=b, Key="k")["UploadId"]
    s3.upload_part(Bucket=b, Key="k", UploadId=up, PartNumber=1, Body=b"part")
    s3.put_object(Bucket=b, Key="obj", Body=b"x")
    with pytest.raises(ClientError) as ei:
        s3.delete_bucket(Bucket=b)
    assert _code(ei.value) == "BucketNotEmpty"
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=b)["Uploads"]] == [up]
    s3.delete_object(Bucket=b, Key="obj")
    s3.delete_bucket(Bucket=b)
    s3.create_bucket(Bucket=b)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=b)
    with pytest.raises(ClientError) as ei:
        s3.upload_part(Bucket=b, Key="k", UploadId=up, PartNumber=2, Body=b"late")
    assert _code(ei.value) == "NoSuchUpload"
    s3.delete_bucket(Bucket=b)
