"""GetObjectAttributes (``GET /bucket/key?attributes``): ETag, Checksum, ObjectParts,
StorageClass and ObjectSize of an object, from its record's metadata alone (a HEAD: DRAM, or
one header read; in a pod, the owning node), as AWS answers them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvstore import limits
from kvstore.api.errors import S3Error
from kvstore.api.s3 import checksums
from kvstore.api.s3.answer_cache import stored_etag
from kvstore.api.s3.http import Request, Send, http_date, respond
from kvstore.api.s3.numbers import ascii_uint
from kvstore.api.s3.objects import check_version_id
from kvstore.api.s3.xml import document, tag
from kvstore.errors import NotFound

if TYPE_CHECKING:
    from kvstore.api.s3.app import Call, S3App

ATTRIBUTES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")
_BY_LOWER = {a.lower(): a for a in ATTRIBUTES}
# x-amz-max-parts: AWS's default and most
MAX_PARTS_DEFAULT = 1000


def requested(headers: dict[str, str]) -> set[str]:
    """The attributes ``x-amz-object-attributes`` names (comma-separated, case as AWS's
    names, repeated headers already comma-joined); InvalidArgument when none or unknown."""
    raw = headers.get("x-amz-object-attributes", "")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if not names:
        raise S3Error("InvalidArgument", "The x-amz-object-attributes header specifying the "
                      "attributes to be retrieved is either missing or empty")
    out = set()
    for n in names:
        if n.lower() not in _BY_LOWER:
            raise S3Error("InvalidArgument", "Invalid attribute name specified.",
                          elements=(("ArgumentName", "x-amz-object-attributes"),
                                    ("ArgumentValue", n)))
        out.add(_BY_LOWER[n.lower()])
    return out


def _uint_header(headers: dict[str, str], name: str, default: int) -> int:
    v = headers.get(name)
    if v is None:
        return default
    n = ascii_uint(v.strip())
    if n is None:
        raise S3Error("InvalidArgument", f"{name} must be a non-negative integer",
                      elements=(("ArgumentName", name), ("ArgumentValue", v)))
    return n


def _sums_xml(sums: dict[str, str]) -> str:
    return "".join(tag(f"Checksum{a.upper()}", v) for a, v in sorted(sums.items()))


def _parts_xml(doc: dict[str, Any], marker: int, max_parts: int) -> str:
    sizes: list[int] = doc["p"]
    chosen = list(range(marker + 1, min(len(sizes), marker + max_parts) + 1))
    truncated = bool(chosen) and chosen[-1] < len(sizes)
    out = [tag("PartsCount", len(sizes)), tag("PartNumberMarker", marker)]
    if chosen:
        out.append(tag("NextPartNumberMarker", chosen[-1]))
    out += [tag("MaxParts", max_parts), tag("IsTruncated", "true" if truncated else "false")]
    for n in chosen:
        out.append(f"<Part>{tag('PartNumber', n)}{tag('Size', sizes[n - 1])}"
                   f"{_sums_xml(checksums.part_checksums(doc, n))}</Part>")
    return f"<ObjectParts>{''.join(out)}</ObjectParts>"


async def get_object_attributes(s3: S3App, req: Request, call: Call,
                                send: Send) -> tuple[int, int]:
    check_version_id(req)
    wanted = requested(req.headers)
    max_parts = min(_uint_header(req.headers, "x-amz-max-parts", MAX_PARTS_DEFAULT),
                    MAX_PARTS_DEFAULT)
    marker = min(_uint_header(req.headers, "x-amz-part-number-marker", 0),
                 limits.multipart_parts_max)
    meta = s3.blocks.head_here(req.bucket, req.key)
    if meta is None:
        meta = await s3.blocks.head(req.bucket, req.key, tenant=call.tenant)
        if meta is None:
            raise NotFound("The specified key does not exist.")
    doc = checksums.unpack_meta(meta.meta)
    fields = []
    if "ETag" in wanted:
        fields.append(tag("ETag", stored_etag(meta, doc)))
    if "Checksum" in wanted and doc["c"]:
        fields.append(f"<Checksum>{_sums_xml(doc['c'])}"
                      f"{tag('ChecksumType', doc.get('t', checksums.FULL_OBJECT))}</Checksum>")
    if "ObjectParts" in wanted and doc.get("p"):  # only an object uploaded in parts has them
        fields.append(_parts_xml(doc, marker, max_parts))
    if "StorageClass" in wanted:
        fields.append(tag("StorageClass", "STANDARD"))
    if "ObjectSize" in wanted:
        fields.append(tag("ObjectSize", meta.length))
    body = document("GetObjectAttributesResponse", fields)
    await respond(send, 200, [(b"content-type", b"application/xml"),
                              (b"last-modified", http_date(meta.created).encode()),
                              (b"x-amz-request-id", req.request_id.encode())], body)
    return 200, 0
