"""Bucket operations and listings through boto3 against a live server."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.conftest import LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.fixture(scope="module")
def s3(module_server: Callable[..., LiveServer]) -> Any:
    return boto_client(module_server().url)


def _code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def test_bucket_lifecycle(s3: Any) -> None:
    s3.create_bucket(Bucket="life-b")
    assert "life-b" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket="life-b")
    s3.create_bucket(Bucket="life-b")  # us-east-1: creating a bucket you own again is a 200
    s3.put_object(Bucket="life-b", Key="k", Body=b"v")
    with pytest.raises(ClientError) as ei:
        s3.delete_bucket(Bucket="life-b")
    assert _code(ei.value) == "BucketNotEmpty"
    s3.delete_object(Bucket="life-b", Key="k")
    s3.delete_bucket(Bucket="life-b")
    with pytest.raises(ClientError) as ei:
        s3.head_bucket(Bucket="life-b")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as ei:
        s3.delete_bucket(Bucket="life-b")
    assert _code(ei.value) == "NoSuchBucket"


def test_create_bucket_you_own_is_200_in_us_east_1_and_409_elsewhere(
        module_server: Callable[..., LiveServer]) -> None:
    """AWS: CreateBucket of a bucket the caller owns answers 200 in us-east-1 (and keeps its
    objects), 409 BucketAlreadyOwnedByYou in every other region; someone else's is always 409
    BucketAlreadyExists (tests/api/test_s3_auth.py)."""
    east = boto_client(module_server(region="us-east-1").url)
    resp = east.create_bucket(Bucket="again-b")
    east.put_object(Bucket="again-b", Key="k", Body=b"kept")
    again = east.create_bucket(Bucket="again-b")
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert again["Location"] == resp["Location"] == "/again-b"
    assert east.get_object(Bucket="again-b", Key="k")["Body"].read() == b"kept"
    west = boto_client(module_server(region="eu-west-1").url)
    west.create_bucket(Bucket="again-b")
    with pytest.raises(ClientError) as ei:
        west.create_bucket(Bucket="again-b")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert _code(ei.value) == "BucketAlreadyOwnedByYou"
    assert west.get_bucket_location(Bucket="again-b")["LocationConstraint"] == "eu-west-1"


def test_invalid_bucket_name(s3: Any) -> None:
    with pytest.raises(ClientError) as ei:
        s3.create_bucket(Bucket="Bad_Name")
    assert _code(ei.value) == "InvalidBucketName"


def test_bucket_location_and_versioning(s3: Any) -> None:
    s3.create_bucket(Bucket="loc-b")
    assert s3.get_bucket_location(Bucket="loc-b")["LocationConstraint"] is None
    assert "Status" not in s3.get_bucket_versioning(Bucket="loc-b")


def test_list_objects_v2_prefix_delimiter_pages(s3: Any) -> None:
    s3.create_bucket(Bucket="list-b")
    keys = [f"logs/2024/{i:02d}" for i in range(7)] + ["logs/readme", "top1", "top2",
                                                        "x/y/z", "x/w"]
    for k in keys:
        s3.put_object(Bucket="list-b", Key=k, Body=k.encode())
    r = s3.list_objects_v2(Bucket="list-b", Delimiter="/")
    assert [c["Prefix"] for c in r["CommonPrefixes"]] == ["logs/", "x/"]
    assert [o["Key"] for o in r["Contents"]] == ["top1", "top2"]
    assert r["KeyCount"] == 4 and not r["IsTruncated"]
    r = s3.list_objects_v2(Bucket="list-b", Prefix="logs/", Delimiter="/")
    assert [c["Prefix"] for c in r["CommonPrefixes"]] == ["logs/2024/"]
    assert [o["Key"] for o in r["Contents"]] == ["logs/readme"]
    got, token, pages = [], None, 0
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = s3.list_objects_v2(Bucket="list-b", MaxKeys=3, **kw)
        got += [o["Key"] for o in r["Contents"]]
        pages += 1
        assert r["KeyCount"] <= 3
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    assert got == sorted(keys) and pages == 4
    r = s3.list_objects_v2(Bucket="list-b", StartAfter="top1")
    assert [o["Key"] for o in r["Contents"]] == ["top2", "x/w", "x/y/z"]
    o = s3.list_objects_v2(Bucket="list-b", Prefix="top1")["Contents"][0]
    assert o["Size"] == 4 and o["ETag"].startswith('"') and o["LastModified"]
    paginator = s3.get_paginator("list_objects_v2")
    assert sum(p["KeyCount"] for p in paginator.paginate(Bucket="list-b",
                                                         PaginationConfig={"PageSize": 2})) == 12


def test_list_objects_v1_and_versions(s3: Any) -> None:
    s3.create_bucket(Bucket="v1-b")
    for k in ["a/1", "a/2", "b", "c"]:
        s3.put_object(Bucket="v1-b", Key=k, Body=b"1")
    pages = list(s3.get_paginator("list_objects").paginate(
        Bucket="v1-b", Delimiter="/", PaginationConfig={"PageSize": 1}))
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    prefixes = [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])]
    assert keys == ["b", "c"] and prefixes == ["a/"]
    r = s3.list_object_versions(Bucket="v1-b")
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in r["Versions"]] == [
        ("a/1", "null", True), ("a/2", "null", True), ("b", "null", True), ("c", "null", True)]
    pages = list(s3.get_paginator("list_object_versions").paginate(
        Bucket="v1-b", PaginationConfig={"PageSize": 3}))
    assert sum(len(p.get("Versions", [])) for p in pages) == 4


def test_bucket_subresources_not_implemented(s3: Any) -> None:
    s3.create_bucket(Bucket="ni-b")
    for call in (lambda: s3.put_bucket_ownership_controls(Bucket="ni-b", OwnershipControls={
                     "Rules": [{"ObjectOwnership": "ObjectWriter"}]}),
                 lambda: s3.get_bucket_policy(Bucket="ni-b"),
                 lambda: s3.get_bucket_lifecycle_configuration(Bucket="ni-b"),
                 lambda: s3.put_bucket_versioning(
                     Bucket="ni-b", VersioningConfiguration={"Status": "Enabled"}),
                 lambda: s3.put_bucket_tagging(
                     Bucket="ni-b", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})):
        with pytest.raises(ClientError) as ei:
            call()
        assert _code(ei.value) == "NotImplemented"
        assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501


def test_list_buckets_pages_by_max_buckets_prefix_and_token(s3: Any) -> None:
    """ListBuckets' MaxBuckets, ContinuationToken, Prefix and BucketRegion as AWS's (ceph/s3-tests
    test_list_buckets_paginated): a token only while more remain, the paginator walks them all."""
    names = [f"pgb-{i}" for i in range(5)]
    for n in names:
        s3.create_bucket(Bucket=n)
    s3.create_bucket(Bucket="pgc-other")
    seen: list[str] = []
    token = None
    for _ in range(10):
        kw = {"ContinuationToken": token} if token else {}
        r = s3.list_buckets(MaxBuckets=2, Prefix="pgb-", **kw)
        assert r["Prefix"] == "pgb-"
        seen += [b["Name"] for b in r["Buckets"]]
        token = r.get("ContinuationToken")
        if token is None:
            break
        assert len(r["Buckets"]) == 2
    assert seen == names
    pages = s3.get_paginator("list_buckets").paginate(Prefix="pg", PaginationConfig={
        "PageSize": 4})
    assert [b["Name"] for p in pages for b in p["Buckets"]] == names + ["pgc-other"]
    r = s3.list_buckets(MaxBuckets=6, Prefix="pg")
    assert "ContinuationToken" not in r and len(r["Buckets"]) == 6
    assert s3.list_buckets(Prefix="pgb-", BucketRegion="eu-west-1")["Buckets"] == []
    assert len(s3.list_buckets(Prefix="pgb-", BucketRegion="us-east-1")["Buckets"]) == 5
    # values boto3 would refuse before sending, sent as they are
    raw = boto_client(s3.meta.endpoint_url, parameter_validation=False)
    for bad in [0, 10001, "x", -1, ""]:
        with pytest.raises(ClientError) as ei:
            raw.list_buckets(MaxBuckets=bad)
        assert _code(ei.value) == "InvalidArgument", bad
    with pytest.raises(ClientError) as ei:
        s3.list_buckets(ContinuationToken="!!not-base64!!")
    assert _code(ei.value) == "InvalidArgument"
    for n in names + ["pgc-other"]:
        s3.delete_bucket(Bucket=n)
