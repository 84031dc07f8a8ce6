"""Faults under a real ``kvstore serve``: a full disk, and corrupted segment and summary files.

- **Disk full**: the data dir is on a small tmpfs this test mounts (it runs as root, as the
  suite does), beside a filler file. Writes past the free space fail with the typed
  InsufficientStorage (bulk: the SDK's class; S3: 507 InsufficientStorage), nothing is
  acknowledged that is not stored, reads keep working, ``/v1/check`` stays clean; once the filler
  is removed (space returns) writes go through again, and a restart finds every acknowledged
  block.
- **Corruption**: bit flips all over the segment files, a truncated segment, a summary with
  flipped bytes and a truncated summary: after a restart every block reads back exact or as a
  miss, every miss is counted (``misses``), corrupt ones as ``misses_corrupt``, and the engine's
  cross-check is clean.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kvstore_client import Client, InsufficientStorage
from serve_proc import ServeProc

ARGS = ["--segment-size", "4MiB", "--dram", "8MiB", "--device", "posix"]
FS_BYTES = 40 * 1024 * 1024
FILLER_BYTES = 12 * 1024 * 1024
BLOCK = 64 * 1024
PUTS_MAX = 2000  # bounds the fill loop: the fs holds ~600 blocks


def content(key: str, size: int = BLOCK) -> bytes:
    unit = hashlib.blake2b(key.encode(), digest_size=64).digest()
    return (unit * (size // 64 + 1))[:size]


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the suite runs as root in CI and make test)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, timeout=30)
    try:
        yield path
    finally:
        for _ in range(50):  # a killed server may hold files open a moment
            if subprocess.run(["umount", str(path)], timeout=30).returncode == 0:
                break
            time.sleep(0.1)


def test_disk_full_fails_writes_typed_keeps_reads_and_recovers(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", FS_BYTES) as fs:
        filler = fs / "filler"
        filler.write_bytes(b"\0" * FILLER_BYTES)
        srv = ServeProc(fs / "data", tmp_path, "--capacity", "1GiB", *ARGS).wait_ready()
        try:
            acked: list[str] = []
            full = 0
            with Client(port=srv.bulk, namespace="full", create=True, timeout=10,
                        retries=0) as c:
                for i in range(PUTS_MAX):
                    key = f"k{i:05d}"
                    try:
                        c.put(key, content(key))
                    except InsufficientStorage:
                        full += 1
                        if full >= 20:
                            break
                        continue
                    acked.append(key)
                assert full >= 20 and len(acked) > 50, (full, len(acked))
                # S3 sees the same typed answer
                status, raw = srv.request("PUT", "/full/s3-obj", content("s3-obj"))
                assert status == 507 and b"InsufficientStorage" in raw, (status, raw[:300])
                # reads keep working, every acknowledged block exact
                for i in range(0, len(acked), 128):
                    part = acked[i:i + 128]
                    assert c.get_many(part) == [content(k) for k in part]
                status, raw = srv.request("GET", f"/full/{acked[0]}")
                assert status == 200 and raw == content(acked[0])
                assert srv.check() == []
                assert srv.proc.poll() is None
                # space returns: writes go through again
                filler.unlink()
                for i in range(20):
                    key = f"after-{i}"
                    c.put(key, content(key))
                    acked.append(key)
                assert c.get("after-19") == content("after-19")
            assert srv.check() == []
        finally:
            assert srv.stop() == 0, srv.errors()[-3000:]
        srv = ServeProc(fs / "data", tmp_path, "--capacity", "1GiB", *ARGS).wait_ready()
        try:
            with Client(port=srv.bulk, namespace="full", timeout=10, retries=0) as c:
                for i in range(0, len(acked), 128):
                    part = acked[i:i + 128]
                    assert c.get_many(part) == [content(k) for k in part]
            assert srv.check() == []
        finally:
            srv.kill()


def _flip(path: Path, rng: random.Random, flips: int) -> None:
    raw = bytearray(path.read_bytes())
    for _ in range(flips):
        i = rng.randrange(len(raw))
        raw[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(raw))


def test_flips_and_truncation_in_segments_and_summaries_are_counted_misses(
        tmp_path: Path) -> None:
    seed = int(os.environ.get("KVSTORE_CRASH_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    data = tmp_path / "data"
    args = ["--capacity", "256MiB", "--segment-size", "1MiB", "--dram", "0", "--device", "posix"]
    srv = ServeProc(data, tmp_path, *args).wait_ready()
    keys = [f"k{i:04d}" for i in range(400)]
    sizes = {k: 1 + rng.randrange(20_000) for k in keys}
    try:
        with Client(port=srv.bulk, namespace="corrupt", create=True, timeout=10,
                    retries=0) as c:
            for i in range(0, len(keys), 16):
                part = keys[i:i + 16]
                c.put_many(part, [content(k, sizes[k]) for k in part])
    finally:
        assert srv.stop() == 0
    segs = sorted(data.glob("seg-*.kvs"))
    sums = sorted(data.glob("seg-*.sum"))
    assert len(segs) >= 4 and len(sums) >= 3, (segs, sums)
    for seg in segs:
        _flip(seg, rng, 6)
    victim = segs[1]
    with open(victim, "r+b") as f:  # a torn segment
        f.truncate(rng.randrange(4096, victim.stat().st_size))
    _flip(sums[0], rng, 3)
    with open(sums[-1], "r+b") as f:  # a torn summary
        f.truncate(sums[-1].stat().st_size // 2)
    srv = ServeProc(data, tmp_path, *args).wait_ready()
    try:
        before = srv.json("GET", "/v1/stats")[1]["stats"]
        misses = 0
        with Client(port=srv.bulk, namespace="corrupt", timeout=10, retries=0) as c:
            for i in range(0, len(keys), 64):
                part = keys[i:i + 64]
                for k, got in zip(part, c.get_many(part), strict=True):
                    if got is None:
                        misses += 1
                    else:
                        assert got == content(k, sizes[k]), f"seed {seed}: {k} has other bytes"
            after = srv.json("GET", "/v1/stats")[1]["stats"]
            assert misses > 0, f"seed {seed}: no corruption seen"
            assert after["misses"] - before["misses"] == misses, f"seed {seed}: uncounted miss"
            assert after["misses_corrupt"] + after["checksum_failures"] > 0, f"seed {seed}"
            assert srv.check() == [], f"seed {seed}"
            c.put("fresh", b"new bytes")  # the store still takes writes
            assert c.get("fresh") == b"new bytes"
    finally:
        assert srv.stop() == 0
