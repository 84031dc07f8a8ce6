"""ListMultipartUploads as S3 answers it, through boto3 (and a raw request where boto3 cannot
send it) against a real server: key order (several uploads of one key in the order they were
created), prefix, delimiter and CommonPrefixes, key-marker and upload-id-marker, paging by
max-uploads, and encoding-type=url."""

from __future__ import annotations

import http.client
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

from tests.api.conftest import LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "list-uploads-b"
# in creation order; "b" twice: two open uploads of one key
KEYS = ["b", "a/1", "c d/x", "b", "a/2", "e+f", "z"]


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server()


@pytest.fixture(scope="module")
def ups(srv: LiveServer) -> tuple[Any, list[tuple[str, str]]]:
    """The client and the uploads, (key, upload id), in the order S3 lists them."""
    s3 = boto_client(srv.url)
    s3.create_bucket(Bucket=BUCKET)
    made = []
    for k in KEYS:
        made.append((k, s3.create_multipart_upload(Bucket=BUCKET, Key=k)["UploadId"]))
        time.sleep(0.002)  # distinct initiation times: same-key uploads list in this order
    return s3, sorted(made, key=lambda m: m[0])  # stable: same-key uploads keep their order


def _listed(r: dict[str, Any]) -> list[tuple[str, str]]:
    return [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]


def test_all_uploads_in_key_order(ups: tuple[Any, list[tuple[str, str]]]) -> None:
    s3, want = ups
    r = s3.list_multipart_uploads(Bucket=BUCKET)
    assert _listed(r) == want and r["IsTruncated"] is False
    u = r["Uploads"][0]
    assert u["Initiator"]["ID"] and u["Owner"]["ID"] and u["StorageClass"] == "STANDARD"


def test_prefix_and_delimiter(ups: tuple[Any, list[tuple[str, str]]]) -> None:
    s3, want = ups
    r = s3.list_multipart_uploads(Bucket=BUCKET, Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/", "c d/"]
    assert _listed(r) == [m for m in want if "/" not in m[0]]
    assert r["Delimiter"] == "/"
    r = s3.list_multipart_uploads(Bucket=BUCKET, Prefix="a/", Delimiter="/")
    assert _listed(r) == [m for m in want if m[0].startswith("a/")]
    assert "CommonPrefixes" not in r and r["Prefix"] == "a/"


def test_markers(ups: tuple[Any, list[tuple[str, str]]]) -> None:
    s3, want = ups
    b1, b2 = [m for m in want if m[0] == "b"]
    r = s3.list_multipart_uploads(Bucket=BUCKET, KeyMarker="b")  # keys after "b" only
    assert _listed(r) == [m for m in want if m[0] > "b"]
    r = s3.list_multipart_uploads(Bucket=BUCKET, KeyMarker="b", UploadIdMarker=b1[1])
    assert _listed(r) == [b2] + [m for m in want if m[0] > "b"]
    assert (r["KeyMarker"], r["UploadIdMarker"]) == ("b", b1[1])
    r = s3.list_multipart_uploads(Bucket=BUCKET, UploadIdMarker=b1[1])  # ignored without a key
    assert _listed(r) == want
    r = s3.list_multipart_uploads(Bucket=BUCKET, KeyMarker="a/", Delimiter="/")
    assert [p["Prefix"] for p in r.get("CommonPrefixes", [])] == ["c d/"]  # past a/ entirely


@pytest.mark.parametrize("delim", ["", "/"])
def test_paginator_walks_every_upload_once(ups: tuple[Any, list[tuple[str, str]]],
                                           delim: str) -> None:
    """boto3's paginator (max-uploads 1, then NextKeyMarker and NextUploadIdMarker): the two
    uploads of "b" land on separate pages and both are listed."""
    s3, want = ups
    got: list[tuple[str, str]] = []
    prefixes: list[str] = []
    pages = 0
    for r in s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=BUCKET, Delimiter=delim, PaginationConfig={"PageSize": 1}):
        pages += 1
        assert r["MaxUploads"] == 1 and len(r.get("Uploads", [])) + len(
            r.get("CommonPrefixes", [])) <= 1
        got += _listed(r)
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
    if delim:
        assert got == [m for m in want if "/" not in m[0]] and prefixes == ["a/", "c d/"]
    else:
        assert got == want and prefixes == []
    assert pages == len(got) + len(prefixes)


def test_url_encoding(ups: tuple[Any, list[tuple[str, str]]]) -> None:
    s3, want = ups
    r = s3.list_multipart_uploads(Bucket=BUCKET, EncodingType="url", Prefix="c d/",
                                  KeyMarker="c d/")
    assert r["EncodingType"] == "url" and r["Prefix"] == quote("c d/")
    assert r["KeyMarker"] == quote("c d/")
    assert [u["Key"] for u in r["Uploads"]] == [quote("c d/x")]


def _raw(srv: LiveServer, query: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", f"/{BUCKET}?uploads&{query}")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_max_uploads_bounds(srv: LiveServer, ups: tuple[Any, list[tuple[str, str]]]) -> None:
    status, body = _raw(srv, "max-uploads=abc")
    assert status == 400 and b"<Code>InvalidArgument</Code>" in body
    status, body = _raw(srv, "max-uploads=0")
    assert status == 200 and b"<IsTruncated>false</IsTruncated>" in body
    assert b"<Upload>" not in body
    status, body = _raw(srv, "max-uploads=999999")  # clamped to the listing bound
    assert status == 200 and b"<MaxUploads>1000</MaxUploads>" in body
    status, body = _raw(srv, "encoding-type=base64")
    assert status == 400 and b"<Code>InvalidArgument</Code>" in body
