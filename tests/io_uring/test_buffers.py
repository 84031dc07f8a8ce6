"""Buffer helpers: addresses of read-only views, and copies that release the GIL."""

from __future__ import annotations

import pytest

from kvstore.engine.device import ALIGN, THP_BYTES, AlignedBuffer, IoOp
from kvstore.io_uring.buffers import buffer_address, copy_into
from kvstore.io_uring.posix import PosixDevice


def _pattern(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(251)) * (n // 251 + 1)


def test_copy_into_large_small_and_read_only_sources() -> None:
    for n in (10, 64 * 1024, 3 * 1024 * 1024 + 5):  # slice path and memmove path
        src = _pattern(n)[:n]
        dst = bytearray(n + 7)
        copy_into(memoryview(dst)[3:], memoryview(src))  # read-only source, unaligned target
        assert bytes(dst[3 : 3 + n]) == src and dst[:3] == bytes(3)
    with pytest.raises(ValueError):
        copy_into(memoryview(bytearray(4)), memoryview(b"12345"))
    assert buffer_address(memoryview(b"")) == 0


def test_large_bounced_ops_round_trip(tmp_path) -> None:
    dev = PosixDevice()
    h = dev.open(str(tmp_path / "f"))
    n = 32 * ALIGN  # 128 KiB: bounced through the pool with the GIL-free copy
    data = _pattern(n)[:n]
    src = memoryview(bytearray(n + 1))[1:]
    src[:] = data
    dev.write(h, 0, src)
    out = memoryview(bytearray(n + 1))[1:]
    assert dev.submit([IoOp(h, 0, out)]) == [n] and bytes(out) == data
    dev.close()


def test_large_aligned_buffers_are_huge_page_aligned() -> None:
    small, big = AlignedBuffer(ALIGN), AlignedBuffer(3 * THP_BYTES)
    assert small.address() % ALIGN == 0 and big.address() % THP_BYTES == 0
    assert len(big.view) == big.size == 3 * THP_BYTES
    big.view[-1:] = b"x"
    small.close()
    big.close()
