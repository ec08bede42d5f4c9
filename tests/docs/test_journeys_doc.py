"""docs/journeys.md is true: every ```yaml example after `<!-- example: journey -->` is a
valid journey, the error shown after `<!-- error: PATH -->` is the error Nurture gives, and
the scenario table plays out as written, on SQLite and PostgreSQL."""

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
from nurture.errors import ValidationError
from nurture.store import Database

DOC = Path(__file__).resolve().parents[2] / "docs" / "journeys.md"
TEXT = DOC.read_text()
BLOCK = r"<!-- {marker} -->\n```yaml\n(.*?)```"
EXAMPLES = re.findall(BLOCK.format(marker="example: journey"), TEXT, re.S)
ERRORS = re.findall(r"<!-- error: (\S+) -->\n```yaml\n(.*?)```", TEXT, re.S)


@pytest.fixture
def world(db: Database, clock: SimulatedClock, tmp_path: Path) -> Iterator[World]:
    make_templates(tmp_path)
    instance = Nurture(make_settings(str(db.url), project_dir=tmp_path), clock=clock, db=db)
    instance.start()
    instance.lifecycle.save("score_model", "lead", {"rules": [{"event": "Demo", "points": 1}]})
    yield World(instance)
    instance.stop()


def test_the_page_has_examples() -> None:
    assert len(EXAMPLES) >= 6 and ERRORS


@pytest.mark.parametrize("text", EXAMPLES, ids=[yaml.safe_load(e)["key"] for e in EXAMPLES])
def test_every_example_is_a_valid_journey(world: World, text: str) -> None:
    _, problems = world.n.journeys.validate(yaml.safe_load(text))
    assert problems == []


@pytest.mark.parametrize(("path", "text"), ERRORS)
def test_the_error_shown_is_the_error_given(world: World, path: str, text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        world.n.journeys.save(yaml.safe_load(text))
    assert caught.value.path == path
    assert f"`{caught.value}`" in TEXT


def _duration(text: str) -> timedelta:
    units = {"d": "days", "h": "hours", "m": "minutes"}
    return sum(
        (timedelta(**{units[u]: int(n)}) for n, u in re.findall(r"(\d+)([dhm])", text)),
        timedelta(0),
    )


def _scenario(name: str) -> list[list[str]]:
    table = TEXT.split(f"<!-- scenario: {name} -->\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip("|").split("|") for line in table.splitlines()[2:]]
    return [[cell.strip() for cell in row] for row in rows]


def test_scenario_abandoned_cart(world: World) -> None:
    world.publish(yaml.safe_load(EXAMPLES[0]))
    start = world.clock.now()
    expected: list[tuple[str, str]] = []
    for when, who, does, then in _scenario("abandoned_cart"):
        world.advance(start + _duration(when) - world.clock.now())
        if does:
            event, *pairs = [p.strip() for p in does.split(",")]
            props: dict[str, Any] = {}
            for pair in pairs:
                name, value = pair.split(" ", 1)
                props[{"cart": "cart_id"}.get(name, name)] = (
                    float(value) if value.replace(".", "").isdigit() else value
                )
            world.identify(who, email=f"{who}@example.com")
            world.track(who, event, **props)
        if then == "enters":
            assert world.enrolments("abandoned_cart", who)
        elif then.startswith("converted"):
            (e,) = world.enrolments("abandoned_cart", who)
            revenue = float(then.split("revenue ")[1])
            assert (e.status, e.revenue) == ("converted", revenue)
        elif " gets " in then:
            person, template = then.split(" gets ")
            expected.append((person, template.strip("`")))
            assert world.templates(person) == [t for p, t in expected if p == person]
    assert world.templates("bob") == []
