"""Journeys for the doors (admin API, CLI, project files): validate, save drafts,
publish, pause, resume, archive, enrol through the API, and look at enrolments."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select, update

from nurture.errors import NotFound, ValidationError
from nurture.journeys import store
from nurture.journeys.check import Catalog, problems
from nurture.journeys.entry import EntryResult
from nurture.journeys.model import Journey, parse_journey
from nurture.journeys.runtime import JourneyRuntime
from nurture.segments.definitions import DefinitionStore
from nurture.store import tables as t
from nurture.store.bulk import one_of

TEMPLATE_FOLDER = "templates"


class JourneyService:
    def __init__(self, runtime: JourneyRuntime, project_dir: Path) -> None:
        self.runtime = runtime
        self.db = runtime.db
        self.clock = runtime.clock
        self.project_dir = project_dir

    # -- definitions ---------------------------------------------------------------------
    def catalog(self, conn: Connection) -> Catalog:
        """What journeys may name: segments, score models, templates (files in the
        project's templates/ folder, by name without extension, or stored ones)."""
        stored = DefinitionStore.all(conn)
        folder = self.project_dir / TEMPLATE_FOLDER
        templates = {p.name.split(".")[0] for p in folder.iterdir()} if folder.is_dir() else set()
        templates |= {d.key for d in stored if d.kind == "template"}
        registry = self.runtime.segments.registry(conn)
        return Catalog(
            segments={d.key for d in stored if d.kind == "segment"},
            templates=templates,
            score_models={d.key for d in stored if d.kind == "score_model"},
            reference_problem=registry.reference_problem,
        )

    def validate(
        self, data: Any, *, path: str = "", catalog: Catalog | None = None
    ) -> tuple[Journey, list[ValidationError]]:
        """The journey and every problem with it as a whole (a shape error raises).
        `catalog` replaces what is stored (project files checked before applying)."""
        journey = parse_journey(data, path=path)
        if catalog is None:
            with self.db.read() as conn:
                catalog = self.catalog(conn)
        found = problems(journey, catalog)
        if path:
            for problem in found:
                problem.path = f"{path}.{problem.path}" if problem.path else path
        return journey, found

    def save(
        self, data: Any, *, source: str = "api", publish: bool = False, check: bool = True
    ) -> dict[str, Any]:
        """Save a draft (valid as a whole), and publish it if asked. `check=False` is for
        callers that checked it already, against definitions not stored yet."""
        journey, found = self.validate(data) if check else (parse_journey(data), [])
        if found:
            first = found[0]
            if len(found) > 1:
                first.message += f" (and {len(found) - 1} more)"
            raise first
        now = self.clock.now()
        with self.db.write() as conn:
            store.save_draft(conn, journey, source, now)
            if publish:
                store.publish(conn, journey.key, now)
            return self._describe(conn, journey.key)

    def publish(self, key: str) -> dict[str, Any]:
        with self.db.read() as conn:
            draft = store.require(conn, key).draft
        if draft is not None:
            _journey, found = self.validate(draft)
            if found:
                raise found[0]
        with self.db.write() as conn:
            store.publish(conn, key, self.clock.now())
            return self._describe(conn, key)

    def get(self, key: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._describe(conn, key)

    def all(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return [self._describe(conn, row.key) for row in store.all_journeys(conn)]

    def versions(self, key: str) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            store.require(conn, key)
            return store.versions(conn, key)

    def definition(self, key: str, version: int | None = None) -> Journey:
        """The published version (the newest unless named)."""
        with self.db.read() as conn:
            row = store.require(conn, key)
            number = version or row.version
            if number is None:
                raise NotFound(f"journey {key!r} is not published", code="journey_not_published")
            return self.runtime.journey(conn, key, number)

    def _describe(self, conn: Connection, key: str) -> dict[str, Any]:
        row = store.require(conn, key)
        n = t.enrolments.c
        counts = {
            status: count
            for status, count in conn.execute(
                select(n.status, func.count()).where(n.journey_key == key).group_by(n.status)
            )
        }
        return {**row.to_dict(), "enrolments": counts}

    # -- status --------------------------------------------------------------------------
    def pause(self, key: str) -> dict[str, Any]:
        return self._status(key, "paused", allowed=("active",))

    def resume(self, key: str) -> dict[str, Any]:
        return self._status(key, "active", allowed=("paused",))

    def archive(self, key: str) -> dict[str, Any]:
        """Archive: live enrolments end (reason `archived`), nobody enters again."""
        now = self.clock.now()
        with self.db.write() as conn:
            store.require(conn, key)
            n = t.enrolments.c
            conn.execute(
                update(t.enrolments)
                .where(n.journey_key == key, n.status == "active")
                .values(status="exited", end_reason="archived", ended_at=now, due_at=None)
            )
            store.set_status(conn, key, "archived", now)
            return self._describe(conn, key)

    def _status(
        self, key: str, status: store.Status, *, allowed: tuple[str, ...]
    ) -> dict[str, Any]:
        with self.db.write() as conn:
            row = store.require(conn, key)
            if row.status not in allowed:
                raise ValidationError(
                    f"journey {key!r} is {row.status}; only a journey that is "
                    f"{' or '.join(allowed)} can be made {status}",
                    code="journey_status",
                )
            store.set_status(conn, key, status, self.clock.now())
            return self._describe(conn, key)

    # -- enrolments ----------------------------------------------------------------------
    def enrol(
        self,
        key: str,
        contact_id: int,
        *,
        idempotency_key: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> EntryResult:
        """Enter a contact through the API (entry rules apply)."""
        now = self.clock.now()
        with self.db.write() as conn:
            row = store.require(conn, key)
            if row.status != "active" or row.version is None:
                raise ValidationError(
                    f"journey {key!r} is {row.status}: only an active journey takes entries",
                    code="journey_status",
                )
            journey = self.runtime.journey(conn, key, row.version)
            holds = self.runtime.holds_for(conn, now)(contact_id)
            token = idempotency_key or now.isoformat()
            return self.runtime.entries.enter(
                conn,
                journey,
                row.version,
                contact_id,
                entry_key=f"api:{contact_id}:{token}",
                trigger={"api": True, "properties": context or {}},
                now=now,
                holds=holds,
            )

    def enrolments(
        self, key: str, *, status: str | None = None, limit: int = 100, after: int = 0
    ) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            store.require(conn, key)
            n = t.enrolments.c
            query = select(t.enrolments).where(n.journey_key == key, n.id > after)
            if status:
                query = query.where(n.status == status)
            rows = conn.execute(query.order_by(n.id).limit(limit)).all()
            return [_enrolment_dict(r) for r in rows]

    def enrolment(self, enrolment_id: int) -> dict[str, Any]:
        """One enrolment, with the steps it ran and the messages it wrote."""
        with self.db.read() as conn:
            row = conn.execute(
                select(t.enrolments).where(t.enrolments.c.id == enrolment_id)
            ).first()
            if row is None:
                raise NotFound(f"no enrolment {enrolment_id}", code="enrolment_not_found")
            s, o = t.journey_steps.c, t.outbox.c
            steps = [
                {"seq": r.seq, "step": r.step, "outcome": r.outcome,
                 "executedAt": r.executed_at.isoformat()}
                for r in conn.execute(
                    select(s.seq, s.step, s.outcome, s.executed_at)
                    .where(s.enrolment_id == enrolment_id)
                    .order_by(s.seq)
                )
            ]  # fmt: skip
            messages = [
                {"id": r.id, "step": r.step, "channel": r.channel, "template": r.template,
                 "variant": r.variant, "status": r.status,
                 "createdAt": r.created_at.isoformat()}
                for r in conn.execute(
                    select(o.id, o.step, o.channel, o.template, o.variant, o.status, o.created_at)
                    .where(one_of(conn, o.enrolment_id, [enrolment_id]))
                    .order_by(o.id)
                )
            ]  # fmt: skip
            return {**_enrolment_dict(row), "steps": steps, "messages": messages}

    def retry(self, enrolment_id: int) -> dict[str, Any]:
        """Put a parked (failed) enrolment back on its step, due now."""
        with self.db.write() as conn:
            n = t.enrolments.c
            done = conn.execute(
                update(t.enrolments)
                .where(n.id == enrolment_id, n.status == "failed")
                .values(
                    status="active",
                    attempts=0,
                    due_at=self.clock.now(),
                    ended_at=None,
                    end_reason=None,
                )
            ).rowcount
        if not done:
            raise ValidationError(
                f"enrolment {enrolment_id} is not failed (or does not exist)",
                code="enrolment_not_failed",
            )
        return self.enrolment(enrolment_id)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _enrolment_dict(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "journey": r.journey_key,
        "version": r.version,
        "contactId": r.contact_id,
        "status": r.status,
        "control": r.control,
        "step": r.step,
        "dueAt": _iso(r.due_at),
        "attempts": r.attempts,
        "lastError": r.last_error,
        "enteredAt": _iso(r.entered_at),
        "endedAt": _iso(r.ended_at),
        "endReason": r.end_reason,
        "convertedAt": _iso(r.converted_at),
        "revenue": r.revenue,
        "context": r.context,
    }
