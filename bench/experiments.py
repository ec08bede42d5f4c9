"""A/B reports at scale: the counts behind the experiment report, the lift report and the
automatic winner's check, on a journey with N enrolments through a two-path split, N
messages with two variants and a human open on a third of them, a 10% holdout.

Rows are written straight into a fresh database (the runtime's own tables, as the runtime
writes them); each count is timed best of 3 after a warm-up. The automatic winner's check
runs the split count inside a step's transaction, at most every `check_every` per process.

Command line::

    python -m bench.experiments [--contacts N] [--backend sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text

from bench.harness import POSTGRES_URL
from nurture.analytics.experiments import holdout_arms, split_arms, variant_arms
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_rows

START = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK = 50_000


def _fill(db: Database, contacts: int) -> None:
    # Holdout: every 10th contact. Conversion: 4% held out; treated 5% on path A, 6% on B.
    with db.write() as conn:
        for first in range(0, contacts, CHUNK):
            ids = range(first + 1, min(first + CHUNK, contacts) + 1)
            at = [START + timedelta(seconds=i) for i in ids]
            control = [i % 10 == 0 for i in ids]
            converted = [
                i * 7919 % 100 < (4 if k else 5 + i % 2) for i, k in zip(ids, control, strict=True)
            ]
            insert_rows(conn, t.enrolments, [
                {"id": i, "journey_key": "ab", "version": 1, "contact_id": i,
                 "status": "converted" if c else "completed", "control": k, "step": None,
                 "due_at": None, "seq": 3, "attempts": 0, "last_error": None,
                 "entry_key": f"e{i}", "exclusive": True, "context": {}, "entered_at": a,
                 "ended_at": a, "end_reason": None,
                 "converted_at": a + timedelta(hours=2) if c else None,
                 "revenue": float(i % 50) if c else None}
                for i, a, k, c in zip(ids, at, control, converted, strict=True)
            ])  # fmt: skip
            treated = [(i, a) for i, a, k in zip(ids, at, control, strict=True) if not k]
            insert_rows(conn, t.journey_steps, [
                {"enrolment_id": i, "seq": 1, "journey_key": "ab", "version": 1, "step": "test",
                 "contact_id": i, "outcome": f"path:{'AB'[i % 2]}",
                 "executed_at": a + timedelta(hours=1)}
                for i, a in treated
            ])  # fmt: skip
            insert_rows(conn, t.outbox, [
                {"id": i, "idempotency_key": f"{i}:2", "contact_id": i, "enrolment_id": i,
                 "journey_key": "ab", "version": 1, "step": "hello", "channel": "email",
                 "template": "t", "variant": "AB"[i % 2], "kind": "marketing", "payload": {},
                 "status": "sent", "created_at": a + timedelta(hours=1),
                 "send_after": a + timedelta(hours=1)}
                for i, a in treated
            ])  # fmt: skip
            insert_rows(conn, t.message_feedback, [
                {"provider": "ses", "event_key": f"o{i}", "outbox_id": i, "type": "opened",
                 "occurred_at": a + timedelta(hours=3), "received_at": a + timedelta(hours=3),
                 "payload": {"machine": i % 9 == 0}}
                for i, a in treated if i % 3 == 0
            ])  # fmt: skip


def _best(action: Callable[[], Any]) -> tuple[float, Any]:
    action()
    times, out = [], None
    for _ in range(3):
        began = time.perf_counter()
        out = action()
        times.append(time.perf_counter() - began)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    console = Console()
    schema = None
    folder = tempfile.TemporaryDirectory()
    if args.backend == "sqlite":
        db = Database(f"sqlite:///{Path(folder.name) / 'bench.db'}")
    else:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with create_engine(POSTGRES_URL).begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        db = Database(POSTGRES_URL, search_path=schema)
    try:
        db.migrate()
        began = time.perf_counter()
        _fill(db, args.contacts)
        if args.backend == "postgresql":
            with db.write() as conn:
                conn.execute(text("ANALYZE"))
        console.print(f"filled {args.contacts:,} enrolments in {time.perf_counter() - began:.1f}s")
        table = Table(title=f"A/B counts, {args.contacts:,} enrolments, {args.backend}")
        for column in ("count", "seconds", "arms"):
            table.add_column(column)
        cases: list[tuple[str, Callable[[Any], Any]]] = [
            ("split, converted (report and winner check)",
             lambda c: split_arms(c, "ab", "test", "converted")),
            ("split, opened", lambda c: split_arms(c, "ab", "test", "opened")),
            ("variants, opened", lambda c: variant_arms(c, "ab", "hello", "opened")),
            ("holdout lift", lambda c: holdout_arms(c, "ab")),
        ]  # fmt: skip
        for name, count in cases:

            def run(count: Callable[[Any], Any] = count) -> Any:
                with db.read() as conn:
                    return count(conn)

            seconds, arms = _best(run)
            summary = ", ".join(
                f"{a.name}: {a.conversions:,}/{a.recipients:,}" for a in arms.values()
            )
            table.add_row(name, f"{seconds:.2f}", summary)
        console.print(table)
    finally:
        db.dispose()
        if schema is not None:
            with create_engine(POSTGRES_URL).begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        folder.cleanup()


if __name__ == "__main__":
    main()
