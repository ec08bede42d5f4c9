"""Triggers (event with filters, segment entered, a date trait, a schedule, the API)
and entry rules (condition, re-entry, one live enrolment, holdout). SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.journeys.world import World

from nurture.journeys.interpreter import unit


def hello(key: str, trigger: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "trigger": trigger,
        "steps": [{"id": "hello", "type": "send", "channel": "email", "template": "welcome"}],
        **extra,
    }


def test_event_trigger_with_property_filters(world: World) -> None:
    world.publish(
        hello("pro", {"event": "Signed Up", "where": [{"property": "plan", "eq": "pro"}]})
    )
    world.identify("p")
    world.identify("f")
    world.track("p", "Signed Up", plan="pro")
    world.track("f", "Signed Up", plan="free")
    assert world.templates("p") == ["welcome"]
    assert world.templates("f") == []


def test_segment_entered_trigger(world: World) -> None:
    world.n.segments.save({"key": "buyers", "where": {"event": "Order Completed"}}, source="api")
    world.publish(hello("thanks", {"segment": "buyers"}))
    world.identify("b")
    world.track("b", "Order Completed")
    assert world.templates("b") == ["welcome"]
    (e,) = world.enrolments("thanks", "b")
    assert e.context["trigger"]["event"] == "segment.entered"


@pytest.mark.parametrize(
    ("reentry", "expected"),
    [("never", 1), ("always", 3), ({"after": "2d"}, 2)],
)
def test_reentry_rules(world: World, reentry: Any, expected: int) -> None:
    # Given a journey that ends at once, entered on three days in a row
    world.publish(hello("again", {"event": "Go"}, entry={"reentry": reentry}))
    world.identify("r")
    for _ in range(3):
        world.track("r", "Go")
        world.advance(timedelta(days=1, hours=1))
    assert len(world.enrolments("again", "r")) == expected


def test_one_live_enrolment_unless_always(world: World) -> None:
    definition = hello("live", {"event": "Go"}, entry={"reentry": {"after": "1m"}})
    definition["steps"].insert(0, {"id": "pause", "type": "wait", "for": "1d"})
    world.publish(definition)
    world.identify("l")
    world.track("l", "Go")
    world.advance(timedelta(hours=1))
    world.track("l", "Go")  # still in the journey: refused
    assert len(world.enrolments("live", "l")) == 1


def test_entry_condition(world: World) -> None:
    world.publish(
        hello("emails", {"event": "Go"}, entry={"if": {"trait": "email", "exists": True}})
    )
    world.identify("with", email="w@example.com")
    world.identify("without")
    world.track("with", "Go")
    world.track("without", "Go")
    assert len(world.enrolments("emails")) == 1


def test_holdout_is_enrolled_never_messaged_and_counted_for_lift(world: World) -> None:
    world.publish(
        hello(
            "lift",
            {"event": "Go"},
            entry={"holdout": 0.3},
            goal={"event": "Order Completed", "within": "3d"},
        )
    )
    users = [f"h{i}" for i in range(80)]
    for user in users:
        world.identify(user)
        world.track(user, "Go")
    for user in users[:20]:
        world.track(user, "Order Completed")
    world.advance(timedelta(days=4))
    control = {u for u in users if unit("lift", world.contact(u), "holdout") < 0.3}
    assert 0 < len(control) < 40
    for user in users:
        (e,) = world.enrolments("lift", user)
        assert e.control == (user in control)
        assert world.templates(user) == ([] if user in control else ["welcome"])
        converted = user in users[:20]
        assert e.status == ("converted" if converted else "completed")


def test_date_trigger_renewal_90_days_ahead_at_local_time(world: World) -> None:
    # Given a journey published now, and renewals in 100 and 200 days
    world.publish(hello("renewal", {"date": "renews_on", "before": "90d", "at": "10:00"}))
    world.identify("soon", renews_on="2026-06-09", timezone="Asia/Kolkata")
    world.identify("later", renews_on="2026-12-17")
    world.advance(timedelta(days=120))
    # Then "soon" entered on 2026-03-11 at 10:00 in Kolkata (04:30 UTC), "later" not yet
    (message,) = world.outbox("soon")
    assert message.created_at == datetime(2026, 3, 11, 4, 30, tzinfo=UTC)
    assert world.outbox("later") == []
    world.advance(timedelta(days=120))
    assert len(world.outbox("later")) == 1


def test_yearly_birthday_trigger_fires_once_a_year(world: World) -> None:
    world.publish(hello("birthday", {"date": "birthday", "yearly": True, "at": "09:00"},
                        entry={"reentry": "always"}))  # fmt: skip
    world.identify("bd", birthday="1990-03-05", timezone="Europe/Berlin")
    world.advance(timedelta(days=400))
    times = [m.created_at for m in world.outbox("bd")]
    assert times == [
        datetime(2026, 3, 5, 8, 0, tzinfo=UTC),
        datetime(2027, 3, 5, 8, 0, tzinfo=UTC),
    ]


def test_schedule_trigger_enters_the_audience_each_time(world: World) -> None:
    world.publish(
        hello(
            "monthly",
            {
                "schedule": "0 9 1 * *",
                "timezone": "UTC",
                "audience": {"trait": "active", "eq": True},
            },
            entry={"reentry": "always"},
        )
    )
    world.identify("on", active=True)
    world.identify("off", active=False)
    world.advance(timedelta(days=62))
    assert [m.created_at for m in world.outbox("on")] == [
        datetime(2026, 4, 1, 9, 0, tzinfo=UTC),
        datetime(2026, 5, 1, 9, 0, tzinfo=UTC),
    ]
    assert world.outbox("off") == []


def test_api_enrolment_is_idempotent_and_follows_entry_rules(world: World) -> None:
    world.publish(hello("manual", {"api": True}, entry={"reentry": "always"}))
    cid = world.identify("m")
    first = world.n.journeys.enrol("manual", cid, idempotency_key="k1", context={"why": "test"})
    again = world.n.journeys.enrol("manual", cid, idempotency_key="k1")
    assert first.status == "entered" and again.status == "refused"
    world.run()
    assert world.templates("m") == ["welcome"]
