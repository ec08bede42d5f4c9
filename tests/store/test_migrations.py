"""The migrations build exactly the schema that store/tables.py describes."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from nurture.store import Database
from nurture.store.tables import metadata


def test_migrated_schema_matches_the_table_definitions(db: Database) -> None:
    # Given a database migrated to head (the fixture), when Alembic compares it with the
    # table definitions, then it finds nothing to change: no table, column, index or type
    # missing from the migrations.
    with db.read() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_migrating_again_changes_nothing(db: Database) -> None:
    with db.read() as conn:
        before = sorted(inspect(conn).get_table_names())
    db.migrate()
    with db.read() as conn:
        assert sorted(inspect(conn).get_table_names()) == before
    assert set(metadata.tables) <= set(before)
