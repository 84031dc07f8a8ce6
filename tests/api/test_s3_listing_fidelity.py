"""ListObjects corners as AWS answers them, through boto3 against a live server: max-keys=0,
an empty continuation token, and encoding-type=url on every field S3 encodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

from tests.api.conftest import LiveServer, boto_client

BUCKET = "fidelity-b"
# Keys XML 1.0 cannot carry raw (a control character) and keys URL encoding must not confuse
# (space, plus, percent, non-ASCII).
KEYS = ["a b/one", "a b/two+three", "c%d", "d\u00e9j\u00e0/x", "e\x01f", "g+h/i", "plain"]


@pytest.fixture(scope="module")
def s3(module_server: Callable[..., LiveServer]) -> Any:
    client = boto_client(module_server().url)
    client.create_bucket(Bucket=BUCKET)
    for k in KEYS:
        client.put_object(Bucket=BUCKET, Key=k, Body=b"x")
    return client


def _u(s: str) -> str:
    return quote(s, safe="/~-_.")


def test_max_keys_zero_is_an_empty_page_not_truncated(s3: Any) -> None:
    r = s3.list_objects_v2(Bucket=BUCKET, MaxKeys=0)
    assert r["KeyCount"] == 0 and r["MaxKeys"] == 0
    assert r["IsTruncated"] is False
    assert "Contents" not in r and "NextContinuationToken" not in r
    r1 = s3.list_objects(Bucket=BUCKET, MaxKeys=0)
    assert r1["IsTruncated"] is False and "Contents" not in r1 and "NextMarker" not in r1
    rv = s3.list_object_versions(Bucket=BUCKET, MaxKeys=0)
    assert rv["IsTruncated"] is False and "Versions" not in rv


def test_empty_continuation_token_is_echoed(s3: Any) -> None:
    r = s3.list_objects_v2(Bucket=BUCKET, ContinuationToken="")
    assert r["ContinuationToken"] == ""
    assert sorted(c["Key"] for c in r["Contents"]) == sorted(KEYS)


def test_boto3_round_trips_every_key_through_url_encoding(s3: Any) -> None:
    """boto3 asks for encoding-type=url on its own and decodes the answer: what it shows must be
    the keys exactly as stored, paged, with delimiters and prefixes holding special characters."""
    seen: list[str] = []
    prefixes: list[str] = []
    token: dict[str, str] = {}
    for _ in range(len(KEYS) + 2):
        r = s3.list_objects_v2(Bucket=BUCKET, MaxKeys=2, Delimiter="/", **token)
        seen += [c["Key"] for c in r.get("Contents", [])]
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if not r["IsTruncated"]:
            break
        token = {"ContinuationToken": r["NextContinuationToken"]}
    assert seen == ["c%d", "e\x01f", "plain"]
    assert prefixes == ["a b/", "d\u00e9j\u00e0/", "g+h/"]
    r = s3.list_objects_v2(Bucket=BUCKET, Prefix="a b/", StartAfter="a b/one")
    assert [c["Key"] for c in r["Contents"]] == ["a b/two+three"]
    assert r["Prefix"] == "a b/" and r["StartAfter"] == "a b/one"
    r1 = s3.list_objects(Bucket=BUCKET, Delimiter="+", Prefix="g", Marker="c%d")
    assert r1["Delimiter"] == "+" and r1["Marker"] == "c%d"
    assert [p["Prefix"] for p in r1["CommonPrefixes"]] == ["g+"]


def test_explicit_url_encoding_shows_the_encoded_fields(s3: Any) -> None:
    """With EncodingType given by the caller, boto3 leaves the answer as sent: every field S3
    encodes is percent-encoded, and the EncodingType element is there."""
    r = s3.list_objects_v2(Bucket=BUCKET, EncodingType="url", Prefix="a b/", Delimiter="+",
                           StartAfter="a b/one")
    assert r["EncodingType"] == "url"
    assert r["Prefix"] == _u("a b/") and r["Delimiter"] == _u("+")
    assert r["StartAfter"] == _u("a b/one")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == [_u("a b/two+")]
    r = s3.list_objects_v2(Bucket=BUCKET, EncodingType="url")
    assert sorted(c["Key"] for c in r["Contents"]) == sorted(_u(k) for k in KEYS)
    r1 = s3.list_objects(Bucket=BUCKET, EncodingType="url", MaxKeys=1, Marker="a b/one")
    assert r1["EncodingType"] == "url" and r1["Marker"] == _u("a b/one")
    assert [c["Key"] for c in r1["Contents"]] == [_u("a b/two+three")]
    assert "NextMarker" not in r1  # AWS sends it only with a delimiter
    r1 = s3.list_objects(Bucket=BUCKET, EncodingType="url", MaxKeys=1, Marker="a b/one",
                         Delimiter="+")
    assert [p["Prefix"] for p in r1["CommonPrefixes"]] == [_u("a b/two+")]
    assert r1["NextMarker"] == _u("a b/two+")  # the common prefix, as S3 answers it
    r1 = s3.list_objects(Bucket=BUCKET, Prefix="a b/\n")  # boto3 asks for url encoding
    assert r1["Prefix"] == "a b/\n"  # v1's Prefix is not encoded (nor decoded by boto3)
    rv = s3.list_object_versions(Bucket=BUCKET, EncodingType="url", MaxKeys=1,
                                 KeyMarker="a b/one")
    assert rv["EncodingType"] == "url" and rv["KeyMarker"] == _u("a b/one")
    assert [v["Key"] for v in rv["Versions"]] == [_u("a b/two+three")]
    assert rv["NextKeyMarker"] == _u("a b/two+three")


def test_v1_pages_resume_after_a_common_prefix(s3: Any) -> None:
    """boto3's ListObjects paginator (NextMarker with a delimiter, else the last key) walks
    every key and common prefix once: a NextMarker that is a common prefix resumes after all
    of that prefix's keys, not inside it."""
    for delim in ("", "/"):
        pages = s3.get_paginator("list_objects").paginate(
            Bucket=BUCKET, Delimiter=delim, PaginationConfig={"PageSize": 1})
        keys, prefixes = [], []
        for r in pages:
            keys += [c["Key"] for c in r.get("Contents", [])]
            prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if delim:
            assert keys == ["c%d", "e\x01f", "plain"]
            assert prefixes == ["a b/", "d\u00e9j\u00e0/", "g+h/"]
        else:
            assert keys == sorted(KEYS) and prefixes == []
    r = s3.list_objects(Bucket=BUCKET, Delimiter="/", Marker="a b/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]][0] == "d\u00e9j\u00e0/"
    rv = s3.list_object_versions(Bucket=BUCKET, Delimiter="/", MaxKeys=1)
    assert rv["NextKeyMarker"] == "a b/"
    rv = s3.list_object_versions(Bucket=BUCKET, Delimiter="/", KeyMarker=rv["NextKeyMarker"])
    assert rv["Versions"][0]["Key"] == "c%d"


def test_listing_shows_the_etag_head_shows(s3: Any) -> None:
    """A multipart object's ETag (md5 of the part ETags, -N) lives in its metadata, not in the
    segment summaries a listing reads: the listing must still show it, since aws s3 sync sends
    the listed ETag back as If-Match on its ranged GETs."""
    up = s3.create_multipart_upload(Bucket=BUCKET, Key="mp/obj")
    parts = []
    for n, body in ((1, b"a" * (5 * 1024 * 1024)), (2, b"tail")):
        e = s3.upload_part(Bucket=BUCKET, Key="mp/obj", UploadId=up["UploadId"], PartNumber=n,
                           Body=body)["ETag"]
        parts.append({"PartNumber": n, "ETag": e})
    s3.complete_multipart_upload(Bucket=BUCKET, Key="mp/obj", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": parts})
    head = s3.head_object(Bucket=BUCKET, Key="mp/obj")["ETag"]
    assert head.endswith('-2"')
    for r in (s3.list_objects_v2(Bucket=BUCKET, Prefix="mp/"),
              s3.list_objects(Bucket=BUCKET, Prefix="mp/")):
        assert [(c["Key"], c["ETag"]) for c in r["Contents"]] == [("mp/obj", head)]
    rv = s3.list_object_versions(Bucket=BUCKET, Prefix="mp/")
    assert [v["ETag"] for v in rv["Versions"]] == [head]
    assert s3.get_object(Bucket=BUCKET, Key="mp/obj", IfMatch=head, Range="bytes=0-0")[
        "Body"].read() == b"a"
    s3.delete_object(Bucket=BUCKET, Key="mp/obj")
