"""Rings for UringDevice: SQEs prepared in the ring, one ``io_uring_enter`` per batch.

pyuring 0.3.0's ``read_async_ptr``/``write_async_ptr`` call ``io_uring_submit`` after every SQE,
so a batch of 32 ops costs 32 ``io_uring_enter`` calls, each issuing its op inline before the
next is even prepared. Its ``liburingwrap.so`` links liburing statically *and exports it*
(``io_uring_get_sqe``, ``io_uring_submit``, ``io_uring_submit_and_wait``), and the handle a
``UringCtx`` holds is a ``struct io_uring *`` (pyuring's own ``uring_register_buffers`` passes it
straight to liburing). ``BatchRing`` therefore takes an SQE from liburing, fills the 64-byte
kernel UAPI ``struct io_uring_sqe`` (opcode, fd, offset, address, length, user_data) with one
``struct.pack_into``, and lets liburing publish the SQ tail (a release store) when the batch is
submitted: ``flush_and_wait`` submits every prepared SQE and waits for the first completion in a
single ``io_uring_enter``. Completions are reaped through pyuring (``io_uring_cqe_seen`` in C).

``BatchRing`` checks liburing's ``struct io_uring`` layout against what the ring itself reports
before trusting it (ring fd, entries, mask, no 128-byte SQEs); a mismatch (another pyuring build)
logs a warning and the device uses ``PerOpRing`` (pyuring's submit-per-op calls) instead.

Registered buffers and files are not used: the engine's buffers are pooled and callers' memory
arrives per call, so there is no fixed set to register, and for 2 MiB ops the page pinning and
the fd lookup they would save are a few microseconds against a millisecond of transfer.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import struct
from typing import Any

from kvstore.io_uring.depth import DepthGauge

log = logging.getLogger("kvstore.device")

IORING_OP_READ = 22  # kernel UAPI opcodes (include/uapi/linux/io_uring.h)
IORING_OP_WRITE = 23
_IORING_SETUP_SQE128 = 1 << 10
_SQE = struct.Struct("<BBHiQQIIQHHiQQ")  # struct io_uring_sqe, 64 bytes
assert _SQE.size == 64
_SQE_ZERO_TAIL = (0, 0, 0, 0, 0)  # buf_index, personality, splice_fd_in, addr3, pad

# liburing's struct io_uring (x86-64 / arm64 LP64 layout, stable across liburing 2.x)
_SQ_KRING_ENTRIES = 0x18
_SQ_SQES = 0x38
_SQ_RING_MASK = 0x58
_SQ_RING_ENTRIES = 0x5C
_RING_FLAGS = 0xC0
_RING_FD = 0xC4

# Consecutive EINTR/EAGAIN answers from io_uring_enter before the ring is declared broken.
RING_RETRIES_MAX = 100


def _u32(addr: int) -> int:
    return int(ctypes.c_uint32.from_address(addr).value)


def _ptr(addr: int) -> int:
    return int(ctypes.c_void_p.from_address(addr).value or 0)


class _Liburing:
    """The liburing symbols pyuring's shared library exports, typed once per process."""

    _lib: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls._lib is None:
            from pyuring.native.library import _get_lib

            lib = _get_lib()
            lib.io_uring_get_sqe.argtypes = [ctypes.c_void_p]
            lib.io_uring_get_sqe.restype = ctypes.c_void_p
            lib.io_uring_submit.argtypes = [ctypes.c_void_p]
            lib.io_uring_submit.restype = ctypes.c_int
            lib.io_uring_submit_and_wait.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.io_uring_submit_and_wait.restype = ctypes.c_int
            cls._lib = lib
        return cls._lib


class PerOpRing:
    """pyuring's own calls: every ``prep`` submits at once (one ``io_uring_enter`` per op)."""

    batched = False

    def __init__(self, ctx: Any, gauge: DepthGauge) -> None:
        self.ctx = ctx
        self.gauge = gauge

    @property
    def ring_fd(self) -> int:
        return int(self.ctx.ring_fd)

    def prep(self, write: bool, fd: int, addr: int, length: int, offset: int, ud: int) -> bool:
        """Queue one op; False when the submission queue is full (reap, then retry)."""
        call = self.ctx.write_async_ptr if write else self.ctx.read_async_ptr
        self.gauge.submitted(1)  # counted before the call: it issues the op before returning
        try:
            call(fd, addr, length, offset, ud)
        except OSError as e:
            self.gauge.completed()
            if e.errno in (errno.EAGAIN, errno.EBUSY):
                return False
            raise
        return True

    def flush(self) -> None:
        """Hand every prepared SQE to the kernel (already done by ``prep`` here)."""

    def flush_and_wait(self) -> tuple[int, int]:
        """Submit what is prepared, then block for one completion: ``(user_data, result)``."""
        cqe = self.ctx.wait_completion()
        self.gauge.completed()
        return int(cqe[0]), int(cqe[1])

    def peek(self) -> tuple[int, int] | None:
        cqe = self.ctx.peek_completion()
        if cqe is None:
            return None
        self.gauge.completed()
        return int(cqe[0]), int(cqe[1])

    def close(self) -> None:
        self.ctx.close()


class BatchRing(PerOpRing):
    """SQEs written straight into the ring; one ``io_uring_enter`` submits a whole batch."""

    batched = True

    def __init__(self, ctx: Any, gauge: DepthGauge, ring: int) -> None:
        super().__init__(ctx, gauge)
        self._ring = ring
        self._lib = _Liburing.get()
        base = _ptr(ring + _SQ_SQES)
        n = _u32(ring + _SQ_RING_ENTRIES)
        self._sqes = memoryview((ctypes.c_char * (n * _SQE.size)).from_address(base)).cast("B")
        self._base = base
        self._end = base + n * _SQE.size
        self._unsubmitted = 0

    def prep(self, write: bool, fd: int, addr: int, length: int, offset: int, ud: int) -> bool:
        sqe = self._lib.io_uring_get_sqe(self._ring)
        if not sqe:
            return False  # the SQ is full: flush_and_wait, reap, then prep again
        if not self._base <= sqe < self._end:  # pragma: no cover - the layout check prevents it
            raise OSError(errno.EFAULT, "io_uring_get_sqe returned an SQE outside the ring")
        _SQE.pack_into(self._sqes, sqe - self._base,
                       IORING_OP_WRITE if write else IORING_OP_READ, 0, 0, fd, offset, addr,
                       length, 0, ud, *_SQE_ZERO_TAIL)
        self._unsubmitted += 1
        return True

    def _enter(self, wait: bool) -> None:
        if self._unsubmitted:
            # io_uring_submit publishes the SQ tail first thing; SQEs the kernel does not consume
            # in this call go with the next io_uring_enter, so they count as in flight from here
            self.gauge.submitted(self._unsubmitted)
            self._unsubmitted = 0
        for _ in range(RING_RETRIES_MAX):
            if wait:
                ret = self._lib.io_uring_submit_and_wait(self._ring, 1)
            else:
                ret = self._lib.io_uring_submit(self._ring)
            if ret >= 0:
                break
            if -ret not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                raise OSError(-ret, f"io_uring_enter: {errno.errorcode.get(-ret, -ret)}")
        else:
            raise OSError(errno.EAGAIN, "io_uring_enter kept answering EINTR/EAGAIN")

    def flush(self) -> None:
        if self._unsubmitted:
            self._enter(wait=False)

    def flush_and_wait(self) -> tuple[int, int]:
        self._enter(wait=True)
        cqe = self.peek()
        if cqe is None:  # submit_and_wait returned without a CQE posted (should not happen)
            cqe = self.ctx.wait_completion()
            self.gauge.completed()
            return int(cqe[0]), int(cqe[1])
        return cqe


def _layout_ok(ctx: Any, ring: int, entries: int) -> str | None:
    """None when liburing's struct io_uring at ``ring`` looks as this module expects."""
    n = _u32(ring + _SQ_RING_ENTRIES)
    kring = _ptr(ring + _SQ_KRING_ENTRIES)
    if _u32(ring + _RING_FD) != ctx.ring_fd:
        return "ring fd mismatch"
    if n < entries or n & (n - 1) or _u32(ring + _SQ_RING_MASK) != n - 1:
        return f"sq entries {n} / mask mismatch"
    if not kring or _u32(kring) != n or not _ptr(ring + _SQ_SQES):
        return "kernel sq ring mismatch"
    if _u32(ring + _RING_FLAGS) & _IORING_SETUP_SQE128:
        return "128-byte SQEs"
    return None


_warned = False


def make_ring(entries: int, gauge: DepthGauge, *, batch: bool = True) -> PerOpRing:
    """A ring of ``entries``; batched submission where the layout check passes."""
    global _warned
    from pyuring import UringCtx  # type: ignore[attr-defined]  # missing from its .pyi

    ctx = UringCtx(entries=entries)
    if not batch:
        return PerOpRing(ctx, gauge)
    try:
        raw = getattr(ctx, "_ctx", None)  # the struct io_uring * pyuring passes to liburing
        ring = int((raw.value if isinstance(raw, ctypes.c_void_p) else raw) or 0)
        why = _layout_ok(ctx, ring, entries) if ring else "no ring handle"
        _Liburing.get()
    except (AttributeError, OSError, TypeError) as e:
        why = f"liburing symbols unavailable: {e}"
    if why is None:
        return BatchRing(ctx, gauge, ring)
    if not _warned:
        _warned = True
        log.warning("uring: batched submission unavailable (%s); one io_uring_enter per op", why)
    return PerOpRing(ctx, gauge)
