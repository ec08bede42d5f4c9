"""Lifecycle stages and scores as the admin API and the CLI see them: who is where, who
moved from where to where and when, and why a contact has the score it has. Also the
generic store of stage models, score models and computed traits through the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select

from nurture.clock import Clock
from nurture.conditions.facts import load_facts
from nurture.conditions.memory import Evaluator
from nurture.errors import NotFound, ValidationError
from nurture.segments.definitions import DefinitionStore, StoredDefinition
from nurture.segments.engine import Engine
from nurture.segments.registry import Registry
from nurture.segments.service import Conflict
from nurture.store import Database
from nurture.store import tables as t

# Kinds of definition managed here (segments have their own service).
KINDS = ("computed", "stage_model", "score_model")


class LifecycleService:
    def __init__(self, db: Database, clock: Clock, engine: Engine) -> None:
        self.db = db
        self.clock = clock
        self.engine = engine

    # -- stages ------------------------------------------------------------------------
    def counts(self, model: str) -> dict[str, int]:
        """How many contacts are in each stage of `model` now, in the model's order."""
        with self.db.read() as conn:
            reg = self.engine.registry(conn)
            if model not in reg.stage_models:
                raise NotFound(f"stage model {model!r} does not exist", path="model")
            s = t.contact_stages.c
            found: dict[str, int] = {
                stage: int(n)
                for stage, n in conn.execute(
                    select(s.stage, func.count()).where(s.model == model).group_by(s.stage)
                ).all()
            }
        return {key: int(found.get(key, 0)) for key in reg.stage_models[model].keys}

    def moves(
        self,
        model: str,
        *,
        from_stage: str | None = None,
        to_stage: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Stage changes, oldest first: "who moved from engaged to at_risk last week"."""
        with self.db.read() as conn:
            if model not in self.engine.registry(conn).stage_models:
                raise NotFound(f"stage model {model!r} does not exist", path="model")
        h = t.stage_changes.c
        where = [h.model == model]
        if from_stage is not None:
            where.append(h.from_stage == from_stage)
        if to_stage is not None:
            where.append(h.to_stage == to_stage)
        if since is not None:
            where.append(h.changed_at >= since)
        if until is not None:
            where.append(h.changed_at < until)
        with self.db.read() as conn:
            rows = conn.execute(
                select(h.contact_id, h.from_stage, h.to_stage, h.changed_at)
                .where(and_(*where))
                .order_by(h.changed_at, h.id)
                .limit(limit)
            )
            return [
                {
                    "contactId": r.contact_id,
                    "from": r.from_stage,
                    "to": r.to_stage,
                    "at": r.changed_at.isoformat(),
                }
                for r in rows
            ]

    # -- scores ------------------------------------------------------------------------
    def explain(self, contact_id: int, model: str) -> dict[str, Any]:
        """A contact's score now under `model`, rule by rule, beside the stored value."""
        now = self.clock.now()
        with self.db.read() as conn:
            reg = self.engine.registry(conn)
            scoring = reg.score_models.get(model)
            if scoring is None:
                raise NotFound(f"score model {model!r} does not exist", path="model")
            facts = load_facts(conn, [contact_id], event_names=reg.event_names, now=now)
            if contact_id not in facts:
                raise NotFound(f"contact {contact_id} does not exist", path="contact_id")
            env = reg.env(now, self.engine.computed_state(conn))
            result = scoring.score(facts[contact_id], Evaluator(env))
            stored = facts[contact_id].scores.get(model)
        return {
            "contactId": contact_id,
            "model": model,
            **result.to_dict(),
            "stored": {"score": stored[0], "temperature": stored[1]} if stored else None,
            "at": now.isoformat(),
        }

    # -- definitions of stage models, score models and computed traits -----------------
    def definitions(self, kind: str) -> list[dict[str, Any]]:
        _check_kind(kind)
        with self.db.read() as conn:
            return [d.to_dict() for d in DefinitionStore.all(conn, kind)]

    def save(
        self, kind: str, key: str, body: dict[str, Any], *, source: str = "api"
    ) -> dict[str, Any]:
        """Create or replace a definition after checking it with the others in force."""
        _check_kind(kind)
        body = {k: v for k, v in body.items() if k != "key"}
        now = self.clock.now()
        with self.db.write() as conn:
            existing = DefinitionStore.get(conn, kind, key)
            if existing is not None and existing.source == "file" and source != "file":
                raise Conflict(f"{kind} {key!r} is defined in the project files", path="key")
            others = [d for d in DefinitionStore.all(conn) if (d.kind, d.key) != (kind, key)]
            trial = [
                *others,
                StoredDefinition(kind, key, "", body, source, "active", None, now, now, None),
            ]
            problem = Registry.build(trial).problems.get((kind, key))
            if problem:
                raise ValidationError(problem, code="invalid_definition")
            DefinitionStore.put(
                conn, kind, key, body, name=str(body.get("name", "")), source=source, now=now
            )
            stored = DefinitionStore.get(conn, kind, key)
        assert stored is not None
        return stored.to_dict()

    def delete(self, kind: str, key: str) -> None:
        """Delete a definition nothing else in force uses."""
        _check_kind(kind)
        with self.db.write() as conn:
            stored = DefinitionStore.all(conn)
            if not any((d.kind, d.key) == (kind, key) for d in stored):
                raise NotFound(f"{kind} {key!r} does not exist", path="key")
            before = Registry.build(stored).problems
            after = Registry.build([d for d in stored if (d.kind, d.key) != (kind, key)]).problems
            broken = sorted(f"{k} {name}" for (k, name) in after.keys() - before.keys())
            if broken:
                raise Conflict(
                    f"{kind} {key!r} is used by {', '.join(broken)}; change those first",
                    path="key",
                )
            DefinitionStore.delete(conn, kind, key)
            if kind == "stage_model":
                conn.execute(t.contact_stages.delete().where(t.contact_stages.c.model == key))
            elif kind == "score_model":
                conn.execute(t.contact_scores.delete().where(t.contact_scores.c.model == key))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise NotFound(
            f"unknown definition kind {kind!r}; use one of {', '.join(KINDS)}", path="kind"
        )
