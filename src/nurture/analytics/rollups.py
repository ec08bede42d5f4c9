"""Rollups of the journey report: its counts per journey and 15-minute bucket, kept exact.

A journey of a million enrolments has millions of rows to count; the report must answer in
a second. So the counts are kept per journey and 15-minute bucket of UTC time in
`metric_rollups`, with their sums per hour and per UTC day, and a report adds up a few
rows per day instead of the rows themselves. Every time zone's offset is a multiple of
15 minutes, so every local day is a whole number of buckets.

Exactness rests on marks, not on hope. Triggers (migration 0013) mark, in the writing
transaction, each bucket whose rows an INSERT, UPDATE or DELETE changes, whatever code
wrote it. A report reads, in one snapshot, the stored rollups and the marks, and counts
the marked buckets from the rows themselves: the answer equals a recount at that snapshot.
`refresh` (a background loop in `nurture worker` and `nurture serve`, which leaves the
bucket being written to the reports) recomputes marked buckets, stores them and deletes
exactly the marks it saw; on PostgreSQL a mark carries
its transaction id, so a mark of a transaction the refresh could not see survives.

A range that does not fall on bucket boundaries, or too many marked buckets (a database
just migrated, a refresh that has not run), is counted from the rows: `collect` returns
None and the caller uses the exact queries.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Connection,
    and_,
    delete,
    func,
    literal,
    literal_column,
    select,
    text,
    tuple_,
    type_coerce,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from nurture.analytics import journey_queries as q
from nurture.background import BackgroundLoop
from nurture.clock import Clock
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_rows
from nurture.store.types import UTCDateTime, from_microseconds, to_microseconds

log = logging.getLogger("nurture.analytics.rollups")

BUCKET = timedelta(minutes=15)
BUCKET_US = 900_000_000
# Spans of rollup rows, in minutes: 15-minute buckets, and their sums per hour and UTC day.
QUARTER, HOUR, DAY = 15, 60, 1440
_MINUTE_US = 60_000_000
# Ends of an open range (both fall on every span's boundary).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
# Kinds counted per local day (the others over the range only).
DAILY = ("entered", "converted", "message")
# Marked buckets a report counts from the rows before it gives up on the rollups.
MOST_MARKED = 192
# Buckets one refresh transaction recomputes: on SQLite it holds the write lock meanwhile
# (ingest waits), about 10 ms a bucket on a million enrolments.
REFRESH_BUCKETS = {"sqlite": 24, "postgresql": 96}
_LOCK = 7263552  # PostgreSQL advisory lock: one refresh at a time per schema

DIMENSIONS = (
    "kind",
    "journey_key",
    "version",
    "step",
    "template",
    "variant",
    "channel",
    "status",
    "end_reason",
    "control",
)
MEASURES = (
    "n",
    "control_n",
    "unsent",
    "revenue",
    *q.ENGAGED,
    "unsubscribed",
    "complained",
)
FOLDED = MEASURES[4:]  # the feedback folded per message
Key = tuple[Any, ...]  # (day or None, *DIMENSIONS)


def aligned(at: datetime | None) -> bool:
    return at is None or to_microseconds(at) % BUCKET_US == 0


def bucket_of(conn: Connection, column: Any) -> ColumnElement[Any]:
    """The start of the 15-minute bucket of a UTCDateTime column, as SQL."""
    if conn.dialect.name == "postgresql":
        return func.date_bin(
            literal_column("interval '15 minutes'"),
            column,
            literal_column("timestamptz '1970-01-01 00:00:00+00'"),
        )
    micros = type_coerce(column, BigInteger())
    return micros - micros % BUCKET_US


def _moment(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return from_microseconds(int(value))


@contextmanager
def snapshot(db: Database) -> Iterator[Connection]:
    """A read transaction that sees one state of the database throughout (on PostgreSQL
    REPEATABLE READ; a SQLite read transaction does so by itself)."""
    with db.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        try:
            q.prepare(conn)
            yield conn
        finally:
            conn.rollback()


# -- counting buckets from the rows ---------------------------------------------------------
def _journey(column: Any, journey: str) -> ColumnElement[bool]:
    out: ColumnElement[bool] = column.is_(None) if journey == "" else column == journey
    return out


def _row(bucket: Any, journey: str, kind: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(DIMENSIONS)
    row |= dict.fromkeys(MEASURES, 0)
    row["revenue"] = 0.0
    row |= {"bucket": _moment(bucket), "span": QUARTER, "journey_key": journey, "kind": kind}
    row |= values
    return row


def compute(
    conn: Connection, journey: str, lo: datetime, hi: datetime, *, unlinked: bool
) -> list[dict[str, Any]]:
    """The rollup rows of one journey ('' for messages outside journeys) for the buckets
    in [lo, hi), counted from the rows, with the report's own definitions
    (journey_queries.py)."""
    return compute_runs(conn, journey, [(lo, hi)], unlinked=unlinked)


def compute_runs(
    conn: Connection, journey: str, runs: Sequence[tuple[datetime, datetime]], *, unlinked: bool
) -> list[dict[str, Any]]:
    """`compute` for several disjoint ranges of buckets at once (`runs_of`: the marked
    buckets of a journey). Each query reads an index range per range: per version or step
    where the index leads with it, so that a bucket costs milliseconds; the ranges' bounds
    are a small table joined to the rows, so that 48 scattered buckets cost one query of
    each kind, not 48 (on PostgreSQL a query costs ~0.25 ms before it reads anything)."""
    if not runs:
        return []
    with _serial(conn, len(runs) > 1):
        return _compute(conn, journey, _Ranges(runs), unlinked=unlinked)


@contextmanager
def _serial(conn: Connection, serial: bool) -> Iterator[None]:
    """On PostgreSQL, no parallel workers for the queries of the block (then the setting
    as it was). PostgreSQL cannot see the bounds of the ranges a query is joined to: it
    expects a third of the rows per range, plans parallel workers, and their start costs
    ~16 ms a query where the rows take 3 ms (measured: 48 ranges of step runs)."""
    if not serial or conn.dialect.name != "postgresql":
        yield
        return
    name = "max_parallel_workers_per_gather"
    before = conn.exec_driver_sql(f"SELECT current_setting('{name}')").scalar()
    conn.exec_driver_sql(f"SELECT set_config('{name}', '0', true)")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"SELECT set_config('{name}', %(v)s, true)", {"v": before})


def _compute(
    conn: Connection, journey: str, ranges: _Ranges, *, unlinked: bool
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if journey:
        out += _enrolment_rows(conn, journey, ranges)
        s = t.journey_steps.c
        for step in distinct(conn, s.step, s.journey_key == journey):
            b = bucket_of(conn, s.executed_at)
            counted = (
                select(b.label("b"), s.version, func.count().label("n"))
                .select_from(ranges.join(t.journey_steps, s.executed_at))
                .where(s.journey_key == journey, s.step == step, *ranges.where(s.executed_at))
                .group_by(b, s.version)
            )
            out += [
                _row(r.b, journey, "run", version=r.version, step=step, n=r.n)
                for r in conn.execute(counted)
            ]
    out += _message_rows(conn, journey, ranges, unlinked=unlinked)
    return out


class _Ranges:
    """Half-open ranges of time as a FROM item: the rows of a table in any of them are
    the table joined to the ranges on its time column (an index range per range). One
    range is written as plain conditions."""

    def __init__(self, runs: Sequence[tuple[datetime, datetime]]) -> None:
        self.runs = list(runs)
        # A UNION ALL of one-row SELECTs: SQLite cannot name the columns of a VALUES list.
        self.table = union_all(
            *(
                select(
                    literal(lo, UTCDateTime()).label("lo"), literal(hi, UTCDateTime()).label("hi")
                )
                for lo, hi in self.runs
            )
        ).subquery("ranges")

    def join(self, table: Any, at: Any) -> Any:
        """`table` restricted to the rows whose `at` falls in a range."""
        if len(self.runs) == 1:
            return table
        r = self.table.c
        return self.table.join(table, and_(at >= r.lo, at < r.hi))

    def where(self, at: Any) -> list[ColumnElement[bool]]:
        """The conditions `join` leaves to the WHERE clause: those of a single range; for
        several, `at IS NOT NULL`, which lets the planners use a partial index on it."""
        if len(self.runs) != 1:
            return [at.is_not(None)]
        lo, hi = self.runs[0]
        return [at >= lo, at < hi]


def distinct(conn: Connection, column: Any, *where: ColumnElement[bool]) -> list[Any]:
    """The distinct non-null values of an indexed column, one index seek each (a loose
    index scan: the column follows the `where` columns in an index)."""
    out: list[Any] = []
    while True:
        after = [column > out[-1]] if out else [column.is_not(None)]
        value = conn.execute(select(func.min(column)).where(*where, *after)).scalar()
        if value is None:
            return out
        out.append(value)


def _enrolment_rows(conn: Connection, journey: str, ranges: _Ranges) -> list[dict[str, Any]]:
    n = t.enrolments.c
    out = []
    control = q.count_if(n.control == True)  # noqa: E712 - SQL
    for version in distinct(conn, n.version, n.journey_key == journey):
        of = [n.journey_key == journey, n.version == version]
        b = bucket_of(conn, n.entered_at)
        entered = (
            select(b.label("b"), func.count().label("n"), control.label("c"))
            .select_from(ranges.join(t.enrolments, n.entered_at))
            .where(*of, *ranges.where(n.entered_at))
            .group_by(b)
        )
        out += [
            _row(r.b, journey, "entered", version=version, n=r.n, control_n=r.c)
            for r in conn.execute(entered)
        ]
        b = bucket_of(conn, n.converted_at)
        revenue = q.treated_revenue()
        converted = (
            select(b.label("b"), func.count().label("n"), control.label("c"), revenue.label("r"))
            .select_from(ranges.join(t.enrolments, n.converted_at))
            .where(*of, *ranges.where(n.converted_at))
            .group_by(b)
        )
        out += [
            _row(
                r.b,
                journey,
                "converted",
                version=version,
                n=r.n,
                control_n=r.c,
                revenue=float(r.r or 0),
            )
            for r in conn.execute(converted)
        ]
    b = bucket_of(conn, n.ended_at)
    keys = (n.status, n.end_reason, n.step, n.version, n.control)
    ended = (
        select(b.label("b"), *keys, func.count().label("n"))
        .select_from(ranges.join(t.enrolments, n.ended_at))
        .where(
            n.journey_key == journey,
            n.ended_at.is_not(None),  # the partial index ix_enrolments_journey_ended
            *ranges.where(n.ended_at),
        )
        .group_by(b, *keys)
    )
    out += [
        _row(
            r.b,
            journey,
            "ended",
            status=r.status,
            end_reason=r.end_reason,
            step=r.step,
            version=r.version,
            control=bool(r.control),
            n=r.n,
        )
        for r in conn.execute(ended)
    ]
    return out


MESSAGE = ("version", "step", "template", "variant", "channel", "status")


def _message_rows(
    conn: Connection, journey: str, ranges: _Ranges, *, unlinked: bool
) -> list[dict[str, Any]]:
    """Messages sent (or being sent) in the buckets, by `sent_at`, with their feedback
    folded per message; messages not sent, by `created_at`."""
    o = t.outbox.c
    keys = [getattr(o, k) for k in MESSAGE]
    out = []
    sent_in = ranges.join(t.outbox, o.sent_at)
    where = [
        _journey(o.journey_key, journey),
        *ranges.where(o.sent_at),
        o.status.in_((*q.RECORDED, "sending")),
    ]
    ids = conn.execute(
        select(func.min(o.id), func.max(o.id)).select_from(sent_in).where(*where)
    ).one()
    if ids[0] is not None:
        # The feedback of these messages only: a message sent late (held by quiet hours)
        # has an id far from those sent with it.
        these = select(o.id).select_from(sent_in).where(*where)
        folded = q.folded(ids[0], ids[1], by_provider_id=unlinked, ids=these)
        m = folded.c
        b = bucket_of(conn, o.sent_at)
        query = (
            select(
                b.label("b"),
                *keys,
                q.count_if(o.status.in_(q.RECORDED)).label("n"),
                q.count_if(o.status == "sending").label("unsent"),
                *q.engagement(m),
                q.count_if(o.status != "complained", m.c).label("complained"),
            )
            .select_from(sent_in.outerjoin(folded, m.mid == o.id))
            .where(*where)
            .group_by(b, *keys)
        )
        for r in conn.execute(query):
            values = {k: getattr(r, k) for k in (*MESSAGE, "n", "unsent")}
            if r.status in q.RECORDED:  # feedback counts for recorded sends only
                values |= {k: int(getattr(r, k) or 0) for k in FOLDED}
            out.append(_row(r.b, journey, "message", **values))
    unsent: Any
    if conn.dialect.name == "sqlite":
        # SQLite's planner, with statistics or without, may read every unsent message
        # of the journey through (journey_key, sent_at) (measured: 14-19 ms against
        # 0.2 ms a bucket); the partial index of unsent messages is named.
        pairs = " UNION ALL ".join(
            f"SELECT :lo{i} AS lo, :hi{i} AS hi" for i in range(len(ranges.runs))
        )
        params = {f"lo{i}": to_microseconds(lo) for i, (lo, _) in enumerate(ranges.runs)}
        params |= {f"hi{i}": to_microseconds(hi) for i, (_, hi) in enumerate(ranges.runs)}
        unsent = text(
            "SELECT created_at - created_at % :width AS b, version, step, template, variant,"
            f" channel, status, count(*) AS n FROM ({pairs}) AS ranges"
            " JOIN outbox INDEXED BY ix_outbox_unsent"
            " ON created_at >= ranges.lo AND created_at < ranges.hi"
            " WHERE sent_at IS NULL AND coalesce(journey_key, '') = :journey"
            " GROUP BY 1, 2, 3, 4, 5, 6, 7"
        ).bindparams(width=BUCKET_US, journey=journey, **params)
    else:
        b = bucket_of(conn, o.created_at)
        unsent = (
            select(b.label("b"), *keys, func.count().label("n"))
            .select_from(ranges.join(t.outbox, o.created_at))
            .where(
                _journey(o.journey_key, journey),
                o.sent_at.is_(None),
                *ranges.where(o.created_at),
            )
            .group_by(b, *keys)
        )
    for r in conn.execute(unsent):
        values = {k: getattr(r, k) for k in MESSAGE}
        out.append(_row(r.b, journey, "unsent", **values, unsent=r.n))
    return out


def runs_of(buckets: Sequence[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted 15-minute buckets as half-open ranges of consecutive ones."""
    return _runs(list(buckets), BUCKET)


# -- refreshing -----------------------------------------------------------------------------
def refresh(db: Database, *, most: int | None = None, before: datetime | None = None) -> int:
    """Recompute up to `most` marked buckets (default REFRESH_BUCKETS) that start before
    `before` (default: any), store them, delete the marks seen. Returns the number of
    buckets recomputed (0: nothing marked, or another refresh is running)."""
    most = most or REFRESH_BUCKETS[db.backend]
    if db.is_sqlite:
        with db.write() as conn:
            return _refresh(conn, most, before)
    with db.engine.connect() as conn:
        key = "SELECT pg_try_advisory_lock(%(k)s::int, hashtext(current_schema()))"
        got = conn.exec_driver_sql(key, {"k": _LOCK}).scalar()
        conn.commit()
        if not got:
            return 0
        try:
            rr = conn.execution_options(isolation_level="REPEATABLE READ")
            with rr.begin():
                q.prepare(rr)
                return _refresh(rr, most, before)
        finally:
            unlock = "SELECT pg_advisory_unlock(%(k)s::int, hashtext(current_schema()))"
            conn.exec_driver_sql(unlock, {"k": _LOCK})
            conn.commit()


def _refresh(conn: Connection, most: int, before: datetime | None) -> int:
    k = t.metric_marks.c
    # The oldest marked buckets first: a backlog is worked through in time order.
    first = select(k.journey_key, k.bucket).distinct().order_by(k.bucket, k.journey_key).limit(most)
    if before is not None:
        first = first.where(k.bucket < before)
    chosen = [(r.journey_key, _moment(r.bucket)) for r in conn.execute(first)]
    if not chosen:
        return 0
    marks = conn.execute(
        select(k.journey_key, k.bucket, k.tx).where(tuple_(k.journey_key, k.bucket).in_(chosen))
    ).all()
    unlinked = q.has_unlinked_feedback(conn)
    by_journey: dict[str, list[datetime]] = defaultdict(list)
    for journey, bucket in chosen:
        by_journey[journey].append(bucket)
    r = t.metric_rollups.c
    for journey, buckets in by_journey.items():
        rows = compute_runs(conn, journey, runs_of(buckets), unlinked=unlinked)
        conn.execute(
            delete(t.metric_rollups).where(
                r.journey_key == journey, r.span == QUARTER, r.bucket.in_(buckets)
            )
        )
        if rows:
            insert_rows(conn, t.metric_rollups, rows)
        hours = sorted({floor(b, HOUR) for b in buckets})
        _roll_up(conn, journey, hours, QUARTER, HOUR)
        _roll_up(conn, journey, sorted({floor(b, DAY) for b in hours}), HOUR, DAY)
    for at in range(0, len(marks), 500):
        part = [(m.journey_key, m.bucket, m.tx) for m in marks[at : at + 500]]
        conn.execute(delete(t.metric_marks).where(tuple_(k.journey_key, k.bucket, k.tx).in_(part)))
    return len(chosen)


def floor(at: datetime, span: int) -> datetime:
    """The start of the `span`-minute bucket (of UTC time) holding `at`."""
    us = to_microseconds(at)
    return from_microseconds(us - us % (span * _MINUTE_US))


def ceil(at: datetime, span: int) -> datetime:
    us = to_microseconds(at)
    return from_microseconds(-(-us // (span * _MINUTE_US)) * span * _MINUTE_US)


def _roll_up(
    conn: Connection, journey: str, starts: list[datetime], source: int, target: int
) -> None:
    """The `target`-minute rows starting at `starts`, summed again from the `source`-minute
    rows they hold."""
    r = t.metric_rollups.c
    width = timedelta(minutes=target)
    sums: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0] * len(MEASURES))
    for lo, hi in _runs(starts, width):
        query = select(t.metric_rollups).where(
            r.journey_key == journey, r.span == source, r.bucket >= lo, r.bucket < hi
        )
        for row in conn.execute(query).mappings():
            key = (floor(_moment(row["bucket"]), target), *(row[d] for d in DIMENSIONS))
            total = sums[key]
            for i, m in enumerate(MEASURES):
                total[i] += row[m]
    conn.execute(
        delete(t.metric_rollups).where(
            r.journey_key == journey, r.span == target, r.bucket.in_(starts)
        )
    )
    rows = [
        {
            "bucket": key[0],
            "span": target,
            **dict(zip(DIMENSIONS, key[1:], strict=True)),
            **dict(zip(MEASURES, values, strict=True)),
        }
        for key, values in sums.items()
        if any(values)
    ]
    if rows:
        insert_rows(conn, t.metric_rollups, rows)


def _runs(starts: list[datetime], width: timedelta) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for b in sorted(starts):
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + width)
        else:
            out.append((b, b + width))
    return out


class RollupRunner(BackgroundLoop):
    """Keeps the rollups current: refreshes marked buckets, a batch per round."""

    name = "nurture-rollups"

    def __init__(self, db: Database, clock: Clock, *, poll_seconds: float = 5.0) -> None:
        super().__init__(poll_seconds=poll_seconds, log=log)
        self.db = db
        self.clock = clock

    def round(self) -> int:
        """A refresh of the buckets that have ended: the current one is written to all
        the time, and recounting it every round would cost the writers (a report counts
        it from the rows). It counts as work (the loop goes on at once) only when it left
        a backlog."""
        current = floor(self.clock.now(), QUARTER)
        done = refresh(self.db, before=current)
        return done if done >= REFRESH_BUCKETS[self.db.backend] else 0


# -- reading --------------------------------------------------------------------------------
def collect(
    conn: Connection,
    scope: q.Scope,
    zone: ZoneInfo,
    days: list[q.Day],
    *,
    enrolments: bool,
    unlinked: bool,
) -> dict[str, Any] | None:
    """The report's counts over the scope from the rollups, in the shape of the exact
    queries' (journey_metrics._collect): None when the rollups cannot answer exactly
    (a bound off a bucket boundary) or too many buckets are marked.

    Kinds counted per local day (entered, converted, messages sent) are read day by day,
    the others over the range; each range is read as few rows as can be: 15-minute rows up
    to the first whole hour, hours up to the first whole UTC day, days, and back down. A
    local day off UTC (Kolkata's starts at 18:30 UTC) is whole hours and a few quarters."""
    edges = [scope.start, scope.end] + [d.start for d in days] + [d.end for d in days]
    if not all(aligned(e) for e in edges):
        return None
    k = t.metric_marks.c
    wanted = scope.within(k.bucket)
    if scope.journey is not None:
        wanted.append(k.journey_key == scope.journey)
    marked = [
        (r.journey_key, _moment(r.bucket))
        for r in conn.execute(select(k.journey_key, k.bucket).distinct().where(*wanted))
    ]
    if len(marked) > MOST_MARKED:
        return None
    daily = [kind for kind in DAILY if enrolments or kind == "message"]
    ranged = ["ended", "run", "unsent"] if enrolments else ["unsent"]
    reading = _Reading(conn, scope, zone, days)
    for day in days:
        for span, lo, hi in pieces(day.start, day.end):
            reading.add(span, lo, hi, daily, day.day)
    for span, lo, hi in pieces(scope.start or EARLIEST, scope.end or LATEST):
        reading.add(span, lo, hi, ranged, None)
    if marked:
        # Marked buckets: take away what is stored for them, add what the rows say now.
        r = t.metric_rollups.c
        stale = select(t.metric_rollups).where(
            r.span == QUARTER, tuple_(r.journey_key, r.bucket).in_(marked)
        )
        for row in conn.execute(stale).mappings():
            reading.correct(row, -1)
        by_journey: dict[str, list[datetime]] = defaultdict(list)
        for journey, bucket in marked:
            by_journey[journey].append(bucket)
        for journey, buckets in by_journey.items():
            for fresh in compute_runs(conn, journey, runs_of(buckets), unlinked=unlinked):
                reading.correct(fresh, 1)
    return _shape(reading.tally, conn, scope, zone)


def pieces(lo: datetime, hi: datetime) -> list[tuple[int, datetime, datetime]]:
    """[lo, hi) (on 15-minute boundaries) as (span, from, to) ranges of rollup rows:
    quarters up to the first whole hour, hours up to the first whole UTC day, whole days,
    then hours and quarters to the end."""
    out: list[tuple[int, datetime, datetime]] = []

    def emit(span: int, a: datetime, b: datetime) -> None:
        if a < b:
            out.append((span, a, b))

    first_day, last_day = ceil(lo, DAY), floor(hi, DAY)
    first_hour, last_hour = ceil(lo, HOUR), floor(hi, HOUR)
    if first_day < last_day:
        emit(QUARTER, lo, first_hour)
        emit(HOUR, first_hour, first_day)
        emit(DAY, first_day, last_day)
        emit(HOUR, last_day, last_hour)
        emit(QUARTER, last_hour, hi)
        return out
    if first_hour < last_hour:
        emit(QUARTER, lo, first_hour)
        emit(HOUR, first_hour, last_hour)
        emit(QUARTER, last_hour, hi)
    else:
        emit(QUARTER, lo, hi)
    return out


class _Reading:
    """Sums of rollup rows per (local day or None, dimensions)."""

    def __init__(self, conn: Connection, scope: q.Scope, zone: ZoneInfo, days: list[q.Day]) -> None:
        self.conn, self.scope, self.zone = conn, scope, zone
        self.days = (days[0].start, days[-1].end) if days else None
        self.tally: dict[Key, list[Any]] = defaultdict(lambda: [0] * len(MEASURES))
        r = t.metric_rollups.c
        self.where: list[ColumnElement[bool]] = []
        if scope.journey is not None:
            self.where.append(r.journey_key == scope.journey)
        if scope.version is not None:
            self.where.append(r.version == scope.version)
        if scope.template is not None:
            self.where.append(r.template == scope.template)

    def add(
        self, span: int, lo: datetime, hi: datetime, kinds: list[str], day: date | None
    ) -> None:
        """The rows of `span` minutes in [lo, hi) of these kinds, summed per dimensions
        in SQL, counted for `day`."""
        r = t.metric_rollups.c
        dims = [getattr(r, d) for d in DIMENSIONS]
        query = (
            select(*dims, *[func.sum(getattr(r, m)).label(m) for m in MEASURES])
            .where(*self.where, r.span == span, r.bucket >= lo, r.bucket < hi, r.kind.in_(kinds))
            .group_by(*dims)
        )
        for row in self.conn.execute(query):
            key = (day, *(_dim(d, getattr(row, d)) for d in DIMENSIONS))
            target = self.tally[key]
            for i, m in enumerate(MEASURES):  # PostgreSQL sums bigints as numeric
                value = getattr(row, m) or 0
                target[i] += float(value) if m == "revenue" else int(value)

    def correct(self, row: Any, sign: int) -> None:
        """Add (sign 1) or take away (-1) one 15-minute row, where the reading counted
        its bucket."""
        scope, bucket = self.scope, _moment(row["bucket"])
        if scope.journey is not None and row["journey_key"] != scope.journey:
            return
        if scope.version is not None and row["version"] != scope.version:
            return
        if scope.template is not None and row["template"] != scope.template:
            return
        if row["kind"] in DAILY:
            if self.days is None or not self.days[0] <= bucket < self.days[1]:
                return
            day: date | None = bucket.astimezone(self.zone).date()
        else:
            if (scope.start is not None and bucket < scope.start) or (
                scope.end is not None and bucket >= scope.end
            ):
                return
            day = None
        key = (day, *(_dim(d, row[d]) for d in DIMENSIONS))
        target = self.tally[key]
        for i, m in enumerate(MEASURES):
            target[i] += sign * (row[m] or 0)


def _dim(name: str, value: Any) -> Any:
    return bool(value) if name == "control" and value is not None else value


def _shape(
    tally: dict[Key, list[Any]], conn: Connection, scope: q.Scope, zone: ZoneInfo
) -> dict[str, Any]:
    """The tally in the shape of the exact queries' results."""
    entered: dict[tuple[date, int], dict[str, Any]] = {}
    converted: dict[tuple[date, int], dict[str, Any]] = {}
    ended: dict[Key, int] = defaultdict(int)
    runs: dict[tuple[int, str], int] = defaultdict(int)
    messages: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
    sent_days: dict[date, dict[str, int]] = {}
    feedback: dict[Key, dict[str, Any]] = {}
    for key, measures in tally.items():
        if not any(measures):
            continue
        day, kind = key[0], key[1]
        d = dict(zip(DIMENSIONS, key[1:], strict=True))
        v = dict(zip(MEASURES, measures, strict=True))
        if kind in ("entered", "converted"):
            target = entered if kind == "entered" else converted
            row = target.setdefault(
                (day, d["version"]),
                {"day": day, "version": d["version"], "n": 0, "control": 0, "revenue": 0.0},
            )
            row["n"] += v["n"]
            row["control"] += v["control_n"]
            row["revenue"] += v["revenue"]
        elif kind == "ended":
            ended[(d["status"], d["end_reason"], d["step"], d["version"], d["control"])] += v["n"]
        elif kind == "run":
            runs[(d["version"], d["step"])] += v["n"]
        elif kind == "unsent":
            mkey = (d["journey_key"] or None, *(d[k] for k in MESSAGE))
            messages[mkey][1] += v["unsent"]
        elif kind == "message":
            journey = d["journey_key"] or None
            mkey = (journey, *(d[k] for k in MESSAGE))
            messages[mkey][0] += v["n"]
            messages[mkey][1] += v["unsent"]
            if v["n"] and day is not None:
                s = sent_days.setdefault(
                    day, {"day": day, "sent": 0, "delivered": 0, "bounced": 0, "complained": 0}
                )
                s["sent"] += v["n"]
                if d["status"] in ("delivered", "complained"):
                    s["delivered"] += v["n"]
                if d["status"] in ("bounced", "complained"):
                    s[d["status"]] += v["n"]
            if any(v[m] for m in FOLDED) and day is not None:
                fkey = (day, *mkey)
                f = feedback.setdefault(
                    fkey,
                    {
                        "day": day,
                        "journey_key": journey,
                        **{k: d[k] for k in MESSAGE},
                        **dict.fromkeys(FOLDED, 0),
                    },
                )
                for m in FOLDED:
                    f[m] += v[m]
    fb = [*feedback.values(), *q.unapplied_deliveries(conn, scope, zone)]
    return {
        "entered": list(entered.values()),
        "converted": list(converted.values()),
        "ended": [
            SimpleNamespace(
                status=k[0], end_reason=k[1], step=k[2], version=k[3], control=k[4], n=n
            )
            for k, n in ended.items()
            if n
        ],
        "runs": [SimpleNamespace(version=k[0], step=k[1], n=n) for k, n in runs.items() if n],
        "messages": [
            SimpleNamespace(
                **dict(zip(("journey_key", *MESSAGE), k, strict=True)), sent=s, unsent=u
            )
            for k, (s, u) in messages.items()
            if s or u
        ],
        "message_days": {"sent": list(sent_days.values()), "feedback": fb},
    }


__all__ = [
    "BUCKET",
    "RollupRunner",
    "aligned",
    "collect",
    "compute",
    "refresh",
    "snapshot",
]
