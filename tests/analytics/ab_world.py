"""Experiments on real journeys: a World (tests/journeys/world.py) with many customers
entering at once, and what each customer actually got, read from the outbox. Tests
compute the expected figures from that and from the conversions they chose, then ask
statsmodels and SciPy for the statistics: never our own code."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tests.conftest import make_settings
from tests.journeys.world import World, make_templates

from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t

_ids = itertools.count(1)


def worlds(db: Database, clock: SimulatedClock, tmp_path: Path) -> Iterator[World]:
    """A started World for a test's `world` fixture (stopped after it)."""
    project = tmp_path / "project"
    make_templates(project)
    settings = make_settings(str(db.url), project_dir=project, default_timezone="UTC")
    instance = Nurture(settings, clock=clock, db=db)
    instance.start()
    yield World(instance)
    instance.stop()


def everyone_does(world: World, users: list[str], event: str, **props: Any) -> None:
    """Each user does `event` now (one ingest batch), then the world runs."""
    at = world.clock.now().isoformat()
    world.n.ingest(
        [
            {"type": "track", "userId": u, "event": event, "properties": dict(props),
             "messageId": f"ab-{next(_ids)}", "timestamp": at}
            for u in users
        ]
    )  # fmt: skip
    world.run()


def buys(world: World, spend: dict[str, float]) -> None:
    """Each user buys for the amount given, now."""
    at = world.clock.now().isoformat()
    world.n.ingest(
        [
            {"type": "track", "userId": u, "event": "Purchased", "properties": {"amount": amount},
             "messageId": f"ab-{next(_ids)}", "timestamp": at}
            for u, amount in spend.items()
        ]
    )  # fmt: skip
    world.run()


def templates_by_user(world: World, journey: str) -> dict[str, str]:
    """The template each user's message of the journey used (one message each)."""
    with world.n.db.read() as conn:
        o, c = t.outbox.c, t.contacts.c
        rows = conn.execute(
            select(c.user_id, o.template)
            .join_from(t.outbox, t.contacts, c.id == o.contact_id)
            .where(o.journey_key == journey)
        ).all()
    out: dict[str, str] = {}
    for user, template in rows:
        assert user not in out, f"{user} got two messages"
        out[user] = template
    return out


def messages_by_user(world: World, journey: str) -> dict[str, int]:
    with world.n.db.read() as conn:
        o, c = t.outbox.c, t.contacts.c
        return {
            user: int(message)
            for user, message in conn.execute(
                select(c.user_id, o.id)
                .join_from(t.outbox, t.contacts, c.id == o.contact_id)
                .where(o.journey_key == journey)
            )
        }


def row_of(report: Any, variant: str) -> dict[str, Any]:
    table = report.table("variants") if hasattr(report, "table") else None
    rows = table.rows if table is not None else report["tables"][0]["rows"]
    return next(r for r in rows if r["variant"] == variant)
