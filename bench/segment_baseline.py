"""Baseline for segment evaluation: the reference segment as hand-written SQL, timed with
candidate indexes on `events`, before the condition compiler exists.

The reference segment of the design is "did A at least 3 times in the last 30 days and
never did B", with "now" the end of the world's 90 days. The design's pair, Logged In and
Order Completed, does not work on the generated data: only SaaS contacts log in and only
shop contacts order, so "never did B" removes nobody. The default pair is therefore
Product Viewed (A) and Order Completed (B), both shop events: browsers who never bought.

A and B are track events, and page names share the `event` column, so every shape asks
for `type = 'track'` too (`--any-type` leaves that out).

Each candidate set of indexes (`(contact_id, timestamp)` alone, then with one more) is
made on the cached world database (bench/world_db.py): the schema's other secondary
indexes on `events` are dropped for the run and recreated from tables.py at its end (and
at the start of the next run, should one be cut short). Each query shape runs once to
warm up, then 3 times (best kept). Each set also reports the extra index's size and build
time and the cost of inserting events (copies of the newest ones, 90 days later, rolled
back: 100,000 on SQLite, 20,000 on PostgreSQL, which keeps them as dead tuples until the
`VACUUM events` at the end).

    python -m bench.segment_baseline --contacts 1000000 [--backend postgresql]
    python -m bench.segment_baseline --contacts 100000 --a "Logged In" --b "Order Completed"
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Index, bindparam, text
from sqlalchemy.schema import CreateIndex

from bench.harness import log
from bench.world_db import world_info
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.types import UTCDateTime

BASE = ("contact_id", "timestamp")  # the index every set keeps
# name -> the extra index's columns (none: BASE alone)
CANDIDATES: dict[str, tuple[str, ...]] = {
    "(contact_id, timestamp) only": (),
    "+ (event, timestamp, contact_id)": ("event", "timestamp", "contact_id"),
    "+ (event, contact_id, timestamp)": ("event", "contact_id", "timestamp"),
    "+ (event, type, contact_id, timestamp)": ("event", "type", "contact_id", "timestamp"),
}
BENCH_INDEX = "ix_bench_segment_candidate"

# {track} becomes the type filter, or nothing.
_A = "event = :a{track} AND timestamp >= :since AND timestamp < :now"
_B = "event = :b{track} AND timestamp < :now"
_A_E = "e.event = :a{track} AND e.timestamp >= :since AND e.timestamp < :now"
_B_B = "b.event = :b{track} AND b.timestamp < :now"
SHAPES = {
    # Contacts with 3+ A in the window, grouped, minus everyone who ever did B.
    "group + NOT IN": f"""
        SELECT contact_id FROM events WHERE {_A}
        GROUP BY contact_id HAVING count(*) >= 3
        AND contact_id NOT IN (SELECT contact_id FROM events WHERE {_B})
    """,
    # The same groups; B looked up per group.
    "group + NOT EXISTS": f"""
        SELECT e.contact_id FROM events e WHERE {_A_E}
        GROUP BY e.contact_id HAVING count(*) >= 3
        AND NOT EXISTS (SELECT 1 FROM events b WHERE b.contact_id = e.contact_id
                        AND {_B_B})
    """,
    # Contact by contact: a count subquery for A, NOT EXISTS for B.
    "per contact: count + NOT EXISTS": f"""
        SELECT c.id FROM contacts c WHERE c.merged_into IS NULL
        AND (SELECT count(*) FROM events WHERE contact_id = c.id AND {_A}) >= 3
        AND NOT EXISTS (SELECT 1 FROM events b WHERE b.contact_id = c.id
                        AND {_B_B})
    """,
}


@dataclass
class Timing:
    """One query shape under one index set."""

    shape: str
    seconds: float | None  # best run; None when it hit the timeout
    runs: int
    members: int | None
    plan: list[str] = field(default_factory=list)


@dataclass
class Variant:
    """One index set: what the extra index costs, and the timings."""

    name: str
    build_seconds: float = 0.0
    index_mb: float = 0.0
    insert_us: float = 0.0  # per inserted event
    timings: list[Timing] = field(default_factory=list)


class QueryTimeout(Exception):
    pass


@contextmanager
def _deadline(conn: Connection, seconds: float) -> Iterator[None]:
    """Abort the statements of the block after `seconds`."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET statement_timeout = {int(seconds * 1000)}")
        try:
            yield
        except Exception as exc:
            if "statement timeout" in str(exc):
                conn.rollback()
                raise QueryTimeout from exc
            raise
        finally:
            conn.exec_driver_sql("SET statement_timeout = 0")
        return
    raw: Any = conn.connection.driver_connection
    end = time.perf_counter() + seconds
    raw.set_progress_handler(lambda: int(time.perf_counter() > end), 100_000)
    try:
        yield
    except Exception as exc:
        if "interrupted" in str(exc):
            raise QueryTimeout from exc
        raise
    finally:
        raw.set_progress_handler(None, 0)


def _statement(shape: str, prefix: str = "", track: bool = True) -> Any:
    sql = SHAPES[shape].replace("{track}", " AND type = 'track'" if track else "")
    return text(prefix + sql).bindparams(
        bindparam("since", type_=UTCDateTime()), bindparam("now", type_=UTCDateTime())
    )


def plan(conn: Connection, shape: str, params: dict[str, Any], track: bool) -> list[str]:
    """The query plan, as the database prints it (without JIT details on PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(_statement(shape, "EXPLAIN (COSTS OFF) ", track), params)
        lines = [row[0] for row in rows]
        return [line for line in lines[: lines.index("JIT:") if "JIT:" in lines else None]]
    explain = _statement(shape, "EXPLAIN QUERY PLAN ", track)
    return [row[-1] for row in conn.execute(explain, params)]


def time_shape(
    conn: Connection,
    shape: str,
    params: dict[str, Any],
    *,
    track: bool = True,
    repeat: int = 3,
    timeout: float = 180.0,
) -> Timing:
    """Warm up once, then the best of `repeat` runs (the warm-up alone when it is slow)."""
    sql = _statement(shape, "", track)
    timing = Timing(shape, None, 0, None, plan(conn, shape, params, track))
    seconds: list[float] = []
    try:
        with _deadline(conn, timeout):
            for _ in range(repeat + 1):
                started = time.perf_counter()
                timing.members = len(set(conn.execute(sql, params).scalars()))
                seconds.append(time.perf_counter() - started)
                if seconds[0] > timeout / 4:
                    break
    except QueryTimeout:
        log(f"  {shape}: timed out after {timeout:.0f}s")
        return timing
    timed = seconds[1:] or seconds
    timing.seconds, timing.runs = min(timed), len(timed)
    return timing


def index_mb(conn: Connection, name: str) -> float:
    """The on-disk size of one index."""
    if conn.dialect.name == "postgresql":
        size = conn.execute(text("SELECT pg_relation_size(:n)"), {"n": name}).scalar_one()
    else:
        size = conn.execute(
            text("SELECT sum(pgsize) FROM dbstat WHERE name = :n"), {"n": name}
        ).scalar_one()
    return float(size or 0) / 1_000_000


def insert_cost(conn: Connection, count: int = 100_000) -> float:
    """Microseconds per event to insert `count` events (copies of the newest, 90 days
    later, under new message ids) with the indexes as they are; rolled back. (PostgreSQL
    keeps the rolled-back rows as dead tuples until `VACUUM events`.)"""
    top = conn.execute(text("SELECT max(id) FROM events")).scalar_one()
    shift = "interval '90 days'" if conn.dialect.name == "postgresql" else str(90 * 86_400_000_000)
    sql = (
        "INSERT INTO events (message_id, type, event, contact_id, user_id, anonymous_id, "
        "group_id, timestamp, received_at, properties, traits, context) "
        "SELECT 'bench-' || message_id, type, event, contact_id, user_id, anonymous_id, "
        f"group_id, timestamp + {shift}, received_at + {shift}, properties, traits, context "
        "FROM events WHERE id > :low"
    )
    best = float("inf")
    for _ in range(2):
        conn.rollback()
        started = time.perf_counter()
        conn.execute(text(sql), {"low": top - count})
        best = min(best, time.perf_counter() - started)
        conn.rollback()
    return best / count * 1e6


def _extra_indexes() -> list[Index]:
    """The schema's secondary indexes on `events` besides BASE (tables.py)."""
    return [
        ix for ix in t.events.indexes if not ix.unique and tuple(c.name for c in ix.columns) != BASE
    ]


def restore_indexes(conn: Connection) -> None:
    """Drop the candidate and recreate the schema's indexes on `events` (from tables.py)."""
    conn.rollback()
    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {BENCH_INDEX}")
    for ix in t.events.indexes:
        conn.execute(CreateIndex(ix, if_not_exists=True))
    conn.commit()


def run(
    backend: str,
    contacts: int,
    events: int | None,
    *,
    a: str,
    b: str,
    track: bool = True,
    repeat: int = 3,
    timeout: float = 180.0,
    only: list[str] | None = None,
) -> tuple[dict[str, Any], list[Variant]]:
    """Every candidate index set and query shape on the cached world database."""
    info = world_info(backend, contacts, events)
    params = {"a": a, "b": b, "since": info.end - timedelta(days=30), "now": info.end}
    db = Database(info.url)
    variants = []
    with db.engine.connect() as conn:
        count = text("SELECT count(*) FROM events WHERE event = :e AND type = 'track'")
        facts = {
            "contacts": info.contacts,
            "events": info.events,
            "a": a,
            "b": b,
            "now": info.end,
            "track": track,
            "A rows": conn.execute(count, {"e": a}).scalar_one(),
            "B rows": conn.execute(count, {"e": b}).scalar_one(),
            "base_index_mb": index_mb(conn, "ix_events_contact_id_timestamp"),
        }
        restore_indexes(conn)  # a run that was cut short
        try:
            for ix in _extra_indexes():
                conn.exec_driver_sql(f"DROP INDEX {ix.name}")
            conn.commit()
            for name, columns in CANDIDATES.items():
                if only and not any(o in name for o in only):
                    continue
                log(f"segment baseline: {name}")
                variants.append(_variant(conn, name, columns, params, track, repeat, timeout))
        finally:
            log("segment baseline: restoring the schema's indexes")
            restore_indexes(conn)
    if not db.is_sqlite:  # the rows insert_cost rolled back
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM events")
    db.dispose()
    return facts, variants


def _variant(
    conn: Connection,
    name: str,
    columns: tuple[str, ...],
    params: dict[str, Any],
    track: bool,
    repeat: int,
    timeout: float,
) -> Variant:
    variant = Variant(name)
    try:
        if columns:
            started = time.perf_counter()
            conn.exec_driver_sql(f"CREATE INDEX {BENCH_INDEX} ON events ({', '.join(columns)})")
            conn.commit()
            variant.build_seconds = time.perf_counter() - started
            variant.index_mb = index_mb(conn, BENCH_INDEX)
            conn.rollback()
        sqlite = conn.dialect.name == "sqlite"
        variant.insert_us = insert_cost(conn, 100_000 if sqlite else 20_000)
        for shape in SHAPES:
            timing = time_shape(conn, shape, params, track=track, repeat=repeat, timeout=timeout)
            conn.rollback()
            log(f"  {shape}: {timing.seconds or 0:.3f}s, {timing.members} members")
            variant.timings.append(timing)
    finally:
        conn.rollback()
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {BENCH_INDEX}")
        conn.commit()
    return variant


def report(facts: dict[str, Any], variants: list[Variant], backend: str) -> str:
    """The results as Markdown: one table, then the query plans."""
    lines = [
        f"Segment baseline on {backend}: {facts['contacts']:,} contacts, {facts['events']:,} "
        f"events; did {facts['a']!r} ≥ 3 times in the 30 days before {facts['now']:%Y-%m-%d} "
        f"and never {facts['b']!r}{' (track events)' if facts['track'] else ''} "
        f"({facts['A rows']:,} A rows, {facts['B rows']:,} B rows; "
        f"(contact_id, timestamp) is {facts['base_index_mb']:.0f} MB)",
        "",
        "| indexes | shape | best s | runs | members | extra index MB | build s | "
        "insert µs/event |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for v in variants:
        for timing in v.timings:
            seconds = f"{timing.seconds:.3f}" if timing.seconds is not None else "timeout"
            lines.append(
                f"| {v.name} | {timing.shape} | {seconds} | {timing.runs} | {timing.members} | "
                f"{v.index_mb:.0f} | {v.build_seconds:.1f} | {v.insert_us:.1f} |"
            )
    lines.append("")
    for v in variants:
        for timing in v.timings:
            lines.append(f"{v.name}, {timing.shape}:")
            lines.extend(f"    {step}" for step in timing.plan)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: build (or reuse) the world, time every index set and shape."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.segment_baseline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, help="about this many events (default: 10 each)")
    parser.add_argument("--a", default="Product Viewed", help="done at least 3 times")
    parser.add_argument("--b", default="Order Completed", help="never done")
    parser.add_argument("--any-type", action="store_true", help="no `type = 'track'` filter")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per query")
    parser.add_argument("--only", nargs="*", help="index sets whose name contains one of these")
    args = parser.parse_args(argv)
    facts, variants = run(
        args.backend,
        args.contacts,
        args.events,
        a=args.a,
        b=args.b,
        track=not args.any_type,
        repeat=args.repeat,
        timeout=args.timeout,
        only=args.only,
    )
    print(report(facts, variants, args.backend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
