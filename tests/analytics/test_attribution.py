"""Attribution: the window's edges, last against first touch, ties, goal conversions,
revenue per recipient, and agreement with a brute-force reference on random data."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert
from tests.analytics.test_journey_metrics import JOURNEY, T0, Rows, one, publish

from nurture.analytics.attribution import attribution_report
from nurture.errors import NotFound, ValidationError
from nurture.store import Database
from nurture.store import tables as t

_ids = itertools.count(1)


def order(db: Database, contact: int, at: datetime, **props: Any) -> None:
    """An `Order Completed` event as ingest stores it."""
    with db.write() as conn:
        conn.execute(insert(t.events).values(
            message_id=f"o{next(_ids)}", type="track", event="Order Completed",
            contact_id=contact, timestamp=at, received_at=at, properties=props,
        ))  # fmt: skip


@pytest.fixture
def rows(db: Database) -> Rows:
    publish(db, JOURNEY)
    return Rows(db)


def credited(report: Any) -> dict[str, tuple[int, float]]:
    return {
        r["message"]: (r["conversions"], r["attributed_revenue"])
        for r in report.table("messages").rows
        if r["conversions"]
    }


def test_the_window_includes_its_start_and_the_conversion_moment(rows: Rows) -> None:
    # Given a contact sent "hello" exactly 3 days before an order, and "text" 1 µs after it
    e = rows.enrolment(T0, contact=7)
    buy = T0 + timedelta(days=3)
    rows.message(e, "sent", T0, contact=7)
    rows.message(e, "sent", buy + timedelta(microseconds=1), step="text", template="text",
                 variant=None, contact=7)  # fmt: skip
    order(rows.db, 7, buy, revenue=40)
    # When attributed with the default 3-day window, last touch
    report = attribution_report(rows.db, event="Order Completed")
    # Then "hello" gets it (sent at the window's start; the later message is after it)
    assert credited(report) == {"welcome v1 hello: hello [a]": (1, 40.0)}
    # And with a window one microsecond shorter, nothing does
    short = attribution_report(rows.db, event="Order Completed", window="71h59m59s")
    assert credited(short) == {} or short.summary["attributed"] == 0
    assert short.summary["unattributed"] == 1 and short.summary["revenue"] == 40.0


def test_last_and_first_touch_and_ties(rows: Rows) -> None:
    # Given three messages to one contact: "hello" a day before, then two at the same
    # moment an hour before the order ("text" written first, "hello" variant b second)
    e = rows.enrolment(T0, contact=3)
    buy = T0 + timedelta(days=1)
    rows.message(e, "delivered", T0, contact=3)
    tie = buy - timedelta(hours=1)
    rows.message(e, "sent", tie, step="text", template="text", variant=None, contact=3)
    rows.message(e, "sent", tie, variant="b", template="hello_b", contact=3)
    order(rows.db, 3, buy, revenue="19.5")  # a numeric string counts
    last = attribution_report(rows.db, event="Order Completed", model="last")
    first = attribution_report(rows.db, event="Order Completed", model="first")
    # Then last touch takes the tie's higher outbox id, first touch the earliest message
    assert credited(last) == {"welcome v1 hello: hello_b [b]": (1, 19.5)}
    assert credited(first) == {"welcome v1 hello: hello [a]": (1, 19.5)}
    # And a same-moment tie under first touch goes to the lower id
    window = attribution_report(rows.db, event="Order Completed", model="first", window="2h")
    assert credited(window) == {"welcome v1 text: text": (1, 19.5)}


def test_each_conversion_once_and_revenue_per_recipient(rows: Rows) -> None:
    # Given "hello" sent to four contacts; two of them order (one twice, once without
    # revenue); one contact orders having received nothing
    for contact in (1, 2, 3, 4):
        rows.message(rows.enrolment(T0, contact=contact), "sent", T0, contact=contact)
    order(rows.db, 1, T0 + timedelta(hours=1), revenue=100)
    order(rows.db, 1, T0 + timedelta(hours=2), revenue=50)
    order(rows.db, 2, T0 + timedelta(hours=3))
    order(rows.db, 9, T0 + timedelta(hours=3), revenue=70)
    report = attribution_report(rows.db, event="Order Completed")
    row = one(report.table("messages").rows, template="hello")
    assert (row["recipients"], row["conversions"], row["attributed_revenue"]) == (4, 3, 150.0)
    assert row["conversion_rate"] == 0.75 and row["revenue_per_recipient"] == 37.5
    s = report.summary
    assert (s["conversions"], s["attributed"], s["unattributed"]) == (4, 3, 1)
    assert (s["revenue"], s["attributed_revenue"]) == (220.0, 150.0)
    assert report.table("journeys").rows == [
        {"journey": "welcome", "conversions": 3, "attributed_revenue": 150.0}
    ]


def test_revenue_from_another_property_and_the_range(rows: Rows) -> None:
    rows.message(rows.enrolment(T0, contact=5), "sent", T0, contact=5)
    order(rows.db, 5, T0 + timedelta(hours=1), total=30, revenue=1)
    order(rows.db, 5, T0 + timedelta(days=1, hours=1), total=99)  # outside the range
    report = attribution_report(
        rows.db, event="Order Completed", revenue_property="total",
        start="2026-03-01", end="2026-03-01",
    )  # fmt: skip
    assert report.summary["conversions"] == 1
    assert credited(report) == {"welcome v1 hello: hello [a]": (1, 30.0)}


def test_goal_conversions_credit_only_the_enrolments_own_messages(rows: Rows) -> None:
    # Given two enrolments of one contact; the converted one got "hello" two days before,
    # the other got "text" an hour before the conversion
    converted = T0 + timedelta(days=2)
    won = rows.enrolment(T0, "converted", contact=4, converted=converted, revenue=25.0,
                         ended=converted, reason="goal")  # fmt: skip
    other = rows.enrolment(T0, contact=4)
    rows.message(won, "sent", T0, contact=4)
    rows.message(other, "sent", converted - timedelta(hours=1), step="text", template="text",
                 variant=None, contact=4)  # fmt: skip
    report = attribution_report(rows.db, journey="welcome")
    assert credited(report) == {"welcome v1 hello: hello [a]": (1, 25.0)}
    assert report.params["event"] is None


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"window": "3 days"}, "window"),
        ({"window": "0d"}, "window"),
        ({"model": "linear"}, "model"),
        ({"start": "2026-03-02", "end": "2026-03-01"}, "from"),
    ],
)
def test_bad_input_names_the_field(rows: Rows, params: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        attribution_report(rows.db, event="Order Completed", **params)
    assert caught.value.path == path


def test_an_unknown_journey_is_not_found(rows: Rows) -> None:
    with pytest.raises(NotFound) as caught:
        attribution_report(rows.db, journey="nope")
    assert caught.value.path == "journey"


def brute_force(
    messages: list[tuple[int, int, datetime, str]],
    orders: list[tuple[int, datetime, float]],
    window: timedelta,
    model: str,
) -> dict[str, tuple[int, float]]:
    """Credit by scanning every message for every order: (id, contact, sent, template)."""
    out: dict[str, list[float]] = {}
    for contact, at, revenue in orders:
        fits = [m for m in messages if m[1] == contact and at - window <= m[2] <= at]
        if not fits:
            continue
        pick = max(fits, key=lambda m: (m[2], m[0])) if model == "last" else min(
            fits, key=lambda m: (m[2], m[0]))  # fmt: skip
        got = out.setdefault(pick[3], [0, 0.0])
        got[0] += 1
        got[1] += revenue
    return {k: (int(v[0]), v[1]) for k, v in out.items()}


@pytest.mark.parametrize("seed", [1, 2])
def test_agrees_with_a_brute_force_reference(rows: Rows, seed: int) -> None:
    rng = random.Random(seed)
    templates = ("hello", "hello_b", "text")
    messages: list[tuple[int, int, datetime, str]] = []
    for _ in range(60):
        contact = rng.randint(1, 6)
        sent = T0 + timedelta(hours=rng.randint(0, 96))  # coarse: many same-moment ties
        template = rng.choice(templates)
        e = rows.enrolment(T0, contact=contact)
        mid = rows.message(e, "sent", sent, template=template, variant=None, step=template,
                           contact=contact)  # fmt: skip
        messages.append((mid, contact, sent, template))
    orders = []
    for _ in range(25):
        contact, at = rng.randint(1, 7), T0 + timedelta(hours=rng.randint(0, 120))
        revenue = float(rng.randint(1, 90))
        order(rows.db, contact, at, revenue=revenue)
        orders.append((contact, at, revenue))
    for model in ("last", "first"):
        report = attribution_report(rows.db, event="Order Completed", model=model, window="1d")
        got = {r["template"]: (r["conversions"], r["attributed_revenue"])
               for r in report.table("messages").rows if r["conversions"]}  # fmt: skip
        assert got == brute_force(messages, orders, timedelta(days=1), model)


def test_messages_outside_journeys_can_be_credited(rows: Rows) -> None:
    rows.message(0, "sent", T0, journey=None, step="", template="receipt", variant=None,
                 contact=8)  # fmt: skip
    order(rows.db, 8, T0 + timedelta(minutes=5), revenue=12)
    report = attribution_report(
        rows.db, event="Order Completed", end=datetime(2026, 4, 1, tzinfo=UTC)
    )
    assert credited(report) == {"(no journey): receipt": (1, 12.0)}
    # And a journey filter credits only that journey's messages (the conversion stays
    # unattributed rather than moving to an older message of the journey)
    only = attribution_report(rows.db, event="Order Completed", journey="welcome")
    assert only.summary["attributed"] == 0 and only.summary["conversions"] == 1
