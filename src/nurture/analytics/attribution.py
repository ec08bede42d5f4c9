"""Attribution: which message gets the credit for a conversion.

A conversion is a named event (e.g. `Order Completed`, its revenue read from a property,
default `revenue`), or, without an event, a journey's goal conversion (the enrolment's
`converted_at` and `revenue`). Each conversion in the range is credited to at most ONE
message: the last (or, with `model="first"`, the first) message the contact was sent
within the window before the conversion (`sent_at` in [converted - window, converted]).
For goal conversions only the enrolment's own messages compete.

Ties (two messages sent at the same microsecond) go by outbox id: last touch takes the
higher id (the message written later), first touch the lower; the result never depends on
the order rows come back in.

Per message (journey, version, step, template, variant): attributed conversions and
revenue, recipients (contacts sent at least one such message in the range), conversions
and revenue per recipient. Holdout lift is the experiments report's business.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, func, select

from nurture.analytics.journey_metrics import period, ratio
from nurture.analytics.journey_queries import RECORDED
from nurture.analytics.report import Chart, Column, Report, Table
from nurture.conditions.durations import format_duration, parse_duration
from nurture.errors import NotFound, ValidationError
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import one_of

Model = Literal["last", "first"]
DEFAULT_WINDOW = timedelta(days=3)
_CHUNK = 5000
MessageKey = tuple[Any, ...]  # (journey, version, step, template, variant)


@dataclass(frozen=True, slots=True)
class Conversion:
    """One conversion: who, when, how much, and (goal conversions) which enrolment."""

    contact_id: int
    at: datetime
    revenue: float | None
    enrolment_id: int | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """One sent message, as attribution compares them."""

    id: int
    contact_id: int
    enrolment_id: int | None
    key: MessageKey
    sent_at: datetime


def window_of(value: str | timedelta | None) -> timedelta:
    """The attribution window (`3d`, `12h`, `1d12h`); ValidationError naming `window`."""
    if value is None or value == "":
        return DEFAULT_WINDOW
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValidationError(f"window: {exc}, not {value!r}", path="window") from None


def revenue_of(properties: Any, name: str) -> float | None:
    """The revenue a conversion event carries in property `name` (a number, or a numeric
    string); None when it has none."""
    value = (properties or {}).get(name) if isinstance(properties, dict) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def credit(
    conversion: Conversion, messages: list[Sent], window: timedelta, model: Model
) -> Sent | None:
    """The message credited with `conversion`, from the contact's messages sorted by
    (sent_at, id): the last (or first) one sent in [at - window, at]."""
    first = bisect_left(messages, conversion.at - window, key=_sent_at)
    upto = bisect_right(messages, conversion.at, key=_sent_at)  # sent at or before it
    candidates = messages[first:upto]
    if conversion.enrolment_id is not None:
        candidates = [m for m in candidates if m.enrolment_id == conversion.enrolment_id]
    if not candidates:
        return None
    return candidates[-1] if model == "last" else candidates[0]


def _sent_at(message: Sent) -> datetime:
    return message.sent_at


def attribution_report(
    db: Database,
    *,
    event: str | None = None,
    revenue_property: str = "revenue",
    window: str | timedelta | None = None,
    model: str = "last",
    journey: str | None = None,
    start: str | date | datetime | None = None,
    end: str | date | datetime | None = None,
    tz: str | None = "UTC",
) -> Report:
    """Conversions in [start, end) credited to the last (or first) message within the window."""
    lo, hi, zone = period(start, end, tz)
    span = window_of(window)
    if model not in ("last", "first"):
        raise ValidationError(f"model must be last or first, not {model!r}", path="model")
    chosen: Model = "last" if model == "last" else "first"
    with db.read() as conn:
        if (
            journey is not None
            and conn.execute(select(t.journeys.c.key).where(t.journeys.c.key == journey)).first()
            is None
        ):
            raise NotFound(f"no journey {journey!r}", path="journey", code="journey_not_found")
        conversions = (
            _events(conn, event, revenue_property, lo, hi)
            if event
            else _goals(conn, journey, lo, hi)
        )
        contacts = sorted({c.contact_id for c in conversions})
        sent = _sent(conn, contacts, lo - span if lo else None, hi)
        recipients = _recipients(conn, journey, lo, hi)
    credited: dict[MessageKey, list[float]] = defaultdict(lambda: [0, 0.0])
    attributed = revenue = attributed_revenue = 0.0
    for conversion in conversions:
        revenue += conversion.revenue or 0.0
        message = credit(conversion, sent.get(conversion.contact_id, []), span, chosen)
        if message is None or (journey is not None and message.key[0] != journey):
            continue
        attributed += 1
        attributed_revenue += conversion.revenue or 0.0
        credited[message.key][0] += 1
        credited[message.key][1] += conversion.revenue or 0.0
    rows = _rows(credited, recipients)
    name = event or "journey goal"
    summary = {
        "conversions": len(conversions),
        "revenue": revenue,
        "attributed": int(attributed),
        "attributed_revenue": attributed_revenue,
        "unattributed": len(conversions) - int(attributed),
        "attributed_share": ratio(attributed, len(conversions)),
    }
    by_journey = _journeys(rows)
    return Report(
        kind="attribution",
        title=f"Attribution of {name} ({chosen} touch, {format_duration(span)} window)",
        params={
            "event": event,
            "revenue_property": revenue_property if event else None,
            "window": format_duration(span),
            "model": chosen,
            "journey": journey,
            "from": lo,
            "to": hi,
            "tz": zone.key,
        },
        summary=summary,
        tables=[
            Table("messages", "By message", _columns(message=True), rows),
            Table("journeys", "By journey", _columns(message=False), by_journey),
        ],
        notes=[
            f"Each conversion is credited to the {chosen} message sent to the contact in the "
            f"{format_duration(span)} before it (sent_at ≤ conversion time); same-moment "
            "ties go to the " + ("higher" if chosen == "last" else "lower") + " outbox id.",
            "Recipients: contacts sent at least one such message in the range; conversions "
            "per recipient can exceed 1 when people convert more than once.",
        ],
        charts=[
            Chart(
                "bar",
                "messages",
                "message",
                ("attributed_revenue",),
                "Attributed revenue by message",
                "revenue",
            )
        ],
    )


# -- reading --------------------------------------------------------------------------------
def _events(
    conn: Connection, name: str, prop: str, lo: datetime | None, hi: datetime | None
) -> list[Conversion]:
    e = t.events.c
    query = select(e.contact_id, e.timestamp, e.properties).where(
        e.event == name, e.type == "track"
    )
    if lo is not None:
        query = query.where(e.timestamp >= lo)
    if hi is not None:
        query = query.where(e.timestamp < hi)
    return [
        Conversion(r.contact_id, r.timestamp, revenue_of(r.properties, prop))
        for r in conn.execute(query.order_by(e.timestamp, e.id))
    ]


def _goals(
    conn: Connection, journey: str | None, lo: datetime | None, hi: datetime | None
) -> list[Conversion]:
    n = t.enrolments.c
    query = select(n.id, n.contact_id, n.converted_at, n.revenue).where(n.converted_at.is_not(None))
    if journey is not None:
        query = query.where(n.journey_key == journey)
    if lo is not None:
        query = query.where(n.converted_at >= lo)
    if hi is not None:
        query = query.where(n.converted_at < hi)
    return [
        Conversion(r.contact_id, r.converted_at, r.revenue, r.id)
        for r in conn.execute(query.order_by(n.converted_at, n.id))
    ]


def _key(r: Any) -> MessageKey:
    return (r.journey_key, r.version, r.step, r.template, r.variant)


def _sent(
    conn: Connection, contacts: list[int], lo: datetime | None, hi: datetime | None
) -> dict[int, list[Sent]]:
    """The contacts' sent messages in [lo, hi), each contact's sorted by (sent_at, id)."""
    o = t.outbox.c
    out: dict[int, list[Sent]] = defaultdict(list)
    for i in range(0, len(contacts), _CHUNK):
        query = select(
            o.id,
            o.contact_id,
            o.enrolment_id,
            o.journey_key,
            o.version,
            o.step,
            o.template,
            o.variant,
            o.sent_at,
        ).where(
            one_of(conn, o.contact_id, contacts[i : i + _CHUNK]),
            o.sent_at.is_not(None),
            o.status.in_(RECORDED),
        )
        if lo is not None:
            query = query.where(o.sent_at >= lo)
        if hi is not None:
            query = query.where(o.sent_at < hi)
        for r in conn.execute(query):
            out[r.contact_id].append(Sent(r.id, r.contact_id, r.enrolment_id, _key(r), r.sent_at))
    for messages in out.values():
        messages.sort(key=lambda m: (m.sent_at, m.id))
    return out


def _recipients(
    conn: Connection, journey: str | None, lo: datetime | None, hi: datetime | None
) -> dict[MessageKey, int]:
    """Contacts sent at least one message of each kind in [lo, hi)."""
    o = t.outbox.c
    keys = (o.journey_key, o.version, o.step, o.template, o.variant)
    query = (
        select(*keys, func.count(o.contact_id.distinct()).label("n"))
        .where(o.sent_at.is_not(None), o.status.in_(RECORDED))
        .group_by(*keys)
    )
    if journey is not None:
        query = query.where(o.journey_key == journey)
    if lo is not None:
        query = query.where(o.sent_at >= lo)
    if hi is not None:
        query = query.where(o.sent_at < hi)
    return {_key(r): int(r.n) for r in conn.execute(query)}


# -- rows -----------------------------------------------------------------------------------
def _label(key: MessageKey) -> str:
    journey, version, step, template, variant = key
    where = f"{journey} v{version} {step}" if journey else "(no journey)"
    return f"{where}: {template or '-'}" + (f" [{variant}]" if variant else "")


def _rows(
    credited: dict[MessageKey, list[float]], recipients: dict[MessageKey, int]
) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(
        set(credited) | set(recipients), key=lambda k: tuple((v is None, str(v)) for v in k)
    ):
        conversions, revenue = credited.get(key, [0, 0.0])
        people = recipients.get(key, 0)
        journey, version, step, template, variant = key
        rows.append(
            {
                "message": _label(key),
                "journey": journey,
                "version": version,
                "step": step,
                "template": template,
                "variant": variant,
                "recipients": people,
                "conversions": int(conversions),
                "attributed_revenue": float(revenue),
                "conversion_rate": ratio(conversions, people),
                "revenue_per_recipient": ratio(revenue, people),
            }
        )
    return rows


def _journeys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Recipients of a journey: summed per message kind would count a person once per
    # message they got, so the journey row reports conversions and revenue only.
    totals: dict[Any, list[float]] = defaultdict(lambda: [0, 0.0])
    for r in rows:
        totals[r["journey"]][0] += r["conversions"]
        totals[r["journey"]][1] += r["attributed_revenue"]
    return [
        {"journey": j, "conversions": int(c), "attributed_revenue": rev}
        for j, (c, rev) in sorted(totals.items(), key=lambda kv: (kv[0] is None, str(kv[0])))
    ]


def _columns(*, message: bool) -> list[Column]:
    if not message:
        return [
            Column("journey", "Journey"),
            Column("conversions", "Conversions", "int"),
            Column("attributed_revenue", "Attributed revenue", "money"),
        ]
    return [
        Column("message", "Message"),
        Column("journey", "Journey"),
        Column("version", "Version", "int"),
        Column("step", "Step"),
        Column("template", "Template"),
        Column("variant", "Variant"),
        Column("recipients", "Recipients", "int"),
        Column("conversions", "Conversions", "int"),
        Column("attributed_revenue", "Attributed revenue", "money"),
        Column("conversion_rate", "Conversions per recipient", "percent"),
        Column("revenue_per_recipient", "Revenue per recipient", "money"),
    ]
