"""Segment definitions, and the store that keeps every kind of definition as data.

Definitions come from project files (`segments/*.yaml`, source `file`) or the admin API
(source `api`); both end up as rows of the `definitions` table, so every process
(API servers, workers) sees the same ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, field_validator
from sqlalchemy import Connection, delete, select, update

from nurture.conditions.model import Condition, validation_error
from nurture.errors import ValidationError
from nurture.store import tables as t
from nurture.store.bulk import upsert_rows
from nurture.store.counters import counter, raise_counter

Kind = Literal["segment", "computed", "stage_model", "score_model"]
KINDS: tuple[Kind, ...] = ("segment", "computed", "stage_model", "score_model")
_VERSION = "definitions_version"
_KEY = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,199}$")


def check_key(value: str) -> str:
    if not _KEY.fullmatch(value):
        raise ValueError(
            "expected a key of lowercase letters, digits, _ and -, starting with a letter or digit"
        )
    return value


class SegmentDefinition(BaseModel):
    """A segment: who matches `where`, now."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    key: str
    name: str = ""
    description: str = ""
    where: Condition

    _check_key = field_validator("key")(classmethod(lambda cls, v: check_key(v)))


def parse_segment(data: Any, *, path: str = "") -> SegmentDefinition:
    """Validate a segment definition; errors name the bad field (`where.all[2]...`)."""
    if not isinstance(data, dict):
        raise ValidationError("expected a mapping with key, name and where", path=path or None)
    try:
        return SegmentDefinition.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_error(exc, path) from None


@dataclass(frozen=True, slots=True)
class StoredDefinition:
    kind: str
    key: str
    name: str
    body: dict[str, Any]
    source: str
    status: str
    error: str | None
    created_at: datetime
    updated_at: datetime
    evaluated_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "name": self.name,
            "definition": self.body,
            "source": self.source,
            "status": self.status,
            "error": self.error,
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
            "evaluatedAt": self.evaluated_at.isoformat() if self.evaluated_at else None,
        }


class DefinitionStore:
    """Rows of the `definitions` table, inside the caller's transaction."""

    @staticmethod
    def all(conn: Connection, kind: str | None = None) -> list[StoredDefinition]:
        d = t.definitions.c
        query = select(t.definitions).order_by(d.kind, d.key)
        if kind is not None:
            query = query.where(d.kind == kind)
        return [StoredDefinition(**row._mapping) for row in conn.execute(query)]

    @staticmethod
    def get(conn: Connection, kind: str, key: str) -> StoredDefinition | None:
        d = t.definitions.c
        row = conn.execute(select(t.definitions).where(d.kind == kind, d.key == key)).first()
        return StoredDefinition(**row._mapping) if row else None

    @staticmethod
    def put(
        conn: Connection,
        kind: str,
        key: str,
        body: dict[str, Any],
        *,
        name: str,
        source: str,
        now: datetime,
    ) -> bool:
        """Create or replace a definition; returns whether anything changed. A changed
        definition becomes active again (its last failure no longer applies)."""
        old = DefinitionStore.get(conn, kind, key)
        if old is not None and old.body == body and old.name == name and old.source == source:
            return False
        upsert_rows(
            conn,
            t.definitions,
            [
                {
                    "kind": kind,
                    "key": key,
                    "name": name,
                    "body": body,
                    "source": source,
                    "status": "active",
                    "error": None,
                    "created_at": old.created_at if old else now,
                    "updated_at": now,
                    "evaluated_at": None,
                }
            ],
            keys=["kind", "key"],
        )
        DefinitionStore._bump(conn)
        return True

    @staticmethod
    def delete(conn: Connection, kind: str, key: str) -> bool:
        d = t.definitions.c
        result = conn.execute(delete(t.definitions).where(d.kind == kind, d.key == key))
        if result.rowcount:
            DefinitionStore._bump(conn)
        return bool(result.rowcount)

    @staticmethod
    def mark(
        conn: Connection,
        kind: str,
        key: str,
        *,
        error: str | None,
        evaluated_at: datetime | None = None,
    ) -> None:
        """Record the outcome of an evaluation: failed with `error`, or active."""
        d = t.definitions.c
        values: dict[str, Any] = {
            "status": "failed" if error else "active",
            "error": error[:2000] if error else None,
        }
        if evaluated_at is not None:
            values["evaluated_at"] = evaluated_at
        conn.execute(update(t.definitions).where(d.kind == kind, d.key == key).values(**values))

    @staticmethod
    def version(conn: Connection) -> int:
        """A number that changes whenever a definition is added, changed or removed."""
        return counter(conn, _VERSION)

    @staticmethod
    def _bump(conn: Connection) -> None:
        raise_counter(conn, _VERSION)
