"""SigV4 against a live server with a credentials file: tenants, presigned URLs, denial."""

from __future__ import annotations

import datetime
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvstore.auth import Tenants
from tests.api.conftest import TENANT_DOC, LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server(tenants=Tenants.from_dict(TENANT_DOC))


@pytest.fixture(scope="module")
def acme(srv: LiveServer) -> Any:
    c = boto_client(srv.url, "AKIAACME", "acme-secret-key", signature_version="s3v4")
    c.create_bucket(Bucket="acme-data")
    c.put_object(Bucket="acme-data", Key="present", Body=b"acme's block")
    return c


@pytest.fixture(scope="module")
def globex(srv: LiveServer) -> Any:
    return boto_client(srv.url, "AKIAGLOBEX", "globex-secret-key")


def _err(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


def test_wrong_secret(srv: LiveServer, acme: Any) -> None:
    bad = boto_client(srv.url, "AKIAACME", "not-the-secret")
    with pytest.raises(ClientError) as ei:
        bad.get_object(Bucket="acme-data", Key="present")
    assert _err(ei.value) == (403, "SignatureDoesNotMatch")
    with pytest.raises(ClientError) as ei:
        bad.put_object(Bucket="acme-data", Key="present", Body=b"overwrite attempt")
    assert _err(ei.value) == (403, "SignatureDoesNotMatch")
    assert acme.get_object(Bucket="acme-data", Key="present")["Body"].read() == b"acme's block"


def test_unknown_access_key(srv: LiveServer) -> None:
    with pytest.raises(ClientError) as ei:
        boto_client(srv.url, "AKIANOBODY", "x").list_buckets()
    assert _err(ei.value) == (403, "InvalidAccessKeyId")


def test_anonymous_is_denied(srv: LiveServer, acme: Any) -> None:
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(f"{srv.url}/acme-data/present", timeout=10)
    assert ei.value.code == 403 and b"<Code>AccessDenied</Code>" in ei.value.read()


def test_cross_tenant_denial_does_not_leak_existence(acme: Any, globex: Any) -> None:
    answers = []
    for key in ("present", "absent"):
        for call in (lambda k=key: globex.get_object(Bucket="acme-data", Key=k),
                     lambda k=key: globex.put_object(Bucket="acme-data", Key=k, Body=b"x"),
                     lambda k=key: globex.delete_object(Bucket="acme-data", Key=k)):
            with pytest.raises(ClientError) as ei:
                call()
            answers.append((_err(ei.value), ei.value.response["Error"]["Message"]))
        with pytest.raises(ClientError) as ei:
            globex.head_object(Bucket="acme-data", Key=key)
        answers.append((_err(ei.value)[0], ""))
    assert {a for a in answers if a[1]} == {((403, "AccessDenied"), "Access Denied")}
    assert {a for a in answers if not a[1]} == {(403, "")}
    with pytest.raises(ClientError) as ei:  # a bucket that does not exist: the same answer
        globex.get_object(Bucket="acme-nothing", Key="present")
    assert _err(ei.value) == (403, "AccessDenied")
    with pytest.raises(ClientError) as ei:
        globex.list_objects_v2(Bucket="acme-data")
    assert _err(ei.value) == (403, "AccessDenied")
    assert acme.get_object(Bucket="acme-data", Key="present")["Body"].read() == b"acme's block"


def test_shared_pattern_bucket_owned_by_another(acme: Any, globex: Any) -> None:
    acme.create_bucket(Bucket="shared-acme")
    acme.put_object(Bucket="shared-acme", Key="k", Body=b"v")
    with pytest.raises(ClientError) as ei:
        globex.create_bucket(Bucket="shared-acme")
    assert _err(ei.value) == (409, "BucketAlreadyExists")
    for key in ("k", "missing"):
        with pytest.raises(ClientError) as ei:
            globex.get_object(Bucket="shared-acme", Key=key)
        assert _err(ei.value) == (403, "AccessDenied")
    assert "shared-acme" not in [b["Name"] for b in globex.list_buckets()["Buckets"]]
    assert "shared-acme" in [b["Name"] for b in acme.list_buckets()["Buckets"]]


def test_create_outside_own_patterns(globex: Any) -> None:
    with pytest.raises(ClientError) as ei:
        globex.create_bucket(Bucket="acme-stolen")
    assert _err(ei.value) == (403, "AccessDenied")


def test_presigned_get_and_put(srv: LiveServer, acme: Any) -> None:
    put_url = acme.generate_presigned_url("put_object", Params={"Bucket": "acme-data",
                                                                "Key": "pre signed/obj"},
                                          ExpiresIn=300)
    req = urllib.request.Request(put_url, data=b"via presigned PUT", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    get_url = acme.generate_presigned_url("get_object", Params={"Bucket": "acme-data",
                                                                "Key": "pre signed/obj"},
                                          ExpiresIn=300)
    with urllib.request.urlopen(get_url, timeout=10) as r:
        assert r.read() == b"via presigned PUT"
    tampered = get_url.replace("pre%20signed/obj", "present")
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(tampered, timeout=10)
    assert ei.value.code == 403 and b"SignatureDoesNotMatch" in ei.value.read()


def test_presigned_url_expires(srv: LiveServer, acme: Any,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.auth

    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=120)

    class _Past(datetime.datetime):
        @classmethod
        def utcnow(cls) -> datetime.datetime:  # botocore signs with utcnow()
            return past.replace(tzinfo=None)

        @classmethod
        def now(cls, tz: Any = None) -> datetime.datetime:
            return past if tz else past.replace(tzinfo=None)

    monkeypatch.setattr(botocore.auth.datetime, "datetime", _Past)
    url = acme.generate_presigned_url("get_object", Params={"Bucket": "acme-data",
                                                            "Key": "present"}, ExpiresIn=60)
    monkeypatch.undo()
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(url, timeout=10)
    body = ei.value.read()
    assert ei.value.code == 403 and b"AccessDenied" in body and b"Request has expired" in body


def test_sigv2_presigned_is_refused_clearly(srv: LiveServer, acme: Any) -> None:
    v2 = boto_client(srv.url, "AKIAACME", "acme-secret-key")  # boto3 presigns with v2 by default
    url = v2.generate_presigned_url("get_object", Params={"Bucket": "acme-data",
                                                          "Key": "present"}, ExpiresIn=60)
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(url, timeout=10)
    assert ei.value.code == 400 and b"AWS4-HMAC-SHA256" in ei.value.read()


def test_presigned_expiry_over_the_bound(srv: LiveServer, acme: Any) -> None:
    url = acme.generate_presigned_url("get_object", Params={"Bucket": "acme-data",
                                                            "Key": "present"},
                                      ExpiresIn=8 * 24 * 3600)
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(url, timeout=10)
    assert ei.value.code == 400 and b"AuthorizationQueryParametersError" in ei.value.read()
