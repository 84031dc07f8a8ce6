"""Object handlers: PutObject, GetObject, HeadObject, DeleteObject, DeleteObjects, CopyObject.

The hot paths (PUT, GET) do one engine call each, in the runner's thread pool: PUT verifies the
client's digests and stores in the same call (nothing is stored unless every digest matches);
GET checks the preconditions and copies the requested bytes out of the engine's view once; a
ranged GET of a block not in DRAM asks ``engine.read_range``, which reads (and verifies) only
the chunks covering the range instead of the whole block.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from kvstore import limits
from kvstore.api.errors import S3Error, classify
from kvstore.api.s3 import checksums, chunked, sigv4
from kvstore.api.s3.http import (
    Headers,
    Request,
    Send,
    check_conditions,
    http_date,
    parse_range,
    range_request,
    respond,
)
from kvstore.api.s3.listing import iso
from kvstore.api.s3.xml import document, esc, parse_delete, tag
from kvstore.engine.device import AlignedBuffer, BufferPool, StagedPayload, align_up
from kvstore.engine.types import BlockMeta
from kvstore.errors import NotFound
from kvstore.service.forward import checksum_of

if TYPE_CHECKING:
    from kvstore.api.s3.app import Call, S3App
    from kvstore.auth import Tenant
    from kvstore.engine.store import BlockView
    from kvstore.service.forward import NodeInfo

_XML = (b"content-type", b"application/xml")
# Headers that ask for features this store does not have: refused, never silently ignored.
_UNSUPPORTED_PUT_HEADERS = (
    "x-amz-server-side-encryption", "x-amz-server-side-encryption-customer-algorithm",
    "x-amz-server-side-encryption-aws-kms-key-id", "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date", "x-amz-object-lock-legal-hold", "x-amz-tagging",
    "x-amz-website-redirect-location", "x-amz-grant-full-control", "x-amz-grant-read",
    "x-amz-grant-read-acp", "x-amz-grant-write-acp",
)
_OK_ACLS = ("private", "bucket-owner-full-control")


def check_unsupported(req: Request) -> None:
    for h in _UNSUPPORTED_PUT_HEADERS:
        if h in req.headers:
            raise S3Error("NotImplemented", f"{h} is not supported")
    acl = req.headers.get("x-amz-acl")
    if acl is not None and acl not in _OK_ACLS:
        raise S3Error("NotImplemented", f"x-amz-acl {acl} is not supported")
    sc = req.headers.get("x-amz-storage-class", "STANDARD")
    if sc != "STANDARD":
        raise S3Error("NotImplemented", f"storage class {sc} is not supported")


class Body:
    """A request body received into a pooled, page-aligned buffer (no zero-filled bytearray per
    request): the engine writes it to flash in place (``staged``), then it goes back to the
    pool with ``release``. A plain body arrives as the server's chunks and is copied into the
    buffer by ``data()`` in a worker thread, keeping that 2 MiB copy off the event loop."""

    __slots__ = ("_pool", "_buf", "_n", "_chunks")

    def __init__(self, pool: BufferPool, n: int) -> None:
        self._pool = pool
        self._buf: AlignedBuffer | None = pool.acquire(align_up(n))
        self._n = n
        self._chunks: list[bytes] | None = None

    def target(self) -> memoryview:
        """Where a decoder writes the body (aws-chunked)."""
        assert self._buf is not None
        return self._buf.view[: self._n]

    def data(self) -> memoryview:
        """The body bytes; copies pending chunks in first (call off the event loop)."""
        view = self.target()
        if self._chunks is not None:
            pos = 0
            for c in self._chunks:
                view[pos : pos + len(c)] = c
                pos += len(c)
            self._chunks = None
        return view

    def staged(self) -> StagedPayload:
        self.data()
        assert self._buf is not None
        return StagedPayload(self._buf.view[: align_up(self._n)], self._n)

    def release(self) -> None:
        self._chunks = None
        if self._buf is not None:
            self._pool.release(self._buf)
            self._buf = None

    def __len__(self) -> int:
        return self._n


async def read_payload(s3: S3App, req: Request, call: Call) -> tuple[Body, dict[str, str], str]:
    """The request body in one pooled buffer: (payload, trailers, payload hash). The caller
    releases the body."""
    payload_hash = req.headers.get("x-amz-content-sha256", "")
    checksums.check_payload_hash_syntax(payload_hash)
    if payload_hash in sigv4.STREAMING_MODES or "aws-chunked" in req.headers.get(
            "content-encoding", ""):
        if payload_hash not in sigv4.STREAMING_MODES:
            raise S3Error("InvalidRequest", "aws-chunked bodies need x-amz-content-sha256 "
                          "STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER] or "
                          "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        declared = req.headers.get("x-amz-decoded-content-length")
        if declared is None or not declared.isdigit():
            raise S3Error("MissingContentLength",
                          "aws-chunked bodies need x-amz-decoded-content-length")
        n = int(declared)
        _check_size(n)
        body = Body(s3.pool, n)
        try:
            dec = chunked.AwsChunkedDecoder(body.target(), payload_hash, call.signing)
            # the encoded stream is the payload plus chunk headers and signatures (each chunk but
            # the last is at least 8 KiB, and its framing is under 100 bytes)
            await req.body_feed(dec.feed, n + n // 64 + 64 * limits.KiB)
            return body, dec.finish(), payload_hash
        except BaseException:
            body.release()
            raise
    length = req.content_length()
    if length is None:
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.")
    n = length
    _check_size(n)
    body = Body(s3.pool, n)
    try:
        body._chunks = await req.body_chunks(n)
    except BaseException:
        body.release()
        raise
    return body, {}, payload_hash


def _check_size(n: int) -> None:
    from kvstore.api.s3.http import check_body_size

    check_body_size(n)


def _checksum_headers(sums: dict[str, str]) -> Headers:
    return [(f"x-amz-checksum-{a}".encode(), v.encode()) for a, v in sums.items()]


def stored_etag(meta: BlockMeta, doc: dict[str, Any]) -> str:
    return doc.get("e") or meta.etag


def _store(s3: S3App, bucket: str, key: str, buf: bytearray | Body, meta: bytes,
           overwrite: bool) -> BlockMeta:
    """A put with S3 semantics, in a worker thread (``BlockService.run``). A fresh bytearray is
    donated to the DRAM tier; a pooled Body is written in place and copied for DRAM (it returns
    to the pool)."""
    b = s3.blocks
    if isinstance(buf, Body):
        data: object = buf.staged()
        donate = False
    else:
        data, donate = buf, True
    res = b.put_sync(bucket, key, data, meta=meta, overwrite=overwrite, donate=donate)
    if res.created:
        return res.meta
    if not overwrite:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified "
                      "did not hold")
    cur = b.head_sync(bucket, key)
    if cur is not None and cur.meta != meta:  # same bytes, new metadata: rewrite the record
        b.delete_sync(bucket, key)
        res = b.put_sync(bucket, key, data, meta=meta, overwrite=True, donate=donate)
        return res.meta
    return cur if cur is not None else res.meta


async def store_pod(s3: S3App, tenant: Tenant, bucket: str, key: str, data: bytearray,
                    meta: bytes) -> BlockMeta | None:
    """An overwriting put of a whole object (CopyObject, CompleteMultipartUpload) in the pod:
    stored here when this node is a replica (``_store``), and at the block's other live
    replicas over their bulk ports with the same S3 metadata. The stored ``BlockMeta`` when
    this node keeps a copy, else None (the caller reports what it sent)."""
    local, others = s3.blocks.pod_targets(bucket, key)
    bm = await s3.blocks.run(_store, s3, bucket, key, data, meta, True) if local else None
    await s3.blocks.put_replicas(tenant, bucket, key, data, others, overwrite=True, meta=meta)
    return bm


async def put_object(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    check_unsupported(req)
    inm = req.headers.get("if-none-match")
    if inm is not None and inm.strip() != "*":
        raise S3Error("NotImplemented", "If-None-Match on PUT supports only *")
    if_match = req.headers.get("if-match")
    buf, trailers, payload_hash = await read_payload(s3, req, call)
    try:
        local, others = s3.blocks.pod_targets(req.bucket, req.key)
        if not local:
            return await _put_owner(s3, req, call, send, buf, trailers, payload_hash, inm,
                                    if_match, others)
        return await _put_body(s3, req, send, buf, trailers, payload_hash, inm, if_match,
                               call, others)
    finally:
        buf.release()


async def _put_body(s3: S3App, req: Request, send: Send, buf: Body, trailers: dict[str, str],
                    payload_hash: str, inm: str | None, if_match: str | None,
                    call: Call | None = None, others: Sequence[NodeInfo] = ()) -> tuple[int, int]:
    """A PUT stored here; in a pod with replicas, also at the other replicas ``others``."""
    bucket, key = req.bucket, req.key
    hdrs = checksums.object_headers(req.headers)
    um = checksums.user_metadata(req.headers)

    def work() -> tuple[BlockMeta, dict[str, str], str]:
        sums, md5_hex = checksums.verify(buf.data(), req.headers, trailers, payload_hash)
        if if_match is not None:
            cur = s3.blocks.head_sync(bucket, key)
            if cur is None:
                raise NotFound("The specified key does not exist.")
            check_conditions({"if-match": if_match}, stored_etag(
                cur, checksums.unpack_meta(cur.meta)), cur.created)
        meta = checksums.pack_meta(hdrs, um, sums, md5_hex)
        bm = _store(s3, bucket, key, buf, meta, overwrite=inm is None)
        return bm, sums, md5_hex

    bm, sums, md5_hex = await s3.blocks.run(work)
    if call is not None:  # the other replicas (and a stale copy at the previous owner)
        await s3.blocks.put_replicas(call.tenant, bucket, key, buf.data(), list(others),
                                     overwrite=inm is None, meta=bm.meta)
    etag = md5_hex or stored_etag(bm, checksums.unpack_meta(bm.meta))
    headers = [(b"etag", f'"{etag}"'.encode())] + _checksum_headers(sums)
    headers.append((b"x-amz-request-id", req.request_id.encode()))
    await respond(send, 200, headers)
    return 200, len(buf)


def _object_headers(req: Request, meta: BlockMeta, doc: dict[str, Any], ranged: bool) -> Headers:
    out: Headers = [
        (b"etag", f'"{stored_etag(meta, doc)}"'.encode()),
        (b"last-modified", http_date(meta.created).encode()),
        (b"accept-ranges", b"bytes"),
        (b"x-amz-request-id", req.request_id.encode()),
    ]
    hdrs = dict(doc["h"])
    hdrs.setdefault("content-type", "binary/octet-stream")
    for q, h in (("response-content-type", "content-type"),
                 ("response-content-disposition", "content-disposition"),
                 ("response-content-encoding", "content-encoding"),
                 ("response-content-language", "content-language"),
                 ("response-cache-control", "cache-control"),
                 ("response-expires", "expires")):
        if q in req.query:
            hdrs[h] = req.query[q]
    out += [(k.encode(), v.encode("latin-1", "replace")) for k, v in hdrs.items()]
    out += [(f"x-amz-meta-{k}".encode(), v.encode("latin-1", "replace"))
            for k, v in doc["u"].items()]
    if not ranged and req.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
        out += _checksum_headers(doc["c"])
    if meta.expires:
        out.append((b"x-amz-expiration", http_date(meta.expires).encode()))
    return out


def _check_version(req: Request) -> None:
    vid = req.query.get("versionId")
    if vid is not None and vid != "null":
        raise S3Error("InvalidArgument", "Invalid version id specified")
    if "partNumber" in req.query:
        raise S3Error("NotImplemented", "GET/HEAD by partNumber is not supported")


def _payload_out(view: BlockView,
                 r: tuple[int, int] | None) -> tuple[bytes | memoryview, str]:
    """The bytes ``r`` of the block (None: all) to send, valid after the engine's view is
    released; ``view`` holds bytes [view.offset, view.offset + len(view.payload)), which must
    include ``r``. A DRAM-tier block is immutable (``view.stable``): its underlying object is
    sent as is (zero copy), and a reference keeps it alive even if the tier evicts it
    meanwhile. Anything else (a flash read into a pooled buffer) is copied once. The second
    item is the tier label for metrics."""
    payload, base = view.payload, view.offset
    lo, hi = (0, view.meta.length) if r is None else r
    if not base <= lo <= hi <= base + len(payload):
        raise RuntimeError(f"engine returned bytes {base}+{len(payload)}, not {lo}-{hi}")
    part = payload[lo - base : hi - base]
    return (part, "dram") if view.stable else (bytes(part), "flash")


async def _put_owner(s3: S3App, req: Request, call: Call, send: Send, buf: Body,
                     trailers: dict[str, str], payload_hash: str, inm: str | None,
                     if_match: str | None, owners: Sequence[NodeInfo]) -> tuple[int, int]:
    """PUT of a block other nodes own: verified here (signature payload hash, checksums),
    stored at each live replica over its bulk port with its S3 metadata (content type,
    x-amz-meta-*, checksums, the MD5 ETag: ``PutBatch.metas``), so a GET or HEAD through any
    node answers the same headers. An owner that does not answer is a skipped write (200,
    counted in kvstore_forwarded_requests_total, logged)."""
    if if_match is not None:
        raise S3Error("NotImplemented", "If-Match on PUT of a block another node owns")
    data = buf.data()
    hdrs = checksums.object_headers(req.headers)
    um = checksums.user_metadata(req.headers)
    sums, md5_hex = await s3.blocks.run(checksums.verify, data, req.headers, trailers,
                                        payload_hash)
    meta = checksums.pack_meta(hdrs, um, sums, md5_hex)
    created = await s3.blocks.put_replicas(call.tenant, req.bucket, req.key, data,
                                           list(owners), overwrite=inm is None, meta=meta)
    if inm is not None and created is False:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified "
                      "did not hold")
    etag = md5_hex or f"{checksum_of(data):016x}"
    headers = [(b"etag", f'"{etag}"'.encode())] + _checksum_headers(sums)
    headers.append((b"x-amz-request-id", req.request_id.encode()))
    await respond(send, 200, headers)
    return 200, len(buf)


async def get_object(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    _check_version(req)
    bucket, key, rng = req.bucket, req.key, req.headers.get("range")
    ask = range_request(rng)

    def serve(view: BlockView | None) -> tuple[BlockMeta, tuple[bytes | memoryview, str],
                                               tuple[int, int] | None]:
        if view is None:
            raise NotFound("The specified key does not exist.")
        meta = view.meta
        doc = checksums.unpack_meta(meta.meta)
        check_conditions(req.headers, stored_etag(meta, doc), meta.created)
        r = parse_range(rng, meta.length)
        return meta, _payload_out(view, r), r

    # a DRAM hit is served inline; otherwise only the chunks covering the range come off flash
    meta, (body, req.tier), r = await s3.blocks.read(bucket, key, serve, span=ask,
                                                     tenant=call.tenant)
    doc = checksums.unpack_meta(meta.meta)  # small; parsed again off the worker thread
    headers = _object_headers(req, meta, doc, r is not None)
    status = 200
    if r is not None:
        status = 206
        headers.append((b"content-range", f"bytes {r[0]}-{r[1] - 1}/{meta.length}".encode()))
    await respond(send, status, headers, body)
    return status, len(body)


async def head_object(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    _check_version(req)
    meta = await s3.blocks.head(req.bucket, req.key, tenant=call.tenant)
    if meta is None:
        raise NotFound("The specified key does not exist.")
    doc = checksums.unpack_meta(meta.meta)
    check_conditions(req.headers, stored_etag(meta, doc), meta.created)
    r = parse_range(req.headers.get("range"), meta.length)
    headers = _object_headers(req, meta, doc, r is not None)
    status, n = 200, meta.length
    if r is not None:
        status, n = 206, r[1] - r[0]
        headers.append((b"content-range", f"bytes {r[0]}-{r[1] - 1}/{meta.length}".encode()))
    await respond(send, status, headers, b"", content_length=n)
    return status, 0


async def delete_object(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    _check_version(req)
    await s3.blocks.delete(call.tenant, req.bucket, req.key)
    await respond(send, 204, [(b"x-amz-request-id", req.request_id.encode())])
    return 204, 0


async def delete_objects(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    body = await req.small_body(limits.s3_xml_body_bytes_max)
    if "content-md5" in req.headers or any(h.startswith("x-amz-checksum-") for h in req.headers):
        checksums.verify(memoryview(body), req.headers, {}, req.headers.get(
            "x-amz-content-sha256", ""))
    keys, quiet = parse_delete(body)
    if len(keys) > limits.delete_objects_max:
        raise S3Error("MalformedXML", f"at most {limits.delete_objects_max} keys per request")

    def work() -> list[str]:
        parts = []
        for k in keys:
            try:
                s3.blocks.delete_sync(req.bucket, k)
                if not quiet:
                    parts.append(f"<Deleted>{tag('Key', k)}</Deleted>")
            except Exception as exc:  # one bad key must not fail the batch
                _status, name, msg = classify(exc)
                parts.append(f"<Error>{tag('Key', k)}{tag('Code', name)}"
                             f"{tag('Message', msg)}</Error>")
        return parts

    async def pod_work() -> list[str]:  # in a pod: each key at its replicas
        parts = []
        for k in keys:
            try:
                await s3.blocks.delete(call.tenant, req.bucket, k)
                if not quiet:
                    parts.append(f"<Deleted>{tag('Key', k)}</Deleted>")
            except Exception as exc:  # one bad key must not fail the batch
                _status, name, msg = classify(exc)
                parts.append(f"<Error>{tag('Key', k)}{tag('Code', name)}"
                             f"{tag('Message', msg)}</Error>")
        return parts

    parts = await (pod_work() if s3.blocks.forward is not None else s3.blocks.run(work))
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())],
                  document("DeleteResult", parts))
    return 200, 0


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


async def copy_object(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    check_unsupported(req)
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
        check_conditions(conds, stored_etag(view.meta, doc), view.meta.created)
        return doc, bytearray(view.payload)

    try:  # the source read through the pod, the destination written through it
        doc, data = await s3.blocks.read(src_bucket, src_key, source, tenant=call.tenant)
    except S3Error as exc:
        if exc.name == "NotModified":  # copy preconditions answer 412, never 304
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you "
                          "specified did not hold") from None
        raise
    if directive == "REPLACE":
        doc["h"], doc["u"] = replace_hdrs, replace_um
    meta = checksums.pack_meta(doc["h"], doc["u"], doc["c"], doc.get("e", ""))
    stored = await store_pod(s3, call.tenant, req.bucket, req.key, data, meta)
    bm = stored or BlockMeta(req.bucket, req.key, len(data), checksum_of(data), 0, time.time(),
                             0.0, meta)
    etag = stored_etag(bm, checksums.unpack_meta(bm.meta))
    body = document("CopyObjectResult", [tag("LastModified", iso(bm.created or time.time())),
                                         f"<ETag>&quot;{esc(etag)}&quot;</ETag>"])
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())], body)
    return 200, bm.length
