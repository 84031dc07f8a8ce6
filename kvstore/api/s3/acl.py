"""ACLs as AWS has them on a bucket whose Object Ownership is BucketOwnerEnforced (the default
of every new AWS bucket since April 2023): ACLs are disabled, access is the policy's alone
(here: the tenants' namespace patterns, ``BlockService.authorize``).

- GetBucketAcl / GetObjectAcl answer the one grant that holds: the bucket owner, FULL_CONTROL.
- PutBucketAcl / PutObjectAcl, and an ACL on PutObject, CopyObject, CreateMultipartUpload,
  succeed only when they grant exactly that (the ``private`` or ``bucket-owner-full-control``
  canned ACL, or an AccessControlPolicy body of owner FULL_CONTROL grants); any other is 400
  AccessControlListNotSupported, as AWS answers (it was 501 NotImplemented here).
- GetBucketOwnershipControls answers BucketOwnerEnforced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.api.errors import S3Error
from kvstore.api.s3.http import Request, Send, respond
from kvstore.api.s3.listing import owner_name, owner_xml
from kvstore.api.s3.xml import document, local_name, parse, tag
from kvstore.errors import NotFound

if TYPE_CHECKING:
    from kvstore.api.s3.app import Call, S3App

OWNER_ONLY_ACLS = ("private", "bucket-owner-full-control")
GRANT_HEADERS = ("x-amz-grant-full-control", "x-amz-grant-read", "x-amz-grant-read-acp",
                 "x-amz-grant-write", "x-amz-grant-write-acp")
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_XML = (b"content-type", b"application/xml")


def not_supported() -> S3Error:
    return S3Error("AccessControlListNotSupported", "The bucket does not allow ACLs")


def has_acl_headers(headers: Mapping[str, str]) -> bool:
    return "x-amz-acl" in headers or any(h in headers for h in GRANT_HEADERS)


def check_acl_headers(headers: Mapping[str, str], owner: str) -> None:
    """An ACL sent with a write (x-amz-acl, x-amz-grant-*): only one that grants the bucket
    owner FULL_CONTROL and nothing else holds, as with ACLs disabled on AWS."""
    acl = headers.get("x-amz-acl")
    if acl is not None and acl.strip().lower() not in OWNER_ONLY_ACLS:
        raise not_supported()
    for h in GRANT_HEADERS:
        v = headers.get(h)
        if v is None:
            continue
        ids = [g.strip() for g in v.split(",")]
        owner_only = ids in ([f'id="{owner_name(owner)}"'], [f"id={owner_name(owner)}"])
        if h != "x-amz-grant-full-control" or not owner_only:
            raise not_supported()


def policy_xml(owner: str) -> bytes:
    """The AccessControlPolicy that holds: the owner, FULL_CONTROL."""
    grantee = (f'<Grantee xmlns:xsi="{_XSI}" xsi:type="CanonicalUser">{owner_xml(owner)}'
               "</Grantee>")
    return document("AccessControlPolicy", [
        f"<Owner>{owner_xml(owner)}</Owner>",
        f"<AccessControlList><Grant>{grantee}{tag('Permission', 'FULL_CONTROL')}</Grant>"
        "</AccessControlList>"])


def check_policy_body(body: bytes, owner: str) -> None:
    """An AccessControlPolicy body: every grant must be the owner's FULL_CONTROL."""
    root = parse(body, "AccessControlPolicy")
    grants = [el for el in root.iter() if local_name(el.tag) == "Grant"]
    if not grants:
        raise not_supported()
    for g in grants:
        perm = next((el.text or "" for el in g.iter() if local_name(el.tag) == "Permission"), "")
        ids = [el.text or "" for el in g.iter() if local_name(el.tag) == "ID"]
        others = [el for el in g.iter() if local_name(el.tag) in ("URI", "EmailAddress")]
        if perm.strip() != "FULL_CONTROL" or others or [i.strip() for i in ids] != [
                owner_name(owner)]:
            raise not_supported()


async def _owner_of_target(s3: S3App, req: Request, call: Call) -> str:
    """The bucket owner, after checking that the object (for an object's ACL) exists."""
    if req.key:
        meta = s3.blocks.head_here(req.bucket, req.key)
        if meta is None and await s3.blocks.head(req.bucket, req.key,
                                                 tenant=call.tenant) is None:
            raise NotFound("The specified key does not exist.")
    return s3.bucket_owner(call.tenant, req.bucket)


async def get_acl(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    owner = await _owner_of_target(s3, req, call)
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())],
                  policy_xml(owner))
    return 200, 0


async def put_acl(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    owner = await _owner_of_target(s3, req, call)
    body = await req.small_body(limits.s3_xml_body_bytes_max)
    if has_acl_headers(req.headers):
        check_acl_headers(req.headers, owner)
    elif body.strip():
        check_policy_body(body, owner)
    else:
        raise S3Error("MissingSecurityHeader", "Your request was missing a required header",
                      elements=(("MissingHeaderName", "x-amz-acl"),))
    await respond(send, 200, [(b"x-amz-request-id", req.request_id.encode())])
    return 200, 0


async def get_ownership(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    body = document("OwnershipControls", [
        "<Rule><ObjectOwnership>BucketOwnerEnforced</ObjectOwnership></Rule>"])
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())], body)
    return 200, 0
