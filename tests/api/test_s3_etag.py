"""S3 ETags as S3 computes them, through boto3 against a real server: the MD5 of the bytes for
PutObject and CopyObject, ``md5(part MD5s)-N`` for a multipart upload; kept in the record, so
they survive a restart; objects stored with the former xxh3 ETag still answer it; ``--etag
xxh3`` (opt-in) gives the block's xxh3."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash
from botocore.exceptions import ClientError

from kvstore import limits
from kvstore.config import ConfigError, from_argv
from tests.api.conftest import LiveServer, boto_client, pseudo_random, start_server

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "etag-b"
MiB = limits.MiB


def _etag(resp: dict[str, Any]) -> str:
    return str(resp["ETag"]).strip('"')


@pytest.fixture(scope="module")
def s3(module_server: Callable[..., LiveServer]) -> Any:
    c = boto_client(module_server().url)
    c.create_bucket(Bucket=BUCKET)
    return c


@pytest.mark.parametrize("size", [0, 1, 2 * MiB + 3])
def test_put_etag_is_the_md5_of_the_body(s3: Any, size: int) -> None:
    data = pseudo_random(size, size)
    put = s3.put_object(Bucket=BUCKET, Key=f"md5/{size}", Body=data)
    md5 = hashlib.md5(data).hexdigest()
    assert _etag(put) == md5
    assert _etag(s3.head_object(Bucket=BUCKET, Key=f"md5/{size}")) == md5
    got = s3.get_object(Bucket=BUCKET, Key=f"md5/{size}")
    assert _etag(got) == md5 and got["Body"].read() == data
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"md5/{size}")["Contents"]
    assert [o["ETag"].strip('"') for o in listed] == [md5]


def test_multipart_etag_is_md5_of_part_md5s(s3: Any) -> None:
    parts = [pseudo_random(5 * MiB, 1), pseudo_random(5 * MiB + 7, 2), pseudo_random(1234, 3)]
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="mp")["UploadId"]
    listed = []
    for i, p in enumerate(parts, 1):
        e = s3.upload_part(Bucket=BUCKET, Key="mp", UploadId=uid, PartNumber=i, Body=p)["ETag"]
        assert e.strip('"') == hashlib.md5(p).hexdigest()
        listed.append({"PartNumber": i, "ETag": e})
    done = s3.complete_multipart_upload(Bucket=BUCKET, Key="mp", UploadId=uid,
                                        MultipartUpload={"Parts": listed})
    want = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    assert _etag(done) == want
    assert _etag(s3.head_object(Bucket=BUCKET, Key="mp")) == want
    # a copy is one new object: the MD5 of its bytes, not the source's multipart ETag
    copy = s3.copy_object(Bucket=BUCKET, Key="mp-copy", CopySource=f"{BUCKET}/mp")
    assert _etag(copy["CopyObjectResult"]) == hashlib.md5(b"".join(parts)).hexdigest()
    assert _etag(s3.head_object(Bucket=BUCKET, Key="mp-copy")) == \
        hashlib.md5(b"".join(parts)).hexdigest()


def test_upload_part_copy_etag_is_the_md5_of_the_range(s3: Any) -> None:
    src = pseudo_random(6 * MiB, 9)
    s3.put_object(Bucket=BUCKET, Key="pc-src", Body=src)
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="pc")["UploadId"]
    r = s3.upload_part_copy(Bucket=BUCKET, Key="pc", UploadId=uid, PartNumber=1,
                            CopySource=f"{BUCKET}/pc-src", CopySourceRange="bytes=0-99")
    assert _etag(r["CopyPartResult"]) == hashlib.md5(src[:100]).hexdigest()
    s3.abort_multipart_upload(Bucket=BUCKET, Key="pc", UploadId=uid)


def test_copy_object_etag_is_the_md5(s3: Any) -> None:
    data = b"copied bytes"
    s3.put_object(Bucket=BUCKET, Key="c-src", Body=data)
    r = s3.copy_object(Bucket=BUCKET, Key="c-dst", CopySource=f"{BUCKET}/c-src",
                       MetadataDirective="REPLACE", Metadata={"a": "b"})
    assert _etag(r["CopyObjectResult"]) == hashlib.md5(data).hexdigest()


def test_etags_survive_restart_and_old_xxh3_etags_are_still_served(tmp_path: Path) -> None:
    """Written under --etag xxh3 (as every object was before MD5 ETags), an object keeps its
    xxh3 ETag after a restart in the default mode, and conditional requests use it; an object
    written with an MD5 ETag keeps that one."""
    old_bytes, new_bytes = b"written before MD5 ETags", b"written with an MD5 ETag"
    srv = start_server(tmp_path / "data", etag="xxh3")
    try:
        c = boto_client(srv.url)
        c.create_bucket(Bucket=BUCKET)
        put = c.put_object(Bucket=BUCKET, Key="old", Body=old_bytes)
        assert _etag(put) == f"{xxhash.xxh3_64_intdigest(old_bytes):016x}"
    finally:
        srv.stop()
    srv = start_server(tmp_path / "data")
    try:
        c = boto_client(srv.url)
        c.put_object(Bucket=BUCKET, Key="new", Body=new_bytes)
    finally:
        srv.stop()
    srv = start_server(tmp_path / "data")  # a second restart, in the default (md5) mode
    try:
        c = boto_client(srv.url)
        old = _etag(c.head_object(Bucket=BUCKET, Key="old"))
        assert old == f"{xxhash.xxh3_64_intdigest(old_bytes):016x}"
        assert c.get_object(Bucket=BUCKET, Key="old", IfMatch=f'"{old}"')["Body"].read() == \
            old_bytes
        assert _etag(c.head_object(Bucket=BUCKET, Key="new")) == \
            hashlib.md5(new_bytes).hexdigest()
        with pytest.raises(ClientError) as ei:
            c.head_object(Bucket=BUCKET, Key="new", IfNoneMatch=hashlib.md5(new_bytes).hexdigest())
        assert ei.value.response["Error"]["Code"] in ("304", "NotModified")
    finally:
        srv.stop()


def test_xxh3_mode_answers_the_block_checksum(live_server: Callable[..., LiveServer]) -> None:
    c = boto_client(live_server(etag="xxh3").url)
    c.create_bucket(Bucket=BUCKET)
    data = pseudo_random(MiB, 5)
    put = c.put_object(Bucket=BUCKET, Key="x", Body=data)
    assert _etag(put) == f"{xxhash.xxh3_64_intdigest(data):016x}"
    assert _etag(c.head_object(Bucket=BUCKET, Key="x")) == _etag(put)


def test_etag_mode_is_configured_once_at_the_edge() -> None:
    assert from_argv([], {}).etag == "md5"
    assert from_argv(["--etag", "xxh3"], {}).etag == "xxh3"
    assert from_argv([], {"KVSTORE_ETAG": "XXH3"}).etag == "xxh3"
    with pytest.raises(ConfigError, match="etag must be one of md5, xxh3"):
        from_argv(["--etag", "sha1"], {})
