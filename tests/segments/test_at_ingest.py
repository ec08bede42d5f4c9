"""Evaluation inside the ingest transaction (`Engine.evaluate_at_ingest`, the setting
`evaluate_at_ingest`): a contact's memberships, stages and scores commit with the events
that change them; what it leaves (a large group, a contact another evaluation holds, an
error) stays queued for the evaluator, and the events are stored whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from functools import partial

import pytest
from sqlalchemy import func, select, text

from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.segments.engine import EVALUATION_LOCK
from nurture.settings import Settings
from nurture.store import Database
from nurture.store import tables as t


def _nurture(db: Database, clock: SimulatedClock, **settings: object) -> Nurture:
    values = {**Settings.model_construct().model_dump(), "database_url": str(db.url), **settings}
    return Nurture(Settings.model_construct(**values), clock=clock, db=db)


@pytest.fixture
def nurture(db: Database, clock: SimulatedClock) -> Iterator[Nurture]:
    """No background threads: only the ingest transaction evaluates (up to 2 contacts)."""
    instance = _nurture(db, clock)
    instance.writer.in_transaction.append(partial(instance.engine.evaluate_at_ingest, limit=2))
    instance.start()
    instance.segments.save({"key": "buyers", "where": {"event": "Order Completed"}})
    yield instance
    instance.stop()


def _order(n: Nurture, user: str) -> dict[str, object]:
    return {
        "type": "track",
        "userId": user,
        "event": "Order Completed",
        "timestamp": n.clock.now().isoformat(),
    }


def _members(n: Nurture) -> set[str]:
    m, c = t.segment_memberships.c, t.contacts.c
    with n.db.read() as conn:
        query = select(c.user_id).join_from(t.segment_memberships, t.contacts, m.contact_id == c.id)
        return set(conn.execute(query.where(m.segment_key == "buyers")).scalars())


def _queued(n: Nurture) -> int:
    with n.db.read() as conn:
        count = select(func.count()).select_from(t.pending_evaluations)
        return int(conn.execute(count).scalar_one())


def _stored_events(n: Nurture) -> int:
    with n.db.read() as conn:
        count = select(func.count()).select_from(t.events).where(t.events.c.type == "track")
        return int(conn.execute(count).scalar_one())


def test_memberships_commit_with_the_events_that_change_them(nurture: Nurture) -> None:
    waits: list[timedelta] = []
    nurture.engine.on_evaluated.append(waits.extend)
    # When an order is ingested (no evaluator thread runs)
    nurture.ingest([_order(nurture, "ann")])
    # Then her membership, its history and its system event are there when ingest returns
    assert _members(nurture) == {"ann"}
    assert _queued(nurture) == 0
    with nurture.db.read() as conn:
        e = t.events.c
        entered = select(func.count()).where(e.type == "system", e.event == "segment.entered")
        assert conn.execute(entered).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(t.segment_changes)).scalar_one() == 1
    # And the listeners heard of it after the commit, with how long she waited (the
    # simulated clock stands still: no time passed)
    assert waits == [timedelta(0)]


def test_a_group_larger_than_the_limit_is_left_to_the_evaluator(nurture: Nurture) -> None:
    # When one batch brings orders of three contacts (the limit is 2)
    nurture.ingest([_order(nurture, user) for user in ("ann", "bob", "cy")])
    # Then the events are stored and the three wait in the queue
    assert _stored_events(nurture) == 3
    assert _members(nurture) == set()
    assert _queued(nurture) == 3
    # And the evaluator takes them from there
    assert nurture.engine.evaluate_pending() == 3
    assert _members(nurture) == {"ann", "bob", "cy"}
    assert _queued(nurture) == 0


def test_a_contact_queued_before_is_evaluated_on_what_arrived_then_too(
    nurture: Nurture,
) -> None:
    waits: list[timedelta] = []
    nurture.engine.on_evaluated.append(waits.extend)
    woken: list[int] = []
    nurture.writer.on_queued.append(lambda: woken.append(1))
    # Given three known contacts (a new contact is evaluated on everything)
    users = ("ann", "bob", "cy")
    nurture.ingest([{"type": "identify", "userId": user, "traits": {}} for user in users])
    nurture.engine.evaluate_pending()
    waits.clear()
    # And ann's order queued, not evaluated (her batch held three contacts; the limit is 2)
    nurture.ingest([_order(nurture, user) for user in users])
    assert _queued(nurture) == 3 and woken == [1, 1]
    # When, a minute later, she logs in (an event "buyers" does not read)
    nurture.clock.advance(timedelta(minutes=1))
    login = {**_order(nurture, "ann"), "event": "Logged In"}
    nurture.ingest([login])
    # Then the ingest transaction evaluated her on her queued order as well: she is a
    # buyer, off the queue, and waited the minute since her order was stored
    assert _members(nurture) == {"ann"}
    assert _queued(nurture) == 2
    assert waits == [timedelta(minutes=1)]
    # And the evaluator was woken only by the batches that left contacts queued
    assert woken == [1, 1]


def test_an_evaluation_that_fails_leaves_the_events_stored_and_queued(nurture: Nurture) -> None:
    # Given the history table gone (a fault: every membership change fails to be written)
    with nurture.db.write() as conn:
        conn.execute(text("ALTER TABLE segment_changes RENAME TO segment_changes_away"))
    # When an order is ingested
    result = nurture.ingest([_order(nurture, "ann")])
    # Then ingest succeeded: the event is stored and she is queued, with no membership
    assert result.accepted == 1
    assert _stored_events(nurture) == 1
    assert _queued(nurture) == 1
    assert _members(nurture) == set()
    # And once the fault is gone the evaluator catches up
    with nurture.db.write() as conn:
        conn.execute(text("ALTER TABLE segment_changes_away RENAME TO segment_changes"))
    assert nurture.engine.evaluate_pending() == 1
    assert _members(nurture) == {"ann"}


def test_postgresql_ingest_does_not_wait_for_a_population_write(
    db: Database, clock: SimulatedClock
) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite: a population write holds the write lock, which ingest waits for")
    n = _nurture(db, clock)
    n.writer.in_transaction.append(partial(n.engine.evaluate_at_ingest, limit=200))
    n.start()
    try:
        n.segments.save({"key": "buyers", "where": {"event": "Order Completed"}})
        # Given another session holding the evaluation lock, as a population write does
        with db.engine.connect() as holder:
            holder.exec_driver_sql(
                f"SELECT pg_advisory_lock({EVALUATION_LOCK}, hashtext(current_schema()))"
            )
            try:
                # When an order is ingested
                n.ingest([_order(n, "ann")])
                # Then it is stored at once and she is left queued
                assert _stored_events(n) == 1
                assert _queued(n) == 1
                assert _members(n) == set()
            finally:
                holder.exec_driver_sql(
                    f"SELECT pg_advisory_unlock({EVALUATION_LOCK}, hashtext(current_schema()))"
                )
                holder.commit()
        # And the evaluator decides her once the lock is free
        assert n.engine.evaluate_pending() == 1
        assert _members(n) == {"ann"}
    finally:
        n.stop()


def test_the_server_evaluates_at_ingest_by_default(db: Database, clock: SimulatedClock) -> None:
    def served(**settings: object) -> Nurture:
        values = {**Settings.model_construct().model_dump(), "database_url": str(db.url)}
        return Nurture(
            Settings.model_construct(**{**values, **settings}), clock=clock, db=db, background=True
        )

    assert Settings.model_construct().evaluate_at_ingest == 200
    assert len(served().writer.in_transaction) == 1
    assert served(evaluate_at_ingest=0).writer.in_transaction == []
    assert served(evaluate_in_process=False).writer.in_transaction == []
