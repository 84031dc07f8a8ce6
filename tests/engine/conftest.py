"""Fixtures for the engine tests.

Every engine a test opens through ``engines`` (or the ``engine`` / ``file_engine`` shortcuts)
is checked after the test: ``engine.check(deep=True)`` must return ``[]``, then it is closed.
An engine a test abandons on purpose (a simulated crash) is handed to ``engines.abandon`` so the
check skips it; the reopened engine is checked instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from kvstore import limits
from kvstore.engine.device import Device, IoOp, MemoryDevice
from kvstore.engine.segments import segment_path
from kvstore.engine.store import Engine
from kvstore.engine.types import EngineConfig

NS = "ns1"
SEGMENT_BYTES = limits.segment_bytes_min  # 1 MiB: the smallest segment the engine allows
CAPACITY_BYTES = 64 * limits.MiB


def pattern(seed: int, n: int) -> bytes:
    """Deterministic, position-dependent bytes: a misplaced page or a stale block shows up."""
    unit = bytes(((i * 131) + seed * 17 + (seed >> 8)) & 0xFF for i in range(257))
    return (unit * (n // 257 + 1))[:n]


class CountingDevice(Device):
    """A real device (any, delegated to) that counts the bytes its reads return: a measure of
    flash traffic that does not trust the engine's own counters."""

    def __init__(self, inner: Device) -> None:
        self.inner = inner
        self.name, self.direct = inner.name, inner.direct
        self.bytes_read = 0
        self._lock = threading.Lock()

    def submit(self, ops: Sequence[IoOp]) -> list[int]:
        res = self.inner.submit(ops)
        with self._lock:
            self.bytes_read += sum(r for op, r in zip(ops, res, strict=True)
                                   if not op.write and r > 0)
        return res

    def open(self, path: str, *, create: bool = True) -> int:
        return self.inner.open(path, create=create)

    def close_handle(self, handle: int) -> None:
        self.inner.close_handle(handle)

    def size(self, handle: int) -> int:
        return self.inner.size(handle)

    def truncate(self, handle: int, size: int) -> None:
        self.inner.truncate(handle, size)

    def sync(self, handle: int) -> None:
        self.inner.sync(handle)

    def allocate(self, handle: int, size: int) -> None:
        self.inner.allocate(handle, size)

    def unlink(self, path: str) -> None:
        self.inner.unlink(path)

    def rename(self, old: str, new: str) -> None:
        self.inner.rename(old, new)

    def listdir(self, directory: str) -> list[str]:
        return self.inner.listdir(directory)

    def read_file(self, path: str) -> bytes | None:
        return self.inner.read_file(path)

    def write_file_atomic(self, path: str, data: bytes) -> None:
        self.inner.write_file_atomic(path, data)

    def close(self) -> None:
        self.inner.close()


def real_device(tmp_path: Path) -> Device:
    """io_uring when this machine allows it, else POSIX: real files either way."""
    from kvstore.io_uring.select import open_device

    return open_device("auto", probe_dir=str(tmp_path))


class Engines:
    """Opens engines for a test and checks every one still open when the test ends."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.live: list[Engine] = []
        self.devices: list[Device] = []
        self._dirs = 0

    def device(self, kind: str = "memory") -> Device:
        dev: Device = MemoryDevice() if kind == "memory" else real_device(self.tmp_path)
        self.devices.append(dev)
        return dev

    def config(self, data_dir: str | None = None, **kw: object) -> EngineConfig:
        if data_dir is None:
            self._dirs += 1
            data_dir = str(self.tmp_path / f"store{self._dirs}")
        opts: dict[str, object] = {"capacity_bytes": CAPACITY_BYTES,
                                   "segment_bytes": SEGMENT_BYTES, "dram_bytes": 0}
        opts.update(kw)
        return EngineConfig(data_dir=data_dir, **opts)  # type: ignore[arg-type]

    def open(self, device: Device | None = None, config: EngineConfig | None = None,
             *, namespace: str | None = NS, **kw: object) -> Engine:
        dev = device if device is not None else self.device()
        cfg = config if config is not None else self.config(**kw)
        eng = Engine.open(cfg, dev)
        self.live.append(eng)
        if namespace is not None and namespace not in {n.name for n in eng.list_namespaces()}:
            eng.create_namespace(namespace)
        return eng

    def close(self, eng: Engine) -> None:
        assert eng.check(deep=True) == []
        eng.close()
        self.live.remove(eng)

    def abandon(self, eng: Engine) -> None:
        """Forget an engine without closing it: the process 'crashed'. A dead process's
        descriptors close, which drops its data directory lock; here that is done by hand."""
        self.live.remove(eng)
        if eng.dir_lock is not None:
            eng.dir_lock.release()

    def reopen(self, eng: Engine, *, crash: bool = False) -> Engine:
        if crash:
            self.abandon(eng)
        else:
            self.close(eng)
        return self.open(eng.device, eng.config, namespace=None)

    def finish(self) -> list[str]:
        problems: list[str] = []
        for eng in self.live:
            problems += [f"{eng.config.data_dir}: {p}" for p in eng.check(deep=True)]
            eng.close()
        self.live.clear()
        for dev in self.devices:
            dev.close()
        return problems


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    e = Engines(tmp_path)
    yield e
    assert e.finish() == []


@pytest.fixture
def engine(engines: Engines) -> Engine:
    """An engine on a MemoryDevice with namespace ``ns1``, no DRAM tier (flash paths run)."""
    return engines.open()


@pytest.fixture
def file_engine(engines: Engines) -> Engine:
    """An engine on real files (io_uring or POSIX) with namespace ``ns1``."""
    return engines.open(engines.device("real"))


def active_segment_file(eng: Engine) -> str:
    assert eng.active is not None
    return segment_path(eng.config.data_dir, eng.active.id)


def segment_files(data_dir: str) -> list[str]:
    return sorted(os.path.join(data_dir, n) for n in os.listdir(data_dir) if n.endswith(".kvs"))
