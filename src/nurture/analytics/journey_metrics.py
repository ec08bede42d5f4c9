"""Journey and message metrics: what entered, waited, was sent, delivered, opened, clicked,
converted and how enrolments ended, per journey, version, step, message and day.

Each row counts by its own moment (docs/analytics/journeys.md has every definition):
enrolments by `entered_at` (entered), `converted_at` (converted, revenue) and `ended_at`
(exits); steps by `executed_at`; messages by `sent_at`, with all their feedback whenever
it came, so that every rate is a fraction of the same messages. "Waiting now" is the
present, whatever the range. Holdout (control) enrolments are counted apart.

Opens and clicks that software made (Apple Mail Privacy Protection, link scanners: the
feedback's `machine` flag) are reported apart from the people's, which are the headline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, time, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, select

from nurture.analytics import journey_queries as q
from nurture.analytics import rollups
from nurture.analytics.report import Chart, Column, Report, Table
from nurture.errors import NotFound, ValidationError
from nurture.store import Database
from nurture.store import tables as t

# Message counts, in the order the tables show them.
SENT = ("sent", "delivered", "bounced", "complained", "unsubscribed")
ENGAGED = q.ENGAGED
UNSENT = ("queued", "skipped", "failed")
COUNTS = SENT + ENGAGED + UNSENT
# (rate, numerator, denominator)
RATES = (
    ("delivery_rate", "delivered", "sent"),
    ("open_rate", "opened", "delivered"),
    ("click_rate", "clicked", "delivered"),
    ("click_to_open", "clicked", "opened"),
    ("unsubscribe_rate", "unsubscribed", "delivered"),
    ("bounce_rate", "bounced", "sent"),
    ("complaint_rate", "complained", "delivered"),
)
TITLES = {
    "sent": "Sent",
    "delivered": "Delivered",
    "bounced": "Bounced",
    "complained": "Complained",
    "unsubscribed": "Unsubscribed",
    "opened": "Opened",
    "opens": "Opens",
    "machine_opened": "Machine opened",
    "machine_opens": "Machine opens",
    "clicked": "Clicked",
    "clicks": "Clicks",
    "machine_clicked": "Machine clicked",
    "machine_clicks": "Machine clicks",
    "queued": "Queued",
    "skipped": "Skipped",
    "failed": "Failed",
    "delivery_rate": "Delivery rate",
    "open_rate": "Open rate",
    "click_rate": "Click rate",
    "click_to_open": "Click-to-open",
    "unsubscribe_rate": "Unsubscribe rate",
    "bounce_rate": "Bounce rate",
    "complaint_rate": "Complaint rate",
}
MessageKey = tuple[Any, ...]  # (journey, version, step, template, variant, channel)
_US = timedelta(microseconds=1)


# -- parameters -----------------------------------------------------------------------------
def zone_of(tz: str | None) -> ZoneInfo:
    """The IANA time zone named `tz` (default UTC); ValidationError naming `tz`."""
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"unknown time zone {tz!r} (an IANA name such as Europe/Paris)", path="tz"
        ) from None


def moment(value: str | date | datetime | None, zone: ZoneInfo, *, field: str) -> datetime | None:
    """A range bound: a datetime (naive ones are in `zone`) or a date (its local
    midnight; for `to`, the midnight after it, so that the day is included)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(
                f"{field} must be a date (2026-03-01) or an ISO 8601 time, not {value!r}",
                path=field,
            ) from None
    if not isinstance(value, datetime):
        day = value + timedelta(days=1) if field == "to" else value
        return datetime.combine(day, time(), zone)
    return value if value.tzinfo is not None else value.replace(tzinfo=zone)


def period(
    start: str | date | datetime | None, end: str | date | datetime | None, tz: str | None
) -> tuple[datetime | None, datetime | None, ZoneInfo]:
    """(from, to, zone) of a half-open range [from, to); ValidationError naming the field."""
    zone = zone_of(tz)
    lo, hi = moment(start, zone, field="from"), moment(end, zone, field="to")
    if lo is not None and hi is not None and lo >= hi:
        raise ValidationError(
            f"from ({lo.isoformat()}) must be before to ({hi.isoformat()})", path="from"
        )
    return lo, hi, zone


def money(value: float) -> float:
    """A sum of revenue to a millionth: sums of floats added in another order (rows, or
    rollups) differ in their last bits, and no currency has more than 4 decimals."""
    return round(value, 6) + 0.0


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when there is nothing to divide by."""
    if not denominator or numerator is None:
        return None
    return numerator / denominator


# -- the journey report ---------------------------------------------------------------------
def journey_report(
    db: Database,
    key: str,
    *,
    start: str | date | datetime | None = None,
    end: str | date | datetime | None = None,
    tz: str | None = "UTC",
    version: int | None = None,
    exact: bool = False,
) -> Report:
    """Metrics of one journey over [start, end): summary, versions, steps, messages,
    days (in `tz`) and exits. `exact`: count the rows, not the rollups (the same
    numbers, slower; for checking)."""
    lo, hi, zone = period(start, end, tz)
    with db.read() as conn:
        steps_of = _definitions(conn, key, version)
    scope = q.Scope(key, version, lo, hi)
    data = _collect(db, scope, zone, steps_of, enrolments=True, exact=exact)
    messages = _message_rows(data, with_journey=False)
    steps = _step_rows(data, steps_of, messages)
    versions = _version_rows(data, messages)
    days = _day_rows(data)
    exits = _exit_rows(data["ended"])
    summary = _summary(versions, data)
    params = {"journey": key, "from": lo, "to": hi, "tz": zone.key, "version": version}
    return Report(
        kind="journey",
        title=f"Journey {key}" + (f" (version {version})" if version is not None else ""),
        params=params,
        summary=summary,
        tables=[
            Table("steps", "Steps", _step_columns(), steps),
            Table("messages", "Messages", _message_columns(with_journey=False), messages),
            Table("days", f"By day ({zone.key})", _day_columns(), days),
            Table("exits", "How enrolments ended", _exit_columns(), exits),
            Table("versions", "Versions", _version_columns(), versions),
        ],
        notes=NOTES,
        charts=[
            Chart(
                "line",
                "days",
                "day",
                ("entered", "sent", "opened", "clicked", "converted"),
                f"Journey {key} by day",
            )
        ],
    )


def messages_report(
    db: Database,
    *,
    journey: str | None = None,
    template: str | None = None,
    start: str | date | datetime | None = None,
    end: str | date | datetime | None = None,
    tz: str | None = "UTC",
    exact: bool = False,
) -> Report:
    """Message metrics per journey, step, template and variant (all messages, or one
    journey's, or one template's) over [start, end), and by day. `exact`: count the
    rows, not the rollups."""
    lo, hi, zone = period(start, end, tz)
    if journey is not None:
        with db.read() as conn:
            _definitions(conn, journey, None)
    scope = q.Scope(journey, None, lo, hi, template)
    data = _collect(db, scope, zone, {}, enrolments=False, exact=exact)
    rows = _message_rows(data, with_journey=True)
    wanted = [c.key for c in _message_day_columns()]
    days = [{k: r[k] for k in wanted} for r in _day_rows(data)]
    total: dict[str, Any] = {k: sum(r[k] for r in rows) for k in COUNTS}
    _rates(total)
    return Report(
        kind="messages",
        title="Messages"
        + (f" of journey {journey}" if journey else "")
        + (f", template {template}" if template else ""),
        params={"journey": journey, "template": template, "from": lo, "to": hi, "tz": zone.key},
        summary=total,
        tables=[
            Table("messages", "Messages", _message_columns(with_journey=True), rows),
            Table("days", f"By day ({zone.key})", _message_day_columns(), days),
        ],
        notes=NOTES,
        charts=[
            Chart(
                "line", "days", "day", ("sent", "delivered", "opened", "clicked"), "Messages by day"
            )
        ],
    )


NOTES = [
    "Messages count by the time they were sent, with their feedback whenever it came; "
    "enrolments by when they entered, converted or ended; waiting is now.",
    "Opened and clicked count messages opened or clicked by a person at least once; opens "
    "and clicks count every one. Machine opens and clicks (privacy proxies such as Apple "
    "Mail Privacy Protection, link scanners) are counted apart and in no rate.",
]


# -- reading --------------------------------------------------------------------------------
def _definitions(
    conn: Connection, key: str, version: int | None
) -> dict[int, list[tuple[Any, Any]]]:
    """The steps of each version of the journey: {version: [(step id, type)]}."""
    if conn.execute(select(t.journeys.c.key).where(t.journeys.c.key == key)).first() is None:
        raise NotFound(f"no journey {key!r}", path="journey", code="journey_not_found")
    v = t.journey_versions.c
    query = select(v.version, v.body).where(v.journey_key == key).order_by(v.version)
    out = {
        row.version: [(s.get("id"), s.get("type")) for s in (row.body or {}).get("steps", [])]
        for row in conn.execute(query)
    }
    if version is not None and version not in out:
        known = ", ".join(map(str, out)) or "none published"
        raise ValidationError(
            f"journey {key!r} has no version {version} (versions: {known})", path="version"
        )
    return out


def _collect(
    db: Database,
    scope: q.Scope,
    zone: ZoneInfo,
    steps_of: dict[int, list[tuple[Any, Any]]],
    *,
    enrolments: bool,
    exact: bool = False,
) -> dict[str, Any]:
    """The counts from the rollups (analytics/rollups.py) when they can answer exactly;
    otherwise from the rows, two queries at a time (each reads its own table, on its own
    connection)."""
    versions = [v for v in steps_of if scope.version in (None, v)]
    steps = [(v, step) for v in versions for step, _ in steps_of[v]]
    if not exact and rollups.aligned(scope.start) and rollups.aligned(scope.end):
        with rollups.snapshot(db) as conn:
            unlinked, journeys, days = _frame(conn, scope, zone, versions)
            rolled = rollups.collect(
                conn, scope, zone, days, enrolments=enrolments, unlinked=unlinked
            )
            if rolled is not None:
                if enrolments:
                    rolled["waiting"] = q.waiting(conn, scope)
                frame = {"days": days, "scope_version": scope.version, "versions": versions}
                return {**rolled, **frame}
    with db.read() as conn:
        unlinked, journeys, days = _frame(conn, scope, zone, versions)

    def run(query: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        def go() -> Any:
            with db.read() as conn:
                q.prepare(conn)
                return query(conn, scope, *args)

        return go

    def by_day() -> dict[str, Any]:
        sent = run(q.message_days, days, zone, journeys)()
        ids: dict[date, tuple[int, int]] = {}
        for r in sent:
            if r["lo"] is not None:
                old = ids.get(r["day"], (r["lo"], r["hi"]))
                ids[r["day"]] = (min(old[0], r["lo"]), max(old[1], r["hi"]))
        with db.read() as conn:
            q.prepare(conn)
            feedback = q.feedback_days(conn, scope, days, zone, ids, by_provider_id=unlinked)
            feedback += q.unapplied_deliveries(conn, scope, zone)
        return {"sent": sent, "feedback": feedback}

    jobs: dict[str, Callable[[], Any]] = {
        "messages": run(q.messages, journeys),
        "message_days": by_day,
    }
    if enrolments:
        jobs |= {
            "entered": run(q.entered, days, zone, versions),
            "converted": run(q.converted, days, zone, versions),
            "ended": run(q.ended),
            "waiting": run(q.waiting),
            "runs": run(q.step_runs, steps),
        }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        data = {name: future.result() for name, future in futures.items()}
    return {**data, "days": days, "scope_version": scope.version, "versions": versions}


def _frame(
    conn: Connection, scope: q.Scope, zone: ZoneInfo, versions: list[int]
) -> tuple[bool, list[str | None], list[q.Day]]:
    """(whether feedback waits to be linked by provider id, the journeys the scope reads
    (None: messages outside journeys), the local days of the range that hold rows: a
    range reaching years past the data lists no empty years)."""
    unlinked = q.has_unlinked_feedback(conn)
    journeys: list[str | None] = (
        [scope.journey] if scope.journey else q.journeys_with_messages(conn)
    )
    lo, hi = scope.start, scope.end
    first, last = q.bounds(conn, scope, versions, journeys)
    if first is not None and last is not None:
        lo = max(lo, first) if lo is not None else first
        hi = min(hi, last + _US) if hi is not None else last + _US
    days = []
    if first is not None and lo is not None and hi is not None and lo < hi:
        last_day = (hi - _US).astimezone(zone).date()
        first_day = lo.astimezone(zone).date()
        days = q.local_days(first_day, last_day, zone, scope.start, scope.end)
    return unlinked, journeys, days


# -- adding up ------------------------------------------------------------------------------
def _message_key(row: Any) -> MessageKey:
    return (row.journey_key, row.version, row.step, row.template, row.variant, row.channel)


def _message_counts(data: dict[str, Any]) -> Iterable[tuple[MessageKey, dict[str, int]]]:
    """(message key, counts) for every group the message queries returned."""
    for row in data["messages"]:
        counts = {"sent": int(row.sent)}
        if row.status in ("delivered", "complained"):
            counts["delivered"] = int(row.sent)
        if row.status in ("bounced", "complained"):
            counts[row.status] = int(row.sent)
        if row.unsent:
            status = row.status if row.status in UNSENT else "queued"  # sending: in flight
            counts[status] = int(row.unsent)
        yield _message_key(row), counts
    for r in data["message_days"]["feedback"]:
        # delivered and complained: only what the message's status does not say already
        names = (*ENGAGED, "unsubscribed", "delivered", "complained")
        yield _message_key(SimpleNamespace(**r)), {k: int(r.get(k) or 0) for k in names}


def _rates(row: dict[str, Any]) -> dict[str, Any]:
    for name, top, bottom in RATES:
        row[name] = ratio(row.get(top), row.get(bottom))
    return row


def _message_rows(data: dict[str, Any], *, with_journey: bool) -> list[dict[str, Any]]:
    by_key: dict[MessageKey, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
    for key, counts in _message_counts(data):
        for name, n in counts.items():
            by_key[key][name] += n
    rows = []
    for key in sorted(by_key, key=lambda k: tuple((v is None, str(v)) for v in k)):
        journey, version, step, template, variant, channel = key
        head = {"journey": journey} if with_journey else {}
        head |= {
            "version": version,
            "step": step,
            "template": template,
            "variant": variant,
            "channel": channel,
        }
        rows.append(_rates({**head, **by_key[key]}))
    return rows


def _step_rows(
    data: dict[str, Any], steps_of: dict[int, list[tuple[Any, Any]]], messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    rows: dict[tuple[int, str], dict[str, Any]] = {}

    def row(version: int, step: str | None) -> dict[str, Any]:
        key = (version, step or "")
        if key not in rows:
            rows[key] = {
                "version": version,
                "step": step,
                "type": None,
                "runs": 0,
                "waiting": 0,
                "waiting_control": 0,
                **dict.fromkeys(SENT, 0),
                "opened": 0,
                "clicked": 0,
            }
        return rows[key]

    for version, steps in steps_of.items():
        if data["scope_version"] in (None, version):
            for step, kind in steps:
                row(version, step)["type"] = kind
    for r in data["runs"]:
        row(r.version, r.step)["runs"] += r.n
    for r in data["waiting"]:
        row(r.version, r.step)["waiting_control" if r.control else "waiting"] += r.n
    for m in messages:
        target = row(m["version"], m["step"])
        for name in (*SENT, "opened", "clicked"):
            target[name] += m[name]
    order = {(v, s): i for v, steps in steps_of.items() for i, (s, _) in enumerate(steps)}
    ordered = sorted(
        rows.values(),
        key=lambda r: (
            r["version"],
            order.get((r["version"], r["step"]), len(order)),
            str(r["step"]),
        ),
    )
    return [_rates(r) for r in ordered]


def _version_rows(data: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = defaultdict(
        lambda: {
            "entered": 0,
            "control": 0,
            "converted": 0,
            "control_converted": 0,
            "revenue": 0.0,
            "ended": 0,
            "waiting": 0,
            "waiting_control": 0,
            **dict.fromkeys(SENT, 0),
            "opened": 0,
            "clicked": 0,
        }
    )
    for version in data["versions"]:  # every version asked, counts or not
        rows[version]["entered"] += 0
    for r in data["entered"]:
        rows[r["version"]]["entered"] += r["n"] - r["control"]
        rows[r["version"]]["control"] += r["control"]
    for r in data["converted"]:
        rows[r["version"]]["converted"] += r["n"] - r["control"]
        rows[r["version"]]["control_converted"] += r["control"]
        rows[r["version"]]["revenue"] += float(r["revenue"] or 0)
    for r in data["ended"]:
        rows[r.version]["ended"] += r.n
    for r in data["waiting"]:
        rows[r.version]["waiting_control" if r.control else "waiting"] += r.n
    for m in messages:
        for name in (*SENT, "opened", "clicked"):
            rows[m["version"]][name] += m[name]
    out = []
    for version in sorted(rows):
        r = {"version": version, **rows[version]}
        r["revenue"] = money(r["revenue"])
        r["conversion_rate"] = ratio(r["converted"], r["entered"])
        r["control_conversion_rate"] = ratio(r["control_converted"], r["control"])
        out.append(_rates(r))
    return out


def _day_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    names = ("entered", "control", "converted", "revenue", *SENT, "opened", "clicked")
    days: dict[date, dict[str, Any]] = {d.day: dict.fromkeys(names, 0) for d in data["days"]}
    for r in data.get("entered", ()):
        days[r["day"]]["entered"] += r["n"] - r["control"]
        days[r["day"]]["control"] += r["control"]
    for r in data.get("converted", ()):
        days[r["day"]]["converted"] += r["n"] - r["control"]
        days[r["day"]]["revenue"] += float(r["revenue"] or 0)
    for part in ("sent", "feedback"):
        for r in data["message_days"][part]:
            for name in (*SENT, "opened", "clicked"):
                days[r["day"]][name] += int(r.get(name) or 0)
    for counts in days.values():
        counts["revenue"] = money(counts["revenue"])
    return [_rates({"day": day, **counts}) for day, counts in sorted(days.items())]


def _exit_rows(ended: Iterable[Any]) -> list[dict[str, Any]]:
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in ended:
        if r.status == "failed":
            how, why = "failed", f"failed at step {r.step}"
        elif r.end_reason == "goal":
            how, why = "converted", "goal reached"
        elif r.end_reason in ("completed", "archived"):
            how, why = r.end_reason, r.end_reason
        else:
            how, why = "exited", r.end_reason or "-"
        counts[(how, why)][1 if r.control else 0] += r.n
    total = sum(a + b for a, b in counts.values())
    rows = [
        {
            "outcome": how,
            "reason": why,
            "enrolments": a + b,
            "control": b,
            "share": ratio(a + b, total),
        }
        for (how, why), (a, b) in counts.items()
    ]
    return sorted(rows, key=lambda r: (-r["enrolments"], r["outcome"], r["reason"]))


def _summary(versions: list[dict[str, Any]], data: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "entered",
        "control",
        "waiting",
        "waiting_control",
        "converted",
        "control_converted",
        "revenue",
        "ended",
        *SENT,
        "opened",
        "clicked",
    )
    out: dict[str, Any] = {k: sum(v[k] for v in versions) for k in keys}
    out["revenue"] = money(out["revenue"])
    out["conversion_rate"] = ratio(out["converted"], out["entered"])
    out["control_conversion_rate"] = ratio(out["control_converted"], out["control"])
    out["revenue_per_entered"] = ratio(out["revenue"], out["entered"])
    return _rates(out)


# -- columns --------------------------------------------------------------------------------
def _counts(names: Iterable[str]) -> list[Column]:
    return [Column(n, TITLES.get(n, n.replace("_", " ").capitalize()), "int") for n in names]


def _rate_columns(names: Iterable[str]) -> list[Column]:
    return [Column(n, TITLES[n], "percent") for n in names]


def _message_columns(*, with_journey: bool) -> list[Column]:
    head = [Column("journey", "Journey")] if with_journey else []
    head += [
        Column("version", "Version", "int"),
        Column("step", "Step"),
        Column("template", "Template"),
        Column("variant", "Variant"),
        Column("channel", "Channel"),
    ]
    return head + _counts(COUNTS) + _rate_columns(r for r, _, _ in RATES)


def _step_columns() -> list[Column]:
    return [
        Column("version", "Version", "int"),
        Column("step", "Step"),
        Column("type", "Type"),
        *_counts(("runs", "waiting", "waiting_control", *SENT, "opened", "clicked")),
        *_rate_columns(("delivery_rate", "open_rate", "click_rate", "unsubscribe_rate")),
    ]


def _version_columns() -> list[Column]:
    return [
        Column("version", "Version", "int"),
        *_counts(("entered", "control", "waiting", "waiting_control", "converted")),
        *_counts(("control_converted",)),
        Column("conversion_rate", "Conversion rate", "percent"),
        Column("control_conversion_rate", "Control conversion rate", "percent"),
        Column("revenue", "Revenue", "money"),
        *_counts(("ended", *SENT, "opened", "clicked")),
        *_rate_columns(("open_rate", "click_rate")),
    ]


def _day_columns() -> list[Column]:
    return [
        Column("day", "Day", "date"),
        *_counts(("entered", "control", "converted")),
        Column("revenue", "Revenue", "money"),
        *_counts((*SENT, "opened", "clicked")),
        *_rate_columns(("open_rate", "click_rate")),
    ]


def _message_day_columns() -> list[Column]:
    return [
        Column("day", "Day", "date"),
        *_counts((*SENT, "opened", "clicked")),
        *_rate_columns(("delivery_rate", "open_rate", "click_rate")),
    ]


def _exit_columns() -> list[Column]:
    return [
        Column("outcome", "Outcome"),
        Column("reason", "Reason"),
        Column("enrolments", "Enrolments", "int"),
        Column("control", "Of them control", "int"),
        Column("share", "Share", "percent"),
    ]
