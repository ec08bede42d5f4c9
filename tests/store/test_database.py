"""The database layer's own promises: what it gives back when the process runs short of
memory, and which pooled connection a thread gets."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from nurture.store import Database


def test_sqlite_gives_back_its_pooled_connections_when_short_of_memory(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'n.db'}")
    try:
        # Given two connections used and returned to the pool (each keeps a page cache)
        with db.engine.connect() as first, db.engine.connect() as second:
            first.execute(text("SELECT 1"))
            second.execute(text("SELECT 1"))
        assert db.engine.pool.checkedin() == 2  # type: ignore[attr-defined]
        # When the process ran short of memory
        db.release_memory()
        # Then they are closed (their caches freed), and the next use opens a new one
        assert db.engine.pool.checkedin() == 0  # type: ignore[attr-defined]
        with db.read() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        db.dispose()


def test_sqlite_hands_a_thread_the_connection_it_returned_last(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'n.db'}")
    try:
        # Given two pooled connections, the second returned last
        with db.engine.connect() as first, db.engine.connect() as second:
            older = first.connection.dbapi_connection
            newer = second.connection.dbapi_connection
            first.close()
        # When a thread runs one transaction after another
        seen = set()
        for _ in range(3):
            with db.read() as conn:
                seen.add(id(conn.connection.dbapi_connection))
        # Then it keeps one connection (its page cache stays valid), the one returned last
        assert seen == {id(newer)} and id(older) != id(newer)
    finally:
        db.dispose()
