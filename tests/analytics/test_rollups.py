"""The journey report's rollups (analytics/rollups.py) give the numbers a recount of the
rows gives: on random rows, after random changes (statuses moving, feedback arriving,
enrolments ending, rows erased), with refreshes at random points, over ranges and time
zones whose days are not UTC days (Kolkata's +05:30, Kathmandu's +05:45, New York and
Lord Howe across a daylight saving change), on SQLite and PostgreSQL; and a refresh
racing writers on other connections loses nothing."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, insert, select, update
from tests.conftest import make_settings

from nurture.analytics import journey_queries as q
from nurture.analytics import rollups
from nurture.analytics.journey_metrics import _frame, journey_report, messages_report
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t

from .test_journey_metrics import JOURNEY, publish

# New York moves its clocks at 2026-03-08 07:00 UTC; the rows span it.
T0 = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
SPAN_MINUTES = 30 * 60
ZONES = ("UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/New_York", "Australia/Lord_Howe")
TABLES = (t.message_feedback, t.outbox, t.journey_steps, t.enrolments, t.metric_marks)
STATUSES = ("queued", "sending", "sent", "delivered", "bounced", "complained", "skipped", "failed")
FATES = ("active", "completed", "converted", "exited", "failed")
HELLO = ("hello", "hello", "a", "email")

minutes = st.integers(0, SPAN_MINUTES)
enrolments = st.lists(
    st.tuples(
        minutes,  # entered
        st.sampled_from((1, 2)),  # version
        st.booleans(),  # control
        st.sampled_from(FATES),
        st.integers(1, 600),  # minutes until it ended or converted
        st.sampled_from(("wait", "hello", "text")),  # step
        st.integers(0, 40),  # revenue in quarters
    ),
    max_size=25,
)
runs = st.lists(
    st.tuples(minutes, st.sampled_from((1, 2)), st.sampled_from(("wait", "hello", "text"))),
    max_size=25,
)
messages = st.lists(
    st.tuples(
        st.sampled_from(("welcome", None)),
        st.sampled_from(
            (
                ("hello", "hello", "a", "email"),
                ("hello", "hello_b", "b", "email"),
                ("text", "text", None, "sms"),
            )
        ),
        st.sampled_from((1, 2)),
        st.sampled_from(STATUSES),
        minutes,  # created
        st.integers(0, 90),  # minutes until sent (when it has been)
        st.booleans(),  # has a provider id
    ),
    max_size=30,
)
feedback = st.lists(
    st.tuples(
        st.integers(0, 29),  # which message
        st.sampled_from(("opened", "clicked", "unsubscribed", "complained", "delivered")),
        st.booleans(),  # machine
        st.booleans(),  # stored with the provider's id only
        st.booleans(),  # applied
    ),
    max_size=30,
)
changes = st.lists(
    st.tuples(
        st.sampled_from(("status", "end", "erase_message", "erase_enrolment", "feedback")),
        st.integers(0, 29),
        st.sampled_from(STATUSES),
        minutes,
    ),
    max_size=12,
)
# (from, to) in quarter hours after T0 - 1 day (None: open), the zone, the version
questions = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(0, 300)),
        st.one_of(st.none(), st.integers(1, 300)),
        st.sampled_from(ZONES),
        st.sampled_from((None, 1, 2)),
    ),
    min_size=1,
    max_size=4,
)


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute, seconds=minute % 7 * 8)


class World:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.enrolments: list[int] = []
        self.messages: list[int] = []
        self.keys = 0

    def clear(self) -> None:
        with self.db.write() as conn:
            for table in (*TABLES, t.metric_rollups):
                conn.execute(delete(table))

    def add(self, enrolled: list[Any], ran: list[Any], sent: list[Any], fed: list[Any]) -> None:
        with self.db.write() as conn:
            for entered, version, control, fate, later, step, revenue in enrolled:
                ended = at(entered + later) if fate != "active" else None
                eid = conn.execute(insert(t.enrolments).values(
                    journey_key="welcome", version=version, contact_id=1, status=fate,
                    control=control, step=step, seq=1, attempts=0, entry_key=f"e{self._key()}",
                    exclusive=False, context={}, entered_at=at(entered), ended_at=ended,
                    end_reason={"converted": "goal", "exited": "order"}.get(fate, fate)
                    if ended else None,
                    converted_at=ended if fate == "converted" else None,
                    revenue=revenue / 4 if fate == "converted" else None,
                ).returning(t.enrolments.c.id)).scalar_one()  # fmt: skip
                self.enrolments.append(eid)
            for i, (minute, version, step) in enumerate(ran):
                step = "hello" if version == 2 and step == "text" else step  # v2 has no text
                enrolment = self.enrolments[i % len(self.enrolments)] if self.enrolments else 0
                conn.execute(insert(t.journey_steps).values(
                    enrolment_id=enrolment, seq=self._key(), journey_key="welcome",
                    version=version, step=step, contact_id=1, outcome="ok",
                    executed_at=at(minute),
                ))  # fmt: skip
            for journey, message, version, status, created, later, pid in sent:
                step, template, variant, channel = message
                unsent = status in ("queued", "skipped")
                mid = conn.execute(insert(t.outbox).values(
                    idempotency_key=f"k{self._key()}", contact_id=1, journey_key=journey,
                    version=version if journey else None, step=step if journey else None,
                    channel=channel, template=template, variant=variant, kind="marketing",
                    payload={}, status=status, created_at=at(created), send_after=at(created),
                    sent_at=None if unsent else at(created + later),
                    provider_id=f"p{self.keys}" if pid else None,
                ).returning(t.outbox.c.id)).scalar_one()  # fmt: skip
                self.messages.append(mid)
            for which, kind, machine, by_provider, applied in fed:
                self._feedback(conn, which, kind, machine, by_provider, applied)

    def _feedback(
        self, conn: Any, which: int, kind: str, machine: bool, by_provider: bool, applied: bool
    ) -> None:
        if not self.messages:
            return
        mid = self.messages[which % len(self.messages)]
        pid = conn.execute(select(t.outbox.c.provider_id).where(t.outbox.c.id == mid)).scalar()
        linked = not (by_provider and pid is not None)
        if conn.execute(select(t.outbox.c.id).where(t.outbox.c.id == mid)).first() is None:
            return
        conn.execute(insert(t.message_feedback).values(
            provider="test", event_key=f"f{self._key()}", provider_id=pid,
            outbox_id=mid if linked else None, type=kind, occurred_at=T0, received_at=T0,
            applied_at=T0 if applied else None,
            payload={"type": kind, "machine": machine},
        ))  # fmt: skip

    def change(self, plan: list[Any]) -> None:
        o, n = t.outbox.c, t.enrolments.c
        with self.db.write() as conn:
            for what, which, status, minute in plan:
                if what == "status" and self.messages:
                    mid = self.messages[which % len(self.messages)]
                    sent = None if status in ("queued", "skipped") else at(minute)
                    conn.execute(update(t.outbox).where(o.id == mid).values(
                        status=status, sent_at=sent))  # fmt: skip
                elif what == "end" and self.enrolments:
                    eid = self.enrolments[which % len(self.enrolments)]
                    conn.execute(update(t.enrolments).where(n.id == eid).values(
                        status="converted", ended_at=at(minute), converted_at=at(minute),
                        end_reason="goal", revenue=which / 4))  # fmt: skip
                elif what == "erase_message" and self.messages:
                    mid = self.messages[which % len(self.messages)]
                    conn.execute(delete(t.message_feedback).where(
                        t.message_feedback.c.outbox_id == mid))  # fmt: skip
                    conn.execute(delete(t.outbox).where(o.id == mid))
                elif what == "erase_enrolment" and self.enrolments:
                    eid = self.enrolments[which % len(self.enrolments)]
                    conn.execute(delete(t.journey_steps).where(
                        t.journey_steps.c.enrolment_id == eid))  # fmt: skip
                    conn.execute(delete(t.enrolments).where(n.id == eid))
                elif what == "feedback":
                    self._feedback(conn, which, "opened", which % 3 == 0, which % 2 == 0, True)

    def _key(self) -> int:
        self.keys += 1
        return self.keys


def bound(quarters: int | None) -> str | None:
    if quarters is None:
        return None
    return (T0 - timedelta(days=1) + quarters * rollups.BUCKET).isoformat()


def both_ways(db: Database, question: tuple[Any, ...]) -> None:
    """The journey report and the messages reports, from the rollups and from the rows."""
    lo, hi, zone, version = question
    start, end = bound(lo), bound(hi)
    if start is not None and end is not None and start >= end:
        start, end = end, start
        if start == end:
            return
    args = {"start": start, "end": end, "tz": zone}
    rolled = journey_report(db, "welcome", **args, version=version).to_json()
    same(rolled, journey_report(db, "welcome", **args, version=version, exact=True).to_json())
    for journey, template in ((None, None), ("welcome", None), (None, "hello_b")):
        kwargs = {**args, "journey": journey, "template": template}
        rolled = messages_report(db, **kwargs).to_json()
        same(rolled, messages_report(db, **kwargs, exact=True).to_json())
    # The rollups answered (the question's bounds fall on bucket boundaries).
    scope = q.Scope("welcome", version, *_range(start, end, zone))
    with rollups.snapshot(db) as conn:
        _, _, days = _frame(conn, scope, ZoneInfo(zone), [1, 2])
        counted = rollups.collect(conn, scope, ZoneInfo(zone), days, enrolments=True, unlinked=True)
    assert counted is not None


def same(rolled: dict[str, Any], counted: dict[str, Any]) -> None:
    """The two reports are equal (table by table first, for a readable difference)."""
    tables = {table["key"]: table["rows"] for table in counted["tables"]}
    for table in rolled["tables"]:
        assert table["rows"] == tables[table["key"]], (table["key"], counted["params"])
    assert rolled == counted


def _range(start: str | None, end: str | None, zone: str) -> tuple[Any, Any]:
    from nurture.analytics.journey_metrics import period

    lo, hi, _ = period(start, end, zone)
    return lo, hi


@settings(
    max_examples=25,
    # No shrinking: every example writes a database, and shrinking one took over 5 minutes.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=st.tuples(enrolments, runs, messages, feedback),
    second=st.tuples(enrolments, runs, messages, feedback),
    plan=changes,
    refreshes=st.tuples(st.booleans(), st.sampled_from((1, 5, 1000)), st.booleans()),
    asked=questions,
)
def test_rollups_count_what_the_rows_count(
    db: Database,
    first: tuple[Any, ...],
    second: tuple[Any, ...],
    plan: list[Any],
    refreshes: tuple[bool, int, bool],
    asked: list[Any],
) -> None:
    # Given a journey and random rows written in two batches with random changes, and
    # the rollups refreshed in part or in whole between them (or not at all)
    if not _published(db):
        publish(db, JOURNEY)
        publish(db, {**JOURNEY, "steps": JOURNEY["steps"][:2]})
    world = World(db)
    world.clear()
    world.add(*first)
    if refreshes[0]:
        rollups.refresh(db, most=refreshes[1])
    world.add(*second)
    world.change(plan)
    if refreshes[2]:
        while rollups.refresh(db, most=refreshes[1]):
            pass
    # When reports are asked over random ranges in random zones, then the rollups give
    # what counting the rows gives
    for question in asked:
        both_ways(db, question)
    # And a refresh of everything leaves no mark and the stored rollups equal a recount
    while rollups.refresh(db):
        pass
    with db.read() as conn:
        assert conn.execute(select(func.count()).select_from(t.metric_marks)).scalar() == 0
        stored = _stored(conn)
        recount = []
        for journey in ("welcome", ""):
            recount += rollups.compute(
                conn, journey, T0 - timedelta(days=2), T0 + timedelta(days=3), unlinked=True
            )
    assert stored == sorted(_comparable(r) for r in recount)
    for question in asked:
        both_ways(db, question)


def _published(db: Database) -> bool:
    with db.read() as conn:
        return conn.execute(select(t.journeys.c.key)).first() is not None


def _comparable(row: Any) -> tuple[Any, ...]:
    values = tuple(row[k] for k in (*rollups.DIMENSIONS, *rollups.MEASURES))
    return (rollups._moment(row["bucket"]), *(("" if v is None else str(v)) for v in values))


def _stored(conn: Any, span: int = rollups.QUARTER) -> list[tuple[Any, ...]]:
    """The stored rows of one span, comparable; for 15 minutes, checked first to add up to
    the stored hours, and those to the stored days."""
    rows = conn.execute(select(t.metric_rollups)).mappings().all()
    if span == rollups.QUARTER:
        for small, big in ((rollups.QUARTER, rollups.HOUR), (rollups.HOUR, rollups.DAY)):
            sums: dict[tuple[Any, ...], list[Any]] = {}
            for r in rows:
                if r["span"] == small:
                    key = (
                        rollups.floor(rollups._moment(r["bucket"]), big),
                        *(r[d] for d in rollups.DIMENSIONS),
                    )
                    total = sums.setdefault(key, [0] * len(rollups.MEASURES))
                    for i, m in enumerate(rollups.MEASURES):
                        total[i] += r[m]
            added = sorted(
                (str(k), [float(v) for v in values]) for k, values in sums.items() if any(values)
            )
            kept = sorted(
                (
                    str((rollups._moment(r["bucket"]), *(r[d] for d in rollups.DIMENSIONS))),
                    [float(r[m]) for m in rollups.MEASURES],
                )
                for r in rows
                if r["span"] == big
            )
            assert kept == added, (small, big)
    return sorted(
        _comparable(r) for r in rows if r["span"] == span and any(r[m] for m in rollups.MEASURES)
    )


def test_a_refresh_racing_writers_loses_no_change(db: Database) -> None:
    # Given writers on four connections adding enrolments, step runs, messages and
    # feedback into the same few buckets while refreshes run over and over
    publish(db, JOURNEY)
    world = World(db)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        try:
            for i in range(40):
                minute = (seed * 7 + i) % 45
                world.add(
                    [(minute, 1, i % 5 == 0, FATES[i % 5], 3, "hello", i)],
                    [(minute, 1, "hello")],
                    [("welcome", HELLO, 1, "delivered", minute, 1, False)],
                    [(i, "opened", i % 2 == 0, False, True)],
                )  # fmt: skip
        except BaseException as error:  # reported below
            errors.append(error)

    def refresh() -> None:
        try:
            while not stop.is_set():
                rollups.refresh(db, most=3)
        except BaseException as error:  # reported below
            errors.append(error)

    refresher = threading.Thread(target=refresh)
    refresher.start()
    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    refresher.join()
    assert errors == []
    # When the last marks are refreshed, then the stored rollups equal a recount, and the
    # report from them equals the report from the rows
    while rollups.refresh(db):
        pass
    with db.read() as conn:
        assert conn.execute(select(func.count()).select_from(t.metric_marks)).scalar() == 0
        stored = _stored(conn)
        recount = rollups.compute(
            conn, "welcome", T0 - timedelta(days=1), T0 + timedelta(days=1), unlinked=False
        )
    assert stored == sorted(_comparable(r) for r in recount)
    assert stored
    report = journey_report(db, "welcome").to_json()
    assert report == journey_report(db, "welcome", exact=True).to_json()
    assert report["summary"]["entered"] + report["summary"]["control"] == 160
    assert report["summary"]["sent"] == 160


def test_the_server_keeps_the_rollups_current(db: Database) -> None:
    # Given a Nurture with its background threads (as `nurture serve` runs it), every
    # in-process worker off but the rollups'
    settings = make_settings(
        str(db.url),
        rollup_seconds=0.2,
        evaluate_in_process=False,
        journeys_in_process=False,
        dispatch_in_process=False,
    )
    # The clock stands in the bucket of a last step run, 5 minutes after it.
    clock = SimulatedClock(at(1800) + timedelta(minutes=5))
    nurture = Nurture(settings, db=db, clock=clock, background=True).start()
    try:
        publish(db, JOURNEY)
        # When rows are written
        World(db).add(
            [(5, 1, False, "converted", 30, "hello", 8), (700, 1, True, "active", 1, "wait", 0)],
            [(5, 1, "wait"), (900, 1, "hello"), (1800, 1, "text")],
            [("welcome", HELLO, 1, "delivered", 10, 1, False)],
            [(0, "opened", False, False, True)],
        )
        # Then within seconds no mark is left but the current bucket's (written to all
        # the time: reports count it from the rows), and the stored rollups are a recount
        current = rollups.floor(clock.now(), rollups.QUARTER)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with db.read() as conn:
                marks = conn.execute(select(t.metric_marks.c.bucket)).scalars().all()
            left = sum(rollups._moment(b) != current for b in marks)
            if left == 0:
                break
            time.sleep(0.1)
        assert [rollups._moment(b) for b in marks] == [current]
        assert left == 0
        with db.read() as conn:
            stored = _stored(conn)
            recount = rollups.compute(
                conn, "welcome", T0 - timedelta(days=1), current, unlinked=False
            )
        assert stored == sorted(_comparable(r) for r in recount)
        assert {row[1] for row in stored} == {"entered", "converted", "ended", "run", "message"}
        report = journey_report(db, "welcome").to_json()
        assert report == journey_report(db, "welcome", exact=True).to_json()
        assert sum(r["runs"] for r in report["tables"][0]["rows"]) == 3
    finally:
        nurture.stop()
