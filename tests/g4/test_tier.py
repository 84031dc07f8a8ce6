"""The G4 tier (issue 13) against real object stores on 127.0.0.1: SeaweedFS (``weed server
-s3``, started here) and another ``kvstore serve`` (our own S3 API). Engines on real files.

Flash holds 4 MiB (4 segments of 1 MiB); the working set is 4x that (256 blocks of 64 KiB).
Writers pause when the spill queue is full (``write``): a client writing at the rate G4 takes.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig
from kvstore.g4 import G4Tier, ObjectStore, S3Target
from kvstore.io_uring.select import open_device
from kvstore.testing_s3 import KvstoreS3, SeaweedS3

MiB = 1 << 20
NS = "g4-test"
BLOCK = 64 * 1024
CAPACITY = 4 * MiB
N = 4 * CAPACITY // BLOCK  # the working set: 4x the flash capacity
WAIT_S = 30.0

Target = SeaweedS3 | KvstoreS3


@pytest.fixture(scope="module")
def kvs3() -> Iterator[KvstoreS3]:
    s3 = KvstoreS3().start()
    yield s3
    s3.close()


def s3_client(s3: Target):  # noqa: ANN201 - boto3's client type is generated
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    return boto3.client("s3", endpoint_url=s3.endpoint, region_name=s3.region,
                        aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
                        config=Config(s3={"addressing_style": "path"}))


def open_engine(path: Path, dram: int = 0) -> Engine:
    path.mkdir(exist_ok=True)
    cfg = EngineConfig(str(path), capacity_bytes=CAPACITY, segment_bytes=1 * MiB,
                       dram_bytes=dram, reinsert=False, dram_on_put=dram > 0)
    eng = Engine.open(cfg, open_device("auto", probe_dir=str(path)))
    if NS not in {n.name for n in eng.list_namespaces()}:
        eng.create_namespace(NS)
    return eng


def attach(eng: Engine, s3: Target, prefix: str, read_timeout_s: float = 2.0,
           **kw: float) -> G4Tier:
    target = S3Target(s3.bucket, prefix, s3.endpoint, s3.region, s3.access_key, s3.secret_key)
    store = ObjectStore(target, read_timeout_seconds=read_timeout_s)
    tier = G4Tier(store, eng, **kw).start()
    until(lambda: tier.loaded, "the G4 index loaded")
    return tier


def until(cond, what: str, timeout_s: float = WAIT_S) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def drained(tier: G4Tier) -> bool:
    return tier.stats()["g4_upload_queue_segments"] == 0


def blocks(seed: int, n: int = N) -> dict[str, bytes]:
    rnd = __import__("random").Random(seed)
    return {f"blk-{seed}-{i:05d}": rnd.randbytes(BLOCK) for i in range(n)}


def write(eng: Engine, data: dict[str, bytes], tier: G4Tier | None, ttl: float = 0.0) -> None:
    for i, (k, v) in enumerate(data.items()):
        eng.put(NS, k, v, ttl_seconds=ttl)
        if tier is not None and i % 48 == 47:  # ~3 segments: wait while G4 takes them
            until(lambda: drained(tier), "the spill queue drained")
    if tier is not None:
        until(lambda: drained(tier), "the spill queue drained")


def read_back(eng: Engine, data: dict[str, bytes]) -> tuple[int, int]:
    """(hits, misses); every hit must be byte-exact."""
    hits = misses = 0
    for k, v in data.items():
        got = eng.get(NS, k)
        if got is None:
            misses += 1
        else:
            assert got == v, f"wrong bytes for {k}"
            hits += 1
    return hits, misses


@pytest.mark.parametrize("target", ["seaweed", "kvs3"])
def test_working_set_4x_flash_comes_back_from_g4(target: str, tmp_path: Path,
                                                 request: pytest.FixtureRequest) -> None:
    s3 = request.getfixturevalue(target)
    data = blocks(1)
    flash_only = open_engine(tmp_path / "flash")
    try:
        write(flash_only, data, None)
        base_hits, _ = read_back(flash_only, data)
    finally:
        flash_only.close()
    eng = open_engine(tmp_path / "g4")
    tier = attach(eng, s3, f"ws-{target}")
    try:
        write(eng, data, tier)
        stats = eng.stats()
        assert stats["g4_spilled_blocks"] >= N - stats["blocks"]
        assert eng.check() == []
        # presence answers from the index: the whole chain counts as present
        assert eng.lookup(NS, list(data)).found == N
        assert all(eng.exists_many(NS, list(data)))
        hits, misses = read_back(eng, data)
        print(f"\n{target}: second-pass hit rate with G4 {hits / N:.3f}, flash only "
              f"{base_hits / N:.3f}; G4 read p50 {eng.stats()['g4_read_p50_ms']:.1f} ms")
        assert hits + misses == N
        assert hits / N >= 0.95
        assert base_hits / N < 0.5
        assert eng.stats()["g4_hits"] > 0 and eng.stats()["readmitted_blocks"] > 0
    finally:
        tier.close()
        eng.close()


def test_g4_killed_reads_miss_then_spilling_resumes(seaweed: SeaweedS3, tmp_path: Path) -> None:
    eng = open_engine(tmp_path / "e")
    tier = attach(eng, seaweed, "kill")
    data = blocks(2, 128)
    try:
        write(eng, data, tier)
        seaweed.stop()
        try:
            # presence never asks G4: still answered while it is down
            assert eng.lookup(NS, list(data)).found == len(data)
            hits, misses = read_back(eng, data)  # no exception: a miss each, or flash
            st = eng.stats()
            assert misses > 0 and st["g4_unavailable"] > 0 and hits + misses == len(data)
            more = blocks(3, 48)
            write(eng, more, None)  # retiring segments queue, then are declined: counted
            until(lambda: eng.stats()["g4_upload_queue_segments"] > 0
                  or eng.stats()["g4_spill_dropped_blocks"] > 0, "a spill waiting")
            spilled = eng.stats()["g4_spilled_blocks"]
        finally:
            seaweed.start()
        until(lambda: eng.stats()["g4_spilled_blocks"] > spilled, "spilling to resume")
        until(lambda: drained(tier), "the spill queue drained")
        hits, misses = read_back(eng, more)
        assert hits > 0
    finally:
        tier.close()
        eng.close()


def test_g4_frozen_reads_time_out_as_misses(seaweed: SeaweedS3, tmp_path: Path) -> None:
    """SIGSTOP: connections are accepted and never answered (a slow store, not a dead one)."""
    eng = open_engine(tmp_path / "e")
    tier = attach(eng, seaweed, "slow", read_timeout_s=0.5)
    data = blocks(10, 96)
    try:
        write(eng, data, tier)
        below = [k for k in data if digest(k) not in eng.index][:12]
        assert seaweed.proc is not None
        os.killpg(seaweed.proc.pid, signal.SIGSTOP)
        try:
            assert all(eng.get(NS, k) is None for k in below)  # misses, no exception
        finally:
            os.killpg(seaweed.proc.pid, signal.SIGCONT)
        st = eng.stats()
        # the first reads time out; then the breaker answers without a request
        assert st["g4_unavailable"] == len(below) and st["misses_absent"] >= len(below)
        until(lambda: tier.store.breaker.up, "the breaker to close again")
        assert eng.get(NS, below[0]) == data[below[0]]  # back: a hit again
    finally:
        tier.close()
        eng.close()


def test_restart_finds_spilled_blocks(seaweed: SeaweedS3, tmp_path: Path) -> None:
    data = blocks(4, 128)
    eng = open_engine(tmp_path / "e")
    tier = attach(eng, seaweed, "restart")
    try:
        write(eng, data, tier)
        assert eng.stats()["g4_spilled_blocks"] > 0
    finally:
        tier.close()
        eng.close()
    eng = open_engine(tmp_path / "e")
    tier = attach(eng, seaweed, "restart")
    try:
        assert tier.stats()["g4_loaded_blocks"] > 0
        hits, misses = read_back(eng, data)
        assert hits / len(data) >= 0.95, (hits, misses)
    finally:
        tier.close()
        eng.close()


def test_corrupt_object_is_a_miss_and_dropped(seaweed: SeaweedS3, tmp_path: Path) -> None:
    data = blocks(5, 96)
    eng = open_engine(tmp_path / "e")
    tier = attach(eng, seaweed, "corrupt")
    try:
        write(eng, data, tier)
        c = s3_client(seaweed)
        with tier.lock:
            k, e = next((k, tier.index.get(d)) for k in data
                        if (d := digest(k)) in tier.index)
            obj = tier.objects[e.seg]
        key = f"corrupt/{obj.name}"
        raw = bytearray(c.get_object(Bucket=seaweed.bucket, Key=key)["Body"].read())
        raw[e.page * 4096 + 4096 + 100] ^= 0xFF  # one payload byte of that block
        c.put_object(Bucket=seaweed.bucket, Key=key, Body=bytes(raw))
        assert eng.exists(NS, k)
        assert eng.get(NS, k) is None  # verified: a miss, never the flipped bytes
        assert eng.stats()["g4_corrupt"] == 1
        assert not eng.exists(NS, k)  # dropped from the G4 index
    finally:
        tier.close()
        eng.close()


def test_delete_and_gc_remove_objects(seaweed: SeaweedS3, tmp_path: Path) -> None:
    data = blocks(6, 96)
    eng = open_engine(tmp_path / "e")
    tier = attach(eng, seaweed, "gc")
    c = s3_client(seaweed)
    try:
        write(eng, data, tier)
        listed = {o["Key"] for o in c.list_objects_v2(Bucket=seaweed.bucket,
                                                      Prefix="gc/").get("Contents", [])}
        assert any(k.endswith(".kvp") for k in listed)
        for k in data:
            assert eng.delete(NS, k)
        assert not any(eng.exists_many(NS, list(data)))
        until(lambda: not c.list_objects_v2(Bucket=seaweed.bucket, Prefix="gc/").get("Contents"),
              "G4 objects of deleted blocks to be removed")
        assert tier.stats()["g4_gc_objects"] > 0
    finally:
        tier.close()
        eng.close()


def test_deleted_namespace_takes_its_g4_blocks_also_after_a_restart(seaweed: SeaweedS3,
                                                                     tmp_path: Path) -> None:
    data = blocks(9, 96)
    eng = open_engine(tmp_path / "e")
    tier = attach(eng, seaweed, "nsdel")
    try:
        write(eng, data, tier)
        on_flash = [k for k in data if digest(k) in eng.index]
        assert 0 < len(on_flash) < len(data)
        for k in on_flash:
            assert eng.delete(NS, k)
        eng.delete_namespace(NS)  # flash is empty; its G4 blocks go with it
        eng.create_namespace(NS)
        assert not any(eng.exists_many(NS, list(data)))
    finally:
        tier.close()
        eng.close()
    eng = open_engine(tmp_path / "e")
    tier = attach(eng, seaweed, "nsdel")
    try:
        assert not any(eng.exists_many(NS, list(data)))
        assert all(eng.get(NS, k) is None for k in list(data)[:8])
    finally:
        tier.close()
        eng.close()


def test_expired_blocks_are_misses_and_their_objects_are_collected(seaweed: SeaweedS3,
                                                                  tmp_path: Path) -> None:
    data = blocks(8, 96)
    eng = open_engine(tmp_path / "e")
    tier = attach(eng, seaweed, "ttl", gc_interval_seconds=0.2)
    c = s3_client(seaweed)
    try:
        write(eng, data, tier, ttl=2.0)
        assert tier.stats()["g4_objects"] > 0
        until(lambda: not c.list_objects_v2(Bucket=seaweed.bucket, Prefix="ttl/").get("Contents"),
              "G4 objects of expired blocks to be removed")
        hits, misses = read_back(eng, data)
        assert hits == 0 and misses == len(data)
    finally:
        tier.close()
        eng.close()


def test_prefetch_pulls_spilled_blocks_into_dram(seaweed: SeaweedS3, tmp_path: Path) -> None:
    data = blocks(7, 128)
    eng = open_engine(tmp_path / "e", dram=2 * MiB)
    tier = attach(eng, seaweed, "prefetch")
    try:
        write(eng, data, tier)
        chain = [k for k in data if eng.read_dram(NS, k) is None][:16]
        assert chain and eng.stats()["g4_blocks"] > 0
        assert eng.prefetch(NS, chain) == len(chain)
        for k in chain:
            v = eng.read_dram(NS, k)
            assert v is not None and bytes(v.payload) == data[k]
    finally:
        tier.close()
        eng.close()


def digest(key: str) -> bytes:
    from kvstore.engine import format as fmt

    return fmt.digest_of(NS.encode(), key.encode())


def test_encrypted_blocks_spill_encrypted_and_come_back_readable(seaweed: SeaweedS3,
                                                                 tmp_path: Path) -> None:
    """With encryption at rest, G4 holds the records as stored (ciphertext: a known plaintext
    is nowhere in the bucket) and a read-through decrypts them: byte-exact, never a miss."""
    path = tmp_path / "enc"
    path.mkdir()
    cfg = EngineConfig(str(path), capacity_bytes=CAPACITY, segment_bytes=1 * MiB, dram_bytes=0,
                       reinsert=False, dram_on_put=False, master_key=bytes(range(32)))
    eng = Engine.open(cfg, open_device("auto", probe_dir=str(path)))
    eng.create_namespace(NS)
    marker = b"PLAINTEXT-MARKER-" * 64
    data = {k: marker + v[len(marker):] for k, v in blocks(9).items()}
    tier = attach(eng, seaweed, "encrypted")
    try:
        write(eng, data, tier)
        assert eng.stats()["g4_spilled_blocks"] > 0
        cl = s3_client(seaweed)
        listed = cl.list_objects_v2(Bucket=seaweed.bucket, Prefix="encrypted/").get("Contents", [])
        assert listed
        for obj in listed[:8]:
            body = cl.get_object(Bucket=seaweed.bucket, Key=obj["Key"])["Body"].read()
            assert b"PLAINTEXT-MARKER-" not in body
        hits, misses = read_back(eng, data)
        assert (hits, misses) == (len(data), 0)
        assert eng.stats()["g4_hits"] > 0 and eng.stats()["checksum_failures"] == 0
    finally:
        tier.close()
        eng.close()
