"""Journeys as data: drafts, immutable published versions, and the journey's status.

A draft is edited freely; `publish` turns it into the next version (or does nothing when
it equals the newest one). Enrolments remember their version and finish on it. Status:
`draft` (never published), `active`, `paused` (enrolments hold: no step runs, nobody
enters) and `archived` (live enrolments end, nobody enters).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, func, select, update

from nurture.errors import NotFound, ValidationError
from nurture.journeys.matching import reactions
from nurture.journeys.model import Journey, dump_journey, parse_journey
from nurture.store import tables as t
from nurture.store.counters import counter, raise_counter

Status = Literal["draft", "active", "paused", "archived"]
COUNTER = "journeys_version"


@dataclass(frozen=True, slots=True)
class JourneyRow:
    key: str
    name: str
    status: str
    draft: dict[str, Any] | None
    version: int | None
    source: str
    created_at: datetime
    updated_at: datetime
    scanned_to: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "status": self.status,
            "version": self.version,
            "draft": self.draft,
            "source": self.source,
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


def _row(r: Any) -> JourneyRow:
    return JourneyRow(
        r.key, r.name, r.status, r.draft, r.version, r.source, r.created_at, r.updated_at,
        r.scanned_to,
    )  # fmt: skip


def get(conn: Connection, key: str) -> JourneyRow | None:
    row = conn.execute(select(t.journeys).where(t.journeys.c.key == key)).first()
    return _row(row) if row is not None else None


def require(conn: Connection, key: str) -> JourneyRow:
    found = get(conn, key)
    if found is None:
        raise NotFound(f"no journey {key!r}", code="journey_not_found")
    return found


def all_journeys(conn: Connection) -> list[JourneyRow]:
    return [_row(r) for r in conn.execute(select(t.journeys).order_by(t.journeys.c.key))]


def save_draft(conn: Connection, journey: Journey, source: str, now: datetime) -> JourneyRow:
    """Store `journey` as the draft of its key (a new journey starts as a draft)."""
    existing = get(conn, journey.key)
    if existing is not None and existing.status == "archived":
        raise ValidationError(
            f"journey {journey.key!r} is archived; use a new key", code="journey_archived"
        )
    body = dump_journey(journey)
    if existing is None:
        conn.execute(
            t.journeys.insert().values(
                key=journey.key,
                name=journey.name,
                status="draft",
                draft=body,
                version=None,
                source=source,
                created_at=now,
                updated_at=now,
            )
        )
    else:
        conn.execute(
            update(t.journeys)
            .where(t.journeys.c.key == journey.key)
            .values(name=journey.name, draft=body, source=source, updated_at=now)
        )
    return require(conn, journey.key)


def version_body(conn: Connection, key: str, version: int) -> dict[str, Any] | None:
    v = t.journey_versions.c
    body: dict[str, Any] | None = conn.execute(
        select(v.body).where(v.journey_key == key, v.version == version)
    ).scalar()
    return body


def publish(conn: Connection, key: str, now: datetime) -> tuple[int, bool]:
    """Publish the draft: (version, whether it is new). An unchanged draft publishes
    nothing; a draft journey becomes active, a paused one stays paused."""
    row = require(conn, key)
    if row.status == "archived":
        raise ValidationError(f"journey {key!r} is archived", code="journey_archived")
    if row.draft is None:
        if row.version is None:
            raise ValidationError(f"journey {key!r} has no draft", code="journey_no_draft")
        return row.version, False
    if row.version is not None and version_body(conn, key, row.version) == row.draft:
        conn.execute(update(t.journeys).where(t.journeys.c.key == key).values(draft=None))
        return row.version, False
    v = t.journey_versions.c
    newest = conn.execute(select(func.max(v.version)).where(v.journey_key == key)).scalar()
    number = int(newest or 0) + 1
    conn.execute(
        t.journey_versions.insert().values(
            journey_key=key, version=number, body=row.draft, published_at=now
        )
    )
    status = "active" if row.status == "draft" else row.status
    conn.execute(
        update(t.journeys)
        .where(t.journeys.c.key == key)
        .values(version=number, draft=None, status=status, updated_at=now)
    )
    raise_counter(conn, COUNTER)
    return number, True


def set_status(conn: Connection, key: str, status: Status, now: datetime) -> None:
    conn.execute(
        update(t.journeys).where(t.journeys.c.key == key).values(status=status, updated_at=now)
    )
    raise_counter(conn, COUNTER)


def versions(conn: Connection, key: str) -> list[dict[str, Any]]:
    v = t.journey_versions.c
    return [
        {"version": r.version, "publishedAt": r.published_at.isoformat(), "definition": r.body}
        for r in conn.execute(
            select(v.version, v.published_at, v.body)
            .where(v.journey_key == key)
            .order_by(v.version)
        )
    ]


def mark_scanned(conn: Connection, key: str, moment: datetime) -> None:
    conn.execute(update(t.journeys).where(t.journeys.c.key == key).values(scanned_to=moment))


class Versions:
    """Published versions, parsed once: they never change."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], Journey] = {}
        self._lock = threading.Lock()
        self._status: tuple[int, dict[str, JourneyRow]] = (-1, {})
        self._reactions: tuple[int, frozenset[tuple[str, str]]] = (-1, frozenset())

    def get(self, conn: Connection, key: str, version: int) -> Journey:
        with self._lock:
            found = self._cache.get((key, version))
        if found is not None:
            return found
        body = version_body(conn, key, version)
        if body is None:
            raise NotFound(f"journey {key!r} has no version {version}", code="journey_not_found")
        journey = parse_journey(body)
        with self._lock:
            self._cache[(key, version)] = journey
        return journey

    def journeys(self, conn: Connection, now: int | None = None) -> dict[str, JourneyRow]:
        """Every journey by key, re-read only when one was published or changed status.
        `now`: the change counter, when the caller has just read it."""
        now = counter(conn, COUNTER) if now is None else now
        with self._lock:
            if self._status[0] == now:
                return self._status[1]
        rows = {r.key: r for r in all_journeys(conn)}
        with self._lock:
            self._status = (now, rows)
        return rows

    def journeys_and_reactions(
        self, conn: Connection
    ) -> tuple[dict[str, JourneyRow], frozenset[tuple[str, str]]]:
        """`journeys` and `reactions`, the change counter read once."""
        now = counter(conn, COUNTER)
        return self.journeys(conn, now), self.reactions(conn, now)

    def reactions(self, conn: Connection, now: int | None = None) -> frozenset[tuple[str, str]]:
        """(type, name) of the events that may act on an enrolment of any version ever
        published (`matching.reactions`; a name `*`: any of the type), re-read when one
        is published. An event not among them can only start enrolments. `now`: the
        change counter, when the caller has just read it."""
        now = counter(conn, COUNTER) if now is None else now
        with self._lock:
            if self._reactions[0] == now:
                return self._reactions[1]
        v = t.journey_versions.c
        found: set[tuple[str, str]] = set()
        for key, version in conn.execute(select(v.journey_key, v.version)).all():
            found |= reactions(self.get(conn, key, version))
        result = frozenset(found)
        with self._lock:
            self._reactions = (now, result)
        return result
