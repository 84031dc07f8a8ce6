"""Multipart upload: Create, UploadPart (and UploadPartCopy), Complete, Abort, ListParts,
ListMultipartUploads.

Parts wait in memory until Complete joins them into one block (one copy) and stores it with a
single ``engine.put``. Bounded: ``limits.multipart_uploads_max`` open uploads,
``limits.multipart_parts_max`` parts each, ``limits.block_bytes_max`` per upload and
``limits.multipart_staged_bytes_max`` across all uploads; uploads idle for
``limits.multipart_idle_seconds_max`` are dropped when room is needed. The completed object's
ETag is ``md5(part etags)-<parts>`` as S3 computes it.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import xxhash

from kvstore import limits
from kvstore.api.errors import S3Error
from kvstore.api.s3 import checksums, objects
from kvstore.api.s3.http import Request, Send, respond
from kvstore.api.s3.listing import iso
from kvstore.api.s3.xml import document, esc, parse_complete, tag
from kvstore.errors import Busy, EntityTooLarge, NotFound

if TYPE_CHECKING:
    from kvstore.api.s3.app import Call, S3App

_XML = (b"content-type", b"application/xml")


@dataclass
class Part:
    number: int
    data: bytes | bytearray
    etag: str
    sums: dict[str, str]
    modified: float


@dataclass
class Upload:
    upload_id: str
    bucket: str
    key: str
    owner: str
    initiated: float
    hdrs: dict[str, str]
    um: dict[str, str]
    parts: dict[int, Part] = field(default_factory=dict)
    used: float = 0.0

    @property
    def size(self) -> int:
        return sum(len(p.data) for p in self.parts.values())


class Uploads:
    """Open uploads of one server. Touched only from the event loop."""

    def __init__(self) -> None:
        self._by_id: dict[str, Upload] = {}
        self.staged_bytes = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def _reap(self, now: float) -> None:
        for u in [u for u in self._by_id.values()
                  if now - u.used > limits.multipart_idle_seconds_max]:
            self.abort(u)

    def create(self, bucket: str, key: str, owner: str, hdrs: dict[str, str],
               um: dict[str, str]) -> Upload:
        now = time.time()
        if len(self._by_id) >= limits.multipart_uploads_max:
            self._reap(now)
        if len(self._by_id) >= limits.multipart_uploads_max:
            raise Busy(f"more than {limits.multipart_uploads_max} multipart uploads are open")
        u = Upload(os.urandom(16).hex(), bucket, key, owner, now, hdrs, um, used=now)
        self._by_id[u.upload_id] = u
        return u

    def get(self, upload_id: str, bucket: str, key: str | None, owner: str) -> Upload:
        u = self._by_id.get(upload_id)
        if u is None or u.bucket != bucket or (key is not None and u.key != key) \
                or u.owner != owner:
            raise S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID "
                          "may be invalid, or the upload may have been aborted or completed.")
        u.used = time.time()
        return u

    def add_part(self, u: Upload, number: int, data: bytes | bytearray,
                 sums: dict[str, str]) -> Part:
        old = u.parts.get(number)
        delta = len(data) - (len(old.data) if old else 0)
        if u.size + delta > limits.block_bytes_max:
            raise EntityTooLarge(f"an object may hold at most {limits.block_bytes_max} bytes")
        if self.staged_bytes + delta > limits.multipart_staged_bytes_max:
            self._reap(time.time())
            if self.staged_bytes + delta > limits.multipart_staged_bytes_max:
                raise Busy("too many multipart bytes staged; complete or abort uploads")
        if u.upload_id not in self._by_id:  # aborted while the body was arriving
            raise S3Error("NoSuchUpload", "The specified upload does not exist.")
        part = Part(number, data, xxhash.xxh3_64_hexdigest(data), sums, time.time())
        u.parts[number] = part
        self.staged_bytes += delta
        return part

    def abort(self, u: Upload) -> None:
        if self._by_id.pop(u.upload_id, None) is not None:
            self.staged_bytes -= u.size
            u.parts.clear()

    def for_bucket(self, bucket: str, owner: str) -> list[Upload]:
        return sorted((u for u in self._by_id.values() if u.bucket == bucket and u.owner == owner),
                      key=lambda u: (u.key, u.initiated))


def _part_number(req: Request) -> int:
    v = req.query.get("partNumber", "")
    if not v.isdigit() or not 1 <= int(v) <= limits.multipart_parts_max:
        raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and "
                      f"{limits.multipart_parts_max}, inclusive")
    return int(v)


async def create(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    objects.check_unsupported(req)
    await req.discard_body()
    u = s3.uploads.create(req.bucket, req.key, call.tenant.name,
                          checksums.object_headers(req.headers),
                          checksums.user_metadata(req.headers))
    body = document("InitiateMultipartUploadResult", [
        tag("Bucket", req.bucket), tag("Key", req.key), tag("UploadId", u.upload_id)])
    headers = [_XML, (b"x-amz-request-id", req.request_id.encode())]
    algo = req.headers.get("x-amz-checksum-algorithm")
    if algo:
        headers.append((b"x-amz-checksum-algorithm", algo.encode()))
    await respond(send, 200, headers, body)
    return 200, 0


async def upload_part(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    number = _part_number(req)
    u = s3.uploads.get(req.query["uploadId"], req.bucket, req.key, call.tenant.name)
    if "x-amz-copy-source" in req.headers:
        return await _upload_part_copy(s3, req, call, send, u, number)
    body, trailers, payload_hash = await objects.read_payload(s3, req, call)
    try:
        def verify() -> dict[str, str]:
            return checksums.verify(body.data(), req.headers, trailers, payload_hash)[0]

        sums = await s3.blocks.run(verify)
        buf = bytes(body.data())  # parts are held until Complete; the pooled buffer goes back
    finally:
        body.release()
    part = s3.uploads.add_part(u, number, buf, sums)
    headers = [(b"etag", f'"{part.etag}"'.encode()),
               (b"x-amz-request-id", req.request_id.encode())]
    headers += [(f"x-amz-checksum-{a}".encode(), v.encode()) for a, v in sums.items()]
    await respond(send, 200, headers)
    return 200, len(buf)


async def _upload_part_copy(s3: S3App, req: Request, call: Call, send: Send, u: Upload,
                            number: int) -> tuple[int, int]:
    from kvstore.api.s3.http import check_conditions, parse_range

    src_bucket, src_key = objects.parse_copy_source(req.headers["x-amz-copy-source"])
    s3.check_bucket(call.tenant, src_bucket)
    await req.discard_body()
    rng = req.headers.get("x-amz-copy-source-range")
    conds = objects.copy_conditions(req.headers)

    def work(view: Any) -> bytes:
        if view is None:
            raise NotFound("The specified key does not exist.")
        doc = checksums.unpack_meta(view.meta.meta)
        check_conditions(conds, objects.stored_etag(view.meta, doc), view.meta.created)
        r = parse_range(rng, view.meta.length) if rng else None
        return bytes(view.payload if r is None else view.payload[r[0]:r[1]])

    # the source read through the pod (its owner may be another node)
    data = await s3.blocks.read(src_bucket, src_key, work, tenant=call.tenant)
    part = s3.uploads.add_part(u, number, data, {})
    body = document("CopyPartResult", [tag("LastModified", iso(part.modified)),
                                       f"<ETag>&quot;{part.etag}&quot;</ETag>"])
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())], body)
    return 200, len(data)


async def complete(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    u = s3.uploads.get(req.query["uploadId"], req.bucket, req.key, call.tenant.name)
    listed = parse_complete(await req.small_body(limits.s3_xml_body_bytes_max))
    if not listed:
        raise S3Error("MalformedXML", "You must specify at least one part")
    if len(listed) > limits.multipart_parts_max:
        raise S3Error("MalformedXML", f"at most {limits.multipart_parts_max} parts")
    parts: list[Part] = []
    prev = 0
    for number, etag in listed:
        if number <= prev:
            raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. "
                          "Parts must be ordered by part number.")
        prev = number
        p = u.parts.get(number)
        if p is None or p.etag != etag:
            raise S3Error("InvalidPart", "One or more of the specified parts could not be found. "
                          "The part may not have been uploaded, or the specified entity tag may "
                          "not match the part's entity tag.")
        parts.append(p)
    total = sum(len(p.data) for p in parts)
    if total > limits.block_bytes_max:
        raise EntityTooLarge(f"an object may hold at most {limits.block_bytes_max} bytes")
    etag = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in parts)).hexdigest()
    etag = f"{etag}-{len(parts)}"
    meta = checksums.pack_meta(u.hdrs, u.um, {}, etag)

    def join() -> bytearray:
        joined = bytearray(total)
        pos = 0
        for p in parts:
            joined[pos:pos + len(p.data)] = p.data
            pos += len(p.data)
        return joined

    # the parts stayed on this node; the finished object goes to its replicas in the pod
    await objects.store_pod(s3, call.tenant, u.bucket, u.key, await s3.blocks.run(join), meta)
    s3.uploads.abort(u)  # frees the parts
    body = document("CompleteMultipartUploadResult", [
        tag("Location", f"/{u.bucket}/{u.key}"), tag("Bucket", u.bucket), tag("Key", u.key),
        f"<ETag>&quot;{esc(etag)}&quot;</ETag>"])
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())], body)
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
        "<StorageClass>STANDARD</StorageClass>", *items])
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())], body)
    return 200, 0


async def list_uploads(s3: S3App, req: Request, call: Call, send: Send) -> tuple[int, int]:
    prefix = req.query.get("prefix", "")
    ups = [u for u in s3.uploads.for_bucket(req.bucket, call.tenant.name)
           if u.key.startswith(prefix)]
    max_s = req.query.get("max-uploads", str(limits.list_keys_max))
    n = min(int(max_s), limits.list_keys_max) if max_s.isdigit() else limits.list_keys_max
    page = ups[:n]
    items = [f"<Upload>{tag('Key', u.key)}{tag('UploadId', u.upload_id)}"
             f"{tag('Initiated', iso(u.initiated))}<StorageClass>STANDARD</StorageClass></Upload>"
             for u in page]
    body = document("ListMultipartUploadsResult", [
        tag("Bucket", req.bucket), "<KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>",
        tag("Prefix", prefix), tag("MaxUploads", n),
        tag("IsTruncated", "true" if len(ups) > n else "false"), *items])
    await respond(send, 200, [_XML, (b"x-amz-request-id", req.request_id.encode())], body)
    return 200, 0
