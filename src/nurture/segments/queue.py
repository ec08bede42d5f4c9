"""The evaluation queue: contacts whose memberships, stages and scores are due.

Ingest adds a contact in the same transaction that stores its events; the evaluator
removes it in the transaction that evaluated it. A crash in between leaves the row, so
no change of a contact goes unevaluated, and nothing waits in memory only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Select, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from nurture.store import tables as t
from nurture.store.bulk import in_list, insert_rows, list_param, one_of


def queue_evaluations(
    conn: Connection,
    contact_ids: Iterable[int],
    now: datetime,
    *,
    arrived: Iterable[tuple[int, str, str]] = (),
    full: Iterable[int] = (),
) -> None:
    """Mark contacts as due for evaluation (inside the caller's transaction).

    On PostgreSQL the upsert takes the row lock: if an evaluator holds a claimed row,
    this waits for it to commit, and then queues the contact afresh, so that events
    the evaluator could not see yet are evaluated in the next round."""
    everything = set(full)
    rows = [
        {"contact_id": cid, "queued_at": now, "full": cid in everything}
        for cid in sorted(set(contact_ids))
    ]
    if not rows:
        return
    conn.execute(_upsert(conn.dialect.name), rows)
    # After the queue rows (whose lock orders us after a running evaluation): what arrived.
    names = [
        {"contact_id": c, "type": kind, "event": name} for c, kind, name in sorted(set(arrived))
    ]
    if names:
        insert_rows(conn, t.pending_arrivals, names, ignore_conflicts=True)


@dataclass
class Due:
    """The contacts an ingest transaction stored events for, before they are queued: what
    arrived for each, and those to evaluate on everything (`full`: merged or renewed).

    A hook of that transaction that evaluates some of them itself `take`s them; `queue`
    then queues the rest in the same transaction. Contacts evaluated at ingest thus never
    touch the queue tables (a queue row and its arrivals, written and deleted again)."""

    arrived: dict[int, set[tuple[str, str]]] = field(default_factory=dict)
    full: set[int] = field(default_factory=set)

    def add(
        self,
        contact_ids: Iterable[int],
        arrived: Iterable[tuple[int, str, str]],
        full: Iterable[int],
    ) -> None:
        for contact_id in contact_ids:
            self.arrived.setdefault(contact_id, set())
        for contact_id, kind, name in arrived:
            self.arrived.setdefault(contact_id, set()).add((kind, name))
        self.full.update(full)

    def take(self, contact_ids: Iterable[int]) -> None:
        """These contacts were evaluated: they need no queue row."""
        for contact_id in contact_ids:
            self.arrived.pop(contact_id, None)
            self.full.discard(contact_id)

    def queue(self, conn: Connection, now: datetime) -> int:
        """Queue the contacts left (inside the ingest transaction); how many."""
        count = len(self.arrived)
        queue_evaluations(
            conn,
            self.arrived,
            now,
            arrived=[(c, kind, name) for c, names in self.arrived.items() for kind, name in names],
            full=self.full,
        )
        self.arrived.clear()
        self.full.clear()
        return count


_UPSERTS: dict[str, Any] = {}


def _upsert(dialect: str) -> Any:
    """The queue's upsert, built once per backend (it runs in every ingest transaction)."""
    stmt = _UPSERTS.get(dialect)
    if stmt is None:
        module: Any = postgresql if dialect == "postgresql" else sqlite
        stmt = module.insert(t.pending_evaluations)
        # Keep the first queued_at: a contact with constant traffic keeps its place in
        # line. The update still takes the row lock, which orders us after an evaluator.
        p = t.pending_evaluations.c
        stmt = _UPSERTS[dialect] = stmt.on_conflict_do_update(
            index_elements=["contact_id"],
            set_={
                "queued_at": p.queued_at,
                "seq": p.seq + 1,
                "full": or_(p.full, stmt.excluded.full),
            },
        )
    return stmt


@dataclass(frozen=True, slots=True)
class Claim:
    queued_at: datetime
    seq: int
    full: bool = True


def claim(conn: Connection, limit: int, *, lock: bool = True) -> dict[int, Claim]:
    """The oldest queued contacts; on PostgreSQL locked for this transaction (others skip
    them) unless `lock` is false."""
    p = t.pending_evaluations.c
    query = select(p.contact_id, p.queued_at, p.seq, p.full).order_by(p.queued_at, p.contact_id)
    query = query.limit(limit)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return {
        row.contact_id: Claim(row.queued_at, row.seq, bool(row.full)) for row in conn.execute(query)
    }


def claims_of(conn: Connection, contact_ids: Iterable[int]) -> dict[int, Claim]:
    """The queue rows of these contacts (those queued earlier, whose events no evaluation
    has seen yet), for the ingest transaction that evaluates them itself
    (`Engine.evaluate_at_ingest`). On PostgreSQL the rows are locked: an evaluator that
    claimed one is waited for, as queueing the contact would wait for it."""
    ids = sorted(set(contact_ids))
    if not ids:
        return {}
    dialect = conn.dialect.name
    rows = conn.execute(_claims_of(dialect), {"ids": list_param(dialect, ids)})
    return {row.contact_id: Claim(row.queued_at, row.seq, bool(row.full)) for row in rows}


@lru_cache(maxsize=4)
def _claims_of(dialect: str) -> Select[Any]:
    """`claims_of`' query, built once per backend (it runs in every ingest transaction)."""
    p = t.pending_evaluations.c
    query = select(p.contact_id, p.queued_at, p.seq, p.full).where(in_list(dialect, p.contact_id))
    return query.with_for_update() if dialect == "postgresql" else query


def arrivals(conn: Connection, contact_ids: list[int]) -> dict[int, set[tuple[str, str]]]:
    """The (type, name) pairs of the events that arrived for these queued contacts."""
    a = t.pending_arrivals.c
    found: dict[int, set[tuple[str, str]]] = {}
    if contact_ids:
        rows = conn.execute(
            select(a.contact_id, a.type, a.event).where(one_of(conn, a.contact_id, contact_ids))
        )
        for row in rows:
            found.setdefault(row.contact_id, set()).add((row.type, row.event))
    return found


def unchanged(conn: Connection, claimed: dict[int, Claim]) -> set[int]:
    """The claimed contacts still queued as claimed: not re-queued (no new event) and not
    evaluated by anyone else since."""
    if not claimed:
        return set()
    p = t.pending_evaluations.c
    rows = conn.execute(
        select(p.contact_id, p.seq).where(one_of(conn, p.contact_id, list(claimed)))
    )
    return {row.contact_id for row in rows if row.seq == claimed[row.contact_id].seq}


def done(conn: Connection, contact_ids: list[int]) -> None:
    """Remove evaluated contacts from the queue (inside the evaluating transaction)."""
    if contact_ids:
        for table in (t.pending_evaluations, t.pending_arrivals):
            conn.execute(delete(table).where(one_of(conn, table.c.contact_id, contact_ids)))


def backlog(conn: Connection) -> int:
    """How many contacts wait for evaluation."""
    return int(conn.execute(select(func.count()).select_from(t.pending_evaluations)).scalar_one())
