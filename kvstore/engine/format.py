"""On-disk formats: segment header, record header, segment summary.

Every structure is a frozen dataclass with an explicit little-endian ``struct`` layout, a magic,
a format version and a CRC. All offsets are 4 KiB aligned so files can be read with O_DIRECT.

Segment file ``seg-<id>.kvs``::

    [0, 4096)       SegmentHeader (padded to one page)
    [4096, ...)     records, each starting on a page boundary

Record at page-aligned offset ``off``::

    off             RecordHeader fixed part, namespace, key, meta, [chunk table], CRC32 of all
                    of those
    inline payload  when header_len + payload_len <= 4096, the payload follows the header in the
                    same page and the record spans one page
    off + 4096      otherwise the payload starts on the next page (so it can be read with
                    O_DIRECT straight into a caller's aligned buffer) and the record spans
                    4096 + align_up(payload_len)

Record version 2 (written since ranged reads verify chunks; version 1 records stay readable)
adds a chunk table: the payload split into chunks of ``2**chunk_log2`` bytes (the fixed part's
former reserved byte; ``limits.record_chunk_bytes`` unless the header page is too full for that
table, then the smallest larger power of two that fits; 0 = no table), one xxh3-64 per chunk
(the last one partial), stored after the meta and covered by the header CRC. Only payloads of
two chunks or more carry one: for a smaller payload the whole-payload checksum is the chunk
checksum. A ranged read reads the header page and the chunks its range touches and verifies
each whole chunk; the whole-payload checksum stays the block's identity (etag, bulk protocol).

An encrypted record (``FLAG_ENCRYPTED``, ``crypto.py``) has no chunk table; after the chunk
table's place, before the CRC, it carries a trailer: the GCM nonce (12 bytes), the GCM tag (16)
and the xxh3-64 of the stored ciphertext (8), so that recovery and the checker verify stored
bytes without keys. ``checksum`` stays the xxh3-64 of the plaintext (the block's identity).

A torn or flipped record fails its header CRC or its payload checksum (xxh3-64). Recovery's
scan of an unsealed segment skips a record with an intact header and a bad payload (one
corrupt block) and truncates at the first bad header. Sealed segments get a summary file ``seg-<id>.sum`` (columnar,
CRC'd) so reopening does not scan them.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash
from kvstore_wire.checksum import block_checksum

from kvstore import limits
from kvstore.errors import CorruptRecord

PAGE = limits.io_alignment_bytes
FORMAT_VERSION = 1  # the segment header's version (its layout has not changed)
RECORD_VERSION = 2  # records written now: v1 plus the chunk table
RECORD_VERSIONS = (1, 2)  # records this code reads
CHUNK_LOG2 = limits.record_chunk_bytes.bit_length() - 1
CHUNK_LOG2_MIN = PAGE.bit_length() - 1  # chunks are whole pages (what a reader accepts)
CHUNK_LOG2_MAX = limits.block_bytes_max.bit_length()  # one chunk holds any block

SEGMENT_MAGIC = b"KVSSEG\x00\x01"
# magic, version, flags, reserved, id, created, segment_bytes, first_seq
_SEG = struct.Struct("<8sHHIQdQQ")
_SEG_CRC = struct.Struct("<I")

RECORD_MAGIC = b"KVR\x01"
# magic, version, flags, ns_len, chunk_log2 (v1: reserved, 0), key_len, meta_len, payload_len,
# seq, created, expires, checksum
_REC = struct.Struct("<4sBBBBHHIQddQ")
_CRC = struct.Struct("<I")
_CHUNK = struct.Struct("<Q")

FLAG_TOMBSTONE = 0x01
# A record written but void: its key was stored by another writer between the build of a batch
# and its reservation. Skipped by scans, never indexed; its bytes just fill the reserved range.
FLAG_VOID = 0x02
# The payload is AES-256-GCM ciphertext under its namespace's data key (crypto.py); the header
# carries the encryption trailer (_SEAL). Records without it are plaintext (written before
# encryption was turned on) and stay readable.
FLAG_ENCRYPTED = 0x04
# nonce, tag, xxh3-64 of the stored (encrypted) payload
_SEAL = struct.Struct(f"<{limits.gcm_nonce_bytes}s{limits.gcm_tag_bytes}sQ")
SEAL_BYTES = _SEAL.size

# The header (fixed part + names + meta + CRC) must fit in one page.
meta_bytes_max = (PAGE - _REC.size - limits.namespace_bytes_max - limits.key_bytes_max
                  - SEAL_BYTES - _CRC.size)
assert meta_bytes_max >= 2048, "record header page too small for metadata"
assert meta_bytes_max >= limits.s3_part_checksums_meta_bytes_max


# Payload checksum: the one block checksum, shared with the wire and the SDK (xxh3-64: fast,
# releases the GIL; payloads are not adversarial). A PUT's declared checksum is this function's.
checksum = block_checksum


def chunk_count(payload_len: int, chunk_log2: int) -> int:
    """Entries of a record's chunk table (0 when it has none)."""
    return 0 if not chunk_log2 else -(-payload_len >> chunk_log2)


def chunk_log2_for(header_len: int, payload_len: int) -> int:
    """The chunk size (log2) of a new record whose header without a table is ``header_len``
    bytes: ``limits.record_chunk_bytes``, or the smallest larger power of two whose table
    still fits in the header page; 0 (no table) for a payload of one chunk or when even two
    entries do not fit."""
    log2 = CHUNK_LOG2
    while payload_len > 1 << log2:
        if header_len + _CHUNK.size * chunk_count(payload_len, log2) <= PAGE:
            return log2
        log2 += 1
    return 0


def checksums(data: memoryview, chunk_log2: int) -> tuple[int, tuple[int, ...]]:
    """(xxh3-64 of ``data``, xxh3-64 of each chunk) in one pass over memory: each chunk is
    hashed on its own and fed to the whole-payload hash while it is in cache (GIL released)."""
    if not chunk_log2:
        return checksum(data), ()
    size = 1 << chunk_log2
    whole = xxhash.xxh3_64()
    table = []
    for i in range(0, len(data), size):
        part = data[i : i + size]
        table.append(xxhash.xxh3_64_intdigest(part))
        whole.update(part)
    return whole.intdigest(), tuple(table)


def digest_of(namespace: bytes, key: bytes) -> bytes:
    """Index key of a block: blake2b-128 of (namespace, key). Collision resistant, because keys
    are attacker-influenced in a shared deployment."""
    return hashlib.blake2b(namespace + b"\x00" + key, digest_size=16,
                           person=b"kvstore.idx.v1").digest()


def digests_of(namespace: bytes, keys: Sequence[str]) -> list[bytes]:
    """``digest_of`` for a batch of keys, validated; the shared prefix is hashed once."""
    base = hashlib.blake2b(namespace + b"\x00", digest_size=16, person=b"kvstore.idx.v1")
    out = []
    kmax = limits.key_bytes_max
    for k in keys:
        kb = k.encode("utf-8", "surrogatepass") if isinstance(k, str) else b""
        if not kb or len(kb) > kmax or b"\x00" in kb:
            from kvstore.keys import validate_key

            validate_key(k)  # raises the precise InvalidKey
        h = base.copy()
        h.update(kb)
        out.append(h.digest())
    return out


def align_up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    segment_id: int
    created: float
    segment_bytes: int
    # Every record of this segment has seq >= first_seq. A recycled file still holds the
    # records of its previous life after the new data; they have lower seqs, so a scan stops
    # at them instead of resurrecting them.
    first_seq: int = 0
    version: int = FORMAT_VERSION
    flags: int = 0

    def encode(self) -> bytes:
        body = _SEG.pack(SEGMENT_MAGIC, self.version, self.flags, 0, self.segment_id,
                         self.created, self.segment_bytes, self.first_seq)
        raw = body + _SEG_CRC.pack(zlib.crc32(body))
        return raw + bytes(PAGE - len(raw))

    @classmethod
    def decode(cls, buf: bytes | memoryview) -> SegmentHeader:
        if len(buf) < _SEG.size + _SEG_CRC.size:
            raise CorruptRecord("short segment header")
        body = bytes(buf[: _SEG.size])
        (crc,) = _SEG_CRC.unpack_from(buf, _SEG.size)
        if zlib.crc32(body) != crc:
            raise CorruptRecord("segment header CRC mismatch")
        magic, version, flags, _r, sid, created, seg_bytes, first_seq = _SEG.unpack(body)
        if magic != SEGMENT_MAGIC or version != FORMAT_VERSION:
            raise CorruptRecord("not a kvstore segment (magic/version)")
        return cls(sid, created, seg_bytes, first_seq, version, flags)


@dataclass(frozen=True, slots=True)
class RecordHeader:
    namespace: bytes
    key: bytes
    payload_len: int
    checksum: int
    seq: int
    created: float
    expires: float = 0.0
    meta: bytes = b""
    flags: int = 0
    version: int = RECORD_VERSION
    chunk_log2: int = 0  # chunk size of ``chunks`` (log2); 0 = no table
    chunks: tuple[int, ...] = ()  # xxh3-64 of each chunk of the payload
    # encryption trailer (FLAG_ENCRYPTED only): GCM nonce and tag, xxh3-64 of the ciphertext
    nonce: bytes = b""
    tag: bytes = b""
    sealed_checksum: int = 0

    @property
    def header_len(self) -> int:
        return header_len_for(self.namespace, self.key, self.meta, len(self.chunks),
                              self.encrypted)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)

    @property
    def stored_checksum(self) -> int:
        """xxh3-64 of the payload bytes as stored: the ciphertext's when encrypted."""
        return self.sealed_checksum if self.encrypted else self.checksum

    @property
    def chunk_bytes(self) -> int:
        """Chunk size of the table; the whole payload when there is none."""
        return 1 << self.chunk_log2 if self.chunks else max(self.payload_len, 1)

    @property
    def inline(self) -> bool:
        return self.header_len + self.payload_len <= PAGE

    @property
    def payload_offset(self) -> int:
        """Offset of the payload relative to the record start."""
        return self.header_len if self.inline else PAGE

    @property
    def span(self) -> int:
        """Bytes the record occupies in the segment (page aligned)."""
        return PAGE if self.inline else PAGE + align_up(self.payload_len)

    @property
    def tombstone(self) -> bool:
        return bool(self.flags & FLAG_TOMBSTONE)

    @property
    def void(self) -> bool:
        return bool(self.flags & FLAG_VOID)

    def encode_into(self, buf: memoryview) -> int:
        """Write the header at the start of ``buf``; returns header_len."""
        if len(self.namespace) > limits.namespace_bytes_max or len(self.key) > limits.key_bytes_max:
            raise ValueError("namespace or key too long for a record header")
        if len(self.meta) > meta_bytes_max:
            raise ValueError("meta too long for a record header")
        if self.version not in RECORD_VERSIONS:
            raise ValueError(f"unknown record version {self.version}")
        if (self.chunks or self.chunk_log2) and (
                self.version < 2 or len(self.chunks) != _table_len(self.payload_len,
                                                                   self.chunk_log2)):
            raise ValueError("chunk table does not match the payload length")
        if self.encrypted and (self.chunks or len(self.nonce) != limits.gcm_nonce_bytes
                               or len(self.tag) != limits.gcm_tag_bytes):
            raise ValueError("an encrypted record needs a nonce and a tag, and no chunk table")
        if self.header_len > PAGE:
            raise ValueError("record header does not fit in one page")
        n = _REC.size
        _REC.pack_into(buf, 0, RECORD_MAGIC, self.version, self.flags, len(self.namespace),
                       self.chunk_log2, len(self.key), len(self.meta), self.payload_len,
                       self.seq, self.created, self.expires, self.checksum)
        for part in (self.namespace, self.key, self.meta):
            buf[n : n + len(part)] = part
            n += len(part)
        for c in self.chunks:
            _CHUNK.pack_into(buf, n, c)
            n += _CHUNK.size
        if self.encrypted:
            _SEAL.pack_into(buf, n, self.nonce, self.tag, self.sealed_checksum)
            n += _SEAL.size
        _CRC.pack_into(buf, n, zlib.crc32(buf[:n]))
        return n + _CRC.size

    @classmethod
    def decode(cls, buf: bytes | memoryview) -> RecordHeader:
        """Parse and verify a header from the start of ``buf`` (at least one page or the whole
        header). Raises CorruptRecord on any inconsistency."""
        if len(buf) < _REC.size + _CRC.size:
            raise CorruptRecord("short record header")
        (magic, version, flags, ns_len, log2, key_len, meta_len, payload_len, seq, created,
         expires, csum) = _REC.unpack_from(buf, 0)
        if magic != RECORD_MAGIC:
            raise CorruptRecord("bad record magic")
        if version not in RECORD_VERSIONS:
            raise CorruptRecord(f"unknown record version {version}")
        if version < 2:
            log2 = 0  # the reserved byte of version 1
        n_chunks = _table_len(payload_len, log2)
        names_end = _REC.size + ns_len + key_len + meta_len
        end = names_end + _CHUNK.size * n_chunks
        sealed = bool(flags & FLAG_ENCRYPTED)
        if sealed and n_chunks:
            raise CorruptRecord("an encrypted record with a chunk table")
        end += _SEAL.size if sealed else 0
        if (end + _CRC.size > PAGE or end + _CRC.size > len(buf)
                or payload_len > limits.block_bytes_max or n_chunks < 0):
            raise CorruptRecord("record header lengths out of range")
        (crc,) = _CRC.unpack_from(buf, end)
        if zlib.crc32(buf[:end]) != crc:
            raise CorruptRecord("record header CRC mismatch")
        p = _REC.size
        ns = bytes(buf[p : p + ns_len])
        key = bytes(buf[p + ns_len : p + ns_len + key_len])
        meta = bytes(buf[p + ns_len + key_len : names_end])
        chunks = tuple(_CHUNK.unpack_from(buf, names_end + _CHUNK.size * i)[0]
                       for i in range(n_chunks))
        nonce, tag, sealed_csum = (_SEAL.unpack_from(buf, end - _SEAL.size) if sealed
                                   else (b"", b"", 0))
        return cls(ns, key, payload_len, csum, seq, created, expires, meta, flags, version,
                   log2, chunks, nonce, tag, sealed_csum)


def _table_len(payload_len: int, chunk_log2: int) -> int:
    """Entries a table of ``chunk_log2`` must have for ``payload_len``; -1 when that chunk size
    is not one a writer chooses (a table only for two chunks or more, chunks of whole pages)."""
    if not chunk_log2:
        return 0
    if not CHUNK_LOG2_MIN <= chunk_log2 <= CHUNK_LOG2_MAX or payload_len <= 1 << chunk_log2:
        return -1
    return chunk_count(payload_len, chunk_log2)


def record_span(header_len: int, payload_len: int) -> int:
    return PAGE if header_len + payload_len <= PAGE else PAGE + align_up(payload_len)


def header_len_for(namespace: bytes, key: bytes, meta: bytes, chunks: int = 0,
                   encrypted: bool = False) -> int:
    return (_REC.size + len(namespace) + len(key) + len(meta) + _CHUNK.size * chunks
            + (_SEAL.size if encrypted else 0) + _CRC.size)
