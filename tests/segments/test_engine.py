"""Segments kept current: in real time after events, on a schedule for time alone,
with every change recorded and emitted; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.errors import ValidationError
from nurture.segments import queue
from nurture.segments.definitions import DefinitionStore
from nurture.segments.service import Conflict
from nurture.store import tables as t

ENGAGED = {
    "key": "engaged",
    "name": "Logged in 3+ times in 30 days",
    "where": {"event": "Logged In", "at_least": 3, "within_last": "30d"},
}


def track(
    nurture: Nurture, user: str, event: str, ago: timedelta = timedelta(0), **props: Any
) -> None:
    at = nurture.clock.now() - ago
    nurture.ingest(
        [
            {
                "type": "track",
                "userId": user,
                "event": event,
                "properties": props,
                "timestamp": at.isoformat(),
            }
        ]
    )


def contact_id(nurture: Nurture, user: str) -> int:
    with nurture.db.read() as conn:
        return int(
            conn.execute(select(t.contacts.c.id).where(t.contacts.c.user_id == user)).scalar_one()
        )


def members(nurture: Nurture, key: str) -> set[int]:
    with nurture.db.read() as conn:
        m = t.segment_memberships.c
        return set(conn.execute(select(m.contact_id).where(m.segment_key == key)).scalars())


def system_events(nurture: Nurture, name: str) -> list[tuple[int, dict[str, Any]]]:
    with nurture.db.read() as conn:
        e = t.events.c
        rows = conn.execute(
            select(e.contact_id, e.properties)
            .where(e.type == "system", e.event == name)
            .order_by(e.id)
        )
        return [(r.contact_id, r.properties) for r in rows]


def test_a_contact_enters_as_its_events_arrive_and_the_entry_is_recorded(nurture: Nurture) -> None:
    # Given a segment of contacts who logged in 3 times in 30 days
    nurture.segments.save(ENGAGED)
    # When ann logs in three times
    for days in (3, 2, 1):
        track(nurture, "ann", "Logged In", timedelta(days=days))
    ann = contact_id(nurture, "ann")
    with nurture.db.read() as conn:
        assert queue.backlog(conn) == 1  # queued by the ingest transaction itself
    assert nurture.engine.evaluate_pending() == 1
    # Then she is a member since now, the entry is in the history and emitted as an event
    assert members(nurture, "engaged") == {ann}
    assert nurture.segments.changes("engaged") == [
        {"contactId": ann, "change": "entered", "at": nurture.clock.now().isoformat()}
    ]
    assert system_events(nurture, "segment.entered") == [(ann, {"segment": "engaged"})]
    with nurture.db.read() as conn:
        assert queue.backlog(conn) == 0
    # And evaluating again changes nothing
    track(nurture, "ann", "Feature Used")
    nurture.engine.evaluate_pending()
    assert len(nurture.segments.changes("engaged")) == 1


def test_time_alone_moves_contacts_out_on_the_scheduled_run(
    nurture: Nurture, clock: SimulatedClock
) -> None:
    # Given ann in the segment
    nurture.segments.save(ENGAGED)
    for days in (3, 2, 1):
        track(nurture, "ann", "Logged In", timedelta(days=days))
    nurture.engine.evaluate_pending()
    ann = contact_id(nurture, "ann")
    # When a month passes with no event
    clock.advance(timedelta(days=29, hours=1))
    assert nurture.engine.evaluate_pending() == 0
    report = nurture.engine.evaluate_all()
    # Then the scheduled run takes her out and says so
    assert members(nurture, "engaged") == set()
    assert [(r.key, r.exited) for r in report.segments] == [("engaged", 1)]
    assert system_events(nurture, "segment.exited") == [(ann, {"segment": "engaged"})]


def test_saving_a_segment_evaluates_the_existing_population(nurture: Nurture) -> None:
    # Given contacts with history before the segment exists
    for user, logins in (("ann", 3), ("bob", 1)):
        for day in range(logins):
            track(nurture, user, "Logged In", timedelta(days=day + 1))
    nurture.engine.evaluate_pending()
    # When the segment is created
    saved = nurture.segments.save(ENGAGED)
    # Then its members are there at once
    assert saved["members"] == 1
    assert members(nurture, "engaged") == {contact_id(nurture, "ann")}


def test_segments_of_segments_follow_their_parents_in_real_time(nurture: Nurture) -> None:
    # Given a segment built on another
    nurture.segments.save(ENGAGED)
    nurture.segments.save(
        {
            "key": "engaged_no_order",
            "where": {"all": [{"segment": "engaged"}, {"not": {"event": "Order Completed"}}]},
        }
    )
    # When ann qualifies for the parent
    for days in (3, 2, 1):
        track(nurture, "ann", "Logged In", timedelta(days=days))
    nurture.engine.evaluate_pending()
    ann = contact_id(nurture, "ann")
    # Then she is in both after one evaluation (the parent is evaluated first)
    assert members(nurture, "engaged_no_order") == {ann}
    # And an order takes her out of the child only
    track(nurture, "ann", "Order Completed", total=30)
    nurture.engine.evaluate_pending()
    assert members(nurture, "engaged_no_order") == set()
    assert members(nurture, "engaged") == {ann}


def test_a_cycle_or_a_missing_segment_is_refused_with_the_reason(nurture: Nurture) -> None:
    nurture.segments.save({"key": "a", "where": {"trait": "plan", "eq": "pro"}})
    nurture.segments.save({"key": "b", "where": {"segment": "a"}})
    with pytest.raises(ValidationError, match=r"cycle: (a → b → a|b → a → b)"):
        nurture.segments.save({"key": "a", "where": {"segment": "b"}})
    with pytest.raises(ValidationError, match="segment 'nope' does not exist"):
        nurture.segments.save({"key": "c", "where": {"segment": "nope"}})
    with pytest.raises(Conflict, match="used by b"):
        nurture.segments.delete("a")


def test_a_bad_definition_is_marked_failed_and_the_others_go_on(nurture: Nurture) -> None:
    # Given a stored definition that no longer resolves (edited outside the API)
    nurture.segments.save(ENGAGED)
    with nurture.db.write() as conn:
        DefinitionStore.put(
            conn,
            "segment",
            "broken",
            {"where": {"segment": "gone"}},
            name="",
            source="file",
            now=nurture.clock.now(),
        )
    for days in (3, 2, 1):
        track(nurture, "ann", "Logged In", timedelta(days=days))
    # When contacts are evaluated
    nurture.engine.evaluate_pending()
    report = nurture.engine.evaluate_all()
    # Then the broken one is marked failed with its reason, the good one works
    broken = nurture.segments.get("broken")
    assert broken["status"] == "failed"
    assert "segment 'gone' does not exist" in broken["error"]
    assert members(nurture, "engaged") == {contact_id(nurture, "ann")}
    assert [(r.key, r.error is None) for r in report.segments] == [
        ("broken", False),
        ("engaged", True),
    ]


def test_preview_counts_without_saving(nurture: Nurture) -> None:
    for day in range(3):
        track(nurture, "ann", "Logged In", timedelta(days=day))
    track(nurture, "bob", "Logged In")
    preview = nurture.segments.preview({"event": "Logged In", "at_least": 1})
    assert preview.count == 2
    assert [c["userId"] for c in preview.sample] == ["ann", "bob"]
    with nurture.db.read() as conn:
        assert (
            conn.execute(select(func.count()).select_from(t.segment_memberships)).scalar_one() == 0
        )


def test_queued_contacts_survive_a_restart(nurture: Nurture, clock: SimulatedClock) -> None:
    # Given events stored but not yet evaluated when the process stops
    nurture.segments.save(ENGAGED)
    for days in (3, 2, 1):
        track(nurture, "ann", "Logged In", timedelta(days=days))
    nurture.stop()
    # When a new process starts on the same database
    again = Nurture(nurture.settings, clock=clock, db=nurture.db).start()
    try:
        # Then the queued contact is evaluated
        assert again.engine.evaluate_pending() == 1
        assert members(again, "engaged") == {contact_id(again, "ann")}
    finally:
        again.stop()


def test_a_merged_away_contact_leaves_its_segments(nurture: Nurture) -> None:
    # Given an anonymous visitor in a segment
    nurture.segments.save({"key": "visitors", "where": {"event": "Pricing", "type": "page"}})
    nurture.ingest([{"type": "page", "anonymousId": "a1", "name": "Pricing"}])
    nurture.ingest([{"type": "identify", "userId": "ann", "traits": {"plan": "pro"}}])
    nurture.engine.evaluate_pending()
    visitor = {r for r in members(nurture, "visitors")}
    assert len(visitor) == 1
    # When the visitor turns out to be ann (her known contact survives the merge)
    nurture.ingest([{"type": "identify", "userId": "ann", "anonymousId": "a1"}])
    nurture.engine.evaluate_pending()
    # Then only the surviving contact is a member (it carries the page view now)
    assert members(nurture, "visitors") == {contact_id(nurture, "ann")}


def test_segments_on_computed_traits_including_population_rfm(nurture: Nurture) -> None:
    # Given computed traits: an order count and the RFM score
    nurture.lifecycle.save("computed", "orders", {"kind": "count", "event": "Order Completed"})
    nurture.lifecycle.save("computed", "rfm_f", {"kind": "rfm", "part": "frequency"})
    nurture.segments.save({"key": "repeat", "where": {"computed": "orders", "gte": 2}})
    nurture.segments.save({"key": "top_f", "where": {"computed": "rfm_f", "eq": 5}})
    # And five buyers with 1 to 5 orders
    for n in range(1, 6):
        for i in range(n):
            track(nurture, f"u{n}", "Order Completed", timedelta(hours=i + 1), revenue=10 + i)
    # When evaluated in real time, then on the scheduled run (which computes RFM bounds)
    nurture.engine.evaluate_pending()
    assert len(members(nurture, "repeat")) == 4
    nurture.engine.evaluate_all()
    # Then the most frequent buyer alone is in the top frequency quintile
    assert members(nurture, "top_f") == {contact_id(nurture, "u5")}
    # And an operator that does not fit the trait's type is refused
    with pytest.raises(ValidationError, match="is a number: use one of"):
        nurture.segments.save({"key": "odd", "where": {"computed": "orders", "before": "3d ago"}})


def test_an_event_arriving_during_an_evaluation_is_not_lost(nurture: Nurture) -> None:
    # Given ann queued with two logins, and an evaluation that has read her facts
    # (on SQLite the evaluator reads outside the write lock, as here)
    nurture.segments.save(ENGAGED)
    for days in (3, 2):
        track(nurture, "ann", "Logged In", timedelta(days=days))
    with nurture.db.read() as conn:
        claimed = queue.claim(conn, 10, lock=False)
        early = nurture.engine._evaluate(conn, sorted(claimed), nurture.clock.now())
    # When her third login is stored before that evaluation writes
    track(nurture, "ann", "Logged In", timedelta(days=1))
    with nurture.db.write() as conn:
        fresh = queue.unchanged(conn, claimed)
        nurture.engine._write(conn, early, sorted(fresh), nurture.clock.now())
    # Then the stale result is not written and she stays queued
    assert fresh == set()
    assert members(nurture, "engaged") == set()
    # And the next round evaluates her with the third login
    nurture.engine.evaluate_pending()
    assert members(nurture, "engaged") == {contact_id(nurture, "ann")}


def test_changing_a_segment_updates_those_built_on_it_and_used_definitions_stay(
    nurture: Nurture,
) -> None:
    # Given a segment built on another, and a computed trait a segment uses
    nurture.segments.save({"key": "pro", "where": {"trait": "plan", "eq": "pro"}})
    nurture.segments.save({"key": "pro_child", "where": {"segment": "pro"}})
    nurture.lifecycle.save("computed", "orders", {"kind": "count", "event": "Order Completed"})
    nurture.segments.save({"key": "buyers", "where": {"computed": "orders", "gte": 1}})
    nurture.ingest([{"type": "identify", "userId": "ann", "traits": {"plan": "team"}}])
    nurture.engine.evaluate_pending()
    assert members(nurture, "pro_child") == set()
    # When the parent changes
    nurture.segments.save({"key": "pro", "where": {"trait": "plan", "in": ["pro", "team"]}})
    # Then the child follows without waiting for the scheduled run
    assert members(nurture, "pro_child") == {contact_id(nurture, "ann")}
    # And a computed trait in use cannot be deleted
    with pytest.raises(Conflict, match="used by segment buyers"):
        nurture.lifecycle.delete("computed", "orders")


def test_a_population_run_leaves_contacts_whose_events_changed_meanwhile_to_real_time(
    nurture: Nurture,
) -> None:
    # Given a segment, ann with two logins (not a member), and a population run that has
    # read the members (on SQLite it reads outside the write lock, as here)
    nurture.segments.save(ENGAGED)
    for days in (3, 2):
        track(nurture, "ann", "Logged In", timedelta(days=days))
    nurture.engine.evaluate_pending()
    now = nurture.clock.now()
    with nurture.db.read() as conn:
        read = nurture.engine._population_read(conn, "engaged", now)
    # When her third login is stored before the run writes
    track(nurture, "ann", "Logged In", timedelta(days=1))
    nurture.engine.evaluate_pending()  # real time: she enters
    with nurture.db.write() as conn:
        result = nurture.engine._population_write(conn, read, now, 0.0)
    # Then the run's older snapshot does not take her out again
    assert result.exited == 0
    assert members(nurture, "engaged") == {contact_id(nurture, "ann")}


def test_system_events_show_in_the_contacts_timeline(nurture: Nurture) -> None:
    nurture.segments.save({"key": "buyers", "where": {"event": "Order Completed"}})
    track(nurture, "ann", "Order Completed", total=5)
    nurture.engine.evaluate_pending()
    page = nurture.contacts.timeline(contact_id(nurture, "ann"), type="system")
    assert [(e["event"], e["properties"]) for e in page["items"]] == [
        ("segment.entered", {"segment": "buyers"})
    ]


def test_real_time_re_evaluates_only_what_the_arrived_events_can_change(
    nurture: Nurture, clock: SimulatedClock
) -> None:
    # Given segments on logins, on orders (by their absence) and on a trait
    nurture.segments.save(
        {"key": "recent_login", "where": {"event": "Logged In", "within_last": "1d"}}
    )
    nurture.segments.save({"key": "never_ordered", "where": {"not": {"event": "Order Completed"}}})
    nurture.segments.save({"key": "pro", "where": {"trait": "plan", "eq": "pro"}})
    # When a new contact logs in: a new contact is evaluated on everything
    track(nurture, "ann", "Logged In")
    nurture.engine.evaluate_pending()
    ann = contact_id(nurture, "ann")
    assert members(nurture, "recent_login") == {ann}
    assert members(nurture, "never_ordered") == {ann}
    # When two days pass and she uses a feature (an event no segment reads)
    clock.advance(timedelta(days=2))
    track(nurture, "ann", "Feature Used")
    nurture.engine.evaluate_pending()
    # Then nothing is re-evaluated: the login window's end is the scheduled run's to see
    assert members(nurture, "recent_login") == {ann}
    # When she becomes pro and orders
    nurture.ingest([{"type": "identify", "userId": "ann", "traits": {"plan": "pro"}}])
    track(nurture, "ann", "Order Completed", total=9)
    nurture.engine.evaluate_pending()
    # Then the segments those read follow at once, and the schedule catches the rest
    assert members(nurture, "pro") == {ann}
    assert members(nurture, "never_ordered") == set()
    assert members(nurture, "recent_login") == {ann}
    nurture.engine.evaluate_all()
    assert members(nurture, "recent_login") == set()
