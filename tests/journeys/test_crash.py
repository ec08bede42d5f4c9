"""SIGKILL journey workers at random moments while 10,000 enrolments move through a
journey, start replacements, and prove that every entry and every step happened exactly
once and that the outbox holds one row per send: no duplicate, no gap. On PostgreSQL four
`nurture worker` processes share the work; SQLite has one writer, so one worker (with the
same 10,000: it finishes well within the time a suite can spend).

9,000 contacts are enrolled before the workers start (through ingest and the journey
inbox, as a worker would), the last 1,000 trial starts wait in the inbox, so the kills
cut into both kinds of work: entering and running steps. The journey waits for real ("1s"
on the system clock), so a kill finds enrolments in every state."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tests.conftest import HEAVY, make_settings, process_url

from nurture.core import Nurture
from nurture.journeys import interpreter as ip
from nurture.store import Database
from nurture.store import tables as t

pytestmark = HEAVY  # one at a time (see tests/conftest.py)

ENROLMENTS = 10_000
KEY = "crash_trial"
JOURNEY = {
    "key": KEY,
    "name": "Trial under fire",
    "trigger": {"event": "Trial Started"},
    "steps": [
        {"id": "welcome", "type": "send", "channel": "email", "template": "welcome"},
        {"id": "pause", "type": "wait", "for": "1s"},
        {"id": "ab", "type": "split", "paths": [
            {"name": "A", "weight": 1, "next": "try_a"},
            {"name": "B", "weight": 1, "next": "try_b"},
        ]},
        {"id": "try_a", "type": "send", "channel": "email", "template": "variant_a",
         "next": "by_plan"},
        {"id": "try_b", "type": "send", "channel": "sms", "template": "variant_b"},
        {"id": "by_plan", "type": "branch", "cases": [
            {"if": {"event": "Trial Started", "where": [{"property": "plan", "eq": "pro"}]},
             "next": "upsell"},
        ], "else": "nudge"},
        {"id": "upsell", "type": "send", "channel": "email", "template": "usage_summary",
         "next": "end"},
        {"id": "nudge", "type": "send", "channel": "email", "template": "reminder"},
    ],
}  # fmt: skip
SENDS = {"welcome": "welcome", "try_a": "variant_a", "try_b": "variant_b",
         "upsell": "usage_summary", "nudge": "reminder"}  # fmt: skip
SEED = 20260301
QUEUED = 1_000  # trial starts left for the workers to enrol under fire
DEADLINE_SECONDS = 240.0  # from the workers' start to the end of the work: ~5x the usual
STALL_SECONDS = 60.0  # for a worker to make any progress at all
EXCEPTION = re.compile(r"[\w.]+(Error|Exception|Violation): ")  # a traceback's last line


def expected_path(contact_id: int, plan: str) -> list[str]:
    """The steps an enrolment runs, in order, worked out from the journey by hand. The
    split path comes from the contact id alone (its documented contract: the same in
    every process), the branch from the plan the test gave the trial start."""
    path = ["A", "B"][ip.pick([1.0, 1.0], ip.unit(KEY, "ab", contact_id))]
    return [
        "welcome",
        "pause",
        "ab",
        "try_a" if path == "A" else "try_b",
        "by_plan",
        "upsell" if plan == "pro" else "nudge",
    ]


class Workers:
    """`nurture worker --no-segments --no-dispatch` processes, each logging to its own file."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.started = 0
        self.running: list[subprocess.Popen[bytes]] = []
        self.command = [
            str(Path(sys.executable).with_name("nurture")),
            "worker",
            "--no-segments",
            "--no-dispatch",
        ]

    def start(self) -> None:
        """One more worker."""
        self.started += 1
        with (self.logs / f"worker-{self.started}.log").open("wb") as log:
            self.running.append(
                subprocess.Popen(
                    self.command, env=self.env, cwd=self.logs, stdout=log, stderr=subprocess.STDOUT
                )
            )

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL a worker picked at random: no chance to finish, roll back or log."""
        victim = rng.choice(self.running)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        self.running.remove(victim)

    def check_alive(self) -> None:
        """Fail if a worker has ended that nobody killed."""
        for proc in self.running:
            assert proc.poll() is None, f"a worker died by itself: {self.failures()}"

    def stop(self) -> list[int]:
        """SIGTERM every worker (SIGKILL after 20 s); their exit codes."""
        for proc in self.running:
            proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.running:
            try:
                codes.append(proc.wait(20))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait(10))
        self.running.clear()
        return codes

    def failures(self) -> list[str]:
        """What went wrong in the workers, as logged: a failed round is retried, and the
        retry would hide a duplicate step that a unique key refused, so any counts."""
        out = []
        for path in sorted(self.logs.glob("worker-*.log")):
            text = path.read_text(errors="replace")
            if "round failed" in text or "Traceback" in text:
                raised = [line[:300] for line in text.splitlines() if EXCEPTION.match(line)]
                out.append(f"{path.name}: " + " | ".join(list(dict.fromkeys(raised))[:5]))
        return out


@pytest.fixture
def workers(database_url: tuple[str, str | None], tmp_path: Path) -> Iterator[Workers]:
    """A worker pool whose every process is ended, whatever happens to the test."""
    url, schema = database_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env |= {
        "NURTURE_DATABASE_URL": process_url(url, schema),
        "NURTURE_PROJECT_DIR": str(tmp_path / "project"),
        "NURTURE_DEFAULT_TIMEZONE": "UTC",
        # Smaller transactions than the default 500: more of them for a kill to cut.
        "NURTURE_JOURNEY_BATCH": "200",
    }
    logs = tmp_path / "workers"
    logs.mkdir()
    pool = Workers(env, logs)
    try:
        yield pool
    finally:
        for proc in pool.running:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def enrol(db: Database, project: Path) -> None:
    """Publish the journey and ingest 10,000 trial starts (every other one on the pro
    plan); enrol all but the last QUEUED through the inbox, as a worker would, and leave
    those in the inbox so that the workers enter them under fire too."""
    settings = make_settings(str(db.url), project_dir=project, default_timezone="UTC")
    nurture = Nurture(settings, db=db).start()
    try:
        nurture.journeys.save(JOURNEY, publish=True)
        events = [
            {
                "type": "track",
                "userId": f"user-{i}",
                "event": "Trial Started",
                "messageId": f"trial-{i}",
                "properties": {"plan": "pro" if i % 2 else "free"},
            }
            for i in range(ENROLMENTS)
        ]
        nurture.ingest(events[: ENROLMENTS - QUEUED])
        while nurture.journey_runtime.process_inbox():
            pass
        nurture.ingest(events[ENROLMENTS - QUEUED :])
    finally:
        nurture.stop()


@dataclass(frozen=True)
class Progress:
    """Where the work stands: events not yet consumed, live enrolments, steps run."""

    inbox: int
    active: int
    steps: int

    @classmethod
    def of(cls, db: Database) -> Progress:
        n = t.enrolments.c
        with db.read() as conn:
            return cls(
                conn.execute(select(func.count()).select_from(t.journey_inbox)).scalar_one(),
                conn.execute(select(func.count()).where(n.status == "active")).scalar_one(),
                conn.execute(select(func.count()).select_from(t.journey_steps)).scalar_one(),
            )

    @property
    def left(self) -> bool:
        return bool(self.inbox or self.active)


def working(db: Database, since: Progress, workers: Workers) -> Progress:
    """Progress once the workers have done something since `since` (or run out of work):
    a kill then lands on a worker at work, not on one still starting."""
    deadline = time.monotonic() + STALL_SECONDS
    while (now := Progress.of(db)) == since and now.left:
        workers.check_alive()
        assert time.monotonic() < deadline, f"no progress in {STALL_SECONDS:.0f} s: {now}"
        time.sleep(0.05)
    return now


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_SECONDS + 180)  # enrolling and checking come on top
def test_killed_workers_run_every_step_once_and_write_every_message_once(
    db: Database, backend: str, project: Path, workers: Workers
) -> None:
    """Given 9,000 enrolments in flight, 1,000 more trial starts in the journey inbox, and
    as many workers as the database allows (four on PostgreSQL, one on SQLite), when a
    worker is SIGKILLed every 0.3 to 1.5 s (once they have worked since the last kill) and
    replaced, then everyone is enrolled once and completes their own path, each step once
    and in order, with exactly one outbox row per send step run."""
    # Given
    began = time.monotonic()
    enrol(db, project)
    last = Progress.of(db)
    # (an entry's first step, the welcome send, runs in the transaction that enrolled it)
    assert last == Progress(inbox=QUEUED, active=ENROLMENTS - QUEUED, steps=ENROLMENTS - QUEUED)
    rng = random.Random(SEED)
    size, kills_wanted = (4, 12) if backend == "postgresql" else (1, 8)
    enrolled = time.monotonic()
    for _ in range(size):
        workers.start()

    # When
    kills: list[Progress] = []
    while len(kills) < kills_wanted:
        time.sleep(rng.uniform(0.3, 1.5))
        last = working(db, last, workers)
        if not last.left:
            break
        workers.kill_one(rng)
        workers.start()
        kills.append(last)
    deadline = enrolled + DEADLINE_SECONDS
    while (now := Progress.of(db)).left and time.monotonic() < deadline:
        workers.check_alive()
        time.sleep(0.25)
    assert not now.left, (
        f"work left {DEADLINE_SECONDS:.0f} s after the workers started: {now}, "
        f"at the last kill: {last}; {workers.failures()}"
    )
    done = time.monotonic()
    codes = workers.stop()
    print(
        f"\n{backend}: enrolled in {enrolled - began:.1f} s, {size} workers done in "
        f"{done - enrolled:.1f} s after {len(kills)} kills; at each kill:\n"
        + "\n".join(f"  {k}" for k in kills)
    )

    # Then every kill cut into work in flight, and the last workers stopped cleanly
    assert len(kills) >= kills_wanted * 2 // 3, f"the work ran out after {len(kills)} kills"
    assert all(k.active for k in kills)
    assert codes == [0] * size
    assert not workers.failures()
    # And every entry, step and message happened exactly once
    check_exactly_once(db)


def check_exactly_once(db: Database) -> None:
    """One completed enrolment per trial start, each along its own path with every step
    logged once in order, and the outbox exactly the messages those paths prescribe."""
    n, s, o, e = t.enrolments.c, t.journey_steps.c, t.outbox.c, t.events.c
    with db.read() as conn:
        plans = {
            row.contact_id: row.plan
            for row in conn.execute(
                select(e.contact_id, e.properties["plan"].as_string().label("plan"))
            )
        }
        enrolments = conn.execute(
            select(n.id, n.contact_id, n.status, n.attempts, n.entry_key)
        ).all()
        logged: dict[int, list[tuple[int, str]]] = {}
        for row in conn.execute(select(s.enrolment_id, s.seq, s.step).order_by(s.seq)):
            logged.setdefault(row.enrolment_id, []).append((row.seq, row.step))
        messages = conn.execute(select(o.idempotency_key, o.enrolment_id, o.step, o.template))
        outbox = [tuple(m) for m in messages]
    assert len(plans) == ENROLMENTS
    assert sorted(r.entry_key for r in enrolments) == sorted(
        f"event:trial-{i}" for i in range(ENROLMENTS)
    )
    assert {r.contact_id for r in enrolments} == set(plans)
    assert {(r.status, r.attempts) for r in enrolments} == {("completed", 0)}
    wanted_steps: dict[int, list[tuple[int, str]]] = {}
    wanted_outbox: set[tuple[str, int, str, str]] = set()
    for row in enrolments:
        path = expected_path(row.contact_id, plans[row.contact_id])
        wanted_steps[row.id] = list(enumerate(path))
        wanted_outbox |= {
            (f"{row.id}:{seq}", row.id, step, SENDS[step])
            for seq, step in enumerate(path)
            if step in SENDS
        }
    wrong = [(i, logged.get(i)) for i, want in wanted_steps.items() if logged.get(i) != want]
    assert not wrong, f"{len(wrong)} enrolments ran other steps than their path: {wrong[:5]}"
    assert set(logged) == set(wanted_steps), "steps logged for unknown enrolments"
    keys = [m[0] for m in outbox]
    assert len(keys) == len(set(keys)), "duplicate idempotency keys"
    missing, extra = wanted_outbox - set(outbox), set(outbox) - wanted_outbox
    assert not missing, f"{len(missing)} messages missing: {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} messages not on any path: {sorted(extra)[:5]}"
    assert len(outbox) == 3 * ENROLMENTS
