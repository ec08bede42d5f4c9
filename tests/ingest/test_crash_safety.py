"""kill -9 the server while it ingests: every acknowledged message is stored, and the
client's retries store the rest exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select
from tests.conftest import HEAVY, process_url

from nurture.clock import SystemClock
from nurture.keys import KeyStore
from nurture.store import Database
from nurture.store import tables as t

pytestmark = HEAVY  # one at a time (see tests/conftest.py)

BATCHES = 300
PER_BATCH = 50


def _start(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nurture", "serve", "--port", str(port)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not start: {log.read_text()[-2000:]}")


def _batch(n: int) -> dict[str, object]:
    return {
        "batch": [
            {
                "type": "track",
                "userId": f"user-{(n * PER_BATCH + i) % 97}",
                "event": "Tick",
                "messageId": f"b{n}-m{i}",
                "properties": {"n": n, "i": i},
            }
            for i in range(PER_BATCH)
        ]
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stored_ids(db: Database) -> list[str]:
    with db.read() as conn:
        return list(conn.execute(select(t.events.c.message_id)).scalars())


def test_kill_9_mid_ingest_loses_and_duplicates_nothing(
    database_url: tuple[str, str | None], tmp_path: Path
) -> None:
    # Given a real `nurture serve` process on the database, and a write key
    url, schema = database_url
    db = Database(url, search_path=schema)
    db.migrate()
    _, key = KeyStore(db, SystemClock()).create("write")
    env = {**os.environ, "NURTURE_DATABASE_URL": process_url(url, schema)}
    env.pop("NURTURE_CONFIG", None)
    port = _free_port()
    log = tmp_path / "server.log"
    server = _start(env, port, log)
    base = f"http://127.0.0.1:{port}"

    # When four clients send batches and the server is killed with SIGKILL mid-stream
    acked: set[int] = set()
    lock = threading.Lock()
    todo = list(range(BATCHES))

    def client() -> None:
        with httpx.Client(base_url=base, auth=(key, ""), timeout=10) as http:
            while True:
                with lock:
                    if not todo:
                        return
                    n = todo.pop(0)
                try:
                    r = http.post("/v1/batch", json=_batch(n))
                except httpx.TransportError:
                    return
                if r.status_code == 200:
                    with lock:
                        acked.add(n)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for th in threads:
        th.start()
    while len(acked) < BATCHES // 4:
        time.sleep(0.005)
    os.kill(server.pid, signal.SIGKILL)
    server.wait(10)
    for th in threads:
        th.join(30)

    # Then every acknowledged message is in the store, and nothing is stored twice
    stored = _stored_ids(db)
    assert len(stored) == len(set(stored))
    missing = {f"b{n}-m{i}" for n in acked for i in range(PER_BATCH)} - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages lost"
    assert len(acked) < BATCHES, "the kill came too late to prove anything"

    # When the server restarts and the clients resend everything they did not see
    # acknowledged, plus some they did (a lost response looks the same to a client)
    server = _start(env, port, log)
    try:
        with httpx.Client(base_url=base, auth=(key, ""), timeout=10) as http:
            for n in sorted(set(range(BATCHES)) - acked) + sorted(acked)[:10]:
                assert http.post("/v1/batch", json=_batch(n)).status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)

    # Then every message is stored exactly once
    stored = _stored_ids(db)
    assert len(stored) == BATCHES * PER_BATCH
    assert len(set(stored)) == len(stored)
    with db.read() as conn:
        assert conn.execute(select(func.count()).select_from(t.events)).scalar() == len(stored)
    db.dispose()
