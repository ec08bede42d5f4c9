"""What the in-memory evaluator knows about one contact, and how it is loaded.

Times are integers (microseconds since 1970 UTC), as SQLite stores them, so that the
evaluator compares exactly what the SQL compiler compares.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from nurture.store import tables as t
from nurture.store.bulk import one_of
from nurture.store.types import to_microseconds

# Reserved traits that live in columns (normalised at ingest); every other trait path
# reads the traits JSON.
TEXT_COLUMNS = ("email", "phone", "country", "timezone", "locale", "user_id")
TIME_COLUMNS = ("first_seen_at", "last_seen_at", "created_at")


@dataclass(slots=True)
class EventFact:
    id: int
    type: str
    name: str | None
    at: int  # microseconds since 1970 UTC
    properties: dict[str, Any]


@dataclass(slots=True)
class ContactFacts:
    """One contact as of one evaluation: profile, events (sorted by time, then id) and
    the stored state that conditions may refer to."""

    id: int
    columns: dict[str, Any]  # TEXT_COLUMNS as str | None, TIME_COLUMNS as int | None
    traits: dict[str, Any]
    events: list[EventFact] = field(default_factory=list)
    segments: set[str] = field(default_factory=set)
    stages: dict[str, str] = field(default_factory=dict)
    stages_ever: dict[str, set[str]] = field(default_factory=dict)
    scores: dict[str, tuple[float, str]] = field(default_factory=dict)
    # (state, recorded at in microseconds) by (channel, topic); topic "*" for all marketing.
    consents: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    # Stored CLV predictions by model, then measure (p_alive, expected_value, ...).
    clv: dict[str, dict[str, float | None]] = field(default_factory=dict)


def _us(value: datetime | None) -> int | None:
    return None if value is None else to_microseconds(value)


def load_facts(
    conn: Connection,
    contact_ids: Sequence[int],
    *,
    event_names: Iterable[tuple[str, str]] | None = None,
    now: datetime | None = None,
) -> dict[int, ContactFacts]:
    """Facts for live contacts among `contact_ids` (merged tombstones are left out).

    `event_names` limits the events loaded to these (type, name) pairs, with name `*` for
    every event of a type; None loads all. `now` leaves out events after it.
    """
    c = t.contacts.c
    facts: dict[int, ContactFacts] = {}
    if not contact_ids:
        return facts
    rows = conn.execute(
        select(
            c.id,
            c.traits,
            c.first_seen_at,
            c.last_seen_at,
            c.created_at,
            *(getattr(c, name) for name in TEXT_COLUMNS),
        ).where(one_of(conn, c.id, list(contact_ids)), c.merged_into.is_(None))
    )
    for row in rows:
        columns = {name: getattr(row, name) for name in TEXT_COLUMNS}
        columns.update({name: _us(getattr(row, name)) for name in TIME_COLUMNS})
        facts[row.id] = ContactFacts(id=row.id, columns=columns, traits=row.traits or {})
    ids = list(facts)
    if not ids:
        return facts
    _load_events(conn, facts, ids, event_names, now)
    m = t.segment_memberships.c
    for row in conn.execute(
        select(m.contact_id, m.segment_key).where(one_of(conn, m.contact_id, ids))
    ):
        facts[row.contact_id].segments.add(row.segment_key)
    s = t.contact_stages.c
    for row in conn.execute(
        select(s.contact_id, s.model, s.stage).where(one_of(conn, s.contact_id, ids))
    ):
        facts[row.contact_id].stages[row.model] = row.stage
    h = t.stage_changes.c
    ever: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for row in conn.execute(
        select(h.contact_id, h.model, h.to_stage).distinct().where(one_of(conn, h.contact_id, ids))
    ):
        ever[row.contact_id][row.model].add(row.to_stage)
    for contact_id, by_model in ever.items():
        facts[contact_id].stages_ever = dict(by_model)
    sc = t.contact_scores.c
    for row in conn.execute(
        select(sc.contact_id, sc.model, sc.score, sc.temperature).where(
            one_of(conn, sc.contact_id, ids)
        )
    ):
        facts[row.contact_id].scores[row.model] = (row.score, row.temperature)
    cs = t.consents.c
    for row in conn.execute(
        select(cs.contact_id, cs.channel, cs.topic, cs.state, cs.recorded_at).where(
            one_of(conn, cs.contact_id, ids)
        )
    ):
        recorded = to_microseconds(row.recorded_at)
        facts[row.contact_id].consents[(row.channel, row.topic)] = (row.state, recorded)
    # -- clv: the stored predictions `clv` computed traits read ---------------------------
    p = t.clv_predictions.c
    measures = ("p_alive", "expected_purchases", "expected_spend", "expected_value")
    for row in conn.execute(
        select(p.contact_id, p.model, *(p[m] for m in measures)).where(
            one_of(conn, p.contact_id, ids)
        )
    ):
        facts[row.contact_id].clv[row.model] = {m: getattr(row, m) for m in measures}
    # -- end clv ----------------------------------------------------------------------------
    return facts


def _load_events(
    conn: Connection,
    facts: dict[int, ContactFacts],
    ids: list[int],
    event_names: Iterable[tuple[str, str]] | None,
    now: datetime | None,
) -> None:
    e = t.events.c
    query = select(e.id, e.contact_id, e.type, e.event, e.timestamp, e.properties).where(
        one_of(conn, e.contact_id, ids)
    )
    if now is not None:
        query = query.where(e.timestamp <= now)
    wanted: set[tuple[str, str]] | None = None
    if event_names is not None:
        wanted = set(event_names)
        if not wanted:
            return
        names = {name for _, name in wanted if name != "*"}
        if not any(name == "*" for _, name in wanted):
            query = query.where(one_of(conn, e.event, sorted(names)))
    for row in conn.execute(query.order_by(e.contact_id, e.timestamp, e.id)):
        if (
            wanted is not None
            and (row.type, row.event) not in wanted
            and (row.type, "*") not in wanted
        ):
            continue
        facts[row.contact_id].events.append(
            EventFact(
                row.id, row.type, row.event, to_microseconds(row.timestamp), row.properties or {}
            )
        )
