"""Object operations through boto3 against a live server: Put/Get/Head/Delete, Range,
conditional requests, checksums (a bad one stores nothing), CopyObject, DeleteObjects."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.conftest import LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "objects-b"


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server()


@pytest.fixture(scope="module")
def s3(srv: LiveServer) -> Iterator[Any]:
    c = boto_client(srv.url)
    c.create_bucket(Bucket=BUCKET)
    yield c


def _code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def _payload(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "little")).digest(n)


def test_put_get_head_delete_roundtrip(s3: Any) -> None:
    data = _payload(2 * 1024 * 1024 + 17)
    put = s3.put_object(Bucket=BUCKET, Key="rt/obj.bin", Body=data, ContentType="application/x-kv",
                        Metadata={"layer": "7"}, CacheControl="no-cache")
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert put["ChecksumCRC32"] == crc
    got = s3.get_object(Bucket=BUCKET, Key="rt/obj.bin")
    assert got["Body"].read() == data
    assert got["ContentType"] == "application/x-kv" and got["Metadata"] == {"layer": "7"}
    assert got["CacheControl"] == "no-cache" and got["ETag"] == put["ETag"]
    assert got["ChecksumCRC32"] == crc  # boto3 asks with ChecksumMode and validates it
    head = s3.head_object(Bucket=BUCKET, Key="rt/obj.bin")
    assert head["ContentLength"] == len(data) and head["ETag"] == put["ETag"]
    s3.delete_object(Bucket=BUCKET, Key="rt/obj.bin")
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=BUCKET, Key="rt/obj.bin")
    assert _code(ei.value) == "NoSuchKey"
    with pytest.raises(ClientError) as ei:
        s3.head_object(Bucket=BUCKET, Key="rt/obj.bin")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    s3.delete_object(Bucket=BUCKET, Key="rt/obj.bin")  # deleting a missing key is fine


def test_empty_object_and_unicode_key(s3: Any) -> None:
    key = "dir with space/ключ ✓+%&=.bin"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b""
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="dir with")["Contents"]]
    assert keys == [key]


def test_overwrite_replaces_bytes_and_metadata(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="ow", Body=b"one", ContentType="text/a")
    s3.put_object(Bucket=BUCKET, Key="ow", Body=b"two!", ContentType="text/b")
    g = s3.get_object(Bucket=BUCKET, Key="ow")
    assert g["Body"].read() == b"two!" and g["ContentType"] == "text/b"
    s3.put_object(Bucket=BUCKET, Key="ow", Body=b"two!", ContentType="text/c")
    assert s3.head_object(Bucket=BUCKET, Key="ow")["ContentType"] == "text/c"


def test_if_none_match_star(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="inm", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=BUCKET, Key="inm", Body=b"second", IfNoneMatch="*")
    assert _code(ei.value) == "PreconditionFailed"
    assert s3.get_object(Bucket=BUCKET, Key="inm")["Body"].read() == b"first"


def test_ranges(s3: Any) -> None:
    data = _payload(1000, 1)
    s3.put_object(Bucket=BUCKET, Key="rng", Body=data)
    for rng, lo, hi in [("bytes=0-9", 0, 10), ("bytes=990-", 990, 1000),
                        ("bytes=-25", 975, 1000), ("bytes=500-5000", 500, 1000)]:
        g = s3.get_object(Bucket=BUCKET, Key="rng", Range=rng)
        assert g["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert g["Body"].read() == data[lo:hi]
        assert g["ContentRange"] == f"bytes {lo}-{hi - 1}/1000"
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=BUCKET, Key="rng", Range="bytes=1000-")
    assert _code(ei.value) == "InvalidRange"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_conditional_get(s3: Any) -> None:
    put = s3.put_object(Bucket=BUCKET, Key="cond", Body=b"conditional")
    etag = put["ETag"]
    assert s3.get_object(Bucket=BUCKET, Key="cond", IfMatch=etag)["Body"].read() == b"conditional"
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=BUCKET, Key="cond", IfMatch='"0000"')
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=BUCKET, Key="cond", IfNoneMatch=etag)
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    last = s3.head_object(Bucket=BUCKET, Key="cond")["LastModified"]
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=BUCKET, Key="cond", IfModifiedSince=last)
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as ei:
        s3.head_object(Bucket=BUCKET, Key="cond", IfMatch='"nope"')
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


@pytest.mark.parametrize("kwargs,code", [
    ({"ChecksumCRC32": "AAAAAA=="}, "BadDigest"),
    ({"ChecksumSHA256": base64.b64encode(hashlib.sha256(b"other").digest()).decode()},
     "BadDigest"),
    ({"ContentMD5": base64.b64encode(hashlib.md5(b"other").digest()).decode()}, "BadDigest"),
    ({"ContentMD5": "not-base64!"}, "InvalidDigest"),
])
def test_bad_checksum_stores_nothing(s3: Any, kwargs: dict[str, str], code: str) -> None:
    s3.put_object(Bucket=BUCKET, Key="ck", Body=b"original")
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=BUCKET, Key="ck", Body=b"replacement", **kwargs)
    assert _code(ei.value) == code
    assert s3.get_object(Bucket=BUCKET, Key="ck")["Body"].read() == b"original"
    with pytest.raises(ClientError):
        s3.put_object(Bucket=BUCKET, Key="ck-new", Body=b"replacement", **kwargs)
    with pytest.raises(ClientError) as ei:
        s3.head_object(Bucket=BUCKET, Key="ck-new")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_good_explicit_checksums_are_kept(s3: Any) -> None:
    import crc32c

    data = b"checksummed payload"
    c32c = base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()
    md5 = hashlib.md5(data)
    put = s3.put_object(Bucket=BUCKET, Key="good", Body=data, ChecksumCRC32C=c32c,
                        ContentMD5=base64.b64encode(md5.digest()).decode())
    assert put["ETag"] == f'"{md5.hexdigest()}"'
    g = s3.get_object(Bucket=BUCKET, Key="good", ChecksumMode="ENABLED")
    assert g["Body"].read() == data and g["ChecksumCRC32C"] == c32c


def test_copy_object(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="src", Body=b"copy me", ContentType="text/x",
                  Metadata={"a": "1"})
    r = s3.copy_object(Bucket=BUCKET, Key="dst", CopySource={"Bucket": BUCKET, "Key": "src"})
    assert r["CopyObjectResult"]["ETag"]
    g = s3.get_object(Bucket=BUCKET, Key="dst")
    assert g["Body"].read() == b"copy me" and g["Metadata"] == {"a": "1"}
    s3.copy_object(Bucket=BUCKET, Key="dst", CopySource=f"{BUCKET}/src",
                   MetadataDirective="REPLACE", Metadata={"b": "2"}, ContentType="text/y")
    g = s3.get_object(Bucket=BUCKET, Key="dst")
    assert g["Metadata"] == {"b": "2"} and g["ContentType"] == "text/y"
    with pytest.raises(ClientError) as ei:
        s3.copy_object(Bucket=BUCKET, Key="dst2", CopySource=f"{BUCKET}/missing")
    assert _code(ei.value) == "NoSuchKey"
    with pytest.raises(ClientError) as ei:
        s3.copy_object(Bucket=BUCKET, Key="dst2", CopySource=f"{BUCKET}/src",
                       CopySourceIfMatch='"nope"')
    assert _code(ei.value) == "PreconditionFailed"
    big = _payload(9 * 1024 * 1024, 3)  # managed copy uses UploadPartCopy above 8 MiB
    s3.put_object(Bucket=BUCKET, Key="bigsrc", Body=big)
    s3.copy({"Bucket": BUCKET, "Key": "bigsrc"}, BUCKET, "bigdst")
    assert s3.get_object(Bucket=BUCKET, Key="bigdst")["Body"].read() == big


def test_delete_objects(s3: Any) -> None:
    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"del/{i}", Body=b"x")
    r = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": f"del/{i}"}
                                                             for i in range(3)]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["del/0", "del/1", "del/2"]
    r = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "del/3"}, {"Key": "del/4"}],
                                                 "Quiet": True})
    assert "Deleted" not in r and "Errors" not in r
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="del/")["KeyCount"] == 0
    with pytest.raises(ClientError) as ei:
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": f"k{i}"}
                                                             for i in range(1001)]})
    assert _code(ei.value) == "MalformedXML"


def test_missing_bucket(s3: Any) -> None:
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket="no-such-bucket-x", Key="k")
    assert _code(ei.value) == "NoSuchBucket"
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket="no-such-bucket-x", Key="k", Body=b"1")
    assert _code(ei.value) == "NoSuchBucket"


def test_engine_holds_what_s3_wrote(srv: LiveServer, s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="engine-view", Body=b"abc")
    assert srv.state.engine.get(BUCKET, "engine-view") == b"abc"
    assert srv.state.engine.check() == []


def test_metrics_count_s3_operations(srv: LiveServer, s3: Any) -> None:
    assert srv.state.metrics is not None  # create_app wires Metrics into the state
    s3.put_object(Bucket=BUCKET, Key="metered", Body=b"m" * 100)
    s3.get_object(Bucket=BUCKET, Key="metered")["Body"].read()
    with pytest.raises(ClientError):
        s3.get_object(Bucket=BUCKET, Key="not-metered")
    text = srv.state.metrics.render().decode()
    assert 'kvstore_ops_total{op="put",tier="-"}' in text
    assert 'kvstore_ops_total{op="get",tier="dram"}' in text
    assert 'kvstore_ops_total{op="get",tier="miss"}' in text
