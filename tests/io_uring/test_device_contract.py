"""One contract suite for every Device: memory, posix and uring, on real files under tmp_path."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator

import pytest

from kvstore.engine.device import ALIGN, AlignedBuffer, BufferPool, Device, IoOp, MemoryDevice
from kvstore.errors import StorageError
from kvstore.io_uring.posix import PosixDevice
from kvstore.io_uring.select import probe_uring
from kvstore.io_uring.uring import UringDevice

URING_OK, URING_WHY = probe_uring()


def _make(kind: str) -> Device:
    if kind == "memory":
        return MemoryDevice()
    if kind == "posix":
        return PosixDevice()
    if not URING_OK:
        pytest.skip(f"io_uring unavailable here: {URING_WHY}")
    return UringDevice()


@pytest.fixture(params=["memory", "posix", "uring"])
def dev(request: pytest.FixtureRequest) -> Iterator[Device]:
    d = _make(request.param)
    yield d
    d.close()


def _pattern(n: int, seed: int) -> bytes:
    """Deterministic, position-dependent bytes (a misplaced page shows up as a mismatch)."""
    block = bytes((i * 31 + seed * 7) & 0xFF for i in range(251))
    return (block * (n // 251 + 1))[:n]


def _aligned(data: bytes) -> AlignedBuffer:
    buf = AlignedBuffer(len(data))
    buf.view[: len(data)] = data
    return buf


def test_file_devices_use_o_direct_on_this_filesystem(tmp_path) -> None:
    for d in (PosixDevice(), UringDevice() if URING_OK else PosixDevice()):
        d.open(str(tmp_path / "f"))
        assert d.direct is True
        d.close()


def test_round_trip_at_aligned_offsets(dev: Device, tmp_path) -> None:
    h = dev.open(str(tmp_path / "seg"))
    data = _pattern(3 * ALIGN, 1)
    src = _aligned(data)
    dev.write(h, 2 * ALIGN, src.view[: len(data)])
    dst = AlignedBuffer(len(data))
    assert dev.read_into(h, 2 * ALIGN, dst.view[: len(data)]) == len(data)
    assert bytes(dst.view[: len(data)]) == data
    assert dev.size(h) == 5 * ALIGN
    head = AlignedBuffer(2 * ALIGN)
    assert dev.read_into(h, 0, head.view[: 2 * ALIGN]) == 2 * ALIGN
    assert bytes(head.view[: 2 * ALIGN]) == bytes(2 * ALIGN)  # the hole reads as zeros


def test_batch_of_mixed_ops(dev: Device, tmp_path) -> None:
    h1 = dev.open(str(tmp_path / "a"))
    h2 = dev.open(str(tmp_path / "b"))
    pool = BufferPool()
    blocks = {(h, i): _pattern(2 * ALIGN, i + 10 * h) for h in (h1, h2) for i in range(40)}
    bufs = {k: pool.acquire(len(v)) for k, v in blocks.items()}
    for k, v in blocks.items():
        bufs[k].view[: len(v)] = v
    # 80 writes: more than one ring's worth (uring_entries = 64), so it runs in waves
    ops = [IoOp(h, i * 2 * ALIGN, bufs[(h, i)].view[: 2 * ALIGN], write=True) for (h, i) in blocks]
    assert dev.submit(ops) == [2 * ALIGN] * len(ops)
    # mixed: read back the even blocks while overwriting the odd ones
    new = {k: _pattern(2 * ALIGN, 99 + k[1]) for k in blocks if k[1] % 2}
    outs = {k: pool.acquire(2 * ALIGN) for k in blocks if k[1] % 2 == 0}
    mixed: list[IoOp] = []
    for (h, i) in blocks:
        if i % 2:
            bufs[(h, i)].view[: 2 * ALIGN] = new[(h, i)]
            mixed.append(IoOp(h, i * 2 * ALIGN, bufs[(h, i)].view[: 2 * ALIGN], write=True))
        else:
            mixed.append(IoOp(h, i * 2 * ALIGN, outs[(h, i)].view[: 2 * ALIGN]))
    assert dev.submit(mixed) == [2 * ALIGN] * len(mixed)
    for k, out in outs.items():
        assert bytes(out.view[: 2 * ALIGN]) == blocks[k]
    for (h, i), v in new.items():
        got = AlignedBuffer(2 * ALIGN)
        dev.read_into(h, i * 2 * ALIGN, got.view[: 2 * ALIGN])
        assert bytes(got.view[: 2 * ALIGN]) == v
    assert dev.submit([]) == []
    pool.close()


def test_short_read_at_eof(dev: Device, tmp_path) -> None:
    h = dev.open(str(tmp_path / "f"))
    dev.write(h, 0, _aligned(_pattern(3 * ALIGN, 3)).view[: 3 * ALIGN])
    buf = AlignedBuffer(4 * ALIGN)
    results = dev.submit([IoOp(h, 2 * ALIGN, buf.view[: 4 * ALIGN]), IoOp(h, 8 * ALIGN, buf.view)])
    assert results == [ALIGN, 0]
    assert bytes(buf.view[:ALIGN]) == _pattern(3 * ALIGN, 3)[2 * ALIGN:]


def test_truncate_size_sync_and_reopen(dev: Device, tmp_path) -> None:
    path = str(tmp_path / "seg")
    h = dev.open(path)
    assert dev.size(h) == 0
    dev.truncate(h, 16 * ALIGN)
    assert dev.size(h) == 16 * ALIGN
    data = _pattern(4 * ALIGN, 4)
    dev.write(h, 4 * ALIGN, _aligned(data).view[: len(data)])
    dev.sync(h)
    dev.truncate(h, 6 * ALIGN)
    assert dev.size(h) == 6 * ALIGN
    dev.close_handle(h)
    h2 = dev.open(path, create=False)
    assert dev.size(h2) == 6 * ALIGN
    got = AlignedBuffer(4 * ALIGN)
    assert dev.read_into(h2, 4 * ALIGN, got.view[: 4 * ALIGN]) == 2 * ALIGN
    assert bytes(got.view[: 2 * ALIGN]) == data[: 2 * ALIGN]
    with pytest.raises(FileNotFoundError):
        dev.open(str(tmp_path / "missing"), create=False)


def test_reopen_with_a_new_device_sees_data(tmp_path) -> None:
    for kind in ("posix", "uring"):
        path = str(tmp_path / f"seg-{kind}")
        data = _pattern(8 * ALIGN, 5)
        d1 = _make(kind)
        h = d1.open(path)
        d1.write(h, 0, _aligned(data).view[: len(data)])
        d1.sync(h)
        d1.close()
        d2 = _make(kind)
        h = d2.open(path, create=False)
        got = AlignedBuffer(len(data))
        assert d2.read_into(h, 0, got.view[: len(data)]) == len(data)
        assert bytes(got.view[: len(data)]) == data
        d2.close()


def test_concurrent_threads_each_own_region(dev: Device, tmp_path) -> None:
    h = dev.open(str(tmp_path / "shared"))
    threads_n, rounds, size = 6, 12, 4 * ALIGN
    errors: list[str] = []
    start = threading.Barrier(threads_n)

    def worker(tid: int) -> None:
        src, dst = AlignedBuffer(size), AlignedBuffer(size)
        start.wait(timeout=30)
        for r in range(rounds):
            data = _pattern(size, tid * 1000 + r)
            src.view[:size] = data
            off = (tid * rounds + r) * size
            res = dev.submit([IoOp(h, off, src.view[:size], write=True)])
            res += dev.submit([IoOp(h, off, dst.view[:size])])
            if res != [size, size] or bytes(dst.view[:size]) != data:
                errors.append(f"thread {tid} round {r}: {res}")

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in ts)
    assert errors == []
    assert dev.size(h) == threads_n * rounds * size


def test_unaligned_buffers_still_correct(dev: Device, tmp_path) -> None:
    h = dev.open(str(tmp_path / "f"))
    data = _pattern(2 * ALIGN, 6)
    raw = bytearray(2 * ALIGN + 1)  # bytearray storage is not page aligned; +1 makes sure
    src = memoryview(raw)[1:]
    src[:] = data
    dev.write(h, ALIGN, src)
    dst = memoryview(bytearray(2 * ALIGN + 3))[3:]
    assert dev.submit([IoOp(h, ALIGN, dst)]) == [2 * ALIGN]
    assert bytes(dst) == data
    # unaligned offset and length too (O_DIRECT devices route these through a buffered fd)
    odd = _pattern(1000, 7)
    dev.write(h, 5, memoryview(odd))
    got = bytearray(1000)
    assert dev.read_into(h, 5, memoryview(got)) == 1000
    assert bytes(got) == odd
    whole = AlignedBuffer(3 * ALIGN)
    assert dev.read_into(h, 0, whole.view[: 3 * ALIGN]) == 3 * ALIGN
    expect = bytearray(bytes(ALIGN) + data)
    expect[5:1005] = odd
    assert bytes(whole.view[: 3 * ALIGN]) == bytes(expect)
    if dev.name == "memory":
        return  # MemoryDevice counts items, not bytes, for non-byte formats
    # a non-byte format is written as its bytes
    ints = memoryview(bytearray(_pattern(ALIGN, 8))).cast("I")
    assert dev.submit([IoOp(h, 0, ints, write=True)])[0] == ALIGN


def test_read_only_memoryview_write(dev: Device, tmp_path) -> None:
    h = dev.open(str(tmp_path / "f"))
    data = _pattern(4 * ALIGN, 9)
    dev.write(h, 0, memoryview(data))  # bytes: read-only, unaligned
    aligned_ro = _aligned(data).view[: len(data)].toreadonly()  # read-only but page aligned
    dev.write(h, 4 * ALIGN, aligned_ro)
    got = AlignedBuffer(8 * ALIGN)
    assert dev.read_into(h, 0, got.view[: 8 * ALIGN]) == 8 * ALIGN
    assert bytes(got.view[: 8 * ALIGN]) == data + data


def test_small_file_helpers(dev: Device, tmp_path) -> None:
    d = str(tmp_path / "cat")
    os.makedirs(d, exist_ok=True)
    assert dev.read_file(os.path.join(d, "catalog")) is None
    dev.write_file_atomic(os.path.join(d, "catalog"), b"v1")
    dev.write_file_atomic(os.path.join(d, "catalog"), b"v2")
    dev.write_file_atomic(os.path.join(d, "other"), b"x")
    assert dev.read_file(os.path.join(d, "catalog")) == b"v2"
    assert dev.listdir(d) == ["catalog", "other"]
    dev.unlink(os.path.join(d, "other"))
    dev.unlink(os.path.join(d, "other"))  # absent: no error
    assert dev.listdir(d) == ["catalog"]


def test_errors_surface_not_crash(dev: Device, tmp_path) -> None:
    h = dev.open(str(tmp_path / "f"))
    buf = AlignedBuffer(ALIGN)
    bad = 987654
    for call in (lambda: dev.size(bad), lambda: dev.sync(bad), lambda: dev.truncate(bad, 0)):
        with pytest.raises(StorageError):
            call()
    with pytest.raises(StorageError):
        dev.read_into(bad, 0, buf.view[:ALIGN])
    if dev.name == "memory":
        with pytest.raises(StorageError):
            dev.submit([IoOp(bad, 0, buf.view[:ALIGN])])
        return
    # file devices answer per op and keep going with the rest of the batch
    good = _aligned(_pattern(ALIGN, 11))
    res = dev.submit([IoOp(bad, 0, buf.view[:ALIGN]), IoOp(h, 0, good.view[:ALIGN], write=True),
                      IoOp(h, -ALIGN, buf.view[:ALIGN]),
                      IoOp(h, 0, memoryview(b"x" * ALIGN))])  # read into read-only
    assert res == [-errno.EBADF, ALIGN, -errno.EINVAL, -errno.EFAULT]
    dev.close_handle(h)
    assert dev.submit([IoOp(h, 0, buf.view[:ALIGN])]) == [-errno.EBADF]
    # a read-only fd underneath: the kernel's error comes back as -errno
    ro = str(tmp_path / "ro")
    with open(ro, "wb") as f:
        f.write(bytes(ALIGN))
    h2 = dev.open(ro)
    entry = dev._files[h2]  # type: ignore[attr-defined]
    os.close(entry.fd)
    entry.fd = os.open(ro, os.O_RDONLY | (os.O_DIRECT if entry.direct else 0))
    assert dev.submit([IoOp(h2, 0, good.view[:ALIGN], write=True)]) == [-errno.EBADF]
    assert dev.submit([IoOp(h2, 0, buf.view[:ALIGN])]) == [ALIGN]


def test_buffered_fallback_when_o_direct_is_refused(tmp_path, monkeypatch, caplog) -> None:
    real_open = os.open

    def refuse_direct(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    kinds = ["posix"] + (["uring"] if URING_OK else [])
    for kind in kinds:
        d = _make(kind)
        monkeypatch.setattr(os, "open", refuse_direct)
        with caplog.at_level("WARNING", logger="kvstore.device"):
            h = d.open(str(tmp_path / f"f-{kind}"))
        monkeypatch.setattr(os, "open", real_open)
        assert d.direct is False
        assert "O_DIRECT refused" in caplog.text
        data = _pattern(3000, 12)
        d.write(h, 7, memoryview(data))
        got = bytearray(3000)
        assert d.read_into(h, 7, memoryview(got)) == 3000
        assert bytes(got) == data
        d.close()
