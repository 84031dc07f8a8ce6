"""Client checksums (Content-MD5, x-amz-checksum-*, x-amz-content-sha256) and the S3 metadata
kept in the engine's per-block ``meta`` bytes (msgpack).

Verification runs before anything is stored: a mismatch raises and the engine is never called.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import crc32c as _crc32c
import msgpack
import xxhash
from awscrt import checksums as _crt

from kvstore import limits
from kvstore.api.errors import S3Error
from kvstore.api.s3 import sigv4


def _crc32(data: memoryview) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def _crc32c_fn(data: memoryview) -> bytes:
    return _crc32c.crc32c(data).to_bytes(4, "big")


def _crc64nvme(data: memoryview) -> bytes:
    return _crt.crc64nvme(data).to_bytes(8, "big")


def _sha1(data: memoryview) -> bytes:
    return hashlib.sha1(data).digest()


def _sha256(data: memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _sha512(data: memoryview) -> bytes:
    return hashlib.sha512(data).digest()


def _xxhash64(data: memoryview) -> bytes:
    return xxhash.xxh64_digest(data)


def _xxhash3(data: memoryview) -> bytes:
    return xxhash.xxh3_64_digest(data)


def _xxhash128(data: memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


ALGORITHMS: dict[str, tuple[Callable[[memoryview], bytes], int]] = {
    "crc32": (_crc32, 4),
    "crc32c": (_crc32c_fn, 4),
    "crc64nvme": (_crc64nvme, 8),
    "sha1": (_sha1, 20),
    "sha256": (_sha256, 32),
    "sha512": (_sha512, 64),
    "xxhash64": (_xxhash64, 8),
    "xxhash3": (_xxhash3, 8),
    "xxhash128": (_xxhash128, 16),
}
# The checksum types a multipart upload of each algorithm may have (the first is the default),
# as S3 allows them: CRCs combine into a full-object value, digests only into a composite one.
COMPOSITE, FULL_OBJECT = "COMPOSITE", "FULL_OBJECT"
MPU_TYPES: dict[str, tuple[str, ...]] = {
    "crc32": (COMPOSITE, FULL_OBJECT), "crc32c": (COMPOSITE, FULL_OBJECT),
    "crc64nvme": (FULL_OBJECT,), "sha1": (COMPOSITE,), "sha256": (COMPOSITE,),
    "sha512": (COMPOSITE,), "xxhash64": (COMPOSITE,), "xxhash3": (COMPOSITE,),
    "xxhash128": (COMPOSITE,),
}

# Headers stored with the object and returned by GET/HEAD.
STORED_HEADERS = ("content-type", "content-encoding", "content-disposition", "content-language",
                  "cache-control", "expires")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def digest(algo: str, data: memoryview) -> bytes:
    """The raw ``algo`` checksum of ``data`` (an ``ALGORITHMS`` name)."""
    return ALGORITHMS[algo][0](data)


def _b64decode(value: str, size: int) -> bytes | None:
    """The raw digest in a base64 header value, None when it is not one of ``size`` bytes."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def declared(headers: Mapping[str, str], trailers: Mapping[str, str]) -> dict[str, str]:
    """x-amz-checksum-<algo> values the client sent (header or aws-chunked trailer)."""
    out: dict[str, str] = {}
    for src in (headers, trailers):
        for name, value in src.items():
            if not name.startswith("x-amz-checksum-"):
                continue
            algo = name[len("x-amz-checksum-"):]
            if algo in ("algorithm", "mode", "type"):
                continue
            if algo not in ALGORITHMS:
                raise S3Error("InvalidRequest", f"unknown checksum header {name}")
            out[algo] = value.strip()
    return out


def verify(data: memoryview, headers: Mapping[str, str], trailers: Mapping[str, str],
           payload_hash: str, md5: bool = True,
           known: Mapping[str, str] | None = None) -> tuple[dict[str, str], str]:
    """Check every digest the client declared (call off the event loop). Returns (checksums to
    store, md5 hex: the ETag; "" when ``md5`` is False and no Content-MD5 was sent). ``known``:
    hex digests of ``data`` already computed as it arrived ("md5", "sha256"; intake.py)."""
    known = known or {}
    md5_hex = ""
    cmd5 = headers.get("content-md5")
    if cmd5 is not None:
        want = _b64decode(cmd5, 16)
        if want is None:
            raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
        got = bytes.fromhex(known["md5"]) if "md5" in known else hashlib.md5(data).digest()
        if got != want:
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we "
                          "received.")
        md5_hex = got.hex()
    elif md5:
        md5_hex = known.get("md5") or hashlib.md5(data).hexdigest()
    if payload_hash and payload_hash != sigv4.UNSIGNED_PAYLOAD \
            and payload_hash not in sigv4.STREAMING_MODES:
        sha = known.get("sha256") or hashlib.sha256(data).hexdigest()
        if sha != payload_hash.lower():
            raise S3Error("XAmzContentChecksumMismatch",
                          "The provided 'x-amz-content-sha256' header does not match what was "
                          "computed.")
    sums = declared(headers, trailers)
    for algo, value in sums.items():
        fn, size = ALGORITHMS[algo]
        # a value that is not even a digest of the right size cannot match either: BadDigest
        if _b64decode(value, size) != fn(data):
            raise S3Error("BadDigest", f"The {algo.upper()} you specified did not match the "
                          "calculated checksum.")
    return sums, md5_hex


def decode(algo: str, value: str) -> bytes | None:
    """The raw digest of an ``algo`` checksum header value (None: not a valid one)."""
    return _b64decode(value, ALGORITHMS[algo][1])


def composite(algo: str, part_digests: list[bytes]) -> str:
    """A COMPOSITE multipart checksum: the checksum of the parts' raw checksums, ``-N``."""
    return f"{b64(digest(algo, memoryview(b''.join(part_digests))))}-{len(part_digests)}"


def mpu_checksum(headers: Mapping[str, str]) -> tuple[str, str]:
    """CreateMultipartUpload's x-amz-checksum-algorithm and -type: (algo, type), ("", "")
    without an algorithm. A pair S3 does not allow is InvalidRequest."""
    algo = headers.get("x-amz-checksum-algorithm", "").strip().lower()
    kind = headers.get("x-amz-checksum-type", "").strip().upper()
    if not algo:
        if kind:
            raise S3Error("InvalidRequest", "x-amz-checksum-type needs "
                          "x-amz-checksum-algorithm")
        return "", ""
    if algo not in MPU_TYPES:
        raise S3Error("InvalidRequest", f"Checksum algorithm {algo} is not supported.")
    allowed = MPU_TYPES[algo]
    if kind and kind not in allowed:
        raise S3Error("InvalidRequest", f"The {kind} checksum type cannot be used with the "
                      f"{algo} checksum algorithm.")
    return algo, kind or allowed[0]


def check_payload_hash_syntax(payload_hash: str) -> None:
    """x-amz-content-sha256 must be a hex digest or one of the documented special values."""
    if not payload_hash or payload_hash == sigv4.UNSIGNED_PAYLOAD:
        return
    if payload_hash.startswith("STREAMING-"):
        if payload_hash not in sigv4.STREAMING_MODES:
            raise S3Error("NotImplemented", f"x-amz-content-sha256 {payload_hash} is not "
                          "supported")
        return
    if len(payload_hash) != 64 or any(c not in "0123456789abcdefABCDEF" for c in payload_hash):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                      "STREAMING-... or a hex SHA-256")


# --- S3 metadata in the engine's meta bytes ----------------------------------------------


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    um = {k[len("x-amz-meta-"):]: v for k, v in headers.items() if k.startswith("x-amz-meta-")}
    size = sum(len(k) + len(v) for k, v in um.items())
    if size > limits.s3_user_metadata_bytes_max:
        raise S3Error("MetadataTooLarge", "Your metadata headers exceed the maximum allowed "
                      f"metadata size ({limits.s3_user_metadata_bytes_max} bytes)")
    return um


def meta_value(v: str) -> bytes:
    """An x-amz-meta-* value as GET and HEAD answer it, as AWS documents: ASCII as it was sent;
    other text (the bytes read as UTF-8 where they are, as SigV4 verified them) RFC 2047
    encoded, ``=?UTF-8?B?...?=``, so the header stays ASCII whatever the client's decoding."""
    if v.isascii():
        return v.encode()
    text = sigv4.wire_text(v).encode("utf-8", "surrogatepass")
    return b"=?UTF-8?B?" + base64.b64encode(text) + b"?="


def object_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out = {h: headers[h] for h in STORED_HEADERS if h in headers}
    enc = out.get("content-encoding")
    if enc is not None:  # aws-chunked is a transfer detail, not the object's encoding
        items = enc.split(",")
        rest = [e for e in items if e.strip().lower() != "aws-chunked"]
        if len(rest) != len(items):  # otherwise kept exactly as sent
            enc = ",".join(rest).strip()
        if enc:
            out["content-encoding"] = enc
        else:
            del out["content-encoding"]
    return out


def pack_meta(hdrs: dict[str, str], um: dict[str, str], sums: dict[str, str],
              etag: str = "", *, parts: list[int] | None = None, kind: str = "",
              part_sums: dict[str, list[str]] | None = None) -> bytes:
    """The S3 side of a record, kept in its header (so it survives restarts): ``h`` stored
    headers, ``u`` user metadata, ``c`` checksums, ``e`` the ETag (absent: the block's xxh3,
    as objects written before MD5 ETags have it), ``p`` a multipart object's part sizes, ``t``
    its checksum type (absent: FULL_OBJECT), ``q`` its parts' checksums (algorithm -> one
    base64 value per part), kept only while the whole stays within
    ``limits.s3_part_checksums_meta_bytes_max`` (a part GET or GetObjectAttributes then
    answers none, as for parts uploaded without checksums)."""
    doc: dict[str, Any] = {"h": hdrs, "u": um, "c": sums}
    if etag:
        doc["e"] = etag
    if parts:
        doc["p"] = parts
    if kind and kind != FULL_OBJECT:
        doc["t"] = kind
    if part_sums:
        with_sums = msgpack.packb({**doc, "q": part_sums}, use_bin_type=True)
        if len(with_sums) <= limits.s3_part_checksums_meta_bytes_max:
            return with_sums
    return msgpack.packb(doc, use_bin_type=True)


def part_checksums(doc: Mapping[str, Any], number: int) -> dict[str, str]:
    """The checksums of part ``number`` of a stored multipart object ({} when not kept)."""
    q = doc.get("q")
    if not isinstance(q, dict):
        return {}
    return {a: v[number - 1] for a, v in q.items()
            if isinstance(v, list) and 0 < number <= len(v) and isinstance(v[number - 1], str)}


def unpack_meta(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {"h": {}, "u": {}, "c": {}}
    try:
        doc = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        doc = None
    if not isinstance(doc, dict):  # a block written by another front end (bulk port)
        return {"h": {}, "u": {}, "c": {}}
    doc.setdefault("h", {})
    doc.setdefault("u", {})
    doc.setdefault("c", {})
    return doc
