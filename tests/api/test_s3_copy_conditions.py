"""The x-amz-copy-source-if-* preconditions of CopyObject and UploadPartCopy, through boto3
against a real server: each header alone, holding and failing, and the two combinations S3
documents; a failure is 412 PreconditionFailed (never 304) and copies nothing."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.conftest import LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "copy-cond-b"
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def s3(module_server: Callable[..., LiveServer]) -> Any:
    c = boto_client(module_server().url)
    c.create_bucket(Bucket=BUCKET)
    c.put_object(Bucket=BUCKET, Key="src", Body=b"source bytes")
    return c


def _cases(etag: str) -> list[tuple[dict[str, Any], bool]]:
    now = datetime.datetime.now(datetime.UTC)
    return [
        ({"CopySourceIfMatch": etag}, True),
        ({"CopySourceIfMatch": '"0123"'}, False),
        ({"CopySourceIfNoneMatch": '"0123"'}, True),
        ({"CopySourceIfNoneMatch": etag}, False),  # 412 for a copy, where a GET says 304
        ({"CopySourceIfModifiedSince": now - DAY}, True),
        ({"CopySourceIfModifiedSince": now + DAY}, False),
        ({"CopySourceIfUnmodifiedSince": now + DAY}, True),
        ({"CopySourceIfUnmodifiedSince": now - DAY}, False),
        # S3: If-Match holds and If-Unmodified-Since fails: the copy happens
        ({"CopySourceIfMatch": etag, "CopySourceIfUnmodifiedSince": now - DAY}, True),
        # S3: If-None-Match fails and If-Modified-Since holds: 412
        ({"CopySourceIfNoneMatch": etag, "CopySourceIfModifiedSince": now - DAY}, False),
    ]


def _code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def test_copy_object_conditions(s3: Any) -> None:
    etag = s3.head_object(Bucket=BUCKET, Key="src")["ETag"]
    for i, (conds, ok) in enumerate(_cases(etag)):
        dst = f"dst-{i}"
        if ok:
            s3.copy_object(Bucket=BUCKET, Key=dst, CopySource=f"{BUCKET}/src", **conds)
            assert s3.get_object(Bucket=BUCKET, Key=dst)["Body"].read() == b"source bytes"
            continue
        with pytest.raises(ClientError) as ei:
            s3.copy_object(Bucket=BUCKET, Key=dst, CopySource=f"{BUCKET}/src", **conds)
        assert (_code(ei.value), ei.value.response["ResponseMetadata"]["HTTPStatusCode"]) == (
            "PreconditionFailed", 412), conds
        with pytest.raises(ClientError) as ei:  # nothing was copied
            s3.head_object(Bucket=BUCKET, Key=dst)
        assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_upload_part_copy_conditions(s3: Any) -> None:
    etag = s3.head_object(Bucket=BUCKET, Key="src")["ETag"]
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="mp")["UploadId"]
    for n, (conds, ok) in enumerate(_cases(etag), 1):
        call = {"Bucket": BUCKET, "Key": "mp", "UploadId": uid, "PartNumber": n,
                "CopySource": f"{BUCKET}/src", **conds}
        if ok:
            assert s3.upload_part_copy(**call)["CopyPartResult"]["ETag"]
            continue
        with pytest.raises(ClientError) as ei:
            s3.upload_part_copy(**call)
        assert (_code(ei.value), ei.value.response["ResponseMetadata"]["HTTPStatusCode"]) == (
            "PreconditionFailed", 412), conds
    listed = [p["PartNumber"] for p in s3.list_parts(Bucket=BUCKET, Key="mp", UploadId=uid)[
        "Parts"]]
    assert listed == [n for n, (_c, ok) in enumerate(_cases(etag), 1) if ok]
    s3.abort_multipart_upload(Bucket=BUCKET, Key="mp", UploadId=uid)
