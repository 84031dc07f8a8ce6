"""kvstore.transport.watchdog: the arithmetic of body and bulk-connection timeouts, on explicit
clocks (the socket-level behaviour is in test_bulk_timeouts.py and tests/api/test_http_guard.py).
"""

from __future__ import annotations

import pytest

from kvstore.transport.watchdog import BodyLimits, BodyWatch, BulkTimeouts, BulkWatch, Verdict

LIM = BodyLimits(idle_seconds=2.0, min_rate_bytes_per_second=1000, rate_window_seconds=4.0,
                 rate_grace_seconds=3.0)


def run(watch: BodyWatch, steps: list[tuple[int, bool]], dt: float = 0.5) -> list[Verdict | None]:
    out = []
    for nbytes, reading in steps:
        watch.received(nbytes)
        out.append(watch.tick(dt, reading))
    return out


def test_a_stalled_body_times_out_after_idle_seconds_of_reading() -> None:
    verdicts = run(BodyWatch(LIM), [(5000, True)] + [(0, True)] * 4)
    assert verdicts == [None, None, None, None, Verdict.STALLED]


def test_time_the_server_is_not_reading_does_not_count() -> None:
    # paused for 100 ticks (flow control, 100-continue not sent): neither idle nor slow
    verdicts = run(BodyWatch(LIM), [(5000, True)] + [(0, False)] * 100 + [(0, True)] * 4)
    assert set(verdicts[:-1]) == {None}
    assert verdicts[-1] is Verdict.STALLED  # 2 s of reading without a byte


def test_below_the_floor_after_the_grace_period() -> None:
    # 400 B per 0.5 s = 800 B/s, under 1000 B/s: allowed during the 3 s grace, then refused
    verdicts = run(BodyWatch(LIM), [(400, True)] * 8)
    assert verdicts[:5] == [None] * 5
    assert verdicts[5] is Verdict.TOO_SLOW


def test_at_the_floor_a_body_lives_on_and_the_average_is_over_the_window() -> None:
    watch = BodyWatch(LIM)
    assert set(run(watch, [(600, True)] * 40)) == {None}  # 1200 B/s for 20 s
    # a burst pays for a slow present only while it is inside the window (the last 4 s)
    watch = BodyWatch(LIM)
    assert set(run(watch, [(100_000, True)] + [(300, True)] * 7)) == {None}
    assert run(watch, [(300, True)]) == [Verdict.TOO_SLOW]


def test_a_zero_floor_turns_the_rate_check_off() -> None:
    lim = BodyLimits(idle_seconds=2.0, min_rate_bytes_per_second=0, rate_window_seconds=1.0,
                     rate_grace_seconds=1.0)
    assert set(run(BodyWatch(lim), [(1, True)] * 100)) == {None}


def test_bulk_watch_handshake_then_idle() -> None:
    t = BulkTimeouts(handshake_seconds=1.0, idle_seconds=3.0, body=LIM)
    w = BulkWatch(t, now=100.0)
    assert w.tick(100.5, rx_bytes=10, authenticated=False, busy=False, reading=True) is None
    assert w.tick(101.0, rx_bytes=10, authenticated=False, busy=True, reading=True) is None
    assert w.tick(101.5, rx_bytes=10, authenticated=False, busy=False,
                  reading=True) == "handshake"
    w = BulkWatch(t, now=0.0)
    assert w.tick(0.5, 50, authenticated=True, busy=False, reading=True) is None
    assert w.tick(3.0, 50, authenticated=True, busy=False, reading=True) is None
    assert w.tick(3.4, 50, authenticated=True, busy=True, reading=True) is None  # in flight
    assert w.tick(6.0, 50, authenticated=True, busy=False, reading=True) is None
    assert w.tick(6.5, 50, authenticated=True, busy=False, reading=True) == "idle"


def test_bulk_watch_judges_a_put_payload() -> None:
    w = BulkWatch(BulkTimeouts(handshake_seconds=1.0, idle_seconds=600.0, body=LIM), now=0.0)
    w.payload_started()
    kinds = [w.tick(0.5 * i, 10 * i, authenticated=True, busy=True, reading=True)
             for i in range(1, 10)]
    assert kinds[-1] == "body_rate" and set(kinds[:-1]) <= {None, "body_rate"}
    w.payload_ended()
    assert w.tick(5.0, 90, authenticated=True, busy=True, reading=True) is None


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        BodyLimits(idle_seconds=0)
    with pytest.raises(ValueError):
        BulkTimeouts(handshake_seconds=-1)
