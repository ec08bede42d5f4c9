"""Dittofeed's ClickHouse ran out of memory on small instances and dropped events while
answering HTTP 500s. Nurture, short of a database or of memory, answers 503 with
`Retry-After`, acknowledges (200) only what it stored, and a client that sends again on a
503, as Segment's SDKs do, gets every event stored once.

Both tests drive a real HTTP server with real requests. The naive implementations they
catch: a writer that acknowledges before its commit; a server that answers 500 (or 400
`invalid_json`, which an SDK drops for good, when the JSON parser runs out of memory)
instead of 503; a 503 without `Retry-After`; a writer that hangs a request for minutes
while the database stays locked (retrying a 30 s lock wait eight times over).
"""

from __future__ import annotations

import os
import random
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select, text
from tests.conftest import ALONE, HEAVY, PG_URL, free_port

from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.database import IDENTITY_LOCK

pytestmark = [HEAVY, ALONE]  # see tests/conftest.py

APP_NAME = "nurture-small-machines-"  # + the test's schema: the connections we may cut


@pytest.fixture
def db(database_url: tuple[str, str | None]) -> Iterator[Database]:
    """The test database; on PostgreSQL its connections carry an application name of
    their own, so that the test can cut them without touching anyone else's."""
    url, schema = database_url
    if schema is not None:
        url = f"{url}?application_name={APP_NAME}{schema}"
    database = Database(url, search_path=schema, sqlite_synchronous="NORMAL")
    database.migrate()
    yield database
    database.dispose()


class SdkClient:
    """Sends batches as Segment's SDKs do: a batch is kept until it is answered 200, and
    sent again (same messageIds) after a 503, a 5xx or a dropped connection, with
    exponential backoff and jitter (so that clients do not all come back at once), and
    at least the `Retry-After` it was given (at most `cap` seconds here, to keep the
    test short).

    Right after each 200 it checks, in the database, that the batch is stored: a 200
    for an event that is not stored is recorded in `lies`."""

    def __init__(
        self,
        base: str,
        key: str,
        stored: Callable[[list[str]], set[str]],
        *,
        seed: int,
        cap: float = 0.5,
        attempts: int = 60,
    ) -> None:
        self.http = httpx.Client(base_url=base, auth=(key, ""), timeout=30)
        self.stored = stored
        self.cap = cap
        self.statuses: Counter[object] = Counter()
        self.lies: list[str] = []
        self.acked: set[str] = set()
        self.on_dropped: Callable[[], None] = lambda: None
        self.random = random.Random(seed)
        self.attempts = attempts

    def backoff(self, attempt: int, retry_after: str | None) -> None:
        jittered = min(0.05 * 2**attempt, 4 * self.cap) * self.random.uniform(0.5, 1.5)
        time.sleep(max(jittered, min(float(retry_after or 0), self.cap)))

    def send(self, ids: list[str], properties: dict[str, object]) -> None:
        batch = [
            {"type": "track", "userId": i.split("-")[0], "event": "Used", "messageId": i,
             "properties": properties}
            for i in ids
        ]  # fmt: skip
        for attempt in range(self.attempts):
            try:
                response = self.http.post("/v1/batch", json={"batch": batch})
            except httpx.TransportError as exc:
                self.statuses[type(exc).__name__] += 1
                self.on_dropped()
                self.backoff(attempt, None)
                continue
            status = response.status_code
            if status == 200:
                self.statuses[200] += 1
                self.lies.extend(sorted(set(ids) - self.stored(ids)))
                self.acked.update(ids)
                return
            try:
                code = response.json()["error"]["code"]
            except ValueError:  # not our JSON error: a bare 500 from the HTTP server
                code = f"not json: {response.text[:60]!r}"
            retry_after = response.headers.get("Retry-After")
            self.statuses[(status, code, retry_after is not None)] += 1
            self.backoff(attempt, retry_after)
        raise AssertionError(f"batch {ids[0]}.. was never acknowledged: {self.statuses}")


def stored_ids(db: Database) -> Callable[[list[str]], set[str]]:
    def stored(ids: list[str]) -> set[str]:
        with db.read() as conn:
            query = select(t.events.c.message_id).where(t.events.c.message_id.in_(ids))
            return set(conn.execute(query).scalars())

    return stored


def run_clients(clients: list[SdkClient], batches: Callable[[int], Iterator[list[str]]],
                properties: dict[str, object]) -> list[BaseException]:  # fmt: skip
    """Each client sends its batches one after another, all clients at once."""
    errors: list[BaseException] = []

    def work(n: int, client: SdkClient) -> None:
        try:
            for ids in batches(n):
                client.send(ids, properties)
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n, c)) for n, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors


def all_stored(db: Database) -> Counter[str]:
    with db.read() as conn:
        return Counter(conn.execute(select(t.events.c.message_id)).scalars())


def test_a_locked_or_cut_off_database_answers_503_and_loses_nothing(
    db: Database, nurture: Nurture, live_server: str, write_key: str,
    database_url: tuple[str, str | None],
) -> None:  # fmt: skip
    """The naive writer hangs on the lock (SQLite's 30 s busy wait, retried eight times;
    PostgreSQL waiting for ever), acknowledges before the commit, or answers a lost
    connection with a 500."""
    # Given a live server whose ingest waits at most 1 s for another writer's lock
    nurture.writer.lock_wait = 1.0
    url, schema = database_url
    checker = Database(url, search_path=schema)
    clients = [SdkClient(live_server, write_key, stored_ids(checker), seed=n) for n in range(4)]
    outage_over = threading.Event()

    def batches(n: int) -> Iterator[list[str]]:
        # Each client sends 10-event batches until the outage is over, then one more.
        b = 0
        while not outage_over.is_set() or b < 3:
            yield [f"u{n}-{b}-{i}" for i in range(10)]
            b += 1
            time.sleep(0.02)
        yield [f"u{n}-{b}-{i}" for i in range(10)]

    def outage() -> None:
        time.sleep(0.3)
        if schema is None:
            # Another process holds SQLite's write lock for 2.5 s.
            other = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            time.sleep(2.5)
            other.execute("COMMIT")
            other.close()
        else:
            engine = create_engine(PG_URL)
            with engine.connect() as conn:
                # Another writer holds this database's ingest lock for 2.5 s ...
                with conn.begin():
                    conn.execute(text(f"SET LOCAL search_path = {schema}"))
                    conn.execute(
                        text(
                            "SELECT pg_advisory_xact_lock(CAST(:k AS int),"
                            " hashtext(current_schema()))"
                        ),
                        {"k": IDENTITY_LOCK},
                    )
                    time.sleep(2.5)
                # ... then the server's connections are cut, again and again, for 1.5 s,
                # as when PostgreSQL restarts.
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE application_name = :name"
                        ),
                        {"name": APP_NAME + schema},
                    )
                    conn.commit()
                    time.sleep(0.05)
            engine.dispose()
        outage_over.set()

    # When clients send batches through the outage, retrying on 503
    cutter = threading.Thread(target=outage)
    cutter.start()
    errors = run_clients(clients, batches, {"plan": "pro"})
    cutter.join()

    # Then every answer was a 200 or a 503 storage_unavailable with Retry-After,
    # and there were 503s: the lock outlived the wait
    statuses = sum((c.statuses for c in clients), Counter[object]())
    assert errors == []
    answers = {s for s in statuses if not isinstance(s, str)}
    assert answers <= {200, (503, "storage_unavailable", True)}, statuses
    assert statuses[(503, "storage_unavailable", True)] > 0, statuses
    # And no 200 came before its events were stored
    assert [lie for c in clients for lie in c.lies] == []
    # And after the retries every event is stored, once
    sent = set().union(*(c.acked for c in clients))
    stored = all_stored(checker)
    assert set(stored) == sent and set(stored.values()) == {1}
    checker.dispose()


def _vm_size(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def test_a_server_short_of_memory_answers_503_and_loses_nothing(
    db: Database, write_key: str, cli_url: str, tmp_path: Path
) -> None:
    """The naive server answers 500, or 400 (`invalid_json` when the JSON parser cannot
    allocate its buffer, or uvicorn's "Invalid HTTP request" when it cannot buffer the
    body): the SDK then drops a valid batch for good. Or, having failed once, it stays out
    of memory and fails every retry (a fragmented heap, every request in flight at once)."""
    # Given `nurture serve` in its own process, limited, once started, to 8 MB more
    # address space than it uses (RLIMIT_AS), with one malloc arena (so that memory
    # reserved by threads before the limit does not absorb it) and 2 ingest slots
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "NURTURE_LOG_LEVEL": "warning",
        "MALLOC_ARENA_MAX": "1",
        "NURTURE_INGEST_CONCURRENCY": "2",
    }
    log = (tmp_path / "serve.log").open("wb")
    restarts = 0

    def start(limit: bool) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "nurture", "serve", "--port", str(port)]
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(f"{base}/v1/batch", auth=(write_key, ""), json={"batch": []})
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
        if limit:
            # Once its background threads have made their first rounds (connections
            # opened, definitions loaded): the limit is on a server at work, not on one
            # still starting, whose first rounds would take the headroom meant for ingest.
            time.sleep(2)
            size = _vm_size(proc.pid) + 8 * 2**20
            resource.prlimit(proc.pid, resource.RLIMIT_AS, (size, size))
        return proc

    server = [start(limit=True)]
    restart_lock = threading.Lock()

    def restart_if_dead() -> None:
        # A process that dies of it (a C extension that does not check its malloc) is
        # started again, as a supervisor would, without the limit.
        nonlocal restarts
        with restart_lock:
            if server[0].poll() is not None:
                restarts += 1
                server[0] = start(limit=False)

    # 40 tries (about 30 s of backoff): in the full suite a recovery once outlasted 25.
    clients = [
        SdkClient(base, write_key, stored_ids(db), seed=n, cap=0.2, attempts=40) for n in range(8)
    ]
    for client in clients:
        client.on_dropped = restart_if_dead

    def batches(n: int) -> Iterator[list[str]]:
        for b in range(8):
            yield [f"u{n}-{b}-{i}" for i in range(14)]

    try:
        # When 8 clients send 8 batches each of 14 events of 30 KB at once
        errors = run_clients(clients, batches, {"blob": "x" * 30_000})
    finally:
        server[0].terminate()
        server[0].wait(10)
        log.close()

    # Then the limit bit (503s, the process died of it, or orjson was short of memory and
    # the slow parser read the body) ...
    statuses = sum((c.statuses for c in clients), Counter[object]())
    assert errors == []
    short = (tmp_path / "serve.log").read_text().count("short of memory")
    assert statuses[(503, "storage_unavailable", True)] > 0 or restarts > 0 or short > 0, statuses
    # ... and every answer was a 200 or a 503 with Retry-After, never a 400 or a 500
    answers = {s for s in statuses if not isinstance(s, str)}
    assert answers <= {200, (503, "storage_unavailable", True)}, statuses
    # And no 200 came before its events were stored, and every event is stored once
    assert [lie for c in clients for lie in c.lies] == []
    stored = all_stored(db)
    assert set(stored) == set().union(*(c.acked for c in clients))
    assert len(stored) == 8 * 8 * 14 and set(stored.values()) == {1}
    # And no valid batch was kept as rejected input
    with db.read() as conn:
        assert conn.execute(select(t.rejected_events.c.id)).first() is None
