"""The database layer's own promises: what it gives back when the process runs short of
memory, which pooled connection a thread gets, and a WAL that stays bounded under steady
writes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from tests.conftest import HEAVY

from nurture import memory
from nurture.store import Database, database


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


def test_a_connection_in_use_when_memory_ran_short_is_closed_when_it_comes_back(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'n.db'}")
    try:
        # Given a connection in use (the ingest writer's, say) when the process runs short
        with db.engine.connect() as busy:
            busy.execute(text("SELECT 1"))
            raw = busy.connection.dbapi_connection
            db.release_memory()
            assert busy.execute(text("SELECT 2")).scalar() == 2  # its work goes on
        # Then, once returned, it is closed (its cache freed), not left in the old pool
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            raw.execute("SELECT 1")  # type: ignore[union-attr]
        # And connections opened since stay pooled
        with db.engine.connect() as fresh:
            fresh.execute(text("SELECT 1"))
            kept = fresh.connection.dbapi_connection
        assert kept.execute("SELECT 3").fetchone() == (3,)  # type: ignore[union-attr]
        assert db.engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    finally:
        db.dispose()


def test_running_short_of_memory_anywhere_empties_every_sqlite_pool(tmp_path: Path) -> None:
    first = Database(f"sqlite:///{tmp_path / 'a.db'}")
    second = Database(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        # Given two databases of this process with connections pooled
        for db in (first, second):
            with db.read() as conn:
                conn.execute(text("SELECT 1"))
            assert db.engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        # When a MemoryError is caught anywhere (an HTTP body that could not be buffered)
        memory.release()
        # Then both gave their connections back
        assert [db.engine.pool.checkedin() for db in (first, second)] == [0, 0]  # type: ignore[attr-defined]
    finally:
        first.dispose()
        second.dispose()


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


def _largest_wal(
    db: Database,
    writer: Database,
    *,
    interval: float = 0.05,
    seconds: float = 2.0,
    pause: float = 0.005,
) -> int:
    """The largest the WAL file grew while `writer` committed 512 KB every `pause` s for
    `seconds` (rewriting 16 rows: the database stays at 8 MB), with `db`'s background
    checkpointer running. A writer that is another Database (another process) does not
    wake the checkpointer, which then runs every `interval` s."""
    with writer.write() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, b BLOB)")
    wal = Path(str(db.url.database) + "-wal")
    db.start_checkpointer(interval=interval)
    largest = 0
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with writer.write() as conn:
                conn.exec_driver_sql(
                    "INSERT OR REPLACE INTO blobs VALUES (abs(random()) % 16, randomblob(524288))"
                )
            largest = max(largest, wal.stat().st_size)
            time.sleep(pause)
    finally:
        db.stop_checkpointer()
    return largest


@HEAVY  # its writer's pace is what it checks
def test_steady_writes_do_not_grow_the_wal_without_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given another process that commits steadily, faster than a passive checkpoint
    # catches up (such a checkpoint never reaches the WAL's end, so the WAL never starts
    # again), its commits unseen by the checkpointer, which runs every 50 ms
    monkeypatch.setattr(database, "_RESTART_SLACK", 512)
    sizes = {}
    for restart_frames in (256, 10**9):
        path = tmp_path / f"restart-{restart_frames}.db"
        db, writer = Database(f"sqlite:///{path}"), Database(f"sqlite:///{path}")
        try:
            # When the checkpointer starts the WAL again past 1 MB (256 frames), and, for
            # comparison, never
            monkeypatch.setattr(database, "_RESTART_FRAMES", restart_frames)
            sizes[restart_frames] = _largest_wal(db, writer)
        finally:
            db.dispose()
            writer.dispose()
    bounded, grown = sizes[256], sizes[10**9]
    # Then the WAL stays within a few MB (its writes between two rounds), where without
    # restarts it grows by a hundred or more (fewer on a slower machine, both alike)
    assert bounded < 32 * 2**20, bounded
    assert grown > 4 * bounded, (grown, bounded)


@HEAVY  # its writer's pace is what it checks
def test_each_commit_wakes_the_checkpointer(tmp_path: Path) -> None:
    # Given a checkpointer that would otherwise run once a minute
    sizes = {}
    for who in ("this process", "another process"):
        path = tmp_path / f"{who.replace(' ', '-')}.db"
        db = Database(f"sqlite:///{path}")
        writer = db if who == "this process" else Database(f"sqlite:///{path}")
        try:
            # When a writer commits 512 KB every 20 ms for 1 s (25 MB), through this
            # Database or through another (whose commits it does not see)
            sizes[who] = _largest_wal(db, writer, interval=60, seconds=1, pause=0.02)
        finally:
            db.dispose()
            writer.dispose()
    # Then this process's commits are each copied while the writer pauses, so the WAL
    # starts again from its beginning at the next commit and stays at about one commit
    # (each commit rewrites whole rows: a few MB at most); the other's pile up
    assert sizes["this process"] < 6 * 2**20, sizes
    assert sizes["another process"] > 3 * sizes["this process"], sizes
