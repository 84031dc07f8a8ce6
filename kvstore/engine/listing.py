"""Listing the blocks of a namespace (S3 ListObjectsV2).

The index holds digests, not names, to stay near 44 bytes a block; names live in the segment
summaries. Listing therefore reads every segment's summary (the active one from memory) and
keeps the rows the index still points at. It costs O(blocks in the store): an operator's call,
not a hot path.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from kvstore import limits
from kvstore.engine.types import BlockMeta
from kvstore.errors import InvalidArgument

if TYPE_CHECKING:
    from kvstore.engine.log import SegmentLog


def list_blocks(lg: SegmentLog, ns: str, prefix: str, start_after: str,
                limit: int) -> tuple[list[BlockMeta], bool]:
    st = lg.state
    if not 0 <= limit <= limits.list_keys_max:
        raise InvalidArgument(f"limit must be in [0, {limits.list_keys_max}]")
    nsb = ns.encode()
    pre = prefix.encode("utf-8", "surrogatepass")
    after = start_after.encode("utf-8", "surrogatepass")
    with st.lock:
        ns_id = st.catalog.get(ns)[0]
    found: list[tuple[bytes, BlockMeta]] = []
    for seg_id, summary in lg.summaries():
        if summary is None or nsb not in summary.namespaces:
            continue
        want_ns = summary.namespaces.index(nsb)
        c = summary.cols
        for i, key in enumerate(summary.keys):
            if int(c["ns"][i]) != want_ns or key <= after or not key.startswith(pre):
                continue
            with st.lock:
                e = st.index.get(bytes(c["digest"][i]))
            if e is None or e.seg != seg_id or e.page != int(c["page"][i]) or e.ns != ns_id:
                continue
            found.append((key, BlockMeta(ns, key.decode("utf-8", "surrogatepass"), e.length,
                                         e.csum, int(c["seq"][i]), float(c["created"][i]),
                                         float(c["expires"][i]))))
    top = heapq.nsmallest(limit + 1, found, key=lambda kv: kv[0])
    return [m for _k, m in top[:limit]], len(top) > limit


def oldest_blocks(lg: SegmentLog, ns: str, nbytes: int) -> list[tuple[str, int]]:
    """(key, payload bytes) of the namespace's live blocks, oldest first (segment order, then
    write order within a segment), until they add up to at least ``nbytes`` (quota eviction,
    ``Engine.evict_oldest``). Costs a listing's scan of the summaries it reads."""
    st = lg.state
    nsb = ns.encode()
    with st.lock:
        ns_id = st.catalog.get(ns)[0]
    out: list[tuple[str, int]] = []
    total = 0
    for seg_id, summary in lg.summaries():
        if summary is None or nsb not in summary.namespaces:
            continue
        want_ns = summary.namespaces.index(nsb)
        c = summary.cols
        for i, key in enumerate(summary.keys):
            if int(c["ns"][i]) != want_ns:
                continue
            with st.lock:
                e = st.index.get(bytes(c["digest"][i]))
            if e is None or e.seg != seg_id or e.page != int(c["page"][i]) or e.ns != ns_id:
                continue
            out.append((key.decode("utf-8", "surrogatepass"), e.length))
            total += e.length
            if total >= nbytes:
                return out
    return out
