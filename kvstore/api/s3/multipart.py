"""Multipart upload: Create, UploadPart (and UploadPartCopy), Complete, Abort, ListParts,
ListMultipartUploads.

Parts wait in memory (``uploads.Uploads``) until Complete joins them into one block (one copy)
and stores it with a single ``engine.put``. As S3: each part's ETag is its MD5, the object's
``md5(part MD5s)-N``; parts but the last hold at least ``limits.multipart_part_bytes_min``
(EntityTooSmall at Complete); the object is bounded by the block limit, refused as soon as a
part would pass it (EntityTooLarge, before its body is read when its length is declared); a
``ChecksumAlgorithm`` of Create makes every part carry (or get) that checksum and the object a
COMPOSITE or FULL_OBJECT one; If-Match / If-None-Match on Complete are conditional writes; a
repeated Complete of the same parts answers the same result.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import xxhash

from kvstore import limits
from kvstore.api.errors import S3Error
from kvstore.api.s3 import checksums, copying, listing, objects
from kvstore.api.s3.http import Request, Send, copy_source_range, copy_source_slice, respond
from kvstore.api.s3.listing import iso
from kvstore.api.s3.numbers import ascii_uint
from kvstore.api.s3.payload import too_large
from kvstore.api.s3.uploads import Completed, Part, Upload, Uploads
from kvstore.api.s3.xml import document, enc, esc, parse_complete, tag
from kvstore.errors import NotFound

if TYPE_CHECKING:
    from kvstore.api.s3.app import Call, S3App

__all__ = ["Uploads"]
_XML = (b"content-type", b"application/xml")


def _invalid_part() -> S3Error:
    return S3Error("InvalidPart", "One or more of the specified parts could not be found. The "
                   "part may not have been uploaded, or the specified entity tag may not match "
                   "the part's entity tag.")


def _object_size(req: Request) -> int | None:
    """x-amz-mp-object-size: the object's total size, when the client says it."""
    v = req.headers.get("x-amz-mp-object-size")
    if v is None:
        return None
    n = ascii_uint(v.strip())
    if n is None:
        raise S3Error("InvalidArgument", "x-amz-mp-object-size must be a byte count")
    return n


def _part_number(req: Request) -> int:
    n = ascii_uint(req.query.get("partNumber", ""))
    if n is None or not 1 <= n <= limits.multipart_parts_max:
        raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and "
                      f"{limits.multipart_parts_max}, inclusive")
    return n


async def create(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    objects.check_unsupported(req, lambda: s3.bucket_owner(call.tenant, req.bucket))
    await req.discard_body()
    algo, kind = checksums.mpu_checksum(req.headers)
    size = _object_size(req)
    if size is not None and size > limits.block_bytes_max:
        raise too_large()
    u = s3.uploads.create(req.bucket, req.key, call.tenant.name,
                          checksums.object_headers(req.headers),
                          checksums.user_metadata(req.headers), algo, kind)
    body = document("InitiateMultipartUploadResult", [
        tag("Bucket", req.bucket), tag("Key", req.key), tag("UploadId", u.upload_id)])
    headers = [_XML, (b"x-amz-request-id", req.request_id.encode())]
    if algo:
        headers += [(b"x-amz-checksum-algorithm", algo.upper().encode()),
                    (b"x-amz-checksum-type", kind.encode())]
    await respond(send, 200, headers, body)
    return 200, 0


def _part_sums(u: Upload, data: memoryview, sums: dict[str, str]) -> bytes:
    """The part's raw checksum of the upload's algorithm: the client's (verified), else computed
    here (added to ``sums``); a part checksummed with another algorithm is refused."""
    if not u.algo:
        return b""
    if u.algo not in sums:
        if sums:
            raise S3Error("InvalidRequest", "Checksum Type mismatch occurred, expected "
                          f"checksum Type: {u.algo}, actual checksum Type: {next(iter(sums))}")
        raw = checksums.digest(u.algo, data)
        sums[u.algo] = checksums.b64(raw)
        return raw
    raw_or_none = checksums.decode(u.algo, sums[u.algo])
    assert raw_or_none is not None  # verify() checked it
    return raw_or_none


def _new_part(u: Upload, number: int, data: bytes, sums: dict[str, str],
              md5_hex: str) -> Part:
    etag = md5_hex or xxhash.xxh3_64_hexdigest(data)
    digest = _part_sums(u, memoryview(data), sums)
    return Part(number, data, etag, sums, digest, time.time())


async def upload_part(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    number = _part_number(req)
    u = s3.uploads.get(req.query["uploadId"], req.bucket, req.key, call.tenant.name)
    if "x-amz-copy-source" in req.headers:
        return await _upload_part_copy(s3, req, call, send, u, number)
    # a part that would take the object past the block limit is refused before it is read
    body, trailers, payload_hash = await objects.read_payload(s3, req, call, u.room(number))
    try:
        def work() -> Part:
            sums, md5_hex = checksums.verify(body.data(), req.headers, trailers, payload_hash,
                                             md5=s3.etag_md5, known=body.digests)
            # parts are held until Complete; the pooled buffer goes back
            return _new_part(u, number, bytes(body.data()), sums, md5_hex)

        part = await s3.blocks.run(work)
    finally:
        body.release()
    s3.uploads.add_part(u, part)
    headers = [(b"etag", f'"{part.etag}"'.encode()),
               (b"x-amz-request-id", req.request_id.encode())]
    headers += [(f"x-amz-checksum-{a}".encode(), v.encode()) for a, v in part.sums.items()]
    await respond(send, 200, headers)
    return 200, len(part.data)


async def _upload_part_copy(s3: S3App, req: Request, call: Call, send: Send, u: Upload,
                            number: int) -> tuple[int, int]:
    src_bucket, src_key = copying.parse_copy_source(req.headers["x-amz-copy-source"])
    s3.check_bucket(call.tenant, src_bucket)
    await req.discard_body()
    raw_range = req.headers.get("x-amz-copy-source-range")
    rng = copy_source_range(raw_range) if raw_range is not None else None
    conds = copying.copy_conditions(req.headers)

    def work(view: Any) -> bytes:
        if view is None:
            raise NotFound("The specified key does not exist.")
        doc = checksums.unpack_meta(view.meta.meta)
        copying.check_copy_conditions(conds, objects.stored_etag(view.meta, doc),
                                      view.meta.created)
        r = copy_source_slice(rng, view.meta.length) if rng is not None else None
        return bytes(view.payload if r is None else view.payload[r[0]:r[1]])

    # the source read through the pod (its owner may be another node)
    data = await s3.blocks.read(src_bucket, src_key, work, tenant=call.tenant)
    md5_hex = (await s3.blocks.run(s3.md5_hex, data)) if s3.etag_md5 \
        else ""
    part = s3.uploads.add_part(u, _new_part(u, number, data, {}, md5_hex))
    body = document("CopyPartResult", [tag("LastModified", iso(part.modified)),
                                       f"<ETag>&quot;{part.etag}&quot;</ETag>"])
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())], body)
    return 200, len(part.data)


def _chosen_parts(u: Upload, listed: list[tuple[int, str, dict[str, str]]]) -> list[Part]:
    """The parts Complete lists, checked as S3 does: ascending numbers, each uploaded with that
    ETag (and those checksums), each but the last at least the minimum part size."""
    parts: list[Part] = []
    prev = 0
    for number, etag, sums in listed:
        if number <= prev:
            raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. "
                          "Parts must be ordered by part number.")
        prev = number
        p = u.parts.get(number)
        if p is None or p.etag != etag or any(p.sums.get(a) != v for a, v in sums.items()):
            raise _invalid_part()
        parts.append(p)
    for p in parts[:-1]:
        if len(p.data) < limits.multipart_part_bytes_min:
            raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum "
                          f"allowed object size: part {p.number} has {len(p.data)} bytes; "
                          f"each part but the last needs {limits.multipart_part_bytes_min}.")
    return parts


def _object_checksum(u: Upload, parts: list[Part], joined: bytearray,
                     declared: dict[str, str]) -> tuple[dict[str, str], str]:
    """(checksums to store, checksum type) of the completed object: the upload's algorithm as
    COMPOSITE (of the parts' checksums) or FULL_OBJECT (of its bytes); a checksum the client
    declared on Complete must match what it describes (BadDigest). In a worker thread."""
    out: dict[str, str] = {}
    kind = u.kind or checksums.FULL_OBJECT
    if u.algo:
        if u.kind == checksums.COMPOSITE:
            out[u.algo] = checksums.composite(u.algo, [p.digest for p in parts])
        else:
            out[u.algo] = checksums.b64(checksums.digest(u.algo, memoryview(joined)))
    for algo, value in declared.items():
        if u.algo and algo != u.algo:
            raise S3Error("InvalidRequest", f"The upload was created with the {u.algo} "
                          f"checksum algorithm, not {algo}.")
        want = out.get(algo)
        if want is None and ascii_uint(value.rpartition("-")[2]) is not None:
            # no algorithm on Create, a composite checksum at the end: of the parts' own
            raw = [checksums.decode(algo, p.sums.get(algo, "")) for p in parts]
            if any(r is None for r in raw):
                raise S3Error("InvalidRequest", f"a composite {algo} checksum needs every "
                              f"part uploaded with a {algo} checksum")
            kind = checksums.COMPOSITE
            want = out[algo] = checksums.composite(algo, [r for r in raw if r is not None])
        elif want is None:  # no algorithm on Create: a full-object checksum given at the end
            kind = checksums.FULL_OBJECT
            want = out[algo] = checksums.b64(checksums.digest(algo, memoryview(joined)))
        if value != want:
            raise S3Error("BadDigest", f"The {algo.upper()} you specified did not match the "
                          "calculated checksum.")
    return out, kind


async def complete(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    upload_id = req.query["uploadId"]
    listed = parse_complete(await req.small_body(limits.s3_xml_body_bytes_max))
    if not listed:
        raise S3Error("MalformedXML", "You must specify at least one part")
    if len(listed) > limits.multipart_parts_max:
        raise S3Error("MalformedXML", f"at most {limits.multipart_parts_max} parts")
    rid = (b"x-amz-request-id", req.request_id.encode())
    done = s3.uploads.completed(upload_id, req.bucket, req.key, call.tenant.name)
    if done is not None:  # a repeated Complete: the same answer for the same parts
        if done.listed != tuple((n, e) for n, e, _ in listed):
            raise _invalid_part()
        await respond(send, 200, [_XML, rid], done.body)
        return 200, 0
    u = s3.uploads.get(upload_id, req.bucket, req.key, call.tenant.name)
    if_match, inm = req.headers.get("if-match"), req.headers.get("if-none-match")
    if inm is not None and inm.strip() != "*":
        raise S3Error("NotImplemented", "If-None-Match on CompleteMultipartUpload supports "
                      "only *")
    declared = checksums.declared(req.headers, {})
    ctype = req.headers.get("x-amz-checksum-type", "").strip().upper()
    if ctype and u.algo and ctype != u.kind:
        raise S3Error("InvalidRequest", f"The upload was created with the {u.kind} checksum "
                      f"type, not {ctype}.")
    parts = _chosen_parts(u, listed)
    total = sum(len(p.data) for p in parts)
    if total > limits.block_bytes_max:
        raise too_large()
    size = _object_size(req)
    if size is not None and size != total:
        raise S3Error("InvalidRequest", f"x-amz-mp-object-size is {size} but the parts hold "
                      f"{total} bytes")
    digests = b"".join(bytes.fromhex(p.etag) for p in parts)
    etag = f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"

    def work() -> tuple[bytearray, dict[str, str], str, bytes]:
        joined = bytearray(total)
        pos = 0
        for p in parts:
            joined[pos:pos + len(p.data)] = p.data
            pos += len(p.data)
        sums, kind = _object_checksum(u, parts, joined, declared)
        # each part's own checksum of the object's algorithm, when every part has one
        per_part = {a: [p.sums[a] for p in parts] for a in sums
                    if all(a in p.sums for p in parts)}
        meta = checksums.pack_meta(u.hdrs, u.um, sums, etag,
                                   parts=[len(p.data) for p in parts], kind=kind,
                                   part_sums=per_part)
        return joined, sums, kind, meta

    joined, sums, kind, meta = await s3.blocks.run(work)
    local, others = s3.blocks.pod_targets(u.bucket, u.key)
    if local and not others:  # stored here only: conditional writes are checked here
        def store() -> None:
            if if_match is None:
                objects._store(s3, u.bucket, u.key, joined, meta, overwrite=inm is None)
                return
            with objects.write_lock(s3, u.bucket, u.key):
                objects.check_if_match(s3, u.bucket, u.key, if_match)
                objects._store(s3, u.bucket, u.key, joined, meta, overwrite=inm is None)

        await s3.blocks.run(store)
    else:  # the parts stayed on this node; the finished object goes to its replicas
        if if_match is not None or inm is not None:
            raise S3Error("NotImplemented", "a conditional CompleteMultipartUpload of an "
                          "object other pod nodes hold")
        await objects.store_pod(s3, call.tenant, u.bucket, u.key, joined, meta)
    fields = [tag("Location", f"/{u.bucket}/{u.key}"), tag("Bucket", u.bucket),
              tag("Key", u.key), f"<ETag>&quot;{esc(etag)}&quot;</ETag>"]
    fields += [tag(f"Checksum{a.upper()}", v) for a, v in sums.items()]
    if sums:
        fields.append(tag("ChecksumType", kind))
    body = document("CompleteMultipartUploadResult", fields)
    s3.uploads.finish(u, Completed(u.bucket, u.key, u.owner,
                                   tuple((n, e) for n, e, _ in listed), body, total, time.time()))
    await respond(send, 200, [_XML, rid], body)
    return 200, total


async def abort(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    u = s3.uploads.get(req.query["uploadId"], req.bucket, req.key, call.tenant.name)
    s3.uploads.abort(u)
    await respond(send, 204, [(b"x-amz-request-id", req.request_id.encode())])
    return 204, 0


async def list_parts(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    u = s3.uploads.get(req.query["uploadId"], req.bucket, req.key, call.tenant.name)
    marker_s = req.query.get("part-number-marker", "0")
    max_s = req.query.get("max-parts", str(limits.list_keys_max))
    if not marker_s.isdigit() or not max_s.isdigit():
        raise S3Error("InvalidArgument", "part-number-marker and max-parts must be integers")
    marker, max_parts = int(marker_s), min(int(max_s), limits.list_keys_max)
    owner = listing.owner_xml(s3.bucket_owner(call.tenant, req.bucket))
    numbers = sorted(n for n in u.parts if n > marker)
    page, truncated = numbers[:max_parts], len(numbers) > max_parts
    items = []
    for n in page:
        p = u.parts[n]
        sums = "".join(tag(f"Checksum{a.upper()}", v) for a, v in p.sums.items())
        items.append(f"<Part>{tag('PartNumber', n)}{tag('LastModified', iso(p.modified))}"
                     f"<ETag>&quot;{p.etag}&quot;</ETag>{tag('Size', len(p.data))}{sums}</Part>")
    body = document("ListPartsResult", [
        tag("Bucket", u.bucket), tag("Key", u.key), tag("UploadId", u.upload_id),
        tag("PartNumberMarker", marker),
        tag("NextPartNumberMarker", page[-1] if page else marker),
        tag("MaxParts", max_parts), tag("IsTruncated", "true" if truncated else "false"),
        f"<Initiator>{owner}</Initiator><Owner>{owner}</Owner>",
        "<StorageClass>STANDARD</StorageClass>", *items,
        *([tag("ChecksumAlgorithm", u.algo.upper()), tag("ChecksumType", u.kind)]
          if u.algo else [])])
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())], body)
    return 200, 0


async def list_uploads(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    """ListMultipartUploads: prefix, delimiter (CommonPrefixes), key-marker and
    upload-id-marker, max-uploads and encoding-type=url as S3 (``listing.uploads_page``)."""
    q = req.query
    url = listing.url_encoding(q)
    prefix, delim = q.get("prefix", ""), q.get("delimiter", "")
    key_marker = q.get("key-marker", "")
    uid_marker = q.get("upload-id-marker", "") if key_marker else ""  # S3 ignores it alone
    max_s = q.get("max-uploads", str(limits.list_keys_max))
    parsed = ascii_uint(max_s)
    if parsed is None:
        raise S3Error("InvalidArgument", "max-uploads must be a non-negative integer")
    n = min(parsed, limits.list_keys_max)
    page = listing.uploads_page(s3.uploads.for_bucket(req.bucket, call.tenant.name), prefix,
                                delim, key_marker, uid_marker, n)
    owner = listing.owner_xml(s3.bucket_owner(call.tenant, req.bucket))
    items = [f"<Upload><Key>{enc(u.key, url)}</Key>{tag('UploadId', u.upload_id)}"
             f"<Initiator>{owner}</Initiator><Owner>{owner}</Owner>"
             f"<StorageClass>STANDARD</StorageClass>{tag('Initiated', iso(u.initiated))}"
             + (f"{tag('ChecksumAlgorithm', u.algo.upper())}{tag('ChecksumType', u.kind)}"
                if u.algo else "") + "</Upload>"
             for u in page.uploads]
    parts = [tag("Bucket", req.bucket), f"<KeyMarker>{enc(key_marker, url)}</KeyMarker>",
             tag("UploadIdMarker", uid_marker),
             f"<NextKeyMarker>{enc(page.next_key, url)}</NextKeyMarker>",
             tag("NextUploadIdMarker", page.next_upload_id),
             f"<Prefix>{enc(prefix, url)}</Prefix>"]
    if delim:
        parts.append(f"<Delimiter>{enc(delim, url)}</Delimiter>")
    parts += [tag("MaxUploads", n), tag("IsTruncated", "true" if page.truncated else "false"),
              *items]
    parts += [f"<CommonPrefixes><Prefix>{enc(p, url)}</Prefix></CommonPrefixes>"
              for p in page.prefixes]
    if url:
        parts.append(tag("EncodingType", "url"))
    body = document("ListMultipartUploadsResult", parts)
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())], body)
    return 200, 0
