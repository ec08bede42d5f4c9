"""Versions, pause, resume and archive; a reschedulable reminder. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.journeys.world import World


def two_mails(second: str) -> dict[str, Any]:
    return {
        "key": "drip",
        "trigger": {"event": "Go"},
        "entry": {"reentry": "always"},
        "steps": [
            {"id": "one", "type": "send", "channel": "email", "template": "welcome"},
            {"id": "later", "type": "wait", "for": "1d"},
            {"id": "two", "type": "send", "channel": "email", "template": second},
        ],
    }


def test_running_enrolments_finish_on_the_version_they_started_on(world: World) -> None:
    world.publish(two_mails("tip_import"))
    world.identify("old")
    world.track("old", "Go")
    # When a new version is published mid-flight
    described = world.publish(two_mails("tip_invite"))
    assert described["version"] == 2
    world.identify("new")
    world.track("new", "Go")
    world.advance(timedelta(days=2))
    # Then the early one finishes on version 1, the new one runs version 2
    assert world.templates("old") == ["welcome", "tip_import"]
    assert world.templates("new") == ["welcome", "tip_invite"]
    assert [e.version for e in world.enrolments("drip")] == [1, 2]
    # And publishing an unchanged draft makes no new version
    assert world.publish(two_mails("tip_invite"))["version"] == 2


def test_pause_holds_enrolments_and_resume_lets_them_go_on(world: World) -> None:
    world.publish(two_mails("tip_import"))
    world.identify("p")
    world.track("p", "Go")
    world.n.journeys.pause("drip")
    world.track("p", "Go")  # paused: nobody enters
    world.advance(timedelta(days=3))
    assert world.templates("p") == ["welcome"]
    assert len(world.enrolments("drip", "p")) == 1
    world.n.journeys.resume("drip")
    world.run()
    assert world.templates("p") == ["welcome", "tip_import"]


def test_archive_ends_live_enrolments_and_refuses_entries(world: World) -> None:
    world.publish(two_mails("tip_import"))
    world.identify("a")
    world.track("a", "Go")
    world.n.journeys.archive("drip")
    world.track("a", "Go")
    world.advance(timedelta(days=2))
    (e,) = world.enrolments("drip", "a")
    assert (e.status, e.end_reason) == ("exited", "archived")
    assert world.templates("a") == ["welcome"]


RECURRING = {
    "key": "reminder",
    "trigger": {"event": "Subscribed"},
    "exit": [{"event": "Unsubscribed"}],
    "steps": [
        {"id": "every", "type": "wait", "for": "14d", "restart_on": [{"event": "Rescheduled"}]},
        {"id": "remind", "type": "send", "channel": "sms", "template": "reminder",
         "next": "every"},
    ],
}  # fmt: skip


def test_a_recurring_reminder_that_the_customer_reschedules(world: World) -> None:
    world.publish(RECURRING)
    world.identify("r")
    world.track("r", "Subscribed")
    start = world.clock.now()
    world.advance(timedelta(days=20))
    # When the customer reschedules on day 20 (6 days after the first reminder)
    world.track("r", "Rescheduled")
    world.advance(timedelta(days=30))
    times = [(m.created_at - start).days for m in world.outbox("r")]
    # Then reminders at day 14, then 14 days after the new date (34), then 48
    assert times == [14, 34, 48]
    world.track("r", "Unsubscribed")
    world.advance(timedelta(days=30))
    assert len(world.outbox("r")) == 3
    (e,) = world.enrolments("reminder", "r")
    assert e.status == "exited"
