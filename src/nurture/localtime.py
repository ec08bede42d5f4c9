"""Local-time arithmetic in a contact's IANA time zone, safe across daylight-saving switches.

Pure functions: callers pass the moment (from their `Clock`), every datetime going in must be
timezone-aware and every instant coming out is in UTC. Wall-clock times that do not exist
(spring-forward gap) or exist twice (fall-back overlap) are resolved by one written-down rule
each, so a schedule never fires twice, never loops and never silently drops a day.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from nurture.store.functions import DATE_PATTERN

_DATE_RE = re.compile(DATE_PATTERN)
_CLOCK_RE = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_GROUPS = {
    "weekdays": frozenset(range(5)),
    "weekends": frozenset({5, 6}),
    "daily": frozenset(range(7)),
    "every day": frozenset(range(7)),
}


def zone(name: str | None, default: str = "UTC") -> ZoneInfo:
    """The contact's zone; None, '' or an unknown name falls back to `default`."""
    if name and name.strip():
        try:
            return ZoneInfo(name.strip())
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass  # a bad trait must not stop a journey; the contact gets the default zone
    return _known_zone(default)


def _known_zone(name: str) -> ZoneInfo:
    """Like `zone` but for configuration, where a typo must be reported, not papered over."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r}; expected an IANA name like Europe/Berlin"
        ) from None


def parse_clock(value: str) -> time:
    """'10:00', '9:30' or '23:59' → time (24-hour clock, minutes required)."""
    match = _CLOCK_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError("expected a time of day like 10:00")
    return time(int(match[1]), int(match[2]))


def _day(name: str) -> int:
    name = name.strip().lower()
    for index, full in enumerate(_DAY_NAMES):
        if len(name) >= 3 and full.startswith(name):  # 'tue', 'tues' and 'tuesday' alike
            return index
    raise ValueError(f"unknown day {name!r}; expected mon..sun or monday..sunday")


def parse_days(value: str | Sequence[str]) -> frozenset[int]:
    """Weekdays as 0=Monday..6=Sunday from 'weekdays', 'mon-fri', ['sat', 'sun'], 'fri-mon'..."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    days: set[int] = set()
    for part in parts:
        if not isinstance(part, str) or not part.strip():
            raise ValueError(f"expected a day name, got {part!r}")
        key = " ".join(part.lower().split())
        if key in _DAY_GROUPS:
            days |= _DAY_GROUPS[key]
        elif "-" in key:
            first, _, last = key.partition("-")
            start, stop = _day(first), _day(last)
            # A range may wrap past Sunday: 'fri-mon' is Friday, Saturday, Sunday, Monday.
            days.update((start + offset) % 7 for offset in range((stop - start) % 7 + 1))
        else:
            days.add(_day(key))
    if not days:
        raise ValueError("expected at least one day, like 'weekdays' or 'mon-fri'")
    return frozenset(days)


def local_datetime(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock `at` on `day` in `tz`.

    fold=0 reads the wall time with the offset in force *before* the switch (PEP 495), which is
    the rule we want in both cases: a time in a spring-forward gap moves forward by the length of
    the gap (02:30 → 03:30), a time in a fall-back overlap is its first occurrence.
    """
    return datetime.combine(day, at.replace(tzinfo=None, fold=0), tzinfo=tz).astimezone(UTC)


def _clock_reaches(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The first instant at which the clock on `day` shows `at` or later.

    Unlike `local_datetime` this never moves backwards as `at` grows, which window edges need:
    in a gap it is the switch itself, so 02:30-03:15 on a spring-forward day is 03:00-03:15.
    """
    instant = local_datetime(day, at, tz)
    wall = datetime.combine(day, at.replace(tzinfo=None))
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant
    # In the gap the offset changes between the readings of the wall time with the offset after
    # the switch (fold=1, too early) and before it (fold=0, too late); find it to the second.
    low = math.floor(datetime.combine(day, at, tzinfo=tz).replace(fold=1).timestamp())
    high, after = math.ceil(instant.timestamp()), instant.astimezone(tz).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("moment must be timezone-aware")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    """A weekly window in local time, e.g. weekdays 09:00-18:00.

    `end` <= `start` means the window runs past midnight (quiet hours 21:00-08:00) and belongs to
    the day it starts on. Each day's window is the span of instants from when the clock first
    shows `start` to when it first shows `end`: in a fall-back overlap it closes at the first
    occurrence of `end` and does not reopen when the hour repeats.
    """

    days: frozenset[int]
    start: time
    end: time

    def __post_init__(self) -> None:
        if not self.days:
            raise ValueError("a window needs at least one day")
        if not self.days <= frozenset(range(7)):
            raise ValueError("days must be 0 (Monday) to 6 (Sunday)")
        if self.start == self.end:
            raise ValueError("a window cannot start and end at the same time")

    @classmethod
    def parse(cls, days: str | Sequence[str], start: str, end: str) -> Window:
        """A window from configuration text: ('weekdays', '09:00', '18:00')."""
        return cls(parse_days(days), parse_clock(start), parse_clock(end))

    def _spans(self, moment: datetime, tz: ZoneInfo) -> Iterator[tuple[datetime, datetime]]:
        """(open, close) of each day's window, in order, from the one that may hold `moment`."""
        first = moment.astimezone(tz).date() - timedelta(days=1)
        overnight = self.end <= self.start
        # 15 days always include a listed day whose window is not swallowed by a gap.
        for offset in range(15):
            day = first + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opens = _clock_reaches(day, self.start, tz)
            closes = _clock_reaches(day + timedelta(days=overnight), self.end, tz)
            if opens < closes:  # equal only when both edges fall into the same gap
                yield opens, closes

    def _span(self, moment: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """The window holding `moment`, or else the next one."""
        for opens, closes in self._spans(moment, tz):
            if moment < closes:
                return opens, closes
        raise AssertionError("unreachable: every week has an open window")

    def contains(self, moment: datetime, tz: ZoneInfo) -> bool:
        """Whether the window is open at `moment`."""
        moment = _utc(moment)
        return self._span(moment, tz)[0] <= moment

    def next_open(self, moment: datetime, tz: ZoneInfo) -> datetime:
        """`moment` itself (in UTC) if inside the window, else the next instant it opens."""
        moment = _utc(moment)
        return max(moment, self._span(moment, tz)[0])

    def next_close(self, moment: datetime, tz: ZoneInfo) -> datetime:
        """When the window holding `moment` ends (or, outside it, when the next one ends).

        For quiet hours this is when a held message may go; windows that touch (both edges in
        one gap) are joined, so the answer is never an instant at which the window is open.
        """
        closes = self._span(_utc(moment), tz)[1]
        while self.contains(closes, tz):
            closes = self._span(closes, tz)[1]
        return closes


def parse_date_value(value: object) -> date | None:
    """A date trait as stored, or None if it is not one; never raises.

    Text and numbers follow the grammar of the conditions' `nurture_ts` (ISO 8601 date or
    date-time, integer seconds since 1970), so a segment and a journey agree on what a date is.
    A date-time keeps the date as written: a birthday does not move with the writer's offset.
    """
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        if isinstance(value, str) and (match := _DATE_RE.fullmatch(value)):
            return date(int(match[1]), int(match[2]), int(match[3]))
        if isinstance(value, int) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC).date()
    except (ValueError, OverflowError, OSError):
        pass  # 2026-02-30, or seconds beyond year 9999
    return None


def date_at(value: date, offset_days: int, at: time, tz: ZoneInfo) -> datetime:
    """`value + offset_days` at local `at` as a UTC instant (renewal date - 90 days at 10:00)."""
    try:
        day = value + timedelta(days=offset_days)
    except OverflowError:
        raise ValueError(f"{value} plus {offset_days} days is outside the calendar") from None
    return local_datetime(day, at, tz)


def _anniversary(year: int, month: int, day: int) -> date:
    try:
        return date(year, month, day)
    except ValueError:
        return date(year, 2, 28)  # Feb 29 outside a leap year, the only day that can fail here


def next_anniversary(
    month: int, day: int, at: time, tz: ZoneInfo, after: datetime, offset_days: int = 0
) -> datetime:
    """The first instant strictly after `after` that is month/day + offset_days at local `at`.

    A birthday each year, or 7 days before it; Feb 29 falls on Feb 28 in non-leap years.
    """
    after = _utc(after)
    try:
        date(2000, month, day)  # a leap year accepts every real month/day
    except ValueError:
        raise ValueError(f"{month:02}-{day:02} is not a day of the year") from None
    # Start early enough that a large offset cannot skip the occurrence we are looking for.
    year = max(1, after.astimezone(tz).year - abs(offset_days) // 365 - 2)
    while True:
        moment = date_at(_anniversary(year, month, day), offset_days, at, tz)
        if moment > after:
            return moment
        year += 1


class Cron:
    """A 5-field cron expression in a named time zone, via cronsim.

    For jobs at a fixed hour and minute cronsim follows Debian cron: a time in the spring-forward
    gap fires once, at the switch (02:30 Europe/Berlin → 03:00 CEST), and a time in the fall-back
    overlap fires once, at its first occurrence. Jobs with a wildcard hour or minute ('0 * * * *')
    follow real time: 23 hourly fires on a spring-forward day, 25 on a fall-back day.
    """

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(
                f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
                f"got {len(fields)} in {expression!r}"
            )
        self.expression = " ".join(fields)
        self.tz = _known_zone(timezone)
        try:
            CronSim(self.expression, datetime(2026, 1, 1, tzinfo=self.tz))
        except CronSimError as exc:
            raise ValueError(
                f"{expression!r} is not a valid cron expression: {str(exc).lower()} field"
            ) from None

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, {self.tz.key!r})"

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after `moment`, in UTC."""
        moment = _utc(moment)
        # cronsim walks fixed-time jobs in wall-clock time, so from the second pass of an
        # overlap it can answer an instant of the first pass; skip those, they are not "after".
        for fire in CronSim(self.expression, moment.astimezone(self.tz)):
            if fire.astimezone(UTC) > moment:
                return fire.astimezone(UTC)
        raise ValueError(f"{self.expression!r} does not fire within 50 years of {moment}")
