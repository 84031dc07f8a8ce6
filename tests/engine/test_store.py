"""Engine behaviour through its public API (docs/ENGINE_API.md), on memory and real files."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from kvstore import limits
from kvstore.engine import batch, reader, recovery, state, store
from kvstore.engine import format as fmt
from kvstore.engine.store import STAT_NAMES, Engine
from kvstore.errors import (
    ChecksumMismatch,
    EntityTooLarge,
    InvalidArgument,
    InvalidKey,
    InvalidNamespace,
    LimitExceeded,
    NamespaceNotEmpty,
    NamespaceNotFound,
)
from kvstore.keys import Layout

from .conftest import NS, SEGMENT_BYTES, Engines, pattern

API_STATS = ("puts puts_existing gets hits_dram hits_flash misses bytes_written bytes_read "
             "checksum_failures evicted_segments evicted_blocks reinserted_blocks expired_blocks "
             "deletes blocks namespaces flash_used_bytes flash_capacity_bytes dram_used_bytes "
             "dram_capacity_bytes segments leases_active heads io_errors index_memory_bytes").split()


class FakeClock:
    """Stands in for the ``time`` module inside engine modules so TTLs expire without sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "real"])
def any_engine(request: pytest.FixtureRequest, engines: Engines) -> Engine:
    return engines.open(engines.device(request.param))


@pytest.mark.parametrize("size", [0, 1, 100, 4000, 4096, 5000, 3 * 4096 + 17, 300_000])
def test_put_get_round_trip(any_engine: Engine, size: int) -> None:
    eng = any_engine
    data = pattern(size, size)
    res = eng.put(NS, "k", data)
    assert res.created and res.meta.length == size and res.meta.checksum == fmt.checksum(data)
    assert res.meta.etag == f"{fmt.checksum(data):016x}"
    assert eng.get(NS, "k") == data
    buf = bytearray(size + 10)
    assert eng.get_into(NS, "k", buf) == size and bytes(buf[:size]) == data
    with eng.read(NS, "k") as view:
        assert view is not None and view.payload.readonly
        assert bytes(view.payload) == data and view.meta.length == size
    head = eng.head(NS, "k")
    assert head is not None and head.key == "k" and head.namespace == NS
    assert head.checksum == res.meta.checksum and head.seq == res.meta.seq
    assert eng.exists(NS, "k") and eng.count(NS) == 1


def test_data_may_be_any_buffer(engine: Engine) -> None:
    import numpy as np

    arr = np.arange(1000, dtype=np.uint16)
    engine.put(NS, "np", arr)
    engine.put(NS, "mv", memoryview(b"abc"))
    engine.put(NS, "ba", bytearray(b"xyz"))
    assert engine.get(NS, "np") == arr.tobytes()
    assert engine.get(NS, "mv") == b"abc" and engine.get(NS, "ba") == b"xyz"


def test_misses(engine: Engine) -> None:
    assert engine.get(NS, "nope") is None
    assert engine.get_into(NS, "nope", bytearray(10)) is None
    assert engine.head(NS, "nope") is None
    with engine.read(NS, "nope") as v:
        assert v is None
    assert not engine.exists(NS, "nope")
    assert engine.stats()["misses"] == 4


def test_get_into_too_small_buffer(engine: Engine) -> None:
    engine.put(NS, "k", b"x" * 100)
    with pytest.raises(InvalidArgument):
        engine.get_into(NS, "k", bytearray(99))
    assert engine.get(NS, "k") == b"x" * 100


def test_meta_round_trips_and_pushes_the_payload_to_the_next_page(engine: Engine) -> None:
    meta = b"m" * 2000
    data = pattern(3, 3000)  # inline without meta, paged with it
    engine.put(NS, "k", data, meta=meta)
    head = engine.head(NS, "k")
    assert head is not None and head.meta == meta
    assert engine.get(NS, "k") == data
    with pytest.raises(LimitExceeded):
        engine.put(NS, "big-meta", b"x", meta=b"m" * (fmt.meta_bytes_max + 1))


def test_idempotent_put_writes_nothing(engine: Engine) -> None:
    first = engine.put(NS, "k", b"one")
    before = engine.stats()
    file_bytes = engine.flash_used_bytes()
    again = engine.put(NS, "k", b"two, longer")
    assert not again.created and again.meta.checksum == first.meta.checksum
    after = engine.stats()
    assert after["bytes_written"] == before["bytes_written"] == 3
    assert after["puts"] == before["puts"] and after["puts_existing"] == 1
    assert engine.flash_used_bytes() == file_bytes
    assert engine.get(NS, "k") == b"one"


def test_overwrite_semantics(engine: Engine) -> None:
    engine.put(NS, "k", b"one")
    res = engine.put(NS, "k", b"two", overwrite=True)
    assert res.created and engine.get(NS, "k") == b"two"
    used = engine.flash_used_bytes()
    same = engine.put(NS, "k", b"two", overwrite=True)  # same length and checksum: no write
    assert not same.created and engine.flash_used_bytes() == used
    assert engine.count(NS) == 1 and engine.stats()["blocks"] == 1
    engine.put(NS, "k", b"three!", overwrite=True)
    assert engine.get(NS, "k") == b"three!"


def test_overwrite_survives_reopen(engines: Engines) -> None:
    eng = engines.open()
    eng.put(NS, "k", b"one")
    eng.put(NS, "k", b"two", overwrite=True)
    for crash in (False, True):
        eng = engines.reopen(eng, crash=crash)
        assert eng.get(NS, "k") == b"two" and eng.count(NS) == 1


def test_overwrite_replaces_the_dram_copy(engines: Engines) -> None:
    eng = engines.open(dram_bytes=1 << 20)
    eng.put(NS, "k", b"one")
    assert eng.get(NS, "k") == b"one"
    eng.put(NS, "k", b"two", overwrite=True)
    assert eng.get(NS, "k") == b"two"
    assert eng.stats()["hits_dram"] == 2


def test_checksum_mismatch_stores_nothing(engine: Engine) -> None:
    with pytest.raises(ChecksumMismatch):
        engine.put(NS, "k", b"data", checksum=fmt.checksum(b"other"))
    assert not engine.exists(NS, "k")
    assert engine.stats()["bytes_written"] == 0 and engine.stats()["puts"] == 0
    assert engine.put(NS, "k", b"data", checksum=fmt.checksum(b"data")).created


def test_limits_are_typed_errors(engine: Engine) -> None:
    with pytest.raises(EntityTooLarge):
        engine.put(NS, "big", bytes(limits.block_bytes_max + 1))
    with pytest.raises(EntityTooLarge):  # legal size, but no room in one 1 MiB segment
        engine.put(NS, "big", bytes(SEGMENT_BYTES))
    for bad in ("", "a\x00b", "k" * (limits.key_bytes_max + 1)):
        with pytest.raises(InvalidKey):
            engine.put(NS, bad, b"x")
        with pytest.raises(InvalidKey):
            engine.get(NS, bad)
        with pytest.raises(InvalidKey):
            engine.exists(NS, bad)
    engine.put(NS, "k" * limits.key_bytes_max, b"longest key")
    assert engine.get(NS, "k" * limits.key_bytes_max) == b"longest key"
    with pytest.raises(InvalidArgument):
        engine.put(NS, "k", b"x", ttl_seconds=-1)
    with pytest.raises(InvalidArgument):
        engine.put(NS, "k", b"x", ttl_seconds=limits.ttl_seconds_max + 1)
    too_many = ["k"] * (limits.batch_keys_max + 1)
    for call in (engine.exists_many, engine.delete_many, engine.prefetch):
        with pytest.raises(LimitExceeded):
            call(NS, too_many)
    with pytest.raises(LimitExceeded):
        engine.lookup_prefix(NS, ["k"] * (limits.chain_keys_max + 1))
    with pytest.raises(InvalidArgument):
        engine.lookup_prefix(NS, ["k"], lease_seconds=limits.lease_seconds_max + 1)
    assert not engine.exists(NS, "big")


def test_unknown_namespace_everywhere(engine: Engine) -> None:
    calls: list[Callable[[], object]] = [
        lambda: engine.put("nosuch", "k", b"x"), lambda: engine.get("nosuch", "k"),
        lambda: engine.get_into("nosuch", "k", bytearray(1)), lambda: engine.head("nosuch", "k"),
        lambda: engine.exists("nosuch", "k"), lambda: engine.exists_many("nosuch", ["k"]),
        lambda: engine.lookup_prefix("nosuch", ["k"]), lambda: engine.delete("nosuch", "k"),
        lambda: engine.delete_many("nosuch", ["k"]), lambda: engine.prefetch("nosuch", ["k"]),
        lambda: engine.list_blocks("nosuch"), lambda: engine.count("nosuch"),
        lambda: engine.namespace("nosuch"), lambda: engine.delete_namespace("nosuch"),
    ]
    for call in calls:
        with pytest.raises(NamespaceNotFound):
            call()


def test_namespace_lifecycle_and_persistence(engines: Engines) -> None:
    eng = engines.open(namespace=None)
    layout = dict(model="m", dtype="fp16", num_layers=2, num_kv_heads=2, head_dim=4,
                  tokens_per_block=8)
    info = eng.create_namespace("model-a", owner="tenant1", layout=layout)
    assert info.block_bytes == Layout(**layout).block_bytes() == 2 * 2 * 2 * 4 * 8 * 2
    assert info.fingerprint == Layout(**layout).fingerprint_hex()
    eng.create_namespace("plain")
    with pytest.raises(InvalidNamespace):
        eng.create_namespace("Bad_Name")
    with pytest.raises(InvalidArgument):
        eng.put("model-a", "k", b"x" * 511)
    eng.put("model-a", "k", b"x" * 512)
    with pytest.raises(NamespaceNotEmpty):
        eng.delete_namespace("model-a")
    before = eng.list_namespaces()
    assert [n.name for n in before] == ["model-a", "plain"]
    for crash in (False, True):
        eng = engines.reopen(eng, crash=crash)
        assert eng.list_namespaces() == before
        assert eng.namespace("model-a").owner == "tenant1"
        assert eng.get("model-a", "k") == b"x" * 512 and eng.count("model-a") == 1
    assert eng.delete("model-a", "k")
    eng.delete_namespace("model-a")
    eng.delete_namespace("plain")
    eng = engines.reopen(eng)
    assert eng.list_namespaces() == []
    assert eng.stats()["namespaces"] == 0


def test_recreated_namespace_does_not_get_old_blocks(engines: Engines) -> None:
    eng = engines.open()
    eng.put(NS, "k", b"old")
    eng.delete(NS, "k")
    eng.delete_namespace(NS)
    eng.create_namespace(NS)
    assert eng.get(NS, "k") is None
    eng = engines.reopen(eng, crash=True)
    assert eng.get(NS, "k") is None and eng.count(NS) == 0


def test_same_key_in_two_namespaces(engine: Engine) -> None:
    engine.create_namespace("ns2")
    engine.put(NS, "k", b"one")
    engine.put("ns2", "k", b"two")
    assert engine.get(NS, "k") == b"one" and engine.get("ns2", "k") == b"two"
    engine.delete(NS, "k")
    assert engine.get("ns2", "k") == b"two"


def test_exists_many_and_lookup_prefix(engine: Engine) -> None:
    keys = [f"blk-{i}" for i in range(6)]
    for k in keys[:4]:
        engine.put(NS, k, k.encode())
    engine.delete(NS, keys[2])
    assert engine.exists_many(NS, keys) == [True, True, False, True, False, False]
    assert engine.exists_many(NS, []) == []
    assert engine.lookup_prefix(NS, keys) == 2
    assert engine.lookup_prefix(NS, keys[3:]) == 1
    assert engine.lookup_prefix(NS, []) == 0
    assert engine.lookup_prefix(NS, ["absent"] + keys) == 0
    assert engine.lookup_prefix(NS, keys, lease_seconds=5) == 2
    assert engine.stats()["leases_active"] == 2
    engine.get(NS, keys[0])  # a read does not end the lease (its expiry does)
    assert engine.stats()["leases_active"] == 2


def test_delete_and_delete_many(engines: Engines) -> None:
    eng = engines.open()
    for i in range(10):
        eng.put(NS, f"k{i}", pattern(i, 5000))
    assert eng.delete(NS, "k0")
    assert not eng.delete(NS, "k0")
    assert not eng.delete(NS, "never")
    assert eng.delete_many(NS, ["k1", "k2", "k1", "never"]) == 2
    assert eng.count(NS) == 7 and eng.stats()["deletes"] == 3
    for crash in (False, True):
        eng = engines.reopen(eng, crash=crash)
        assert [eng.exists(NS, f"k{i}") for i in range(4)] == [False, False, False, True]
        assert eng.get(NS, "k1") is None and eng.get(NS, "k9") == pattern(9, 5000)
        assert eng.count(NS) == 7
    eng.put(NS, "k0", b"back")  # a deleted key can be written again
    eng = engines.reopen(eng, crash=True)
    assert eng.get(NS, "k0") == b"back"


def test_delete_stays_deleted_across_sealed_segments(engines: Engines) -> None:
    eng = engines.open()
    eng.put(NS, "victim", b"v" * 5000)
    filler = pattern(1, 200_000)
    for i in range(12):  # several segment rolls between the put and the delete
        eng.put(NS, f"fill{i}", filler)
    eng.delete(NS, "victim")
    for i in range(12, 24):
        eng.put(NS, f"fill{i}", filler)
    assert eng.stats()["segments"] > 3
    for crash in (False, True):
        eng = engines.reopen(eng, crash=crash)
        assert eng.get(NS, "victim") is None


def test_prefetch_stages_into_dram(engines: Engines) -> None:
    eng = engines.open(dram_bytes=1 << 20, dram_on_put=False)
    for i in range(4):
        eng.put(NS, f"k{i}", pattern(i, 10_000))
    assert eng.stats()["dram_used_bytes"] == 0
    assert eng.prefetch(NS, ["k0", "k1", "absent"]) == 2
    assert eng.stats()["dram_used_bytes"] == 20_000
    flash_before = eng.stats()["hits_flash"]
    assert eng.get(NS, "k0") == pattern(0, 10_000) and eng.get(NS, "k1") == pattern(1, 10_000)
    st = eng.stats()
    assert st["hits_dram"] == 2 and st["hits_flash"] == flash_before
    assert eng.get(NS, "k2") == pattern(2, 10_000)
    assert eng.stats()["hits_flash"] == flash_before + 1
    assert eng.prefetch(NS, ["k0"]) == 1  # already staged


def test_prefetch_into_a_zero_dram_tier_stages_nothing(engine: Engine) -> None:
    engine.put(NS, "k", b"x" * 100)
    assert engine.prefetch(NS, ["k"]) == 0
    assert engine.get(NS, "k") == b"x" * 100


def test_ttl_expiry(engines: Engines, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(1_800_000_000.0)
    for mod in (store, batch, state, reader, recovery):
        monkeypatch.setattr(mod, "time", clock)
    eng = engines.open()
    eng.put(NS, "short", b"s", ttl_seconds=10)
    eng.put(NS, "long", b"l", ttl_seconds=1000)
    eng.put(NS, "forever", b"f")
    head = eng.head(NS, "short")
    assert head is not None and head.expires == clock.now + 10
    clock.now += 5
    assert eng.get(NS, "short") == b"s"
    clock.now += 6
    assert eng.get(NS, "short") is None and not eng.exists(NS, "short")
    assert eng.stats()["expired_blocks"] == 1 and eng.count(NS) == 2
    assert eng.put(NS, "short", b"again").created  # an expired key is absent for puts too
    clock.now += 2000
    eng = engines.reopen(eng, crash=True)  # recovery drops what expired while it was down
    assert eng.count(NS) == 2 and eng.get(NS, "forever") == b"f"
    assert eng.get(NS, "short") == b"again"
    assert eng.get(NS, "long") is None and eng.stats()["expired_blocks"] == 1  # counters restart


def test_delete_namespace_with_only_expired_blocks(engines: Engines,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(1_800_000_000.0)
    for mod in (batch, state):
        monkeypatch.setattr(mod, "time", clock)
    eng = engines.open()
    eng.put(NS, "k", b"x", ttl_seconds=1)
    with pytest.raises(NamespaceNotEmpty):
        eng.delete_namespace(NS)
    clock.now += 3
    eng.delete_namespace(NS)
    assert eng.list_namespaces() == []


def test_ttl_expires_in_real_time(engine: Engine) -> None:
    import time

    engine.put(NS, "k", b"x", ttl_seconds=0.2)
    assert engine.get(NS, "k") == b"x"
    deadline = time.monotonic() + 3.0  # expiry is kept in whole seconds: at most 1 s late
    while engine.exists(NS, "k") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.get(NS, "k") is None


def test_stats_names(engine: Engine) -> None:
    st = engine.stats()
    for name in API_STATS + list(STAT_NAMES):
        assert name in st, name
    assert st["flash_capacity_bytes"] == engine.config.capacity_bytes
    assert st["segments"] == 1 and st["blocks"] == 0
    assert engine.device_name == "memory"


def test_concurrent_puts_and_gets_on_real_files(file_engine: Engine) -> None:
    eng = file_engine
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(150):
                key = f"t{t}-{i}"
                data = pattern(t * 1000 + i, 1000 + 97 * i)
                eng.put(NS, key, data)
                assert eng.get(NS, key) == data
                other = f"t{(t + 1) % 4}-{i // 2}"
                got = eng.get(NS, other)
                assert got is None or got == pattern(((t + 1) % 4) * 1000 + i // 2,
                                                     1000 + 97 * (i // 2))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert errors == []
    assert eng.count(NS) == 600


def test_put_many(engines: Engines) -> None:
    eng = engines.open()
    eng.put(NS, "old", b"old")
    items = [(f"b{i}", pattern(i, 3000 + 5000 * i)) for i in range(5)]
    res = eng.put_many(NS, [items[0], ("old", b"new"), *items[1:], ("b0", b"dup")])
    assert [r.created for r in res] == [True, False, True, True, True, True, False]
    assert [r.meta.key for r in res] == ["b0", "old", "b1", "b2", "b3", "b4", "b0"]
    for k, v in items:
        assert eng.get(NS, k) == v
    assert eng.get(NS, "old") == b"old"
    seqs = [r.meta.seq for r in res if r.created]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    eng = engines.reopen(eng, crash=True)
    assert all(eng.get(NS, k) == v for k, v in items)


def test_put_many_validates_everything_before_writing(engine: Engine) -> None:
    used = engine.flash_used_bytes()
    with pytest.raises(InvalidKey):
        engine.put_many(NS, [("good", b"x"), ("", b"y")])
    with pytest.raises(ChecksumMismatch):
        engine.put_many(NS, [("a", b"x"), ("b", b"y")],
                        checksums=[fmt.checksum(b"x"), fmt.checksum(b"z")])
    with pytest.raises(LimitExceeded):
        engine.put_many(NS, [(f"k{i}", b"") for i in range(limits.batch_keys_max + 1)])
    assert engine.flash_used_bytes() == used and engine.count(NS) == 0
    assert not engine.exists(NS, "good") and not engine.exists(NS, "a")


def test_put_many_overwrite(engine: Engine) -> None:
    engine.put(NS, "k", b"one")
    res = engine.put_many(NS, [("k", b"two"), ("j", b"new")], overwrite=True)
    assert [r.created for r in res] == [True, True]
    assert engine.get(NS, "k") == b"two"


def test_read_dram(engines: Engines) -> None:
    eng = engines.open(dram_bytes=64 * 1024)
    eng.put(NS, "hot", b"h" * 1000)
    eng.put(NS, "big", b"b" * (100 * 1024))  # larger than the tier: flash only
    view = eng.read_dram(NS, "hot")
    assert view is not None and bytes(view.payload) == b"h" * 1000 and view.stable
    assert view.meta.length == 1000 and view.payload.readonly
    assert eng.read_dram(NS, "big") is None
    assert eng.read_dram(NS, "absent") is None
    assert eng.stats()["hits_dram"] == 1
    eng.put(NS, "hot", b"H" * 10, overwrite=True)
    assert bytes(view.payload) == b"h" * 1000  # a view handed out stays what it was
    fresh = eng.read_dram(NS, "hot")
    assert fresh is not None and bytes(fresh.payload) == b"H" * 10


def test_donated_buffer_is_kept_by_the_dram_tier(engines: Engines) -> None:
    eng = engines.open(dram_bytes=1 << 20)
    data = bytearray(b"d" * 5000)
    eng.put(NS, "k", data, donate=True)
    assert eng.get(NS, "k") == b"d" * 5000
    eng.dram.clear()
    assert eng.get(NS, "k") == b"d" * 5000  # and flash holds the same bytes


def test_head_reads_only_the_header_and_verifies_it(engines: Engines) -> None:
    eng = engines.open()
    eng.put(NS, "k", pattern(1, 50_000), meta=b"content-type: x")
    head = eng.head(NS, "k")
    assert head is not None and head.meta == b"content-type: x" and head.length == 50_000
    e = eng.index.get(fmt.digest_of(NS.encode(), b"k"))
    path = f"{eng.config.data_dir}/seg-{e.seg:08x}.kvs"
    eng.device.files[path][e.page * fmt.PAGE + 20] ^= 0x10
    assert eng.head(NS, "k") is None
    assert eng.stats()["checksum_failures"] == 1 and not eng.exists(NS, "k")


def test_head_dram_answers_only_from_the_dram_tier(engines: Engines) -> None:
    eng = engines.open(dram_bytes=500_000)
    eng.put(NS, "hot", b"h" * 1000)  # kept in DRAM on put
    eng.put(NS, "cold", b"c" * 600_000)  # larger than the whole tier: flash only
    meta = eng.head_dram(NS, "hot")
    assert meta is not None and meta.length == 1000 and meta.key == "hot"
    assert eng.head_dram(NS, "cold") is None  # would need I/O: the caller uses head()
    assert eng.head(NS, "cold") is not None
    assert eng.head_dram(NS, "missing") is None
    assert eng.stats()["heads"] == 2  # the DRAM hit and the flash head


def test_a_block_read_twice_from_flash_is_promoted_to_dram(engines: Engines) -> None:
    eng = engines.open(dram_bytes=500_000, dram_on_put=False)
    eng.put(NS, "hot", pattern(5, 100_000))
    eng.put(NS, "big", pattern(6, 600_000))  # larger than the tier: never promoted
    assert eng.get(NS, "hot") == pattern(5, 100_000)  # first read: flash
    assert eng.read_dram(NS, "hot") is None
    assert eng.get(NS, "hot") == pattern(5, 100_000)  # second read: flash, then promoted
    view = eng.read_dram(NS, "hot")
    assert view is not None and bytes(view.payload) == pattern(5, 100_000)
    for _ in range(3):
        assert eng.get(NS, "big") == pattern(6, 600_000)
    st = eng.stats()
    assert (st["promoted_blocks"], st["hits_flash"], st["hits_dram"]) == (1, 5, 1)
    never = engines.open(dram_bytes=1 << 20, dram_on_put=False, dram_promote_reads=0)
    never.put(NS, "k", b"x" * 5000)
    for _ in range(3):
        never.get(NS, "k")
    assert never.stats()["promoted_blocks"] == 0 and never.read_dram(NS, "k") is None
