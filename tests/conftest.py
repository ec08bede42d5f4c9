"""Shared fixtures. Every storage test runs on SQLite and on PostgreSQL.

PostgreSQL comes from NURTURE_TEST_POSTGRES_URL (default: the local server at
127.0.0.1:5432, user postgres, database test). Each test gets its own schema. When
the server cannot be reached the PostgreSQL variants skip with the reason, except
under CI (CI=true), where they fail: CI must never silently skip them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient
from tests.databases import PostgresSchemas, copy_sqlite_template, make_sqlite_template

from nurture.api.app import create_app
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.settings import Settings
from nurture.store import Database

# Tests that run several processes at full speed and kill them (crash safety). scripts/test
# runs the suite on two xdist workers with --dist loadgroup: this group keeps these tests on
# one worker, one after another, so that no two of them compete for the machine's two cores
# (their deadlines hold with one light test beside them); it is scheduled first, being the
# largest unit of work.
HEAVY = pytest.mark.xdist_group("heavy")
# Tests whose time budgets are part of what they check (a client's retries must outlast an
# outage): under xdist, nothing else runs while one of them does (see `_alone`).
ALONE = pytest.mark.alone


@pytest.fixture(autouse=True)
def _alone(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Under xdist, a test marked ALONE holds an exclusive lock shared by the session's
    workers, and every other test a shared one."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    # The session's temporary folder, above each worker's own (popen-gw0, ...).
    path = tmp_path_factory.getbasetemp().parent / "alone.lock"
    exclusive = request.node.get_closest_marker("alone") is not None
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


PG_URL = os.environ.get(
    "NURTURE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
_pg_problem: str | None = None
_pg_checked = False


def _postgres_problem() -> str | None:
    global _pg_checked, _pg_problem
    if not _pg_checked:
        _pg_checked = True
        try:
            engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
        except Exception as exc:
            _pg_problem = f"PostgreSQL at {PG_URL} is unreachable: {exc.__class__.__name__}: {exc}"
    return _pg_problem


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database migrated once per session, for the `db` fixture to copy."""
    return make_sqlite_template(tmp_path_factory.mktemp("template") / "nurture.db")


@pytest.fixture(scope="session")
def postgres_schemas() -> Iterator[PostgresSchemas]:
    """The session's PostgreSQL schemas: empty ones, and a pool of migrated ones."""
    schemas = PostgresSchemas(PG_URL)
    yield schemas
    schemas.close()


MIGRATED = pytest.StashKey[bool]()  # on a test whose database_url came migrated


@pytest.fixture
def database_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, str | None]]:
    """(url, search_path): a database of the test's own; empty, unless the test uses the
    `db` fixture: then it comes already migrated, a copy made without running the
    migrations again (see tests/databases.py)."""
    migrated = "db" in request.fixturenames
    request.node.stash[MIGRATED] = migrated
    if backend == "sqlite":
        path = tmp_path / "nurture.db"
        if migrated:
            copy_sqlite_template(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}", None
        return
    problem = _postgres_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{problem} (CI must run the PostgreSQL tests)")
        pytest.skip(problem)
    schemas: PostgresSchemas = request.getfixturevalue("postgres_schemas")
    if migrated:
        schema = schemas.take_migrated()
        yield PG_URL, schema
        schemas.give_back(schema)
    else:
        schema = schemas.create_empty()
        yield PG_URL, schema
        schemas.drop(schema)


def process_url(url: str, schema: str | None) -> str:
    """The database URL that leads another process (a CLI run, a server, a worker) to the
    test's database: on PostgreSQL, to the test's own schema."""
    if schema is None:
        return url
    return f"{url}?options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def cli_url(
    database_url: tuple[str, str | None], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    """NURTURE_DATABASE_URL for the test database, in a clean working directory."""
    url = process_url(*database_url)
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("NURTURE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NURTURE_DATABASE_URL", url)
    return url


@pytest.fixture
def db(database_url: tuple[str, str | None], request: pytest.FixtureRequest) -> Iterator[Database]:
    """The test's database, at the newest migration."""
    url, schema = database_url
    database = Database(url, search_path=schema, sqlite_synchronous="NORMAL")
    if not request.node.stash.get(MIGRATED, False):
        database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


def make_settings(url: str, **overrides: Any) -> Settings:
    """Settings that ignore the developer's environment and nurture.yaml."""
    # model_validate checks the values (nested settings become their models) without
    # reading the environment or nurture.yaml, which only __init__ does.
    return Settings.model_validate(
        {**dict(Settings.model_construct()), "database_url": url, **overrides}
    )


@pytest.fixture
def nurture(db: Database, clock: SimulatedClock) -> Iterator[Nurture]:
    instance = Nurture(make_settings(str(db.url)), clock=clock, db=db)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def write_key(nurture: Nurture) -> str:
    return nurture.keys.create("write", "test")[1]


@pytest.fixture
def admin_key(nurture: Nurture) -> str:
    return nurture.keys.create("admin", "test")[1]


@pytest.fixture
def client(nurture: Nurture) -> Iterator[TestClient]:
    """An in-process HTTP client for the app (raises nothing: 500s come back as responses)."""
    with TestClient(
        create_app(nurture, manage_lifecycle=False), raise_server_exceptions=False
    ) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_server(nurture: Nurture) -> Iterator[str]:
    """The app served by uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(nurture, manage_lifecycle=False),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
