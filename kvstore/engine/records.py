"""Reading records back from segment files, verified: the one place the read side, reclaim's
reinsertion and the checker take records from the device. Every byte read here is counted in
``flash_bytes_read``. Ranged reads (only the chunks a byte range touches) are in ``ranges.py``.
"""

from __future__ import annotations

from kvstore.engine import format as fmt
from kvstore.engine.device import AlignedBuffer, BufferPool, IoOp
from kvstore.engine.index import Entry
from kvstore.engine.segments import Segment
from kvstore.engine.state import EngineState
from kvstore.errors import CorruptRecord, StorageError

PAGE = fmt.PAGE


class RecordIO:
    """Verified record reads over the state's device and buffer pool."""

    def __init__(self, state: EngineState) -> None:
        self.state = state
        self.pool: BufferPool = state.pool

    def submit(self, ops: list[IoOp]) -> list[int]:
        """Device reads, counted in ``flash_bytes_read``; raises StorageError if one fails."""
        st = self.state
        res = st.device.submit(ops)
        with st.lock:
            st.counters["flash_bytes_read"] += sum(r for r in res if r > 0)
        for op, r in zip(ops, res, strict=True):
            if r < 0:
                raise StorageError(f"{st.device.name}: read at {op.offset} failed with "
                                   f"errno {-r}")
        return res

    def read(self, handle: int, offset: int, view: memoryview) -> int:
        return self.submit([IoOp(handle, offset, view)])[0]

    @staticmethod
    def check_header(hdr: fmt.RecordHeader, nsb: bytes, kb: bytes, e: Entry) -> None:
        """The header read for index entry ``e`` must name that block. Raises CorruptRecord."""
        if hdr.namespace != nsb or hdr.key != kb or hdr.tombstone:
            raise CorruptRecord("record header names another block")
        if hdr.payload_len != e.length or hdr.checksum != e.csum:
            raise CorruptRecord("record header disagrees with the index")

    def read_header(self, seg: Segment, e: Entry, nsb: bytes,
                    kb: bytes) -> fmt.RecordHeader:
        """One header page read and checked against ``e``. Raises CorruptRecord, StorageError."""
        buf = self.pool.acquire(PAGE)
        try:
            self.read(seg.handle, e.page * PAGE, buf.view[:PAGE])
            hdr = fmt.RecordHeader.decode(buf.view[:PAGE])
            if (hdr.namespace, hdr.key) != (nsb, kb) or hdr.tombstone or (
                    hdr.payload_len, hdr.checksum) != (e.length, e.csum):
                raise CorruptRecord("record header disagrees with the index")
            return hdr
        finally:
            self.pool.release(buf)

    def read_record(self, seg: Segment, e: Entry, nsb: bytes, kb: bytes,
                    plain: bool = False) -> tuple[AlignedBuffer, fmt.RecordHeader]:
        """Read and verify one record; the caller releases the buffer. Raises CorruptRecord.

        The payload is as stored (reclaim copies it, the checker verifies it): an encrypted
        one is checked by its ciphertext checksum. ``plain=True`` (reads) decrypts it in place
        instead, authenticated by its GCM tag (``crypto.py``); the header still says
        encrypted."""
        hdr_len = fmt.header_len_for(nsb, kb, b"")
        want = fmt.record_span(hdr_len, e.length)
        buf = self.pool.acquire(want)
        try:
            off = e.page * PAGE
            got = self.read(seg.handle, off, buf.view[:want])
            hdr = fmt.RecordHeader.decode(buf.view[: min(got, PAGE)])
            if hdr.span > want:  # metadata pushed the payload to the next page: read it all
                if hdr.span > buf.size:
                    self.pool.release(buf)
                    buf = self.pool.acquire(hdr.span)
                got = self.read(seg.handle, off, buf.view[: hdr.span])
            self.check_header(hdr, nsb, kb, e)
            po = hdr.payload_offset
            if got < po + e.length:
                raise CorruptRecord("record truncated")
            payload = buf.view[po : po + e.length]
            if plain and hdr.encrypted:
                self.state.cipher.open_into(e.ns, hdr, payload)
            elif fmt.checksum(payload) != hdr.stored_checksum:
                raise CorruptRecord("payload checksum mismatch")
            return buf, hdr
        except BaseException:
            self.pool.release(buf)
            raise

    def read_span(self, seg: Segment, e: Entry, nsb: bytes, kb: bytes, a: int,
                  b: int) -> tuple[AlignedBuffer, fmt.RecordHeader, int]:
        """Payload bytes ``[a, b)`` verified by chunks (``ranges.read_span``)."""
        from kvstore.engine.ranges import read_span

        return read_span(self, seg, e, nsb, kb, a, b)
