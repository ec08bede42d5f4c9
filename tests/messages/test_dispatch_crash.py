"""SIGKILL `nurture worker` dispatchers while they send 1,500 emails to a real SMTP server,
then let a dispatcher finish after the leases run out, and prove that every message was
delivered and recorded, and that a message reached the server twice only where the
guarantee allows it: the process died after the server took it and before the send was
recorded; such messages are `flagged`, and carry the same Message-ID both times.

On PostgreSQL two workers share the outbox; on SQLite one worker runs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import orjson
from aiosmtpd.controller import Controller
from sqlalchemy import func, select
from tests.channels import servers
from tests.conftest import HEAVY, make_settings, process_url

from nurture.channels.mime import message_id
from nurture.clock import SimulatedClock, SystemClock
from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t

pytestmark = HEAVY  # one at a time (see tests/conftest.py)

MESSAGES = 1_500
KILLS = 3
TEMPLATE = {
    "email": {
        "subject": "Your invoice, {{ contact.email }}",
        "html": "<html><body><p>Invoice for {{ contact.email }}</p></body></html>",
    }
}


def _fill(db: Database) -> None:
    nurture = Nurture(make_settings(str(db.url)), db=db).start()
    try:
        nurture.templates.put("invoice", TEMPLATE)
        nurture.ingest(
            [
                {"type": "identify", "userId": f"c{i}", "traits": {"email": f"c{i}@example.com"}}
                for i in range(MESSAGES)
            ]
        )
        now = nurture.clock.now()
        with db.write() as conn:
            ids = conn.execute(select(t.contacts.c.id).order_by(t.contacts.c.id)).scalars().all()
            conn.execute(
                t.outbox.insert(),
                [
                    {
                        "idempotency_key": f"invoice:{cid}",
                        "contact_id": cid,
                        "channel": "email",
                        "template": "invoice",
                        "kind": "transactional",
                        "payload": {},
                        "status": "queued",
                        "created_at": now,
                        "send_after": now,
                    }
                    for cid in ids
                ],
            )
    finally:
        nurture.stop()


def _worker(env: dict[str, str], logs: Path, n: int) -> subprocess.Popen[bytes]:
    command = [
        str(Path(sys.executable).with_name("nurture")),
        "worker",
        "--no-segments",
        "--no-journeys",
    ]
    with (logs / f"worker-{n}.log").open("wb") as log:
        return subprocess.Popen(command, env=env, cwd=logs, stdout=log, stderr=subprocess.STDOUT)


def test_killed_dispatchers_lose_nothing_and_duplicate_only_flagged_messages(
    db: Database, database_url: tuple[str, str | None], tmp_path: Path
) -> None:
    _fill(db)
    logs = tmp_path / "logs"
    logs.mkdir()
    with _slow_smtp_server() as (handler, port):
        channels = {"email": {"provider": "smtp", "host": "127.0.0.1", "port": port,
                              "starttls": False, "from": "billing@acme.test"}}  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
        env |= {
            "NURTURE_DATABASE_URL": process_url(*database_url),
            "NURTURE_PROJECT_DIR": str(tmp_path),
            "NURTURE_CHANNELS": orjson.dumps(channels).decode(),
            "NURTURE_DISPATCH_BATCH": "25",  # small rounds: more of them for a kill to cut
        }
        workers = 1 if db.is_sqlite else 2
        running = [_worker(env, logs, i) for i in range(workers)]
        started = workers
        try:
            # Given dispatchers at work, when one is killed each time more mail arrived
            for kill in range(KILLS):
                # Off the batch boundaries (25), so that the kill finds a batch half sent
                goal = MESSAGES * (kill + 1) // (KILLS + 2) + 12
                deadline = time.monotonic() + 120
                while len(handler.received) < goal:
                    assert time.monotonic() < deadline, "the dispatchers stopped sending"
                    assert all(p.poll() is None for p in running), "a worker died by itself"
                    time.sleep(0.01)
                victim = running.pop(0)
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                running.append(_worker(env, logs, started))
                started += 1
            # Let the survivors send what they can, then stop them
            deadline = time.monotonic() + 120
            while len(handler.received) < MESSAGES * 0.9 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            for proc in running:
                proc.send_signal(signal.SIGTERM)
            for proc in running:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for path in logs.glob("*.log"):
            assert "Traceback" not in path.read_text(errors="replace"), path.name
        # When a dispatcher runs after the killed ones' leases ran out
        now = SystemClock().now()
        clock = SimulatedClock(max(now, _latest_lease(db) or now) + timedelta(seconds=1))
        settings = make_settings(str(db.url), channels=channels)
        with Nurture(settings, clock=clock, db=db) as n:
            while n.dispatcher.run_due().handled:
                pass
            n.channels["email"].close()
        received = Counter(
            str(message_from_bytes(r.data, policy=policy.default)["Message-ID"])
            for r in handler.received
        )
    # Then every message is recorded as sent and reached the server
    with db.read() as conn:
        rows = conn.execute(select(t.outbox.c.idempotency_key, t.outbox.c.status,
                                   t.outbox.c.flagged)).all()  # fmt: skip
    assert len(rows) == MESSAGES
    assert Counter(r.status for r in rows) == {"sent": MESSAGES}
    ids = {r.idempotency_key: message_id(r.idempotency_key, "acme.test") for r in rows}
    assert set(received) == set(ids.values())
    # And a message arrived twice only if it was flagged (and at most twice per kill)
    twice = {key for key, mid in ids.items() if received[mid] > 1}
    flagged = {r.idempotency_key for r in rows if r.flagged}
    assert flagged, "no kill cut into a batch in flight: the test proved nothing"
    assert twice <= flagged
    assert all(received[ids[key]] <= 1 + KILLS for key in twice)
    assert sum(received.values()) - MESSAGES <= len(flagged)


class _SlowHandler(servers.SmtpHandler):
    """Takes 3 ms a message, as a real server does, so that most of a round is sending
    and a kill finds a batch half sent rather than between rounds."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(0.003)
        return await super().handle_DATA(server, session, envelope)


@contextmanager
def _slow_smtp_server() -> Iterator[tuple[servers.SmtpHandler, int]]:
    handler = _SlowHandler()
    port = servers.free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def _latest_lease(db: Database) -> datetime | None:
    with db.read() as conn:
        return conn.execute(select(func.max(t.outbox.c.lease_until))).scalar()
