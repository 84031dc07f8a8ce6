"""UringDevice specifics: a ring per thread, close() closes them all, submit_async on a loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kvstore.engine.device import ALIGN, AlignedBuffer, IoOp
from kvstore.errors import StorageError
from kvstore.io_uring.select import probe_uring
from kvstore.io_uring.uring import UringDevice

OK, WHY = probe_uring()
pytestmark = pytest.mark.skipif(not OK, reason=f"io_uring unavailable here: {WHY}")


def _blocks(n: int, size: int) -> list[bytes]:
    return [bytes([(i * 13 + j) & 0xFF for j in range(256)]) * (size // 256) for i in range(n)]


def test_one_ring_per_thread_and_close_closes_all(tmp_path) -> None:
    dev = UringDevice(entries=8)
    h = dev.open(str(tmp_path / "f"))
    buf = AlignedBuffer(ALIGN)

    def use() -> None:
        dev.write(h, 0, buf.view[:ALIGN])
        dev.write(h, ALIGN, buf.view[:ALIGN])  # same thread: same ring

    ts = [threading.Thread(target=use) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=30)
    use()
    assert len(dev._rings) == 4  # three worker threads + this one
    rings = list(dev._rings)
    dev.close()
    assert dev._rings == []
    assert all(getattr(r, "_ctx", None) is None for r in rings)
    with pytest.raises(StorageError):
        dev.submit([IoOp(h, 0, buf.view[:ALIGN])])  # handles are gone with the device


def test_small_ring_runs_a_large_batch_in_waves(tmp_path) -> None:
    dev = UringDevice(entries=4)
    h = dev.open(str(tmp_path / "f"))
    data = _blocks(37, 2 * ALIGN)
    srcs = [AlignedBuffer(2 * ALIGN) for _ in data]
    for s, d in zip(srcs, data, strict=True):
        s.view[: len(d)] = d
    res = dev.submit([IoOp(h, i * 2 * ALIGN, s.view[: 2 * ALIGN], write=True)
                      for i, s in enumerate(srcs)])
    assert res == [2 * ALIGN] * len(data)
    dsts = [AlignedBuffer(2 * ALIGN) for _ in data]
    assert dev.submit([IoOp(h, i * 2 * ALIGN, d.view[: 2 * ALIGN])
                       for i, d in enumerate(dsts)]) == [2 * ALIGN] * len(data)
    assert [bytes(d.view[: 2 * ALIGN]) for d in dsts] == data
    dev.close()


def test_submit_async_on_the_event_loop(tmp_path) -> None:
    async def main() -> None:
        dev = UringDevice(entries=4)
        h = dev.open(str(tmp_path / "f"))
        data = _blocks(20, ALIGN)
        srcs = [AlignedBuffer(ALIGN) for _ in data]
        for s, d in zip(srcs, data, strict=True):
            s.view[:ALIGN] = d
        # two concurrent batches on one ring; one buffer is unaligned (bounced)
        unaligned = memoryview(bytearray(ALIGN + 1))[1:]
        unaligned[:] = data[0]
        ops_a = [IoOp(h, i * ALIGN, s.view[:ALIGN], write=True) for i, s in enumerate(srcs[:10])]
        ops_b = [IoOp(h, i * ALIGN, s.view[:ALIGN], write=True)
                 for i, s in enumerate(srcs[10:], start=10)]
        ops_b.append(IoOp(h, 20 * ALIGN, unaligned, write=True))
        ra, rb = await asyncio.gather(dev.submit_async(ops_a), dev.submit_async(ops_b))
        assert ra == [ALIGN] * 10 and rb == [ALIGN] * 11
        outs = [memoryview(bytearray(ALIGN + 5))[5:] for _ in range(21)]
        res = await dev.submit_async([IoOp(h, i * ALIGN, o) for i, o in enumerate(outs)]
                                     + [IoOp(h, 40 * ALIGN, outs[0]), IoOp(999, 0, outs[1])])
        assert res[:21] == [ALIGN] * 21 and res[21] == 0 and res[22] < 0
        assert [bytes(o) for o in outs] == data + [data[0]]
        dev.close()

    asyncio.run(main())


def _aligned_blocks(n: int, size: int) -> tuple[list[bytes], list[AlignedBuffer]]:
    data = _blocks(n, size)
    bufs = [AlignedBuffer(size) for _ in data]
    for b, d in zip(bufs, data, strict=True):
        b.view[:size] = d
    return data, bufs


def test_a_batch_goes_to_the_kernel_in_one_submission_and_all_of_it_is_in_flight(tmp_path) -> None:
    dev = UringDevice(entries=64)
    h = dev.open(str(tmp_path / "f"))
    size = 2 * ALIGN
    data, srcs = _aligned_blocks(32, size)
    dev.reset_depth()
    assert dev.submit([IoOp(h, i * size, s.view[:size], write=True)
                       for i, s in enumerate(srcs)]) == [size] * 32
    assert dev.batched is True  # the layout check passed: SQEs are prepared in the ring
    total = dev.depth_stats()["total"]
    # one io_uring_enter carried all 32 SQEs, so all 32 were in flight at once
    assert (total["ops"], total["submits"], total["peak"], total["inflight"]) == (32, 1, 32, 0)
    assert 1 <= total["mean_busy"] <= 32
    dsts = [AlignedBuffer(size) for _ in data]
    assert dev.submit([IoOp(h, i * size, d.view[:size]) for i, d in enumerate(dsts)]) == [size] * 32
    assert [bytes(d.view[:size]) for d in dsts] == data
    parts = dev.depth_stats()["parts"]
    assert len(parts) == 1 and next(iter(parts.values()))["ops"] == 64
    dev.close()


def test_per_op_path_submits_each_op(tmp_path) -> None:
    dev = UringDevice(entries=64, batch=False)
    h = dev.open(str(tmp_path / "f"))
    _data, srcs = _aligned_blocks(8, ALIGN)
    assert dev.submit([IoOp(h, i * ALIGN, s.view[:ALIGN], write=True)
                       for i, s in enumerate(srcs)]) == [ALIGN] * 8
    assert dev.batched is False
    total = dev.depth_stats()["total"]
    assert (total["ops"], total["submits"], total["inflight"]) == (8, 8, 0)
    dev.close()


def test_waves_keep_the_ring_full_and_never_exceed_it(tmp_path) -> None:
    dev = UringDevice(entries=4)
    h = dev.open(str(tmp_path / "f"))
    _data, srcs = _aligned_blocks(37, ALIGN)
    assert dev.submit([IoOp(h, i * ALIGN, s.view[:ALIGN], write=True)
                       for i, s in enumerate(srcs)]) == [ALIGN] * 37
    total = dev.depth_stats()["total"]
    assert total["ops"] == 37 and total["peak"] == 4 and total["inflight"] == 0
    # refills ride on the next wait: never more submissions than reaping rounds, never one per op
    assert total["submits"] < 37
    dev.close()


def test_failed_layout_check_falls_back_to_per_op_and_says_so(tmp_path, monkeypatch,
                                                               caplog) -> None:
    from kvstore.io_uring import rings

    monkeypatch.setattr(rings, "_layout_ok", lambda ctx, ring, entries: "ring fd mismatch")
    monkeypatch.setattr(rings, "_warned", False)
    dev = UringDevice(entries=8)
    h = dev.open(str(tmp_path / "f"))
    data, srcs = _aligned_blocks(5, ALIGN)
    with caplog.at_level("WARNING", logger="kvstore.device"):
        assert dev.submit([IoOp(h, i * ALIGN, s.view[:ALIGN], write=True)
                           for i, s in enumerate(srcs)]) == [ALIGN] * 5
    assert dev.batched is False and "batched submission unavailable" in caplog.text
    dst = AlignedBuffer(ALIGN)
    assert dev.read_into(h, 4 * ALIGN, dst.view[:ALIGN]) == ALIGN
    assert bytes(dst.view[:ALIGN]) == data[4]
    dev.close()


def test_started_batches_are_in_flight_together_and_wait_in_any_order(tmp_path) -> None:
    dev = UringDevice(entries=64)
    h = dev.open(str(tmp_path / "f"))
    data, srcs = _aligned_blocks(12, ALIGN)
    dev.reset_depth()
    first = dev.start([IoOp(h, i * ALIGN, s.view[:ALIGN], write=True)
                       for i, s in enumerate(srcs[:8])])
    unaligned = memoryview(bytearray(ALIGN + 1))[1:]  # bounced: copied at start
    unaligned[:] = data[8]
    second = dev.start([IoOp(h, 8 * ALIGN, unaligned, write=True)]
                       + [IoOp(h, i * ALIGN, s.view[:ALIGN], write=True)
                          for i, s in enumerate(srcs[9:], start=9)])
    # both batches were handed to the kernel before anyone waited: nothing reaped yet
    total = dev.depth_stats()["total"]
    assert total["inflight"] == 12 and total["submits"] == 2
    assert second.wait() == [ALIGN] * 4
    assert first.wait() == [ALIGN] * 8 and first.wait() == [ALIGN] * 8
    assert dev.depth_stats()["total"]["inflight"] == 0
    outs = [memoryview(bytearray(ALIGN + 3))[3:] for _ in range(12)]  # bounced reads
    reads = dev.start([IoOp(h, i * ALIGN, o) for i, o in enumerate(outs)])
    assert reads.wait() == [ALIGN] * 12 and [bytes(o) for o in outs] == data
    dev.close()


def test_a_started_batch_is_waited_for_on_its_own_thread(tmp_path) -> None:
    dev = UringDevice(entries=8)
    h = dev.open(str(tmp_path / "f"))
    _data, srcs = _aligned_blocks(2, ALIGN)
    p = dev.start([IoOp(h, i * ALIGN, s.view[:ALIGN], write=True) for i, s in enumerate(srcs)])
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            p.wait()
        except StorageError as e:
            errors.append(e)

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join(timeout=30)
    assert len(errors) == 1 and "thread that started it" in str(errors[0])
    # the wrong-thread wait settled nothing; the owner's wait still gets the results
    assert p.wait() == [ALIGN, ALIGN]
    dev.close()
