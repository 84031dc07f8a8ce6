"""Segment files: creation, scanning (recovery) and the in-memory segment record.

A segment is append-only. The active one takes appends and keeps a ``SummaryBuilder``; sealing
writes the summary file. A reclaimed ("retired") segment leaves the index at once, but its file
is closed and unlinked only when the last reader holding a reference lets go, so a reclaim
never pulls bytes out from under a read in flight.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from kvstore.engine import format as fmt
from kvstore.engine.device import BufferPool, Device, IoOp
from kvstore.engine.summary import SegmentSummary, SummaryBuilder
from kvstore.errors import NO_SPACE_ERRNOS, CorruptRecord, StorageError

log = logging.getLogger("kvstore.engine")

PAGE = fmt.PAGE
SCAN_WINDOW_BYTES = 8 * 1024 * 1024


def segment_path(data_dir: str, sid: int) -> str:
    return os.path.join(data_dir, f"seg-{sid:08x}.kvs")


def summary_path(data_dir: str, sid: int) -> str:
    return os.path.join(data_dir, f"seg-{sid:08x}.sum")


def free_path(data_dir: str, sid: int) -> str:
    """A reclaimed segment's file waiting to be recycled: never scanned, removed on open."""
    return os.path.join(data_dir, f"free-{sid:08x}.kvs")


def parse_segment_name(name: str) -> int | None:
    if name.startswith("seg-") and name.endswith(".kvs") and len(name) == 16:
        try:
            return int(name[4:12], 16)
        except ValueError:
            return None
    return None


@dataclass(eq=False)
class Segment:
    id: int
    path: str
    handle: int
    end: int  # next append offset
    created: float
    sealed: bool = False
    refs: int = 0
    retired: bool = False
    builder: SummaryBuilder | None = None
    records: int = 0
    # Concurrent appends: space is reserved in order under the write lock (``end`` moves), the
    # writes run in parallel, and ``durable`` (every byte before it written) advances over the
    # completed ranges in ``done``. A put is acknowledged only once ``durable`` passes its end,
    # so recovery's "stop at the first bad header" can never drop an acknowledged block.
    durable: int = 0
    done: dict[int, int] = field(default_factory=dict)
    broken: bool = False  # a write failed: roll before the next append
    # Start of the first range whose write failed. Its bytes are unknown (a hole the scan may
    # not cross), so no range ending after it is acknowledged, though ``durable`` passes it.
    failed_at: int | None = None
    first_seq: int = 0  # records below this seq are leftovers of a recycled file's past life


def create_segment(device: Device, data_dir: str, sid: int, segment_bytes: int,
                   pool: BufferPool, first_seq: int, reuse: Segment | None = None) -> Segment:
    """A new active segment: a fresh file, or ``reuse``'s file (a reclaimed segment with no
    readers) renamed. Overwriting a file's written blocks is ~30% faster here than appending
    to a new file (no block allocation), and a full cache reclaims a segment for every new one.
    Its old records stay behind the new data until overwritten; ``first_seq`` fences them off.
    """
    path = segment_path(data_dir, sid)
    device.unlink(summary_path(data_dir, sid))
    if reuse is not None:
        device.rename(reuse.path, path)
        h = reuse.handle
    else:
        h = device.open(path, create=True)
        device.truncate(h, 0)
        device.allocate(h, segment_bytes)  # appends then overwrite reserved blocks
    now = time.time()
    buf = pool.acquire(PAGE)
    try:
        raw = fmt.SegmentHeader(sid, now, segment_bytes, first_seq).encode()
        buf.view[:PAGE] = raw
        (res,) = device.submit([IoOp(h, 0, buf.view[:PAGE], write=True)])
    finally:
        pool.release(buf)
    if res != PAGE:
        if reuse is None:  # leave no header-less file behind (the checker would see it)
            device.close_handle(h)
            device.unlink(path)
        if -res in NO_SPACE_ERRNOS:  # a full file system: typed by the caller (no_space)
            raise OSError(-res, f"segment {sid:08x}: no space for its header", path)
        raise StorageError(f"{device.name}: segment header write returned {res}")
    return Segment(sid, path, h, PAGE, now, builder=SummaryBuilder(sid), durable=PAGE,
                   first_seq=first_seq)


class _Window:
    """Reads a segment through a large aligned window so a scan costs few I/Os."""

    def __init__(self, device: Device, handle: int, file_size: int, pool: BufferPool) -> None:
        self.device, self.handle, self.file_size, self.pool = device, handle, file_size, pool
        self.buf = pool.acquire(SCAN_WINDOW_BYTES)
        self.start = 0
        self.valid = 0

    def view(self, off: int, n: int) -> memoryview | None:
        """Bytes [off, off+n) or None when the file ends first."""
        if off + n > self.file_size:
            return None
        if not (self.start <= off and off + n <= self.start + self.valid):
            want = fmt.align_up(max(n, SCAN_WINDOW_BYTES))
            if want > self.buf.size:
                self.pool.release(self.buf)
                self.buf = self.pool.acquire(want)
            self.start = off
            self.valid = self.device.read_into(self.handle, off, self.buf.view[:want])
            if off + n > self.start + self.valid:
                return None
        rel = off - self.start
        return self.buf.view[rel : rel + n]

    def close(self) -> None:
        self.pool.release(self.buf)


@dataclass
class ScanResult:
    """What a scan of a segment found."""

    builder: SummaryBuilder
    end: int  # first byte after the last good record: where the caller truncates
    corrupt: list[int] = field(default_factory=list)  # offsets of records skipped as corrupt
    read_error: str | None = None  # the device failed a read at ``end``: nothing is known past it


def scan_segment(device: Device, seg: Segment, pool: BufferPool) -> ScanResult:
    """Parse records from the start; stop at the first bad header or torn record.

    A record whose header is intact (CRC holds, seq within this file's life, span inside the
    file) but whose payload fails its checksum is one corrupt block, not the end of the log:
    it is skipped, stands as a tombstone row for its key (so no older version of the key comes
    back), and the scan goes on at the next record. Its header is trusted for the length, as
    it is for every good record. Only a bad header, or a record that does not fit in the file,
    ends the scan: nothing after such a point can be parsed safely (a payload may hold bytes
    that look like a record). Never raises for bad data: bad data ends the scan.
    """
    builder = SummaryBuilder(seg.id)
    size = device.size(seg.handle)
    win = _Window(device, seg.handle, size, pool)
    off = PAGE
    corrupt: list[int] = []
    read_error: str | None = None
    try:
        while True:
            page = win.view(off, min(PAGE, size - off)) if off < size else None
            if page is None or len(page) < PAGE:
                break
            try:
                hdr = fmt.RecordHeader.decode(page)
            except CorruptRecord:
                break
            if hdr.seq < seg.first_seq:  # a leftover of the file's previous life
                break
            if off + hdr.span > size:
                break
            flags, length, csum, expires = hdr.flags, hdr.payload_len, hdr.checksum, hdr.expires
            if not hdr.tombstone:
                payload = win.view(off + hdr.payload_offset, hdr.payload_len)
                if payload is None:
                    break
                if fmt.checksum(payload) != hdr.stored_checksum:
                    corrupt.append(off)
                    flags, length, csum, expires = fmt.FLAG_TOMBSTONE, 0, 0, 0.0
            if not hdr.void:  # a void record never stood for its key, corrupt or not
                builder.add(fmt.digest_of(hdr.namespace, hdr.key), hdr.namespace, hdr.key,
                            off // PAGE, length, csum, hdr.seq, hdr.created, expires, flags)
            off += hdr.span
    except StorageError as exc:
        log.error("segment %08x: read error during scan at %d: %s", seg.id, off, exc)
        read_error = str(exc)
    finally:
        win.close()
    return ScanResult(builder, off, corrupt, read_error)


def load_summary(device: Device, data_dir: str, sid: int) -> SegmentSummary | None:
    raw = device.read_file(summary_path(data_dir, sid))
    if raw is None:
        return None
    try:
        s = SegmentSummary.decode(raw)
    except (CorruptRecord, ValueError, KeyError, TypeError) as exc:
        log.warning("segment %08x: ignoring bad summary (%s); scanning instead", sid, exc)
        return None
    return s if s.segment_id == sid else None


def open_existing(device: Device, data_dir: str, sid: int, pool: BufferPool) -> Segment | None:
    """Open a segment file and verify its header; None (file removed) when it is unusable."""
    path = segment_path(data_dir, sid)
    h = device.open(path, create=False)
    buf = pool.acquire(PAGE)
    try:
        n = device.read_into(h, 0, buf.view[:PAGE])
        hdr = fmt.SegmentHeader.decode(buf.view[:n])
        if hdr.segment_id != sid:
            raise CorruptRecord("segment id mismatch")
    except (CorruptRecord, StorageError) as exc:
        log.warning("segment %08x: unusable header (%s); dropping it", sid, exc)
        device.close_handle(h)
        device.unlink(path)
        device.unlink(summary_path(data_dir, sid))
        return None
    finally:
        pool.release(buf)
    return Segment(sid, path, h, PAGE, hdr.created, first_seq=hdr.first_seq)
