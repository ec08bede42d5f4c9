"""Segments as the admin API and the CLI see them: define, preview, list members, read
the history of entries and exits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select

from nurture.clock import Clock
from nurture.conditions.model import dump_condition, parse_condition
from nurture.conditions.references import condition_references
from nurture.errors import NotFound, NurtureError, ValidationError
from nurture.segments.definitions import DefinitionStore, StoredDefinition, parse_segment
from nurture.segments.engine import Engine, SegmentResult
from nurture.segments.registry import Registry
from nurture.store import Database
from nurture.store import tables as t


class Conflict(NurtureError):
    code = "conflict"
    http_status = 409


@dataclass(frozen=True)
class Preview:
    count: int
    sample: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sample": self.sample}


class SegmentService:
    def __init__(self, db: Database, clock: Clock, engine: Engine) -> None:
        self.db = db
        self.clock = clock
        self.engine = engine

    def all(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            stored = DefinitionStore.all(conn, "segment")
            m = t.segment_memberships.c
            counts: dict[str, int] = {
                key: int(n)
                for key, n in conn.execute(
                    select(m.segment_key, func.count()).group_by(m.segment_key)
                ).all()
            }
        return [{**d.to_dict(), "members": counts.get(d.key, 0)} for d in stored]

    def get(self, key: str) -> dict[str, Any]:
        with self.db.read() as conn:
            stored = DefinitionStore.get(conn, "segment", key)
            if stored is None:
                raise NotFound(f"segment {key!r} does not exist", path="key")
            m = t.segment_memberships.c
            count = conn.execute(select(func.count()).where(m.segment_key == key)).scalar_one()
        return {**stored.to_dict(), "members": int(count)}

    def save(self, data: Any, *, source: str = "api", evaluate: bool = True) -> dict[str, Any]:
        """Create or replace a segment and evaluate it; errors name the bad field, a
        reference to a missing segment or a cycle is refused."""
        segment = parse_segment(data)
        body = {
            "name": segment.name,
            "description": segment.description,
            "where": dump_condition(segment.where),
        }
        body = {k: v for k, v in body.items() if v != ""}
        now = self.clock.now()
        with self.db.write() as conn:
            existing = DefinitionStore.get(conn, "segment", segment.key)
            if existing is not None and existing.source == "file" and source != "file":
                raise Conflict(
                    f"segment {segment.key!r} is defined in the project files; change it there",
                    path="key",
                )
            self.check(conn, segment.key, body)
            DefinitionStore.put(
                conn, "segment", segment.key, body, name=segment.name, source=source, now=now
            )
        if evaluate:
            self.engine.evaluate_segment(segment.key)
            # Segments built on this one follow at once, in dependency order.
            with self.db.read() as conn:
                reg = self.engine.registry(conn)
            changed = {segment.key}
            for other in reg.order:
                if (
                    other not in changed
                    and condition_references([reg.segments[other].where]).segments & changed
                ):
                    self.engine.evaluate_segment(other)
                    changed.add(other)
        return self.get(segment.key)

    def check(self, conn: Any, key: str, body: dict[str, Any]) -> None:
        """Refuse a definition that would not resolve with the others in force."""
        stored = [
            d for d in DefinitionStore.all(conn) if not (d.kind == "segment" and d.key == key)
        ]
        trial = [
            *stored,
            StoredDefinition(
                "segment",
                key,
                "",
                body,
                "api",
                "active",
                None,
                self.clock.now(),
                self.clock.now(),
                None,
            ),
        ]
        problem = Registry.build(trial).problems.get(("segment", key))
        if problem:
            code = "segment_cycle" if "form a cycle" in problem else "unknown_reference"
            raise ValidationError(problem, path="where", code=code)

    def delete(self, key: str) -> None:
        with self.db.write() as conn:
            existing = DefinitionStore.get(conn, "segment", key)
            if existing is None:
                raise NotFound(f"segment {key!r} does not exist", path="key")
            reg = self.engine.registry(conn)
            users = sorted(
                other
                for other, segment in reg.segments.items()
                if other != key and key in condition_references([segment.where]).segments
            )
            if users:
                raise Conflict(
                    f"segment {key!r} is used by {', '.join(users)}; change those first", path="key"
                )
            DefinitionStore.delete(conn, "segment", key)
            m = t.segment_memberships.c
            conn.execute(t.segment_memberships.delete().where(m.segment_key == key))

    def evaluate(self, key: str) -> SegmentResult:
        with self.db.read() as conn:
            if DefinitionStore.get(conn, "segment", key) is None:
                raise NotFound(f"segment {key!r} does not exist", path="key")
        return self.engine.evaluate_segment(key)

    def preview(self, where: Any, *, sample: int = 10) -> Preview:
        """Count and a sample of who matches `where` now, without saving anything."""
        condition = parse_condition(where)
        count, ids = self.engine.preview(condition, sample=sample)
        return Preview(count, self._describe(ids))

    def preview_key(self, key: str, *, sample: int = 10) -> Preview:
        stored = self.get(key)
        return self.preview(stored["definition"]["where"], sample=sample)

    def _describe(self, ids: list[int]) -> list[dict[str, Any]]:
        if not ids:
            return []
        c = t.contacts.c
        with self.db.read() as conn:
            rows = conn.execute(
                select(c.id, c.user_id, c.email, c.traits).where(c.id.in_(ids)).order_by(c.id)
            )
            return [
                {
                    "id": r.id,
                    "userId": r.user_id,
                    "email": r.email,
                    "name": (r.traits or {}).get("name"),
                }
                for r in rows
            ]

    def members(self, key: str, *, after: int = 0, limit: int = 100) -> dict[str, Any]:
        self.get(key)
        m = t.segment_memberships.c
        with self.db.read() as conn:
            rows = conn.execute(
                select(m.contact_id, m.entered_at)
                .where(m.segment_key == key, m.contact_id > after)
                .order_by(m.contact_id)
                .limit(limit)
            ).all()
        items = [{"contactId": r.contact_id, "enteredAt": r.entered_at.isoformat()} for r in rows]
        return {"items": items, "next": items[-1]["contactId"] if len(items) == limit else None}

    def changes(
        self,
        key: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Entries and exits of a segment, oldest first."""
        h = t.segment_changes.c
        where = [h.segment_key == key]
        if since is not None:
            where.append(h.changed_at >= since)
        if until is not None:
            where.append(h.changed_at < until)
        with self.db.read() as conn:
            rows = conn.execute(
                select(h.contact_id, h.change, h.changed_at)
                .where(and_(*where))
                .order_by(h.changed_at, h.id)
                .limit(limit)
            )
            return [
                {"contactId": r.contact_id, "change": r.change, "at": r.changed_at.isoformat()}
                for r in rows
            ]
