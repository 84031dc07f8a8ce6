"""The in-memory index: block digest -> location, compact enough for millions of blocks.

Derived data: recovery rebuilds it from segment summaries and scans. The key is a 16-byte
blake2b digest of (namespace, key), so arbitrary S3 keys and engine-provided keys index the same
way. Layout:

- ``base``: sorted numpy columns (digest high/low halves, packed location, length, checksum,
  expiry, namespace id, hit counter, live flag): 44 bytes a block. Looked up with searchsorted.
- ``delta``: a dict of recent inserts, merged into ``base`` when it reaches ``delta_max``. Its
  Python objects cost ~250 bytes an entry, so it is kept small.

Deletes from ``base`` clear the live flag; dead rows are dropped at the next merge.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

_COLS = (("hi", np.uint64), ("lo", np.uint64), ("loc", np.uint64), ("length", np.uint32),
         ("csum", np.uint64), ("exp", np.uint32), ("ns", np.uint16), ("hits", np.uint8),
         ("live", np.bool_))


class Entry(NamedTuple):
    seg: int
    page: int
    length: int
    csum: int
    exp: int  # unix seconds, 0 = never
    ns: int  # namespace id


def split(digest: bytes) -> tuple[int, int]:
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:16], "little")


class Index:
    def __init__(self, delta_max: int = 65536) -> None:
        self.delta_max = delta_max
        self.delta: dict[bytes, list] = {}  # digest -> [Entry, hits]
        self.base: dict[str, np.ndarray[Any, np.dtype[Any]]] = {
            name: np.zeros(0, dtype=dt) for name, dt in _COLS}
        self._base_live = 0
        # live blocks and payload bytes per namespace id: kept by insert/remove/bulk_load, the
        # only ways an entry comes or goes, so usage per namespace costs no scan
        self.ns_blocks: dict[int, int] = {}
        self.ns_bytes: dict[int, int] = {}

    def _account(self, e: Entry, sign: int) -> None:
        blocks = self.ns_blocks.get(e.ns, 0) + sign
        nbytes = self.ns_bytes.get(e.ns, 0) + sign * e.length
        assert blocks >= 0 and nbytes >= 0, "namespace usage went negative"
        if blocks:
            self.ns_blocks[e.ns], self.ns_bytes[e.ns] = blocks, nbytes
        else:
            self.ns_blocks.pop(e.ns, None)
            self.ns_bytes.pop(e.ns, None)

    # --- lookups ---------------------------------------------------------------------------
    def _find(self, digest: bytes) -> int:
        hi, lo = split(digest)
        b_hi = self.base["hi"]
        i = int(np.searchsorted(b_hi, np.uint64(hi)))
        n = len(b_hi)
        while i < n and int(b_hi[i]) == hi:
            if int(self.base["lo"][i]) == lo and self.base["live"][i]:
                return i
            i += 1
        return -1

    def _row(self, i: int) -> Entry:
        b = self.base
        loc = int(b["loc"][i])
        return Entry(loc >> 32, loc & 0xFFFFFFFF, int(b["length"][i]), int(b["csum"][i]),
                     int(b["exp"][i]), int(b["ns"][i]))

    def get(self, digest: bytes) -> Entry | None:
        d = self.delta.get(digest)
        if d is not None:
            return d[0]
        i = self._find(digest)
        return None if i < 0 else self._row(i)

    def present_many(self, digests: list[bytes], now: int) -> np.ndarray:
        """Vectorized presence of unexpired blocks (one searchsorted for the whole batch)."""
        n = len(digests)
        out = np.zeros(n, dtype=np.bool_)
        if n == 0:
            return out
        b = self.base
        if len(b["hi"]):
            raw = np.frombuffer(b"".join(digests), dtype=np.uint64).reshape(-1, 2)
            pos = np.searchsorted(b["hi"], raw[:, 0])
            pos = np.minimum(pos, len(b["hi"]) - 1)
            hit_hi = b["hi"][pos] == raw[:, 0]
            exp = b["exp"][pos]
            out = (hit_hi & (b["lo"][pos] == raw[:, 1]) & b["live"][pos]
                   & ((exp == 0) | (exp > now)))
            for j in np.flatnonzero(hit_hi & ~out):  # rare: dead row or hi collision
                e = self.get(digests[j])
                out[j] = e is not None and (e.exp == 0 or e.exp > now)
        for i, d in enumerate(digests):
            item = self.delta.get(d)
            if item is not None:
                exp_d = item[0].exp
                out[i] = exp_d == 0 or exp_d > now
        return out

    def locate_many(self, digests: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Segment ids and payload lengths of present blocks (one searchsorted for the batch);
        -1 and 0 for an absent one."""
        n = len(digests)
        seg = np.full(n, -1, dtype=np.int64)
        length = np.zeros(n, dtype=np.int64)
        b = self.base
        if n and len(b["hi"]):
            raw = np.frombuffer(b"".join(digests), dtype=np.uint64).reshape(-1, 2)
            pos = np.minimum(np.searchsorted(b["hi"], raw[:, 0]), len(b["hi"]) - 1)
            hit_hi = b["hi"][pos] == raw[:, 0]
            hit = hit_hi & (b["lo"][pos] == raw[:, 1]) & b["live"][pos]
            seg[hit] = (b["loc"][pos[hit]] >> np.uint64(32)).astype(np.int64)
            length[hit] = b["length"][pos[hit]]
            for j in np.flatnonzero(hit_hi & ~hit):  # rare: dead row or hi collision
                e = self.get(digests[j])
                if e is not None:
                    seg[j], length[j] = e.seg, e.length
        if self.delta:
            for i, d in enumerate(digests):
                item = self.delta.get(d)
                if item is not None:
                    seg[i], length[i] = item[0].seg, item[0].length
        return seg, length

    def __contains__(self, digest: bytes) -> bool:
        return digest in self.delta or self._find(digest) >= 0

    def __len__(self) -> int:
        return len(self.delta) + self._base_live

    def touch(self, digest: bytes) -> None:
        d = self.delta.get(digest)
        if d is not None:
            d[1] = min(d[1] + 1, 255)
            return
        i = self._find(digest)
        if i >= 0 and self.base["hits"][i] < 255:
            self.base["hits"][i] += 1

    def hits(self, digest: bytes) -> int:
        d = self.delta.get(digest)
        if d is not None:
            return int(d[1])
        i = self._find(digest)
        return 0 if i < 0 else int(self.base["hits"][i])

    # --- mutations -------------------------------------------------------------------------
    def insert(self, digest: bytes, entry: Entry) -> Entry | None:
        """Insert or replace; returns the replaced entry."""
        old = self.remove(digest)
        self.delta[digest] = [entry, 0]
        self._account(entry, +1)
        if len(self.delta) >= self.delta_max:
            self.merge()
        return old

    def remove(self, digest: bytes) -> Entry | None:
        d = self.delta.pop(digest, None)
        if d is not None:
            self._account(d[0], -1)
            return d[0]
        i = self._find(digest)
        if i < 0:
            return None
        e = self._row(i)
        self.base["live"][i] = False
        self._base_live -= 1
        self._account(e, -1)
        return e

    def merge(self) -> None:
        """Fold the delta into the sorted base and drop dead rows."""
        n = len(self.delta)
        add = {name: np.empty(n, dtype=dt) for name, dt in _COLS}
        for j, (digest, (e, hits)) in enumerate(self.delta.items()):
            hi, lo = split(digest)
            add["hi"][j] = hi
            add["lo"][j] = lo
            add["loc"][j] = (e.seg << 32) | e.page
            add["length"][j] = e.length
            add["csum"][j] = e.csum
            add["exp"][j] = e.exp
            add["ns"][j] = e.ns
            add["hits"][j] = hits
        add["live"][:] = True
        live = self.base["live"]
        merged = {name: np.concatenate([self.base[name][live], add[name]]) for name, _ in _COLS}
        order = np.argsort(merged["hi"], kind="stable")
        self.base = {name: arr[order] for name, arr in merged.items()}
        self._base_live = len(order)
        self.delta.clear()

    def bulk_load(self, digests: np.ndarray, seg: np.ndarray, page: np.ndarray,
                  length: np.ndarray, csum: np.ndarray, exp: np.ndarray, ns: np.ndarray) -> None:
        """Replace the whole index with deduplicated rows (recovery)."""
        raw = np.frombuffer(digests.tobytes(), dtype=np.uint64).reshape(-1, 2)
        n = len(raw)
        cols = {
            "hi": raw[:, 0].copy(), "lo": raw[:, 1].copy(),
            "loc": (seg.astype(np.uint64) << np.uint64(32)) | page.astype(np.uint64),
            "length": length.astype(np.uint32), "csum": csum.astype(np.uint64),
            "exp": exp.astype(np.uint32), "ns": ns.astype(np.uint16),
            "hits": np.zeros(n, np.uint8), "live": np.ones(n, np.bool_),
        }
        order = np.argsort(cols["hi"], kind="stable")
        self.base = {name: arr[order] for name, arr in cols.items()}
        self._base_live = n
        self.delta.clear()
        ns_ids = cols["ns"].astype(np.int64)
        blocks = np.bincount(ns_ids)
        nbytes = np.bincount(ns_ids, weights=cols["length"].astype(np.float64))
        self.ns_blocks = {int(i): int(blocks[i]) for i in np.flatnonzero(blocks)}
        self.ns_bytes = {i: int(nbytes[i]) for i in self.ns_blocks}

    # --- scans -----------------------------------------------------------------------------
    def items(self) -> Iterator[tuple[bytes, Entry]]:
        for digest, (e, _h) in list(self.delta.items()):
            yield digest, e
        b = self.base
        for i in np.flatnonzero(b["live"]):
            digest = int(b["hi"][i]).to_bytes(8, "little") + int(b["lo"][i]).to_bytes(8, "little")
            yield digest, self._row(int(i))

    def segment_digests(self, seg: int) -> list[bytes]:
        out = [d for d, (e, _h) in self.delta.items() if e.seg == seg]
        b = self.base
        mask = ((b["loc"] >> np.uint64(32)) == np.uint64(seg)) & b["live"]
        for i in np.flatnonzero(mask):
            out.append(int(b["hi"][i]).to_bytes(8, "little") + int(b["lo"][i]).to_bytes(8, "little"))
        return out

    def memory_bytes(self) -> int:
        """Bytes held by the index structures (numpy columns plus an estimate for the delta)."""
        base = sum(arr.nbytes for arr in self.base.values())
        return base + len(self.delta) * 250
