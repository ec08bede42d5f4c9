"""Writing evaluation results: memberships, stages and scores, the history of their
changes, and one system event per change (`segment.entered`, `segment.exited`,
`stage.changed`, `score.changed`) that journeys trigger on.

A system event's message id names the history row it reports (`segment.entered:42`), so
the two are written together or not at all, and each change is emitted exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Select, Table, delete, func, insert, select

from nurture.journeys.inbox import offer as offer_to_journeys
from nurture.store import tables as t
from nurture.store.bulk import insert_rows, one_of, upsert_rows


@dataclass
class Changes:
    """What one evaluation changed; applied in one transaction by `apply`."""

    entered: list[tuple[str, int]] = field(default_factory=list)  # (segment, contact)
    exited: list[tuple[str, int]] = field(default_factory=list)
    # (model, contact, from stage or None, to stage)
    stages: list[tuple[str, int, str | None, str]] = field(default_factory=list)
    # (model, contact, score, old temperature or None, new temperature)
    scores: list[tuple[str, int, float, str | None, str]] = field(default_factory=list)
    # Contacts merged away: their memberships, stages and scores go, silently.
    dropped: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entered or self.exited or self.stages or self.scores or self.dropped)

    def extend(self, other: Changes) -> None:
        self.entered += other.entered
        self.exited += other.exited
        self.stages += other.stages
        self.scores += other.scores
        self.dropped += other.dropped


def _system_event(
    name: str, change_id: int, contact_id: int, now: datetime, props: dict[str, Any]
) -> dict[str, Any]:
    return {
        # One event per recorded change (its history row): a re-entry at the same instant
        # is a change of its own.
        "message_id": f"{name}:{change_id}",
        "type": "system",
        "event": name,
        "contact_id": contact_id,
        "timestamp": now,
        "received_at": now,
        "properties": props,
    }


def apply(conn: Connection, changes: Changes, now: datetime) -> None:
    """Write `changes` (inside the caller's transaction)."""
    events: list[dict[str, Any]] = []
    if changes.dropped:
        _drop(conn, changes.dropped)
    if changes.entered:
        insert_rows(
            conn,
            t.segment_memberships,
            [{"segment_key": k, "contact_id": c, "entered_at": now} for k, c in changes.entered],
            ignore_conflicts=True,
        )
    if changes.exited:
        m = t.segment_memberships.c
        by_segment: dict[str, list[int]] = {}
        for k, c in changes.exited:
            by_segment.setdefault(k, []).append(c)
        for key, ids in by_segment.items():
            for i in range(0, len(ids), 10_000):
                conn.execute(
                    delete(t.segment_memberships).where(
                        m.segment_key == key, one_of(conn, m.contact_id, ids[i : i + 10_000])
                    )
                )
    membership = [(k, c, "entered") for k, c in changes.entered] + [
        (k, c, "exited") for k, c in changes.exited
    ]
    if membership:
        ids = _history(
            conn,
            t.segment_changes,
            [
                {"segment_key": k, "contact_id": c, "change": change, "changed_at": now}
                for k, c, change in membership
            ],
        )
        events += [
            _system_event(f"segment.{change}", change_id, c, now, {"segment": k})
            for (k, c, change), change_id in zip(membership, ids, strict=True)
        ]
    if changes.stages:
        upsert_rows(
            conn,
            t.contact_stages,
            [
                {"model": model, "contact_id": c, "stage": to, "since": now}
                for model, c, _, to in changes.stages
            ],
            keys=["model", "contact_id"],
        )
        ids = _history(
            conn,
            t.stage_changes,
            [
                {
                    "model": model,
                    "contact_id": c,
                    "from_stage": before,
                    "to_stage": to,
                    "changed_at": now,
                }
                for model, c, before, to in changes.stages
            ],
        )
        events += [
            _system_event(
                "stage.changed", change_id, c, now, {"model": model, "from": before, "to": to}
            )
            for (model, c, before, to), change_id in zip(changes.stages, ids, strict=True)
        ]
    if changes.scores:
        upsert_rows(
            conn,
            t.contact_scores,
            [
                {
                    "model": model,
                    "contact_id": c,
                    "score": score,
                    "temperature": to,
                    "updated_at": now,
                }
                for model, c, score, _, to in changes.scores
            ],
            keys=["model", "contact_id"],
        )
        crossed = [s for s in changes.scores if s[3] != s[4]]
        if crossed:
            ids = _history(
                conn,
                t.score_changes,
                [
                    {
                        "model": model,
                        "contact_id": c,
                        "from_temperature": before,
                        "to_temperature": to,
                        "score": score,
                        "changed_at": now,
                    }
                    for model, c, score, before, to in crossed
                ],
            )
            events += [
                _system_event(
                    "score.changed",
                    change_id,
                    c,
                    now,
                    {"model": model, "from": before, "to": to, "score": score},
                )
                for (model, c, score, before, to), change_id in zip(crossed, ids, strict=True)
            ]
    if events:
        insert_rows(conn, t.events, events, ignore_conflicts=True)
        offer_to_journeys(conn, events, now)


def _history(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> list[int]:
    """Insert history rows; their ids, in the order given."""
    if conn.dialect.name == "sqlite":
        # RETURNING in the rows' order runs one INSERT per row on SQLite (42 statements in
        # a real-time transaction of 20 contacts). The caller holds the single write lock,
        # so the ids are those SQLite itself would give, one above the highest, and are
        # known before one executemany stores the rows.
        top = conn.execute(_highest_id(table)).scalar()
        first = int(top or 0) + 1
        ids = list(range(first, first + len(rows)))
        insert_rows(conn, table, [{"id": i, **row} for i, row in zip(ids, rows, strict=True)])
        return ids
    result = conn.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows)
    return [int(i) for i in result.scalars()]


@lru_cache(maxsize=8)
def _highest_id(table: Table) -> Select[tuple[Any]]:
    return select(func.max(table.c.id))


def _drop(conn: Connection, contact_ids: Sequence[int]) -> None:
    for table in (t.segment_memberships, t.contact_stages, t.contact_scores):
        conn.execute(delete(table).where(one_of(conn, table.c.contact_id, list(contact_ids))))
