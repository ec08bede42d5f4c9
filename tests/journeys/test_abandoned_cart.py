"""Abandoned cart: wait 1 h, email; no order → wait 1 day, branch on cart value
(discount email or SMS); an order for this cart ends it. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from tests.journeys.world import ABANDONED_CART, World

from nurture.store import tables as t

CART = ABANDONED_CART


def test_no_order_gets_the_reminder_then_the_discount_for_a_big_cart(world: World) -> None:
    # Given the journey and a customer who adds an expensive product
    world.publish(CART)
    world.identify("ann", email="ann@example.com")
    world.track("ann", "Product Added", cart_id="c1", price=150)
    # When 59 minutes pass: nothing yet
    world.advance(timedelta(minutes=59))
    assert world.templates("ann") == []
    # Then at one hour the reminder, and a day later the discount (cart over 100)
    world.advance(timedelta(minutes=1))
    assert world.templates("ann") == ["cart_reminder"]
    world.advance(timedelta(days=1))
    assert world.templates("ann") == ["cart_reminder", "cart_discount"]
    (enrolment,) = world.enrolments("abandoned_cart", "ann")
    assert enrolment.status == "completed"
    assert [s for s, _ in world.steps(enrolment.id)] == [
        "wait_hour", "reminder", "wait_day", "by_value", "discount",
    ]  # fmt: skip


def test_a_small_cart_gets_an_sms_instead(world: World) -> None:
    world.publish(CART)
    world.identify("bob", email="bob@example.com")
    world.track("bob", "Product Added", cart_id="c2", price=20)
    world.advance(timedelta(days=2))
    assert [(m.channel, m.template) for m in world.outbox("bob")] == [
        ("email", "cart_reminder"),
        ("sms", "cart_sms"),
    ]


def test_an_order_for_the_cart_ends_it_and_converts_with_revenue(world: World) -> None:
    world.publish(CART)
    world.identify("cy", email="cy@example.com")
    world.track("cy", "Product Added", cart_id="c3", price=150)
    world.advance(timedelta(hours=2))
    # When the customer orders this cart
    world.track("cy", "Order Completed", cart_id="c3", total=150.5)
    world.advance(timedelta(days=3))
    # Then only the first reminder went, and the enrolment converted with the revenue
    assert world.templates("cy") == ["cart_reminder"]
    (enrolment,) = world.enrolments("abandoned_cart", "cy")
    assert enrolment.status == "converted"
    assert enrolment.revenue == 150.5
    assert enrolment.end_reason == "goal"


def test_an_order_for_another_cart_does_not_end_it(world: World) -> None:
    world.publish(CART)
    world.identify("di", email="di@example.com")
    world.track("di", "Product Added", cart_id="c4", price=10)
    world.track("di", "Order Completed", cart_id="other", total=5)
    world.advance(timedelta(days=2))
    assert world.templates("di") == ["cart_reminder", "cart_sms"]
    (enrolment,) = world.enrolments("abandoned_cart", "di")
    assert enrolment.status == "completed"


def test_an_anonymous_cart_is_ended_by_the_order_after_login(world: World) -> None:
    # Given a known customer, and an anonymous visitor who adds to cart, then logs in as
    # that customer (the two contacts merge)
    world.publish(CART)
    world.identify("eve", email="eve@example.com")
    world._send({"type": "track", "anonymousId": "anon-1", "event": "Product Added",
                 "properties": {"cart_id": "c9", "price": 10}})  # fmt: skip
    world._send({"type": "identify", "anonymousId": "anon-1", "userId": "eve",
                 "traits": {"email": "eve@example.com"}})  # fmt: skip
    with world.n.db.read() as conn:
        merged = conn.execute(
            select(func.count()).where(t.contacts.c.merged_into.is_not(None))
        ).scalar_one()
    assert merged == 1
    # When the identified customer orders that cart within the hour
    world.advance(timedelta(minutes=10))
    world.track("eve", "Order Completed", cart_id="c9", total=10)
    world.advance(timedelta(days=2))
    # Then no reminder went and the enrolment converted
    assert world.outbox() == []
    (enrolment,) = world.enrolments("abandoned_cart")
    assert enrolment.status == "converted"


def test_an_order_sent_with_the_cart_event_converts(world: World) -> None:
    # Given a cart event and its order, sent together by an SDK that batches (their
    # timestamps are before the moment the journey's worker reads them)
    world.publish(CART)
    world.identify("fay", email="fay@example.com")
    now = world.clock.now()
    world.n.ingest(
        [
            {"type": "track", "userId": "fay", "event": "Product Added", "messageId": "p",
             "properties": {"cart_id": "c7", "price": 10},
             "timestamp": (now - timedelta(seconds=10)).isoformat()},
            {"type": "track", "userId": "fay", "event": "Order Completed", "messageId": "o",
             "properties": {"cart_id": "c7", "total": 10},
             "timestamp": (now - timedelta(seconds=5)).isoformat()},
        ]
    )  # fmt: skip
    # When the worker runs
    world.advance(timedelta(days=1))
    # Then the order converts the enrolment (its window starts at the cart event)
    (enrolment,) = world.enrolments("abandoned_cart", "fay")
    assert (enrolment.status, enrolment.revenue) == ("converted", 10)
    assert world.outbox("fay") == []
