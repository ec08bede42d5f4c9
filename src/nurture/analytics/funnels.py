"""Funnels: how many contacts go from a first event through each next one, in order,
within a conversion window, and where they drop off (docs/analytics/funnels.md).

The whole funnel is one SQL statement (on SQLite, one for each half of the contacts, run
on two threads: SQLite uses one core a query). The first step is a grouped scan of the
`events (event, type, contact_id, timestamp)` index (each contact's first matching event
in the date range); every later step is one correlated `MIN(timestamp)` seek into that
index per contact still in the funnel. Only the contacts that reached step 2 come back
to Python, for the time percentiles; the others come back as one count per group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import numpy as np
from pydantic import Field, PlainValidator, model_validator
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    null,
    select,
    union_all,
)

from nurture.analytics.event_queries import (
    Moment,
    QuestionModel,
    StepType,
    Zone,
    check_segments,
    event_where,
    members_of,
    microseconds,
    parse_question,
    resolve_range,
)
from nurture.analytics.report import Chart, Column, Report, Table
from nurture.conditions.compile import SqlCompiler
from nurture.conditions.durations import Duration, format_duration
from nurture.conditions.env import Env
from nurture.conditions.model import PropertyFilter, check_path
from nurture.conditions.sqlvalues import Bool, JsonValue, TextColumn
from nurture.errors import ValidationError
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.types import to_microseconds

MAX_GROUPS = 50
DEFAULT_RANGE = timedelta(days=30)  # of the first step, ending now, when `from` is not given
NONE_LABEL = "(none)"
OTHER_LABEL = "(other)"


# -- the question ---------------------------------------------------------------------------


def _trait_path(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a trait path like plan or company.size")
    return check_path(value)


TraitPath = Annotated[str, PlainValidator(_trait_path)]


class FunnelStep(QuestionModel):
    """One step: an event name (`*` for any) of one type, with property filters."""

    event: str = Field(min_length=1, max_length=255)
    type: StepType = "track"
    where: list[PropertyFilter] = Field(default_factory=list)

    def overlaps(self, other: FunnelStep) -> bool:
        """Whether one stored event could match both steps (then it may serve only one)."""
        return self.type == other.type and (
            self.event == other.event or "*" in (self.event, other.event)
        )

    @property
    def label(self) -> str:
        out = self.event if self.type == "track" else f"{self.type}: {self.event}"
        if self.where:
            out += " where " + ", ".join(_filter_text(f) for f in self.where)
        return out


def _filter_text(f: PropertyFilter) -> str:
    operand = f.operand
    shown = format_duration(operand) if isinstance(operand, timedelta) else operand
    return f"{f.property} {f.operator} {shown}"


class Breakdown(QuestionModel):
    """Groups: by the value of a contact trait (top `limit` values), or by segments."""

    trait: TraitPath | None = None
    segments: list[str] | None = Field(None, min_length=1, max_length=MAX_GROUPS)
    limit: int = Field(10, ge=1, le=MAX_GROUPS)

    @model_validator(mode="after")
    def _one(self) -> Breakdown:
        if (self.trait is None) == (self.segments is None):
            raise ValueError("a breakdown needs exactly one of `trait` or `segments`")
        return self


class FunnelQuery(QuestionModel):
    """What a funnel report is asked (the JSON body of `POST /api/reports/funnel`)."""

    steps: list[FunnelStep] = Field(min_length=2, max_length=20)
    window: Duration = timedelta(days=7)
    from_: Moment | None = Field(None, alias="from")
    to: Moment | None = None
    tz: Zone = "UTC"
    breakdown: Breakdown | None = None
    segment: str | None = Field(None, min_length=1)


def parse_funnel(data: Any) -> FunnelQuery:
    """Validate a funnel question; raises ValidationError naming the bad field."""
    return parse_question(FunnelQuery, data)


def trait_label(compiler: SqlCompiler, path: str) -> ColumnElement[Any]:
    """A contact trait as text for grouping: strings as they are, numbers and true/false
    as JSON writes them, NULL when missing or null."""
    value = compiler.trait(path)
    if isinstance(value, TextColumn):
        return value.column
    if not isinstance(value, JsonValue):
        raise ValidationError(
            f"cannot break down by {path!r}: it is a time", path="breakdown.trait"
        )
    if compiler.b.sqlite:
        return case(
            (value.type.in_(("true", "false")), value.type),
            else_=cast(value.value, String),
        )
    return value.value


# -- the funnel in SQL --------------------------------------------------------------------


@dataclass
class _Plan:
    """Which steps need their event id (a later step could match the same event)."""

    steps: list[FunnelStep]
    needs_id: list[bool] = field(default_factory=list)
    excludes: list[list[int]] = field(default_factory=list)  # earlier steps whose ids to skip

    def __post_init__(self) -> None:
        n = len(self.steps)
        self.excludes = [
            [j for j in range(k) if self.steps[j].overlaps(self.steps[k])] for k in range(n)
        ]
        self.needs_id = [any(j in self.excludes[k] for k in range(j + 1, n)) for j in range(n)]


def funnel_sql(
    query: FunnelQuery,
    backend: str,
    now: datetime,
    lower: datetime,
    upper: datetime,
    contacts: tuple[int, int] | None = None,
) -> Select[Any]:
    """Rows (group, t1..tn in µs, weight): one per contact that reached step 2, and one
    per group with the count of those that started but did not (their times NULL).
    `contacts` limits it to contact ids in [low, high]."""
    compiler = SqlCompiler(Env(now=now), backend)
    b = compiler.b
    plan = _Plan(list(query.steps))
    steps = plan.steps
    window_us = query.window // timedelta(microseconds=1)
    now_at = b.at(to_microseconds(now))
    ev = t.events

    first = ev.alias("e1")
    ts1 = b.ts(first.c.timestamp)
    where = event_where(compiler, first, steps[0].event, [steps[0].type], steps[0].where)
    where += [ts1 >= b.at(to_microseconds(lower)), ts1 < b.at(to_microseconds(upper))]
    where.append(ts1 <= now_at)
    if query.segment is not None:
        where.append(first.c.contact_id.in_(members_of(query.segment)))
    if contacts is not None:
        where += [first.c.contact_id >= contacts[0], first.c.contact_id <= contacts[1]]
    current: Any = (
        select(first.c.contact_id, func.min(ts1).label("t1"))
        .where(*where)
        .group_by(first.c.contact_id)
        .cte("f1")
        .prefix_with("MATERIALIZED")
    )

    def seek(k: int, prev: Any, column: str, at: ColumnElement[Any] | None = None) -> Any:
        """Step k's first matching event for each row of `prev`: its time (`column` =
        "t"), or the smallest id among the events at time `at` (`column` = "id")."""
        e = ev.alias(f"e{k + 1}{column}")
        ts = b.ts(e.c.timestamp)
        cond = event_where(compiler, e, steps[k].event, [steps[k].type], steps[k].where)
        cond.append(e.c.contact_id == prev.c.contact_id)
        if at is not None:
            cond.append(ts == at)
        else:  # a later step (step 1's times come from the grouped scan)
            cond += [
                ts >= prev.c[f"t{k}"],
                ts <= b.plus(prev.c.t1, window_us),
                ts <= now_at,
            ]
        if k == 0:
            cond += [ts >= b.at(to_microseconds(lower)), ts < b.at(to_microseconds(upper))]
        cond += [e.c.id != prev.c[f"id{j + 1}"] for j in plan.excludes[k]]
        value = func.min(e.c.id) if column == "id" else func.min(ts)
        return select(value).where(*cond).scalar_subquery()

    if plan.needs_id[0]:
        current = (
            select(current, seek(0, current, "id", current.c.t1).label("id1"))
            .cte("f1id")
            .prefix_with("MATERIALIZED")
        )
    # levels[k]: the contacts who reached step k + 1 (all of them for k = 0), with the time
    # of step k + 2 (NULL for those who stop): each level carries only those still going.
    levels: list[Any] = []
    for k in range(1, len(steps)):
        level = select(current, seek(k, current, "t").label(f"t{k + 1}"))
        if k > 1:
            level = level.where(current.c[f"t{k}"].is_not(None))
        current = level.cte(f"f{k + 1}").prefix_with("MATERIALIZED")
        if plan.needs_id[k]:
            at = current.c[f"t{k + 1}"]
            idk = case((at.is_not(None), seek(k, current, "id", at)), else_=null())
            current = (
                select(current, idk.label(f"id{k + 1}"))
                .cte(f"f{k + 1}id")
                .prefix_with("MATERIALIZED")
            )
        levels.append(current)

    # Each contact comes out once: where it stopped, or from the last level if it
    # converted. Those who stopped after step 1 come out as one count per group.
    n = len(steps)
    no_time = cast(null(), BigInteger)  # typed: PostgreSQL reads an untyped NULL as text
    bd = query.breakdown
    parts: list[Select[Any]] = []
    by_segments = bd is not None and bd.segments is not None
    for grouped in (True, False) if by_segments else (True,):
        # By segments a contact is in any number of groups: the total (not grouped) is
        # not the sum of the groups.
        for i, level in enumerate(levels):
            source, group = _grouping(compiler, query, level) if grouped else (level, None)
            label = (null() if group is None else group).label("grp")
            stopped = level.c[f"t{i + 2}"].is_(None)

            def rows(reached: int, where: Bool, lv: Any = level, lb: Any = label) -> Select[Any]:
                times = [
                    microseconds(b, lv.c[f"t{j + 1}"]) if j < reached else no_time for j in range(n)
                ]
                columns = [v.label(f"t{j + 1}") for j, v in enumerate(times)]
                return select(lb, *columns, literal(1).label("n")).where(where)

            if i == 0:
                nulls = [no_time.label(f"t{j + 1}") for j in range(n)]
                rest = select(label, *nulls, func.count().label("n")).select_from(source)
                rest = rest.where(stopped)
                parts.append(rest if group is None else rest.group_by(group))
            else:
                parts.append(rows(i + 1, stopped).select_from(source))
            if i == len(levels) - 1:
                parts.append(rows(n, ~stopped).select_from(source))
    return union_all(*parts)  # type: ignore[return-value]


def _grouping(
    compiler: SqlCompiler, query: FunnelQuery, level: Any
) -> tuple[Any, ColumnElement[Any] | None]:
    """(FROM clause, group expression) of a breakdown over one level's contacts."""
    bd = query.breakdown
    if bd is not None and bd.trait is not None:
        people = t.contacts
        source = level.join(people, people.c.id == level.c.contact_id)
        return source, trait_label(compiler, bd.trait)
    if bd is not None and bd.segments is not None:
        m = t.segment_memberships
        on = and_(m.c.contact_id == level.c.contact_id, m.c.segment_key.in_(bd.segments))
        return level.join(m, on), m.c.segment_key
    return level, None


# -- from rows to numbers -----------------------------------------------------------------


@dataclass
class StepFigures:
    """One step of one group: who reached it, and how long it took them."""

    contacts: int
    from_previous: list[float]  # seconds, one per contact that reached this step
    from_start: list[float]


def figures(rows: Sequence[Sequence[Any]], n_steps: int) -> list[StepFigures]:
    """Per step: contacts and the seconds from the previous step and from the start."""
    counts = [0] * n_steps
    with_times = [r for r in rows if r[1] is not None]
    counts[0] = sum(int(r[-1]) for r in rows)
    # None becomes NaN; microseconds since 1970 are exact in a float64 until the year 2255.
    matrix = (
        np.array([r[1 : 1 + n_steps] for r in with_times], dtype=float)
        if with_times
        else np.empty((0, n_steps))
    )
    out = [StepFigures(counts[0], [], [])]
    for k in range(1, n_steps):
        column = matrix[:, k]
        reached = ~np.isnan(column)
        prev = (column[reached] - matrix[reached, k - 1]) / 1e6
        start = (column[reached] - matrix[reached, 0]) / 1e6
        out.append(StepFigures(int(reached.sum()), prev.tolist(), start.tolist()))
    return out


def quantiles(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """25th, 50th and 75th percentiles (linear interpolation between closest ranks)."""
    if not values:
        return None, None, None
    p25, p50, p75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(p25), float(p50), float(p75)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def step_rows(steps: Sequence[FunnelStep], figs: Sequence[StepFigures]) -> list[dict[str, Any]]:
    """The rows of a steps table, for one group."""
    rows = []
    start = figs[0].contacts
    for k, (step, fig) in enumerate(zip(steps, figs, strict=True)):
        prev = figs[k - 1].contacts if k else None
        p25, p50, p75 = quantiles(fig.from_previous)
        s25, s50, s75 = quantiles(fig.from_start)
        conversion = _rate(fig.contacts, prev) if prev is not None else None
        rows.append(
            {
                "step": k + 1,
                "label": f"{k + 1}. {step.label}",
                "event": step.label,
                "contacts": fig.contacts,
                "conversion_from_previous": conversion,
                "conversion_from_start": _rate(fig.contacts, start),
                "dropped": prev - fig.contacts if prev is not None else None,
                "drop_off": 1 - conversion if conversion is not None else None,
                "median_from_previous": p50,
                "p25_from_previous": p25,
                "p75_from_previous": p75,
                "median_from_start": s50,
                "p25_from_start": s25,
                "p75_from_start": s75,
            }
        )
    return rows


def bottleneck(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The step with the largest drop-off rate from the one before (the earliest on a tie)."""
    candidates = [r for r in rows[1:] if r["drop_off"] is not None]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r["drop_off"], -r["step"]))


STEP_COLUMNS = [
    Column("step", "Step", "int"),
    Column("event", "Event"),
    Column("contacts", "Contacts", "int"),
    Column("conversion_from_previous", "From previous", "percent"),
    Column("conversion_from_start", "From start", "percent"),
    Column("dropped", "Dropped", "int"),
    Column("drop_off", "Drop-off", "percent"),
    Column("median_from_previous", "Median time from previous", "duration"),
    Column("p25_from_previous", "P25 from previous", "duration"),
    Column("p75_from_previous", "P75 from previous", "duration"),
    Column("median_from_start", "Median time from start", "duration"),
    Column("p25_from_start", "P25 from start", "duration"),
    Column("p75_from_start", "P75 from start", "duration"),
]


def funnel(db: Database, data: Any, now: datetime) -> Report:
    """The funnel report for a question (a FunnelQuery or its JSON), as of `now`."""
    query = parse_funnel(data)
    resolve_range(query.from_, query.to, ZoneInfo(query.tz), now, DEFAULT_RANGE)  # checks
    if query.segment is not None:
        check_segments(db, [query.segment], "segment")
    if query.breakdown is not None and query.breakdown.segments is not None:
        check_segments(db, query.breakdown.segments, "breakdown.segments")
    return run_funnel(db, query, now)


def run_funnel(db: Database, query: FunnelQuery, now: datetime, *, threads: int = 2) -> Report:
    """The funnel report, without checking that the segments it names exist. On SQLite
    with `threads` = 2, two halves of the contacts are counted at once."""
    lower, upper = resolve_range(query.from_, query.to, ZoneInfo(query.tz), now, DEFAULT_RANGE)
    parts: list[tuple[int, int] | None] = [None]
    if db.is_sqlite and threads > 1:
        parts = _halves(db, query.steps[0])
    if len(parts) == 1:
        rows = _rows(db, funnel_sql(query, db.backend, now, lower, upper, parts[0]))
    else:
        # SQLite runs a query on one core; two halves of the contacts run on two (the
        # driver releases the GIL while SQLite works).
        with ThreadPoolExecutor(len(parts)) as pool:
            sqls = [funnel_sql(query, db.backend, now, lower, upper, part) for part in parts]
            rows = [row for chunk in pool.map(lambda q: _rows(db, q), sqls) for row in chunk]
    return build_report(query, rows, lower, upper)


def _halves(db: Database, step: FunnelStep) -> list[tuple[int, int] | None]:
    """Two ranges of contact ids splitting those with step-1 events (the index's ends)."""
    e = t.events
    where = [e.c.type == step.type] + ([e.c.event == step.event] if step.event != "*" else [])
    with db.read() as conn:
        low, high = conn.execute(
            select(func.min(e.c.contact_id), func.max(e.c.contact_id)).where(*where)
        ).one()
    if low is None or high - low < 1000:
        return [None]
    middle = (low + high) // 2
    return [(low, middle), (middle + 1, high)]


def _rows(db: Database, sql: Select[Any]) -> list[tuple[Any, ...]]:
    with db.read() as conn:
        result = conn.execute(sql)
        # Plain tuples from the driver: SQLAlchemy's rows cost 4 µs each, and these are
        # integers and text that need no conversion.
        rows = list(result.cursor.fetchall()) if result.cursor else []
        result.close()
    return rows


def _groups(query: FunnelQuery, rows: list[tuple[Any, ...]]) -> dict[Any, list[tuple[Any, ...]]]:
    by: dict[Any, list[tuple[Any, ...]]] = {}
    for row in rows:
        by.setdefault(row[0], []).append(row)
    bd = query.breakdown
    if bd is None or bd.trait is None:
        return by
    started = {g: sum(int(r[-1]) for r in rs) for g, rs in by.items()}
    ranked = sorted(started, key=lambda g: (-started[g], g is None, str(g)))
    out = {g: by[g] for g in ranked[: bd.limit]}
    rest = [r for g in ranked[bd.limit :] for r in by[g]]
    if rest:
        out[OTHER_LABEL] = rest
    return out


def build_report(
    query: FunnelQuery, rows: list[tuple[Any, ...]], lower: datetime, upper: datetime
) -> Report:
    """The report from the SQL rows (see funnel_sql)."""
    steps = list(query.steps)
    n = len(steps)
    bd = query.breakdown
    if bd is not None and bd.segments is not None:
        total_rows = [r for r in rows if r[0] is None]
        grouped = {key: [r for r in rows if r[0] == key] for key in bd.segments}
    else:
        total_rows = rows
        grouped = _groups(query, rows) if bd is not None else {}
    total = step_rows(steps, figures(total_rows, n))
    worst = bottleneck(total)
    last = total[-1]
    report = Report(
        kind="funnel",
        title=f"Funnel: {' → '.join(s.label for s in steps)}",
        params={
            **query.model_dump(by_alias=True, exclude_none=True, mode="json"),
            "from": lower,
            "to": upper,
        },
        summary={
            "started": total[0]["contacts"],
            "converted": last["contacts"],
            "conversion": last["conversion_from_start"],
            "bottleneck_step": worst["step"] if worst else None,
            "bottleneck_event": worst["event"] if worst else None,
            "bottleneck_drop_off": worst["drop_off"] if worst else None,
        },
        tables=[Table("steps", "Steps", STEP_COLUMNS, total)],
        charts=[
            Chart(
                "bar",
                "steps",
                "label",
                ("conversion_from_start",),
                "Conversion from the first step",
                "share of contacts who started",
            )
        ],
        notes=[
            f"Contacts who did step 1 between {lower.isoformat()} and {upper.isoformat()} "
            f"(first time in the range); each later step within {format_duration(query.window)} "
            "of it, in order.",
        ],
    )
    if worst is not None:
        report.notes.append(
            f"Bottleneck: step {worst['step']} ({worst['event']}), "
            f"{worst['drop_off'] * 100:.1f} % of those at step {worst['step'] - 1} stop there."
        )
    if bd is not None:
        _add_groups(report, steps, grouped)
    return report


def _label(group: Any) -> str:
    return NONE_LABEL if group is None else str(group)


def _add_groups(
    report: Report, steps: list[FunnelStep], grouped: Mapping[Any, list[tuple[Any, ...]]]
) -> None:
    long_rows: list[dict[str, Any]] = []
    per_group: list[tuple[str, list[dict[str, Any]]]] = []
    for group, rows in grouped.items():
        table = step_rows(steps, figures(rows, len(steps)))
        per_group.append((_label(group), table))
        long_rows += [{"group": _label(group), **row} for row in table]
    report.tables.append(
        Table("groups", "Steps by group", [Column("group", "Group"), *STEP_COLUMNS], long_rows)
    )
    keys = [f"g{i}" for i in range(len(per_group))]
    wide = [
        {
            "step": k + 1,
            "label": f"{k + 1}. {step.label}",
            **{
                key: table[k]["conversion_from_start"]
                for key, (_, table) in zip(keys, per_group, strict=True)
            },
        }
        for k, step in enumerate(steps)
    ]
    columns = [Column("step", "Step", "int"), Column("label", "Event")]
    columns += [
        Column(key, name, "percent") for key, (name, _) in zip(keys, per_group, strict=True)
    ]
    report.tables.append(Table("group_conversion", "Conversion from start by group", columns, wide))
    if keys:
        report.charts.append(
            Chart(
                "bar",
                "group_conversion",
                "label",
                tuple(keys),
                "Conversion from the first step, by group",
                "share of contacts who started",
            )
        )
