"""The journey worker in a running Nurture (real clock, threads): an event's first
message is written without anyone calling the runtime, and a segment entry triggers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tests.conftest import make_settings
from tests.journeys.world import make_templates

from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t


@pytest.fixture
def live(db: Database, tmp_path: Path) -> Iterator[Nurture]:
    make_templates(tmp_path)
    settings = make_settings(str(db.url), project_dir=tmp_path, evaluation_refresh_seconds=0)
    instance = Nurture(settings, db=db, background=True)
    instance.start()
    yield instance
    instance.stop()


def wait_for(predicate: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def outbox_count(nurture: Nurture) -> int:
    with nurture.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(t.outbox)).scalar_one())


def test_an_event_and_a_segment_entry_start_journeys_in_a_running_server(live: Nurture) -> None:
    live.segments.save({"key": "buyers", "where": {"event": "Order Completed"}})
    for key, trigger in (("hi", {"event": "Signed Up"}), ("thanks", {"segment": "buyers"})):
        live.journeys.save(
            {"key": key, "trigger": trigger,
             "steps": [{"id": "m", "type": "send", "channel": "email", "template": "welcome"}]},
            publish=True,
        )  # fmt: skip
    live.ingest([{"type": "track", "userId": "u", "event": "Signed Up"}])
    wait_for(lambda: outbox_count(live) == 1)
    live.ingest([{"type": "track", "userId": "u", "event": "Order Completed"}])
    wait_for(lambda: outbox_count(live) == 2)
    with live.db.read() as conn:
        journeys = sorted(conn.execute(select(t.outbox.c.journey_key)).scalars())
    assert journeys == ["hi", "thanks"]
