"""GetObjectAttributes and each part's own checksum, through boto3 against a real server: a
plain object (no ObjectParts), a multipart object with per-part checksums (paged by MaxParts
and PartNumberMarker), one without, the errors, and a part GET answering that part's
checksum (which botocore then validates against the part's bytes)."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvstore import limits
from tests.api.conftest import LiveServer, boto_client, bucket_client, pseudo_random, upload_parts

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "attrs-b"
MIN = limits.multipart_part_bytes_min
ALL = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _sha(b: bytes) -> str:
    return _b64(hashlib.sha256(b).digest())


@pytest.fixture(scope="module")
def s3(module_server: Callable[..., LiveServer]) -> Any:
    return bucket_client(module_server().url, BUCKET)


def _multipart(s3: Any, key: str, parts: list[bytes], **create: Any) -> dict[str, Any]:
    uid, listed = upload_parts(s3, BUCKET, key, parts, **create)
    return s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid,
                                        MultipartUpload={"Parts": listed})


def test_a_plain_object(s3: Any) -> None:
    put = s3.put_object(Bucket=BUCKET, Key="plain", Body=b"foo")  # boto3 adds a CRC32
    r = s3.get_object_attributes(Bucket=BUCKET, Key="plain", ObjectAttributes=ALL)
    assert r["ETag"] == put["ETag"].strip('"') == hashlib.md5(b"foo").hexdigest()
    assert (r["ObjectSize"], r["StorageClass"]) == (3, "STANDARD")
    assert r["Checksum"] == {"ChecksumCRC32": _b64(zlib.crc32(b"foo").to_bytes(4, "big")),
                             "ChecksumType": "FULL_OBJECT"}
    assert "ObjectParts" not in r and "VersionId" not in r and "DeleteMarker" not in r
    assert r["LastModified"] == s3.head_object(Bucket=BUCKET, Key="plain")["LastModified"]
    only = s3.get_object_attributes(Bucket=BUCKET, Key="plain", ObjectAttributes=["ObjectSize"])
    assert only["ObjectSize"] == 3 and "ETag" not in only and "Checksum" not in only


def test_a_multipart_object_with_part_checksums(s3: Any) -> None:
    parts = [pseudo_random(MIN, 1), pseudo_random(MIN, 2), pseudo_random(2000, 3)]
    done = _multipart(s3, "mp", parts, ChecksumAlgorithm="SHA256")
    r = s3.get_object_attributes(Bucket=BUCKET, Key="mp", ObjectAttributes=ALL)
    assert r["ETag"] == done["ETag"].strip('"') and r["ETag"].endswith("-3")
    assert r["ObjectSize"] == sum(len(p) for p in parts)
    assert r["Checksum"] == {"ChecksumSHA256": done["ChecksumSHA256"],
                             "ChecksumType": "COMPOSITE"}
    op = r["ObjectParts"]
    assert (op["TotalPartsCount"], op["PartNumberMarker"], op["IsTruncated"]) == (3, 0, False)
    assert op["Parts"] == [{"PartNumber": i, "Size": len(p), "ChecksumSHA256": _sha(p)}
                           for i, p in enumerate(parts, 1)]
    page = s3.get_object_attributes(Bucket=BUCKET, Key="mp", ObjectAttributes=["ObjectParts"],
                                    MaxParts=1, PartNumberMarker=1)["ObjectParts"]
    assert (page["MaxParts"], page["IsTruncated"], page["NextPartNumberMarker"]) == (1, True, 2)
    assert [p["PartNumber"] for p in page["Parts"]] == [2]
    last = s3.get_object_attributes(Bucket=BUCKET, Key="mp", ObjectAttributes=["ObjectParts"],
                                    PartNumberMarker=2)["ObjectParts"]
    assert [p["PartNumber"] for p in last["Parts"]] == [3] and not last["IsTruncated"]
    # a part GET answers that part's own checksum (botocore validates the bytes against it)
    for i, p in enumerate(parts, 1):
        g = s3.get_object(Bucket=BUCKET, Key="mp", PartNumber=i, ChecksumMode="ENABLED")
        assert (g["ChecksumSHA256"], g["ChecksumType"]) == (_sha(p), "COMPOSITE")
        assert g["Body"].read() == p
        h = s3.head_object(Bucket=BUCKET, Key="mp", PartNumber=i, ChecksumMode="ENABLED")
        assert h["ChecksumSHA256"] == _sha(p)
    whole = s3.head_object(Bucket=BUCKET, Key="mp", ChecksumMode="ENABLED")
    assert whole["ChecksumSHA256"] == done["ChecksumSHA256"]


def test_a_multipart_object_without_checksums(s3: Any) -> None:
    raw = boto_client(s3.meta.endpoint_url, request_checksum_calculation="when_required")
    parts = [pseudo_random(MIN, 4), pseudo_random(10, 5)]
    _multipart(raw, "mp-plain", parts)
    r = raw.get_object_attributes(Bucket=BUCKET, Key="mp-plain", ObjectAttributes=ALL)
    assert "Checksum" not in r
    assert r["ObjectParts"]["Parts"] == [{"PartNumber": 1, "Size": MIN},
                                         {"PartNumber": 2, "Size": 10}]
    g = raw.get_object(Bucket=BUCKET, Key="mp-plain", PartNumber=2, ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in g and g["Body"].read() == parts[1]


def test_part_checksums_give_way_to_large_metadata(s3: Any) -> None:
    """The parts' checksums are kept only while the record's meta has room; the upload still
    completes, and its object checksum is kept."""
    big = {"m": "v" * (limits.s3_user_metadata_bytes_max - 16)}
    parts = [pseudo_random(MIN, 6), pseudo_random(MIN, 7), pseudo_random(100, 8)]
    done = _multipart(s3, "mp-meta", parts, ChecksumAlgorithm="SHA256", Metadata=big)
    r = s3.get_object_attributes(Bucket=BUCKET, Key="mp-meta", ObjectAttributes=ALL)
    assert r["Checksum"]["ChecksumSHA256"] == done["ChecksumSHA256"]
    assert [set(p) for p in r["ObjectParts"]["Parts"]] == [{"PartNumber", "Size"}] * 3
    assert s3.head_object(Bucket=BUCKET, Key="mp-meta")["Metadata"] == big


def test_errors(s3: Any) -> None:
    raw = boto_client(s3.meta.endpoint_url, parameter_validation=False)
    for attrs in [["Bogus"], ["ETag", "Owner"]]:
        with pytest.raises(ClientError) as ei:
            raw.get_object_attributes(Bucket=BUCKET, Key="plain", ObjectAttributes=attrs)
        assert ei.value.response["Error"]["Code"] == "InvalidArgument", attrs
    with pytest.raises(ClientError) as ei:  # the header left out altogether
        raw.get_object_attributes(Bucket=BUCKET, Key="plain", ObjectAttributes=[])
    assert ei.value.response["Error"]["Code"] == "InvalidArgument"
    with pytest.raises(ClientError) as ei:
        raw.get_object_attributes(Bucket=BUCKET, Key="plain", ObjectAttributes=["ETag"],
                                  MaxParts="many")
    assert ei.value.response["Error"]["Code"] == "InvalidArgument"
    with pytest.raises(ClientError) as ei:
        s3.get_object_attributes(Bucket=BUCKET, Key="absent", ObjectAttributes=["ETag"])
    assert ei.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as ei:
        s3.get_object_attributes(Bucket=BUCKET, Key="plain", ObjectAttributes=["ETag"],
                                 VersionId="v2")
    assert ei.value.response["Error"]["Code"] == "InvalidArgument"
