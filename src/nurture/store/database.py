"""The database wrapper: one engine, reads in parallel, writes serialised on SQLite.

SQLite allows one writer at a time. Rather than let threads fight over the lock
(and fail with "database is locked"), every write in this process goes through
`Database.write()`, which holds a process-wide lock and opens the transaction with
BEGIN IMMEDIATE. PostgreSQL writes run concurrently; callers that race there use
unique constraints and `ON CONFLICT`, not "check then insert".
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, create_engine, event, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError

from nurture import memory
from nurture.store import tables
from nurture.store.functions import register_sqlite_functions

MIGRATIONS = Path(__file__).parent / "migrations"
IDENTITY_LOCK = 7263552  # pg_advisory_xact_lock key: ingest and erase take turns
_BUSY_TIMEOUT_MS = 30000  # how long an SQLite write waits for another process's by default
# The background checkpointer starts the WAL again once it holds this many frames (256 MB
# of 4 KB pages) and a passive checkpoint got within _RESTART_SLACK frames of its end.
_RESTART_FRAMES = 65_536
_RESTART_SLACK = 2_048
_RESTART_WAIT_MS = 20  # RESTART's wait for readers (and the write lock), writers held off
# After a RESTART that was kept waiting (by a reader, or the writer's lock), the next try
# comes after 0.5 s, doubling up to 8 s while they keep failing: a long read does not
# hold writers off every round.
_RESTART_BACKOFF = (0.5, 8.0)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class Database:
    """Owns the SQLAlchemy engine for one database (SQLite file or PostgreSQL)."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "FULL",
        search_path: str | None = None,
        pool_size: int = 5,
    ) -> None:
        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        if self.backend == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url = parsed
        self._write_lock = threading.RLock()
        self._generation = 0  # of the SQLite pool's connections, renewed by `_reconnect`
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpointer = threading.Event()
        self._committed = threading.Event()  # set by each write commit: checkpoint now
        kwargs: dict[str, Any] = {
            "json_serializer": _json_dumps,
            "json_deserializer": orjson.loads,
            # A database error names its statement, not its values: they are contacts'
            # data, and a batch's are megabytes, which logging one (the ingest writer,
            # short of memory) would copy again.
            "hide_parameters": True,
        }
        if self.backend == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if parsed.database not in (None, "", ":memory:"):
                # The connection returned last is handed out next: a thread that runs one
                # transaction after another (the ingest writer) keeps one connection, whose
                # page cache is still valid, instead of going round the pool and finding
                # each connection's cache discarded by the others' commits (measured: half
                # the pages read per real-time transaction, 733 -> 344).
                kwargs["pool_use_lifo"] = True
            self.engine = create_engine(parsed, **kwargs)
            self._configure_sqlite(self.engine, sqlite_synchronous, self._autocheckpoint)
            self._close_stale_on_checkin()
            memory.hold(self)  # its page caches go when the process runs short of memory
        else:
            # psycopg prepares a statement after 5 runs, and PostgreSQL then switches to
            # a generic plan that ignores the actual values; for `= ANY(:ids)` lookups
            # that plan can be a sequential scan (measured: 160 ms instead of 2 ms).
            options = ["-cplan_cache_mode=force_custom_plan"]
            given = parsed.query.get("options")  # e.g. ?options=-csearch_path%3Dtenant
            if given:
                options.extend(given if isinstance(given, tuple) else [given])
                parsed = parsed.difference_update_query(["options"])
            if search_path:
                options.append(f"-csearch_path={search_path}")
            connect_args: dict[str, Any] = {"options": " ".join(options)}
            self.engine = create_engine(
                parsed,
                pool_size=pool_size,
                max_overflow=pool_size * 2,
                pool_pre_ping=True,
                connect_args=connect_args,
                **kwargs,
            )

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    def _autocheckpoint(self) -> int:
        """Pages of WAL after which a committing connection checkpoints by itself: never
        while the background checkpointer runs (a commit that checkpoints does ~10 ms of
        copying inside the write lock: measured in 3 % of real-time ingest commits, the
        whole p99), else about 40 MB."""
        return 0 if self._checkpointer is not None else 10_000

    @staticmethod
    def _configure_sqlite(engine: Engine, synchronous: str, autocheckpoint: Any) -> None:
        # pysqlite's own transaction handling delays BEGIN and cannot do IMMEDIATE;
        # take it over as the SQLAlchemy docs recommend.
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=OFF")
            cur.execute("PRAGMA cache_size=-65536")
            # Checkpoints normally run in the background (start_checkpointer); without
            # it, commits checkpoint past about 40 MB of WAL.
            cur.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint())}")
            cur.close()
            register_sqlite_functions(dbapi_conn)

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get("nurture_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

    def _close_stale_on_checkin(self) -> None:
        """A connection in use when the pool was renewed (`_reconnect`) is closed when it
        comes back. SQLAlchemy would leave it open, with its page cache, in the old pool
        until the garbage collector finds that pool."""

        @event.listens_for(self.engine, "connect")
        def _on_connect(_dbapi_conn: Any, record: Any) -> None:
            record.info["generation"] = self._generation

        @event.listens_for(self.engine, "checkin")
        def _on_checkin(dbapi_conn: Any, record: Any) -> None:
            if dbapi_conn is not None and record.info.get("generation") != self._generation:
                record.invalidate()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads; on SQLite it sees the last committed state (WAL)."""
        with self.engine.connect() as conn:
            yield conn
            conn.rollback()

    @contextmanager
    def write(self, *, wait: float | None = None) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back on error.

        `wait`: the longest, in seconds, to wait for a lock another connection holds
        (SQLite's write lock, any PostgreSQL lock, advisory ones included) before failing
        with `OperationalError`, instead of 30 s on SQLite and no limit on PostgreSQL.
        A writer that answers someone (ingest) gives up early rather than hang."""
        if self.is_sqlite:
            with self._write_lock, self.engine.connect() as conn:
                raw = conn.connection.driver_connection
                assert raw is not None
                if wait is not None:
                    raw.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
                try:
                    conn = conn.execution_options(nurture_write=True)
                    with conn.begin():
                        yield conn
                    self._committed.set()
                finally:
                    if wait is not None:
                        raw.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        else:
            with self.engine.begin() as conn:
                if wait is not None:
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(wait * 1000)}ms'")
                yield conn

    def lock_identities(self, conn: Connection) -> None:
        """Take, for the rest of this write transaction, the lock that ingest holds while
        it resolves identities, so that identity writers (ingest, erase) run one after
        another on PostgreSQL. On SQLite `write()` already serialises every writer."""
        if not self.is_sqlite:
            # Keyed by schema too: databases kept side by side in schemas of one
            # PostgreSQL database (tenants, tests) do not wait for each other.
            conn.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(%(k)s::int, hashtext(current_schema()))",
                {"k": IDENTITY_LOCK},
            )

    def migrate(self) -> None:
        """Bring the schema to the newest migration (safe to run from many processes)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.write() as conn:
            if not self.is_sqlite:
                # Two processes starting together must not both run the migrations.
                conn.execute(text("SELECT pg_advisory_xact_lock(7263551)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            self._ensure_salt(conn)

    @staticmethod
    def _ensure_salt(conn: Connection) -> None:
        exists = conn.execute(
            select(tables.meta.c.value).where(tables.meta.c.key == "salt")
        ).scalar()
        if exists is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        tables.meta.insert().values(key="salt", value=secrets.token_hex(32))
                    )
            except IntegrityError:
                pass

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.read() as conn:
            conn.exec_driver_sql("SELECT 1")

    def meta_value(self, key: str) -> str | None:
        with self.read() as conn:
            return conn.execute(
                select(tables.meta.c.value).where(tables.meta.c.key == key)
            ).scalar()

    def start_checkpointer(self, interval: float = 0.5) -> None:
        """SQLite only: copy the WAL into the database from a background thread.

        Otherwise the commit that crosses the autocheckpoint threshold does that work
        while holding the write lock. sqlite3 releases the GIL while it checkpoints, so
        this runs on the other core. PASSIVE never blocks readers or the writer.

        A round runs right after each commit of this process (at most `interval` apart
        otherwise, for other processes' commits), so that it copies one commit's pages
        while the writer is between transactions. Rounds every 0.5 s copied 25 commits'
        pages at once (40-80 ms of writing and fsync), and the commits that overlapped
        them took twice as long: real-time p99 from a request's arrival fell from 21-23
        to 13 ms when rounds followed commits. Under back-to-back commits a round
        starts when the one before ended, and copies whatever committed meanwhile."""
        if not self.is_sqlite or self._checkpointer is not None:
            return
        self._stop_checkpointer.clear()

        def next_round() -> bool:
            """Wait for a commit (or `interval`); False once told to stop."""
            self._committed.wait(interval)
            self._committed.clear()
            return not self._stop_checkpointer.is_set()

        def run() -> None:
            restart_after, backoff = 0.0, _RESTART_BACKOFF[0]
            # A connection of its own, kept: one taken from the pool each round would be
            # the one the writer returned last, whose page cache the writer's next
            # transaction wants (`pool_use_lifo`). Opened again after the pool was renewed.
            conn: Connection | None = None
            generation = -1
            while next_round():
                try:
                    if conn is None or generation != self._generation:
                        if conn is not None:
                            conn.close()
                        conn, generation = self.engine.connect(), self._generation
                    done = self._checkpoint(conn, restart=time.monotonic() >= restart_after)
                    conn.rollback()
                except Exception:  # a busy or closing database: try again next time
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                    conn = None
                    continue
                if done:
                    backoff = _RESTART_BACKOFF[0]
                else:
                    restart_after = time.monotonic() + backoff
                    backoff = min(2 * backoff, _RESTART_BACKOFF[1])
            if conn is not None:
                conn.close()

        self._checkpointer = threading.Thread(target=run, name="nurture-checkpoint", daemon=True)
        self._checkpointer.start()
        # Connections made before (migrations, start-up reads) would still checkpoint on
        # commit: let the pool open them anew, without (`_autocheckpoint`).
        self._reconnect()

    @staticmethod
    def _checkpoint(conn: Connection, *, restart: bool) -> bool:
        """One round of the background checkpointer; False when a RESTART was kept waiting
        (by a reader, or the write lock) and the WAL did not start again.

        A passive checkpoint copies what it can without holding anyone up. Under steady
        writes it never reaches the WAL's end (commits land while it copies), so the WAL
        is never started again and grows without bound: 1.8 GB in 30 s at 1,000 events/s
        measured, and real-time p99 rising with it. Once the WAL is long and the passive
        checkpoint got close to its end, a second one copies what came meanwhile, then
        RESTART the few frames left, holding writers off (5-40 ms measured), so that the
        next commit writes from the WAL's start. It waits for readers a moment only; one
        that is still reading leaves it for later.
        """
        _, log, done = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        if not restart or log < _RESTART_FRAMES or done < log - _RESTART_SLACK:
            return True
        conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")  # what came meanwhile
        conn.exec_driver_sql(f"PRAGMA busy_timeout={_RESTART_WAIT_MS}")
        try:
            busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(RESTART)").one()
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        return not busy

    def stop_checkpointer(self) -> None:
        if self._checkpointer is not None:
            self._stop_checkpointer.set()
            self._committed.set()  # wakes it
            self._checkpointer.join()
            self._checkpointer = None
            self._reconnect()  # connections made from now on checkpoint on commit

    def release_memory(self) -> None:
        """Give back what can be rebuilt, after the process ran short of memory: on SQLite
        the pooled connections, each with a page cache of up to 64 MB (`cache_size`) that
        never shrinks by itself. Connections in use are closed when they come back."""
        if self.is_sqlite:
            self._reconnect()

    def _reconnect(self) -> None:
        """Close the pooled SQLite connections (not an in-memory database's: that would
        lose it), so that new ones get the current settings."""
        if self.url.database not in (None, "", ":memory:"):
            self._generation += 1
            self.engine.dispose()

    def dispose(self) -> None:
        self.stop_checkpointer()
        self.engine.dispose()
