"""Bucket (namespace) names follow the S3 general-purpose bucket naming rules exactly, and the S3
front end, /v1 and the bulk wire format accept and refuse the same names (one validator)."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.errors import InvalidNamespace
from kvstore.keys import validate_namespace
from tests.api.conftest import LiveServer, boto_client

# From AWS's "General purpose bucket naming rules" and its examples.
VALID = [
    "abc", "a" * 63, "0ab", "docexamplebucket1", "log-delivery-march-2020", "my-hosted-content",
    "docexamplewebsite.com", "www.docexamplewebsite.com", "my.example.s3.bucket", "1.2.3",
    "1.2.3.4.5", "a-b-c", "a--b", "xn-abc", "s3alias-x", "a.b-c.d", "192.168.5.4a",
    "sthree", "x-s3-bucket", "mrap.a",
]
INVALID = [
    "", "ab", "a" * 64, "doc_example_bucket", "DocExampleBucket", "doc-example-bucket-",
    "-abc", ".abc", "abc.", "a..b", "a.-b", "a-.b", "my.-bucket", "192.168.5.4", "10.0.0.1",
    "xn--abc", "sthree-bucket", "sthree-configurator", "amzn-s3-demo-bucket",
    "bucket-s3alias", "bucket--ol-s3", "bucket.mrap", "bucket--x-s3", "bucket--table-s3",
    "abc\n", "ab c", "abc/", "ab\u00e9", "ab\u0661", "a%2fb",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name: str) -> None:
    assert validate_namespace(name) == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidNamespace):
        validate_namespace(name)


def _oracle(name: str) -> bool:
    """The rules written another way: by labels between dots."""
    if not 3 <= len(name) <= 63 or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789.-"
                                       for c in name):
        return False
    labels = name.split(".")
    if any(not lab or lab[0] == "-" or lab[-1] == "-" for lab in labels):
        return False  # empty label (.., leading/trailing dot) or a hyphen next to a dot/end
    if len(labels) == 4 and all(lab.isdigit() for lab in labels):
        return False
    if name.startswith(("xn--", "sthree-", "amzn-s3-demo-")):
        return False
    return not name.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"))


_names = st.one_of(
    st.text(alphabet="ab09.-", min_size=1, max_size=8),
    st.text(alphabet="abcxyz0189.-_A", min_size=0, max_size=70),
    st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", *[st.integers(0, 999)] * 4),
    st.builds(lambda p, m: p + m, st.sampled_from(["xn--", "sthree-", "amzn-s3-demo-", ""]),
              st.text(alphabet="ab-.", min_size=0, max_size=6)),
    st.builds(lambda m, s: m + s, st.text(alphabet="ab-.", min_size=0, max_size=6),
              st.sampled_from(["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3", ""])),
)


@settings(max_examples=400, deadline=None)
@given(_names)
def test_validator_matches_the_rules(name: str) -> None:
    try:
        validate_namespace(name)
        ok = True
    except InvalidNamespace:
        ok = False
    assert ok == _oracle(name), name


@pytest.fixture(scope="module")
def server(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server()


def _v1_create(url: str, name: str) -> tuple[int, Any]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)
    try:
        conn.request("POST", "/v1/namespaces", json.dumps({"name": name}),
                     {"content-type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


# The names the old validator let through (and boto3's client-side check does too; a name
# ending in --x-s3 boto3 takes for a directory bucket and signs differently: /v1 only).
NEWLY_REFUSED = ["a.-b", "a-.b", "xn--abcd", "sthree-x", "amzn-s3-demo-x", "b-s3alias",
                 "b--ol-s3", "b.mrap", "b--table-s3"]


@pytest.mark.parametrize("name", NEWLY_REFUSED)
def test_s3_and_v1_refuse_the_same_names(server: LiveServer, name: str) -> None:
    s3 = boto_client(server.url)
    with pytest.raises(ClientError) as ei:
        s3.create_bucket(Bucket=name)
    assert ei.value.response["Error"]["Code"] == "InvalidBucketName"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    status, body = _v1_create(server.url, name)
    assert status == 400, body
    assert body["error"]["name"] == "InvalidBucketName"
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_v1_refuses_a_directory_bucket_suffix(server: LiveServer) -> None:
    status, body = _v1_create(server.url, "b--x-s3")
    assert status == 400 and body["error"]["name"] == "InvalidBucketName"


def test_s3_and_v1_accept_the_same_names(server: LiveServer) -> None:
    s3 = boto_client(server.url)
    s3.create_bucket(Bucket="a.b-c.d")
    assert _v1_create(server.url, "a--b.c1")[0] == 201
    s3.head_bucket(Bucket="a--b.c1")
    s3.put_object(Bucket="a.b-c.d", Key="k", Body=b"v")
    assert s3.get_object(Bucket="a.b-c.d", Key="k")["Body"].read() == b"v"


def test_the_message_says_which_rule() -> None:
    with pytest.raises(InvalidNamespace, match=re.escape("dot next to a hyphen")):
        validate_namespace("a.-b")
    with pytest.raises(InvalidNamespace, match="IP address"):
        validate_namespace("10.1.2.3")


def test_a_namespace_from_the_looser_rules_stays_reachable(
        live_server: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """A namespace whose name the old validator let through (here ``old.-name``, created with
    the catalog's check switched off, as an older release would have) can still be read,
    listed and emptied over S3; a new one of that name cannot be made."""
    from kvstore.engine import catalog

    srv = live_server()
    monkeypatch.setattr(catalog, "validate_namespace", lambda name: name)
    srv.state.engine.create_namespace("old.-name", owner="")
    monkeypatch.undo()
    s3 = boto_client(srv.url)
    s3.put_object(Bucket="old.-name", Key="k", Body=b"kept")
    assert s3.get_object(Bucket="old.-name", Key="k")["Body"].read() == b"kept"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="old.-name")["Contents"]] == ["k"]
    s3.delete_object(Bucket="old.-name", Key="k")
    s3.delete_bucket(Bucket="old.-name")
    with pytest.raises(ClientError) as ei:
        s3.create_bucket(Bucket="old.-name")
    assert ei.value.response["Error"]["Code"] == "InvalidBucketName"
