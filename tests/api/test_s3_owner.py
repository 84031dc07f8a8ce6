"""Bucket owners as S3 clients see them, through boto3 against a real server with tenants:
the Owner of listed objects (ListObjects v1 and versions always, v2 with fetch-owner), the
Initiator and Owner of multipart uploads, x-amz-expected-bucket-owner and
x-amz-source-expected-bucket-owner (AccessDenied on a mismatch, nothing written), and S3's
KeyTooLongError for a key past the 1024-byte limit."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvstore import limits
from kvstore.auth import Tenants
from tests.api.conftest import TENANT_DOC, LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "acme-owner"


@pytest.fixture(scope="module")
def clients(module_server: Callable[..., LiveServer]) -> tuple[Any, Any]:
    s = module_server(tenants=Tenants.from_dict(TENANT_DOC))
    acme = boto_client(s.url, "AKIAACME", "acme-secret-key")
    globex = boto_client(s.url, "AKIAGLOBEX", "globex-secret-key")
    acme.create_bucket(Bucket=BUCKET)
    acme.put_object(Bucket=BUCKET, Key="k", Body=b"owned bytes")
    return acme, globex


def _err(exc: ClientError) -> tuple[str, int]:
    return str(exc.response["Error"]["Code"]), exc.response["ResponseMetadata"]["HTTPStatusCode"]


def test_listings_name_the_owner(clients: tuple[Any, Any]) -> None:
    acme, _ = clients
    want = {"ID": "acme", "DisplayName": "acme"}
    assert acme.list_objects(Bucket=BUCKET)["Contents"][0]["Owner"] == want
    assert "Owner" not in acme.list_objects_v2(Bucket=BUCKET)["Contents"][0]
    assert acme.list_objects_v2(Bucket=BUCKET, FetchOwner=True)["Contents"][0]["Owner"] == want
    assert acme.list_object_versions(Bucket=BUCKET)["Versions"][0]["Owner"] == want
    uid = acme.create_multipart_upload(Bucket=BUCKET, Key="mp")["UploadId"]
    up = acme.list_multipart_uploads(Bucket=BUCKET)["Uploads"][0]
    assert up["Initiator"] == want and up["Owner"] == want
    parts = acme.list_parts(Bucket=BUCKET, Key="mp", UploadId=uid)
    assert parts["Initiator"] == want and parts["Owner"] == want
    acme.abort_multipart_upload(Bucket=BUCKET, Key="mp", UploadId=uid)


def test_expected_bucket_owner(clients: tuple[Any, Any]) -> None:
    acme, globex = clients
    got = acme.get_object(Bucket=BUCKET, Key="k", ExpectedBucketOwner="acme")
    assert got["Body"].read() == b"owned bytes"
    with pytest.raises(ClientError) as ei:
        acme.get_object(Bucket=BUCKET, Key="k", ExpectedBucketOwner="globex")
    assert _err(ei.value) == ("AccessDenied", 403)
    with pytest.raises(ClientError) as ei:
        acme.put_object(Bucket=BUCKET, Key="new", Body=b"x", ExpectedBucketOwner="globex")
    assert _err(ei.value) == ("AccessDenied", 403)
    with pytest.raises(ClientError) as ei:  # nothing was written
        acme.head_object(Bucket=BUCKET, Key="new")
    assert _err(ei.value)[1] == 404
    with pytest.raises(ClientError) as ei:
        acme.list_objects_v2(Bucket=BUCKET, ExpectedBucketOwner="someone")
    assert _err(ei.value) == ("AccessDenied", 403)
    # another tenant learns nothing: the same AccessDenied whatever owner it guesses
    for guess in ("acme", "globex"):
        with pytest.raises(ClientError) as ei:
            globex.get_object(Bucket=BUCKET, Key="k", ExpectedBucketOwner=guess)
        assert _err(ei.value) == ("AccessDenied", 403)


def test_expected_source_bucket_owner(clients: tuple[Any, Any]) -> None:
    acme, _ = clients
    src = {"Bucket": BUCKET, "Key": "k"}
    acme.copy_object(Bucket=BUCKET, Key="copy", CopySource=src, ExpectedSourceBucketOwner="acme",
                     ExpectedBucketOwner="acme")
    assert acme.get_object(Bucket=BUCKET, Key="copy")["Body"].read() == b"owned bytes"
    with pytest.raises(ClientError) as ei:
        acme.copy_object(Bucket=BUCKET, Key="copy2", CopySource=src,
                         ExpectedSourceBucketOwner="globex")
    assert _err(ei.value) == ("AccessDenied", 403)
    with pytest.raises(ClientError) as ei:
        acme.head_object(Bucket=BUCKET, Key="copy2")
    assert _err(ei.value)[1] == 404


def test_key_too_long(clients: tuple[Any, Any]) -> None:
    acme, _ = clients
    longest = "k" * limits.key_bytes_max
    acme.put_object(Bucket=BUCKET, Key=longest, Body=b"x")
    assert acme.get_object(Bucket=BUCKET, Key=longest)["Body"].read() == b"x"
    for key in (longest + "k", "\u00e9" * (limits.key_bytes_max // 2 + 1)):  # bytes, not chars
        with pytest.raises(ClientError) as ei:
            acme.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        assert _err(ei.value) == ("KeyTooLongError", 400)
