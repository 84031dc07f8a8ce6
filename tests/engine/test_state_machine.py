"""The engine against a dict model, with crashes, torn tails and bit flips (Hypothesis).

The model keeps, per key, the value the engine must return and every value ever stored under
the key (``hist``). Faults are injected into the MemoryDevice's files and followed by a crash
and reopen. The records a fault can reach are computed from the segment's summary (white box);
keys with a record there may come back as an older stored version or not at all, every other
key must read back exactly. No fault may ever make a get return bytes that were never stored
under that key.

A flipped record in a sealed segment stays referenced by that segment's summary: after every
reopen the index points at it again until a read finds it corrupt. Such "ghost" keys may answer
exists() with True, but a get is always a miss. A byte flipped back to what it was makes its
record whole again, so a key that was dropped as corrupt may read back as a stored version.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kvstore import limits
from kvstore.engine import format as fmt
from kvstore.engine.device import MemoryDevice
from kvstore.engine.segments import segment_path
from kvstore.engine.store import Engine, load_segment_summary
from kvstore.engine.types import EngineConfig

from .conftest import NS, pattern

KEYS = [f"key-{i}" for i in range(10)]
PAGE = fmt.PAGE
DATA_DIR = "/sm"

keys = st.sampled_from(KEYS)
# Mostly small blocks (inline and a few pages), some large enough to roll 1 MiB segments.
sizes = st.one_of(st.integers(0, 5000), st.sampled_from([4096, 12_288, 150_000, 330_000]))
seeds = st.integers(0, 3)


@lru_cache(maxsize=256)
def value(seed: int, size: int) -> bytes:
    return pattern(seed, size)


class EngineMachine(RuleBasedStateMachine):
    @initialize(dram=st.sampled_from([0, 32 * 1024]))
    def open_store(self, dram: int) -> None:
        self.dev = MemoryDevice()
        self.cfg = EngineConfig(DATA_DIR, capacity_bytes=64 * limits.MiB,
                                segment_bytes=limits.segment_bytes_min, dram_bytes=dram)
        self.eng = Engine.open(self.cfg, self.dev)
        self.eng.create_namespace(NS)
        self.model: dict[str, bytes] = {}
        self.hist: dict[str, set[bytes]] = defaultdict(set)
        self.ghosts: set[str] = set()
        self.flipped: set[str] = set()  # keys that ever had a record under a bit flip

    # ------------------------------------------------------------------ operations
    @rule(key=keys, seed=seeds, size=sizes)
    def put(self, key: str, seed: int, size: int) -> None:
        v = value(seed, size)
        res = self.eng.put(NS, key, v)
        if key in self.ghosts:
            if not res.created:
                return
            self.ghosts.discard(key)
        else:
            assert res.created == (key not in self.model)
        if res.created:
            self.model[key] = v
            self.hist[key].add(v)

    @rule(key=keys, seed=seeds, size=sizes)
    def put_overwrite(self, key: str, seed: int, size: int) -> None:
        v = value(seed, size)
        res = self.eng.put(NS, key, v, overwrite=True)
        if key in self.ghosts:
            if not res.created:  # the corrupt entry has the same length and checksum
                return
            self.ghosts.discard(key)
        else:
            assert res.created == (self.model.get(key) != v)
        self.model[key] = v
        self.hist[key].add(v)

    @rule(items=st.lists(st.tuples(keys, seeds, sizes), min_size=1, max_size=4))
    def put_many(self, items: list[tuple[str, int, int]]) -> None:
        res = self.eng.put_many(NS, [(k, value(s, n)) for k, s, n in items])
        seen: set[str] = set()
        for (key, seed, size), r in zip(items, res, strict=True):
            if key in seen:  # a key repeated within a batch is stored once
                assert not r.created
                continue
            seen.add(key)
            if key in self.ghosts:
                if not r.created:
                    continue
                self.ghosts.discard(key)
            else:
                assert r.created == (key not in self.model)
            if r.created:
                self.model[key] = value(seed, size)
                self.hist[key].add(self.model[key])

    @rule(key=keys)
    def head(self, key: str) -> None:
        meta = self.eng.head(NS, key)
        if key in self.ghosts:  # head verifies the header page only
            return
        want = self.model.get(key)
        if want is None:
            assert meta is None
        else:
            assert meta is not None and meta.length == len(want)
            assert meta.checksum == fmt.checksum(want)

    @rule(key=keys)
    def read_dram(self, key: str) -> None:
        view = self.eng.read_dram(NS, key)
        assert view is None or bytes(view.payload) == self.model.get(key)

    @rule(key=keys)
    def get(self, key: str) -> None:
        got = self.eng.get(NS, key)
        assert got == self.model.get(key), key

    @rule(key=keys)
    def exists(self, key: str) -> None:
        got = self.eng.exists(NS, key)
        if key not in self.ghosts:
            assert got == (key in self.model)

    @rule(chain=st.lists(keys, max_size=6), lease=st.sampled_from([0.0, 5.0]))
    def lookup_prefix(self, chain: list[str], lease: float) -> None:
        got = self.eng.lookup_prefix(NS, chain, lease_seconds=lease)
        lo = hi = 0
        for k in chain:
            if k not in self.model:
                break
            lo += 1
        for k in chain:
            if k not in self.model and k not in self.ghosts:
                break
            hi += 1
        assert lo <= got <= hi

    @rule(key=keys)
    def delete(self, key: str) -> None:
        got = self.eng.delete(NS, key)
        if key in self.ghosts:
            if got:
                self.ghosts.discard(key)
            return
        assert got == (key in self.model)
        self.model.pop(key, None)

    # ------------------------------------------------------------------ restarts
    @rule()
    def crash_and_reopen(self) -> None:
        self._reopen(crash=True, touched=set())

    @rule()
    def close_and_reopen(self) -> None:
        self._reopen(crash=False, touched=set())

    # ------------------------------------------------------------------ faults
    @rule(where=st.floats(0.0, 1.0), kind=st.sampled_from(["cut", "garbage", "zeros"]))
    def torn_tail(self, where: float, kind: str) -> None:
        seg = self.eng.active
        assert seg is not None
        path = segment_path(DATA_DIR, seg.id)
        f = self.dev.files[path]
        if kind == "cut":
            cut = PAGE + int(where * (len(f) - PAGE))
            touched = {k for k, _start, end in self._records(seg.id) if end > cut}
            del f[cut:]
        else:
            n = 1 + int(where * 3 * PAGE)
            f.extend(bytes(n) if kind == "zeros" else bytes(value(7, n)))
            touched = set()
        self._reopen(crash=True, touched=touched)
        assert len(self.dev.files[path]) == self.eng.segments[seg.id].end  # the tail was cut

    @rule(which=st.floats(0.0, 1.0), where=st.floats(0.0, 1.0), mask=st.integers(1, 255))
    def bit_flip(self, which: float, where: float, mask: int) -> None:
        sids = sorted(self.eng.segments)
        sid = sids[min(int(which * len(sids)), len(sids) - 1)]
        f = self.dev.files[segment_path(DATA_DIR, sid)]
        off = min(int(where * len(f)), len(f) - 1)
        records = self._records(sid)
        in_payload = {k for k, start, end in self._payloads(sid) if start <= off < end}
        if off < PAGE:  # the segment header: the whole segment may go at reopen
            touched = {k for k, _s, _e in records}
        elif self.eng.segments[sid] is self.eng.active:
            # a bad payload is one corrupt block; a bad header (or padding, seen as one
            # here) may end the scan, which then cuts every record from there on
            touched = in_payload or {k for k, _s, end in records if end > off}
        else:
            touched = {k for k, start, end in records if start <= off < end}
        f[off] ^= mask
        self.flipped |= touched
        # Before the restart: a read verifies, so it returns the stored bytes or a miss.
        for k in KEYS:
            got = self.eng.get(NS, k)
            if k in touched:
                assert got is None or got == self.model.get(k), k
            else:
                assert got == self.model.get(k), k
        self._reopen(crash=True, touched=touched)

    @rule(which=st.floats(0.0, 1.0), where=st.floats(0.0, 1.0), mask=st.integers(1, 255))
    def payload_flip_in_active_segment(self, which: float, where: float, mask: int) -> None:
        """One bad payload byte in the unsealed segment is one corrupt block: after a crash
        every other acknowledged block reads back exactly, and the block's key does not come
        back as an older version (the corrupt record stands as a tombstone)."""
        seg = self.eng.active
        assert seg is not None
        payloads = self._payloads(seg.id)
        if not payloads:
            return
        n = min(int(which * len(payloads)), len(payloads) - 1)
        key, start, end = payloads[n]
        newest = not any(k == key and s > start for k, s, _e in self._records(seg.id))
        off = min(start + int(where * (end - start)), end - 1)
        self.dev.files[segment_path(DATA_DIR, seg.id)][off] ^= mask
        self.flipped.add(key)
        for k in KEYS:  # a read verifies: the stored bytes (DRAM) or a miss
            got = self.eng.get(NS, k)
            assert got == self.model.get(k) or (k == key and got is None), k
        seen = self.eng.stats()["checksum_failures"]
        self._reopen(crash=True, touched={key})
        assert seen + self.eng.stats()["checksum_failures"] >= 1  # by a read, or by the scan
        if newest:
            assert self.eng.get(NS, key) is None, key

    # ------------------------------------------------------------------ helpers
    def _payloads(self, sid: int) -> list[tuple[str, int, int]]:
        """(key, start, end) of the payload bytes of every non-empty record in ``sid``."""
        summary = load_segment_summary(self.eng, self.eng.segments[sid])
        assert summary is not None
        out = []
        for i, kb in enumerate(summary.keys):
            length = int(summary.cols["length"][i])
            if not length:  # a tombstone, or an empty block: no payload byte to flip
                continue
            nsb = summary.namespaces[int(summary.cols["ns"][i])]
            hdr_len = fmt.header_len_for(nsb, kb, b"")
            start = int(summary.cols["page"][i]) * PAGE
            start += hdr_len if hdr_len + length <= PAGE else PAGE
            out.append((kb.decode(), start, start + length))
        return out

    def _records(self, sid: int) -> list[tuple[str, int, int]]:
        """(key, start, end) of every record in segment ``sid``."""
        summary = load_segment_summary(self.eng, self.eng.segments[sid])
        assert summary is not None
        out = []
        for i, kb in enumerate(summary.keys):
            nsb = summary.namespaces[int(summary.cols["ns"][i])]
            start = int(summary.cols["page"][i]) * PAGE
            span = fmt.record_span(fmt.header_len_for(nsb, kb, b""),
                                   int(summary.cols["length"][i]))
            out.append((kb.decode(), start, start + span))
        return out

    def _reopen(self, *, crash: bool, touched: set[str]) -> None:
        if not crash:
            assert self.eng.check(deep=False) == []
            self.eng.close()
        else:  # a dead process's descriptors close, and its data directory lock with them
            assert self.eng.dir_lock is not None
            self.eng.dir_lock.release()
        self.eng = Engine.open(self.cfg, self.dev)
        # Learn the state recovery left: touched keys may revert to any stored version or
        # vanish; every other key must read back exactly as before.
        ghosts = set()
        for k in KEYS:
            present = self.eng.exists(NS, k)
            got = self.eng.get(NS, k)
            if k in touched:
                assert got is None or got in self.hist[k], k
            else:
                assert got == self.model.get(k), k
            if got is None:
                self.model.pop(k, None)
                if present:  # an index entry whose record fails verification
                    assert k in self.flipped, k
                    ghosts.add(k)
            else:
                self.model[k] = got
        self.ghosts = ghosts

    @invariant()
    def consistent(self) -> None:
        if hasattr(self, "eng"):
            assert self.eng.check() == []

    def teardown(self) -> None:
        if not hasattr(self, "eng"):
            return
        for k in KEYS:  # reads drop entries whose records a fault corrupted
            got = self.eng.get(NS, k)
            # a flipped byte flipped back makes its record whole again: it may come back
            assert got is None or got == self.model.get(k) or (
                k in self.flipped and got in self.hist[k]), k
        assert self.eng.check(deep=True) == []
        self.eng.close()


EngineMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEngineMachine = EngineMachine.TestCase

