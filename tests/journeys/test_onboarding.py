"""Onboarding to first value: the messages adapt to the steps the customer has done
already, and reaching first value ends the journey as converted."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.journeys.world import World

ONBOARDING: dict[str, Any] = {
    "key": "onboarding",
    "trigger": {"event": "Signed Up"},
    "goal": {"event": "Report Shared", "within": "14d"},
    "steps": [
        {"id": "welcome", "type": "send", "channel": "email", "template": "welcome"},
        {"id": "day1", "type": "wait", "for": "1d"},
        {"id": "imported", "type": "branch",
         "cases": [{"if": {"event": "Data Imported"}, "next": "day3"}], "else": "import_tip"},
        {"id": "import_tip", "type": "send", "channel": "email", "template": "tip_import"},
        {"id": "day3", "type": "wait", "for": "2d"},
        {"id": "invited", "type": "branch",
         "cases": [{"if": {"event": "Teammate Invited", "at_least": 1}, "next": "end"}],
         "else": "invite_tip"},
        {"id": "invite_tip", "type": "send", "channel": "email", "template": "tip_invite"},
    ],
}  # fmt: skip


def test_messages_skip_what_the_customer_did_already(world: World) -> None:
    world.publish(ONBOARDING)
    for user in ("new", "importer", "star"):
        world.identify(user)
        world.track(user, "Signed Up")
    # importer imports on day 0; star imports and invites on day 0
    world.track("importer", "Data Imported")
    world.track("star", "Data Imported")
    world.track("star", "Teammate Invited")
    world.advance(timedelta(days=4))
    assert world.templates("new") == ["welcome", "tip_import", "tip_invite"]
    assert world.templates("importer") == ["welcome", "tip_invite"]
    assert world.templates("star") == ["welcome"]


def test_first_value_converts_and_stops_the_sequence(world: World) -> None:
    world.publish(ONBOARDING)
    world.identify("v")
    world.track("v", "Signed Up")
    world.advance(timedelta(hours=30))
    world.track("v", "Report Shared")
    world.advance(timedelta(days=5))
    assert world.templates("v") == ["welcome", "tip_import"]
    (e,) = world.enrolments("onboarding", "v")
    assert (e.status, e.end_reason) == ("converted", "goal")
