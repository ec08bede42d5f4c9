"""Segment benchmarks (issue "condition language"): on the reference world (1M contacts,
10M events by default), as of the end of its 90 days.

- `reference`: the reference segment "did Product Viewed at least 3 times in the last 30
  days and never did Order Completed", evaluated for the whole population by the SQL compiler
  (best of 3 after a warm-up), beside the hand-written query of bench/segment_baseline.py.
- `twenty`: 20 segments of mixed kinds evaluated and stored (`Engine.evaluate_all`): the
  first run (every member enters) and a second run (nothing changed: the steady state).
- `realtime`: 50 segments, the SaaS stage model and a lead score defined; events arrive
  at 1,000/s through the ingest writer while the evaluator thread runs; the time from a
  contact being queued (the start of its events' transaction) to its evaluation being
  committed, and from each request's arrival (sent open-loop, on schedule) to the commit of
  its transaction, which evaluated its contacts.

Command line::

    python -m bench.segments [--contacts N] [--backend sqlite|postgresql] [--only NAME...]
"""

from __future__ import annotations

import argparse
import functools
import gc
import random
import resource
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import delete, text

from bench.harness import machine_speed
from bench.world_db import WorldInfo, world_info
from nurture.clock import SimulatedClock
from nurture.conditions.model import parse_condition
from nurture.core import Nurture
from nurture.lifecycle.presets import LEAD_SCORE_YAML
from nurture.segments.definitions import DefinitionStore
from nurture.segments.queue import queue_evaluations
from nurture.settings import Settings
from nurture.store import Database
from nurture.store import tables as t

# The design's pair (Logged In, Order Completed) is degenerate in the reference world: only
# SaaS contacts log in and only shop contacts order, so "never ordered" removes nobody.
# bench/segment_baseline.py uses this pair, where B removes 59 % of those who did A.
REFERENCE = {
    "all": [
        {"event": "Product Viewed", "at_least": 3, "within_last": "30d"},
        {"not": {"event": "Order Completed"}},
    ]
}

# Twenty segments of mixed kinds: counts, windows, property filters, aggregates,
# sequences (abandonment), trends, traits (nested, dates), segments of segments.
MIXED: list[dict[str, Any]] = [
    {"key": "reference", "where": REFERENCE},
    {"key": "active_7d", "where": {"event": "Logged In", "within_last": "7d"}},
    {
        "key": "dormant",
        "where": {
            "all": [{"event": "Logged In"}, {"not": {"event": "Logged In", "within_last": "14d"}}]
        },
    },
    {"key": "power_users", "where": {"event": "Feature Used", "at_least": 5, "within_last": "30d"}},
    {
        "key": "sso_users",
        "where": {"event": "Logged In", "where": [{"property": "method", "eq": "sso"}]},
    },
    {"key": "buyers", "where": {"event": "Order Completed"}},
    {"key": "repeat_buyers", "where": {"event": "Order Completed", "at_least": 2}},
    {
        "key": "big_spenders",
        "where": {
            "aggregate": "sum",
            "of": "total",
            "event": "Order Completed",
            "within_last": "90d",
            "gt": 200,
        },
    },
    {
        "key": "aov_high",
        "where": {"aggregate": "avg", "of": "total", "event": "Order Completed", "gte": 100},
    },
    {
        "key": "cart_abandoners",
        "where": {
            "sequence": [
                {"event": "Product Added"},
                {"not_event": "Order Completed", "within": "1h"},
            ],
            "within_last": "7d",
        },
    },
    {
        "key": "browse_then_buy",
        "where": {
            "sequence": [{"event": "Product Viewed"}, {"event": "Order Completed", "within": "1d"}]
        },
    },
    {
        "key": "login_drop",
        "where": {"trend": "count", "event": "Logged In", "period": "14d", "below": 0.5},
    },
    {"key": "pro_plan", "where": {"trait": "plan", "in": ["pro", "team"]}},
    {"key": "big_companies", "where": {"trait": "company.size", "gte": 150}},
    {"key": "eu", "where": {"trait": "country", "in": ["DE", "FR", "ES", "IT", "NL", "SE"]}},
    {"key": "new_signups", "where": {"trait": "createdAt", "within_last": "30d"}},
    {"key": "opted_in", "where": {"trait": "marketingOptIn", "eq": True}},
    {"key": "payment_failed", "where": {"event": "Payment Failed", "within_last": "30d"}},
    {"key": "pro_dormant", "where": {"all": [{"segment": "pro_plan"}, {"segment": "dormant"}]}},
    {
        "key": "eu_buyers_opted_in",
        "where": {"all": [{"segment": "eu"}, {"segment": "buyers"}, {"segment": "opted_in"}]},
    },
]


def fifty() -> list[dict[str, Any]]:
    """The twenty, plus thirty variations (other windows and thresholds)."""
    extra = []
    for i, days in enumerate((3, 5, 10, 21, 45, 60)):
        extra += [
            {
                "key": f"logins_{days}d",
                "where": {"event": "Logged In", "at_least": 2, "within_last": f"{days}d"},
            },
            {
                "key": f"features_{days}d",
                "where": {"event": "Feature Used", "within_last": f"{days}d"},
            },
            {
                "key": f"views_{days}d",
                "where": {"event": "Product Viewed", "at_least": 3, "within_last": f"{days}d"},
            },
            {
                "key": f"spend_{days}d",
                "where": {
                    "aggregate": "sum",
                    "of": "total",
                    "event": "Order Completed",
                    "within_last": f"{days}d",
                    "gt": 50 * (i + 1),
                },
            },
            {
                "key": f"hot_{days}d",
                "where": {"all": [{"segment": f"logins_{days}d"}, {"score": "lead", "gte": 20}]},
            },
        ]
    return MIXED + extra


class WallClock(SimulatedClock):
    """The world's "now", moving with real time (for the real-time benchmark)."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self._origin = time.monotonic()
        self._start = start

    def now(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._origin)

    def monotonic(self) -> float:
        return time.monotonic()


def open_nurture(info: WorldInfo, clock: SimulatedClock, **settings: Any) -> Nurture:
    db = Database(info.url)
    values = {**Settings.model_construct().model_dump(), "database_url": info.url, **settings}
    nurture = Nurture(Settings.model_construct(**values), clock=clock, db=db)
    nurture.start()
    reset(nurture)
    return nurture


def reset(nurture: Nurture) -> None:
    """Forget every definition and everything evaluated (the world stays)."""
    with nurture.db.write() as conn:
        for table in (t.definitions, t.evaluation_state, *t.EVALUATION_BY_CONTACT):
            conn.execute(delete(table))
        conn.execute(delete(t.events).where(t.events.c.type == "system"))
        conn.execute(delete(t.events).where(t.events.c.message_id.like("bench-rt-%")))
        conn.execute(delete(t.meta).where(t.meta.c.key == "definitions_version"))


def define(nurture: Nurture, kind: str, items: list[dict[str, Any]]) -> None:
    with nurture.db.write() as conn:
        for item in items:
            body = {k: v for k, v in item.items() if k != "key"}
            DefinitionStore.put(
                conn, kind, item["key"], body, name="", source="api", now=nurture.clock.now()
            )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def bench_reference(info: WorldInfo) -> dict[str, Any]:
    nurture = open_nurture(info, SimulatedClock(info.end))
    try:
        condition = parse_condition(REFERENCE)
        nurture.engine.preview(condition, sample=0)  # warm the page cache
        runs = [timed(lambda: nurture.engine.preview(condition, sample=0)) for _ in range(3)]
        seconds = min(s for s, _ in runs)
        count = runs[0][1][0]
    finally:
        nurture.stop()
    return {"name": "reference segment", "seconds": seconds, "members": count, "target": 0.5}


def bench_twenty(info: WorldInfo) -> dict[str, Any]:
    nurture = open_nurture(info, SimulatedClock(info.end))
    try:
        define(nurture, "segment", MIXED)
        first, report = timed(nurture.engine.evaluate_all)
        errors = [(r.key, r.error) for r in report.segments if r.error]
        second, again = timed(nurture.engine.evaluate_all)
        slowest = sorted(report.segments, key=lambda r: -r.seconds)[:3]
    finally:
        reset(nurture)
        nurture.stop()
    return {
        "name": "20 mixed segments",
        "first_seconds": first,
        "second_seconds": second,
        "entered": sum(r.entered for r in report.segments),
        "changed_second": sum(r.entered + r.exited for r in again.segments),
        "errors": errors,
        "slowest": [(r.key, round(r.seconds, 2)) for r in slowest],
        "target": 15.0,
    }


def bench_realtime(
    info: WorldInfo,
    *,
    seconds: float = 30.0,
    rate: int = 1000,
    at_ingest: int = 200,
    warm: bool = False,
) -> dict[str, Any]:
    clock = WallClock(info.end)
    nurture = open_nurture(info, clock, evaluation_refresh_seconds=0, evaluate_in_process=True)
    latencies: list[float] = []
    arrived: list[float] = []  # per request: from its arrival to its stored evaluation
    try:
        define(nurture, "segment", fifty())
        define(nurture, "stage_model", [{"key": "lifecycle", "preset": "saas"}])
        import yaml

        score = yaml.safe_load(LEAD_SCORE_YAML)
        define(nurture, "score_model", [score])
        from nurture.segments.runner import EvaluationRunner

        # Wired as `nurture serve` wires it (core.Nurture with background=True): the
        # ingest transaction evaluates its contacts, the runner whatever it leaves.
        runner = EvaluationRunner(nurture.engine, refresh_seconds=0, batch=500)
        nurture.writer.on_queued.append(runner.notify)
        if at_ingest:
            nurture.writer.in_transaction.append(
                functools.partial(nurture.engine.evaluate_at_ingest, limit=at_ingest)
            )
        by_runner = [0]

        def on_evaluated(waits: list[timedelta]) -> None:
            latencies.extend(w.total_seconds() for w in waits)
            if threading.current_thread().name == runner.name:
                by_runner[0] += len(waits)

        nurture.engine.on_evaluated.append(on_evaluated)
        runner.start()
        with nurture.db.read() as conn:
            pool = conn.execute(
                text("SELECT id, user_id FROM contacts WHERE user_id IS NOT NULL LIMIT 200000")
            ).all()
        users = [user for _, user in pool]
        warmed = 0
        if warm:
            # As in a running system: every contact of the pool was evaluated before (its
            # stage, score and memberships are stored), so an event changes what it changes
            # rather than setting everything for the first time.
            started = time.monotonic()
            ids = [cid for cid, _ in pool]
            with nurture.db.write() as conn:
                queue_evaluations(conn, ids, clock.now(), full=ids)
            while nurture.engine.evaluate_pending(2000):
                pass
            while True:  # the evaluator thread may hold the last batch
                with nurture.db.read() as conn:
                    if not conn.execute(text("SELECT count(*) FROM pending_evaluations")).scalar():
                        break
                time.sleep(0.05)
            warmed = len(pool)
            print(f"warmed {warmed:,} contacts in {time.monotonic() - started:.0f} s")
            if nurture.db.is_sqlite:
                # The warm-up's writes (some 100 MB of WAL) would otherwise still be
                # copied into the database by the checkpointer while the run is measured.
                with nurture.db.read() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            latencies.clear()
            by_runner[0] = 0
        # Full collections pause every thread; the server's start-up heap is frozen
        # (`settle_heap`), and so is this benchmark's own list of users, which a running
        # server would not hold. Pauses still left are counted.
        gc.collect()
        gc.freeze()
        pauses: list[tuple[int, float]] = []
        gc_started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                pauses.append((info["generation"], time.perf_counter() - gc_started[0]))

        gc.callbacks.append(on_gc)
        rng = random.Random(7)
        names = ["Logged In", "Feature Used", "Product Viewed", "Product Added", "Order Completed"]
        sent = 0
        tick = 0.02
        per_tick = max(1, int(rate * tick))
        pending: deque[Future[Any]] = deque()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            # Open loop: each request is sent at its time whether or not the one before was
            # stored, as clients send, so time spent waiting behind a slow transaction (or a
            # WAL restart) is counted from the request's arrival, not hidden by a late send.
            arrival = started + sent / rate
            delay = arrival - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            batch = []
            for _ in range(per_tick):
                sent += 1
                name = rng.choice(names)
                batch.append(
                    {
                        "type": "track",
                        "messageId": f"bench-rt-{sent}",
                        "userId": rng.choice(users),
                        "event": name,
                        "properties": {"total": 42.0} if name == "Order Completed" else {},
                        "timestamp": clock.now().isoformat(),
                    }
                )
            future = nurture.writer.submit(nurture.parse(batch, source="bench"))
            future.add_done_callback(
                functools.partial(lambda a, _f: arrived.append(time.monotonic() - a), arrival)
            )
            pending.append(future)
            # Only the unanswered are kept, as a server keeps only its open requests: a
            # list of every request's future grew the heap, and full collections with it
            # (25 in 120 s, up to 62 ms each, the whole tail of the run's second minute).
            while pending and pending[0].done():
                pending.popleft().result()
        for future in pending:
            future.result()
        elapsed = time.monotonic() - started
        gc.callbacks.remove(on_gc)
        gc.unfreeze()
        full = [pause for generation, pause in pauses if generation == 2]
        print(
            f"garbage collections while sending: {len(pauses):,}, "
            f"{sum(p for _, p in pauses) * 1000:.0f} ms in all; full: {len(full)}, longest "
            f"{max(full, default=0) * 1000:.1f} ms"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with nurture.db.read() as conn:
                left = conn.execute(text("SELECT count(*) FROM pending_evaluations")).scalar_one()
            if not left:
                break
            time.sleep(0.05)
        runner.stop()
    finally:
        reset(nurture)
        nurture.stop()
    _by_tenth("evaluations", latencies)
    _by_tenth("requests", arrived)
    return {
        "name": "real time, 50 segments + stage + score"
        + (", contacts evaluated before (warm)" if warm else ", first evaluations (cold)"),
        "events": sent,
        "warmed": warmed,
        "rate": sent / elapsed,
        "evaluations": len(latencies),
        "p50_ms": _pct(latencies, 0.50),
        "p99_ms": _pct(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "by_runner": by_runner[0],
        "arrival_p50_ms": _pct(arrived, 0.50),
        "arrival_p99_ms": _pct(arrived, 0.99),
        "requests": len(arrived),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "target_p99_ms": 20.0,
    }


def _by_tenth(label: str, values: list[float]) -> None:
    """Print p50, p99 and the largest of each tenth of `values`, in order."""
    tenth = max(1, len(values) // 10)
    for i in range(0, len(values), tenth):
        part = values[i : i + tenth]
        print(
            f"  {label} {i:>6,}+: p50 {_pct(part, 0.5):.1f} ms, p99 {_pct(part, 0.99):.1f} ms, "
            f"max {max(part) * 1000:.1f} ms"
        )


def _pct(values: list[float], p: float) -> float:
    """The `p` quantile of `values` in milliseconds (NaN for none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--only", nargs="*", default=["reference", "twenty", "realtime"])
    parser.add_argument("--seconds", type=float, default=30.0, help="Real-time run length")
    parser.add_argument("--rate", type=int, default=1000, help="Real-time events per second")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="Real time: evaluate the 200,000 contacts events go to before measuring (as in "
        "a running system) instead of measuring their first evaluations",
    )
    parser.add_argument(
        "--at-ingest",
        type=int,
        default=200,
        help="Real time: most contacts the ingest transaction evaluates itself (0: the "
        "evaluator thread evaluates every contact; the setting evaluate_at_ingest)",
    )
    args = parser.parse_args(argv)
    info = world_info(args.backend, args.contacts, None)
    print(
        f"world: {info.contacts:,} contacts, {info.events:,} events, {args.backend}, "
        f"now = {info.end}"
    )
    results = []
    if "reference" in args.only:
        results.append(bench_reference(info))
    if "twenty" in args.only:
        results.append(bench_twenty(info))
    if "realtime" in args.only:
        before = machine_speed()
        results.append(
            bench_realtime(
                info,
                seconds=args.seconds,
                rate=args.rate,
                at_ingest=args.at_ingest,
                warm=args.warm,
            )
        )
        results[-1]["machine"] = (before, machine_speed())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = Table("benchmark", "backend", "figure", "target", "met?")
    for r in results:
        if "members" in r:
            figure, met = f"{r['seconds']:.2f} s ({r['members']:,} members)", r["seconds"] <= 0.5
            table.add_row(r["name"], args.backend, figure, "≤ 0.5 s", _yes(met))
        elif "first_seconds" in r:
            figure = (
                f"{r['second_seconds']:.1f} s steady, {r['first_seconds']:.1f} s first "
                f"({r['entered']:,} entries)"
            )
            table.add_row(
                r["name"], args.backend, figure, "≤ 15 s", _yes(r["second_seconds"] <= 15)
            )
            for key, error in r["errors"]:
                print(f"segment {key} failed: {error[:300]}")
        else:
            figure = (
                f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms at {r['rate']:.0f} ev/s "
                f"({r['evaluations']:,} of {r['events']:,} evaluated)"
            )
            met = r["p99_ms"] <= 20 and r["rate"] >= 950
            table.add_row(r["name"], args.backend, figure, "p99 ≤ 20 ms at 1,000 ev/s", _yes(met))
            # The same contacts timed from the arrival of their request (evaluated in its
            # transaction; a contact left to the evaluator thread is not in this figure,
            # and the count says how many were).
            figure = (
                f"p50 {r['arrival_p50_ms']:.0f} ms, p99 {r['arrival_p99_ms']:.0f} ms "
                f"({r['requests']:,} requests; {r['by_runner']:,} contacts left to the "
                "evaluator thread)"
            )
            met = r["arrival_p99_ms"] <= 20 and r["rate"] >= 950
            table.add_row(
                "  the same, from each request's arrival",
                args.backend,
                figure,
                "p99 ≤ 20 ms",
                _yes(met),
            )
            speed = "{:.2f} s before, {:.2f} s after".format(*r["machine"])
            table.add_row("machine: 10M-addition Python loop", "", speed, "", "")
    table.add_row("peak RSS", args.backend, f"{peak:.0f} MB", "≤ 2,048 MB", _yes(peak <= 2048))
    Console().print(table)
    return 0


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


if __name__ == "__main__":
    raise SystemExit(main())
