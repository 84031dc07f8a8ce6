"""Bucket handlers: ListBuckets, CreateBucket, HeadBucket, DeleteBucket, the listings, and the
two read-only bucket subresources generic tools ask for (location, versioning)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from kvstore.api.errors import S3Error
from kvstore.api.s3 import acl, listing, pod_listing
from kvstore.api.s3.http import Request, Send, respond
from kvstore.api.s3.numbers import ascii_uint
from kvstore.api.s3.xml import document, tag
from kvstore.auth import NamespaceTaken
from kvstore.engine.types import BlockMeta
from kvstore.errors import NamespaceNotEmpty
from kvstore.keys import validate_namespace

if TYPE_CHECKING:
    from kvstore.api.s3.app import Call, S3App

_XML = (b"content-type", b"application/xml")
# The one region where CreateBucket of a bucket the caller already owns answers 200, not 409
# BucketAlreadyOwnedByYou, and where GetBucketLocation answers an empty constraint.
LEGACY_REGION = "us-east-1"


def _rid(req: Request) -> tuple[bytes, bytes]:
    return (b"x-amz-request-id", req.request_id.encode())


# ListBuckets' max-buckets: AWS accepts 1 to 10000 (a node holds at most namespaces_max)
MAX_BUCKETS_MAX = 10000
_BAD_MAX_BUCKETS = "Argument max-buckets must be an integer between 1 and 10000"


def buckets_page(names: list[str], query: Mapping[str, str]) -> tuple[list[str], str | None]:
    """The sorted ``names`` one ListBuckets page holds (prefix, continuation-token,
    max-buckets, as AWS's), and the token of the next page when there is one."""
    prefix = query.get("prefix", "")
    raw = query.get("max-buckets")
    limit = MAX_BUCKETS_MAX
    if raw is not None:
        n = ascii_uint(raw)
        if n is None or not 1 <= n <= MAX_BUCKETS_MAX:
            raise S3Error("InvalidArgument", _BAD_MAX_BUCKETS,
                          elements=(("ArgumentName", "max-buckets"), ("ArgumentValue", raw)))
        limit = n
    token = query.get("continuation-token")
    after = listing.decode_token(token) if token else ""
    chosen = [n for n in names if n.startswith(prefix) and n > after]
    page = chosen[:limit]
    return page, listing.encode_token(page[-1]) if len(chosen) > limit else None


async def list_buckets(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    mine = {i.name: i for i in s3.blocks.namespaces(call.tenant)}
    if req.query.get("bucket-region", s3.region) != s3.region:
        mine = {}  # every bucket here is in the one region this server answers for
    page, token = buckets_page(sorted(mine), req.query)
    items = "".join(f"<Bucket>{tag('Name', n)}"
                    f"{tag('CreationDate', listing.iso(mine[n].created))}"
                    f"{tag('BucketRegion', s3.region)}</Bucket>" for n in page)
    owner = listing.owner_name(call.tenant.name)
    parts = [f"<Owner>{tag('ID', owner)}{tag('DisplayName', owner)}</Owner>",
             f"<Buckets>{items}</Buckets>"]
    if "prefix" in req.query:
        parts.append(tag("Prefix", req.query["prefix"]))
    if token is not None:
        parts.append(tag("ContinuationToken", token))
    body = document("ListAllMyBucketsResult", parts)
    await respond(send, 200, [_XML, _rid(req)], body)
    return 200, 0


async def create_bucket(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    name = req.bucket
    validate_namespace(name)
    if any(h.startswith("x-amz-object-lock") or h == "x-amz-bucket-object-lock-enabled"
           for h in req.headers):
        raise S3Error("NotImplemented", "object lock is not supported")
    ownership = req.headers.get("x-amz-object-ownership", "BucketOwnerEnforced")
    if ownership != "BucketOwnerEnforced":
        raise S3Error("NotImplemented", f"object ownership {ownership} is not supported: "
                      "ACLs are disabled (BucketOwnerEnforced)")
    if acl.has_acl_headers(req.headers):
        try:
            acl.check_acl_headers(req.headers, call.tenant.name)
        except S3Error:  # AWS's answer to an ACL on a bucket created with ACLs disabled
            raise S3Error("InvalidBucketAclWithObjectOwnership", "Bucket cannot have ACLs set "
                          "with ObjectOwnership's BucketOwnerEnforced setting") from None
    await req.discard_body()
    try:
        _info, created = await s3.blocks.create_namespace(call.tenant, name)
    except NamespaceTaken:  # someone else's
        raise S3Error("BucketAlreadyExists", "The requested bucket name is not available.") \
            from None
    if not created and s3.region != LEGACY_REGION:
        raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named "
                      "bucket succeeded and you already own it.")
    # us-east-1 answers 200 to re-creating a bucket the caller owns (AWS's legacy rule)
    await respond(send, 200, [(b"location", f"/{name}".encode()), _rid(req)])
    return 200, 0


async def head_bucket(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    await respond(send, 200, [(b"x-amz-bucket-region", s3.region.encode()), _rid(req)])
    return 200, 0


async def delete_bucket(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    try:
        await s3.blocks.delete_namespace(call.tenant, req.bucket)
    except NamespaceNotEmpty:
        raise NamespaceNotEmpty("The bucket you tried to delete is not empty") from None
    # As AWS: uploads still open do not keep a bucket without objects alive; they go with it
    # (after the delete, so a bucket that is not empty keeps them). A part or Complete that
    # races with this finds the upload gone (NoSuchUpload) or the bucket gone (NoSuchBucket).
    s3.uploads.drop_bucket(req.bucket)
    await respond(send, 204, [_rid(req)])
    return 204, 0


def _lister(s3: S3App, bucket: str) -> listing.ListFn:
    def fn(prefix: str, start_after: str, limit: int) -> tuple[list[BlockMeta], bool]:
        # with the metadata: a listing answers each object's stored ETag (its MD5)
        return s3.blocks.list_blocks(bucket, prefix=prefix, start_after=start_after,
                                     limit=limit, with_meta=True)

    return fn


async def list_objects(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    q, b = req.query, req.bucket
    if q.get("list-type") == "2":
        build = listing.v2
    elif "versions" in q:
        build = listing.versions
    elif "list-type" in q:
        raise S3Error("InvalidArgument", "list-type must be 2")
    else:
        build = listing.v1
    fn = _lister(s3, b)
    if s3.blocks.forward is not None:  # the whole pod's keys, merged in order
        fn = pod_listing.pod_lister(fn, s3.blocks.forward, call.tenant, s3.region, b,
                                    asyncio.get_running_loop())
    owner = s3.bucket_owner(call.tenant, b)
    body = await s3.blocks.run(build, fn, b, q, owner)
    await respond(send, 200, [_XML, _rid(req)], body)
    return 200, 0


async def get_location(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    region = "" if s3.region == LEGACY_REGION else s3.region
    body = document("LocationConstraint", [region])
    await respond(send, 200, [_XML, _rid(req)], body)
    return 200, 0


async def get_versioning(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    await respond(send, 200, [_XML, _rid(req)], document("VersioningConfiguration", []))
    return 200, 0
