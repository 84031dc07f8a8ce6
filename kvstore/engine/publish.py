"""Publishing a written chunk: its records into the index (and DRAM), answered in the results.

Runs once ``SegmentLog.complete`` said every earlier byte of the segment is written
(``batch._Pipeline``): only then does a put become visible and acknowledged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvstore.engine.device import copy_out
from kvstore.engine.state import meta_of
from kvstore.engine.types import BlockMeta, PutResult

if TYPE_CHECKING:
    from kvstore.engine.batch import Prepared, _Chunk
    from kvstore.engine.log import SegmentLog


def not_written(p: Prepared) -> PutResult:
    """The answer for a record not stored (its key present, or repeated in the batch)."""
    return PutResult(False, BlockMeta(p.ns, p.key, p.hdr.payload_len, p.hdr.checksum, 0, 0.0))


def publish_chunk(lg: SegmentLog, preps: list[Prepared], c: _Chunk,
                  results: list[PutResult | None], donate: bool) -> None:
    """Index the chunk's live records (DRAM copies made outside the lock) and answer them."""
    assert c.seg is not None and c.offs is not None and c.hdrs is not None and c.live is not None
    st = lg.state
    keeps: list[object] = []
    for n, i in enumerate(c.items):  # DRAM copies outside the lock
        p = preps[i]
        keep: object = None
        if c.live[n] and st.config.dram_on_put and p.hdr.payload_len <= st.dram.capacity_bytes:
            keep = p.data.toreadonly() if donate else copy_out(p.data)  # GIL released
        keeps.append(keep)
    with st.lock:
        for n, i in enumerate(c.items):
            p = preps[i]
            if not c.live[n]:
                results[i] = not_written(p)
                continue
            if c.seg.retired:
                # Reclaimed between this chunk's write and its publish (a pipelined caller can
                # reap late): the block was written and is evicted at once. Publishing it would
                # leave an index entry pointing at a segment that is gone (or recycled).
                lg.pending.discard(p.digest)
                results[i] = PutResult(True, meta_of(c.hdrs[n]))
                st.counters["evicted_blocks"] += 1
                continue
            st.publish(c.seg.id, c.off + c.offs[n], c.hdrs[n], p.digest, p.ns_id, keeps[n])
            lg.pending.discard(p.digest)
            results[i] = PutResult(True, meta_of(c.hdrs[n]))
            st.counters["puts"] += 1
            st.counters["bytes_written"] += p.hdr.payload_len
