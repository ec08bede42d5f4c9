"""Date and schedule triggers: entries made by the passing of time.

Each journey with such a trigger remembers up to when it has entered people
(`journeys.scanned_to`). A scan covers the time since then: a date trigger enters every
contact whose date (plus offset, at the local time) fell in it; a schedule enters its
audience once per cron fire time in it. A journey published now starts scanning from
now: it does not reach back. Entry keys name the date or fire time, so a scan repeated
after a crash enters nobody twice.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, String, cast, func, select

from nurture import localtime
from nurture.conditions.compile import SqlCompiler
from nurture.journeys.model import DateTrigger, Journey, ScheduleTrigger
from nurture.journeys.store import mark_scanned, require
from nurture.store import tables as t

if TYPE_CHECKING:
    from nurture.journeys.runtime import JourneyRuntime

ANALYZE_AFTER = 10_000  # entries in one scan after which PostgreSQL's statistics are renewed
MAX_FIRES = 100  # schedule fire times entered per scan (a long outage catches up slowly)


def scan(runtime: JourneyRuntime) -> int:
    """Make the entries due since each journey's last scan; returns how many."""
    entered = 0
    with runtime.db.read() as conn:
        journeys = runtime.versions.journeys(conn)
    for key, row in journeys.items():
        if row.status != "active" or row.version is None:
            continue
        with runtime.db.read() as conn:
            journey = runtime.journey(conn, key, row.version)
        if isinstance(journey.trigger, DateTrigger | ScheduleTrigger):
            entered += _scan_one(runtime, journey, row.version)
    if entered >= ANALYZE_AFTER and not runtime.db.is_sqlite:
        # Fresh statistics at once, or the claim of due steps plans for the table as it
        # was before these entries (a scan and a sort instead of the index).
        with runtime.db.write() as conn:
            conn.exec_driver_sql("ANALYZE enrolments")
    return entered


def next_fire(runtime: JourneyRuntime, until: datetime) -> datetime | None:
    """The first moment after each journey's last scan, up to `until`, at which a date
    or schedule trigger enters someone (for simulations that jump through time)."""
    found: list[datetime] = []
    with runtime.db.read() as conn:
        for key, row in runtime.versions.journeys(conn).items():
            if row.status != "active" or row.version is None:
                continue
            journey = runtime.journey(conn, key, row.version)
            since = require(conn, key).scanned_to
            if since is None or since >= until:
                continue
            trigger = journey.trigger
            if isinstance(trigger, ScheduleTrigger):
                fire = localtime.Cron(trigger.schedule, trigger.timezone).next_after(since)
                if fire <= until:
                    found.append(fire)
            elif isinstance(trigger, DateTrigger):
                due = dates_due(runtime, conn, trigger, since, until)
                found += [fire for _, fire in due]
    return min(found, default=None)


def _scan_one(runtime: JourneyRuntime, journey: Journey, version: int) -> int:
    now = runtime.clock.now()
    entered = 0
    with runtime.db.write() as conn:
        if not runtime.db.is_sqlite:
            # One scanner per journey at a time; the others skip it this round.
            got = conn.exec_driver_sql(
                "SELECT pg_try_advisory_xact_lock(7263554, hashtext(current_schema() || %(k)s))",
                {"k": journey.key},
            ).scalar()
            if not got:
                return 0
        since = require(conn, journey.key).scanned_to
        if since is None or since >= now:
            mark_scanned(conn, journey.key, max(since or now, now))
            return 0
        holds = runtime.holds_for(conn, now)
        trigger = journey.trigger

        def enter(contact_id: int, entry_key: str, context: dict[str, str]) -> int:
            result = runtime.entries.enter(
                conn, journey, version, contact_id,
                entry_key=f"{entry_key}:{contact_id}", trigger=context, now=now,
                holds=holds(contact_id),
            )  # fmt: skip
            return result.status != "refused"

        if isinstance(trigger, DateTrigger):
            for contact_id, fire in dates_due(runtime, conn, trigger, since, now):
                entered += enter(
                    contact_id,
                    f"date:{fire.date().isoformat()}",
                    {"date": trigger.date, "at": fire.isoformat()},
                )
        elif isinstance(trigger, ScheduleTrigger):
            cron = localtime.Cron(trigger.schedule, trigger.timezone)
            fire = cron.next_after(since)
            fires = 0
            while fire <= now and fires < MAX_FIRES:
                context = {"schedule": trigger.schedule, "at": fire.isoformat()}
                for contact_id in audience(runtime, conn, trigger, now):
                    entered += enter(contact_id, f"schedule:{fire.isoformat()}", context)
                fires += 1
                since = fire
                fire = cron.next_after(fire)
            now = since if fires == MAX_FIRES else now
        mark_scanned(conn, journey.key, now)
    return entered


def audience(
    runtime: JourneyRuntime, conn: Connection, trigger: ScheduleTrigger, now: datetime
) -> list[int]:
    registry = runtime.segments.registry(conn)
    env = registry.env(now, runtime.segments.computed_state(conn))
    members = SqlCompiler(env, runtime.db.backend).members(trigger.audience).subquery()
    return [int(i) for i in conn.execute(select(members.c.id).order_by(members.c.id)).scalars()]


def dates_due(
    runtime: JourneyRuntime,
    conn: Connection,
    trigger: DateTrigger,
    since: datetime,
    now: datetime,
) -> list[tuple[int, datetime]]:
    """(contact, fire time) for each contact whose date fires in (since, now]."""
    c = t.contacts.c
    value = c.traits[tuple(trigger.date.split("."))].as_string()
    # Zones are at most 14 hours from UTC: a local date within a day of the UTC dates.
    first = since.date() - timedelta(days=1) - timedelta(days=trigger.offset_days)
    last = now.date() + timedelta(days=1) - timedelta(days=trigger.offset_days)
    text = cast(value, String)
    if trigger.yearly:
        days = _month_days(first, last)
        prefilter = func.substr(text, 6, 5).in_(days) if days is not None else text.is_not(None)
    else:
        prefilter = func.substr(text, 1, 10).between(first.isoformat(), last.isoformat())
    rows = conn.execute(
        select(c.id, c.timezone, value.label("value")).where(c.merged_into.is_(None), prefilter)
    ).all()
    at = trigger.clock
    out: list[tuple[int, datetime]] = []
    for row in rows:
        day = localtime.parse_date_value(row.value)
        if day is None:
            continue
        tz = localtime.zone(row.timezone, runtime.options.default_timezone)
        if trigger.yearly:
            fire = localtime.next_anniversary(
                day.month, day.day, at, tz, since, offset_days=trigger.offset_days
            )
        else:
            fire = localtime.date_at(day, trigger.offset_days, at, tz)
        if since < fire <= now:
            out.append((row.id, fire))
    return out


def _month_days(first: date, last: date) -> list[str] | None:
    """The MM-DD of every day from `first` to `last`; None when that is every day."""
    if (last - first).days >= 366:
        return None
    days = []
    day = first
    while day <= last:
        days.append(day.strftime("%m-%d"))
        day += timedelta(days=1)
    if "02-28" in days:
        days.append("02-29")  # a Feb 29 date falls on Feb 28 in other years
    return days
