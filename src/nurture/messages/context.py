"""What a template sees, built from the database: the contact (columns, traits, computed
traits), the event and journey a message comes from, and the links tracking made.

    {"contact": {"id", "email", ..., <every trait>, "traits": {...}, "computed": {...}},
     "event": {"name", "type", "timestamp", "message_id", "properties"},
     "journey": {"key", "version", "step", "enrolment"},
     "links": {"unsubscribe", "preferences"}}

Empty values (None, blank text) are left out, so a template never prints them: they are
missing, and take the template's default or skip the message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from nurture.conditions.computed import computed_values
from nurture.conditions.facts import load_facts
from nurture.errors import NotFound
from nurture.segments.definitions import DefinitionStore
from nurture.segments.engine import Engine
from nurture.segments.registry import Registry
from nurture.store import tables as t
from nurture.store.bulk import one_of

_COLUMNS = ("id", "user_id", "email", "phone", "country", "timezone", "locale")
_TIMES = ("created_at", "first_seen_at", "last_seen_at")
_MAX_HOPS = 32


_SCALARS = frozenset({int, float, bool, type(None)})


def clean(value: Any) -> Any:
    """`value` without None and blank text, in mappings and lists alike."""
    kind = type(value)
    if kind in _SCALARS:  # the common leaves first: this runs for every value of a message
        return value
    if kind is str:
        return None if not value or value.isspace() else value
    if kind is dict or isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            item = clean(item)
            if item is not None:
                out[str(key)] = item
        return out
    if isinstance(value, list):
        return [item for item in (clean(v) for v in value) if item is not None]
    if isinstance(value, str) and (not value or value.isspace()):  # a str subclass
        return None
    return value


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and (not value or value.isspace()))


def contacts(
    conn: Connection,
    contact_ids: Sequence[int],
    *,
    engine: Engine | None = None,
    now: datetime | None = None,
) -> dict[int, dict[str, Any]]:
    """The `contact` part for each id that still exists (a merged id gives the contact it
    was merged into); one query for contacts, one batch for computed traits."""
    c = t.contacts.c
    wanted = {int(i): int(i) for i in contact_ids}
    rows: dict[int, Any] = {}
    pending = set(wanted)
    for _ in range(_MAX_HOPS):
        if not pending:
            break
        found = {
            row.id: row
            for row in conn.execute(select(t.contacts).where(one_of(conn, c.id, sorted(pending))))
        }
        rows.update(found)
        pending = {row.merged_into for row in found.values() if row.merged_into is not None}
        pending -= set(rows)

    def live(contact_id: int) -> Any:
        row = rows.get(contact_id)
        for _ in range(_MAX_HOPS):
            if row is None or row.merged_into is None:
                return row
            row = rows.get(row.merged_into)
        return None

    survivors = {asked: row for asked in wanted if (row := live(asked)) is not None}
    computed = _computed(conn, sorted({r.id for r in survivors.values()}), engine, now)
    documents: dict[int, dict[str, Any]] = {}
    for asked, row in survivors.items():
        traits = clean(row.traits or {})
        document: dict[str, Any] = {**traits}
        document.update({name: getattr(row, name) for name in _COLUMNS})
        document.update(
            {name: getattr(row, name).isoformat() for name in _TIMES if getattr(row, name)}
        )
        document["traits"] = traits
        document["computed"] = clean(computed.get(row.id, {}))
        # Traits and computed values are clean already; a column may be empty (and then
        # hides a trait of the same name, as cleaning the whole document would).
        documents[asked] = {k: v for k, v in document.items() if not _blank(v)}
    return documents


def _computed(
    conn: Connection, ids: list[int], engine: Engine | None, now: datetime | None
) -> dict[int, dict[str, Any]]:
    """Every declared computed trait of these contacts, as the profile shows them."""
    if engine is None or now is None or not ids:
        return {}
    # Only the computed traits: the engine's registry parses every definition, and what
    # it cannot parse would cost every message its context.
    registry = Registry.build(DefinitionStore.all(conn, "computed"))
    if not registry.computed:
        return {}
    names: set[tuple[str, str]] = set()
    for trait in registry.computed.values():
        names |= trait.event_names()
    facts = load_facts(conn, ids, event_names=names, now=now)
    env = registry.env(now, engine.computed_state(conn))
    return {contact_id: computed_values(f, env) for contact_id, f in facts.items()}


def contact(
    conn: Connection, contact_id: int, *, engine: Engine | None, now: datetime
) -> dict[str, Any]:
    """One contact's `contact` part (for previews); NotFound if there is none."""
    found = contacts(conn, [contact_id], engine=engine, now=now)
    if contact_id not in found:
        raise NotFound(f"no contact with id {contact_id}", path="contact_id")
    return found[contact_id]


def event_part(event: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An event as journeys keep it (`to_context`) as templates see it."""
    if not event:
        return None
    part: dict[str, Any] = clean(
        {
            "name": event.get("event"),
            "type": event.get("type"),
            "timestamp": event.get("timestamp"),
            "message_id": event.get("messageId"),
            "properties": event.get("properties") or {},
        }
    )
    return part


def message_context(
    contact_part: dict[str, Any],
    payload: Mapping[str, Any] | None,
    links: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The whole context of one message: its contact, the outbox payload's event (the one
    that ended a wait, else the trigger) and journey, and the links."""
    payload = payload or {}
    context: dict[str, Any] = {"contact": contact_part, "links": clean(dict(links or {}))}
    event = event_part(payload.get("event") or payload.get("trigger"))
    if event is not None:
        context["event"] = event
    journey = payload.get("journey")
    if isinstance(journey, Mapping):
        context["journey"] = clean({**journey, "enrolment": payload.get("enrolment")})
    return context


def build_contexts(
    conn: Connection,
    rows: Sequence[Any],
    *,
    engine: Engine | None = None,
    now: datetime | None = None,
    links: Sequence[Mapping[str, str] | None] | None = None,
) -> list[dict[str, Any] | None]:
    """One context per outbox row (`contact_id`, `payload`; a Row or a mapping), in the
    rows' order: two messages to one contact can come from different events. None where
    the contact no longer exists (erased). Computed traits need `engine` and `now`;
    `links`, when given, are one mapping per row."""
    ids = [int(_get(r, "contact_id")) for r in rows]
    people = contacts(conn, ids, engine=engine if now else None, now=now) if ids else {}
    out: list[dict[str, Any] | None] = []
    for index, (row, contact_id) in enumerate(zip(rows, ids, strict=True)):
        person = people.get(contact_id)
        row_links = links[index] if links is not None else None
        out.append(
            None if person is None else message_context(person, _get(row, "payload"), row_links)
        )
    return out


def _get(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, Mapping) else getattr(row, name)
