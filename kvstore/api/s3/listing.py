"""ListObjectsV2, ListObjects (v1) and a minimal ListObjectVersions over ``engine.list_blocks``,
and the page of ListMultipartUploads over the open uploads.

``list_page`` is pure over a listing function (prefix, start_after, limit) -> (blocks,
truncated), so the delimiter and continuation logic is tested without a server. Keys under a
common prefix are skipped in one jump (start after ``prefix + U+10FFFF``), so a page costs at most
one engine call per entry it returns.

Markers (v1 ``marker``, ``start-after``, ``key-marker``) are exclusive, and an entry is a key or,
with a delimiter, the common prefix its key rolls up into: a marker inside a common prefix (the
prefix itself, as a NextMarker returns it, or a key under it) comes after that prefix, so the
page starts past every key under it (``after_marker``; Ceph RGW and MinIO do the same).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kvstore import limits
from kvstore.api.errors import S3Error
from kvstore.api.s3 import checksums
from kvstore.api.s3.numbers import ascii_uint
from kvstore.api.s3.uploads import Upload
from kvstore.api.s3.xml import document, enc, tag
from kvstore.engine.types import BlockMeta

ListFn = Callable[[str, str, int], tuple[list[BlockMeta], bool]]
_JUMP = "\U0010ffff"


@dataclass
class Page:
    items: list[BlockMeta] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    cursor: str = ""  # where the next page starts (exclusive)
    last: str = ""  # the last key or common prefix returned


def rolled_up(key: str, prefix: str, delimiter: str) -> str | None:
    """The common prefix ``key`` rolls up into under ``prefix`` and ``delimiter`` (None: it is
    listed as itself). ``key`` starts with ``prefix``."""
    if not delimiter:
        return None
    i = key.find(delimiter, len(prefix))
    return None if i < 0 else key[:i + len(delimiter)]


def after_marker(marker: str, prefix: str, delimiter: str) -> str:
    """Where a page starts (exclusive) after the caller's ``marker``: the marker, or past every
    key of the common prefix the marker falls in (see the module)."""
    cp = rolled_up(marker, prefix, delimiter) if marker.startswith(prefix) else None
    return marker if cp is None else cp + _JUMP


def list_page(fn: ListFn, prefix: str, delimiter: str, start_after: str, max_keys: int) -> Page:
    """One page of at most ``max_keys`` entries (keys and common prefixes) after
    ``start_after``. ``max_keys`` 0 is an empty page that is not truncated, as S3 answers it
    (there is no cursor to go on from)."""
    page = Page(cursor=start_after)
    if max_keys <= 0:
        return page
    rounds = 0
    while True:
        rounds += 1
        if rounds > max_keys + 2:  # cannot happen: each round adds an entry or ends
            break
        room = max_keys - len(page.items) - len(page.prefixes)
        if room <= 0:
            beyond, _ = fn(prefix, page.cursor, 1)
            page.truncated = bool(beyond)
            break
        blocks, more = fn(prefix, page.cursor, room)
        if not blocks:
            break
        jumped = False
        for b in blocks:
            if delimiter:
                rest = b.key[len(prefix):]
                i = rest.find(delimiter)
                if i >= 0:
                    cp = prefix + rest[:i + len(delimiter)]
                    if not page.prefixes or page.prefixes[-1] != cp:
                        page.prefixes.append(cp)
                    page.last = cp
                    page.cursor = cp + _JUMP
                    jumped = True
                    break
            page.items.append(b)
            page.last = page.cursor = b.key
            if len(page.items) + len(page.prefixes) >= max_keys:
                break
        if not jumped and not more and len(page.items) + len(page.prefixes) < max_keys:
            break
    return page


def encode_token(cursor: str) -> str:
    return base64.urlsafe_b64encode(cursor.encode("utf-8", "surrogatepass")).decode()


def decode_token(token: str) -> str:
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode(
            "utf-8", "surrogatepass")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect") from None


def max_keys(query: Mapping[str, str]) -> int:
    v = query.get("max-keys", str(limits.list_keys_max))
    n = ascii_uint(v)
    if n is None:
        raise S3Error("InvalidArgument", "max-keys must be a non-negative integer")
    return min(n, limits.list_keys_max)


def iso(ts: float) -> str:
    import time

    ms = int((ts - int(ts)) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{ms:03d}Z"


def etag_of(b: BlockMeta) -> str:
    doc = checksums.unpack_meta(b.meta)
    return doc.get("e") or b.etag


def owner_name(owner: str) -> str:
    """The name S3 answers for a bucket owner: its tenant name, "kvstore" in development
    mode (as ListBuckets names it)."""
    return owner or "kvstore"


def owner_xml(owner: str) -> str:
    """An Owner (or Initiator) element's content: ``owner_name`` as ID and DisplayName."""
    name = owner_name(owner)
    return f"{tag('ID', name)}{tag('DisplayName', name)}"


def _contents(b: BlockMeta, url: bool, el: str = "Contents", extra: str = "",
              owner: str | None = None) -> str:
    who = "" if owner is None else f"<Owner>{owner_xml(owner)}</Owner>"
    return (f"<{el}><Key>{enc(b.key, url)}</Key>{extra}"
            f"{tag('LastModified', iso(b.created))}{tag('ETag', chr(34) + etag_of(b) + chr(34))}"
            f"{tag('Size', b.length)}{who}<StorageClass>STANDARD</StorageClass></{el}>")


def _prefixes(page: Page, url: bool) -> str:
    return "".join(f"<CommonPrefixes><Prefix>{enc(p, url)}</Prefix></CommonPrefixes>"
                   for p in page.prefixes)


def url_encoding(query: Mapping[str, str]) -> bool:
    """encoding-type: url (True), absent (False), else InvalidArgument."""
    et = query.get("encoding-type")
    if et not in (None, "url"):
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request")
    return et == "url"


def v2(fn: ListFn, bucket: str, query: Mapping[str, str], owner: str = "") -> bytes:
    url = url_encoding(query)
    prefix, delim = query.get("prefix", ""), query.get("delimiter", "")
    token = query.get("continuation-token")
    start_after = query.get("start-after", "")
    cursor = decode_token(token) if token else after_marker(start_after, prefix, delim)
    n = max_keys(query)
    page = list_page(fn, prefix, delim, cursor, n)
    parts = [tag("Name", bucket), f"<Prefix>{enc(prefix, url)}</Prefix>"]
    if delim:
        parts.append(f"<Delimiter>{enc(delim, url)}</Delimiter>")
    parts += [tag("MaxKeys", n), tag("KeyCount", len(page.items) + len(page.prefixes)),
              tag("IsTruncated", "true" if page.truncated else "false")]
    if token is not None:  # echoed as sent, an empty one too (S3 does)
        parts.append(tag("ContinuationToken", token))
    if start_after:
        parts.append(f"<StartAfter>{enc(start_after, url)}</StartAfter>")
    if page.truncated:
        parts.append(tag("NextContinuationToken", encode_token(page.cursor)))
    if url:
        parts.append(tag("EncodingType", "url"))
    who = owner if query.get("fetch-owner") == "true" else None  # v2: only when asked
    parts += [_contents(b, url, owner=who) for b in page.items]
    parts.append(_prefixes(page, url))
    return document("ListBucketResult", parts)


def v1(fn: ListFn, bucket: str, query: Mapping[str, str], owner: str = "") -> bytes:
    url = url_encoding(query)
    prefix, delim = query.get("prefix", ""), query.get("delimiter", "")
    marker = query.get("marker", "")
    n = max_keys(query)
    page = list_page(fn, prefix, delim, after_marker(marker, prefix, delim), n)
    # v1's Prefix stays as sent under encoding-type=url: botocore decodes Marker, NextMarker,
    # Delimiter, Key and CommonPrefixes of a v1 answer but not its Prefix, as AWS answers it
    # (ceph/s3-tests test_bucket_list_prefix_unreadable); v2 and versions encode theirs
    parts = [tag("Name", bucket), tag("Prefix", prefix),
             f"<Marker>{enc(marker, url)}</Marker>", tag("MaxKeys", n)]
    if delim:
        parts.append(f"<Delimiter>{enc(delim, url)}</Delimiter>")
    parts.append(tag("IsTruncated", "true" if page.truncated else "false"))
    if page.truncated and delim:  # AWS: only with a delimiter (else the last Key is the marker)
        parts.append(f"<NextMarker>{enc(page.last, url)}</NextMarker>")
    if url:
        parts.append(tag("EncodingType", "url"))
    parts += [_contents(b, url, owner=owner) for b in page.items]
    parts.append(_prefixes(page, url))
    return document("ListBucketResult", parts)


def versions(fn: ListFn, bucket: str, query: Mapping[str, str], owner: str = "") -> bytes:
    """Unversioned buckets: every current object is one version with VersionId "null"."""
    url = url_encoding(query)
    prefix, delim = query.get("prefix", ""), query.get("delimiter", "")
    marker = query.get("key-marker", "")
    n = max_keys(query)
    page = list_page(fn, prefix, delim, after_marker(marker, prefix, delim), n)
    parts = [tag("Name", bucket), f"<Prefix>{enc(prefix, url)}</Prefix>",
             f"<KeyMarker>{enc(marker, url)}</KeyMarker>", "<VersionIdMarker></VersionIdMarker>",
             tag("MaxKeys", n)]
    if delim:
        parts.append(f"<Delimiter>{enc(delim, url)}</Delimiter>")
    parts.append(tag("IsTruncated", "true" if page.truncated else "false"))
    if page.truncated:
        parts += [f"<NextKeyMarker>{enc(page.last, url)}</NextKeyMarker>",
                  tag("NextVersionIdMarker", "null")]
    if url:
        parts.append(tag("EncodingType", "url"))
    extra = "<VersionId>null</VersionId><IsLatest>true</IsLatest>"
    parts += [_contents(b, url, "Version", extra, owner) for b in page.items]
    parts.append(_prefixes(page, url))
    return document("ListVersionsResult", parts)


@dataclass
class UploadsPage:
    """One page of ListMultipartUploads: uploads and common prefixes in key order, and where
    the next page starts (the last entry's key or prefix, and its upload id: "" for a prefix)."""

    uploads: list[Upload] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    next_key: str = ""
    next_upload_id: str = ""


def uploads_page(ups: Sequence[Upload], prefix: str, delimiter: str, key_marker: str,
                 upload_id_marker: str, max_uploads: int) -> UploadsPage:
    """``ups`` sorted by (key, initiated) as ``Uploads.for_bucket`` gives them. As S3: after
    ``key_marker`` (exclusive; ``after_marker``); with ``upload_id_marker`` also the uploads of
    the key ``key_marker`` itself that come after that upload (after those whose id sorts
    higher, when it is not open any more); ``upload_id_marker`` without ``key_marker`` is
    ignored. ``max_uploads`` 0 is an empty page, not truncated."""
    page = UploadsPage()
    if max_uploads <= 0:
        return page
    start = after_marker(key_marker, prefix, delimiter) if key_marker else ""
    same = [u.upload_id for u in ups if u.key == key_marker] if upload_id_marker else []
    for u in ups:
        if not u.key.startswith(prefix):
            continue
        if key_marker and u.key <= start:
            if u.key != start or not same:
                continue
            if upload_id_marker in same:  # the uploads after it, in the listing's order
                if same.index(u.upload_id) <= same.index(upload_id_marker):
                    continue
            elif u.upload_id <= upload_id_marker:
                continue
        cp = rolled_up(u.key, prefix, delimiter)
        if cp is not None and page.prefixes and page.prefixes[-1] == cp:
            continue
        if len(page.uploads) + len(page.prefixes) >= max_uploads:
            page.truncated = True
            break
        if cp is None:
            page.uploads.append(u)
            page.next_key, page.next_upload_id = u.key, u.upload_id
        else:
            page.prefixes.append(cp)
            page.next_key, page.next_upload_id = cp, ""
    return page
