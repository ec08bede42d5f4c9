"""Journey benchmarks (issue "journeys"): how fast due steps run, how soon a triggering
event's message reaches the outbox, how late timers fire, and what a worker holds in memory.

- `steps`: N enrolments (default 1,000,000) of the drip journey send → wait 1d → send, all
  due now; the time until every one has run its first step. On SQLite `JourneyRuntime.run_due`
  runs in a loop in this process (`--workers 0`, the default there; `--profile` records it
  with pyinstrument); with `--workers K` (the default on PostgreSQL: 4) K `nurture worker
  --no-segments --no-dispatch --no-rollups` processes do the work (`--full-workers`: without
  the last two flags, so that the workers also send every message and refresh the rollups).
- `queue`: a bare claim-and-complete queue on SQLite for scale (sqlite3, no SQLAlchemy): the
  same number of jobs, claimed and marked done 500 per transaction, and one per transaction.
- `inbox`: triggering events queued by ingest, then consumed by `process_inbox` alone and
  their first step run by `run_due` alone (no contention): the latency run's work, per event.
- `latency`: a Nurture with its background workers (`background=True`: the journey runner
  and the evaluator thread, as `nurture serve` runs them); events go through `Nurture.ingest`
  at a steady 1,000/s, each triggers a journey whose only step sends. Latency = the commit
  of the transaction that wrote the outbox row (seen by a `JourneyRuntime.on_steps`
  callback) minus the moment `ingest` returned. The contacts are identified first, then
  (PostgreSQL) ANALYZE, as in a database in use; the CPU per event of this process and of
  its PostgreSQL backends is noted.
- `timers`: 100,000 enrolments due spread evenly over one minute of wall clock, run by
  `nurture worker --no-segments` processes (1 on SQLite, 4 on PostgreSQL); lateness =
  `journey_steps.executed_at` minus the enrolment's `due_at`.
- `memory`: peak RSS of one `nurture worker --no-segments` that runs 10,000 due steps while
  10,000, then N, other enrolments wait (for a day).

Contacts and enrolments are *seeded* by writing their rows directly (`insert_rows`, as an
entry would leave them): entering a million contacts through triggers would measure entry,
not steps. Everything measured runs through the engine: `run_due`, the worker command,
`Nurture.ingest`.

Command line (`--help` for every size; the defaults are the issue's)::

    python -m bench.journeys [--backend sqlite|postgresql] [--only NAME...]
        [--enrolments N] [--workers K] [--profile FILE] [--markdown]
    # a one-minute smoke run:
    python -m bench.journeys --enrolments 20000 --small 5000 --inbox-events 3000 \
        --timer-steps 10000 --timer-span 10 --seconds 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from bench.harness import NURTURE, FreshDatabase, RssSampler, fresh_database, log, nurture_env
from nurture.background import settle_heap
from nurture.clock import Clock, SystemClock
from nurture.core import Nurture
from nurture.settings import Settings
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_rows

BENCHMARKS = ("steps", "queue", "inbox", "latency", "timers", "memory")
CHUNK = 50_000  # seeded rows per transaction

DRIP = {
    "key": "bench_drip",
    "name": "Benchmark drip",
    "trigger": {"api": True},
    "steps": [
        {"id": "welcome", "type": "send", "channel": "email", "template": "bench_welcome"},
        {"id": "pause", "type": "wait", "for": "1d"},
        {"id": "follow_up", "type": "send", "channel": "email", "template": "bench_follow_up"},
    ],
}
TRIGGERED = {
    "key": "bench_triggered",
    "name": "Benchmark trigger → send",
    "trigger": {"event": "Bench Triggered"},
    "entry": {"reentry": "always"},
    "steps": [{"id": "welcome", "type": "send", "channel": "email", "template": "bench_welcome"}],
}


@dataclass
class Row:
    """One line of the printed table."""

    name: str
    backend: str
    figure: str
    target: str = ""
    met: bool | None = None
    notes: list[str] = field(default_factory=list)


# -- a database with contacts and enrolments ------------------------------------------------


def open_nurture(
    fdb: FreshDatabase, *, clock: Clock | None = None, background: bool = False, **settings: Any
) -> Nurture:
    """A started Nurture on `fdb`, its project folder holding the journeys' templates."""
    project = fdb.workdir / "project"
    (project / "templates").mkdir(parents=True, exist_ok=True)
    for name in ("bench_welcome", "bench_follow_up"):
        (project / "templates" / f"{name}.liquid").write_text(f"{name}\n")
    values = {
        **Settings.model_construct().model_dump(),
        "database_url": fdb.url,
        "project_dir": project,
        **settings,
    }
    nurture = Nurture(Settings.model_construct(**values), clock=clock, background=background)
    return nurture.start()


def seed_contacts(db: Database, first: int, count: int, now: datetime) -> None:
    """Contacts `first` .. `first + count - 1`, with an email and a few traits."""
    for start in range(first, first + count, CHUNK):
        rows = [
            {
                "id": i,
                "user_id": f"u{i}",
                "email": f"u{i}@example.com",
                "traits": f'{{"name":"User {i}","plan":"pro"}}',
                "trait_issues": "{}",
                "first_seen_at": now,
                "last_seen_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for i in range(start, min(start + CHUNK, first + count))
        ]
        with db.write() as conn:
            insert_rows(conn, t.contacts, rows, encoded=frozenset({"traits", "trait_issues"}))


def seed_enrolments(
    db: Database,
    first: int,
    count: int,
    *,
    step: str,
    due: Callable[[int], datetime],
    now: datetime,
) -> None:
    """Enrolments `first` .. of contact `id` in the drip journey, at `step`, due at `due(id)`:
    the rows an API entry (or the wait before `step`) would have left."""
    if step == "pause":  # as `interpreter.arrive` notes a wait's start
        context = f'{{"trigger":null,"wait":{{"step":"pause","since":"{now.isoformat()}"}}}}'
    else:
        context = '{"trigger":null}'
    for start in range(first, first + count, CHUNK):
        rows = [
            {
                "id": i,
                "journey_key": DRIP["key"],
                "version": 1,
                "contact_id": i,
                "status": "active",
                "control": False,
                "step": step,
                "due_at": due(i),
                "seq": 0 if step == "welcome" else 1,
                "attempts": 0,
                "entry_key": f"bench:{i}",
                "exclusive": True,
                "context": context,
                "entered_at": now,
            }
            for i in range(start, min(start + CHUNK, first + count))
        ]
        with db.write() as conn:
            insert_rows(conn, t.enrolments, rows, encoded=frozenset({"context"}))


def seeded(
    fdb: FreshDatabase,
    due: int,
    *,
    waiting: int = 0,
    due_at: Callable[[int], datetime],
    analyze: bool = True,
) -> None:
    """Migrate `fdb`, publish the drip journey, and seed `due` enrolments at its first step
    (ids 1 .. due, due at `due_at(id)`) and `waiting` more in its wait (due in a day).

    On PostgreSQL `analyze` then runs ANALYZE, as autovacuum would have while the rows
    arrived one entry at a time: with the statistics of the empty table the planner
    expects a handful of due rows and sorts them all at each claim (see RESULTS.md)."""
    started = time.perf_counter()
    nurture = open_nurture(fdb)
    try:
        nurture.journeys.save(DRIP, publish=True)
        now = nurture.clock.now()
        seed_contacts(nurture.db, 1, due + waiting, now)
        seed_enrolments(nurture.db, 1, due, step="welcome", due=due_at, now=now)
        tomorrow = now + timedelta(days=1)
        seed_enrolments(
            nurture.db, due + 1, waiting, step="pause", due=lambda _i: tomorrow, now=now
        )
        if analyze:
            analyze_tables(nurture.db)
    finally:
        nurture.stop()
    seconds = time.perf_counter() - started
    log(f"seeded {due:,} due + {waiting:,} waiting enrolments in {seconds:.0f}s")


def analyze_tables(db: Database) -> None:
    """ANALYZE on PostgreSQL (the planner's statistics; the engine never runs it on SQLite)."""
    if not db.is_sqlite:
        with db.write() as conn:
            conn.exec_driver_sql("ANALYZE")


def _recently(now: datetime) -> Callable[[int], datetime]:
    """Due times in the last hour, one microsecond apart in id order."""
    past = now - timedelta(hours=1)
    return lambda i: past + timedelta(microseconds=i)


def remaining(db: Database, cutoff: datetime) -> int:
    """Active enrolments due at or before `cutoff` (the partial index answers)."""
    n = t.enrolments.c
    with db.read() as conn:
        query = select(func.count()).where(n.status == "active", n.due_at <= cutoff)
        return int(conn.execute(query).scalar_one())


@contextmanager
def workers(
    fdb: FreshDatabase, count: int, *, only_journeys: bool = False, **settings: str | int
) -> Iterator[list[psutil.Popen]]:
    """`count` `nurture worker --no-segments` processes on `fdb` until the block ends;
    `only_journeys`: with `--no-dispatch --no-rollups` too (the worker then runs journeys
    alone, not also sending each message and refreshing the report's rollups)."""
    env = nurture_env(fdb, project_dir=str(fdb.workdir / "project"), **settings)
    flags = ["--no-dispatch", "--no-rollups"] if only_journeys else []
    procs = []
    for k in range(count):
        with (fdb.workdir / f"worker-{k}.log").open("wb") as out:
            procs.append(
                psutil.Popen(
                    [NURTURE, "worker", "--no-segments", *flags],
                    env=env,
                    cwd=fdb.workdir,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        yield procs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)  # the worker's documented stop
        for k, proc in enumerate(procs):
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(10)
            if code not in (0, -signal.SIGTERM):
                text = (fdb.workdir / f"worker-{k}.log").read_text()[-2000:]
                log(f"worker {k} exited with {code}: {text}")


def any_due(db: Database, cutoff: datetime) -> bool:
    """Whether an active enrolment due at or before `cutoff` is left: the first entry of
    the partial index (0.04 ms). `remaining` counts them all: on PostgreSQL, a million
    due enrolments are counted by a parallel sequential scan, ~0.1 s on three processes,
    and the poll every 0.2 s took CPU from the workers being measured."""
    n = t.enrolments.c
    with db.read() as conn:
        query = select(n.id).where(n.status == "active", n.due_at <= cutoff).limit(1)
        return conn.execute(query).first() is not None


def wait_until_done(
    db: Database, cutoff: datetime, procs: list[psutil.Popen], timeout: float
) -> float:
    """Poll until no enrolment due by `cutoff` is left; returns the monotonic end time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any_due(db, cutoff):
            return time.monotonic()
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {proc.pid} exited with {proc.returncode}")
        time.sleep(0.2)
    raise RuntimeError(f"due steps left after {timeout:.0f}s: {remaining(db, cutoff):,}")


def step_log(db: Database) -> tuple[int, datetime, datetime]:
    """How many steps ran, the first and the last `executed_at`."""
    s = t.journey_steps.c
    with db.read() as conn:
        row = conn.execute(
            select(func.count(), func.min(s.executed_at), func.max(s.executed_at))
        ).one()
    return int(row[0]), row[1], row[2]


def count(db: Database, table: Any) -> int:
    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# -- steps/s --------------------------------------------------------------------------------


def bench_steps(
    backend: str,
    enrolments: int,
    *,
    processes: int,
    batch: int,
    max_seconds: float,
    profile: Path | None,
    synchronous: str,
    analyze: bool,
    full_workers: bool = False,
) -> list[Row]:
    target = 10_000 if backend == "sqlite" else 20_000
    label = f"{backend}, " + (f"{processes} worker processes" if processes else "run_due loop")
    if processes:
        label += " (also dispatching, rollups)" if full_workers else " (journeys only)"
    settings: dict[str, str | int] = {"journey_batch": batch}
    if backend == "sqlite":
        settings["sqlite_synchronous"] = synchronous
        label += f", synchronous={synchronous}"
    with fresh_database(backend) as fdb:
        seeded(fdb, enrolments, due_at=_recently(SystemClock().now()), analyze=analyze)
        cutoff = SystemClock().now()
        if processes:
            seconds, ran, notes = _steps_by_workers(
                fdb, cutoff, processes, settings, only_journeys=not full_workers
            )
        else:
            seconds, ran, notes = _steps_in_process(fdb, settings, max_seconds, profile)
        db = Database(fdb.url)
        try:
            steps, outbox = count(db, t.journey_steps), count(db, t.outbox)
        finally:
            db.dispose()
    rate = ran / seconds
    if steps != ran or outbox != ran:
        notes.append(f"journey_steps {steps:,}, outbox {outbox:,}: expected {ran:,}")
    return [
        Row(
            f"due steps, {enrolments:,} enrolments due (batch {batch})",
            label,
            f"{rate:,.0f} steps/s ({ran:,} in {seconds:.1f} s)",
            f"≥ {target:,} steps/s",
            rate >= target and steps == ran == outbox,
            notes,
        )
    ]


@dataclass
class Drained:
    """What calling a unit of work until it had nothing left to do took, in this process."""

    done: int
    seconds: float
    cpu: float
    rss_mb: tuple[float, float]  # before, after

    def notes(self, unit: str) -> list[str]:
        return [
            f"process CPU {self.cpu / self.seconds:.2f} cores, "
            f"{self.cpu / max(self.done, 1) * 1e6:.0f} µs per {unit}",
            f"RSS {self.rss_mb[0]:.0f} → {self.rss_mb[1]:.0f} MB",
        ]


def drain(
    work: Callable[[], int], *, max_seconds: float = 600, profile: Path | None = None
) -> Drained:
    """Call `work` until it returns 0 (or `max_seconds` pass), profiled with pyinstrument
    into `profile` (text, and HTML beside it) when given."""
    settle_heap()  # as a worker does before its loops start (nurture.background)
    process = psutil.Process()
    profiler = None
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    rss_before, cpu_before = process.memory_info().rss, process.cpu_times()
    started = time.perf_counter()
    done = 0
    while time.perf_counter() - started < max_seconds and (ran := work()):
        done += ran
    seconds = time.perf_counter() - started
    cpu_after = process.cpu_times()
    if profiler is not None and profile is not None:
        profiler.stop()
        profile.write_text(profiler.output_text(unicode=True))
        profile.with_suffix(".html").write_text(profiler.output_html())
        log(f"profile written to {profile} (and .html)")
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    return Drained(done, seconds, cpu, (rss_before / 1e6, process.memory_info().rss / 1e6))


def _steps_in_process(
    fdb: FreshDatabase, settings: dict[str, Any], max_seconds: float, profile: Path | None
) -> tuple[float, int, list[str]]:
    nurture = open_nurture(fdb, **settings)
    try:
        server_before = server_cpu_seconds(nurture.db, own=True)
        drained = drain(nurture.journey_runtime.run_due, max_seconds=max_seconds, profile=profile)
        server_after = server_cpu_seconds(nurture.db, own=True)
    finally:
        nurture.stop()
    notes = drained.notes("step")
    if server_before is not None and server_after is not None:
        # This process's PostgreSQL backends (its pool's connections live through the run).
        server = server_after - server_before
        notes.append(
            f"its PostgreSQL backends' CPU {server / drained.seconds:.2f} cores, "
            f"{server / max(drained.done, 1) * 1e6:.0f} µs per step"
        )
    if drained.seconds >= max_seconds:
        notes.append(f"stopped after {max_seconds:.0f} s")
    return drained.seconds, drained.done, notes


def _steps_by_workers(
    fdb: FreshDatabase,
    cutoff: datetime,
    processes: int,
    settings: dict[str, str | int],
    *,
    only_journeys: bool,
) -> tuple[float, int, list[str]]:
    db = Database(fdb.url)
    try:
        launched = time.monotonic()
        with (
            workers(fdb, processes, only_journeys=only_journeys, **settings) as procs,
            ExitStack() as stack,
        ):
            samplers = [stack.enter_context(RssSampler(p.pid)) for p in procs]
            # The CPU spent once the steps run, without the workers' start-up (imports,
            # migrations check: seconds of CPU each, a fixed cost, not a cost per step).
            while not (early := count(db, t.journey_steps)):
                time.sleep(0.05)
            early_cpu = sum(s.cpu_seconds() for s in samplers)
            early_server = server_cpu_seconds(db)
            ended = wait_until_done(db, cutoff, procs, timeout=1800)
            cpu = sum(s.cpu_seconds() for s in samplers)
            server_cpu = server_cpu_seconds(db)
        ran, first, last = step_log(db)
    finally:
        db.dispose()
    span = (last - first).total_seconds()
    wall = ended - launched
    steady = ran - early
    notes = [
        f"seconds from the first to the last executed_at; {ran / wall:,.0f} steps/s "
        f"over {wall:.1f} s counting the workers' start-up",
        f"workers' CPU {cpu / wall:.2f} cores, {cpu / ran * 1e6:.0f} µs per step "
        f"with their start-up, {(cpu - early_cpu) / steady * 1e6:.0f} µs per step after it",
        f"peak RSS per worker ≤ {max(s.peak_mb for s in samplers):.0f} MB",
    ]
    if server_cpu is not None and early_server is not None:
        notes.append(
            f"the workers' PostgreSQL backends' CPU {server_cpu / wall:.2f} cores, "
            f"{server_cpu / ran * 1e6:.0f} µs per step, "
            f"{(server_cpu - early_server) / steady * 1e6:.0f} µs per step after the start-up"
        )
    return span, ran, notes


def server_cpu_seconds(db: Database, *, own: bool = False) -> float | None:
    """CPU time of the PostgreSQL backends connected to `db` now (they live as long as
    the workers' connection pools): the server's share of the work. `own`: counting the
    backend that asks (in-process runs, whose pool reuses it for the work)."""
    if db.is_sqlite:
        return None
    with db.read() as conn:
        pids = conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            + ("" if own else " AND pid <> pg_backend_pid()")
        ).scalars()
        total = 0.0
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += times.user + times.system
    return total


# -- a bare queue ---------------------------------------------------------------------------


def bench_queue(jobs: int, workdir: Path) -> list[Row]:
    """Claim-and-complete on one SQLite table with the engine's pragmas (WAL,
    synchronous=FULL): 500 per transaction, then one per transaction."""
    rows = []
    for batch, size in ((500, jobs), (1, min(jobs, 20_000))):
        seconds = _bare_queue(workdir / f"queue-{batch}.db", size, batch)
        rows.append(
            Row(
                f"bare queue, {size:,} jobs, {batch} per transaction",
                "sqlite3, synchronous=FULL",
                f"{size / seconds:,.0f} jobs/s ({seconds:.2f} s)",
                "(baseline)",
            )
        )
    return rows


def _bare_queue(path: Path, jobs: int, batch: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, status TEXT NOT NULL,"
            " due_at INTEGER NOT NULL, payload TEXT NOT NULL)"
        )
        conn.execute("CREATE INDEX ix_jobs_due ON jobs (due_at) WHERE status = 'queued'")
        for start in range(0, jobs, CHUNK):
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO jobs VALUES (?, 'queued', ?, ?)",
                ((i, i, f'{{"contact":{i}}}') for i in range(start, min(start + CHUNK, jobs))),
            )
            conn.execute("COMMIT")
        started = time.perf_counter()
        while True:
            conn.execute("BEGIN IMMEDIATE")
            claimed = conn.execute(
                "SELECT id, payload FROM jobs WHERE status = 'queued' AND due_at <= ?"
                " ORDER BY due_at LIMIT ?",
                (jobs, batch),
            ).fetchall()
            conn.executemany(
                "UPDATE jobs SET status = 'done' WHERE id = ?", [(r[0],) for r in claimed]
            )
            conn.execute("COMMIT")
            if not claimed:
                return time.perf_counter() - started
    finally:
        conn.close()


# -- the inbox: triggering events become enrolments ----------------------------------------


def bench_inbox(backend: str, events: int, *, profile: Path | None) -> list[Row]:
    """Triggering events queued by ingest (no worker running), then consumed by
    `process_inbox` alone, then their first steps by `run_due` alone: the two halves of
    the latency benchmark's work without contention, per event."""
    with fresh_database(backend) as fdb:
        nurture = open_nurture(fdb)
        try:
            nurture.journeys.save(TRIGGERED, publish=True)
            users = min(events, 10_000)
            for start in range(0, events, 500):
                nurture.ingest(
                    [_triggering(k, users) for k in range(start, min(start + 500, events))]
                )
            runtime = nurture.journey_runtime
            inbox = drain(runtime.process_inbox, profile=_named(profile, "inbox"))
            steps = drain(runtime.run_due)
        finally:
            nurture.stop()
    return [
        Row(
            f"inbox: {events:,} queued triggering events entered (process_inbox)",
            backend,
            f"{inbox.done / inbox.seconds:,.0f} events/s",
            "(1,000 ev/s must take well under 1 core)",
            None,
            inbox.notes("event"),
        ),
        Row(
            "their first step, a send (run_due)",
            backend,
            f"{steps.done / steps.seconds:,.0f} steps/s",
            "",
            None,
            steps.notes("step"),
        ),
    ]


def _triggering(k: int, users: int) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": f"bench-{k}",
        "userId": f"u{k * 7919 % users}",
        "event": "Bench Triggered",
        "properties": {"cart_id": f"c{k}"},
    }


def _named(profile: Path | None, name: str) -> Path | None:
    return None if profile is None else profile.with_name(f"{profile.stem}-{name}{profile.suffix}")


# -- ingest → outbox latency ----------------------------------------------------------------


def bench_latency(
    backend: str, *, rate: int, seconds: float, users: int, evaluator: bool
) -> list[Row]:
    clock = SystemClock()
    committed: dict[datetime, datetime] = {}  # a batch's `now` (outbox.created_at) → commit

    def on_steps(timing: list[tuple[datetime, datetime]]) -> None:
        committed.setdefault(timing[0][1], clock.now())

    with fresh_database(backend) as fdb:
        nurture = open_nurture(fdb, clock=clock, background=True, evaluate_in_process=evaluator)
        returned: dict[str, datetime] = {}
        try:
            nurture.journey_runtime.on_steps.append(on_steps)
            nurture.journeys.save(TRIGGERED, publish=True)
            for start in range(0, users, 500):  # the contacts exist before the run
                nurture.ingest(
                    [
                        {"type": "identify", "userId": f"u{i}", "traits": {"plan": "pro"}}
                        for i in range(start, min(start + 500, users))
                    ]
                )
            time.sleep(2)  # let the evaluator finish with the identifies
            # The planner's statistics of a database in use (see `seeded`): with those of
            # empty tables, lookups of a round's contacts read every contact.
            analyze_tables(nurture.db)
            process = psutil.Process()
            cpu_before = sum(process.cpu_times()[:2])
            server_before = server_cpu_seconds(nurture.db, own=True)
            sent, elapsed, calls = _steady(
                nurture, clock, returned, rate=rate, seconds=seconds, users=users
            )
            deadline = time.monotonic() + 60
            while count(nurture.db, t.outbox) < sent and time.monotonic() < deadline:
                time.sleep(0.1)
            cpu = sum(process.cpu_times()[:2]) - cpu_before
            server_after = server_cpu_seconds(nurture.db, own=True)
            o, n = t.outbox.c, t.enrolments.c
            with nurture.db.read() as conn:
                written = conn.execute(
                    select(o.created_at, o.payload, n.entered_at).join(
                        t.enrolments, n.id == o.enrolment_id
                    )
                ).all()
        finally:
            nurture.stop()
    total, entry, step, commit = [], [], [], []
    for created_at, payload, entered_at in written:
        ingested = returned[str(payload["trigger"]["messageId"])]
        done = committed[created_at]
        total.append(_ms(done - ingested))
        entry.append(_ms(entered_at - ingested))
        step.append(_ms(created_at - entered_at))
        commit.append(_ms(done - created_at))
    p50, p99 = _quantile(total, 0.5), _quantile(total, 0.99)
    achieved = sent / elapsed
    notes = [
        f"{len(written):,} of {sent:,} events had their message in the outbox",
        f"max {max(total, default=0):.0f} ms",
        "evaluator thread " + ("on" if evaluator else "off"),
        f"CPU per event (this process: ingest, every background thread, the load "
        f"itself) {cpu / sent * 1e6:.0f} µs"
        + (
            ""
            if server_before is None or server_after is None
            else f", its PostgreSQL backends {(server_after - server_before) / sent * 1e6:.0f} µs"
        ),
        f"the ingest call itself p50 {_quantile(calls, 0.5):.0f}, "
        f"p99 {_quantile(calls, 0.99):.0f} ms",
        "stages, p50/p99 ms: ingest returned → inbox round began (enrolments.entered_at) "
        f"{_quantile(entry, 0.5):.0f}/{_quantile(entry, 0.99):.0f}; → due-step round began "
        f"(outbox.created_at) {_quantile(step, 0.5):.0f}/{_quantile(step, 0.99):.0f}; → its "
        f"commit {_quantile(commit, 0.5):.0f}/{_quantile(commit, 0.99):.0f}",
    ]
    met = p99 <= 100 and achieved >= 950 and len(written) == sent
    return [
        Row(
            "event → first message in the outbox",
            backend,
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms at {achieved:,.0f} ev/s",
            "p99 ≤ 100 ms at 1,000 ev/s",
            met,
            notes,
        )
    ]


def _ms(delta: timedelta) -> float:
    return delta.total_seconds() * 1000


def _steady(
    nurture: Nurture,
    clock: Clock,
    returned: dict[str, datetime],
    *,
    rate: int,
    seconds: float,
    users: int,
) -> tuple[int, float, list[float]]:
    """Ingest triggering events at `rate` per second for `seconds`, a batch every 20 ms,
    each batch from a thread of a pool (as a server's requests arrive, however long the
    previous one takes), noting when each `ingest` call returned; returns (events sent,
    seconds taken, each call's milliseconds)."""
    tick = 0.02
    per_tick = max(1, round(rate * tick))

    calls: list[float] = []

    def send(batch: list[dict[str, Any]]) -> None:
        submitted = time.monotonic()
        nurture.ingest(batch)
        now = clock.now()
        calls.append((time.monotonic() - submitted) * 1000)
        for message in batch:
            returned[message["messageId"]] = now

    sent = 0
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        pending = []
        while time.monotonic() - started < seconds:
            batch = [_triggering(k, users) for k in range(sent + 1, sent + per_tick + 1)]
            sent += per_tick
            pending.append(pool.submit(send, batch))
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elapsed = time.monotonic() - started
        for future in pending:
            future.result()
    return sent, elapsed, calls


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- timers ---------------------------------------------------------------------------------


def bench_timers(
    backend: str, steps: int, *, span: float, processes: int, batch: int, analyze: bool
) -> list[Row]:
    spacing = timedelta(seconds=span) / steps
    with fresh_database(backend) as fdb:
        nurture = open_nurture(fdb)
        db = nurture.db
        try:
            nurture.journeys.save(DRIP, publish=True)
            seed_contacts(db, 1, steps, nurture.clock.now())
            with workers(fdb, processes, journey_batch=batch) as procs:
                time.sleep(5)  # the workers start (imports, migrations checked)
                # The enrolments are written while the workers run, due from a few seconds
                # after the last is written (at about 20,000 a second).
                now = nurture.clock.now()
                t0 = now + timedelta(seconds=5 + steps / 20_000)

                def due(i: int) -> datetime:
                    return t0 + spacing * (i - 1)

                seed_enrolments(db, 1, steps, step="welcome", due=due, now=now)
                if analyze:
                    analyze_tables(db)
                margin = (t0 - nurture.clock.now()).total_seconds()
                wait_until_done(db, due(steps), procs, timeout=span + 600)
            s = t.journey_steps.c
            with db.read() as conn:
                ran = conn.execute(select(s.enrolment_id, s.executed_at).where(s.seq == 0)).all()
        finally:
            nurture.stop()
    late = [(executed - due(i)).total_seconds() for i, executed in ran]
    p50, p99 = _quantile(late, 0.5), _quantile(late, 0.99)
    early = sum(1 for x in late if x < 0)
    notes = [
        f"{len(ran):,} of {steps:,} ran",
        f"mean {statistics.fmean(late):.2f} s",
        f"seeding ended {margin:.1f} s before the first was due",
    ]
    if early:
        notes.append(f"{early} ran before they were due")
    label = f"{backend}, {processes} worker process" + ("es" if processes > 1 else "")
    return [
        Row(
            f"timers: {steps:,} steps due within {span:.0f} s",
            label,
            f"p50 {p50:.2f} s, p99 {p99:.2f} s, max {max(late):.2f} s late",
            "p99 ≤ 1 s late",
            p99 <= 1.0 and len(ran) == steps and not early,
            notes,
        )
    ]


# -- memory ---------------------------------------------------------------------------------


def bench_memory(
    backend: str, sizes: tuple[int, ...], *, due: int, batch: int, analyze: bool
) -> list[Row]:
    peaks = []
    for waiting in sizes:
        with fresh_database(backend) as fdb:
            seeded(
                fdb, due, waiting=waiting, due_at=_recently(SystemClock().now()), analyze=analyze
            )
            cutoff = SystemClock().now()
            db = Database(fdb.url)
            try:
                with workers(fdb, 1, journey_batch=batch) as procs, RssSampler(procs[0].pid) as rss:
                    wait_until_done(db, cutoff, procs, timeout=600)
                    time.sleep(10)  # idle rounds: polling for due steps while the rest waits
                    idle_rss = procs[0].memory_info().rss / 1e6
            finally:
                db.dispose()
        peaks.append((waiting, rss.peak_mb, idle_rss))
    rows = [
        Row(
            f"worker memory, {due:,} due steps run while {waiting:,} wait",
            f"{backend}, 1 worker process",
            f"peak RSS {peak:.0f} MB (idle afterwards {idle:.0f} MB)",
        )
        for waiting, peak, idle in peaks
    ]
    if len(peaks) > 1:
        low, high = peaks[0][1], peaks[-1][1]
        rows[-1].target = "no growth with waiting enrolments"
        rows[-1].met = high <= low * 1.1 + 5
        rows[-1].notes.append(f"{high / low:.2f} times the peak with {peaks[0][0]:,} waiting")
    return rows


# -- the command ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.journeys", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--enrolments", type=int, default=1_000_000, help="steps, memory")
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes for steps (0: run_due in this process; default 0 on SQLite, "
        "4 on PostgreSQL) and timers (default 1 on SQLite, 4 on PostgreSQL)",
    )
    parser.add_argument("--batch", type=int, default=500, help="NURTURE_JOURNEY_BATCH")
    parser.add_argument(
        "--full-workers",
        action="store_true",
        help="steps: workers also dispatch the messages and refresh rollups (default: "
        "--no-dispatch --no-rollups, the steps alone)",
    )
    parser.add_argument(
        "--synchronous", choices=("FULL", "NORMAL"), default="FULL", help="steps on SQLite"
    )
    parser.add_argument(
        "--no-analyze", action="store_true", help="PostgreSQL: no ANALYZE after seeding"
    )
    parser.add_argument("--max-seconds", type=float, default=540, help="steps: stop after")
    parser.add_argument(
        "--profile", type=Path, help="pyinstrument of steps (in process) and inbox: FILE-steps.txt…"
    )
    parser.add_argument("--inbox-events", type=int, default=30_000)
    parser.add_argument("--rate", type=int, default=1000, help="latency: events per second")
    parser.add_argument("--seconds", type=float, default=30, help="latency: run length")
    parser.add_argument("--users", type=int, default=10_000, help="latency: contacts")
    parser.add_argument(
        "--no-evaluator", action="store_true", help="latency: without the evaluator thread"
    )
    parser.add_argument("--timer-steps", type=int, default=100_000)
    parser.add_argument("--timer-span", type=float, default=60, help="timers: seconds")
    parser.add_argument("--small", type=int, default=10_000, help="memory: the small size")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    sqlite = args.backend == "sqlite"
    many = 1 if sqlite else 4  # worker processes by default (steps on SQLite: in process)
    analyze = not args.no_analyze
    started, start_load, source = SystemClock().now(), _load(), source_digest()
    rows: list[Row] = []
    for name in args.only:
        log(f"running {name}")
        if name == "steps":
            processes = args.workers if args.workers is not None else (0 if sqlite else many)
            rows += bench_steps(
                args.backend,
                args.enrolments,
                processes=processes,
                batch=args.batch,
                max_seconds=args.max_seconds,
                profile=_named(args.profile, "steps"),
                synchronous=args.synchronous,
                analyze=analyze,
                full_workers=args.full_workers,
            )
        elif name == "queue":
            with fresh_database("sqlite") as fdb:
                rows += bench_queue(args.enrolments, fdb.workdir)
        elif name == "inbox":
            rows += bench_inbox(args.backend, args.inbox_events, profile=args.profile)
        elif name == "latency":
            rows += bench_latency(
                args.backend,
                rate=args.rate,
                seconds=args.seconds,
                users=args.users,
                evaluator=not args.no_evaluator,
            )
        elif name == "timers":
            processes = args.workers or many
            rows += bench_timers(
                args.backend, args.timer_steps, span=args.timer_span, processes=processes,
                batch=args.batch, analyze=analyze,
            )  # fmt: skip
        elif name == "memory":
            sizes = (args.small, args.enrolments) if args.enrolments > args.small else (args.small,)
            rows += bench_memory(
                args.backend, sizes, due=args.small, batch=args.batch, analyze=analyze
            )
    console = Console(width=160)
    table = Table("benchmark", "backend", "figure", "target", "met?", title="Journey benchmarks")
    for row in rows:
        table.add_row(row.name, row.backend, row.figure, row.target, _met(row.met))
    console.print(table)
    for row in rows:
        if row.notes:
            console.print(f"[bold]{row.name} ({row.backend})[/]: " + "; ".join(row.notes))
    console.print(
        f"started {started:%Y-%m-%d %H:%M} UTC, ended {SystemClock().now():%H:%M}; "
        f"{psutil.cpu_count()} cores; load average at the start {start_load}, at the end "
        f"{_load()}; source {source}"
        + ("" if source_digest() == source else f" (changed during the run: {source_digest()})")
    )
    if args.markdown:
        print("\n| benchmark | backend | measured | target | met? |\n|---|---|---|---|---|")
        for row in rows:
            print(f"| {row.name} | {row.backend} | {row.figure} | {row.target} | {_met(row.met)} |")
    return 0


def source_digest() -> str:
    """A short digest of the engine's source (src/nurture), to tell which code a run
    measured when the tree changes between runs."""
    root = Path(__file__).parent.parent / "src" / "nurture"
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _met(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "**no**")


if __name__ == "__main__":
    raise SystemExit(main())
