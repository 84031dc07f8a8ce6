"""Conditional writes through boto3 against a real server: If-Match on PutObject and
CompleteMultipartUpload (412 on another ETag, 404 when the object is absent), If-None-Match: *
on both, and concurrent writers holding the same ETag, of whom exactly one wins."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvstore import limits
from tests.api.conftest import LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "cond-b"
MIN = limits.multipart_part_bytes_min


def _status(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


@pytest.fixture(scope="module")
def s3(module_server: Callable[..., LiveServer]) -> Any:
    c = boto_client(module_server().url)
    c.create_bucket(Bucket=BUCKET)
    return c


def test_put_if_match(s3: Any) -> None:
    etag = s3.put_object(Bucket=BUCKET, Key="p", Body=b"v1")["ETag"]
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=BUCKET, Key="p", Body=b"v2", IfMatch='"0123"')
    assert _status(ei.value) == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=BUCKET, Key="p")["Body"].read() == b"v1"
    new = s3.put_object(Bucket=BUCKET, Key="p", Body=b"v2", IfMatch=etag)["ETag"]
    assert new.strip('"') == hashlib.md5(b"v2").hexdigest()
    with pytest.raises(ClientError) as ei:  # the ETag it held is gone
        s3.put_object(Bucket=BUCKET, Key="p", Body=b"v3", IfMatch=etag)
    assert _status(ei.value) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=BUCKET, Key="absent", Body=b"x", IfMatch=etag)
    assert _status(ei.value) == (404, "NoSuchKey")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="absent")["KeyCount"] == 0


def _mpu(s3: Any, key: str, data: bytes) -> tuple[str, dict[str, Any]]:
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    e = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=1, Body=data)["ETag"]
    return uid, {"Parts": [{"PartNumber": 1, "ETag": e}]}


def test_complete_if_match(s3: Any) -> None:
    etag = s3.put_object(Bucket=BUCKET, Key="m", Body=b"before")["ETag"]
    uid, parts = _mpu(s3, "m", b"after" * 10)
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="m", UploadId=uid,
                                     MultipartUpload=parts, IfMatch='"0123"')
    assert _status(ei.value) == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=BUCKET, Key="m")["Body"].read() == b"before"
    s3.complete_multipart_upload(Bucket=BUCKET, Key="m", UploadId=uid, MultipartUpload=parts,
                                 IfMatch=etag)
    assert s3.get_object(Bucket=BUCKET, Key="m")["Body"].read() == b"after" * 10


def test_complete_if_match_of_an_absent_object_is_404(s3: Any) -> None:
    uid, parts = _mpu(s3, "m-absent", b"data")
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="m-absent", UploadId=uid,
                                     MultipartUpload=parts, IfMatch='"0123"')
    assert _status(ei.value) == (404, "NoSuchKey")
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key="m-absent")
    s3.abort_multipart_upload(Bucket=BUCKET, Key="m-absent", UploadId=uid)


def test_complete_if_none_match_star(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key="n", Body=b"exists")
    uid, parts = _mpu(s3, "n", b"new bytes")
    with pytest.raises(ClientError) as ei:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="n", UploadId=uid,
                                     MultipartUpload=parts, IfNoneMatch="*")
    assert _status(ei.value) == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=BUCKET, Key="n")["Body"].read() == b"exists"
    uid2, parts2 = _mpu(s3, "n-new", b"fresh")
    s3.complete_multipart_upload(Bucket=BUCKET, Key="n-new", UploadId=uid2,
                                 MultipartUpload=parts2, IfNoneMatch="*")
    assert s3.get_object(Bucket=BUCKET, Key="n-new")["Body"].read() == b"fresh"


def test_writers_holding_the_same_etag_one_wins(s3: Any) -> None:
    """Each writer read the same ETag and writes its own bytes If-Match it: exactly one
    succeeds, the others answer 412, and the object holds the winner's bytes."""
    etag = s3.put_object(Bucket=BUCKET, Key="race", Body=b"base")["ETag"]
    writers = 8
    bodies = [bytes([i]) * (256 * 1024) for i in range(writers)]
    outcomes: list[str | int] = [""] * writers
    gate = threading.Barrier(writers, timeout=30)
    clients = [boto_client(s3.meta.endpoint_url) for _ in range(writers)]

    def write(i: int) -> None:
        gate.wait()
        try:
            clients[i].put_object(Bucket=BUCKET, Key="race", Body=bodies[i], IfMatch=etag)
            outcomes[i] = 200
        except ClientError as exc:
            outcomes[i] = _status(exc)[0]

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes, key=str) == [200] + [412] * (writers - 1)
    winner = outcomes.index(200)
    assert s3.get_object(Bucket=BUCKET, Key="race")["Body"].read() == bodies[winner]
