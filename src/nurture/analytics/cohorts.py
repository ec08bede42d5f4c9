"""Cohort retention: contacts grouped by the week or month of their first "cohort" event,
and the share of each cohort active in every later period (docs/analytics/cohorts.md).

Weeks (ISO: Monday to Monday) and months are calendar periods in the report's time zone,
so their length in hours varies with daylight saving time. Their boundaries are computed
here, in Python, as UTC instants; the SQL only places each time between two of them (a
binary search written as nested CASE expressions), which reads the same on SQLite and
PostgreSQL and needs no time zone support in the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field
from sqlalchemy import ColumnElement, Select, case, func, literal, select, union_all

from nurture.analytics.event_queries import (
    Moment,
    QuestionModel,
    StepType,
    Zone,
    check_segments,
    event_where,
    local_midnight,
    members_of,
    parse_question,
)
from nurture.analytics.report import Chart, Column, Report, Table
from nurture.conditions.compile import SqlCompiler
from nurture.conditions.env import Env
from nurture.conditions.model import PropertyFilter
from nurture.conditions.sqlvalues import Backend
from nurture.errors import ValidationError
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.types import to_microseconds

Every = Literal["week", "month"]
DEFAULT_PERIODS = 12
ACTIVITY: tuple[StepType, ...] = ("track", "page", "screen")


class EventMatch(QuestionModel):
    """Which events count: a name (`*`: any), a type (none: track, page or screen: what a
    contact does, not identify/group/alias calls nor Nurture's own system events), filters."""

    event: str = Field("*", min_length=1, max_length=255)
    type: StepType | None = None
    where: list[PropertyFilter] = Field(default_factory=list)

    @property
    def types(self) -> tuple[StepType, ...]:
        return ACTIVITY if self.type is None else (self.type,)

    @property
    def label(self) -> str:
        name = "any event" if self.event == "*" else self.event
        return name if self.type is None else f"{self.type}: {name}"


class CohortQuery(QuestionModel):
    """What a cohort report is asked (the query of `GET /api/reports/cohorts`)."""

    cohort: EventMatch = EventMatch()
    active: EventMatch = EventMatch()
    every: Every = "week"
    periods: int = Field(DEFAULT_PERIODS, ge=1, le=120)
    from_: Moment | None = Field(None, alias="from")
    to: Moment | None = None
    tz: Zone = "UTC"
    segment: str | None = Field(None, min_length=1)


def parse_cohorts(data: Any) -> CohortQuery:
    """Validate a cohort question; raises ValidationError naming the bad field."""
    return parse_question(CohortQuery, data)


# -- the calendar --------------------------------------------------------------------------


def period_start(day: date, every: Every) -> date:
    """The first day of the week (Monday) or month that holds `day`."""
    if every == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_start(day: date, every: Every) -> date:
    if every == "week":
        return day + timedelta(days=7)
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def local_day(value: date | datetime, zone: ZoneInfo) -> date:
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=zone)
        return aware.astimezone(zone).date()
    return value


def calendar(first: date, now: datetime, every: Every, zone: ZoneInfo) -> list[date]:
    """Period starts from `first` through the one after the period holding `now`."""
    days = [first]
    last = period_start(now.astimezone(zone).date(), every)
    while days[-1] <= last:
        days.append(next_start(days[-1], every))
    return days


def bucket(ts: ColumnElement[Any], bounds: Sequence[ColumnElement[Any]], lo: int, hi: int) -> Any:
    """The index i in [lo, hi) with bounds[i] <= ts < bounds[i + 1], for ts known to be in
    [bounds[lo], bounds[hi]): a binary search, log2(hi - lo) comparisons a row."""
    if hi - lo == 1:
        return literal(lo)
    mid = (lo + hi) // 2
    return case((ts < bounds[mid], bucket(ts, bounds, lo, mid)), else_=bucket(ts, bounds, mid, hi))


# -- the query -------------------------------------------------------------------------------


def cohort_sql(
    query: CohortQuery, b: Backend, now: datetime, bounds_us: list[int], cohorts: int
) -> Select[Any]:
    """Rows (cohort index, period, contacts): period -1 holds the cohort's size."""
    compiler = SqlCompiler(Env(now=now), b.name)
    now_at = b.at(to_microseconds(now))
    bounds = [b.at(us) for us in bounds_us]
    ev = t.events

    first = ev.alias("c")
    ts = b.ts(first.c.timestamp)
    where = event_where(compiler, first, query.cohort.event, query.cohort.types, query.cohort.where)
    where.append(ts <= now_at)
    if query.segment is not None:
        where.append(first.c.contact_id.in_(members_of(query.segment)))
    firsts = (
        select(first.c.contact_id, func.min(ts).label("at"))
        .where(*where)
        .group_by(first.c.contact_id)
        .having(func.min(ts) >= bounds[0], func.min(ts) < bounds[cohorts])
        .cte("firsts")
    )
    members = (
        select(firsts.c.contact_id, bucket(firsts.c.at, bounds, 0, cohorts).label("k"))
        .cte("members")
        .prefix_with("MATERIALIZED")
    )
    a = ev.alias("a")
    ats = b.ts(a.c.timestamp)
    last = len(bounds) - 1
    timed = ats
    if b.sqlite and query.active.event != "*":
        # Without statistics SQLite seeks (contact_id, timestamp) for the time range and
        # reads every event row of every member to test its name (10x slower than
        # seeking the name's index entries); `+ 0` takes the time out of its choice.
        timed = ats + 0
    act_where = event_where(compiler, a, query.active.event, query.active.types, query.active.where)
    act_where += [timed >= bounds[0], timed < bounds[last], timed <= now_at]
    activity_rows = (
        select(members.c.k, bucket(ats, bounds, 0, last).label("p"), members.c.contact_id)
        .select_from(members.join(a, a.c.contact_id == members.c.contact_id))
        .where(*act_where)
        .distinct()
    )
    activity = activity_rows.subquery("activity")
    period = (activity.c.p - activity.c.k).label("n")
    active = (
        select(activity.c.k, period, func.count().label("contacts"))
        .where(activity.c.p >= activity.c.k)
        .group_by(activity.c.k, activity.c.p)
    )
    sizes = select(members.c.k, literal(-1).label("n"), func.count()).group_by(members.c.k)
    return union_all(sizes, active)  # type: ignore[return-value]


def cohorts(db: Database, data: Any, now: datetime) -> Report:
    """The cohort retention report for a question (a CohortQuery or its data)."""
    query = parse_cohorts(data)
    if query.segment is not None:
        check_segments(db, [query.segment], "segment")
    return run_cohorts(db, query, now)


def run_cohorts(db: Database, query: CohortQuery, now: datetime) -> Report:
    """The report, without checking that the segment it names exists."""
    zone = ZoneInfo(query.tz)
    every = query.every
    last_day = local_day(query.to, zone) if query.to is not None else now.astimezone(zone).date()
    last_cohort = period_start(last_day, every)
    if query.from_ is not None:
        first_cohort = period_start(local_day(query.from_, zone), every)
    else:
        first_cohort = last_cohort
        for _ in range(query.periods):
            first_cohort = period_start(first_cohort - timedelta(days=1), every)
    if first_cohort > last_cohort:
        raise ValidationError("`from` must not be after `to`", path="from")
    starts = calendar(first_cohort, now, every, zone)
    while starts[-1] <= last_cohort:  # `to` may lie after now
        starts.append(next_start(starts[-1], every))
    n_cohorts = next(i for i, day in enumerate(starts) if day > last_cohort)
    instants = [local_midnight(day, zone) for day in starts]
    bounds_us = [to_microseconds(x) for x in instants]
    b = Backend(db.backend)
    sql = cohort_sql(query, b, now, bounds_us, n_cohorts)
    with db.read() as conn:
        counts = {(int(k), int(n)): int(c) for k, n, c in conn.execute(sql)}
    return build_report(query, starts, instants, n_cohorts, counts, now)


def build_report(
    query: CohortQuery,
    starts: list[date],
    instants: list[datetime],
    n_cohorts: int,
    counts: dict[tuple[int, int], int],
    now: datetime,
) -> Report:
    """The report from the counts: {(cohort, period): contacts}, period -1 = size."""
    unit = query.every
    periods = query.periods
    rows = []
    eligible = [0] * (periods + 1)
    active_sum = [0] * (periods + 1)
    for k in range(n_cohorts):
        size = counts.get((k, -1), 0)
        row: dict[str, Any] = {"cohort": starts[k], "size": size}
        for n in range(periods + 1):
            started = k + n < len(instants) and instants[k + n] <= now
            value = counts.get((k, n), 0) if started else None
            row[f"p{n}"] = value
            row[f"r{n}"] = value / size if value is not None and size else None
            if value is not None:
                eligible[n] += size
                active_sum[n] += value
        rows.append(row)
    columns = [Column("cohort", unit.capitalize(), "date"), Column("size", "Contacts", "int")]
    for n in range(periods + 1):
        columns.append(Column(f"p{n}", f"{unit} {n}", "int"))
    for n in range(periods + 1):
        columns.append(Column(f"r{n}", f"{unit} {n} %", "percent"))
    overall = [
        {
            "period": n,
            "cohort_contacts": eligible[n],
            "active": active_sum[n],
            "retention": active_sum[n] / eligible[n] if eligible[n] else None,
        }
        for n in range(periods + 1)
    ]
    total = sum(r["size"] for r in rows)
    return Report(
        kind="cohorts",
        title=f"Retention by {unit}: {query.active.label} after {query.cohort.label}",
        params={
            **query.model_dump(by_alias=True, exclude_none=True, mode="json"),
            "from": starts[0],
            "to": starts[n_cohorts] - timedelta(days=1),
        },
        summary={
            "cohorts": n_cohorts,
            "contacts": total,
            f"retention_{unit}_1": overall[1]["retention"] if periods >= 1 else None,
        },
        tables=[
            Table("cohorts", f"Cohorts by {unit}", columns, rows),
            Table(
                "periods",
                f"All cohorts together, by {unit}",
                [
                    Column("period", unit.capitalize(), "int"),
                    Column("cohort_contacts", "Contacts in cohorts that reached it", "int"),
                    Column("active", "Active", "int"),
                    Column("retention", "Retention", "percent"),
                ],
                overall,
            ),
        ],
        charts=[
            Chart(
                "heatmap",
                "cohorts",
                "cohort",
                tuple(f"r{n}" for n in range(periods + 1)),
                f"Share of each cohort active, {unit} by {unit}",
                "share active",
            )
        ],
        notes=[
            f"A contact's cohort is the {unit} (in {query.tz}) of their first "
            f"{query.cohort.label}; active in {unit} N = at least one {query.active.label} "
            f"in the N-th {unit} after the cohort's start ({unit} 0 is the cohort's own).",
            f"Periods not started yet are empty; the current {unit} counts so far.",
        ],
    )
