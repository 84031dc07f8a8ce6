"""CopyObject: a server-side copy of one object (its bytes read once through the pod — the
source's owner may be another node — and stored as a new object, with the MD5 of its bytes as
ETag, at the destination's replicas), and the copy-source helpers UploadPartCopy shares."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from kvstore.api.errors import S3Error
from kvstore.api.s3 import checksums
from kvstore.api.s3.http import Request, Send, check_conditions, respond
from kvstore.api.s3.listing import iso
from kvstore.api.s3.objects import store_pod, stored_etag
from kvstore.api.s3.payload import check_unsupported
from kvstore.api.s3.xml import document, esc, tag
from kvstore.engine.types import BlockMeta
from kvstore.errors import NotFound
from kvstore.service.forward import checksum_of

if TYPE_CHECKING:
    from kvstore.api.s3.app import Call, S3App
    from kvstore.engine.store import BlockView

_XML = (b"content-type", b"application/xml")


def parse_copy_source(value: str) -> tuple[str, str]:
    src = unquote(value.split("?", 1)[0]).lstrip("/")
    if "?versionId=" in value and not value.endswith("?versionId=null"):
        raise S3Error("NotImplemented", "copying a specific version is not supported")
    bucket, _, key = src.partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                      "sourcebucket/sourcekey")
    return bucket, key


def copy_conditions(headers: dict[str, str]) -> dict[str, str]:
    pre = "x-amz-copy-source-"
    return {k[len(pre):]: v for k, v in headers.items()
            if k.startswith(pre) and k[len(pre):].startswith("if-")}


def check_copy_conditions(conds: dict[str, str], etag: str, modified: float) -> None:
    """The x-amz-copy-source-if-* preconditions (``copy_conditions``) against the source, in
    the order and combinations S3 documents (those of GET: an If-Match that holds overrides a
    failing If-Unmodified-Since, a failing If-None-Match overrides a holding
    If-Modified-Since), except that every failure is 412 PreconditionFailed, never 304."""
    try:
        check_conditions(conds, etag, modified)
    except S3Error as exc:
        if exc.name == "NotModified":
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                          "specified did not hold") from None
        raise


async def copy_object(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    check_unsupported(req, lambda: s3.bucket_owner(call.tenant, req.bucket))
    src_bucket, src_key = parse_copy_source(req.headers["x-amz-copy-source"])
    s3.check_bucket(call.tenant, src_bucket)
    directive = req.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.")
    if (src_bucket, src_key) == (req.bucket, req.key) and directive == "COPY":
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to "
                      "copy an object to itself without changing the object's metadata.")
    await req.discard_body()
    conds = copy_conditions(req.headers)
    replace_hdrs = checksums.object_headers(req.headers)
    replace_um = checksums.user_metadata(req.headers)

    def source(view: BlockView | None) -> tuple[dict[str, Any], bytearray]:
        if view is None:
            raise NotFound("The specified key does not exist.")
        doc = checksums.unpack_meta(view.meta.meta)
        check_copy_conditions(conds, stored_etag(view.meta, doc), view.meta.created)
        return doc, bytearray(view.payload)

    # the source read through the pod (its owner may be another node)
    doc, data = await s3.blocks.read(src_bucket, src_key, source, tenant=call.tenant)
    if directive == "REPLACE":
        doc["h"], doc["u"] = replace_hdrs, replace_um
    # the copy is one new object, not uploaded in parts: its ETag is the MD5 of its bytes
    # (even of a multipart source, as S3 does), and only full-object checksums still hold
    etag = (await s3.blocks.run(s3.md5_hex, data)) if s3.etag_md5 else ""
    sums = doc["c"] if doc.get("t", checksums.FULL_OBJECT) == checksums.FULL_OBJECT else {}
    meta = checksums.pack_meta(doc["h"], doc["u"], sums, etag)
    # the destination written through the pod: here when this node is a replica, and at the
    # other live replicas with the same S3 metadata
    stored = await store_pod(s3, call.tenant, req.bucket, req.key, data, meta)
    bm = stored or BlockMeta(req.bucket, req.key, len(data), checksum_of(data), 0, time.time(),
                             0.0, meta)
    etag = stored_etag(bm, checksums.unpack_meta(bm.meta))
    body = document("CopyObjectResult", [tag("LastModified", iso(bm.created or time.time())),
                                         f"<ETag>&quot;{esc(etag)}&quot;</ETag>"])
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())], body)
    return 200, bm.length
