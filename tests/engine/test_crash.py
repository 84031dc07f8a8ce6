"""A real crash test: a writer process on real files is SIGKILLed mid-stream, again and again.

After every kill the store is reopened here and must hold every acknowledged put byte-exact,
no acknowledged delete, no block with bytes other than its writer's, and pass a deep check.
Blocks in flight at the kill may be absent or exact. The seed is in every failure message;
set KVSTORE_CRASH_SEED to replay a run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig

from .conftest import real_device
from .crash_writer import CAPACITY_BYTES, NS, SEGMENT_BYTES, content

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KILLS = int(os.environ.get("KVSTORE_CRASH_KILLS", 20))  # `make soak` asks for hundreds
ROUNDS_MAX = 2 * KILLS
MAX_BLOCKS = 600  # per writer run: bounds the store whatever the timing
THREADS = 3  # concurrent writers in the writer process


class _Writer:
    def __init__(self, data_dir: str, round_no: int, capacity: int = CAPACITY_BYTES) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "crash_writer.py"), data_dir, str(round_no),
             str(MAX_BLOCKS), str(THREADS), str(capacity)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(ROOT),
        )
        self.lines: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def acked(self) -> int:
        return sum(1 for ln in self.lines if ln.startswith(b"P "))

    def kill(self) -> tuple[int, list[str], str]:
        self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(10)
        self._reader.join(10)
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        # only complete lines are acknowledgements; a torn last line is not
        done = [ln.decode().rstrip("\n") for ln in self.lines if ln.endswith(b"\n")]
        return rc, done, err


def _all_blocks(eng: Engine) -> list[str]:
    keys: list[str] = []
    after = ""
    for _ in range(1000):
        page, truncated = eng.list_blocks(NS, start_after=after, limit=1000)
        keys += [m.key for m in page]
        if not truncated:
            return keys
        after = page[-1].key
    raise AssertionError("listing did not end")


def _verify(tmp_path: Path, data_dir: str, present: set[str], deleted: set[str],
            maybe_deleted: set[str], why: str) -> set[str]:
    """Verify the reopened store; returns the keys of in-flight deletes that took effect."""
    dev = real_device(tmp_path)
    eng = Engine.open(EngineConfig(data_dir, capacity_bytes=CAPACITY_BYTES,
                                   segment_bytes=SEGMENT_BYTES, dram_bytes=0), dev)
    try:
        if NS not in {n.name for n in eng.list_namespaces()}:  # killed before it was created
            assert not present and not deleted, why
            assert eng.check(deep=True) == [], why
            return set()
        assert eng.stats()["evicted_segments"] == 0, why
        for key in present:
            got = eng.get(NS, key)
            if got is None and key in maybe_deleted:
                continue  # a delete was in flight at the kill
            assert got == content(key), f"{why}: acknowledged {key} lost or wrong"
        for key in deleted:
            assert not eng.exists(NS, key), f"{why}: acknowledged delete of {key} undone"
        listed = set(_all_blocks(eng))
        assert present - maybe_deleted <= listed, why
        for key in listed - present:  # in flight at a kill: absent or exact, never other
            assert eng.get(NS, key) == content(key), f"{why}: {key} has other bytes"
        assert eng.check(deep=True) == [], why
        return {k for k in maybe_deleted if k not in listed}
    finally:
        eng.close()
        dev.close()


def test_sigkill_mid_stream_loses_no_acknowledged_write(tmp_path: Path) -> None:
    seed = int(os.environ.get("KVSTORE_CRASH_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    data_dir = str(tmp_path / "store")
    os.makedirs(data_dir)
    present: set[str] = set()
    deleted: set[str] = set()
    maybe_deleted: set[str] = set()  # announced, not acknowledged: present or absent
    kills = mid_stream = 0
    devices: set[str] = set()
    for round_no in range(ROUNDS_MAX):
        if kills >= KILLS:
            break
        w = _Writer(data_dir, round_no)
        if rng.random() < 0.25:
            time.sleep(rng.uniform(0.0, 0.6))  # anywhere: start-up, recovery or writing
        else:
            target = rng.randrange(1, 100)
            deadline = time.monotonic() + 10
            while w.acked() < target and w.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.005))
        rc, lines, err = w.kill()
        why = f"seed {seed} round {round_no}"
        assert rc in (-signal.SIGKILL, 0), f"{why}: writer failed ({rc}): {err[-2000:]}"
        if rc == -signal.SIGKILL:
            kills += 1
        for ln in lines:
            if ln.startswith("ready "):
                devices.add(ln.split()[1])
            elif ln.startswith("P "):
                present.add(ln[2:])
            elif ln.startswith("d "):
                maybe_deleted.add(ln[2:])
            elif ln.startswith("D "):
                maybe_deleted.discard(ln[2:])
                present.discard(ln[2:])
                deleted.add(ln[2:])
        if rc == -signal.SIGKILL and any(ln.startswith("P ") for ln in lines):
            mid_stream += 1
        gone = _verify(tmp_path, data_dir, present, deleted, maybe_deleted, why)
        present -= gone  # the in-flight deletes are settled now: later restarts keep them
        deleted |= gone
        maybe_deleted.clear()
    assert kills >= KILLS, f"seed {seed}: only {kills} kills"
    assert mid_stream >= KILLS // 2, f"seed {seed}: only {mid_stream} kills mid-stream"
    assert devices <= {"uring", "posix"} and devices, devices
    assert len(present) > 50, f"seed {seed}: too few acknowledged writes to mean anything"


FULL_CAPACITY_BYTES = 6 * SEGMENT_BYTES  # the store runs full: segments reclaimed and recycled
FULL_KILLS = max(10, KILLS // 2)


def test_sigkill_while_a_full_store_recycles_segment_files(tmp_path: Path) -> None:
    """A store at capacity reuses reclaimed segment files, whose old records sit behind the new
    data. Killed at random moments, it must never return other bytes for a key nor bring back a
    block whose delete was acknowledged; blocks may be gone (evicted)."""
    seed = int(os.environ.get("KVSTORE_CRASH_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    data_dir = str(tmp_path / "store")
    os.makedirs(data_dir)
    deleted: set[str] = set()
    kills = recycled = evicted_seen = 0
    for round_no in range(ROUNDS_MAX):
        if kills >= FULL_KILLS:
            break
        w = _Writer(data_dir, round_no, FULL_CAPACITY_BYTES)
        deadline = time.monotonic() + 10
        target = rng.randrange(100, 500)
        while w.acked() < target and w.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        rc, lines, err = w.kill()
        why = f"seed {seed} round {round_no}"
        assert rc in (-signal.SIGKILL, 0), f"{why}: writer failed ({rc}): {err[-2000:]}"
        kills += rc == -signal.SIGKILL
        acked = set()
        for ln in lines:
            if ln.startswith("P "):
                acked.add(ln[2:])
            elif ln.startswith("D "):
                deleted.add(ln[2:])
            elif ln.startswith("S "):
                recycled = max(recycled, int(ln[2:]))
        dev = real_device(tmp_path)
        eng = Engine.open(EngineConfig(data_dir, capacity_bytes=FULL_CAPACITY_BYTES,
                                       segment_bytes=SEGMENT_BYTES, dram_bytes=0), dev)
        try:
            if NS in {n.name for n in eng.list_namespaces()}:
                listed = set(_all_blocks(eng))
                for key in listed:
                    assert eng.get(NS, key) == content(key), f"{why}: {key} has other bytes"
                assert not listed & deleted, f"{why}: deleted blocks came back"
                evicted_seen += len(acked - deleted - listed) > 0
            assert eng.check(deep=True) == [], why
        finally:
            eng.close()
            dev.close()
    assert kills >= FULL_KILLS, f"seed {seed}: only {kills} kills"
    assert recycled > 0 and evicted_seen > 0, f"seed {seed}: the store never ran full"
