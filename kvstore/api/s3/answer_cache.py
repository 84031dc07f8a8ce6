"""Rendered GetObject/HeadObject answer headers per object version: ``AnswerCache``.

A HEAD's own work is small; rendering its answer (unpacking the msgpack record metadata,
formatting the ETag, the date, the content type, the user metadata, encoding every header) was
a third of kvstore's CPU per HEAD. Those headers are a pure function of the object's
``BlockMeta`` (which is immutable: a write, a copy, a Complete or a rewrite of the metadata makes
a new one, with a new write sequence number ``seq``), so they are rendered once per version and
kept here, keyed by (bucket, key).

Exact by construction, with no invalidation to miss: every request still asks the engine (or the
owning pod node) for the object's current ``BlockMeta`` first, and an entry is used only when its
``BlockMeta`` is that very object or equal to it in every field. An overwrite, a delete, an
eviction, an expiry or a write through another pod node changes (or removes) what the engine
answers, so the old entry simply stops matching and is replaced. Only the answer's rendering is
cached, never the lookup, the signature check or the policy check.

Bounded (``limits.s3_answer_cache_entries_max`` entries, oldest insertion dropped first) and
used on the event loop thread only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvstore import limits
from kvstore.api.s3 import checksums
from kvstore.api.s3.http import Headers, http_date
from kvstore.engine.types import BlockMeta

DEFAULT_CONTENT_TYPE = "binary/octet-stream"


@dataclass(frozen=True, slots=True)
class Rendered:
    """One object version's answer, less the request id: ``head`` goes before the
    ``x-amz-request-id`` header, ``tail`` after it; ``tail`` ends with the whole object's
    Content-Length (a ranged or ?partNumber answer builds its own headers from ``doc``)."""

    meta: BlockMeta
    doc: dict[str, Any]  # the unpacked record metadata (read only)
    etag: str  # unquoted
    head: Headers
    tail: Headers

    def headers(self, request_id: bytes) -> Headers:
        """The full answer's headers (a fresh list: the server may keep it)."""
        return [*self.head, (b"x-amz-request-id", request_id), *self.tail]


def stored_etag(meta: BlockMeta, doc: dict[str, Any]) -> str:
    """The object's ETag: the one stored with it (MD5, or md5-of-part-MD5s-N), else the block's
    xxh3 (objects written before MD5 ETags, under ``--etag xxh3``, or by the bulk port)."""
    return doc.get("e") or meta.etag


def render(meta: BlockMeta) -> Rendered:
    doc = checksums.unpack_meta(meta.meta)
    etag = stored_etag(meta, doc)
    head: Headers = [
        (b"etag", f'"{etag}"'.encode()),
        (b"last-modified", http_date(meta.created).encode()),
        (b"accept-ranges", b"bytes"),
    ]
    hdrs: dict[str, str] = doc["h"]
    tail: Headers = [(k.encode(), v.encode("latin-1", "replace")) for k, v in hdrs.items()]
    if "content-type" not in hdrs:
        tail.append((b"content-type", DEFAULT_CONTENT_TYPE.encode()))
    tail += [(f"x-amz-meta-{k}".encode(), checksums.meta_value(v))
             for k, v in doc["u"].items()]
    if meta.expires:
        tail.append((b"x-amz-expiration", http_date(meta.expires).encode()))
    tail.append((b"content-length", str(meta.length).encode()))
    return Rendered(meta, doc, etag, head, tail)


class AnswerCache:
    """(bucket, key) -> the ``Rendered`` answer of the version last served; see the module."""

    def __init__(self, entries_max: int = limits.s3_answer_cache_entries_max) -> None:
        if entries_max < 1:
            raise ValueError("entries_max must be >= 1")
        self.entries_max = entries_max
        self._entries: dict[tuple[str, str], Rendered] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, bucket: str, key: str, meta: BlockMeta) -> Rendered:
        """The rendered answer of ``meta``, the version the engine has just answered."""
        k = (bucket, key)
        hit = self._entries.get(k)
        if hit is not None and (hit.meta is meta or hit.meta == meta):
            return hit
        fresh = render(meta)
        entries = self._entries
        if hit is not None:
            del entries[k]
        elif len(entries) >= self.entries_max:
            del entries[next(iter(entries))]  # the oldest insertion
        entries[k] = fresh
        return fresh

    def forget(self, bucket: str, key: str) -> None:
        """Drop an entry (a delete: frees its memory early; correctness does not need it)."""
        self._entries.pop((bucket, key), None)
