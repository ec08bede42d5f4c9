"""The queries behind journey and message metrics: per-table aggregates, no big joins.

SQLite aggregates fast only when it need not sort: a GROUP BY whose columns lead an index
streams through it, while any other one sorts every row first (measured on 7M step runs:
1.1 s against 14 s). So each query here either groups by the leading columns of a covering
index (migration 0012), or, for days, runs once per local day (and version) over an index
range with plain sums. PostgreSQL hash-aggregates, so there one query groups by the local
day (`timezone(zone, t)`). Feedback is folded to one row per message (streamed in its
outbox_id index order) before it is joined to its message by primary key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import pairwise
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Connection,
    Date,
    Integer,
    Select,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.sql.elements import ColumnElement

from nurture.conditions.computed import DAY_US
from nurture.messages.feedback import by_machine
from nurture.store import tables as t
from nurture.store.hints import unindexed
from nurture.store.types import to_microseconds

# Statuses of a message whose send was recorded (messages/feedback.py RECORDED).
RECORDED = ("sent", "delivered", "bounced", "complained", "failed")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# Opens and clicks of a message's feedback: by people, and by machines (journey_metrics.py).
ENGAGED = (
    "opened",
    "opens",
    "machine_opened",
    "machine_opens",
    "clicked",
    "clicks",
    "machine_clicked",
    "machine_clicks",
)
MESSAGE_KEYS = ("journey_key", "version", "step", "template", "variant", "channel", "status")


@dataclass(frozen=True, slots=True)
class Scope:
    """What a query reads: one journey (or all), a version, a half-open time range."""

    journey: str | None
    version: int | None
    start: datetime | None
    end: datetime | None
    template: str | None = None  # messages only

    def within(
        self, column: Any, lo: datetime | None = None, hi: datetime | None = None
    ) -> list[ColumnElement[bool]]:
        """`column` in [lo, hi) (default: the scope's range)."""
        lo = lo if lo is not None else self.start
        hi = hi if hi is not None else self.end
        out: list[ColumnElement[bool]] = [column.is_not(None)]
        if lo is not None:
            out.append(column >= lo)
        if hi is not None:
            out.append(column < hi)
        return out


@dataclass(frozen=True, slots=True)
class Day:
    """One local day: its date and the UTC moments it starts and ends."""

    day: date
    start: datetime
    end: datetime


def prepare(conn: Connection) -> None:
    """Set up a read transaction for these queries. PostgreSQL: no JIT (it compiled for 2 s
    to save less), and memory enough to hash-aggregate instead of sorting on disk."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL jit = off")
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")


def local_days(
    first: date,
    last: date,
    zone: ZoneInfo,
    lo: datetime | None = None,
    hi: datetime | None = None,
) -> list[Day]:
    """The local days from `first` to `last`, each with its real length (23 or 25 hours
    on a daylight saving change), the first and last cut to [lo, hi) when given (a range
    from 10:00 counts its first day from 10:00)."""
    out = []
    day = first
    while day <= last:
        nxt = day + timedelta(days=1)
        start, end = datetime.combine(day, time(), zone), datetime.combine(nxt, time(), zone)
        if lo is not None:
            start = max(start, lo)
        if hi is not None:
            end = min(end, hi)
        if start < end:
            out.append(Day(day, start, end))
        day = nxt
    return out


def bounds(
    conn: Connection, scope: Scope, versions: list[int], journeys: list[str | None]
) -> tuple[datetime | None, datetime | None]:
    """The first and last moments the report's rows have (for an open range). One lone
    min or max per query and index prefix: SQLite reads each off its index."""
    n, o = t.enrolments.c, t.outbox.c
    wheres: list[tuple[Any, list[ColumnElement[bool]]]] = []
    for version in versions if scope.journey is not None else []:
        at = [n.journey_key == scope.journey, n.version == version]
        wheres += [(n.entered_at, at), (n.converted_at, at)]
    wheres += [(o.sent_at, _journey(o, scope, journey)) for journey in journeys]
    found: list[datetime] = []
    for col, where in wheres:
        for edge in (func.min(col), func.max(col)):
            value = conn.execute(select(edge).where(*where, col.is_not(None))).scalar()
            if value is not None:
                found.append(value)
    if not found:
        return None, None
    return min(found), max(found)


def _journey(
    c: Any, scope: Scope, journey: Any = ..., column: Any = None
) -> list[ColumnElement[bool]]:
    """The scope's journey (or `journey`; None: messages outside journeys) and version
    (and template, of messages). `column`: the journey key column as written (default
    `c.journey_key`)."""
    out: list[ColumnElement[bool]] = []
    key = scope.journey if journey is ... else journey
    column = c.journey_key if column is None else column
    if key is not None:
        out.append(column == key)
    elif journey is None:  # messages sent outside journeys
        out.append(column.is_(None))
    if scope.version is not None:
        out.append(c.version == scope.version)
    if scope.template is not None and c is t.outbox.c:
        out.append(c.template == scope.template)
    return out


def _per_day(
    conn: Connection,
    days: list[Day],
    zone: ZoneInfo,
    column: Any,
    build: Callable[[datetime, datetime], Select[Any]],
) -> list[dict[str, Any]]:
    """The rows `build(lo, hi)` selects, per local day: one query grouped by day on
    PostgreSQL, one query per day on SQLite (an index range each)."""
    if not days:
        return []
    if conn.dialect.name == "postgresql":
        d = cast(func.timezone(zone.key, column), Date)
        query = build(days[0].start, days[-1].end).add_columns(d.label("day")).group_by(d)
        return [dict(r._mapping) for r in conn.execute(query)]
    out = []
    for day in days:
        out += [{**r._mapping, "day": day.day} for r in conn.execute(build(day.start, day.end))]
    return out


def count_if(condition: ColumnElement[bool], value: Any = 1) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, value), else_=0)), 0)


# -- enrolments -----------------------------------------------------------------------------
def entered(
    conn: Connection, scope: Scope, days: list[Day], zone: ZoneInfo, versions: list[int]
) -> list[dict[str, Any]]:
    """{day, version, n, control}: enrolments entered per day and version."""
    n = t.enrolments.c
    out = []
    for version in versions:

        def build(lo: datetime, hi: datetime, version: int = version) -> Select[Any]:
            return select(
                func.count().label("n"),
                count_if(n.control == True).label("control"),  # noqa: E712
            ).where(
                n.journey_key == scope.journey,
                n.version == version,
                *scope.within(n.entered_at, lo, hi),
            )

        out += [{**r, "version": version} for r in _per_day(conn, days, zone, n.entered_at, build)]
    return out


def treated_revenue() -> ColumnElement[Any]:
    """SQL: the revenue of the treated (not holdout) enrolments among those summed."""
    n = t.enrolments.c
    treated = n.control == False  # noqa: E712 - SQL
    return func.coalesce(func.sum(case((treated, n.revenue), else_=None)), 0)


def converted(
    conn: Connection, scope: Scope, days: list[Day], zone: ZoneInfo, versions: list[int]
) -> list[dict[str, Any]]:
    """{day, version, n, control, revenue}: enrolments converted per day and version;
    revenue is the treated enrolments' only."""
    n = t.enrolments.c
    out = []
    for version in versions:

        def build(lo: datetime, hi: datetime, version: int = version) -> Select[Any]:
            return select(
                func.count().label("n"),
                count_if(n.control == True).label("control"),  # noqa: E712
                treated_revenue().label("revenue"),
            ).where(
                n.journey_key == scope.journey,
                n.version == version,
                *scope.within(n.converted_at, lo, hi),
            )

        out += [
            {**r, "version": version} for r in _per_day(conn, days, zone, n.converted_at, build)
        ]
    return out


def ended(conn: Connection, scope: Scope) -> Sequence[Any]:
    """(status, end_reason, step, version, control, n) of enrolments that ended in the
    range, grouped in the order of their index (no sort)."""
    n = t.enrolments.c
    keys = (n.status, n.end_reason, n.step, n.version, n.control)
    query = (
        select(*keys, func.count().label("n"))
        .where(*_journey(n, scope), *scope.within(n.ended_at))
        .group_by(*keys)
    )
    return conn.execute(query).all()


def waiting(conn: Connection, scope: Scope) -> Sequence[Any]:
    """(version, step, control, count) of enrolments active now, by the step they are at."""
    n = t.enrolments.c
    # Through the (journey_key, status) index: ix_enrolments_ended holds ended ones only,
    # so that a step moving an enrolment on adds no entry to it (migration 0015).
    # Grouped by step first: grouped by version first, SQLite reads the journey's every
    # enrolment through ix_enrolments_entered, which leads with the version (measured on
    # 1M enrolments: 150 ms against 22 ms).
    query = (
        select(n.version, n.step, n.control, func.count().label("n"))
        .where(*_journey(n, scope), n.status == "active")
        .group_by(n.step, n.version, n.control)
    )
    return conn.execute(query).all()


def step_runs(conn: Connection, scope: Scope, steps: list[tuple[int, str]]) -> list[Any]:
    """(version, step, runs) of steps executed in the range: for a range, one count per
    known step and version over its (journey_key, step, executed_at, version) index
    range; for all time, one pass over that index, grouped by step in its order with a
    count per known version (a GROUP BY step and version would sort every run on SQLite)."""
    s = t.journey_steps.c
    if scope.start is None and scope.end is None:
        versions = sorted({version for version, _ in steps})
        counts = [count_if(s.version == v).label(f"v{i}") for i, v in enumerate(versions)]
        others = count_if(s.version.not_in(versions)) if versions else func.count()
        by_step = (
            select(s.step, others.label("others"), *counts)
            .where(*_journey(s, scope), *scope.within(s.executed_at))
            .group_by(s.step)
        )
        rows = conn.execute(by_step).all()
        if any(r.others for r in rows):  # runs of a version without a definition
            query = (
                select(s.version, s.step, func.count().label("n"))
                .where(*_journey(s, scope), *scope.within(s.executed_at))
                .group_by(s.version, s.step)
            )
            return list(conn.execute(query).all())
        return [
            SimpleNamespace(version=v, step=r.step, n=getattr(r, f"v{i}"))
            for r in rows
            for i, v in enumerate(versions)
            if getattr(r, f"v{i}")
        ]
    out = []
    for version, step in steps:
        count = select(func.count()).where(
            s.journey_key == scope.journey,
            s.version == version,
            s.step == step,
            *scope.within(s.executed_at),
        )
        out.append(SimpleNamespace(version=version, step=step, n=conn.execute(count).scalar()))
    return out


# -- messages -------------------------------------------------------------------------------
def messages(conn: Connection, scope: Scope, journeys: list[str | None]) -> list[Any]:
    """(message keys, sent, unsent, lo, hi) per journey, version, step, template, variant,
    channel and status: `sent` in the range (status recorded), `unsent` created in the
    range and not sent (queued, skipped, failed; a message being sent counts by the moment
    it was claimed); lo and hi bound the ids of the sent ones. Per journey, the messages
    sent and the ones not sent apart, each through its partial index: for all time, the
    sent ones in the order of the message index (no sort); for a range, a range of the
    (journey_key, sent_at) index."""
    o = t.outbox.c
    keys = [getattr(o, k) for k in MESSAGE_KEYS]
    found: dict[tuple[Any, ...], SimpleNamespace] = {}

    def add(query: Select[Any]) -> None:
        for r in conn.execute(query):
            key = tuple(getattr(r, k) for k in MESSAGE_KEYS)
            row = found.setdefault(
                key,
                SimpleNamespace(
                    **dict(zip(MESSAGE_KEYS, key, strict=True)), sent=0, unsent=0, lo=None, hi=None
                ),
            )
            if r.status in RECORDED and r.sent_at_set:
                row.sent, row.lo, row.hi = row.sent + r.n, r.lo, r.hi
            else:  # not sent, or being sent (counted by when it was claimed)
                row.unsent += r.n

    for journey in journeys:
        where = _journey(o, scope, journey)
        found_sent = literal(True).label("sent_at_set")
        add(
            select(
                *keys,
                found_sent,
                func.count().label("n"),
                func.min(o.id).label("lo"),
                func.max(o.id).label("hi"),
            )
            .where(*where, *scope.within(o.sent_at), o.status.in_((*RECORDED, "sending")))
            .group_by(*keys)
        )
        # Not sent: through the partial index of those (ix_outbox_unsent). On SQLite the
        # journey is written unindexed and left out of the GROUP BY (it is one value
        # here), or the planner, with statistics or without, may read every message of the
        # journey through (journey_key, step) (measured on 3M messages: 1.5-1.8 s against
        # 0.02 s for 7 days, 0.4 s for all time).
        unsent = _journey(o, scope, journey, unindexed(conn.dialect.name, o.journey_key))
        not_sent = literal(False).label("sent_at_set")
        add(
            select(
                func.min(o.journey_key).label("journey_key"),
                *keys[1:],
                not_sent,
                func.count().label("n"),
                literal(None).label("lo"),
                literal(None).label("hi"),
            )
            .where(*unsent, o.sent_at.is_(None), *scope.within(o.created_at))
            .group_by(*keys[1:])
        )
    return list(found.values())


def message_days(
    conn: Connection, scope: Scope, days: list[Day], zone: ZoneInfo, journeys: list[str | None]
) -> list[dict[str, Any]]:
    """{day, sent, delivered, bounced, complained, lo, hi} of the messages sent each day,
    by status alone (delivered: status delivered or complained). On SQLite one query per
    day and journey (`journeys`: the scope's, or every key and None for messages outside
    journeys), so that each reads a range of the (journey_key, sent_at) index."""
    o = t.outbox.c
    out: list[dict[str, Any]] = []
    loops: list[Any] = journeys if conn.dialect.name == "sqlite" else [...]
    for journey in loops:

        def build(lo: datetime, hi: datetime, journey: Any = journey) -> Select[Any]:
            return select(
                func.count().label("sent"),
                count_if(o.status.in_(("delivered", "complained"))).label("delivered"),
                count_if(o.status == "bounced").label("bounced"),
                count_if(o.status == "complained").label("complained"),
                func.min(o.id).label("lo"),
                func.max(o.id).label("hi"),
            ).where(
                *_journey(o, scope, journey),
                *scope.within(o.sent_at, lo, hi),
                o.status.in_(RECORDED),
            )

        out += _per_day(conn, days, zone, o.sent_at, build)
    return out


# Feedback that a message's status does not already say. Delivery reports are left out:
# once applied, a report has moved its message to `delivered` (feedback.py), so the status
# says it; reports still waiting to be applied are counted by `unapplied_deliveries`.
# Leaving them out spares two rows in three of the fold below.
ENGAGEMENT = ("opened", "clicked", "unsubscribed", "complained")


def folded(lo: int, hi: int, *, by_provider_id: bool, ids: Select[Any] | None = None) -> Any:
    """Feedback folded to one row per message with an id in [lo, hi] (and in `ids`, a
    query of outbox ids, when given): its human and machine opens and clicks, whether it
    has an unsubscribe and a complaint."""
    f, o = t.message_feedback.c, t.outbox.c
    among: list[ColumnElement[bool]] = [] if ids is None else [f.outbox_id.in_(ids)]
    if by_provider_id:
        linked = (
            select(o.id.label("mid"), f.type, f.payload)
            .join(t.message_feedback, f.provider_id == o.provider_id)
            .where(
                f.outbox_id.is_(None),
                f.provider_id.is_not(None),
                f.type.in_(ENGAGEMENT),
                o.id.between(lo, hi),
                *([] if ids is None else [o.id.in_(ids)]),
            )
        )
        direct = select(f.outbox_id.label("mid"), f.type, f.payload).where(
            f.outbox_id.between(lo, hi), f.type.in_(ENGAGEMENT), *among
        )
        rows = direct.union_all(linked).subquery()
        mid, kind, payload = rows.c.mid, rows.c.type, rows.c.payload
        source: Any = rows
        where: list[ColumnElement[bool]] = []
    else:
        mid, kind, payload = f.outbox_id, f.type, f.payload
        source = t.message_feedback
        where = [f.outbox_id.between(lo, hi), f.type.in_(ENGAGEMENT), *among]
    # Read the payload of opens and clicks only (a CASE stops there; AND would not): the
    # other rows are read from the (outbox_id, type) index alone.
    is_machine = by_machine(payload)
    opened = case((kind == "opened", case((is_machine, 2), else_=1)), else_=0)
    clicked = case((kind == "clicked", case((is_machine, 2), else_=1)), else_=0)
    return (
        select(
            mid.label("mid"),
            func.sum(_flag(opened == 1)).label("oh"),
            func.sum(_flag(opened == 2)).label("om"),
            func.sum(_flag(clicked == 1)).label("ch"),
            func.sum(_flag(clicked == 2)).label("cm"),
            func.max(_flag(kind == "unsubscribed")).label("u"),
            func.max(_flag(kind == "complained")).label("c"),
        )
        .select_from(source)
        .where(*where)
        .group_by(mid)
        .subquery()
    )


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, 1), else_=0)


def _some(column: Any) -> ColumnElement[Any]:
    one = type_coerce(literal(1), Integer())
    return func.coalesce(func.sum(case((column > 0, one), else_=0)), 0)


def engagement(m: Any) -> list[Any]:
    return [
        _some(m.oh).label("opened"),
        func.coalesce(func.sum(m.oh), 0).label("opens"),
        _some(m.om).label("machine_opened"),
        func.coalesce(func.sum(m.om), 0).label("machine_opens"),
        _some(m.ch).label("clicked"),
        func.coalesce(func.sum(m.ch), 0).label("clicks"),
        _some(m.cm).label("machine_clicked"),
        func.coalesce(func.sum(m.cm), 0).label("machine_clicks"),
        func.coalesce(func.sum(m.u), 0).label("unsubscribed"),
    ]


def feedback_days(
    conn: Connection,
    scope: Scope,
    days: list[Day],
    zone: ZoneInfo,
    ids: dict[date, tuple[int, int]],
    *,
    by_provider_id: bool,
) -> list[dict[str, Any]]:
    """{day, message keys, opened, opens, ..., unsubscribed, complained} of the messages
    sent each day (a complaint only for a message whose status is not `complained`): one
    pass over the feedback gives both the days and the messages. `ids` bounds the outbox
    ids sent each day. `by_provider_id`: also feedback stored without an outbox id, found
    by the provider's message id (slower: only when such rows exist)."""
    o = t.outbox.c
    if not ids or not days:
        return []
    per_message = folded(
        min(i[0] for i in ids.values()),
        max(i[1] for i in ids.values()),
        by_provider_id=by_provider_id,
    )
    m = per_message.c
    keys = [getattr(o, k) for k in MESSAGE_KEYS]
    # One query, grouped by day too: only messages with feedback reach the GROUP BY (a
    # third of them), so the sort SQLite makes is cheaper than a query per day.
    day = local_day(conn, o.sent_at, zone, days[0].start, days[-1].end)
    query = (
        select(
            day.label("day"),
            *keys,
            *engagement(m),
            count_if(o.status != "complained", m.c).label("complained"),
        )
        .select_from(per_message.join(t.outbox, o.id == m.mid))
        .where(
            *_journey(o, scope),
            *scope.within(o.sent_at, days[0].start, days[-1].end),
            o.status.in_(RECORDED),
        )
        .group_by(day, *keys)
    )
    return [{**r._mapping, "day": as_date(r.day)} for r in conn.execute(query)]


def local_day(
    conn: Connection, column: Any, zone: ZoneInfo, lo: datetime, hi: datetime
) -> ColumnElement[Any]:
    """The local date (in `zone`) of a UTCDateTime column between `lo` and `hi`, as SQL
    (read it with `as_date`). PostgreSQL converts with `timezone(zone, t)`; SQLite stores
    microseconds, so the day is `(t + offset) / 86 400 000 000` with the zone's offset
    chosen by a CASE over its changes (daylight saving time) between `lo` and `hi`."""
    if conn.dialect.name == "postgresql":
        return cast(func.timezone(zone.key, column), Date)
    micros = type_coerce(column, BigInteger())
    changes = offsets(zone, lo, hi)
    whens = [
        (micros < to_microseconds(nxt), (micros + _us(off)) // DAY_US)
        for (_, off), (nxt, _) in pairwise(changes)
    ]
    last = (micros + _us(changes[-1][1])) // DAY_US
    return case(*whens, else_=last) if whens else last


def offsets(zone: ZoneInfo, lo: datetime, hi: datetime) -> list[tuple[datetime, timedelta]]:
    """The zone's UTC offset from `lo` to `hi`: (from this moment, this offset), in order."""
    out = [(lo, _offset(zone, lo))]
    at = lo
    while at < hi:
        nxt = min(at + timedelta(days=1), hi)
        if _offset(zone, nxt) != out[-1][1]:
            a, b = at, nxt  # the change is in (a, b]: find its microsecond
            while b - a > timedelta(microseconds=1):
                mid = a + (b - a) / 2
                if _offset(zone, mid) == out[-1][1]:
                    a = mid
                else:
                    b = mid
            out.append((b, _offset(zone, b)))
        at = nxt
    return out


def _offset(zone: ZoneInfo, at: datetime) -> timedelta:
    return at.astimezone(zone).utcoffset() or timedelta(0)


def _us(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def as_date(value: Any) -> date:
    """A value `local_day` produced, as a date."""
    if isinstance(value, date):
        return value
    return date.fromordinal(_EPOCH_ORDINAL + int(value))


def unapplied_deliveries(conn: Connection, scope: Scope, zone: ZoneInfo) -> list[dict[str, Any]]:
    """{day, message keys, delivered: 1} of the messages sent in the range, still `sent`,
    with a delivery report not applied yet (found by outbox id or provider id): delivered
    too, on the local day they were sent. Read through the applied_at index, where only
    feedback waiting to be applied is."""
    f, o = t.message_feedback.c, t.outbox.c
    keys = [getattr(o, k) for k in MESSAGE_KEYS]
    matches = or_(o.id == f.outbox_id, and_(f.outbox_id.is_(None), o.provider_id == f.provider_id))
    query = (
        select(o.id, *keys, o.sent_at)
        .distinct()
        .select_from(t.message_feedback.join(t.outbox, matches))
        .where(
            f.applied_at.is_(None),
            f.type == "delivered",
            o.status == "sent",
            *_journey(o, scope),
            *scope.within(o.sent_at),
        )
    )
    return [
        {**r._mapping, "day": r.sent_at.astimezone(zone).date(), "delivered": 1}
        for r in conn.execute(query)
    ]


def has_unlinked_feedback(conn: Connection) -> bool:
    """Whether any feedback was stored without an outbox id but with a provider id."""
    f = t.message_feedback.c
    query = (
        select(f.id)
        .where(f.outbox_id.is_(None), f.provider_id.is_not(None), f.type != "replied")
        .limit(1)
    )
    return conn.execute(query).first() is not None


def journeys_with_messages(conn: Connection) -> list[str | None]:
    """Every journey key, and None (messages sent outside journeys)."""
    keys = conn.execute(select(t.journeys.c.key).order_by(t.journeys.c.key)).scalars()
    return [*keys, None]
