"""The only place that reads the wall clock.

Engine code receives a `Clock` and asks it for the time, so tests, demos and
back-tests can run weeks of customer life in seconds with a `SimulatedClock`.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current time (UTC, timezone-aware)."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class SimulatedClock:
    """A clock that only moves when told to; safe to share between threads."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("SimulatedClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._now.timestamp()

    def advance(self, delta: timedelta) -> datetime:
        """Move time forward by `delta` and return the new time."""
        if delta < timedelta(0):
            raise ValueError("time does not run backwards")
        with self._lock:
            self._now += delta
            return self._now

    def set(self, moment: datetime) -> None:
        """Jump to `moment` (must not be earlier than now)."""
        if moment.tzinfo is None:
            raise ValueError("moment must be timezone-aware")
        with self._lock:
            if moment < self._now:
                raise ValueError("time does not run backwards")
            self._now = moment.astimezone(UTC)
