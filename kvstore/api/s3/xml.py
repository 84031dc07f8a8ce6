"""S3 XML: small builders for responses and a guarded parser for request bodies.

Responses are built as strings (no DOM): they are small and the field order is fixed by the S3
schema. Request bodies (DeleteObjects, CompleteMultipartUpload) are bounded in size and refused
if they carry a DOCTYPE, so entity expansion is impossible.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from urllib.parse import quote
from xml.sax.saxutils import escape

import defusedxml.ElementTree as defused
from defusedxml import DefusedXmlException

from kvstore.api.errors import S3Error

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'


def esc(s: object) -> str:
    return escape(str(s))


def enc(s: str, url: bool) -> str:
    """A key or prefix as ListObjects returns it (``encoding-type=url`` percent-encodes)."""
    return esc(quote(s, safe="/~-_.") if url else s)


def tag(name: str, value: object) -> str:
    return f"<{name}>{esc(value)}</{name}>"


def document(root: str, parts: Iterable[str]) -> bytes:
    return (f'{_HEAD}<{root} xmlns="{S3_NS}">' + "".join(parts) + f"</{root}>").encode()


def local_name(tag_name: str) -> str:
    """An element's tag without its namespace."""
    return tag_name.rsplit("}", 1)[-1]


def parse(body: bytes, root: str) -> ET.Element:
    """Untrusted XML through defusedxml (a maintained hardened parser): no DTD at all
    (``forbid_dtd``), so no entity expansion (billion laughs), no external entities or DTDs,
    whatever the declared encoding (a UTF-16 body hides ``<!DOCTYPE`` from a byte search)."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML", "DOCTYPE is not allowed")
    try:
        el = defused.fromstring(body, forbid_dtd=True, forbid_entities=True,
                                forbid_external=True)
    except DefusedXmlException:
        raise S3Error("MalformedXML", "DOCTYPE is not allowed") from None
    except ET.ParseError:
        raise S3Error("MalformedXML",
                      "The XML you provided was not well-formed or did not validate.") from None
    if local_name(el.tag) != root:
        raise S3Error("MalformedXML", f"expected <{root}>")
    return el


def children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if local_name(c.tag) == name]


def text(el: ET.Element, name: str, default: str | None = None) -> str:
    for c in el:
        if local_name(c.tag) == name:
            return c.text or ""
    if default is None:
        raise S3Error("MalformedXML", f"missing <{name}>")
    return default


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """DeleteObjects body -> (keys, quiet)."""
    el = parse(body, "Delete")
    quiet = text(el, "Quiet", "false").strip().lower() == "true"
    keys = [text(o, "Key") for o in children(el, "Object")]
    return keys, quiet


PART_NUMBER_DIGITS_MAX = 9  # far past S3's 10,000 parts; the handlers check the real bound


def parse_complete(body: bytes) -> list[tuple[int, str, dict[str, str]]]:
    """CompleteMultipartUpload body -> [(part number, etag without quotes, {algorithm: the
    part's checksum listed, e.g. ChecksumCRC32 as "crc32"})]."""
    el = parse(body, "CompleteMultipartUpload")
    out = []
    for p in children(el, "Part"):
        n = text(p, "PartNumber").strip()
        # ASCII digits, a handful of them ('²'.isdigit() is true; int() refuses 4301 digits)
        if not (n.isascii() and n.isdigit() and len(n) <= PART_NUMBER_DIGITS_MAX):
            raise S3Error("MalformedXML", "PartNumber must be a positive integer")
        sums = {local_name(c.tag)[len("Checksum"):].lower(): (c.text or "").strip()
                for c in p if local_name(c.tag).startswith("Checksum")
                and local_name(c.tag) != "ChecksumType"}
        out.append((int(n), text(p, "ETag").strip().strip('"'), sums))
    return out
