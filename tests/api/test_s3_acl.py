"""ACLs disabled, as on an AWS bucket with Object Ownership BucketOwnerEnforced (the default),
through boto3 against a real server with tenants: the ACL read answers the owner's
FULL_CONTROL; an ACL that grants the owner FULL_CONTROL alone is accepted on a write, a PUT
?acl and CreateBucket; any other is AccessControlListNotSupported (or, on CreateBucket,
InvalidBucketAclWithObjectOwnership), never a silent no-op."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvstore.auth import Tenants
from tests.api.conftest import TENANT_DOC, LiveServer, boto_client

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
BUCKET = "acme-acl"
OWNER = {"ID": "acme", "DisplayName": "acme"}
FULL = [{"Grantee": {**OWNER, "Type": "CanonicalUser"}, "Permission": "FULL_CONTROL"}]


@pytest.fixture(scope="module")
def srv(module_server: Callable[..., LiveServer]) -> LiveServer:
    return module_server(tenants=Tenants.from_dict(TENANT_DOC))


@pytest.fixture(scope="module")
def s3(srv: LiveServer) -> Any:
    c = boto_client(srv.url, "AKIAACME", "acme-secret-key")
    c.create_bucket(Bucket=BUCKET)
    c.put_object(Bucket=BUCKET, Key="k", Body=b"v")
    return c


def _code(call: Callable[[], Any]) -> tuple[int, str]:
    with pytest.raises(ClientError) as ei:
        call()
    r = ei.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], str(r["Error"]["Code"])


NOT_SUPPORTED = (400, "AccessControlListNotSupported")


def test_reads_answer_the_owner_full_control(s3: Any) -> None:
    for r in (s3.get_bucket_acl(Bucket=BUCKET), s3.get_object_acl(Bucket=BUCKET, Key="k")):
        assert r["Owner"] == OWNER and r["Grants"] == FULL
    assert _code(lambda: s3.get_object_acl(Bucket=BUCKET, Key="absent")) == (404, "NoSuchKey")
    rules = s3.get_bucket_ownership_controls(Bucket=BUCKET)["OwnershipControls"]["Rules"]
    assert rules == [{"ObjectOwnership": "BucketOwnerEnforced"}]


def test_owner_only_acls_are_accepted(s3: Any) -> None:
    policy = {"Owner": OWNER, "Grants": FULL}
    for kw in ({"ACL": "private"}, {"ACL": "bucket-owner-full-control"},
               {"GrantFullControl": 'id="acme"'}, {"AccessControlPolicy": policy}):
        s3.put_bucket_acl(Bucket=BUCKET, **kw)
        s3.put_object_acl(Bucket=BUCKET, Key="k", **kw)
    s3.put_object(Bucket=BUCKET, Key="k2", Body=b"x", ACL="bucket-owner-full-control")
    s3.copy_object(Bucket=BUCKET, Key="k3", CopySource=f"{BUCKET}/k", ACL="private")
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="k4", ACL="private")["UploadId"]
    s3.abort_multipart_upload(Bucket=BUCKET, Key="k4", UploadId=uid)
    s3.create_bucket(Bucket="acme-acl-private", ACL="private")
    s3.delete_bucket(Bucket="acme-acl-private")


def test_other_acls_are_refused(s3: Any) -> None:
    public = {"Owner": OWNER, "Grants": FULL + [{
        "Grantee": {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"},
        "Permission": "READ"}]}
    other = {"Owner": OWNER, "Grants": [{
        "Grantee": {"Type": "CanonicalUser", "ID": "globex"}, "Permission": "FULL_CONTROL"}]}
    for kw in ({"ACL": "public-read"}, {"ACL": "authenticated-read"},
               {"GrantRead": 'id="globex"'}, {"GrantFullControl": 'id="globex"'},
               {"AccessControlPolicy": public}, {"AccessControlPolicy": other}):
        assert _code(lambda kw=kw: s3.put_bucket_acl(Bucket=BUCKET, **kw)) == NOT_SUPPORTED
        assert _code(lambda kw=kw: s3.put_object_acl(Bucket=BUCKET, Key="k", **kw)) == \
            NOT_SUPPORTED
    assert _code(lambda: s3.put_object(Bucket=BUCKET, Key="pub", Body=b"x",
                                       ACL="public-read")) == NOT_SUPPORTED
    assert _code(lambda: s3.put_object(Bucket=BUCKET, Key="pub", Body=b"x",
                                       GrantRead='id="globex"')) == NOT_SUPPORTED
    assert _code(lambda: s3.copy_object(Bucket=BUCKET, Key="pub", CopySource=f"{BUCKET}/k",
                                        ACL="public-read-write")) == NOT_SUPPORTED
    assert _code(lambda: s3.create_multipart_upload(Bucket=BUCKET, Key="pub",
                                                    ACL="public-read")) == NOT_SUPPORTED
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key="pub")  # nothing was written
    assert _code(lambda: s3.create_bucket(Bucket="acme-acl-pub", ACL="public-read")) == (
        400, "InvalidBucketAclWithObjectOwnership")
    assert _code(lambda: s3.create_bucket(Bucket="acme-acl-ow", ObjectOwnership="ObjectWriter")
                 )[1] == "NotImplemented"
    assert "acme-acl-pub" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    raw = boto_client(s3.meta.endpoint_url, "AKIAACME", "acme-secret-key",
                      parameter_validation=False)
    assert _code(lambda: raw.put_bucket_acl(Bucket=BUCKET)) == (400, "MissingSecurityHeader")


def test_another_tenant_reads_no_acl(srv: LiveServer, s3: Any) -> None:
    globex = boto_client(srv.url, "AKIAGLOBEX", "globex-secret-key")
    assert _code(lambda: globex.get_bucket_acl(Bucket=BUCKET))[1] == "AccessDenied"
    assert _code(lambda: globex.put_object_acl(Bucket=BUCKET, Key="k", ACL="private")
                 )[1] == "AccessDenied"
