"""Multipart upload through boto3: upload_file above the threshold, and the low-level calls."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from kvstore import limits
from tests.api.conftest import LiveServer, bucket_client, pseudo_random

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "mpu-b"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server()


@pytest.fixture(scope="module")
def s3(srv: LiveServer) -> Any:
    return bucket_client(srv.url, BUCKET)


def _code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def test_upload_file_and_download_file(s3: Any, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = pseudo_random(20 * MiB + 123, 1)
    src.write_bytes(data)
    cfg = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB,
                         max_concurrency=2)
    s3.upload_file(str(src), BUCKET, "big/file.bin", Config=cfg)
    head = s3.head_object(Bucket=BUCKET, Key="big/file.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")
    dst = tmp_path / "back.bin"
    s3.download_file(BUCKET, "big/file.bin", str(dst), Config=cfg)
    assert dst.read_bytes() == data
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_low_level_calls(s3: Any) -> None:
    up = s3.create_multipart_upload(Bucket=BUCKET, Key="ll", ContentType="application/x-kv",
                                    Metadata={"m": "1"})
    uid = up["UploadId"]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]] == [uid]
    parts = [pseudo_random(5 * MiB, 10), pseudo_random(5 * MiB, 11), pseudo_random(1000, 12)]
    etags = []
    for i, p in enumerate(parts, 1):
        etags.append(s3.upload_part(Bucket=BUCKET, Key="ll", UploadId=uid, PartNumber=i,
                                    Body=p)["ETag"])
    # re-uploading a part replaces it
    etags[1] = s3.upload_part(Bucket=BUCKET, Key="ll", UploadId=uid, PartNumber=2,
                              Body=parts[1])["ETag"]
    lp = s3.list_parts(Bucket=BUCKET, Key="ll", UploadId=uid)
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in lp["Parts"]] == [
        (1, 5 * MiB, etags[0]), (2, 5 * MiB, etags[1]), (3, 1000, etags[2])]
    lp = s3.list_parts(Bucket=BUCKET, Key="ll", UploadId=uid, MaxParts=2)
    assert lp["IsTruncated"] and len(lp["Parts"]) == 2
    with pytest.raises(ClientError) as ei:  # wrong ETag for a part
        s3.complete_multipart_upload(Bucket=BUCKET, Key="ll", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": '"0000"'}]})
    assert _code(ei.value) == "InvalidPart"
    with pytest.raises(ClientError) as ei:  # out of order
        s3.complete_multipart_upload(Bucket=BUCKET, Key="ll", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 2, "ETag": etags[1]}, {"PartNumber": 1, "ETag": etags[0]}]})
    assert _code(ei.value) == "InvalidPartOrder"
    done = s3.complete_multipart_upload(Bucket=BUCKET, Key="ll", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, 1)]})
    want = hashlib.md5(b"".join(bytes.fromhex(e.strip('"')) for e in etags)).hexdigest()
    assert done["ETag"] == f'"{want}-3"'
    g = s3.get_object(Bucket=BUCKET, Key="ll")
    assert g["Body"].read() == b"".join(parts)
    assert g["ContentType"] == "application/x-kv" and g["Metadata"] == {"m": "1"}
    assert g["ETag"] == done["ETag"]
    with pytest.raises(ClientError) as ei:  # the upload is gone once completed
        s3.list_parts(Bucket=BUCKET, Key="ll", UploadId=uid)
    assert _code(ei.value) == "NoSuchUpload"


def test_abort_frees_the_upload(srv: LiveServer, s3: Any) -> None:
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="ab")["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key="ab", UploadId=uid, PartNumber=1, Body=b"x" * 1000)
    s3.abort_multipart_upload(Bucket=BUCKET, Key="ab", UploadId=uid)
    with pytest.raises(ClientError) as ei:
        s3.upload_part(Bucket=BUCKET, Key="ab", UploadId=uid, PartNumber=2, Body=b"y")
    assert _code(ei.value) == "NoSuchUpload"
    with pytest.raises(ClientError) as ei:
        s3.head_object(Bucket=BUCKET, Key="ab")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_part_bounds(s3: Any) -> None:
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="pb")["UploadId"]
    for n in (0, limits.multipart_parts_max + 1):
        with pytest.raises(ClientError) as ei:
            s3.upload_part(Bucket=BUCKET, Key="pb", UploadId=uid, PartNumber=n, Body=b"x")
        assert _code(ei.value) == "InvalidArgument"
    with pytest.raises(ClientError) as ei:
        s3.upload_part(Bucket=BUCKET, Key="pb", UploadId=uid, PartNumber=1, Body=b"x",
                       ChecksumCRC32="AAAAAA==")
    assert _code(ei.value) == "BadDigest"
    with pytest.raises(ClientError) as ei:
        s3.upload_part(Bucket=BUCKET, Key="other-key", UploadId=uid, PartNumber=1, Body=b"x")
    assert _code(ei.value) == "NoSuchUpload"
    s3.abort_multipart_upload(Bucket=BUCKET, Key="pb", UploadId=uid)


def test_completed_object_is_bounded(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "block_bytes_max", 6 * MiB)
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="too-big")["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key="too-big", UploadId=uid, PartNumber=1, Body=b"a" * 5 * MiB)
    with pytest.raises(ClientError) as ei:
        s3.upload_part(Bucket=BUCKET, Key="too-big", UploadId=uid, PartNumber=2,
                       Body=b"b" * 2 * MiB)
    assert _code(ei.value) == "EntityTooLarge"
    s3.abort_multipart_upload(Bucket=BUCKET, Key="too-big", UploadId=uid)
