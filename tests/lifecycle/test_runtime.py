"""Stages and scores kept current by the engine: recorded with their time, emitted as
events, queryable as moves ("who went from engaged to at risk last week"), explained."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from starlette.testclient import TestClient

from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.store import tables as t


def track(nurture: Nurture, user: str, event: str, **props: Any) -> None:
    at = nurture.clock.now().isoformat()
    nurture.ingest(
        [{"type": "track", "userId": user, "event": event, "properties": props, "timestamp": at}]
    )


def setup_models(nurture: Nurture) -> None:
    nurture.lifecycle.save("stage_model", "lifecycle", {"preset": "saas"})
    nurture.lifecycle.save(
        "score_model",
        "lead",
        {
            "half_life": "30d",
            "temperatures": [
                {"name": "cold"},
                {"name": "warm", "at_least": 20},
                {"name": "hot", "at_least": 50},
            ],
            "rules": [
                {"event": "Signed Up", "points": 20, "max_times": 1},
                {"event": "Pricing", "type": "page", "points": 5, "max_times": 4},
                {"event": "Order Completed", "points": 100},
            ],
        },
    )


def ann(nurture: Nurture) -> int:
    with nurture.db.read() as conn:
        return int(
            conn.execute(select(t.contacts.c.id).where(t.contacts.c.user_id == "ann")).scalar_one()
        )


def test_a_saas_contact_moves_through_stages_in_real_time_and_on_schedule(
    nurture: Nurture, clock: SimulatedClock, client: TestClient, admin_key: str
) -> None:
    setup_models(nurture)
    headers = {"Authorization": f"Bearer {admin_key}"}
    # Given ann signs up, activates and logs in often over a week
    track(nurture, "ann", "Signed Up")
    nurture.engine.evaluate_pending()
    contact = ann(nurture)
    assert nurture.engine.contact_state(contact)["stages"]["lifecycle"]["stage"] == "signed_up"
    track(nurture, "ann", "Feature Used", feature="reports")
    for _ in range(3):
        clock.advance(timedelta(days=1))
        track(nurture, "ann", "Logged In")
    nurture.engine.evaluate_pending()
    assert nurture.engine.contact_state(contact)["stages"]["lifecycle"]["stage"] == "engaged"
    engaged_at = clock.now()
    # When she goes quiet for three weeks (no event: only the scheduled run sees it)
    clock.advance(timedelta(days=21))
    nurture.engine.evaluate_all()
    # Then she is at risk, the move is recorded and emitted
    assert nurture.engine.contact_state(contact)["stages"]["lifecycle"]["stage"] == "at_risk"
    week_ago = (clock.now() - timedelta(days=7)).isoformat()
    moves = client.get(
        "/api/stages/lifecycle/moves",
        params={"from": "engaged", "to": "at_risk", "since": week_ago},
        headers=headers,
    ).json()
    assert [(m["contactId"], m["from"], m["to"]) for m in moves] == [
        (contact, "engaged", "at_risk")
    ]
    assert moves[0]["at"] == clock.now().isoformat()
    assert (
        client.get(
            "/api/stages/lifecycle/moves",
            params={"to": "engaged", "until": (engaged_at + timedelta(seconds=1)).isoformat()},
            headers=headers,
        ).json()[0]["contactId"]
        == contact
    )
    with nurture.db.read() as conn:
        e = t.events.c
        changes = [
            (r["from"], r["to"])
            for r in conn.execute(
                select(e.properties)
                .where(e.event == "stage.changed", e.contact_id == contact)
                .order_by(e.id)
            ).scalars()
        ]
    assert changes == [
        (None, "signed_up"),
        ("signed_up", "engaged"),
        ("engaged", "at_risk"),
    ]
    counts = client.get("/api/stages/lifecycle", headers=headers).json()
    assert counts["at_risk"] == 1 and sum(counts.values()) == 1


def test_scores_cross_thresholds_emit_events_and_are_explained(
    nurture: Nurture, clock: SimulatedClock, client: TestClient, admin_key: str
) -> None:
    setup_models(nurture)
    # Given ann signs up (20 points: warm)
    track(nurture, "ann", "Signed Up")
    nurture.engine.evaluate_pending()
    contact = ann(nurture)
    assert nurture.engine.contact_state(contact)["scores"]["lead"] == {
        "score": 20.0,
        "temperature": "warm",
    }
    # When she orders (+100: hot)
    track(nurture, "ann", "Order Completed", total=50)
    nurture.engine.evaluate_pending()
    # Then the crossing is recorded and emitted, and the score is explained rule by rule
    with nurture.db.read() as conn:
        s = t.score_changes.c
        crossings = conn.execute(
            select(s.from_temperature, s.to_temperature, s.score)
            .where(s.contact_id == contact)
            .order_by(s.id)
        ).all()
    assert [tuple(c) for c in crossings] == [("cold", "warm", 20.0), ("warm", "hot", 120.0)]
    explained = client.get(
        f"/api/contacts/{contact}/scores/lead", headers={"Authorization": f"Bearer {admin_key}"}
    ).json()
    assert explained["score"] == 120.0 and explained["temperature"] == "hot"
    assert {(p["rule"], p["points"], p["count"]) for p in explained["explanation"]} == {
        ("Signed Up", 20.0, 1),
        ("Order Completed", 100.0, 1),
    }
    # And after one half-life with no event the scheduled run halves it
    clock.advance(timedelta(days=30))
    nurture.engine.evaluate_all()
    assert nurture.engine.contact_state(contact)["scores"]["lead"] == {
        "score": 60.0,
        "temperature": "hot",
    }


def test_a_segment_can_use_a_score_and_follows_it_in_the_same_round(nurture: Nurture) -> None:
    setup_models(nurture)
    nurture.segments.save({"key": "hot_leads", "where": {"score": "lead", "temperature": "hot"}})
    track(nurture, "ann", "Order Completed", total=10)
    nurture.engine.evaluate_pending()
    with nurture.db.read() as conn:
        m = t.segment_memberships.c
        assert list(
            conn.execute(select(m.contact_id).where(m.segment_key == "hot_leads")).scalars()
        ) == [ann(nurture)]


def test_a_scheduled_stage_run_does_not_overwrite_a_newer_real_time_stage(
    nurture: Nurture, clock: SimulatedClock
) -> None:
    # Given ann signed up and activated, and a scheduled run that has computed her stage
    # (activated) from that snapshot before real time evaluated the activation
    setup_models(nurture)
    track(nurture, "ann", "Signed Up")
    nurture.engine.evaluate_pending()
    track(nurture, "ann", "Feature Used", feature="reports")
    now = clock.now()
    with nurture.db.read() as conn:
        read = nurture.engine._stages_read(conn, now)
    assert read is not None
    assert read.stages["lifecycle"][ann(nurture)] == "activated"
    # When she logs in three times and real time makes her engaged before the run writes
    for _ in range(3):
        clock.advance(timedelta(hours=1))
        track(nurture, "ann", "Logged In")
    nurture.engine.evaluate_pending()
    with nurture.db.write() as conn:
        written = nurture.engine._stages_write(conn, read, now)
    # Then the run's older result does not take her back to activated
    assert written == 0
    assert nurture.engine.contact_state(ann(nurture))["stages"]["lifecycle"]["stage"] == "engaged"


def test_real_time_re_evaluates_a_stage_or_score_only_when_the_events_can_move_it(
    nurture: Nurture, clock: SimulatedClock
) -> None:
    # Given bob, known before any model existed, then the SaaS stages and a lead score
    # that also reads a segment
    track(nurture, "bob", "Newsletter Opened")
    nurture.engine.evaluate_pending()
    nurture.lifecycle.save("stage_model", "lifecycle", {"preset": "saas"})
    nurture.segments.save({"key": "pro", "where": {"trait": "plan", "eq": "pro"}})
    rules: list[dict[str, Any]] = [
        {"event": "Signed Up", "points": 20, "max_times": 1},
        {"name": "Pro plan", "when": {"segment": "pro"}, "points": 30},
    ]
    temperatures = [{"name": "cold"}, {"name": "warm", "at_least": 20}]
    nurture.lifecycle.save(
        "score_model", "lead", {"half_life": "30d", "temperatures": temperatures, "rules": rules}
    )

    def state(user: str) -> tuple[str, float, str]:
        with nurture.db.read() as conn:
            contact = conn.execute(
                select(t.contacts.c.id).where(t.contacts.c.user_id == user)
            ).scalar_one()
        found = nurture.engine.contact_state(contact)
        lead = found["scores"].get("lead", {"score": 0.0, "temperature": "cold"})
        return found["stages"]["lifecycle"]["stage"], lead["score"], lead["temperature"]

    # When bob sends an event neither model reads: with nothing stored yet, both are decided
    clock.advance(timedelta(minutes=1))
    track(nurture, "bob", "Newsletter Opened")
    nurture.engine.evaluate_pending()
    assert state("bob") == ("visitor", 0.0, "cold")
    # Given ann logged in three times (engaged) and signed up (20 points, warm)
    for _ in range(3):
        clock.advance(timedelta(hours=1))
        track(nurture, "ann", "Logged In")
    track(nurture, "ann", "Signed Up")
    nurture.engine.evaluate_pending()
    assert state("ann") == ("engaged", 20.0, "warm")
    # When 16 days pass without a login (at risk, by time alone; the 20 points decay to
    # under 14, cold) and she sends an event neither model reads
    clock.advance(timedelta(days=16))
    track(nurture, "ann", "Newsletter Opened")
    nurture.engine.evaluate_pending()
    # Then both keep what was stored: what time alone changes is the scheduled run's
    assert state("ann") == ("engaged", 20.0, "warm")
    # When she becomes pro: the segment the score reads moves, so the score is decided
    # again, decay included; the stage, which reads no trait, keeps its stored value
    nurture.ingest([{"type": "identify", "userId": "ann", "traits": {"plan": "pro"}}])
    nurture.engine.evaluate_pending()
    decayed = round(20 * 0.5 ** (16 / 30), 2)
    assert state("ann") == ("engaged", decayed + 30, "warm")
    # When she logs in: the stage model reads logins and is decided again (one login in
    # the last 14 days against three in the 14 before)
    track(nurture, "ann", "Logged In")
    nurture.engine.evaluate_pending()
    assert state("ann") == ("at_risk", decayed + 30, "warm")
    with nurture.db.read() as conn:
        s = t.score_changes.c
        crossings = conn.execute(select(s.from_temperature, s.to_temperature)).all()
    assert [tuple(c) for c in crossings] == [("cold", "warm")]
