"""kvstore.api.s3.answer_cache: GetObject/HeadObject headers rendered once per object version,
never stale. Through boto3 against a live server (every overwrite, metadata rewrite, copy,
delete and multipart Complete changes what HEAD and GET answer at once), and the cache's bound
on its own."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvstore.api.s3.answer_cache import AnswerCache
from kvstore.engine.types import BlockMeta
from tests.api.conftest import LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "answer-cache"


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server()


@pytest.fixture(scope="module")
def s3(srv: LiveServer) -> Iterator[Any]:
    c = boto_client(srv.url)
    c.create_bucket(Bucket=BUCKET)
    yield c


def _md5(b: bytes) -> str:
    return f'"{hashlib.md5(b).hexdigest()}"'


def _both(s3: Any, key: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    h = s3.head_object(Bucket=BUCKET, Key=key)
    g = s3.get_object(Bucket=BUCKET, Key=key)
    return h, g, g["Body"].read()


def test_every_new_version_answers_its_own_headers(s3: Any) -> None:
    key = "k/versions"
    bodies = [b"one" * 100, b"two-longer" * 300, b"three" * 7]
    for i, body in enumerate(bodies):
        s3.put_object(Bucket=BUCKET, Key=key, Body=body, ContentType=f"text/v{i}",
                      Metadata={"gen": str(i)})
        for _ in range(3):  # the second and third answers come from the cache
            h, g, got = _both(s3, key)
            assert got == body
            for r in (h, g):
                assert r["ETag"] == _md5(body)
                assert r["ContentLength"] == len(body)
                assert r["ContentType"] == f"text/v{i}"
                assert r["Metadata"] == {"gen": str(i)}
            assert h["ResponseMetadata"]["RequestId"] != g["ResponseMetadata"]["RequestId"]


def test_same_bytes_new_metadata_and_copy_change_the_answer(s3: Any) -> None:
    key = "k/meta"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"same", ContentType="a/a")
    assert _both(s3, key)[0]["ContentType"] == "a/a"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"same", ContentType="b/b")
    h, g, _ = _both(s3, key)
    assert h["ContentType"] == g["ContentType"] == "b/b"
    s3.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": key},
                   MetadataDirective="REPLACE", ContentType="c/c", Metadata={"x": "y"})
    h, g, _ = _both(s3, key)
    assert h["ContentType"] == g["ContentType"] == "c/c"
    assert h["Metadata"] == g["Metadata"] == {"x": "y"}


def test_delete_then_absent_then_new(s3: Any) -> None:
    key = "k/deleted"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"first")
    _both(s3, key)
    s3.delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(ClientError) as ei:
        s3.head_object(Bucket=BUCKET, Key=key)
    assert ei.value.response["Error"]["Code"] == "404"
    with pytest.raises(ClientError):
        s3.get_object(Bucket=BUCKET, Key=key)
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"second!")
    h, g, got = _both(s3, key)
    assert got == b"second!" and h["ETag"] == g["ETag"] == _md5(b"second!")


def test_multipart_complete_over_a_cached_object(s3: Any) -> None:
    key = "k/mpu"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"small")
    _both(s3, key)
    part = os.urandom(5 * 1024 * 1024)
    up = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    e1 = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=1, Body=part)["ETag"]
    e2 = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=2, Body=b"tail")["ETag"]
    done = s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    h, g, got = _both(s3, key)
    assert got == part + b"tail"
    assert h["ETag"] == g["ETag"] == done["ETag"] and done["ETag"].endswith('-2"')
    assert h["ContentLength"] == len(part) + 4


def test_conditions_range_and_overrides_still_apply(s3: Any) -> None:
    key = "k/conds"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"0123456789")
    etag = _both(s3, key)[0]["ETag"]
    with pytest.raises(ClientError) as ei:
        s3.head_object(Bucket=BUCKET, Key=key, IfNoneMatch=etag)
    assert ei.value.response["Error"]["Code"] == "304"
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=BUCKET, Key=key, IfMatch='"0000"')
    assert ei.value.response["Error"]["Code"] == "PreconditionFailed"
    r = s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=2-4")
    assert r["Body"].read() == b"234" and r["ContentLength"] == 3
    r = s3.get_object(Bucket=BUCKET, Key=key, ResponseContentType="x/over")
    assert r["ContentType"] == "x/over"
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentType"] == "binary/octet-stream"


def _meta(key: str, seq: int, meta: bytes = b"") -> BlockMeta:
    return BlockMeta("ns", key, 4, 7, seq, 1_700_000_000.0, 0.0, meta)


def test_an_entry_matches_only_its_own_version() -> None:
    c = AnswerCache(entries_max=4)
    a = c.get("b", "k", _meta("k", 1))
    assert c.get("b", "k", _meta("k", 1)) is a  # equal fields: the same version
    b = c.get("b", "k", _meta("k", 2))  # a new write: a new seq
    assert b is not a and len(c) == 1
    assert b.headers(b"rid")[3] == (b"x-amz-request-id", b"rid")
    assert (b"content-length", b"4") in b.tail


def test_the_cache_is_bounded_oldest_first() -> None:
    c = AnswerCache(entries_max=3)
    for i in range(10):
        c.get("b", f"k{i}", _meta(f"k{i}", i))
        assert len(c) <= 3
    first = c.get("b", "k9", _meta("k9", 9))
    assert c.get("b", "k9", _meta("k9", 9)) is first
    c.forget("b", "k9")
    assert len(c) == 2
    with pytest.raises(ValueError):
        AnswerCache(entries_max=0)
