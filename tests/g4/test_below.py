"""Read-through and writes of the same keys at once (``engine/below.py``): a read never returns
a version older than one acknowledged before it started, and a re-admission from G4 never wins
over a client's write. Real SeaweedFS on 127.0.0.1, real files."""

from __future__ import annotations

import random
import struct
import threading
import time
from pathlib import Path

from kvstore.engine import format as fmt
from kvstore.engine.below import readmit
from kvstore.testing_s3 import SeaweedS3
from tests.g4.test_tier import NS, attach, blocks, digest, open_engine, write

KEYS = 120
BLOCK = 32 * 1024
RUN_S = 5.0


def value(k: int, v: int) -> bytes:
    return struct.pack("<II", k, v) * (BLOCK // 8)


def test_overwrites_deletes_and_read_through_never_serve_a_stale_version(
        seaweed: SeaweedS3, tmp_path: Path) -> None:
    eng = open_engine(tmp_path / "e", dram=1 << 20)
    tier = attach(eng, seaweed, "stress")
    latest = [1] * KEYS  # the version acknowledged last (0: deleted)
    lock = threading.Lock()
    for k in range(KEYS):
        eng.put(NS, f"k{k}", value(k, 1), overwrite=True)
    stop = threading.Event()
    stale: list[tuple[int, int, int]] = []
    reads = [0, 0]  # hits, misses

    def writer() -> None:
        rnd, n = random.Random(1), 1
        while not stop.is_set():
            k = rnd.randrange(KEYS)
            with lock:  # the version is acknowledged when the call returns
                n += 1
                if rnd.random() < 0.05:
                    eng.delete(NS, f"k{k}")
                    latest[k] = 0
                else:
                    eng.put(NS, f"k{k}", value(k, n), overwrite=True)
                    latest[k] = n

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            k = rnd.randrange(KEYS)
            with lock:
                want = latest[k]
            got = eng.get(NS, f"k{k}")
            if got is None:
                reads[1] += 1
                continue
            gk, gv = struct.unpack_from("<II", got)
            assert gk == k and got == value(gk, gv), "garbled block"
            if want and gv < want:
                stale.append((k, gv, want))
            reads[0] += 1

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(RUN_S)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        st = eng.stats()
        tier.close()
        eng.close()
    assert st["hits_lower"] > 0 and st["g4_spilled_blocks"] > 0, "G4 was not exercised"
    assert not stale, f"stale versions served: {stale[:5]}"
    assert reads[0] > 0


def test_a_readmission_yields_to_a_put_in_flight_and_to_a_newer_version(
        seaweed: SeaweedS3, tmp_path: Path) -> None:
    """White-box: the two checks that keep an old version fetched from G4 off flash."""
    eng = open_engine(tmp_path / "e")
    tier = attach(eng, seaweed, "readmit")
    data = blocks(11, 96)
    try:
        write(eng, data, tier)
        k = next(k for k in data if digest(k) not in eng.index)
        d = digest(k)
        got = tier.fetch(d, NS.encode(), k.encode())
        assert got is not None
        record, hdr = got
        payload = data[k]
        eng.log.pending.add(d)  # a client's put of k is reserved, not yet published
        try:
            readmit(eng.reader, NS, d, record, hdr, payload)
        finally:
            eng.log.pending.discard(d)
        assert d not in eng.index  # yielded to the put in flight
        eng.put(NS, k, b"newer", overwrite=True)  # a newer version: G4 forgets the old one
        eng.delete(NS, k)  # ...and flash has none again
        readmit(eng.reader, NS, d, record, hdr, payload)
        assert d not in eng.index and eng.get(NS, k) is None  # the old one stays out
        assert fmt.digest_of(NS.encode(), k.encode()) == d
    finally:
        tier.close()
        eng.close()
