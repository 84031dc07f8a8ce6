"""Reads that go below flash (``tiers.LowerTier``, G4): the reader's side of the seam.

A flash miss with a lower tier attached is asked of it (``read_lower``): one verified fetch,
re-admitted into flash and the DRAM tier (``readmit``: a put of the same bytes, checksum,
metadata and remaining TTL), served from the fetched bytes. Any failure below is a miss.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from kvstore.engine import format as fmt
from kvstore.engine.ranges import span_of
from kvstore.engine.state import EngineState, meta_of
from kvstore.engine.tiers import LowerTier
from kvstore.engine.types import ReadOutcome
from kvstore.errors import KVStoreError

if TYPE_CHECKING:
    from kvstore.engine.reader import BlockLease, BlockReader, BlockView

log = logging.getLogger("kvstore.engine")


def read_lower(r: BlockReader, lower: LowerTier, ns: str, key: str, kb: bytes, digest: bytes,
               rng: tuple[int, int | None] | None) -> BlockLease:
    """The read of a block flash does not hold, asked of ``lower``."""
    from kvstore.engine.reader import BlockLease, BlockView

    st = r.state
    got = lower.fetch(digest, ns.encode(), kb)
    now = time.time()
    if got is None or (got[1].expires and got[1].expires <= now):
        with st.lock:
            st.miss(ReadOutcome.ABSENT)
        return BlockLease(ReadOutcome.ABSENT)
    payload, hdr = got
    readmit(r, ns, key, payload, hdr, now)
    a, b = (0, len(payload)) if rng is None else span_of(rng[0], rng[1], len(payload))
    with st.lock:
        st.counters["hits_lower"] += 1
        st.counters["bytes_read"] += b - a
    view = memoryview(payload)[a:b].toreadonly()
    return BlockLease.of(BlockView(meta_of(hdr), view, stable=True, offset=a))


def readmit(r: BlockReader, ns: str, key: str, payload: bytes, hdr: fmt.RecordHeader,
            now: float) -> None:
    """Write a block fetched from below back to flash (and DRAM, as a put keeps it), as it
    was. Best effort: the bytes are served anyway."""
    from kvstore.engine.batch import prepare

    st = r.state
    ttl = hdr.expires - now if hdr.expires else 0.0
    try:
        prep = prepare(st, ns, key, payload, hdr.checksum, ttl, hdr.meta)
        res = r.log.write([prep], False, True)
    except KVStoreError as exc:
        log.warning("could not re-admit %s/%s from below flash: %s", ns, key, exc)
        return
    if res and res[0].created:
        with st.lock:
            st.counters["readmitted_blocks"] += 1


def stage_readmitted(st: EngineState, digest: bytes, v: BlockView | None) -> int:
    """Keep a block just fetched from below flash in DRAM (1), unless the read missed."""
    if v is None or len(v.payload) > st.dram.capacity_bytes:
        return 0
    with st.lock:
        e = st.live(digest, time.time())
        if e is None:
            return 0
        if st.dram.get(digest, (e.seg, e.page)) is None:
            st.dram.put(digest, (e.seg, e.page), bytes(v.payload), v.meta)
        return 1
