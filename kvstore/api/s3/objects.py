"""Object handlers: PutObject, GetObject, HeadObject, DeleteObject, DeleteObjects (CopyObject is in
``copying.py``, request bodies in ``payload.py``).

The hot paths (PUT, GET) do one engine call each, in the runner's thread pool: PUT verifies the
client's digests and stores in the same call (nothing is stored unless every digest matches);
GET checks the preconditions and copies the requested bytes out of the engine's view once; a
ranged GET of a block not in DRAM asks ``engine.read_range``, which reads (and verifies) only
the chunks covering the range instead of the whole block.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import xxhash

from kvstore import limits
from kvstore.api.errors import S3Error, classify
from kvstore.api.s3 import checksums
from kvstore.api.s3.answer_cache import Rendered, stored_etag
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
from kvstore.api.s3.numbers import ascii_uint
from kvstore.api.s3.payload import Body, check_unsupported, read_payload
from kvstore.api.s3.xml import document, parse_delete, tag
from kvstore.engine.types import BlockMeta
from kvstore.errors import NotFound
from kvstore.service.forward import checksum_of

if TYPE_CHECKING:
    from kvstore.api.s3.app import Call, S3App
    from kvstore.auth import Tenant
    from kvstore.engine.store import BlockView
    from kvstore.service.forward import NodeInfo

__all__ = ["Body", "check_unsupported", "read_payload", "stored_etag"]  # re-exported

_XML = (b"content-type", b"application/xml")


def _checksum_headers(sums: dict[str, str]) -> Headers:
    return [(f"x-amz-checksum-{a}".encode(), v.encode()) for a, v in sums.items()]


def _sum_headers(doc: dict[str, Any]) -> Headers:
    """x-amz-checksum-* and x-amz-checksum-type of a stored object (none without checksums)."""
    if not doc["c"]:
        return []
    return _checksum_headers(doc["c"]) + [
        (b"x-amz-checksum-type", str(doc.get("t", checksums.FULL_OBJECT)).encode())]


@contextmanager
def write_lock(s3: S3App, bucket: str, key: str) -> Iterator[None]:
    """Serializes the conditional writes (If-Match) of one key, check and store together (in a
    worker thread): two writers holding the same ETag cannot both succeed."""
    locks = s3.write_locks  # striped by xxh3 of "bucket/key" (never the salted hash())
    with locks[xxhash.xxh3_64_intdigest(f"{bucket}/{key}".encode("utf-8", "surrogatepass"))
               % len(locks)]:
        yield


def check_if_match(s3: S3App, bucket: str, key: str, if_match: str) -> None:
    """If-Match on a write (under ``write_lock``): 404 NoSuchKey when the object is absent, 412
    PreconditionFailed when its ETag is not one of those listed."""
    cur = s3.blocks.head_sync(bucket, key)
    if cur is None:
        raise NotFound("The specified key does not exist.")
    check_conditions({"if-match": if_match}, stored_etag(cur, checksums.unpack_meta(cur.meta)),
                     cur.created)


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
    check_unsupported(req, lambda: s3.bucket_owner(call.tenant, req.bucket))
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
        # the MD5 ETag (and any client digest) is computed here, in a worker thread: hashlib
        # releases the GIL, so concurrent PUTs hash on as many cores as the pool has threads
        sums, md5_hex = checksums.verify(buf.data(), req.headers, trailers, payload_hash,
                                         md5=s3.etag_md5, known=buf.digests)
        meta = checksums.pack_meta(hdrs, um, sums, md5_hex)
        if if_match is None:
            return _store(s3, bucket, key, buf, meta, overwrite=inm is None), sums, md5_hex
        with write_lock(s3, bucket, key):
            check_if_match(s3, bucket, key, if_match)
            return _store(s3, bucket, key, buf, meta, overwrite=inm is None), sums, md5_hex

    bm, sums, md5_hex = await s3.blocks.run(work)
    if call is not None:  # the other replicas (and a stale copy at the previous owner)
        await s3.blocks.put_replicas(call.tenant, bucket, key, buf.data(), list(others),
                                     overwrite=inm is None, meta=bm.meta)
    etag = md5_hex or stored_etag(bm, checksums.unpack_meta(bm.meta))
    headers = [(b"etag", f'"{etag}"'.encode())] + _checksum_headers(sums)
    if sums:
        headers.append((b"x-amz-checksum-type", checksums.FULL_OBJECT.encode()))
    headers.append((b"x-amz-request-id", req.request_id.encode()))
    await respond(send, 200, headers)
    return 200, len(buf)


_RESPONSE_OVERRIDES = (("response-content-type", "content-type"),
                       ("response-content-disposition", "content-disposition"),
                       ("response-content-encoding", "content-encoding"),
                       ("response-content-language", "content-language"),
                       ("response-cache-control", "cache-control"),
                       ("response-expires", "expires"))

# request headers that make GetObject/HeadObject answer other than the object's cached headers
_CONDITIONAL = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")


def _plain(req: Request) -> bool:
    """No query, no Range, no checksum mode: the answer is the version's cached ``Rendered``
    headers as they are (preconditions are still checked)."""
    h = req.headers
    return not req.query_pairs and "range" not in h and "x-amz-checksum-mode" not in h


def _conditional(req: Request) -> bool:
    h = req.headers
    return any(c in h for c in _CONDITIONAL)


def _object_headers(req: Request, ans: Rendered, ranged: bool, number: int = 0) -> Headers:
    """A GetObject/HeadObject answer's headers when ``_plain`` does not hold (the whole-object
    Content-Length left out). With checksum mode: the object's checksums for the whole object,
    part ``number``'s own for a part of a multipart object (none for any other range)."""
    meta, doc = ans.meta, ans.doc
    out: Headers = [*ans.head, (b"x-amz-request-id", req.request_id.encode())]
    hdrs = dict(doc["h"])
    hdrs.setdefault("content-type", "binary/octet-stream")
    for q, h in _RESPONSE_OVERRIDES:
        if q in req.query:
            hdrs[h] = req.query[q]
    out += [(k.encode(), v.encode("latin-1", "replace")) for k, v in hdrs.items()]
    out += [(f"x-amz-meta-{k}".encode(), checksums.meta_value(v))
            for k, v in doc["u"].items()]
    if req.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
        if not ranged or (number == 1 and not doc.get("p")):  # part 1 of a plain object: all
            out += _sum_headers(doc)
        elif number and (part := checksums.part_checksums(doc, number)):
            out += _checksum_headers(part)
            out.append((b"x-amz-checksum-type",
                        str(doc.get("t", checksums.FULL_OBJECT)).encode()))
    if meta.expires:
        out.append((b"x-amz-expiration", http_date(meta.expires).encode()))
    return out


def check_version_id(req: Request) -> None:
    """Refuses a version other than "null" (buckets here are unversioned)."""
    vid = req.query.get("versionId")
    if vid is not None and vid != "null":
        raise S3Error("InvalidArgument", "Invalid version id specified")


def _check_version(req: Request) -> int:
    """Refuses a version other than "null"; the partNumber asked for (0: none)."""
    check_version_id(req)
    pn = req.query.get("partNumber")
    if pn is None:
        return 0
    n = ascii_uint(pn)
    if n is None or not 1 <= n <= limits.multipart_parts_max:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and "
                      f"{limits.multipart_parts_max}, inclusive")
    if "range" in req.headers:
        raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber "
                      "query parameter")
    return int(pn)


def part_range(number: int, meta: BlockMeta, doc: dict[str, Any]) -> tuple[int, int, int]:
    """GET/HEAD ?partNumber: (start, end exclusive, parts count; 0 for an object not uploaded
    in parts, whose only part, 1, is the whole object). InvalidPartNumber past the last."""
    parts: list[int] = doc.get("p") or []
    if number > max(len(parts), 1):
        raise S3Error("InvalidPartNumber", "The requested partnumber is not satisfiable")
    if not parts:
        return 0, meta.length, 0
    lo = sum(parts[: number - 1])
    return lo, lo + parts[number - 1], len(parts)


def _part_headers(r: tuple[int, int], count: int, length: int) -> Headers:
    out: Headers = [(b"content-range", f"bytes {r[0]}-{r[1] - 1}/{length}".encode())]
    if count:
        out.append((b"x-amz-mp-parts-count", str(count).encode()))
    return out


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
                                        payload_hash, s3.etag_md5, buf.digests)
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


class _Replaced(Exception):
    """The object changed between the HEAD that located a part and the read of it."""


async def _part_span(s3: S3App, req: Request, call: Call,
                     number: int) -> tuple[int, int | None] | None:
    """What to read for ?partNumber: its offsets are in the record, so a HEAD (DRAM, or one
    header read) locates the part first; None (the whole block) when it cannot."""
    meta = await s3.blocks.head(req.bucket, req.key, tenant=call.tenant)
    if meta is None or not meta.length:
        return None
    try:
        lo, hi, _ = part_range(number, meta, checksums.unpack_meta(meta.meta))
    except S3Error:  # answered by the read, after the preconditions
        return None
    return lo, hi - lo


async def get_object(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    number = _check_version(req)
    bucket, key, rng = req.bucket, req.key, req.headers.get("range")
    ask = await _part_span(s3, req, call, number) if number else range_request(rng)
    conditional = _conditional(req)

    def serve(view: BlockView | None) -> tuple[BlockMeta, tuple[bytes | memoryview, str],
                                               tuple[int, int] | None, int]:
        if view is None:
            raise NotFound("The specified key does not exist.")
        meta = view.meta
        if not (number or rng or conditional):  # the whole object, unconditionally
            return meta, _payload_out(view, None), None, 0
        doc = checksums.unpack_meta(meta.meta)
        check_conditions(req.headers, stored_etag(meta, doc), meta.created)
        count = 0
        if number:
            lo, hi, count = part_range(number, meta, doc)
            r: tuple[int, int] | None = (lo, hi) if meta.length else None
            if r and not view.offset <= lo <= hi <= view.offset + len(view.payload):
                raise _Replaced()
        else:
            r = parse_range(rng, meta.length)
        return meta, _payload_out(view, r), r, count

    # a DRAM hit is served inline; otherwise only the chunks covering the range come off flash
    try:
        meta, (body, req.tier), r, count = await s3.blocks.read(bucket, key, serve, span=ask,
                                                                tenant=call.tenant)
    except _Replaced:  # rewritten since its part was located: read the new one whole
        meta, (body, req.tier), r, count = await s3.blocks.read(bucket, key, serve,
                                                                tenant=call.tenant)
    ans = s3.answers.get(bucket, key, meta)  # on the loop: the cache is not thread-safe
    if r is None and len(body) == meta.length and _plain(req):
        await _send(send, 200, ans.headers(req.request_id.encode()), body)
        return 200, len(body)
    headers = _object_headers(req, ans, r is not None, number)
    status = 200
    if r is not None:
        status = 206
        headers += _part_headers(r, count, meta.length)
    await respond(send, status, headers, body)
    return status, len(body)


async def head_object(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    number = _check_version(req)
    meta = s3.blocks.head_here(req.bucket, req.key)
    if meta is None:
        meta = await s3.blocks.head(req.bucket, req.key, tenant=call.tenant)
        if meta is None:
            raise NotFound("The specified key does not exist.")
    ans = s3.answers.get(req.bucket, req.key, meta)
    check_conditions(req.headers, ans.etag, meta.created)
    if _plain(req):
        await _send(send, 200, ans.headers(req.request_id.encode()), b"")
        return 200, 0
    count = 0
    if number:
        lo, hi, count = part_range(number, meta, ans.doc)
        r: tuple[int, int] | None = (lo, hi) if meta.length else None
    else:
        r = parse_range(req.headers.get("range"), meta.length)
    headers = _object_headers(req, ans, r is not None, number)
    status, n = 200, meta.length
    if r is not None:
        status, n = 206, r[1] - r[0]
        headers += _part_headers(r, count, meta.length)
    await respond(send, status, headers, b"", content_length=n)
    return status, 0


async def _send(send: Send, status: int, headers: Headers, body: bytes | memoryview) -> None:
    """An answer whose ``headers`` already hold its Content-Length."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def delete_object(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    if "partNumber" in req.query:
        raise S3Error("NotImplemented", "DELETE by partNumber is not supported")
    _check_version(req)
    await s3.blocks.delete(call.tenant, req.bucket, req.key)
    s3.answers.forget(req.bucket, req.key)
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
