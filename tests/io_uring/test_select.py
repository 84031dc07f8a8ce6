"""Device selection: the real probe here, and the fallback when the kernel switch says no."""

from __future__ import annotations

import logging

import pytest

from kvstore.engine.device import ALIGN, AlignedBuffer, MemoryDevice
from kvstore.errors import StorageError
from kvstore.io_uring import select
from kvstore.io_uring.posix import PosixDevice
from kvstore.io_uring.select import open_device, probe_uring
from kvstore.io_uring.uring import UringDevice


def _round_trip(dev, path: str) -> None:
    h = dev.open(path)
    src, dst = AlignedBuffer(ALIGN), AlignedBuffer(ALIGN)
    src.view[:ALIGN] = b"k" * ALIGN
    dev.write(h, 0, src.view[:ALIGN])
    assert dev.read_into(h, 0, dst.view[:ALIGN]) == ALIGN
    assert bytes(dst.view[:ALIGN]) == b"k" * ALIGN


def test_probe_does_real_io_in_probe_dir(tmp_path) -> None:
    ok, why = probe_uring(str(tmp_path / "probe"))
    assert isinstance(ok, bool) and why
    if ok:
        assert "O_DIRECT" in why and str(tmp_path / "probe") in why
    assert list((tmp_path / "probe").iterdir()) == []  # the probe file is removed


def test_auto_picks_uring_when_the_probe_succeeds(tmp_path, caplog) -> None:
    ok, why = probe_uring(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="kvstore.device"):
        dev = open_device("auto", probe_dir=str(tmp_path))
    try:
        if ok:
            assert isinstance(dev, UringDevice) and dev.name == "uring"
            assert "device: uring" in caplog.text
        else:  # e.g. under Docker's seccomp profile: the reason is logged
            assert isinstance(dev, PosixDevice)
            assert why in caplog.text
        _round_trip(dev, str(tmp_path / "f"))
    finally:
        dev.close()


def test_explicit_kinds(tmp_path) -> None:
    posix = open_device("posix")
    _round_trip(posix, str(tmp_path / "p"))
    posix.close()
    assert isinstance(open_device("memory"), MemoryDevice)
    with pytest.raises(ValueError):
        open_device("spdk")


def test_disabled_switch_falls_back_to_posix(tmp_path, monkeypatch, caplog) -> None:
    switch = tmp_path / "io_uring_disabled"
    switch.write_text("2\n")
    monkeypatch.setattr(select, "_DISABLED_SYSCTL", str(switch))
    ok, why = probe_uring(str(tmp_path))
    assert not ok and "disabled" in why
    with caplog.at_level(logging.WARNING, logger="kvstore.device"):
        dev = open_device("auto", probe_dir=str(tmp_path))
    assert isinstance(dev, PosixDevice)
    assert "io_uring is unavailable" in caplog.text and "disabled" in caplog.text
    _round_trip(dev, str(tmp_path / "f"))
    dev.close()
    with pytest.raises(StorageError):
        open_device("uring", probe_dir=str(tmp_path))
