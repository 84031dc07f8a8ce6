"""A stalled disk under a live bulk server: the engine runner answers every request within its
timeout with Busy (503 SlowDown), past its bound at once, never queues more than
``queue_max`` calls (so memory stays bounded), releases leases its late reads return, and the
store serves exact bytes again once the disk does. The stall is a test-only device wrapper
(``StallDevice``) that holds every I/O batch until released."""

from __future__ import annotations

import threading
from pathlib import Path

from kvstore_client import Busy, Client

from kvstore import limits
from kvstore.engine.types import EngineConfig
from kvstore.io_uring.posix import PosixDevice
from kvstore.testing import BackgroundBulkServer

STALL_MAX_S = 60.0  # the test's own bound: a stalled batch waits at most this long
TIMEOUT_S = 0.3
QUEUE_MAX = 16
CALLERS = 40  # more than QUEUE_MAX: some are refused at once


class StallDevice(PosixDevice):
    """A POSIX device whose I/O batches wait while ``running`` is clear (a stalled disk)."""

    def __init__(self) -> None:
        super().__init__(direct=False)
        self.running = threading.Event()
        self.running.set()
        self.held = 0

    def _gate(self) -> None:
        if not self.running.is_set():
            self.held += 1
            assert self.running.wait(STALL_MAX_S), "stall never released"

    def submit(self, ops):  # type: ignore[no-untyped-def]
        self._gate()
        return super().submit(ops)

    def start(self, ops):  # type: ignore[no-untyped-def]
        self._gate()
        return super().start(ops)


def body(i: int) -> bytes:
    return bytes([i % 251]) * (8192 + i)


def test_stalled_disk_gives_bounded_busy_answers_then_recovers(tmp_path: Path) -> None:
    dev = StallDevice()
    cfg = EngineConfig(data_dir=str(tmp_path), capacity_bytes=64 * limits.MiB,
                       segment_bytes=4 * limits.MiB, dram_bytes=0)
    srv = BackgroundBulkServer(cfg, dev, threads=4, engine_timeout_s=TIMEOUT_S,
                               engine_queue_max=QUEUE_MAX).start()
    try:
        keys = [f"k{i}" for i in range(CALLERS)]
        with Client(port=srv.port, namespace="stall", create=True, timeout=10, retries=0) as c:
            c.put_many(keys, [body(i) for i in range(CALLERS)])
        dev.running.clear()  # the disk stalls
        answers: list[str] = []
        peak = [0]
        lock = threading.Lock()

        def caller(i: int) -> None:
            with Client(port=srv.port, namespace="stall", timeout=10, retries=0) as cc:
                try:
                    got = cc.get(keys[i]) if i % 4 else cc.put(f"new{i}", body(i))
                    outcome = "data" if got == body(i) else f"other {got!r:.40}"
                except Busy as exc:
                    outcome = "busy: " + str(exc)
                assert srv.runner is not None
                with lock:
                    answers.append(outcome)
                    peak[0] = max(peak[0], srv.runner.pending)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a request hung on the stalled disk"
        assert len(answers) == CALLERS
        assert all(a.startswith("busy") for a in answers), answers  # no hangs, no other bytes
        assert any("did not answer" in a for a in answers), answers  # timed out
        assert any("too many" in a for a in answers), answers  # refused at the bound
        assert srv.runner is not None
        assert peak[0] <= QUEUE_MAX and srv.runner.pending <= QUEUE_MAX
        assert dev.held > 0 and srv.runner.timeouts > 0
        dev.running.set()  # the disk comes back
        for _ in range(500):  # the held calls finish
            if srv.runner.pending == 0:
                break
            threading.Event().wait(0.01)
        assert srv.runner.pending == 0
        with Client(port=srv.port, namespace="stall", timeout=10, retries=0) as c:
            for i in range(0, CALLERS, 8):  # a batch's reads are one engine call each
                assert c.get_many(keys[i:i + 8]) == [body(j) for j in range(i, i + 8)]
            c.put("after", b"fresh")
            assert c.get("after") == b"fresh"
        assert srv.engine is not None and srv.engine.check() == []
    finally:
        dev.running.set()
        srv.stop(timeout=5.0)
