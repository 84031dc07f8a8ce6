"""DepthGauge: counts, peaks, time-weighted means, parents and resets."""

from __future__ import annotations

import threading

import pytest

from kvstore.io_uring.depth import DepthGauge, DeviceDepth


def test_counts_peak_and_busy_mean() -> None:
    g = DepthGauge()
    g.submitted(3)
    assert g.stats().inflight == 3
    g.completed(3)
    st = g.stats()
    assert (st.inflight, st.peak, st.ops, st.submits) == (0, 3, 3, 1)
    # only depth 3 was ever in flight while busy: the busy mean is exactly 3
    assert st.mean_busy == pytest.approx(3.0)
    assert 0 < st.mean <= st.mean_busy and st.seconds > 0


def test_reset_keeps_what_is_in_flight() -> None:
    g = DepthGauge()
    g.submitted(5, calls=5)
    g.completed(3)
    g.reset()
    st = g.stats()
    assert (st.inflight, st.peak, st.ops, st.submits) == (2, 2, 0, 0)
    g.completed(2)
    assert g.stats().mean_busy == pytest.approx(2.0)


def test_parts_feed_the_total_and_forget_releases() -> None:
    d = DeviceDepth()
    a, b = d.part("a"), d.part("b")
    assert d.part("a") is a
    a.submitted(4)
    b.submitted(2)
    st = d.stats()
    assert st["total"]["inflight"] == 6 and st["total"]["peak"] == 6  # type: ignore[index]
    assert set(st["parts"]) == {"a", "b"}  # type: ignore[arg-type]
    a.completed(4)
    d.forget("b")  # a dropped ring: its two ops leave the total with it
    st = d.stats()
    assert st["total"]["inflight"] == 0 and list(st["parts"]) == ["a"]  # type: ignore[index]


def test_threads_updating_one_gauge_lose_nothing() -> None:
    g = DepthGauge()
    start = threading.Barrier(4)

    def work() -> None:
        start.wait(timeout=10)
        for _ in range(2000):
            g.submitted(1)
            g.completed(1)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=30)
    st = g.stats()
    assert st.inflight == 0 and st.ops == 8000 and 1 <= st.peak <= 4
