"""Peer bug: Dittofeed cannot combine an event entry with a "wait for event" step, so the
classic abandoned cart (enter on "Product Added", wait up to an hour for "Order
Completed" of *that* cart) cannot be built there.

Here it is one journey, end to end (ingest → journey → outbox → dispatcher → channel): no
order within the hour sends the reminder; an order for another cart does not cancel it;
an order for the same cart (`same: [cart_id]`, docs/journeys.md) does, and cancels only
that cart's wait when the customer has two carts open.

Naive implementations this catches: a wait that any "Order Completed" ends (the order for
the other cart cancels the reminder), a wait keyed on the contact alone (one order cancels
both carts, or the second cart's entry replaces the first), and a timeout that fires
although the event came.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from tests.regressions.harness import Scene, scene

from nurture.channels.base import Email
from nurture.clock import SimulatedClock
from nurture.store import Database

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CART_WAIT = {
    "key": "cart_wait",
    "trigger": {"event": "Product Added"},
    "entry": {"reentry": "always"},  # one enrolment per cart
    "steps": [
        {"id": "await_order", "type": "wait",
         "until_event": {"event": "Order Completed", "same": ["cart_id"]},
         "timeout": "1h", "on_event": "ordered", "on_timeout": "reminder"},
        {"id": "reminder", "type": "send", "channel": "email", "template": "cart_reminder",
         "next": "end"},
        {"id": "ordered", "type": "exit", "reason": "ordered"},
    ],
}  # fmt: skip


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


@pytest.fixture
def world(db: Database, clock: SimulatedClock) -> Iterator[Scene]:
    with scene(db, clock, templates=("cart_reminder",)) as s:
        s.publish(CART_WAIT)
        yield s


def reminders(world: Scene, user: str) -> list[datetime | None]:
    """When each cart reminder to `user` reached the channel."""
    delivered = world.channel.sent_to(f"{user}@example.com")
    assert all(isinstance(o.content, Email) for o in delivered)
    assert [o.content.subject for o in delivered] == ["cart_reminder"] * len(delivered)  # type: ignore[union-attr]
    return [m.sent_at for m in world.messages(user) if m.status == "sent"]


def test_no_order_within_the_hour_sends_the_reminder(world: Scene) -> None:
    # Given a customer who adds a product to cart c1
    world.identify("ann", email="ann@example.com")
    world.track("ann", "Product Added", cart_id="c1")
    # When 59 minutes pass, nothing is sent
    world.advance(timedelta(minutes=59))
    assert reminders(world, "ann") == []
    # Then at the hour the reminder reaches the channel, once
    world.advance(timedelta(hours=3))
    assert reminders(world, "ann") == [START + timedelta(hours=1)]
    (enrolment,) = world.enrolments("cart_wait", "ann")
    assert enrolment.status == "completed"
    assert world.steps(enrolment.id) == [("await_order", "timeout"), ("reminder", "sent")]


def test_an_order_for_another_cart_does_not_cancel_the_reminder(world: Scene) -> None:
    # Given a customer with cart c2 who, half an hour later, orders a different cart
    world.identify("bob", email="bob@example.com")
    world.track("bob", "Product Added", cart_id="c2")
    world.advance(timedelta(minutes=30))
    world.track("bob", "Order Completed", cart_id="other")
    # When the hour is up
    world.advance(timedelta(hours=3))
    # Then the reminder for c2 still went
    assert reminders(world, "bob") == [START + timedelta(hours=1)]


def test_an_order_for_the_same_cart_cancels_the_reminder(world: Scene) -> None:
    # Given a customer with cart c3 who orders c3 half an hour later
    world.identify("cy", email="cy@example.com")
    world.track("cy", "Product Added", cart_id="c3")
    world.advance(timedelta(minutes=30))
    world.track("cy", "Order Completed", cart_id="c3")
    # When a day passes
    world.advance(timedelta(days=1))
    # Then no reminder went: the wait ended on the order, at the order
    assert reminders(world, "cy") == []
    assert world.messages("cy") == []
    (enrolment,) = world.enrolments("cart_wait", "cy")
    assert enrolment.status == "exited" and enrolment.end_reason == "ordered"
    assert [s for s, _ in world.steps(enrolment.id)] == ["await_order", "ordered"]
    assert enrolment.ended_at == START + timedelta(minutes=30)


def test_with_two_carts_open_an_order_cancels_only_its_own(world: Scene) -> None:
    # Given a customer with two carts, c4 then c5, and an order for c4
    world.identify("di", email="di@example.com")
    world.track("di", "Product Added", cart_id="c4")
    world.advance(timedelta(minutes=10))
    world.track("di", "Product Added", cart_id="c5")
    world.advance(timedelta(minutes=10))
    world.track("di", "Order Completed", cart_id="c4")
    # When both hours are up
    world.advance(timedelta(hours=3))
    # Then one reminder went, c5's, an hour after it was added
    assert reminders(world, "di") == [START + timedelta(minutes=70)]
    c4, c5 = world.enrolments("cart_wait", "di")
    assert (c4.status, c4.end_reason) == ("exited", "ordered")
    assert c5.status == "completed"
