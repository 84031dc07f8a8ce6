"""Device selection: the real probe here, and the fallback when the kernel switch says no."""

from __future__ import annotations

import logging

import pytest

from kvstore import limits
from kvstore.engine.device import ALIGN, AlignedBuffer, MemoryDevice
from kvstore.errors import StorageError
from kvstore.io_uring import select
from kvstore.io_uring.measure import Measurement, compare, pick
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


def test_auto_measures_both_devices_and_logs_its_choice(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(select, "_verdicts", {})
    ok, why = probe_uring(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="kvstore.device"):
        dev = open_device("auto", probe_dir=str(tmp_path))
    try:
        if ok:
            line = next(r.getMessage() for r in caplog.records
                        if "chosen by measurement" in r.getMessage())
            assert line.startswith(f"device: {dev.name}, ")
            assert "uring " in line and "posix " in line and "GB/s" in line
        else:  # e.g. under Docker's seccomp profile: the reason is logged
            assert isinstance(dev, PosixDevice)
            assert why in caplog.text
        _round_trip(dev, str(tmp_path / "f"))
    finally:
        dev.close()
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # the probe file is gone
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kvstore.device"):
        again = open_device("auto", probe_dir=str(tmp_path / "sub"))
    again.close()
    if ok:  # same disk: the verdict is reused, and still logged
        assert type(again) is type(dev) and "earlier in this process" in caplog.text


def _m(kind: str, w: float, r: float, cpu: float) -> Measurement:
    return Measurement(kind, w, r, cpu)


def test_pick_takes_the_faster_and_breaks_ties_by_cpu() -> None:
    assert pick({"uring": _m("uring", 2.0, 2.0, 0.2), "posix": _m("posix", 1.0, 1.0, 0.1)}) == (
        "uring", "faster by more than 10%")
    assert pick({"uring": _m("uring", 1.0, 1.0, 0.1), "posix": _m("posix", 2.0, 2.0, 0.3)})[0] \
        == "posix"
    # within 10%: less CPU per byte wins, whichever is a little faster
    kind, why = pick({"uring": _m("uring", 1.9, 2.0, 0.1), "posix": _m("posix", 2.0, 2.0, 0.3)})
    assert kind == "uring" and "least CPU" in why
    assert _m("x", 1.0, 3.0, 0).gbps == pytest.approx(1.5)  # bytes over total time


def test_a_device_that_fails_its_measurement_is_not_chosen(tmp_path) -> None:
    def broken() -> UringDevice:
        raise StorageError("uring: cannot create a ring: EPERM")

    results, failed = compare({"uring": broken, "posix": PosixDevice}, str(tmp_path))
    assert list(results) == ["posix"] and "EPERM" in failed["uring"]
    assert results["posix"].write_gbps > 0 and results["posix"].read_gbps > 0
    assert pick(results)[0] == "posix"
    assert list(tmp_path.iterdir()) == []


def test_io_limits_relations() -> None:
    assert limits.posix_batch_threads >= 1
    assert 1 <= limits.device_probe_depth <= limits.uring_entries
    assert limits.device_probe_bytes % (2 * limits.MiB) == 0
    assert limits.device_probe_bytes >= limits.device_probe_depth * 2 * limits.MiB
    assert 0 < limits.device_choice_margin_fraction < 1


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
    monkeypatch.setattr(select, "_verdicts", {})
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
