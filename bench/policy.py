"""Send-time policy benchmark (issue 5): how long the decision takes per message.

A SQLite database with `--contacts` contacts (country, zone, email, phone), consents for
half of them, suppressions for 2%, and `--sent` messages sent over the last 14 days; the
policy has quiet hours, two caps and a send time, so every rule is exercised. Measured:

- `decide`: the pure decision alone, facts already loaded (per message);
- `load_facts + decide`: the batch loader (the dispatcher's queries) and the decisions, for
  batches of `--batch` queued messages to random contacts (per message).

Target: at most 1 ms per message including loading facts in batch.

Command line::

    python -m bench.policy [--contacts 100000] [--sent 300000] [--batch 500] [--rounds 20]
        [--database URL]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from nurture.contacts.privacy import suppression_hash
from nurture.messages.policy import PolicyConfig, PolicyMessage, decide, decide_all, load_facts
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_rows

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
COUNTRIES = ["US", "DE", "GB", "FR", "CA", "BR", "IN", "AU", None]
ZONES = ["America/New_York", "Europe/Berlin", "Europe/London", "Asia/Kolkata", None]
CHANNELS = ["email", "email", "email", "sms", "push"]
CONFIG = PolicyConfig.model_validate(
    {
        "quiet_hours": {"sms": {"start": "21:00", "end": "09:00"}},
        "caps": [
            {"channel": "email", "max": 3, "per": "7d"},
            {"channel": "sms", "max": 1, "per": "1d", "over": "skip"},
        ],
        "send_time": {"channels": {"email": "10:00"}},
    }
)


def build(db: Database, contacts: int, sent: int, seed: int = 7) -> None:
    """Fill an empty, migrated database with the benchmark's world."""
    rng = random.Random(seed)
    salt = db.meta_value("salt") or ""
    people, consents, suppressed = [], [], []
    for cid in range(1, contacts + 1):
        email = f"user{cid}@example.com"
        phone = f"+1201555{cid % 10000:04d}"
        people.append(
            {
                "id": cid,
                "email": email,
                "phone": phone,
                "country": rng.choice(COUNTRIES),
                "timezone": rng.choice(ZONES),
                "traits": {},
                "trait_issues": {},
                "first_seen_at": NOW,
                "last_seen_at": NOW,
                "created_at": NOW,
                "updated_at": NOW,
            }
        )
        if cid % 2 == 0:
            for channel, topic, state in (("email", "*", "granted"), ("sms", "*", "granted")):
                consents.append(
                    {
                        "contact_id": cid,
                        "channel": channel,
                        "topic": topic,
                        "state": state if rng.random() > 0.1 else "denied",
                        "source": "import",
                        "recorded_at": NOW - timedelta(days=30),
                    }
                )
        if rng.random() < 0.02:
            suppressed.append(
                {
                    "hash": suppression_hash(salt, email),
                    "kind": "email",
                    "reason": "bounced",
                    "created_at": NOW,
                }
            )
    outbox = []
    for i in range(sent):
        channel = rng.choice(CHANNELS)
        at = NOW - timedelta(seconds=rng.randrange(14 * 86400))
        outbox.append(
            {
                "idempotency_key": f"bench:{i}",
                "contact_id": rng.randrange(1, contacts + 1),
                "channel": channel,
                "template": "t",
                "kind": "marketing",
                "topic": "newsletter",
                "payload": {},
                "status": "delivered",
                "created_at": at,
                "send_after": at,
                "sent_at": at,
            }
        )
    with db.write() as conn:
        for table, rows in (
            (t.contacts, people),
            (t.consents, consents),
            (t.suppressions, suppressed),
            (t.outbox, outbox),
        ):
            for start in range(0, len(rows), 20000):
                insert_rows(conn, table, rows[start : start + 20000])


def queued(contacts: int, count: int, first_id: int, rng: random.Random) -> list[PolicyMessage]:
    """Messages as the dispatcher claims them (not stored: load_facts reads by contact)."""
    return [
        PolicyMessage(
            id=first_id + i,
            contact_id=rng.randrange(1, contacts + 1),
            channel=rng.choice(CHANNELS),
            kind="marketing" if rng.random() < 0.8 else "transactional",
            topic="newsletter",
            payload={},
            send_after=NOW - timedelta(minutes=5),
            created_at=NOW - timedelta(minutes=5),
        )
        for i in range(count)
    ]


def measure(db: Database, contacts: int, batch: int, rounds: int) -> dict[str, Any]:
    rng = random.Random(11)
    load_us: list[float] = []
    total_us: list[float] = []
    decide_us: list[float] = []
    outcomes: dict[str, int] = {}
    for r in range(rounds):
        messages = queued(contacts, batch, 10_000_000 + r * batch, rng)
        with db.read() as conn:
            started = time.perf_counter()
            facts = load_facts(conn, messages, NOW, CONFIG, default_timezone="UTC")
            loaded = time.perf_counter()
            decisions = decide_all(messages, facts, CONFIG, NOW)
            done = time.perf_counter()
        load_us.append((loaded - started) / batch * 1e6)
        total_us.append((done - started) / batch * 1e6)
        for d in decisions.values():
            name = type(d).__name__ + (f" {d.rule}" if hasattr(d, "rule") else "")
            outcomes[name] = outcomes.get(name, 0) + 1
        # decide() alone, on the facts already loaded
        started = time.perf_counter()
        for m in messages:
            decide(m, facts[m.id], CONFIG, NOW)
        decide_us.append((time.perf_counter() - started) / batch * 1e6)
    return {"load": load_us, "total": total_us, "decide": decide_us, "outcomes": outcomes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--sent", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--database", help="a SQLAlchemy URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    console = Console()
    url = args.database or f"sqlite:///{Path(tempfile.mkdtemp()) / 'policy.db'}"
    db = Database(url, sqlite_synchronous="NORMAL")
    db.migrate()
    with db.read() as conn:
        empty = conn.execute(select(t.contacts.c.id).limit(1)).first() is None
    started = time.perf_counter()
    if empty:
        build(db, args.contacts, args.sent)
    console.print(
        f"world: {args.contacts:,} contacts, {args.sent:,} sent messages on {db.backend} "
        f"(built in {time.perf_counter() - started:.1f} s)"
    )
    found = measure(db, args.contacts, args.batch, args.rounds)
    db.dispose()
    table = Table(title=f"Send-time policy, per message (batches of {args.batch})")
    for column in ("measure", "median µs", "p95 µs", "target"):
        table.add_column(column)

    def row(name: str, values: list[float], target: str) -> None:
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        table.add_row(name, f"{statistics.median(values):.1f}", f"{p95:.1f}", target)

    row("decide()", found["decide"], "")
    row("load_facts", found["load"], "")
    row("load_facts + decide_all", found["total"], "≤ 1000")
    console.print(table)
    console.print(
        "outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(found["outcomes"].items()))
    )


if __name__ == "__main__":
    main()
