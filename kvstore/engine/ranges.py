"""Ranged reads: read and verify only the chunks of a record that a byte range touches.

A version 2 record carries an xxh3-64 per chunk of its payload (``format.py``). A range
``[a, b)`` reads the header page and the chunks covering it, page aligned for O_DIRECT, in one
``submit`` (one I/O when the range starts in the first chunk), and verifies every chunk it
read, whole; the range is then a slice of verified bytes. What cannot be verified by chunks is
read whole and verified by the whole-payload checksum, as ``read`` does:

- a payload of one chunk or less (the smallest verifiable read is the whole record anyway);
- a version 1 record (written before chunk tables) or one whose header page had no room for
  a table: a ranged read of it costs a full read, exactly as before;
- an encrypted record (no table: its GCM tag authenticates the whole payload, ``crypto.py``).

A chunk that fails its checksum is a corrupt block: the caller drops and tombstones it, as a
full read does, so a range over an intact chunk of a block found corrupt is a miss afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvstore.engine import format as fmt
from kvstore.engine.device import AlignedBuffer, IoOp
from kvstore.errors import CorruptRecord, InvalidArgument

if TYPE_CHECKING:
    from kvstore.engine.index import Entry
    from kvstore.engine.records import RecordIO
    from kvstore.engine.segments import Segment

PAGE = fmt.PAGE


def span_of(offset: int, length: int | None, size: int) -> tuple[int, int]:
    """The payload bytes ``[a, b)`` a range asks for, clamped to a block of ``size`` bytes.

    ``offset >= 0``: from there, ``length`` bytes (``None``: to the end). ``offset < 0``: the
    last ``-offset`` bytes (a suffix range; ``length`` must be None). Past the end: empty."""
    if length is not None and (length < 0 or offset < 0):
        raise InvalidArgument("a range needs length >= 0, and no length with a suffix offset")
    if offset < 0:
        return max(0, size + offset), size
    a = min(offset, size)
    return a, size if length is None else min(size, offset + length)


def _chunks(log2: int, a: int, b: int, size: int) -> tuple[int, int, int]:
    """(first payload byte, last payload byte + 1, aligned read end) of the chunks covering
    ``[a, b)`` (a < b) of a payload of ``size`` bytes."""
    p0 = a >> log2 << log2
    p1 = min(((b - 1) >> log2) + 1 << log2, size)
    return p0, p1, fmt.align_up(p1)


def read_span(io: RecordIO, seg: Segment, e: Entry, nsb: bytes, kb: bytes, a: int,
              b: int) -> tuple[AlignedBuffer, fmt.RecordHeader, int]:
    """Read and verify what covers payload bytes ``[a, b)`` of a record. Returns (buffer,
    header, where byte ``a`` is in the buffer); the caller releases the buffer. Raises
    CorruptRecord (and StorageError)."""
    if a < b and e.length <= 1 << fmt.CHUNK_LOG2:
        whole, hdr = io.read_record(seg, e, nsb, kb, plain=True)
        return whole, hdr, hdr.payload_offset + a
    off = e.page * PAGE
    if a == b:  # no payload wanted: the verified header is the answer
        page = io.pool.acquire(PAGE)
        try:
            got = io.read(seg.handle, off, page.view[:PAGE])
            hdr = fmt.RecordHeader.decode(page.view[: min(got, PAGE)])
            io.check_header(hdr, nsb, kb, e)
            return page, hdr, 0
        except BaseException:
            io.pool.release(page)
            raise
    p0, p1, end = _chunks(fmt.CHUNK_LOG2, a, b, e.length)  # the usual chunk size: a guess
    buf = io.pool.acquire(PAGE + end - p0)
    held: AlignedBuffer | None = buf  # what to give back if this raises
    try:
        if p0 == 0:  # header page and chunks are adjacent: one I/O
            ops = [IoOp(seg.handle, off, buf.view[: PAGE + end])]
        else:
            ops = [IoOp(seg.handle, off, buf.view[:PAGE]),
                   IoOp(seg.handle, off + PAGE + p0, buf.view[PAGE : PAGE + end - p0])]
        res = io.submit(ops)
        hdr = fmt.RecordHeader.decode(buf.view[: min(res[0], PAGE)])
        io.check_header(hdr, nsb, kb, e)
        got = res[0] - PAGE if p0 == 0 else res[1]
        if not hdr.chunks:  # no table (version 1, or a full header page): verify it all
            held = None
            io.pool.release(buf)
            whole, hdr = io.read_record(seg, e, nsb, kb, plain=True)
            return whole, hdr, hdr.payload_offset + a
        if hdr.chunk_log2 != fmt.CHUNK_LOG2:  # larger chunks (a header page with little room)
            p0, p1, end = _chunks(hdr.chunk_log2, a, b, e.length)
            held = None
            io.pool.release(buf)
            buf = held = io.pool.acquire(PAGE + end - p0)
            got = io.read(seg.handle, off + PAGE + p0, buf.view[PAGE : PAGE + end - p0])
        if got < p1 - p0:
            raise CorruptRecord("record truncated")
        verify_chunks(hdr, buf.view[PAGE : PAGE + p1 - p0], p0)
        return buf, hdr, PAGE + a - p0
    except BaseException:
        if held is not None:
            io.pool.release(held)
        raise


def verify_chunks(hdr: fmt.RecordHeader, view: memoryview, p0: int) -> None:
    """Check every chunk in ``view`` (payload bytes from ``p0``, a chunk boundary, through a
    chunk end or the payload's end) against the header's table. Raises CorruptRecord."""
    log2 = hdr.chunk_log2
    size = 1 << log2
    for i in range(p0 >> log2, fmt.chunk_count(p0 + len(view), log2)):
        lo = (i << log2) - p0
        if fmt.checksum(view[lo : lo + size]) != hdr.chunks[i]:
            raise CorruptRecord(f"payload chunk {i} checksum mismatch")
