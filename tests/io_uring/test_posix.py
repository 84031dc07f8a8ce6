"""PosixDevice specifics: one batch keeps several ops in flight, measured by its depth gauge."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from kvstore import limits
from kvstore.engine.device import ALIGN, AlignedBuffer, IoOp
from kvstore.errors import StorageError
from kvstore.io_uring.posix import PosixDevice


def _bufs(n: int) -> list[AlignedBuffer]:
    out = []
    for i in range(n):
        b = AlignedBuffer(ALIGN)
        b.view[:ALIGN] = bytes([i + 1]) * ALIGN
        out.append(b)
    return out


def test_one_batch_runs_its_ops_at_once(tmp_path, monkeypatch) -> None:
    """Two writes of one batch meet inside the kernel call: a batch run op after op (the old
    device) never has both in flight, so the rendezvous breaks after its bounded wait."""
    dev = PosixDevice(threads=2)
    h = dev.open(str(tmp_path / "f"))
    seen: list[int] = []
    meet = threading.Barrier(2, action=lambda: seen.append(
        dev.depth_stats()["total"]["inflight"]))  # type: ignore[index]
    real = os.pwritev

    def rendezvous(fd: int, bufs: list[memoryview], offset: int) -> int:
        meet.wait(timeout=10)
        return real(fd, bufs, offset)

    monkeypatch.setattr(os, "pwritev", rendezvous)
    srcs = _bufs(2)
    assert dev.submit([IoOp(h, i * ALIGN, s.view[:ALIGN], write=True)
                       for i, s in enumerate(srcs)]) == [ALIGN, ALIGN]
    monkeypatch.setattr(os, "pwritev", real)
    assert seen == [2]  # the gauge saw both in flight
    st = dev.depth_stats()
    assert st["total"]["peak"] == 2 and st["total"]["inflight"] == 0  # type: ignore[index]
    assert {k: v["ops"] for k, v in st["parts"].items()} == {"callers": 1, "pool": 1}  # type: ignore[union-attr]
    got = AlignedBuffer(2 * ALIGN)
    assert dev.read_into(h, 0, got.view[: 2 * ALIGN]) == 2 * ALIGN
    assert bytes(got.view[: 2 * ALIGN]) == b"\x01" * ALIGN + b"\x02" * ALIGN
    dev.close()


def test_large_batch_spread_over_the_thread_bound(tmp_path) -> None:
    dev = PosixDevice()
    h = dev.open(str(tmp_path / "f"))
    n = 3 * limits.posix_batch_threads + 1
    srcs = _bufs(n)
    assert dev.submit([IoOp(h, i * ALIGN, s.view[:ALIGN], write=True)
                       for i, s in enumerate(srcs)]) == [ALIGN] * n
    outs = [AlignedBuffer(ALIGN) for _ in range(n)]
    assert dev.submit([IoOp(h, i * ALIGN, o.view[:ALIGN]) for i, o in enumerate(outs)]) == [ALIGN] * n
    assert [bytes(o.view[:ALIGN]) for o in outs] == [bytes([i + 1]) * ALIGN for i in range(n)]
    total = dev.depth_stats()["total"]
    assert total["ops"] == 2 * n and total["inflight"] == 0  # type: ignore[index]
    assert 1 <= total["peak"] <= limits.posix_batch_threads  # type: ignore[index]
    dev.close()
    with pytest.raises(StorageError):
        dev.submit([IoOp(h, 0, outs[0].view[:ALIGN])])


def test_a_failing_op_fails_alone_in_a_spread_batch(tmp_path) -> None:
    dev = PosixDevice(threads=4)
    h = dev.open(str(tmp_path / "f"))
    ro_path = str(tmp_path / "ro")
    h_ro = dev.open(ro_path)
    entry = dev._files[h_ro]  # type: ignore[attr-defined]
    os.close(entry.fd)  # a read-only fd underneath: the kernel answers EBADF to a write
    entry.fd = os.open(ro_path, os.O_RDONLY | (os.O_DIRECT if entry.direct else 0))
    srcs = _bufs(6)
    ops = [IoOp(h_ro if i == 3 else h, i * ALIGN, s.view[:ALIGN], write=True)
           for i, s in enumerate(srcs)]
    res = dev.submit(ops)
    assert res[3] == -errno.EBADF and [r for i, r in enumerate(res) if i != 3] == [ALIGN] * 5
    dev.close()


def test_start_returns_while_the_batch_is_in_flight(tmp_path, monkeypatch) -> None:
    dev = PosixDevice(threads=3)
    h = dev.open(str(tmp_path / "f"))
    meet = threading.Barrier(3)  # two pool stripes and this thread, after start() returned
    real = os.pwritev

    def rendezvous(fd: int, bufs: list[memoryview], offset: int) -> int:
        meet.wait(timeout=10)
        return real(fd, bufs, offset)

    monkeypatch.setattr(os, "pwritev", rendezvous)
    srcs = _bufs(2)
    pending = dev.start([IoOp(h, i * ALIGN, s.view[:ALIGN], write=True)
                         for i, s in enumerate(srcs)])
    meet.wait(timeout=10)
    assert dev.depth_stats()["total"]["inflight"] == 2  # type: ignore[index]
    assert pending.wait() == [ALIGN, ALIGN]
    monkeypatch.setattr(os, "pwritev", real)
    dev.close()


def test_memory_device_start_is_submit(tmp_path) -> None:
    from kvstore.engine.device import MemoryDevice

    dev = MemoryDevice()
    h = dev.open("x")
    p = dev.start([IoOp(h, 0, memoryview(b"abcd"), write=True)])
    assert p.wait() == [4] and bytes(dev.files["x"]) == b"abcd"
