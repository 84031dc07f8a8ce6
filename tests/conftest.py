"""Shared fixtures: a live bulk server on 127.0.0.1 (engine on a MemoryDevice), started and
stopped per test, its engine checked with ``check()`` before it stops."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from kvstore import limits
from kvstore.auth import Tenants
from kvstore.engine.device import MemoryDevice
from kvstore.engine.types import EngineConfig
from kvstore.testing import BackgroundBulkServer


@pytest.fixture
def make_bulk() -> Iterator[Callable[..., BackgroundBulkServer]]:
    started: list[BackgroundBulkServer] = []

    def make(tenants: Tenants | None = None) -> BackgroundBulkServer:
        cfg = EngineConfig(data_dir="/mem", capacity_bytes=128 * limits.MiB,
                           segment_bytes=16 * limits.MiB, dram_bytes=32 * limits.MiB)
        srv = BackgroundBulkServer(cfg, MemoryDevice(), tenants=tenants).start()
        started.append(srv)
        return srv

    yield make
    problems = []
    for srv in started:
        if srv.engine is not None and not srv.engine.closed:  # a test may have stopped it
            problems += srv.engine.check()
        srv.stop(timeout=2.0)
    assert problems == []


@pytest.fixture
def bulk(make_bulk: Callable[..., BackgroundBulkServer]) -> BackgroundBulkServer:
    return make_bulk()
