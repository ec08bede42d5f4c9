"""Mautic users report re-entry settings that are ignored. docs/journeys.md shows, for each
`reentry` setting, a timeline of who enters when; this test plays the doc's own tables
(the `trial_reminder` example journey with the table's setting) on SQLite and PostgreSQL,
so the page cannot say one thing while the engine does another.

The naive implementations it catches: `after:` counted from the end of the last enrolment
instead of its entry, `after:` that lets a contact in beside a live enrolment, `never` that
forgets a completed enrolment, `always` that still holds to one live enrolment.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import make_settings
from tests.journeys.world import World, make_templates

from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.store import Database

DOC = (Path(__file__).resolve().parents[2] / "docs" / "journeys.md").read_text()
JOURNEY = yaml.safe_load(re.search(r"```yaml\n(key: trial_reminder\n.*?)```", DOC, re.S)[1])  # type: ignore[index]
TIMELINES = dict(re.findall(r"<!-- reentry: (.+?) -->\n(\|.*?)\n\n", DOC, re.S))


def _duration(text: str) -> timedelta:
    units = {"d": "days", "h": "hours", "m": "minutes"}
    pairs = re.findall(r"(\d+)([dhm])", text)
    return sum((timedelta(**{units[u]: int(n)}) for n, u in pairs), timedelta(0))


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


@pytest.fixture
def world(db: Database, clock: SimulatedClock, tmp_path: Path) -> Iterator[World]:
    make_templates(tmp_path)
    instance = Nurture(make_settings(str(db.url), project_dir=tmp_path), clock=clock, db=db)
    instance.start()
    yield World(instance)
    instance.stop()


def test_the_doc_has_a_timeline_for_each_setting() -> None:
    assert set(TIMELINES) == {"never", "{after: 3d}", "always"}


@pytest.mark.parametrize("setting", sorted(TIMELINES))
def test_each_reentry_timeline_plays_as_the_doc_shows(world: World, setting: str) -> None:
    # Given the doc's journey with the table's re-entry setting
    reentry: Any = yaml.safe_load(setting)
    world.publish({**JOURNEY, "entry": {"reentry": reentry}})
    world.identify("ann", email="ann@example.com")
    start = world.clock.now()
    for when, does, then, enrolments, live, sent in _rows(TIMELINES[setting]):
        # When time reaches the row and Ann does what it says
        world.advance(start + _duration(when) - world.clock.now())
        if does:
            world.track("ann", does)
        # Then her enrolments, the live ones and the tips she got are as the row shows
        rows = world.enrolments("trial_reminder", "ann")
        seen = (len(rows), sum(r.status == "active" for r in rows), len(world.templates("ann")))
        assert seen == (int(enrolments), int(live), int(sent)), f"{setting} at {when}: {then}"
