"""The migrations build exactly the schema that store/tables.py describes."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, insert, inspect

from nurture.store import Database
from nurture.store import tables as t
from nurture.store.database import MIGRATIONS
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


def _predicates(conn: Connection) -> dict[str, str | None]:
    """Every index of the database by name: its partial-index predicate, normalized (no
    casts, parentheses, spaces or case), or None."""
    if conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql(
            "SELECT c.relname, pg_get_expr(i.indpred, i.indrelid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relnamespace = current_schema()::regnamespace"
        ).all()
    else:
        found = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).all()
        rows = [
            (name, sql.split(" WHERE ", 1)[1] if " WHERE " in sql else None) for name, sql in found
        ]
    return {name: _normal(where) for name, where in rows}


def _normal(where: str | None) -> str | None:
    if where is None:
        return None
    return re.sub(r"::\w+|[()\s]", "", where).lower()


def _declared(dialect: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for table in metadata.tables.values():
        for index in table.indexes:
            where = index.dialect_options[dialect].get("where")
            out[str(index.name)] = _normal(None if where is None else str(where))
    return out


def test_partial_indexes_have_the_declared_predicates(db: Database) -> None:
    # Alembic's comparison leaves out the predicates of partial indexes. Given a database
    # migrated to head, when its indexes' predicates are read, then each is the one the
    # table definitions declare (none where they declare none).
    with db.read() as conn:
        found = _predicates(conn)
    declared = _declared(db.backend)
    assert {name: found.get(name, "missing") for name in declared} == declared
    assert declared["ix_outbox_journey_sent"] == "sent_atisnotnull"


def _alembic(conn: Connection, action: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    getattr(command, action)(cfg, revision)


def _step_indexes(conn: Connection) -> dict[str, list[str]]:
    return {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("journey_steps")}


def test_step_path_indexes_migration_downgrades_and_upgrades(db: Database) -> None:
    # Given a database at head (0015: partial covering indexes, one index of step runs),
    # when migrated down to 0014, then the covering indexes are whole again and step runs
    # have their two indexes; when migrated up again, then the schema is the table
    # definitions' once more.
    partial = (
        "ix_enrolments_converted",
        "ix_enrolments_ended",
        "ix_outbox_journey_message",
        "ix_outbox_journey_sent",
        "ix_outbox_provider_id",
    )
    with db.write() as conn:
        _alembic(conn, "downgrade", "0014")
    with db.read() as conn:
        below = _predicates(conn)
        steps = _step_indexes(conn)
    assert {name: below[name] for name in partial} == dict.fromkeys(partial)
    assert steps["ix_journey_steps_runs"] == ["journey_key", "version", "step", "executed_at"]
    assert steps["ix_journey_steps_journey_key_step_executed_at"] == [
        "journey_key",
        "step",
        "executed_at",
    ]

    with db.write() as conn:
        _alembic(conn, "upgrade", "head")
    with db.read() as conn:
        above = _predicates(conn)
        steps = _step_indexes(conn)
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []
    assert {name: above[name] for name in partial} == {
        name: _declared(db.backend)[name] for name in partial
    }
    assert steps["ix_journey_steps_runs"] == ["journey_key", "step", "executed_at", "version"]
    assert "ix_journey_steps_journey_key_step_executed_at" not in steps


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL keeps statistics per column
def test_step_path_indexes_migration_analyzes_the_new_indexes_of_an_analyzed_sqlite(
    db: Database,
) -> None:
    # Given an SQLite database at 0014 with a step run, analyzed (statistics for its
    # indexes)
    with db.write() as conn:
        _alembic(conn, "downgrade", "0014")
        conn.execute(
            insert(t.journey_steps).values(
                enrolment_id=1, seq=0, journey_key="j", version=1, step="s", contact_id=1,
                outcome="ran", executed_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
        )  # fmt: skip
        conn.exec_driver_sql("ANALYZE")
    # When it is migrated to 0015, which replaces the step runs' two indexes by one
    with db.write() as conn:
        _alembic(conn, "upgrade", "head")
    # Then the new index has its statistics, as the others have theirs
    with db.read() as conn:
        stats = dict(conn.exec_driver_sql("SELECT idx, stat FROM sqlite_stat1").all())
    assert stats.get("ix_journey_steps_runs") == "1 1 1 1 1"
    assert "ix_journey_steps_journey_key_step_executed_at" not in stats
