"""Lifecycle reports: how many contacts were in each stage over time, and who moved
from which stage to which over a period.

Both are rebuilt from the stage history (`stage_changes`): a contact's stage at a moment
is the `to_stage` of its last change before that moment (changes at the same moment go
by id). A contact with no change before a moment was not in the model yet and is not
counted. Erased contacts leave no history, so they are in no period.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, select

from nurture.analytics.journey_metrics import period
from nurture.analytics.report import Chart, Column, Report, Table
from nurture.errors import NotFound, ValidationError
from nurture.segments.engine import Engine
from nurture.store import tables as t
from nurture.store.bulk import one_of

Every = Literal["day", "week"]
MAX_PERIODS = 1000
NEW = "(new)"  # the "from" of a contact that entered the model in the period


def model_stages(engine: Engine, model: str) -> list[str]:
    """The stage keys of `model`, in order; NotFound naming `model`."""
    with engine.db.read() as conn:
        found = engine.registry(conn).stage_models.get(model)
    if found is None:
        raise NotFound(f"stage model {model!r} does not exist", path="model")
    return found.keys


def stages_report(
    engine: Engine,
    model: str,
    *,
    start: str | date | datetime | None = None,
    end: str | date | datetime | None = None,
    every: str = "day",
    tz: str | None = "UTC",
) -> Report:
    """Contacts per stage at the end of each day or week of [start, end)."""
    stages = model_stages(engine, model)
    if every not in ("day", "week"):
        raise ValidationError(f"every must be day or week, not {every!r}", path="every")
    lo, hi, zone = period(start, end, tz)
    with engine.db.read() as conn:
        first, _ = _span(conn, model)
        now = engine.clock.now()
        hi_day = (hi - timedelta(microseconds=1) if hi else now).astimezone(zone).date()
        default = hi_day - (timedelta(days=29) if every == "day" else timedelta(weeks=11))
        if lo is not None:
            lo_day = lo.astimezone(zone).date()
        else:
            lo_day = max(first.astimezone(zone).date(), default) if first else default
        periods = list(_periods(lo_day, hi_day, every, zone))
        if len(periods) > MAX_PERIODS:
            raise ValidationError(
                f"{len(periods)} {every}s is too many (at most {MAX_PERIODS}); "
                "narrow from/to or use every=week",
                path="every",
            )
        ends = [e for _, e in periods]
        snapshots = _snapshots(conn, model, ends)
    known = list(stages)
    for counts in snapshots:
        known += [s for s in counts if s not in known]  # stages since removed from the model
    rows = [
        {
            "period": begin.date(),
            "ends": end_at,
            **{s: counts.get(s, 0) for s in known},
            "total": sum(counts.values()),
        }
        for (begin, end_at), counts in zip(periods, snapshots, strict=True)
    ]
    columns = [
        Column("period", "Period" if every == "day" else "Week of", "date"),
        Column("ends", "At", "time"),
    ]
    columns += [Column(s, s, "int") for s in known] + [Column("total", "Total", "int")]
    return Report(
        kind="lifecycle",
        title=f"Stages of {model} by {every}",
        params={"model": model, "from": lo, "to": hi, "every": every, "tz": zone.key},
        summary=dict(zip(known, (rows[-1][s] for s in known), strict=True)) if rows else {},
        tables=[Table("stages", f"Contacts per stage at the end of each {every}", columns, rows)],
        notes=[
            "Each period shows the stage every contact was in at its end (the last stage "
            "change before that moment); contacts not yet in the model are not counted."
        ],
        charts=[
            Chart("stacked_bar", "stages", "period", tuple(known), f"Stages of {model}", "contacts")
        ],
    )


def flows_report(
    engine: Engine,
    model: str,
    *,
    start: str | date | datetime | None,
    end: str | date | datetime | None,
    tz: str | None = "UTC",
    mode: str = "net",
    from_stage: str | None = None,
    to_stage: str | None = None,
    limit: int = 100,
) -> Report:
    """Moves between stages in [start, end): `net` compares each contact's stage at the
    start with its stage at the end (A → B → C is one move A → C; B → A → B is none);
    `changes` counts every recorded change. With `from_stage` and `to_stage`, also lists
    up to `limit` contacts who made that move."""
    stages = model_stages(engine, model)
    if mode not in ("net", "changes"):
        raise ValidationError(f"mode must be net or changes, not {mode!r}", path="mode")
    if not 1 <= limit <= 10_000:
        raise ValidationError("limit must be between 1 and 10000", path="limit")
    if (from_stage is None) != (to_stage is None):
        missing = "to" if to_stage is None else "from_stage"
        raise ValidationError(
            "name both from_stage and to_stage to list contacts",
            path="to_stage" if missing == "to" else "from_stage",
        )
    lo, hi, zone = period(start, end, tz)
    if lo is None or hi is None:
        raise ValidationError(
            "flows need a range: from and to", path="from" if lo is None else "to"
        )
    with engine.db.read() as conn:
        moves = _net(conn, model, lo, hi) if mode == "net" else _changes(conn, model, lo, hi)
        counts = Counter((a, b) for a, b, _, _ in moves)
        order = {s: i for i, s in enumerate([NEW, *stages])}
        rows = [
            {"from": a, "to": b, "contacts": n}
            for (a, b), n in sorted(
                counts.items(),
                key=lambda kv: (
                    order.get(kv[0][0], len(order)),
                    order.get(kv[0][1], len(order)),
                    kv[0],
                ),
            )
        ]
        tables = [
            Table(
                "flows",
                "Moves between stages",
                [
                    Column("from", "From"),
                    Column("to", "To"),
                    Column("contacts", "Contacts" if mode == "net" else "Changes", "int"),
                ],
                rows,
            )
        ]
        if from_stage is not None and to_stage is not None:
            chosen = [m for m in moves if m[0] == from_stage and m[1] == to_stage][:limit]
            tables.append(_contacts(conn, chosen, from_stage, to_stage))
    return Report(
        kind="lifecycle_flows",
        title=f"Moves between stages of {model}",
        params={
            "model": model,
            "from": lo,
            "to": hi,
            "tz": zone.key,
            "mode": mode,
            "from_stage": from_stage,
            "to_stage": to_stage,
            "limit": limit,
        },
        summary={"moves": sum(counts.values()), "contacts": len({m[2] for m in moves})},
        tables=tables,
        notes=[
            f"{NEW}: the contact entered the model during the period."
            + (
                " Net: the stage at the start against the stage at the end; contacts who "
                "came back to where they started are not counted."
                if mode == "net"
                else " Every recorded change is counted."
            )
        ],
        charts=[Chart("bar", "flows", "to", ("contacts",), f"Moves in {model}")],
    )


# -- reading --------------------------------------------------------------------------------
def _span(conn: Connection, model: str) -> tuple[datetime | None, datetime | None]:
    h = t.stage_changes.c
    row = conn.execute(
        select(func.min(h.changed_at), func.max(h.changed_at)).where(h.model == model)
    ).one()
    return row[0], row[1]


def _periods(
    first: date, last: date, every: Every | str, zone: ZoneInfo
) -> Iterator[tuple[datetime, datetime]]:
    """(start, end) of each local day or week (from Monday) covering [first, last]."""
    step = timedelta(days=1 if every == "day" else 7)
    day = first if every == "day" else first - timedelta(days=first.weekday())
    while day <= last:
        yield datetime.combine(day, time(), zone), datetime.combine(day + step, time(), zone)
        day += step


def _history(conn: Connection, model: str, before: datetime) -> Iterator[Any]:
    h = t.stage_changes.c
    query = (
        select(h.contact_id, h.from_stage, h.to_stage, h.changed_at)
        .where(h.model == model, h.changed_at < before)
        .order_by(h.changed_at, h.id)
    )
    yield from conn.execution_options(yield_per=10_000).execute(query)


def _snapshots(conn: Connection, model: str, ends: list[datetime]) -> list[Counter[str]]:
    """Contacts per stage just before each moment of `ends` (in order), in one pass."""
    out: list[Counter[str]] = []
    if not ends:
        return out
    stage: dict[int, str] = {}
    counts: Counter[str] = Counter()
    at = 0
    for row in _history(conn, model, ends[-1]):
        while row.changed_at >= ends[at]:
            out.append(+counts)
            at += 1
        old = stage.get(row.contact_id)
        if old is not None:
            counts[old] -= 1
        stage[row.contact_id] = row.to_stage
        counts[row.to_stage] += 1
    while at < len(ends):
        out.append(+counts)
        at += 1
    return out


def _net(
    conn: Connection, model: str, lo: datetime, hi: datetime
) -> list[tuple[str, str, int, datetime]]:
    """(from, to, contact, last change) of contacts whose stage at `hi` differs from
    their stage at `lo`."""
    start: dict[int, str] = {}
    end: dict[int, tuple[str, datetime]] = {}
    for row in _history(conn, model, hi):
        if row.changed_at < lo:
            start[row.contact_id] = row.to_stage
        else:
            end[row.contact_id] = (row.to_stage, row.changed_at)
    moves = [
        (start.get(contact, NEW), stage, contact, at)
        for contact, (stage, at) in end.items()
        if start.get(contact) != stage
    ]
    return sorted(moves, key=lambda m: (m[3], m[2]))


def _changes(
    conn: Connection, model: str, lo: datetime, hi: datetime
) -> list[tuple[str, str, int, datetime]]:
    h = t.stage_changes.c
    query = (
        select(h.contact_id, h.from_stage, h.to_stage, h.changed_at)
        .where(h.model == model, h.changed_at >= lo, h.changed_at < hi)
        .order_by(h.changed_at, h.id)
    )
    return [
        (r.from_stage or NEW, r.to_stage, r.contact_id, r.changed_at) for r in conn.execute(query)
    ]


def _contacts(
    conn: Connection, moves: list[tuple[str, str, int, datetime]], a: str, b: str
) -> Table:
    c = t.contacts.c
    ids = [m[2] for m in moves]
    found = (
        {
            r.id: r
            for r in conn.execute(select(c.id, c.user_id, c.email).where(one_of(conn, c.id, ids)))
        }
        if ids
        else {}
    )
    rows = [
        {
            "contact_id": contact,
            "user_id": getattr(found.get(contact), "user_id", None),
            "email": getattr(found.get(contact), "email", None),
            "moved_at": at,
        }
        for _, _, contact, at in moves
    ]
    columns = [
        Column("contact_id", "Contact", "int"),
        Column("user_id", "User id"),
        Column("email", "Email"),
        Column("moved_at", "Moved at", "time"),
    ]
    return Table("contacts", f"Contacts who moved from {a} to {b}", columns, rows)
