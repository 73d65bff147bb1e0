"""Clocks for the cloud simulators.

Instance lifecycles are computed lazily from the clock (no background threads), so a test can
use a :class:`FakeClock` and jump minutes ahead with ``advance()``, while a hand-run simulator
uses a :class:`ScaledClock` where vendor minutes pass in wall-clock seconds.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol

#: 2026-11-25T00:00:00Z: a fixed, deterministic start for fake clocks.
DEFAULT_EPOCH = 1_795_564_800.0


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch, in the simulated vendor's time."""
        ...


class FakeClock:
    """A clock that only moves when a test tells it to (thread-safe)."""

    def __init__(self, start: float = DEFAULT_EPOCH) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float) -> None:
        with self._lock:
            if when < self._now:
                raise ValueError("a clock does not go backwards")
            self._now = when

    # A drop-in for time.sleep, so SDK waiters (Scaleway's wait_instance_server) move the fake
    # clock instead of the wall clock when a test patches sleep with it.
    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


class ScaledClock:
    """Real time, sped up: with ``speed=60`` one wall second is one simulated minute."""

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._wall0 = time.monotonic()
        self._start = time.time() if start is None else start

    def now(self) -> float:
        return self._start + (time.monotonic() - self._wall0) * self.speed


def iso(ts: float, *, zulu: bool = True, micros: bool = False) -> str:
    """Format an epoch as the vendors do (DO/Scaleway: RFC 3339 with Z; Linode: naive UTC)."""
    d = dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if micros else "%Y-%m-%dT%H:%M:%S"
    text = d.strftime(fmt)
    if zulu:
        text += "+00:00" if micros else "Z"
    return text
