"""Counters kept in the `meta` table, read and raised inside the caller's transaction:
they tell other processes that something changed (definitions, evaluation state)."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, select

from nurture.store import tables as t
from nurture.store.bulk import upsert_rows

# Built once: counters are read several times in every round of real-time evaluation.
_VALUE = select(t.meta.c.value).where(t.meta.c.key == bindparam("key"))


def counter(conn: Connection, key: str) -> int:
    """The counter's value; 0 before it was first raised."""
    value = conn.execute(_VALUE, {"key": key}).scalar()
    return int(value) if value is not None else 0


def raise_counter(conn: Connection, key: str) -> None:
    upsert_rows(conn, t.meta, [{"key": key, "value": str(counter(conn, key) + 1)}], keys=["key"])
