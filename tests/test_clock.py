"""Clocks: the simulated one moves only when told, never backwards, always in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from nurture.clock import SimulatedClock, SystemClock


def test_simulated_clock_advances_only_when_told() -> None:
    clock = SimulatedClock(datetime(2026, 1, 1, tzinfo=UTC))
    assert clock.now() == clock.now() == datetime(2026, 1, 1, tzinfo=UTC)
    assert clock.advance(timedelta(days=14)) == datetime(2026, 1, 15, tzinfo=UTC)
    assert clock.monotonic() == datetime(2026, 1, 15, tzinfo=UTC).timestamp()


def test_simulated_clock_normalises_to_utc_and_refuses_going_back() -> None:
    clock = SimulatedClock(datetime(2026, 1, 1, 10, tzinfo=timezone(timedelta(hours=2))))
    assert clock.now() == datetime(2026, 1, 1, 8, tzinfo=UTC) and clock.now().tzinfo is UTC
    with pytest.raises(ValueError):
        clock.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError):
        clock.set(datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError):
        SimulatedClock(datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test


def test_system_clock_is_aware_utc() -> None:
    now = SystemClock().now()
    assert now.tzinfo is UTC
