"""Connection timeouts shared by the HTTP edge and the bulk port: the settings, and a sans-IO
judge of a body (or PUT payload) the server is waiting for.

The edges own the timers; ``BodyWatch`` only does arithmetic on what they tell it, in *reading*
time: a tick while the server is not reading (flow control paused the transport, or a
``100-continue`` was not sent yet) does not advance it, so a slow server never blames its
client.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from kvstore import limits


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """How slow a body may arrive (see ``kvstore.limits``, connection timeouts)."""

    idle_seconds: float = limits.body_idle_timeout_seconds_default
    min_rate_bytes_per_second: int = limits.body_min_rate_bytes_per_second_default
    rate_window_seconds: float = limits.body_rate_window_seconds_default
    rate_grace_seconds: float = limits.body_rate_grace_seconds_default

    def __post_init__(self) -> None:
        if not (self.idle_seconds > 0 and self.rate_window_seconds > 0
                and self.rate_grace_seconds > 0 and self.min_rate_bytes_per_second >= 0):
            raise ValueError(f"invalid body limits: {self}")

    @property
    def tick_seconds(self) -> float:
        """How often a watchdog should call ``BodyWatch.tick``."""
        shortest = min(self.idle_seconds, self.rate_window_seconds, self.rate_grace_seconds)
        return shortest / limits.watchdog_ticks_per_timeout


@dataclass(frozen=True, slots=True)
class BulkTimeouts:
    """The bulk port's connection timeouts."""

    handshake_seconds: float = limits.bulk_handshake_timeout_seconds_default
    idle_seconds: float = limits.bulk_idle_timeout_seconds_default
    body: BodyLimits = field(default_factory=BodyLimits)

    def __post_init__(self) -> None:
        if not (self.handshake_seconds > 0 and self.idle_seconds > 0):
            raise ValueError(f"invalid bulk timeouts: {self}")

    @property
    def tick_seconds(self) -> float:
        shortest = min(self.handshake_seconds, self.idle_seconds)
        return min(shortest / limits.watchdog_ticks_per_timeout, self.body.tick_seconds)


class Verdict(enum.Enum):
    """Why a body is too slow; the value is the metrics label (``kind``)."""

    STALLED = "body"  # no byte for idle_seconds of reading
    TOO_SLOW = "body_rate"  # below the floor over the window


class BodyWatch:
    """Judges one body: feed it bytes as they arrive and ticks as time passes."""

    __slots__ = ("_limits", "_total", "_seen", "_reading", "_idle", "_samples")

    def __init__(self, body_limits: BodyLimits) -> None:
        self._limits = body_limits
        self._total = 0  # bytes received
        self._seen = 0  # bytes at the last tick
        self._reading = 0.0  # seconds spent reading so far
        self._idle = 0.0  # reading seconds since the last byte
        # (reading seconds, bytes) at ticks; the first is at or before the window's start.
        self._samples: deque[tuple[float, int]] = deque([(0.0, 0)])

    def received(self, nbytes: int) -> None:
        self._total += nbytes

    def tick(self, dt: float, reading: bool) -> Verdict | None:
        """``dt`` seconds passed; ``reading``: the server was reading the body meanwhile."""
        lim = self._limits
        if self._total != self._seen:
            self._seen = self._total
            self._idle = 0.0
        elif reading:
            self._idle += dt
        if not reading:
            return None
        self._reading += dt
        now = self._reading
        self._samples.append((now, self._total))
        while len(self._samples) > 1 and self._samples[1][0] <= now - lim.rate_window_seconds:
            self._samples.popleft()
        if self._idle >= lim.idle_seconds:
            return Verdict.STALLED
        if lim.min_rate_bytes_per_second and now >= lim.rate_grace_seconds:
            t0, b0 = self._samples[0]
            span = now - t0
            if span > 0 and (self._total - b0) < lim.min_rate_bytes_per_second * span:
                return Verdict.TOO_SLOW
        return None


class BulkWatch:
    """The timeouts of one bulk connection, as arithmetic on what its protocol reports."""

    __slots__ = ("_t", "_accepted", "_clock", "_last_active", "_rx_seen", "body")

    def __init__(self, timeouts: BulkTimeouts, now: float) -> None:
        self._t = timeouts
        self._accepted = self._clock = self._last_active = now
        self._rx_seen = 0
        self.body: BodyWatch | None = None  # set while a PUT payload is arriving

    def payload_started(self) -> None:
        self.body = BodyWatch(self._t.body)

    def payload_ended(self) -> None:
        self.body = None

    def tick(self, now: float, rx_bytes: int, authenticated: bool, busy: bool,
             reading: bool) -> str | None:
        """The timeout kind that ends the connection now, or None. ``rx_bytes``: bytes received
        ever; ``busy``: requests in flight or answers unflushed; ``reading``: not paused."""
        t = self._t
        dt, self._clock = now - self._clock, now
        arrived, self._rx_seen = rx_bytes - self._rx_seen, rx_bytes
        if not authenticated:
            self._last_active = now  # idle time starts at AUTH_OK
            if now - self._accepted >= t.handshake_seconds and not busy:
                return "handshake"
        elif arrived or busy:
            self._last_active = now
        elif now - self._last_active >= t.idle_seconds:
            return "idle"
        if self.body is not None:
            self.body.received(arrived)
            verdict = self.body.tick(dt, reading)
            if verdict is not None:
                return verdict.value
        return None
