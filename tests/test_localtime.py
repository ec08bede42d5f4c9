"""Local time across daylight-saving switches, in four zones.

Every expected instant is written out in UTC, worked out by hand from the zone's offsets:
Europe/Berlin +01/+02, America/New_York -05/-04, Australia/Sydney +10/+11 and Asia/Kolkata
+05:30 all year. The 2026 switches, all on a Sunday: Berlin 03-29 (02:00 -> 03:00) and 10-25
(03:00 -> 02:00); New York 03-08 (02:00 -> 03:00) and 11-01 (02:00 -> 01:00); Sydney 10-04
(02:00 -> 03:00) and 04-05 (03:00 -> 02:00).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nurture.localtime import (
    Cron,
    Window,
    date_at,
    local_datetime,
    next_anniversary,
    parse_clock,
    parse_date_value,
    parse_days,
    zone,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")
KOLKATA = ZoneInfo("Asia/Kolkata")
ZONES = [BERLIN, NEW_YORK, SYDNEY, KOLKATA]
# The instants (UTC) at which the clocks change in 2026.
SWITCHES = [
    datetime(2026, 3, 29, 1, tzinfo=UTC),
    datetime(2026, 10, 25, 1, tzinfo=UTC),
    datetime(2026, 3, 8, 7, tzinfo=UTC),
    datetime(2026, 11, 1, 6, tzinfo=UTC),
    datetime(2026, 10, 3, 16, tzinfo=UTC),
    datetime(2026, 4, 4, 16, tzinfo=UTC),
]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# -- zones, clock times, days ------------------------------------------------------------
def test_a_bad_default_zone_is_an_error_not_a_silent_utc() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Berlni'"):
        zone(None, default="Europe/Berlni")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Europe/Berlin", "Europe/Berlin"),
        (" Asia/Kolkata ", "Asia/Kolkata"),
        (None, "UTC"),
        ("", "UTC"),
        ("Mars/Olympus_Mons", "UTC"),
        ("../etc/passwd", "UTC"),
        ("Europe", "UTC"),
    ],
)
def test_zone_falls_back_to_the_default_for_a_missing_or_unknown_name(
    name: str | None, expected: str
) -> None:
    assert zone(name).key == expected
    assert zone(name, default="Europe/Berlin").key == (
        expected if expected != "UTC" else "Europe/Berlin"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10:00", time(10)), ("9:30", time(9, 30)), ("23:59", time(23, 59)), ("00:00", time(0))],
)
def test_parse_clock_reads_a_24_hour_time(text: str, expected: time) -> None:
    assert parse_clock(text) == expected


@pytest.mark.parametrize("text", ["24:00", "10:60", "10", "10:0", "10:00:00", "ten", "", "1:2:3"])
def test_parse_clock_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="expected a time of day like 10:00"):
        parse_clock(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("weekdays", {0, 1, 2, 3, 4}),
        ("Weekends", {5, 6}),
        ("daily", set(range(7))),
        ("every day", set(range(7))),
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("fri-mon", {4, 5, 6, 0}),
        ("sun-sun", {6}),
        (["MON", "Wednesday", "tues"], {0, 1, 2}),
        ("sat, sun", {5, 6}),
        (["weekends", "mon"], {0, 5, 6}),
    ],
)
def test_parse_days_reads_names_groups_and_wrapping_ranges(
    value: str | list[str], expected: set[int]
) -> None:
    assert parse_days(value) == frozenset(expected)


@pytest.mark.parametrize(
    ("value", "problem"),
    [("funday", "'funday'"), ("mon-xyz", "'xyz'"), (["mon", ""], "''"), ([], "at least one")],
)
def test_parse_days_names_the_bad_part(value: str | list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_days(value)


# -- local_datetime --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tz", "day", "at", "expected"),
    [
        # Berlin spring forward: 02:30 does not exist, it moves on by the hour to 03:30 CEST.
        (BERLIN, date(2026, 3, 29), time(10), utc(2026, 3, 29, 8)),
        (BERLIN, date(2026, 3, 29), time(2, 30), utc(2026, 3, 29, 1, 30)),
        # Berlin fall back: 02:30 happens twice, the first one (CEST) counts.
        (BERLIN, date(2026, 10, 25), time(10), utc(2026, 10, 25, 9)),
        (BERLIN, date(2026, 10, 25), time(2, 30), utc(2026, 10, 25, 0, 30)),
        (NEW_YORK, date(2026, 3, 8), time(10), utc(2026, 3, 8, 14)),
        (NEW_YORK, date(2026, 3, 8), time(2, 30), utc(2026, 3, 8, 7, 30)),
        # New York repeats 01:00-02:00; 02:30 is plain EST.
        (NEW_YORK, date(2026, 11, 1), time(10), utc(2026, 11, 1, 15)),
        (NEW_YORK, date(2026, 11, 1), time(1, 30), utc(2026, 11, 1, 5, 30)),
        (NEW_YORK, date(2026, 11, 1), time(2, 30), utc(2026, 11, 1, 7, 30)),
        (SYDNEY, date(2026, 10, 4), time(10), utc(2026, 10, 3, 23)),
        (SYDNEY, date(2026, 10, 4), time(2, 30), utc(2026, 10, 3, 16, 30)),
        (SYDNEY, date(2026, 4, 5), time(10), utc(2026, 4, 5, 0)),
        (SYDNEY, date(2026, 4, 5), time(2, 30), utc(2026, 4, 4, 15, 30)),
        (KOLKATA, date(2026, 3, 29), time(10), utc(2026, 3, 29, 4, 30)),
        (KOLKATA, date(2026, 3, 29), time(2, 30), utc(2026, 3, 28, 21)),
        (KOLKATA, date(2026, 10, 25), time(2, 30), utc(2026, 10, 24, 21)),
    ],
)
def test_local_datetime_on_switch_days(
    tz: ZoneInfo, day: date, at: time, expected: datetime
) -> None:
    # When asking for the instant of a wall-clock time
    result = local_datetime(day, at, tz)
    # Then it is exactly the hand-computed one, in UTC
    assert result == expected and result.tzinfo is UTC


def test_a_time_in_the_gap_reads_as_the_time_one_gap_later() -> None:
    result = local_datetime(date(2026, 3, 29), time(2, 30), BERLIN)
    assert result.astimezone(BERLIN).time() == time(3, 30)


def test_date_at_counts_days_back_from_a_date_trait() -> None:
    # Given a renewal on 2026-06-27, when reminding 90 days before at 10:00 Berlin time
    result = date_at(date(2026, 6, 27), -90, time(10), BERLIN)
    # Then it is 2026-03-29 10:00 CEST, the spring-forward day
    assert result == utc(2026, 3, 29, 8)


# -- windows ---------------------------------------------------------------------------
OFFICE = Window.parse("weekdays", "09:00", "18:00")
QUIET = Window.parse("daily", "21:00", "08:00")


@pytest.mark.parametrize(
    ("tz", "moment", "inside", "opens", "closes"),
    [
        # Berlin, spring: the Monday after the switch is on CEST.
        (BERLIN, utc(2026, 3, 27, 8, 30), True, utc(2026, 3, 27, 8, 30), utc(2026, 3, 27, 17)),
        (BERLIN, utc(2026, 3, 28, 12), False, utc(2026, 3, 30, 7), utc(2026, 3, 30, 16)),
        (BERLIN, utc(2026, 3, 30, 7, 30), True, utc(2026, 3, 30, 7, 30), utc(2026, 3, 30, 16)),
        (BERLIN, utc(2026, 3, 30, 16, 30), False, utc(2026, 3, 31, 7), utc(2026, 3, 31, 16)),
        # Berlin, autumn: the Friday before is CEST, the Monday after CET.
        (BERLIN, utc(2026, 10, 23, 15, 30), True, utc(2026, 10, 23, 15, 30), utc(2026, 10, 23, 16)),
        (BERLIN, utc(2026, 10, 24, 12), False, utc(2026, 10, 26, 8), utc(2026, 10, 26, 17)),
        (BERLIN, utc(2026, 10, 26, 7, 30), False, utc(2026, 10, 26, 8), utc(2026, 10, 26, 17)),
        (NEW_YORK, utc(2026, 3, 7, 15), False, utc(2026, 3, 9, 13), utc(2026, 3, 9, 22)),
        (NEW_YORK, utc(2026, 3, 9, 13, 30), True, utc(2026, 3, 9, 13, 30), utc(2026, 3, 9, 22)),
        (NEW_YORK, utc(2026, 10, 31, 15), False, utc(2026, 11, 2, 14), utc(2026, 11, 2, 23)),
        (NEW_YORK, utc(2026, 11, 2, 13, 30), False, utc(2026, 11, 2, 14), utc(2026, 11, 2, 23)),
        (SYDNEY, utc(2026, 10, 2, 23), False, utc(2026, 10, 4, 22), utc(2026, 10, 5, 7)),
        (SYDNEY, utc(2026, 10, 4, 22, 30), True, utc(2026, 10, 4, 22, 30), utc(2026, 10, 5, 7)),
        (SYDNEY, utc(2026, 4, 4, 0), False, utc(2026, 4, 5, 23), utc(2026, 4, 6, 8)),
        (SYDNEY, utc(2026, 4, 5, 22, 30), False, utc(2026, 4, 5, 23), utc(2026, 4, 6, 8)),
        (KOLKATA, utc(2026, 3, 28, 6), False, utc(2026, 3, 30, 3, 30), utc(2026, 3, 30, 12, 30)),
    ],
)
def test_office_hours_across_the_switch(
    tz: ZoneInfo, moment: datetime, inside: bool, opens: datetime, closes: datetime
) -> None:
    # Given weekdays 09:00-18:00, when asking at `moment`
    # Then the window is open or not, and opens and closes at the hand-computed instants
    assert OFFICE.contains(moment, tz) is inside
    assert OFFICE.next_open(moment, tz) == opens
    assert OFFICE.next_close(moment, tz) == closes


@pytest.mark.parametrize(
    ("tz", "moment", "inside", "opens", "closes"),
    [
        # Berlin, spring: Saturday 21:00 CET to Sunday 08:00 CEST is one hour shorter.
        (BERLIN, utc(2026, 3, 28, 22), True, utc(2026, 3, 28, 22), utc(2026, 3, 29, 6)),
        (BERLIN, utc(2026, 3, 29, 1, 30), True, utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 6)),
        (BERLIN, utc(2026, 3, 29, 6, 30), False, utc(2026, 3, 29, 19), utc(2026, 3, 30, 6)),
        # Berlin, autumn: both 02:30s are quiet, and the night ends at 08:00 CET.
        (BERLIN, utc(2026, 10, 24, 20), True, utc(2026, 10, 24, 20), utc(2026, 10, 25, 7)),
        (BERLIN, utc(2026, 10, 25, 0, 30), True, utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 7)),
        (BERLIN, utc(2026, 10, 25, 1, 30), True, utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 7)),
        (BERLIN, utc(2026, 10, 25, 6, 30), True, utc(2026, 10, 25, 6, 30), utc(2026, 10, 25, 7)),
        (BERLIN, utc(2026, 10, 25, 7), False, utc(2026, 10, 25, 20), utc(2026, 10, 26, 7)),
        (NEW_YORK, utc(2026, 3, 8, 3), True, utc(2026, 3, 8, 3), utc(2026, 3, 8, 12)),
        (NEW_YORK, utc(2026, 3, 8, 12, 30), False, utc(2026, 3, 9, 1), utc(2026, 3, 9, 12)),
        (NEW_YORK, utc(2026, 11, 1, 1), True, utc(2026, 11, 1, 1), utc(2026, 11, 1, 13)),
        (NEW_YORK, utc(2026, 11, 1, 12, 30), True, utc(2026, 11, 1, 12, 30), utc(2026, 11, 1, 13)),
        (SYDNEY, utc(2026, 10, 3, 11), True, utc(2026, 10, 3, 11), utc(2026, 10, 3, 21)),
        (SYDNEY, utc(2026, 10, 3, 21, 30), False, utc(2026, 10, 4, 10), utc(2026, 10, 4, 21)),
        (SYDNEY, utc(2026, 4, 4, 10), True, utc(2026, 4, 4, 10), utc(2026, 4, 4, 22)),
        (SYDNEY, utc(2026, 4, 4, 21, 30), True, utc(2026, 4, 4, 21, 30), utc(2026, 4, 4, 22)),
        (
            KOLKATA,
            utc(2026, 3, 28, 15, 30),
            True,
            utc(2026, 3, 28, 15, 30),
            utc(2026, 3, 29, 2, 30),
        ),
    ],
)
def test_quiet_hours_across_the_switch(
    tz: ZoneInfo, moment: datetime, inside: bool, opens: datetime, closes: datetime
) -> None:
    # Given quiet hours 21:00-08:00 every day, when a message comes up at `moment`
    # Then it is held or not, and may go at the hand-computed end of the night
    assert QUIET.contains(moment, tz) is inside
    assert QUIET.next_open(moment, tz) == opens
    assert QUIET.next_close(moment, tz) == closes


def test_a_window_edge_in_the_gap_opens_at_the_switch() -> None:
    # Given 02:30-03:15, on Berlin's spring-forward day, when the clock jumps 02:00 -> 03:00
    window = Window.parse("daily", "02:30", "03:15")
    # Then the window is the part of it the clock shows: 03:00-03:15 CEST
    assert window.next_open(utc(2026, 3, 28, 23), BERLIN) == utc(2026, 3, 29, 1)
    assert window.next_close(utc(2026, 3, 28, 23), BERLIN) == utc(2026, 3, 29, 1, 15)


def test_a_window_ending_in_the_overlap_does_not_reopen_when_the_hour_repeats() -> None:
    # Given quiet hours 22:00-02:30, on Berlin's fall-back day
    window = Window.parse("daily", "22:00", "02:30")
    # Then they end at the first 02:30 (CEST) and stay over when 02:00-02:30 comes again (CET)
    assert window.next_close(utc(2026, 10, 24, 21), BERLIN) == utc(2026, 10, 25, 0, 30)
    assert not window.contains(utc(2026, 10, 25, 1, 15), BERLIN)


def test_a_window_wholly_in_the_gap_skips_that_day() -> None:
    # Given 02:10-02:50, which Berlin's clocks never show on the spring-forward day
    window = Window.parse("daily", "02:10", "02:50")
    # Then it next opens on Monday, 02:10 CEST
    assert not window.contains(utc(2026, 3, 29, 1), BERLIN)
    assert window.next_open(utc(2026, 3, 28, 23), BERLIN) == utc(2026, 3, 30, 0, 10)


def test_nights_that_touch_in_the_gap_end_together() -> None:
    # Given quiet hours 02:40-02:20 every day: on Berlin's spring-forward day the clock jumps
    # over both edges, so Saturday's night ends at the instant Sunday's begins
    window = Window.parse("daily", "02:40", "02:20")
    # Then a message held on Saturday may go only when Sunday's night ends, Monday 02:20 CEST
    assert window.next_close(utc(2026, 3, 28, 12), BERLIN) == utc(2026, 3, 30, 0, 20)
    assert window.contains(utc(2026, 3, 29, 1), BERLIN)


@pytest.mark.parametrize(
    ("days", "start", "end", "problem"),
    [("daily", "10:00", "10:00", "same time"), ("someday", "09:00", "10:00", "someday")],
)
def test_a_window_that_cannot_exist_is_rejected(
    days: str, start: str, end: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Window.parse(days, start, end)


def test_a_window_without_days_is_rejected_so_next_open_always_ends() -> None:
    with pytest.raises(ValueError, match="at least one day"):
        Window(frozenset(), time(9), time(10))


def test_a_naive_moment_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        OFFICE.contains(datetime(2026, 3, 30, 10), BERLIN)  # noqa: DTZ001 - the point


# -- anniversaries ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tz", "month", "day", "at", "expected"),
    [
        (BERLIN, 3, 29, time(10), utc(2026, 3, 29, 8)),
        (BERLIN, 3, 29, time(2, 30), utc(2026, 3, 29, 1, 30)),
        (BERLIN, 10, 25, time(2, 30), utc(2026, 10, 25, 0, 30)),
        (NEW_YORK, 3, 8, time(2, 30), utc(2026, 3, 8, 7, 30)),
        (NEW_YORK, 11, 1, time(1, 30), utc(2026, 11, 1, 5, 30)),
        (SYDNEY, 10, 4, time(2, 30), utc(2026, 10, 3, 16, 30)),
        (SYDNEY, 4, 5, time(2, 30), utc(2026, 4, 4, 15, 30)),
        (KOLKATA, 3, 29, time(10), utc(2026, 3, 29, 4, 30)),
        # Feb 29 in 2026, not a leap year, is celebrated on Feb 28.
        (BERLIN, 2, 29, time(10), utc(2026, 2, 28, 9)),
        (NEW_YORK, 2, 29, time(10), utc(2026, 2, 28, 15)),
    ],
)
def test_birthdays_on_switch_days(
    tz: ZoneInfo, month: int, day: int, at: time, expected: datetime
) -> None:
    assert next_anniversary(month, day, at, tz, after=utc(2026, 1, 1)) == expected


def test_next_anniversary_is_strictly_after_and_finds_feb_29_in_leap_years() -> None:
    # Given a birthday at 10:00 Berlin time on the spring-forward day
    # When asking from the very instant of this year's, then it is next year's (CEST again)
    assert next_anniversary(3, 29, time(10), BERLIN, after=utc(2026, 3, 29, 8)) == utc(
        2027, 3, 29, 8
    )
    # Feb 29: Feb 28 in 2027, Feb 29 in 2028
    assert next_anniversary(2, 29, time(10), BERLIN, after=utc(2026, 3, 1)) == utc(2027, 2, 28, 9)
    assert next_anniversary(2, 29, time(10), BERLIN, after=utc(2027, 3, 1)) == utc(2028, 2, 29, 9)


def test_next_anniversary_with_an_offset() -> None:
    # Given a birthday on April 5, 7 days before at 02:30 Berlin time: 03-29, in the gap
    result = next_anniversary(4, 5, time(2, 30), BERLIN, after=utc(2026, 1, 1), offset_days=-7)
    assert result == utc(2026, 3, 29, 1, 30)
    # A week before New Year's Day comes in the year before
    result = next_anniversary(1, 1, time(10), KOLKATA, after=utc(2026, 1, 1), offset_days=-7)
    assert result == utc(2026, 12, 25, 4, 30)


@pytest.mark.parametrize(("month", "day"), [(2, 30), (4, 31), (13, 1), (0, 1)])
def test_next_anniversary_rejects_a_day_that_is_not_in_the_calendar(month: int, day: int) -> None:
    with pytest.raises(ValueError, match="not a day of the year"):
        next_anniversary(month, day, time(10), BERLIN, after=utc(2026, 1, 1))


# -- date traits -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-29", date(2026, 3, 29)),
        ("2026-03-29T23:30:00-05:00", date(2026, 3, 29)),  # the date as written, not UTC's
        ("2026-03-29T23:30:00Z", date(2026, 3, 29)),
        ("2026-03-29 10:00", date(2026, 3, 29)),
        (datetime(2026, 3, 29, 8, tzinfo=SYDNEY), date(2026, 3, 29)),  # 03-28 in UTC
        (date(2026, 3, 29), date(2026, 3, 29)),
        (1774742400, date(2026, 3, 29)),  # 2026-03-29T00:00:00Z
        (-1_000_000_000, date(1938, 4, 24)),  # birthdays before 1970 are negative
        ("2026-02-30", None),
        ("2026-03-01T25:00", None),
        ("29.03.2026", None),
        ("", None),
        (True, None),
        (1.5, None),  # like nurture_ts: only whole seconds are a date
        (10**15, None),
        (None, None),
        (["2026-03-29"], None),
    ],
)
def test_parse_date_value(value: object, expected: date | None) -> None:
    assert parse_date_value(value) == expected


# -- cron ------------------------------------------------------------------------------
def fires(cron: Cron, start: datetime, count: int = 200) -> list[datetime]:
    """`count` successive fire times, checking that each is strictly after the one before."""
    moments = [start]
    for _ in range(count):
        moments.append(cron.next_after(moments[-1]))
        assert moments[-1] > moments[-2], "no fire time twice, no loop"
    return moments[1:]


def per_local_day(moments: list[datetime], tz: ZoneInfo) -> Counter[date]:
    return Counter(moment.astimezone(tz).date() for moment in moments)


@pytest.mark.parametrize(
    ("tz", "expression", "day", "expected"),
    [
        # In the gap cronsim fires once, at the switch (03:00 summer time).
        (BERLIN, "30 2 * * *", date(2026, 3, 29), [utc(2026, 3, 29, 1)]),
        (NEW_YORK, "30 2 * * *", date(2026, 3, 8), [utc(2026, 3, 8, 7)]),
        (SYDNEY, "30 2 * * *", date(2026, 10, 4), [utc(2026, 10, 3, 16)]),
        # In the overlap it fires once, the first time the clock shows it.
        (BERLIN, "30 2 * * *", date(2026, 10, 25), [utc(2026, 10, 25, 0, 30)]),
        (NEW_YORK, "30 1 * * *", date(2026, 11, 1), [utc(2026, 11, 1, 5, 30)]),
        (SYDNEY, "30 2 * * *", date(2026, 4, 5), [utc(2026, 4, 4, 15, 30)]),
        (KOLKATA, "30 2 * * *", date(2026, 3, 29), [utc(2026, 3, 28, 21)]),
    ],
)
def test_a_daily_job_fires_once_a_day_across_the_switch(
    tz: ZoneInfo, expression: str, day: date, expected: list[datetime]
) -> None:
    # Given a daily job in the zone, iterated from 100 days before the switch
    cron = Cron(expression, tz.key)
    start = datetime.combine(day - timedelta(days=100), time(12), tzinfo=UTC)
    # When asking for the next fire 200 times
    moments = fires(cron, start)
    # Then every local day has exactly one fire, the switch day at the expected instant
    counts = per_local_day(moments, tz)
    assert set(counts.values()) == {1} and len(counts) == 200
    assert [m for m in moments if m.astimezone(tz).date() == day] == expected


@pytest.mark.parametrize(
    ("tz", "day", "first", "hours"),
    [
        (BERLIN, date(2026, 3, 29), utc(2026, 3, 28, 23), 23),
        (BERLIN, date(2026, 10, 25), utc(2026, 10, 24, 22), 25),
        (NEW_YORK, date(2026, 3, 8), utc(2026, 3, 8, 5), 23),
        (NEW_YORK, date(2026, 11, 1), utc(2026, 11, 1, 4), 25),
        (SYDNEY, date(2026, 10, 4), utc(2026, 10, 3, 14), 23),
        (SYDNEY, date(2026, 4, 5), utc(2026, 4, 4, 13), 25),
        (KOLKATA, date(2026, 3, 29), utc(2026, 3, 28, 18, 30), 24),
    ],
)
def test_an_hourly_job_follows_real_time_across_the_switch(
    tz: ZoneInfo, day: date, first: datetime, hours: int
) -> None:
    # Given an hourly job, iterated from two days before the switch day
    moments = fires(Cron("0 * * * *", tz.key), first - timedelta(days=2))
    # Then the switch day has 23, 25 or 24 fires, one every real hour from local midnight
    on_day = [m for m in moments if m.astimezone(tz).date() == day]
    assert on_day == [first + timedelta(hours=n) for n in range(hours)]


@pytest.mark.parametrize(
    ("tz", "day", "quarters"),
    [
        (BERLIN, date(2026, 3, 29), 92),
        (BERLIN, date(2026, 10, 25), 100),
        (NEW_YORK, date(2026, 11, 1), 100),
    ],
)
def test_a_quarter_hourly_job_counts_the_real_quarters(
    tz: ZoneInfo, day: date, quarters: int
) -> None:
    start = datetime.combine(day - timedelta(days=1), time(20), tzinfo=tz)
    counts = per_local_day(fires(Cron("*/15 * * * *", tz.key), start), tz)
    assert counts[day] == quarters


def test_from_the_repeated_hour_a_job_already_run_is_not_run_again() -> None:
    # Given a job at 02:50 Berlin time, which ran at 02:50 CEST (00:50 UTC) on 2026-10-25
    cron = Cron("50 2 * * *", "Europe/Berlin")
    assert cron.next_after(utc(2026, 10, 25, 0)) == utc(2026, 10, 25, 0, 50)
    # When asking during the repeated hour, at 02:10 CET
    # Then the next fire is the next day, never 02:50 CEST again (that is in the past)
    assert cron.next_after(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 50)


def test_cron_weekdays_and_aware_input_in_any_zone() -> None:
    cron = Cron("0 10 * * mon-fri", "Europe/Berlin")
    # Saturday 28 March, given in New York time: next is Monday 10:00 CEST
    saturday = datetime(2026, 3, 28, 9, tzinfo=NEW_YORK)
    assert cron.next_after(saturday) == utc(2026, 3, 30, 8)
    assert cron.next_after(utc(2026, 3, 30, 8)) == utc(2026, 3, 31, 8)


@pytest.mark.parametrize(
    ("expression", "timezone", "problem"),
    [
        ("* * *", "UTC", "5 fields"),
        ("0 0 * * * *", "UTC", "5 fields"),
        ("@daily", "UTC", "5 fields"),
        ("61 * * * *", "UTC", "bad minute"),
        ("0 25 * * *", "UTC", "bad hour"),
        ("0 0 31 2 *", "UTC", "bad day-of-month"),
        ("0 0 * 13 *", "UTC", "bad month"),
        ("0 0 * * 8", "UTC", "bad day-of-week"),
        ("0 0 * * *", "Mars/Olympus_Mons", "unknown time zone 'Mars/Olympus_Mons'"),
        ("0 0 * * *", "", "unknown time zone"),
    ],
)
def test_a_bad_cron_says_what_is_wrong(expression: str, timezone: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Cron(expression, timezone)


# -- properties ------------------------------------------------------------------------
zones = st.sampled_from(ZONES)
# Moments anywhere in 2025-2028, and moments within 36 hours of a switch.
moments = st.one_of(
    st.integers(0, 4 * 366 * 86400).map(lambda s: utc(2025, 1, 1) + timedelta(seconds=s)),
    st.tuples(st.sampled_from(SWITCHES), st.integers(-36 * 3600, 36 * 3600)).map(
        lambda pair: pair[0] + timedelta(seconds=pair[1])
    ),
)
clock_times = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45, 59]))
window_parts = st.tuples(st.frozensets(st.integers(0, 6), min_size=1), clock_times, clock_times)
some_windows = window_parts.filter(lambda p: p[1] != p[2]).map(lambda p: Window(*p))


@given(some_windows, zones, moments)
def test_next_open_and_next_close_agree_with_contains(
    window: Window, tz: ZoneInfo, moment: datetime
) -> None:
    # Given any window, zone and moment (often near a switch), when asking when it opens and closes
    opens = window.next_open(moment, tz)
    closes = window.next_close(moment, tz)
    # Then the answers are in order and the window is open exactly from one to the other
    assert opens >= moment and window.contains(opens, tz)
    assert window.contains(moment, tz) is (opens == moment)
    assert closes > opens and not window.contains(closes, tz)
    assert window.contains(closes - timedelta(seconds=1), tz)


def wall_clock_contains(window: Window, moment: datetime, tz: ZoneInfo) -> bool:
    """The plain reading: is the local weekday and time of day inside the window?"""
    local = moment.astimezone(tz)
    weekday, now = local.weekday(), local.time().replace(tzinfo=None)
    if window.start < window.end:
        return weekday in window.days and window.start <= now < window.end
    return (weekday in window.days and now >= window.start) or (
        (weekday - 1) % 7 in window.days and now < window.end
    )


# Away from the switch hours (01:00-04:00 in these zones) nothing is ambiguous.
safe_times = st.builds(
    time, st.sampled_from([0, 4, 8, 9, 12, 18, 21, 23]), st.sampled_from([0, 30])
)


@given(
    st.tuples(st.frozensets(st.integers(0, 6), min_size=1), safe_times, safe_times)
    .filter(lambda p: p[1] != p[2])
    .map(lambda p: Window(*p)),
    zones,
    moments,
)
def test_contains_agrees_with_the_wall_clock_away_from_the_switch_hours(
    window: Window, tz: ZoneInfo, moment: datetime
) -> None:
    # Given edges the clock shows exactly once a day, then the instant-based window and the
    # plain wall-clock reading agree
    assert window.contains(moment, tz) is wall_clock_contains(window, moment, tz)


@given(
    st.dates(date(2000, 1, 1), date(2000, 12, 31)),
    clock_times,
    zones,
    moments,
    st.integers(-400, 400),
)
def test_next_anniversary_is_the_next_one(
    anniversary: date, at: time, tz: ZoneInfo, after: datetime, offset_days: int
) -> None:
    # Given any day of the year (Feb 29 included), time, zone and offset
    month, day = anniversary.month, anniversary.day
    result = next_anniversary(month, day, at, tz, after, offset_days)
    # Strictly after, and less than a year (and a leap day, and an offset change) away
    assert after < result <= after + timedelta(days=367)
    # On the right local day, Feb 29 on Feb 28 outside leap years
    local = (result.astimezone(tz) - timedelta(days=offset_days)).date()
    leap = local.year % 4 == 0 and (local.year % 100 != 0 or local.year % 400 == 0)
    expected_day = 28 if (month, day, leap) == (2, 29, False) else day
    assert (local.month, local.day) == (month, expected_day)
    # And nothing in between: one microsecond earlier gives the same answer
    assert (
        next_anniversary(month, day, at, tz, result - timedelta(microseconds=1), offset_days)
        == result
    )


@given(
    st.sampled_from(["30 2 * * *", "30 1 * * *", "0 * * * *", "*/20 1-3 * * *", "0 9 * * 1-5"]),
    zones,
    moments,
)
def test_cron_next_after_is_strictly_after(expression: str, tz: ZoneInfo, moment: datetime) -> None:
    # Given jobs at gap and overlap times, hourly and on weekdays, from any moment
    cron = Cron(expression, tz.key)
    first = cron.next_after(moment)
    second = cron.next_after(first)
    # Then each answer is strictly later, and none is far off
    assert moment < first < second
    assert first - moment <= timedelta(days=4)
