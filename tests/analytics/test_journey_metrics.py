"""Journey and message metrics: every count checked against rows whose numbers are known
by construction, the date range, days in a zone with daylight saving time, and a real
journey run end to end (ingest → runtime → dispatcher → feedback)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert
from tests.regressions.harness import scene

from nurture.analytics.journey_metrics import journey_report, messages_report
from nurture.clock import SimulatedClock
from nurture.errors import NotFound, ValidationError
from nurture.journeys import store
from nurture.journeys.model import parse_journey
from nurture.messages.feedback import OWN
from nurture.messages.providers import FeedbackItem
from nurture.store import Database
from nurture.store import tables as t

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
JOURNEY: dict[str, Any] = {
    "key": "welcome",
    "trigger": {"event": "Signed Up"},
    "steps": [
        {"id": "wait", "type": "wait", "for": "1h"},
        {"id": "hello", "type": "send", "channel": "email",
         "variants": [{"name": "a", "template": "hello"}, {"name": "b", "template": "hello_b"}]},
        {"id": "text", "type": "send", "channel": "sms", "template": "text"},
    ],
}  # fmt: skip


def publish(db: Database, definition: dict[str, Any], at: datetime = T0) -> None:
    """Publish a journey through the journey store, as `nurture apply` does."""
    with db.write() as conn:
        store.save_draft(conn, parse_journey(definition), "file", at)
        store.publish(conn, definition["key"], at)


@dataclass
class Rows:
    """Builds the rows the runtime, the dispatcher and feedback write, with known counts."""

    db: Database
    journey: str = "welcome"
    ids: Any = field(default_factory=lambda: itertools.count(1))
    messages: int = 0

    def enrolment(
        self,
        entered: datetime,
        status: str = "active",
        *,
        control: bool = False,
        version: int = 1,
        step: str | None = "hello",
        ended: datetime | None = None,
        reason: str | None = None,
        converted: datetime | None = None,
        revenue: float | None = None,
        contact: int | None = None,
    ) -> int:
        eid = next(self.ids)
        with self.db.write() as conn:
            conn.execute(insert(t.enrolments).values(
                id=eid, journey_key=self.journey, version=version, contact_id=contact or eid,
                status=status, control=control, step=step, due_at=None, seq=1, attempts=0,
                entry_key=f"e{eid}", exclusive=False, context={}, entered_at=entered,
                ended_at=ended, end_reason=reason, converted_at=converted, revenue=revenue,
            ))  # fmt: skip
        return eid

    def message(
        self,
        enrolment: int,
        status: str,
        sent: datetime | None,
        *,
        step: str = "hello",
        template: str = "hello",
        variant: str | None = "a",
        channel: str = "email",
        version: int = 1,
        created: datetime | None = None,
        provider_id: str | None = None,
        journey: str | None = "",
        contact: int | None = None,
    ) -> int:
        self.messages += 1
        with self.db.write() as conn:
            mid = conn.execute(insert(t.outbox).values(
                idempotency_key=f"k{self.messages}", contact_id=contact or enrolment,
                enrolment_id=enrolment, journey_key=self.journey if journey == "" else journey,
                version=version, step=step, channel=channel, template=template,
                variant=variant, kind="marketing", payload={}, status=status,
                created_at=created or sent or T0, send_after=created or sent or T0,
                sent_at=sent, provider_id=provider_id,
            ).returning(t.outbox.c.id)).scalar_one()  # fmt: skip
        return int(mid)

    def feedback(
        self,
        message: int | None,
        kind: str,
        at: datetime,
        *,
        machine: bool = False,
        provider_id: str | None = None,
        applied: bool = True,
    ) -> None:
        """A feedback row; `applied=False`: waiting to be applied to its message (its
        effect on the message's status has not happened yet)."""
        key = f"f{next(self.ids)}"
        with self.db.write() as conn:
            conn.execute(insert(t.message_feedback).values(
                provider="test", event_key=key, provider_id=provider_id, outbox_id=message,
                type=kind, occurred_at=at, received_at=at, applied_at=at if applied else None,
                payload={"type": kind, "machine": machine, "outbox_id": message},
            ))  # fmt: skip


@pytest.fixture
def rows(db: Database) -> Rows:
    publish(db, JOURNEY)
    return Rows(db)


def one(table: list[dict[str, Any]], **where: Any) -> dict[str, Any]:
    found = [r for r in table if all(r.get(k) == v for k, v in where.items())]
    assert len(found) == 1, (where, table)
    return found[0]


def build_known_world(rows: Rows) -> None:
    """Four treated enrolments and one control; nine messages with feedback."""
    h = timedelta(hours=1)
    e1 = rows.enrolment(T0, "active", step="text")
    e2 = rows.enrolment(T0, "converted", step=None, ended=T0 + 5 * h, reason="goal",
                        converted=T0 + 5 * h, revenue=50.0)  # fmt: skip
    e3 = rows.enrolment(T0, "exited", step=None, ended=T0 + 6 * h, reason="exit: Order Completed")
    e4 = rows.enrolment(T0, "failed", step="text", ended=T0 + 7 * h,
                        reason="step text failed: boom")  # fmt: skip
    rows.enrolment(T0, "completed", control=True, step=None, ended=T0 + 8 * h, reason="completed")
    sent = T0 + 2 * h
    # m1: delivered, two human opens, one machine open, one human click
    m1 = rows.message(e1, "delivered", sent)
    rows.feedback(m1, "delivered", sent + h)
    rows.feedback(m1, "opened", sent + 2 * h)
    rows.feedback(m1, "opened", sent + 3 * h)
    rows.feedback(m1, "opened", sent + h, machine=True)
    rows.feedback(m1, "clicked", sent + 3 * h)
    # m2: still "sent", with a delivered report not applied yet and a machine open only
    m2 = rows.message(e2, "sent", sent, variant="b", template="hello_b")
    rows.feedback(m2, "delivered", sent + h, applied=False)
    rows.feedback(m2, "opened", sent + h, machine=True)
    rows.feedback(m2, "clicked", sent + h, machine=True)
    # m3: hard bounce; m4: delivered then complained; m5 skipped; m6 queued; m7 in flight
    rows.message(e3, "bounced", sent)
    m4 = rows.message(e4, "complained", sent)
    rows.feedback(m4, "delivered", sent + h)
    rows.feedback(m4, "complained", sent + 2 * h)
    rows.message(e1, "skipped", None, step="text", template="text", variant=None, channel="sms")
    rows.message(e2, "queued", None, step="text", template="text", variant=None, channel="sms")
    rows.message(e3, "sending", sent, step="text", template="text", variant=None, channel="sms")
    # m8: sent, no delivery report, unsubscribed from its link
    m8 = rows.message(e4, "sent", sent, step="text", template="text", variant=None,
                      channel="sms")  # fmt: skip
    rows.feedback(m8, "unsubscribed", sent + h)
    # m9: failed at dispatch (never sent)
    rows.message(e1, "failed", None, step="text", template="text", variant=None, channel="sms")


def test_every_metric_of_a_known_set_of_rows(rows: Rows) -> None:
    # Given rows whose every count is known
    build_known_world(rows)
    # When the journey's report is made for all time
    report = journey_report(rows.db, "welcome")
    s = report.summary
    # Then enrolments: four entered, one control apart, one converted for 50
    assert (s["entered"], s["control"], s["converted"], s["revenue"]) == (4, 1, 1, 50.0)
    assert s["conversion_rate"] == 0.25 and s["control_conversion_rate"] == 0.0
    assert (s["waiting"], s["waiting_control"], s["ended"]) == (1, 0, 4)
    # And messages: sent m1 m2 m3 m4 m8; delivered m1 m2 m4; a bounced one is not delivered
    assert (s["sent"], s["delivered"], s["bounced"], s["complained"]) == (5, 3, 1, 1)
    assert (s["opened"], s["clicked"], s["unsubscribed"]) == (1, 1, 1)
    assert s["open_rate"] == pytest.approx(1 / 3) and s["delivery_rate"] == 0.6
    messages = report.table("messages").rows
    a = one(messages, step="hello", variant="a")
    assert (a["sent"], a["delivered"], a["bounced"], a["complained"]) == (3, 2, 1, 1)
    assert (a["opened"], a["opens"], a["machine_opened"], a["machine_opens"]) == (1, 2, 1, 1)
    assert (a["clicked"], a["clicks"], a["machine_clicked"]) == (1, 1, 0)
    b = one(messages, step="hello", variant="b")
    assert (b["sent"], b["delivered"], b["opened"], b["machine_opened"]) == (1, 1, 0, 1)
    assert (b["clicked"], b["machine_clicked"], b["machine_clicks"]) == (0, 1, 1)
    assert b["template"] == "hello_b" and b["open_rate"] == 0.0
    text = one(messages, step="text")
    assert (text["sent"], text["unsubscribed"], text["delivered"]) == (1, 1, 0)
    # the in-flight message is queued, not sent
    assert (text["skipped"], text["queued"], text["failed"]) == (1, 2, 1)
    # And steps follow the journey's order, with who waits where
    steps = report.table("steps").rows
    assert [r["step"] for r in steps] == ["wait", "hello", "text"]
    assert one(steps, step="text")["waiting"] == 1 and one(steps, step="hello")["sent"] == 4
    # And the ways enrolments ended, grouped (a failure by its step, not its error)
    exits = {(r["outcome"], r["reason"]): r["enrolments"] for r in report.table("exits").rows}
    assert exits == {
        ("converted", "goal reached"): 1,
        ("exited", "exit: Order Completed"): 1,
        ("failed", "failed at step text"): 1,
        ("completed", "completed"): 1,
    }
    assert one(report.table("exits").rows, outcome="completed")["control"] == 1
    # And one day, adding up to the totals
    days = report.table("days").rows
    assert [d["day"] for d in days] == [date(2026, 3, 1)]
    assert days[0]["sent"] == 5 and days[0]["entered"] == 4 and days[0]["converted"] == 1
    # And a range holding every row (read through other indexes) says the same
    ranged = journey_report(rows.db, "welcome", start="2026-03-01", end="2026-03-01")
    for key in ("steps", "messages", "days", "exits", "versions"):
        assert ranged.table(key).rows == report.table(key).rows, key


def test_messages_count_by_send_time_with_all_their_feedback(rows: Rows) -> None:
    # Given a message sent inside the range whose open came after the range's end, and
    # one sent before the range
    e = rows.enrolment(T0)
    inside = rows.message(e, "delivered", T0 + timedelta(days=1))
    rows.feedback(inside, "opened", T0 + timedelta(days=5))
    rows.message(e, "delivered", T0 - timedelta(minutes=1))
    # When the range is the day after T0 (dates in UTC: to includes its whole day)
    report = journey_report(rows.db, "welcome", start="2026-03-02", end="2026-03-02")
    # Then the message sent inside counts, with its late open; the one before does not
    s = report.summary
    assert (s["sent"], s["delivered"], s["opened"]) == (1, 1, 1)
    assert s["entered"] == 0  # entered on T0, before the range
    assert [d["day"] for d in report.table("days").rows] == [date(2026, 3, 2)]
    assert report.params["from"] == datetime(2026, 3, 2, tzinfo=UTC)
    assert report.params["to"] == datetime(2026, 3, 3, tzinfo=UTC)


def test_days_are_local_days_across_a_daylight_saving_change(rows: Rows) -> None:
    # Given messages sent at 23:30 local time in New York on the day before and the day of
    # the change to summer time (2026-03-08: UTC-5, then UTC-4)
    e = rows.enrolment(datetime(2026, 3, 6, tzinfo=UTC))
    first = rows.message(e, "sent", datetime(2026, 3, 8, 4, 30, tzinfo=UTC))  # 03-07 23:30 EST
    second = rows.message(e, "sent", datetime(2026, 3, 9, 3, 30, tzinfo=UTC))  # 03-08 23:30 EDT
    rows.message(e, "sent", datetime(2026, 3, 9, 4, 30, tzinfo=UTC))  # 03-09 00:30 EDT
    rows.feedback(first, "opened", datetime(2026, 3, 10, tzinfo=UTC))
    rows.feedback(second, "clicked", datetime(2026, 3, 10, tzinfo=UTC))
    # When the report is by day in New York
    report = journey_report(rows.db, "welcome", tz="America/New_York")
    by_day = {d["day"]: d["sent"] for d in report.table("days").rows if d["sent"]}
    # Then each lands on its local day (in UTC they would be 03-08, 03-09, 03-09)
    assert by_day == {date(2026, 3, 7): 1, date(2026, 3, 8): 1, date(2026, 3, 9): 1}
    # And so do their opens and clicks (counted on the day the message was sent)
    engaged = {d["day"]: (d["opened"], d["clicked"]) for d in report.table("days").rows}
    assert engaged[date(2026, 3, 7)] == (1, 0) and engaged[date(2026, 3, 8)] == (0, 1)
    assert engaged[date(2026, 3, 9)] == (0, 0)
    utc = journey_report(rows.db, "welcome")
    assert {d["day"]: d["sent"] for d in utc.table("days").rows if d["sent"]} == {
        date(2026, 3, 8): 1,
        date(2026, 3, 9): 2,
    }
    # And a date range in that zone starts at its local midnight
    local = journey_report(rows.db, "welcome", start="2026-03-08", tz="America/New_York")
    assert local.params["from"] == datetime(2026, 3, 8, 5, 0, tzinfo=UTC)
    assert local.summary["sent"] == 2


def test_a_half_hour_zone_and_feedback_found_by_provider_id(rows: Rows) -> None:
    # Given a message sent at 18:45 UTC (00:15 the next day in Kolkata, UTC+5:30) whose
    # delivery report (not applied yet) and open came without our outbox id, only the
    # provider's message id; and a second open with the outbox id
    e = rows.enrolment(T0)
    m = rows.message(e, "sent", datetime(2026, 3, 1, 18, 45, tzinfo=UTC), provider_id="p-1")
    rows.feedback(None, "delivered", T0 + timedelta(days=1), provider_id="p-1", applied=False)
    rows.feedback(None, "opened", T0 + timedelta(days=1), provider_id="p-1")
    rows.feedback(m, "opened", T0 + timedelta(days=2))
    # When the report is by day in Kolkata
    report = journey_report(rows.db, "welcome", tz="Asia/Kolkata")
    # Then the message is delivered and opened once, twice in all, on its local day
    s = report.summary
    assert (s["delivered"], s["opened"]) == (1, 1)
    assert one(report.table("messages").rows, step="hello")["opens"] == 2
    day = one(report.table("days").rows, day=date(2026, 3, 2))
    assert (day["sent"], day["delivered"], day["opened"]) == (1, 1, 1)


def test_versions_are_reported_apart_and_can_be_chosen(rows: Rows) -> None:
    publish(rows.db, {**JOURNEY, "steps": [*JOURNEY["steps"], {"id": "bye", "type": "exit"}]})
    e1 = rows.enrolment(T0, version=1)
    e2 = rows.enrolment(T0, version=2, step="bye")
    rows.message(e1, "sent", T0, version=1)
    rows.message(e2, "sent", T0, version=2)
    rows.message(e2, "sent", T0, version=2, step="text", template="text", variant=None)
    report = journey_report(rows.db, "welcome")
    versions = {r["version"]: (r["entered"], r["sent"]) for r in report.table("versions").rows}
    assert versions == {1: (1, 1), 2: (1, 2)}
    only = journey_report(rows.db, "welcome", version=2)
    assert only.summary["sent"] == 2 and only.summary["entered"] == 1
    assert {r["version"] for r in only.table("steps").rows} == {2}
    assert one(only.table("steps").rows, step="bye")["waiting"] == 1


def test_step_runs_of_a_version_without_a_definition_are_counted(rows: Rows) -> None:
    # Given runs of version 1's steps, and one of a version 9 the journey never published
    # (rows written by hand: the exact count groups by the known versions, then falls back)
    runs = [(1, "hello", 0), (1, "hello", 1), (1, "text", 2), (9, "hello", 3)]
    with rows.db.write() as conn:
        for version, step, seq in runs:
            conn.execute(insert(t.journey_steps).values(
                enrolment_id=1, seq=seq, journey_key="welcome", version=version, step=step,
                contact_id=1, outcome="ran", executed_at=T0 + timedelta(minutes=seq),
            ))  # fmt: skip
    # When the report counts the rows, and when it adds up the rollups
    exact = journey_report(rows.db, "welcome", exact=True)
    rolled = journey_report(rows.db, "welcome")
    # Then every run is counted, by its version and step, and both say the same
    counted = {(r["version"], r["step"]): r["runs"] for r in exact.table("steps").rows}
    assert {k: n for k, n in counted.items() if n} == {
        (1, "hello"): 2,
        (1, "text"): 1,
        (9, "hello"): 1,
    }
    assert rolled.to_json() == exact.to_json()


def test_the_messages_report_across_journeys_and_by_template(rows: Rows) -> None:
    e = rows.enrolment(T0)
    rows.message(e, "delivered", T0)
    rows.message(e, "sent", T0, journey=None, step="", template="receipt", variant=None)
    everything = messages_report(rows.db)
    assert everything.summary["sent"] == 2 and everything.summary["delivered"] == 1
    assert {r["journey"] for r in everything.table("messages").rows} == {"welcome", None}
    receipts = messages_report(rows.db, template="receipt")
    assert receipts.summary["sent"] == 1
    assert messages_report(rows.db, journey="welcome").summary["sent"] == 1


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"start": "2026-03-05", "end": "2026-03-01"}, "from"),
        ({"start": "yesterday"}, "from"),
        ({"end": "2026-13-01"}, "to"),
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"version": 7}, "version"),
    ],
)
def test_bad_input_names_the_field(rows: Rows, params: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        journey_report(rows.db, "welcome", **params)
    assert caught.value.path == path


def test_an_unknown_journey_is_not_found(rows: Rows) -> None:
    with pytest.raises(NotFound) as caught:
        journey_report(rows.db, "nope")
    assert caught.value.path == "journey"


# -- end to end -----------------------------------------------------------------------------
CART: dict[str, Any] = {
    "key": "cart",
    "trigger": {"event": "Product Added"},
    "goal": {"event": "Order Completed", "revenue": "total", "within": "7d"},
    "exit": [{"event": "Order Completed"}],
    "steps": [
        {"id": "wait", "type": "wait", "for": "1h"},
        {"id": "remind", "type": "send", "channel": "email", "template": "cart_reminder"},
        {"id": "wait_day", "type": "wait", "for": "1d"},
        {"id": "last", "type": "send", "channel": "email", "template": "cart_last"},
    ],
}


def test_a_real_journey_end_to_end(db: Database, clock: SimulatedClock) -> None:
    with scene(db, clock, templates=("cart_reminder", "cart_last")) as world:
        world.publish(CART)
        for user in ("ann", "bob", "cy"):
            world.identify(user, email=f"{user}@example.com")
            world.track(user, "Product Added", price=10)
        world.advance(timedelta(hours=2))  # everyone gets the reminder
        world.track("ann", "Order Completed", total=80)  # ann converts
        world.advance(timedelta(days=2))  # bob and cy get the last call
        sent = world.messages()
        assert len(sent) == 5 and all(m.status == "sent" for m in sent)
        first = next(m for m in sent if m.contact_id == world.contact("bob"))
        world.n.feedback.record(OWN, [
            FeedbackItem("delivered", "d1", clock.now(), outbox_id=first.id),
            FeedbackItem("opened", "o1", clock.now(), outbox_id=first.id,
                         contact_id=first.contact_id),
            FeedbackItem("opened", "o2", clock.now(), outbox_id=first.id, machine=True,
                         contact_id=first.contact_id),
        ])  # fmt: skip
        report = journey_report(db, "cart")
    s = report.summary
    assert (s["entered"], s["converted"], s["revenue"], s["waiting"]) == (3, 1, 80.0, 0)
    assert (s["sent"], s["delivered"], s["opened"]) == (5, 1, 1)
    steps = {r["step"]: r for r in report.table("steps").rows}
    assert (steps["remind"]["sent"], steps["last"]["sent"]) == (3, 2)
    assert steps["wait"]["runs"] == 3 and steps["last"]["runs"] == 2
    remind = one(report.table("messages").rows, step="remind")
    assert (remind["opened"], remind["machine_opened"]) == (1, 1)
    exits = {(r["outcome"], r["reason"]): r["enrolments"] for r in report.table("exits").rows}
    assert exits == {("converted", "goal reached"): 1, ("completed", "completed"): 2}
