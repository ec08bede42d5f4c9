"""`insert_batch`, `update_batch` and `insert_batch_returning` (the journey runtime's writes)
store exactly what `insert_rows`, `update_rows` and `insert_many_returning` store: on
PostgreSQL they send binary arrays and a column that is the same in every row once, so
a property test holds the two to the same stored text, row for row, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
    delete,
    select,
)

from nurture.store import Database
from nurture.store.bulk import (
    insert_batch,
    insert_batch_returning,
    insert_many_returning,
    insert_rows,
    update_batch,
    update_rows,
)
from nurture.store.types import BigId, Json, UTCDateTime

META = MetaData()


def _probe(name: str) -> Table:
    return Table(
        name,
        META,
        Column("id", BigId, primary_key=True, autoincrement=False),
        Column("label", String(50), nullable=False),
        Column("n", Integer),
        Column("amount", Float),
        Column("flag", Boolean),
        Column("at", UTCDateTime),
        Column("doc", Json),
    )


CORE, BATCH = _probe("bulk_probe_core"), _probe("bulk_probe_batch")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# Few values per column, so that batches often have columns that are all the same.
values = {
    "label": st.sampled_from(["a", "b", "it's", 'say "hi"', "x\\y", "{1,2}", "é"]),
    "n": st.sampled_from([None, 0, 1, -7, 2**31 - 1]),
    "amount": st.sampled_from([None, 0.0, 1.0, 2.5, -3.0, 1e-9]),
    "flag": st.sampled_from([None, True, False]),
    # T0 twice more: an equal copy, and the same instant in another zone (a column of
    # equal instants is converted once and sent once).
    "at": st.sampled_from(
        [
            None,
            T0,
            T0 + timedelta(microseconds=1),
            T0 + timedelta(days=1),
            T0 + timedelta(0),
            T0.astimezone(timezone(timedelta(hours=2))),
        ]
    ),
    "doc": st.sampled_from(
        [None, {}, {"a": 1}, {"a": 1.0}, {"trigger": None, "wait": {"step": "s"}}, [1, "x"]]
    ),
}
row = st.fixed_dictionaries(values)
rows = st.lists(row, min_size=1, max_size=6)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _stored(db: Database, table: Table) -> list[tuple[Any, ...]]:
    """Every row as stored; JSON as its stored text (1 and 1.0 differ)."""
    c = table.c
    with db.read() as conn:
        query = select(c.id, c.label, c.n, c.amount, c.flag, c.at, cast(c.doc, Text))
        return [tuple(r) for r in conn.execute(query.order_by(c.id))]


def _fresh(db: Database) -> None:
    with db.write() as conn:
        META.create_all(conn, checkfirst=True)
        for table in (CORE, BATCH):
            conn.execute(delete(table))


def _numbered(drawn: list[dict[str, Any]], first: int = 1) -> list[dict[str, Any]]:
    return [{"id": first + i, **r} for i, r in enumerate(drawn)]


@SETTINGS
@given(drawn=rows)
def test_insert_batch_stores_what_insert_rows_stores(db: Database, drawn: list[dict]) -> None:
    # Given an empty pair of tables
    _fresh(db)
    # When the same rows go into one through insert_rows and into the other through
    # insert_batch
    with db.write() as conn:
        insert_rows(conn, CORE, _numbered(drawn))
        inserted = insert_batch(conn, BATCH, _numbered(drawn))
    # Then both hold the same rows, stored the same way
    assert inserted == len(drawn)
    assert _stored(db, BATCH) == _stored(db, CORE)


@SETTINGS
@given(before=rows, after=rows)
def test_update_batch_stores_what_update_rows_stores(
    db: Database, before: list[dict], after: list[dict]
) -> None:
    # Given the same rows in both tables
    _fresh(db)
    with db.write() as conn:
        insert_rows(conn, CORE, _numbered(before))
        insert_rows(conn, BATCH, _numbered(before))
    # When some of them (and ids that do not exist) are updated, in one table through
    # update_rows, in the other through update_batch
    changes = [{"_key": r.pop("id"), **r} for r in _numbered(after, first=len(before) // 2 + 1)]
    with db.write() as conn:
        update_rows(conn, CORE, "id", [dict(c) for c in changes])
        update_batch(conn, BATCH, "id", [dict(c) for c in changes])
    # Then both tables hold the same rows
    assert _stored(db, BATCH) == _stored(db, CORE)


@SETTINGS
@given(before=rows, drawn=rows)
def test_insert_batch_returning_skips_and_returns_as_insert_many_returning(
    db: Database, before: list[dict], drawn: list[dict]
) -> None:
    # Given rows already in both tables
    _fresh(db)
    with db.write() as conn:
        insert_rows(conn, CORE, _numbered(before))
        insert_rows(conn, BATCH, _numbered(before))
    # When rows, some with ids taken, are inserted skipping conflicts, returning ids
    new = _numbered(drawn, first=len(before) // 2 + 1)
    with db.write() as conn:
        core = insert_many_returning(conn, CORE, [dict(r) for r in new], returning="id")
        batch = insert_batch_returning(conn, BATCH, [dict(r) for r in new], returning="id")
    # Then the same rows were inserted, the same ids returned
    assert sorted(batch) == sorted(core)
    assert sorted(core) == [r["id"] for r in new if r["id"] > len(before)]
    assert _stored(db, BATCH) == _stored(db, CORE)
