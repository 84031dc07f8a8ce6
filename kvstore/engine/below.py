"""Reads that go below flash (``tiers.LowerTier``, G4): the reader's side of the seam.

A flash miss with a lower tier attached is asked of it (``read_lower``): one verified fetch,
served from the fetched bytes and re-admitted into flash and the DRAM tier (``readmit``: the
record appended as it was, like reclaim's reinsertion). Any failure below is a miss.

A re-admission must never win over a client's write of the same key: it is appended under the
log's write lock, and only when flash has no version of the key (none indexed, none reserved
by a put in flight) and the tier still holds exactly the fetched version (a put or delete
since the fetch made it forget that one). A put that reserves after it sees the re-admitted
block like any other and overwrites it.
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
from kvstore.errors import CorruptRecord, KVStoreError

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
    record, hdr = got
    po = hdr.payload_offset
    payload = record[po:po + hdr.payload_len]
    if hdr.encrypted:  # G4 holds records as stored: decrypt (and authenticate) a copy to serve
        plain = bytearray(payload)
        try:
            with st.lock:
                ns_id = st.catalog.get(ns)[0]
            st.cipher.open_into(ns_id, hdr, memoryview(plain))
        except (CorruptRecord, KVStoreError) as exc:
            log.warning("block %s/%s from below flash does not decrypt: %s", ns, key, exc)
            with st.lock:
                st.counters["checksum_failures"] += 1
                st.miss(ReadOutcome.CORRUPT)
            return BlockLease(ReadOutcome.CORRUPT)
        payload = bytes(plain)
    readmit(r, ns, digest, record, hdr, payload)
    a, b = (0, len(payload)) if rng is None else span_of(rng[0], rng[1], len(payload))
    with st.lock:
        st.counters["hits_lower"] += 1
        st.counters["bytes_read"] += b - a
    view = memoryview(payload)[a:b].toreadonly()
    return BlockLease.of(BlockView(meta_of(hdr), view, stable=True, offset=a))


def readmit(r: BlockReader, ns: str, digest: bytes, record: bytes, hdr: fmt.RecordHeader,
            payload: bytes) -> None:
    """Append a record fetched from below back to flash (and DRAM, as a put keeps it), as it
    was: same checksum, metadata, creation and expiry. Best effort: the bytes are served
    anyway."""
    st, lg = r.state, r.log
    keep = payload if st.config.dram_on_put and len(payload) <= st.dram.capacity_bytes else None
    buf = st.pool.acquire(hdr.span)
    try:
        buf.view[:hdr.span] = record[:hdr.span]
        with lg.wlock:
            with st.lock:
                lower = st.lower
                if (st.index.get(digest) is not None or digest in lg.pending or lower is None
                        or not lower.holds(digest, hdr.payload_len, hdr.checksum)):
                    return  # flash has (or is getting) a version, or this one is stale
                ns_id = st.catalog.get(ns)[0]
            lg.append(buf, hdr, hdr.span, digest, ns_id, keep)
        with st.lock:
            st.counters["readmitted_blocks"] += 1
    except KVStoreError as exc:
        log.warning("could not re-admit %s/%s from below flash: %s", ns, hdr.key, exc)
    finally:
        st.pool.release(buf)


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
