"""The evaluator thread of `nurture serve`: woken by ingest commits, it keeps memberships
current without anyone calling the engine."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.settings import Settings
from nurture.store import Database
from nurture.store import tables as t


@pytest.fixture
def served(db: Database, clock: SimulatedClock) -> Iterator[Nurture]:
    settings = Settings.model_construct(
        **{**Settings.model_construct().model_dump(), "database_url": str(db.url)}
    )
    instance = Nurture(settings, clock=clock, db=db, background=True)
    instance.start()
    yield instance
    instance.stop()


def test_memberships_follow_events_with_the_evaluator_thread(served: Nurture) -> None:
    # Given a segment, and the evaluator thread running
    assert served.runner is not None
    served.segments.save({"key": "buyers", "where": {"event": "Order Completed"}})
    # When an order is ingested
    at = served.clock.now().isoformat()
    served.ingest([{"type": "track", "userId": "ann", "event": "Order Completed", "timestamp": at}])
    # Then the thread evaluates her soon after the commit
    deadline = time.monotonic() + 10
    found: list[int] = []
    while time.monotonic() < deadline and not found:
        with served.db.read() as conn:
            m = t.segment_memberships.c
            found = list(
                conn.execute(select(m.contact_id).where(m.segment_key == "buyers")).scalars()
            )
        time.sleep(0.02)
    assert len(found) == 1
