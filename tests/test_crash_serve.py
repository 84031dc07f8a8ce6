"""A real ``kvstore serve`` SIGKILLed again and again under mixed S3 + bulk load.

Each cycle starts the server on the same data dir, checks what the previous cycles left (every
acknowledged block byte-exact over the bulk port, no acknowledged delete undone, every listed
block that was in flight at a kill exact, ``POST /v1/check`` clean), then runs an S3 writer (PUT
and DELETE over plain HTTP), a bulk writer (batched puts) and a bulk reader (get, exists, lookup
of settled blocks, which must be exact) until a SIGKILL at a random moment; one cycle in five is
killed during start-up or recovery instead. An error answer before the kill fails the test.

``make test`` runs ``KILLS_DEFAULT`` kills (the engine-level tests/engine/test_crash.py adds 30
more); ``make soak`` sets ``KVSTORE_SERVE_CRASH_KILLS`` to hundreds. The seed is in every
failure message; ``KVSTORE_CRASH_SEED`` replays a run.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from pathlib import Path

from kvstore_client import Client
from serve_proc import ServeProc

KILLS_DEFAULT = 6
CYCLES_PER_KILL_MAX = 2  # bounds the loop: kills during start-up may land after exit
S3_BUCKET, BULK_NS = "crash-s3", "crash-bulk"
# large: nothing the test tracks may be evicted (the oldest are deleted instead, SETTLED_MAX)
ARGS = ["--capacity", "8GiB", "--segment-size", "4MiB", "--dram", "8MiB", "--device", "posix"]
LOAD_OPS_MAX = 400  # per writer per cycle: bounds the store whatever the timing
SETTLED_MAX = 3000  # past this many tracked blocks, the oldest are deleted (acknowledged)
CHUNK = 256


def content(key: str) -> bytes:
    """The only bytes ever stored under ``key``: any block can be checked from its key."""
    h = hashlib.blake2b(key.encode(), digest_size=16).digest()
    n = int.from_bytes(h[:4], "little")
    size = 200_000 + n % 60_000 if n % 25 == 0 else 1 + n % 16_384  # a few roll segments
    unit = hashlib.blake2b(h, digest_size=64).digest()
    return (unit * (size // 64 + 1))[:size]


class Load:
    """The three load threads of one cycle; ``stop()`` after the kill."""

    def __init__(self, srv: ServeProc, cycle: int, settled: list[str], seed: int) -> None:
        self.srv, self.cycle, self.settled = srv, cycle, settled
        self.rng = random.Random(seed)
        self.acked: dict[str, set[str]] = {S3_BUCKET: set(), BULK_NS: set()}
        self.maybe_deleted: set[str] = set()  # S3 DELETE sent, not acknowledged
        self.deleted: set[str] = set()
        self.errors: list[tuple[float, str]] = []
        self.wrong: list[str] = []
        self.reads = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._guard, args=(fn,), daemon=True)
                        for fn in (self._s3_writer, self._bulk_writer, self._reader)]
        for t in self.threads:
            t.start()

    def _guard(self, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - judged against the kill time by the test
            with self._lock:
                self.errors.append((time.monotonic(), repr(exc)))

    def _s3_writer(self) -> None:
        srv = self.srv
        status, raw = srv.request("PUT", f"/{S3_BUCKET}", b"")
        assert status == 200, raw
        mine: list[str] = []
        for i in range(LOAD_OPS_MAX):
            if self._halt.is_set():
                return
            key = f"s3-c{self.cycle:04d}-{i:04d}"
            status, raw = srv.request("PUT", f"/{S3_BUCKET}/{key}", content(key))
            assert status == 200, (status, raw[:300])
            with self._lock:
                self.acked[S3_BUCKET].add(key)
            mine.append(key)
            if i % 7 == 6:  # delete one of this cycle's earlier objects
                victim = mine.pop(0)
                with self._lock:
                    self.maybe_deleted.add(victim)
                status, raw = srv.request("DELETE", f"/{S3_BUCKET}/{victim}")
                assert status == 204, (status, raw[:300])
                with self._lock:
                    self.maybe_deleted.discard(victim)
                    self.deleted.add(victim)

    def _bulk_writer(self) -> None:
        with Client(port=self.srv.bulk, namespace=BULK_NS, create=True, timeout=10,
                    retries=0) as c:
            for i in range(0, LOAD_OPS_MAX, 4):
                if self._halt.is_set():
                    return
                keys = [f"bulk-c{self.cycle:04d}-{j:04d}" for j in range(i, i + 4)]
                c.put_many(keys, [content(k) for k in keys])
                with self._lock:
                    self.acked[BULK_NS].update(keys)

    def _reader(self) -> None:
        if not self.settled:
            return
        with Client(port=self.srv.bulk, namespace=BULK_NS, create=True, timeout=10,
                    retries=0) as c:
            for _ in range(LOAD_OPS_MAX):
                if self._halt.is_set():
                    return
                keys = [self.rng.choice(self.settled) for _ in range(8)]
                got = c.get_many(keys)
                assert c.exists_many(keys) == [True] * len(keys)
                assert c.lookup(keys) == len(keys)
                self.reads += len(keys)
                for k, g in zip(keys, got, strict=True):
                    if g != content(k):
                        self.wrong.append(k)

    def stop(self) -> None:
        self._halt.set()
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "a load thread hung after the kill"


class Books:
    """What the server acknowledged, per namespace, across every cycle."""

    def __init__(self) -> None:
        self.present: dict[str, set[str]] = {S3_BUCKET: set(), BULK_NS: set()}
        self.deleted: set[str] = set()  # S3 keys, and bulk keys deleted to bound the store
        self.maybe_deleted: set[str] = set()

    def settled_bulk(self) -> list[str]:
        return sorted(self.present[BULK_NS])

    def verify(self, srv: ServeProc, why: str) -> None:
        """After a restart: every acknowledged block exact, deletes kept, in-flight blocks
        absent or exact (then tracked), check() clean."""
        with Client(port=srv.bulk, namespace=BULK_NS, create=True, timeout=30, retries=0) as bc, \
                Client(port=srv.bulk, namespace=S3_BUCKET, create=True, timeout=30,
                       retries=0) as sc:
            for ns, c in ((BULK_NS, bc), (S3_BUCKET, sc)):
                keys = sorted(self.present[ns] | _ns_keys(ns, self.deleted))
                for i in range(0, len(keys), CHUNK):
                    part = keys[i:i + CHUNK]
                    for k, got in zip(part, c.get_many(part), strict=True):
                        if k in self.deleted:
                            assert got is None, f"{why}: acknowledged delete of {k} undone"
                        elif got is None and k in self.maybe_deleted:
                            self.present[ns].discard(k)  # the in-flight delete took effect
                        else:
                            assert got == content(k), f"{why}: acknowledged {ns}/{k} lost or wrong"
                listed = set(srv.list_keys(ns, missing_ok=not self.present[ns]))
                extra = sorted(listed - self.present[ns])
                for i in range(0, len(extra), CHUNK):
                    part = extra[i:i + CHUNK]
                    for k, got in zip(part, c.get_many(part), strict=True):
                        assert k not in self.deleted, f"{why}: deleted {k} listed again"
                        assert got == content(k), f"{why}: in-flight {ns}/{k} has other bytes"
                self.present[ns] |= set(extra)  # durable now: later kills must keep them
            self.maybe_deleted.clear()
            assert srv.check() == [], why
            self.deleted = set()  # checked after this restart: forgotten (bounded books)
            for ns, c in ((BULK_NS, bc), (S3_BUCKET, sc)):
                if len(self.present[ns]) > SETTLED_MAX:  # bound the store: delete the oldest
                    old = sorted(self.present[ns])[:SETTLED_MAX // 3]
                    assert c.delete_many(old) == len(old), why
                    self.present[ns] -= set(old)
                    self.deleted |= set(old)  # checked after the next restart

    def record(self, load: Load) -> None:
        for ns, keys in load.acked.items():
            self.present[ns] |= keys
        self.present[S3_BUCKET] -= load.deleted
        self.deleted |= load.deleted
        self.maybe_deleted |= load.maybe_deleted


def _ns_keys(ns: str, keys: set[str]) -> set[str]:
    return {k for k in keys if k.startswith("s3-" if ns == S3_BUCKET else "bulk-")}


def test_sigkill_serve_under_mixed_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    kills_wanted = int(os.environ.get("KVSTORE_SERVE_CRASH_KILLS", KILLS_DEFAULT))
    seed = int(os.environ.get("KVSTORE_CRASH_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    data = tmp_path / "data"
    data.mkdir()
    books = Books()
    kills = under_load = reads = 0
    for cycle in range(kills_wanted * CYCLES_PER_KILL_MAX):
        if kills >= kills_wanted:
            break
        why = f"seed {seed} cycle {cycle}"
        srv = ServeProc(data, tmp_path, *ARGS, name="serve")
        if rng.random() < 0.2:  # during start-up or recovery
            time.sleep(rng.uniform(0.0, 2.0))
            rc = srv.kill()
            assert rc in (-signal.SIGKILL, 0, 1) or srv.ready(), f"{why}: rc {rc}"
            kills += rc == -signal.SIGKILL
            continue
        srv.wait_ready()
        books.verify(srv, why)
        load = Load(srv, cycle, books.settled_bulk(), rng.randrange(2**32))
        time.sleep(rng.uniform(0.05, 1.0))
        killed_at = time.monotonic()
        assert srv.kill() == -signal.SIGKILL, f"{why}: {srv.errors()[-2000:]}"
        kills += 1
        load.stop()
        early = [e for t, e in load.errors if t < killed_at]
        assert not early, f"{why}: errors under load before the kill: {early[:3]}"
        assert not load.wrong, f"{why}: wrong bytes read under load: {load.wrong[:5]}"
        under_load += any(load.acked.values())
        reads += load.reads
        books.record(load)
    srv = ServeProc(data, tmp_path, *ARGS, name="serve").wait_ready()
    try:
        books.verify(srv, f"seed {seed} final")
    finally:
        assert srv.stop() == 0
    print(f"seed {seed}: {kills} kills ({under_load} under load), {reads} reads under load, "
          f"{len(books.present[BULK_NS])} bulk + {len(books.present[S3_BUCKET])} S3 blocks "
          "tracked at the end, check() clean after every restart")
    assert kills >= kills_wanted, f"seed {seed}: only {kills} kills"
    assert under_load >= kills_wanted // 2, f"seed {seed}: only {under_load} kills under load"
    assert len(books.present[BULK_NS]) > 20 and books.present[S3_BUCKET], f"seed {seed}"
