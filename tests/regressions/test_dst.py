"""Peer bug: Mautic's daylight-saving series — campaign events rescheduled every hour in a
loop around the switch, time-zone offsets applied twice, sends an hour early or late, P0
reports each spring and autumn.

Here contacts in Europe/Berlin, America/New_York, Australia/Sydney and Asia/Kolkata (no
DST; it gets Berlin's dates) live through the spring-forward and fall-back days of 2026,
end to end (journey → outbox → dispatcher → channel) on a simulated clock: a send step at
01:30, 02:30 and 10:00 local, an SMS held by quiet hours 21:00-09:00 across the switch, a
wait for the weekday window 09:00-18:00, and yearly birthday triggers at 01:30 and 02:30.
Every message goes exactly once, at the local time below, written out by hand (not computed
by the code under test): a time in the spring-forward gap moves forward by the gap (02:30 →
03:30), a time that happens twice when clocks fall back is its first occurrence
(docs/journeys.md, docs/policy.md, nurture.localtime). And the scene comes to rest: a
bounded number of rounds, never the same work twice.

Naive implementations this catches: adding wall-clock hours as elapsed time (quiet hours
end at 08:00 or 10:00 after a switch), combining a local time with a fixed offset (the
offset of the day before: an hour off after the switch), `localize` with the second
occurrence or `is_dst=None` errors in the fold, dropping or looping on a time in the gap,
and a second send at the repeated 01:30/02:30 of a fall-back night.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tests.regressions.harness import Scene, scene

from nurture.clock import SimulatedClock
from nurture.store import Database
from nurture.store import tables as t

START = datetime(2026, 3, 1, tzinfo=UTC)  # before the first switch of the year (New York's)
END = datetime(2026, 12, 1, tzinfo=UTC)

NIGHT = "Night Before"  # each contact does it at 20:00 local the evening before its switch
JOURNEYS: list[dict[str, Any]] = [
    {
        "key": "night_sends",
        "trigger": {"event": NIGHT},
        "steps": [
            {"id": "s0130", "type": "send", "channel": "email", "template": "at_0130",
             "at": "01:30"},
            {"id": "s0230", "type": "send", "channel": "email", "template": "at_0230",
             "at": "02:30"},
            {"id": "s1000", "type": "send", "channel": "email", "template": "at_1000",
             "at": "10:00"},
        ],
    },
    {
        # Queued at 23:00, inside the SMS quiet hours (21:00-09:00) that cover the switch.
        "key": "quiet_sms",
        "trigger": {"event": NIGHT},
        "steps": [
            {"id": "late", "type": "wait", "for": "3h"},
            {"id": "text", "type": "send", "channel": "sms", "template": "quiet_sms"},
        ],
    },
    {
        "key": "weekday_window",
        "trigger": {"event": NIGHT},
        "steps": [
            {"id": "office", "type": "wait",
             "until_window": {"days": "weekdays", "from": "09:00", "to": "18:00"}},
            {"id": "mail", "type": "send", "channel": "email", "template": "window_mail"},
        ],
    },
    *[
        {
            # Re-entry `always`: only the trigger itself may keep a birthday to once a year.
            "key": f"bday_{at.replace(':', '')}",
            "trigger": {"date": "birthday", "yearly": True, "at": at},
            "entry": {"reentry": "always"},
            "steps": [{"id": "greet", "type": "send", "channel": "email",
                       "template": f"bday_{at.replace(':', '')}"}],
        }
        for at in ("01:30", "02:30")
    ],
]  # fmt: skip
TEMPLATES = ("at_0130", "at_0230", "at_1000", "quiet_sms", "window_mail", "bday_0130", "bday_0230")

# contact: (zone, phone, switch day, when each template is delivered: local time, offset in force)
CASES: dict[str, tuple[str, str, str, dict[str, str]]] = {
    # Berlin springs forward at 02:00 CET → 03:00 CEST (Sunday 29 March).
    "berlin_spring": ("Europe/Berlin", "+4915112345671", "2026-03-29", {
        "at_0130": "2026-03-29T01:30+01:00",
        "at_0230": "2026-03-29T03:30+02:00",  # in the gap: forward by the gap
        "at_1000": "2026-03-29T10:00+02:00",
        "quiet_sms": "2026-03-29T09:00+02:00",
        "window_mail": "2026-03-30T09:00+02:00",  # Monday
        "bday_0130": "2026-03-29T01:30+01:00",
        "bday_0230": "2026-03-29T03:30+02:00",
    }),
    # Berlin falls back at 03:00 CEST → 02:00 CET: 02:00-03:00 happens twice (25 October).
    "berlin_fall": ("Europe/Berlin", "+4915112345672", "2026-10-25", {
        "at_0130": "2026-10-25T01:30+02:00",
        "at_0230": "2026-10-25T02:30+02:00",  # the first of two 02:30s
        "at_1000": "2026-10-25T10:00+01:00",
        "quiet_sms": "2026-10-25T09:00+01:00",
        "window_mail": "2026-10-26T09:00+01:00",
        "bday_0130": "2026-10-25T01:30+02:00",
        "bday_0230": "2026-10-25T02:30+02:00",
    }),
    # New York springs forward at 02:00 EST → 03:00 EDT (8 March).
    "ny_spring": ("America/New_York", "+12015550121", "2026-03-08", {
        "at_0130": "2026-03-08T01:30-05:00",
        "at_0230": "2026-03-08T03:30-04:00",
        "at_1000": "2026-03-08T10:00-04:00",
        "quiet_sms": "2026-03-08T09:00-04:00",
        "window_mail": "2026-03-09T09:00-04:00",
        "bday_0130": "2026-03-08T01:30-05:00",
        "bday_0230": "2026-03-08T03:30-04:00",
    }),
    # New York falls back at 02:00 EDT → 01:00 EST: 01:00-02:00 happens twice (1 November).
    "ny_fall": ("America/New_York", "+12015550122", "2026-11-01", {
        "at_0130": "2026-11-01T01:30-04:00",  # the first of two 01:30s
        "at_0230": "2026-11-01T02:30-05:00",
        "at_1000": "2026-11-01T10:00-05:00",
        "quiet_sms": "2026-11-01T09:00-05:00",
        "window_mail": "2026-11-02T09:00-05:00",
        "bday_0130": "2026-11-01T01:30-04:00",
        "bday_0230": "2026-11-01T02:30-05:00",
    }),
    # Sydney falls back at 03:00 AEDT → 02:00 AEST (5 April): 02:00-03:00 twice.
    "sydney_fall": ("Australia/Sydney", "+61412345671", "2026-04-05", {
        "at_0130": "2026-04-05T01:30+11:00",
        "at_0230": "2026-04-05T02:30+11:00",
        "at_1000": "2026-04-05T10:00+10:00",
        "quiet_sms": "2026-04-05T09:00+10:00",
        "window_mail": "2026-04-06T09:00+10:00",
        "bday_0130": "2026-04-05T01:30+11:00",
        "bday_0230": "2026-04-05T02:30+11:00",
    }),
    # Sydney springs forward at 02:00 AEST → 03:00 AEDT (4 October).
    "sydney_spring": ("Australia/Sydney", "+61412345672", "2026-10-04", {
        "at_0130": "2026-10-04T01:30+10:00",
        "at_0230": "2026-10-04T03:30+11:00",
        "at_1000": "2026-10-04T10:00+11:00",
        "quiet_sms": "2026-10-04T09:00+11:00",
        "window_mail": "2026-10-05T09:00+11:00",
        "bday_0130": "2026-10-04T01:30+10:00",
        "bday_0230": "2026-10-04T03:30+11:00",
    }),
    # Kolkata has no DST: the same wall times, at +05:30, on Berlin's switch days.
    "kolkata_spring": ("Asia/Kolkata", "+919812345671", "2026-03-29", {
        "at_0130": "2026-03-29T01:30+05:30",
        "at_0230": "2026-03-29T02:30+05:30",
        "at_1000": "2026-03-29T10:00+05:30",
        "quiet_sms": "2026-03-29T09:00+05:30",
        "window_mail": "2026-03-30T09:00+05:30",
        "bday_0130": "2026-03-29T01:30+05:30",
        "bday_0230": "2026-03-29T02:30+05:30",
    }),
    "kolkata_fall": ("Asia/Kolkata", "+919812345672", "2026-10-25", {
        "at_0130": "2026-10-25T01:30+05:30",
        "at_0230": "2026-10-25T02:30+05:30",
        "at_1000": "2026-10-25T10:00+05:30",
        "quiet_sms": "2026-10-25T09:00+05:30",
        "window_mail": "2026-10-26T09:00+05:30",
        "bday_0130": "2026-10-25T01:30+05:30",
        "bday_0230": "2026-10-25T02:30+05:30",
    }),
}  # fmt: skip
# Moments at which anything may happen for one contact: the evening event, the end of the
# 3 h wait, 01:30, 02:30, 09:00, 10:00 and Monday 09:00 (birthdays share 01:30 and 02:30).
MOMENTS_PER_CONTACT = 7


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


@pytest.fixture
def world(db: Database, clock: SimulatedClock) -> Iterator[Scene]:
    with scene(db, clock, templates=TEMPLATES) as s:
        yield s


def _evening_before(zone: str, day: str) -> datetime:
    # 20:00 is never in a gap or a fold, so the standard library's reading is unambiguous.
    local = datetime.combine(date.fromisoformat(day) - timedelta(days=1), time(20), ZoneInfo(zone))
    return local.astimezone(UTC)


def test_every_send_wait_and_birthday_goes_once_at_the_right_local_time_around_dst(
    world: Scene,
) -> None:
    # Given the journeys, published before the first switch of the year
    for journey in JOURNEYS:
        world.publish(journey)
    # And a contact per zone and switch day, born on that day
    for user, (zone, phone, day, _) in CASES.items():
        world.identify(user, email=f"{user}@example.com", phone=phone, timezone=zone,
                       birthday=f"1990{day[4:]}")  # fmt: skip
    # When each does the evening event at 20:00 local the day before its switch, and the
    # year runs on to December
    for moment, user in sorted((_evening_before(c[0], c[2]), u) for u, c in CASES.items()):
        world.advance(moment - world.clock.now())
        world.track(user, NIGHT)
    world.advance(END - world.clock.now())

    # Then each contact got each message exactly once, sent at the local time in the table
    for user, (_, _, _, expected) in CASES.items():
        got = {m.template: m for m in world.messages(user)}
        assert len(world.messages(user)) == len(expected), user
        assert set(got) == set(expected), user
        for template, local in expected.items():
            message = got[template]
            assert message.status == "sent", (user, template, message.rule, message.reason)
            assert message.sent_at == datetime.fromisoformat(local), (user, template)
    assert len(world.channel.sent) == len(CASES) * len(TEMPLATES)
    # And a birthday entered each journey once (not again at the repeated hour)
    for key in ("bday_0130", "bday_0230"):
        assert world.count(t.enrolments, t.enrolments.c.journey_key == key) == len(CASES)
    # And the scene came to rest after a bounded number of rounds, none at a moment twice
    # over (an hourly reschedule loop would add a round every hour, for ever)
    moments = set(world.rounds)
    assert len(moments) <= MOMENTS_PER_CONTACT * len(CASES)
    assert len(world.rounds) <= 2 * len(moments)
    assert world.n.dispatcher.next_due() is None
    assert world.count(t.enrolments, t.enrolments.c.status == "active") == 0
