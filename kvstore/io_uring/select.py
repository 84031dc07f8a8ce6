"""Choose the flash device: io_uring where the kernel and sandbox allow it, else POSIX.

io_uring can be unavailable in three ways: the kernel disables it
(``/proc/sys/kernel/io_uring_disabled`` = 2, or 1 for processes outside the allowed group), a
seccomp profile blocks its syscalls (Docker's default answers EPERM or ENOSYS), or pyuring cannot
load. ``probe_uring`` tries for real: it creates a ring and writes then reads back 4 KiB with
O_DIRECT in ``probe_dir`` (buffered if that filesystem refuses O_DIRECT).

"auto" then *measures* io_uring against POSIX on that disk (``measure.compare``: a few tens of
MiB each, in alternating turns) and takes the faster, or on a tie (``limits.
device_choice_margin_fraction``) the one with less CPU per byte. The choice, the figures and the
reason are logged at INFO; every fallback is logged at WARNING with its cause. Never silent.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import tempfile

from kvstore.engine.device import ALIGN, AlignedBuffer, Device, MemoryDevice
from kvstore.errors import StorageError
from kvstore.io_uring.measure import compare, pick
from kvstore.io_uring.posix import PosixDevice
from kvstore.io_uring.uring import UringDevice

log = logging.getLogger("kvstore.device")

KINDS = ("auto", "uring", "posix", "memory")
_DISABLED_SYSCTL = "/proc/sys/kernel/io_uring_disabled"


def _sysctl_reason() -> str | None:
    try:
        with open(_DISABLED_SYSCTL) as f:
            value = f.read().strip()
    except OSError:
        return None  # older kernels have no such switch
    if value == "2":
        return f"{_DISABLED_SYSCTL} = 2 (io_uring disabled for all processes)"
    if value == "1" and os.geteuid() != 0:
        return f"{_DISABLED_SYSCTL} = 1 (io_uring restricted to a group); trying anyway"
    return None


def probe_uring(probe_dir: str | None = None) -> tuple[bool, str]:
    """Whether io_uring works here, and why (or why not). Does real I/O in ``probe_dir``."""
    sysctl = _sysctl_reason()
    if sysctl is not None and "= 2" in sysctl:
        return False, sysctl
    try:
        from pyuring import UringCtx  # type: ignore[attr-defined]  # missing from its .pyi
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return False, f"pyuring cannot load: {e!r}"
    try:
        ring = UringCtx(entries=4)
    except OSError as e:
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        why = "blocked by seccomp or the kernel" if e.errno in (errno.EPERM, errno.ENOSYS) else ""
        return False, f"io_uring_setup failed: {name} {why}".strip()
    try:
        return _probe_io(ring, probe_dir)
    finally:
        ring.close()


def _probe_io(ring: object, probe_dir: str | None) -> tuple[bool, str]:
    if probe_dir is not None:
        os.makedirs(probe_dir, exist_ok=True)
    fd_tmp, path = tempfile.mkstemp(prefix=".uring-probe-", dir=probe_dir)
    os.close(fd_tmp)
    out, back = AlignedBuffer(ALIGN), AlignedBuffer(ALIGN)
    try:
        mode = "O_DIRECT"
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_DIRECT", 0))
        except OSError:
            fd, mode = os.open(path, os.O_RDWR), "buffered (O_DIRECT refused)"
        try:
            pattern = os.urandom(64) * (ALIGN // 64)
            out.view[:ALIGN] = pattern
            for write, buf in ((True, out), (False, back)):
                op = ring.write_async_ptr if write else ring.read_async_ptr  # type: ignore[attr-defined]
                op(fd, ctypes.c_void_p(buf.address()), ALIGN, 0, 7)
                ud, res = ring.wait_completion()  # type: ignore[attr-defined]
                if ud != 7 or res != ALIGN:
                    what = "write" if write else "read"
                    return False, f"io_uring {what} of 4 KiB returned {res} (user_data {ud})"
            if bytes(back.view[:ALIGN]) != pattern:
                return False, "io_uring read back different bytes"
        finally:
            os.close(fd)
        return True, f"io_uring works ({mode} 4 KiB write+read in {os.path.dirname(path)})"
    except OSError as e:
        return False, f"io_uring probe I/O failed: {e}"
    finally:
        out.close()
        back.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def open_device(kind: str = "auto", *, probe_dir: str | None = None) -> Device:
    """Open the device ``kind`` names; "auto" measures io_uring against POSIX (where io_uring
    works at all) and opens the faster, logging the figures and the choice."""
    if kind not in KINDS:
        raise ValueError(f"device kind must be one of {KINDS}, not {kind!r}")
    if kind == "memory":
        log.info("device: memory (chosen explicitly; nothing persists)")
        return MemoryDevice()
    if kind == "posix":
        log.info("device: posix (chosen explicitly)")
        return PosixDevice()
    if kind == "uring":
        ok, why = probe_uring(probe_dir)
        if not ok:
            raise StorageError(f"device uring requested, but io_uring is unavailable: {why}")
        log.info("device: uring (chosen explicitly; %s)", why)
        return UringDevice()
    ok, why = probe_uring(probe_dir)
    if not ok:
        log.warning("device: posix, because io_uring is unavailable: %s", why)
        return PosixDevice()
    return _measured_choice(probe_dir)


# The verdict per filesystem device (st_dev) for this process: the disk does not change between
# engines, so tests and tools that open many devices measure once.
_verdicts: dict[int, tuple[str, str]] = {}


def _measured_choice(probe_dir: str | None) -> Device:
    where = probe_dir or tempfile.gettempdir()
    os.makedirs(where, exist_ok=True)
    disk = os.stat(where).st_dev
    verdict = _verdicts.get(disk)
    if verdict is not None:
        kind, detail = verdict
        log.info("device: %s, chosen by measurement earlier in this process on the disk of %s "
                 "(%s)", kind, where, detail)
        return UringDevice() if kind == "uring" else PosixDevice()
    results, failed = compare({"uring": UringDevice, "posix": PosixDevice}, probe_dir)
    for kind, err in failed.items():
        log.warning("device: %s failed its measurement in %s: %s", kind, where, err)
    if not results:
        log.warning("device: posix, because no device could be measured in %s", where)
        return PosixDevice()
    kind, reason = pick(results)
    detail = f"{reason}: " + "; ".join(m.describe() for m in results.values())
    _verdicts[disk] = (kind, detail)
    log.info("device: %s, chosen by measurement in %s (%s)", kind, where, detail)
    return UringDevice() if kind == "uring" else PosixDevice()
