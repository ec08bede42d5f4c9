"""Shared fixtures. Every storage test runs on SQLite and on PostgreSQL.

PostgreSQL comes from NURTURE_TEST_POSTGRES_URL (default: the local server at
127.0.0.1:5432, user postgres, database test). Each test gets its own schema. When
the server cannot be reached the PostgreSQL variants skip with the reason, except
under CI (CI=true), where they fail: CI must never silently skip them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from nurture.api.app import create_app
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.settings import Settings
from nurture.store import Database

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


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(url, search_path): a fresh, empty database for one test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'nurture.db'}", None
        return
    problem = _postgres_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{problem} (CI must run the PostgreSQL tests)")
        pytest.skip(problem)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield PG_URL, schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


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
def db(database_url: tuple[str, str | None]) -> Iterator[Database]:
    url, schema = database_url
    database = Database(url, search_path=schema, sqlite_synchronous="NORMAL")
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
