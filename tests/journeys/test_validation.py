"""A journey that is wrong is refused with the path of the bad field."""

from __future__ import annotations

from typing import Any

import pytest
from tests.journeys.world import World

from nurture.errors import ValidationError

GOOD: dict[str, Any] = {
    "key": "ok",
    "trigger": {"event": "Go"},
    "steps": [
        {"id": "wait", "type": "wait", "for": "1h"},
        {"id": "mail", "type": "send", "channel": "email", "template": "welcome"},
    ],
}


def with_steps(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**GOOD, "steps": list(steps), **extra}


CASES = [
    (with_steps({"id": "x", "type": "teleport"}), "steps[0].type", "unknown step type"),
    (with_steps({"id": "w", "type": "wait", "for": "soon"}), "steps[0].for", "duration"),
    (
        with_steps({"id": "w", "type": "wait", "until_event": {"event": "Paid"}}),
        "steps[0]",
        "way out",
    ),
    (
        with_steps({"id": "a", "type": "send", "channel": "email", "template": "nope"}),
        "steps[0].template",
        "unknown template 'nope'",
    ),
    (
        with_steps(
            {"id": "a", "type": "send", "channel": "email", "template": "welcome", "next": "ghost"}
        ),
        "steps[0].next",
        "unknown step 'ghost'",
    ),
    (
        with_steps(
            {"id": "a", "type": "send", "channel": "email", "template": "welcome", "next": "end"},
            {"id": "b", "type": "send", "channel": "email", "template": "welcome"},
        ),
        "steps[1]",
        "cannot be reached",
    ),
    (
        with_steps(
            {"id": "a", "type": "send", "channel": "email", "template": "welcome", "next": "a"}
        ),
        "steps[0]",
        "loop without",
    ),
    (
        with_steps(
            {"id": "a", "type": "wait", "for": "1d"},
            {"id": "b", "type": "send", "channel": "email", "template": "welcome", "next": "a"},
        ),
        "steps[0]",
        "no way out",
    ),
    ({**GOOD, "trigger": {"segment": "ghosts"}}, "trigger.segment", "unknown segment"),
    (
        with_steps(
            {"id": "b", "type": "branch", "cases": [{"if": {"segment": "ghosts"}, "next": "end"}]}
        ),
        "steps[0].cases[0].if",
        "does not exist",
    ),
    (
        {**GOOD, "trigger": {"schedule": "61 * * * *", "audience": {"trait": "a", "exists": True}}},
        "trigger.schedule",
        "minute",
    ),
    (
        with_steps(
            {
                "id": "w",
                "type": "wait",
                "until_window": {"days": "weekdays", "from": "25:00", "to": "18:00"},
            }
        ),
        "steps[0].until_window.from",
        "time of day",
    ),
    (
        {
            **GOOD,
            "trigger": {"date": "renews_on"},
            "exit": [{"event": "Paid", "same": ["cart_id"]}],
        },
        "exit[0].same",
        "not triggered by an event",
    ),
    (
        with_steps({"id": "u", "type": "update", "set": {"email": "x@example.com"}}),
        "steps[0]",
        "reserved traits",
    ),
]


@pytest.mark.parametrize(("definition", "path", "message"), CASES)
def test_a_wrong_journey_names_the_bad_field(
    world: World, definition: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        world.n.journeys.save(definition)
    assert caught.value.path is not None and caught.value.path.startswith(path), caught.value
    assert message in caught.value.message


def test_unquoted_yaml_times_read_as_times(world: World) -> None:
    import yaml

    definition = yaml.safe_load(
        "key: t\ntrigger: {event: Go}\nsteps:\n"
        "  - {id: w, type: wait, until_window: {days: weekdays, from: 09:00, to: 18:00}}\n"
        "  - {id: m, type: send, channel: email, template: welcome}\n"
    )
    saved = world.n.journeys.save(definition)
    assert saved["draft"]["steps"][0]["until_window"]["from"] == "09:00"
