"""Every step type, as scenario tables: events at times, time passes, then the
enrolments, the step log and the outbox say what happened. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from tests.journeys.world import World

from nurture.journeys.interpreter import pick, unit
from nurture.store import tables as t
from nurture.webhooks import RecordingWebhookCaller, WebhookOutcome, verify


def journey(key: str, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"key": key, "trigger": {"event": "Go"}, "steps": steps, **extra}


def send(step_id: str, template: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "send", "channel": "email", "template": template, **extra}


def test_wait_until_event_goes_on_by_whichever_comes_first(world: World) -> None:
    # Given a journey that waits up to 2 days for an import, then branches on which came first
    world.publish(
        journey(
            "onboarding",
            [
                send("welcome", "welcome"),
                {"id": "await_import", "type": "wait", "until_event": {"event": "Data Imported"},
                 "timeout": "2d", "on_event": "invite_tip", "on_timeout": "import_tip"},
                send("import_tip", "tip_import", next="end"),
                send("invite_tip", "tip_invite"),
            ],
        )
    )  # fmt: skip
    world.identify("fast")
    world.identify("slow")
    world.track("fast", "Go")
    world.track("slow", "Go")
    # When one imports after a day and the other never does
    world.advance(timedelta(days=1))
    world.track("fast", "Data Imported")
    world.advance(timedelta(days=2))
    # Then each gets the message for the path taken, at the right time
    assert world.templates("fast") == ["welcome", "tip_invite"]
    assert world.templates("slow") == ["welcome", "tip_import"]
    slow = world.outbox("slow")
    assert slow[1].created_at - slow[0].created_at == timedelta(days=2)
    (e,) = world.enrolments("onboarding", "fast")
    assert world.steps(e.id) == [
        ("welcome", "sent"), ("await_import", "event"), ("invite_tip", "sent")
    ]  # fmt: skip


def test_wait_until_a_weekday_window_in_the_contacts_timezone(world: World) -> None:
    # Given Saturday 2026-03-07 12:00 UTC and a contact in New York (UTC-5 that day)
    world.clock.set(datetime(2026, 3, 7, 12, 0, tzinfo=UTC))
    world.publish(
        journey(
            "office_hours",
            [
                {"id": "hours", "type": "wait",
                 "until_window": {"days": "weekdays", "from": "09:00", "to": "18:00"}},
                send("hello", "welcome"),
            ],
        )
    )  # fmt: skip
    world.identify("ny", timezone="America/New_York")
    world.track("ny", "Go")
    world.advance(timedelta(days=3))
    # Then the message goes Monday 09:00 New York, which after the DST switch of
    # Sunday 2026-03-08 is UTC-4: 13:00 UTC
    (message,) = world.outbox("ny")
    assert message.created_at == datetime(2026, 3, 9, 13, 0, tzinfo=UTC)


def test_wait_until_a_date_trait_and_no_date_goes_straight_on(world: World) -> None:
    world.publish(
        journey(
            "trial_end",
            [
                {"id": "until", "type": "wait",
                 "until_date": {"trait": "trial_ends", "before": "1d", "at": "10:00"}},
                send("warn", "renewal_notice"),
            ],
        )
    )  # fmt: skip
    world.identify("has", trial_ends="2026-03-10", timezone="Europe/Berlin")
    world.identify("none")
    world.track("has", "Go")
    world.track("none", "Go")
    world.advance(timedelta(days=12))
    # 2026-03-09 10:00 in Berlin (UTC+1) is 09:00 UTC
    assert [m.created_at for m in world.outbox("has")] == [datetime(2026, 3, 9, 9, 0, tzinfo=UTC)]
    (none,) = world.outbox("none")
    assert none.created_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    (e,) = world.enrolments("trial_end", "none")
    assert world.steps(e.id)[0] == ("until", "no date")


def test_split_is_weighted_and_stable_per_contact(world: World) -> None:
    world.publish(
        journey(
            "ab",
            [
                {"id": "test", "type": "split", "paths": [
                    {"name": "A", "weight": 30, "next": "a"},
                    {"name": "B", "weight": 70, "next": "b"}]},
                send("a", "variant_a", next="end"),
                send("b", "variant_b"),
            ],
            entry={"reentry": "always"},
        )
    )  # fmt: skip
    users = [f"u{i}" for i in range(60)]
    for user in users:
        world.identify(user)
        world.track(user, "Go")
        world.track(user, "Go")  # enters twice: the same path both times
    for user in users:
        cid = world.contact(user)
        expected = ["variant_a", "variant_b"][pick([30, 70], unit("ab", "test", cid))]
        assert world.templates(user) == [expected, expected]
    share_a = sum(world.templates(u)[0] == "variant_a" for u in users) / len(users)
    assert 0.1 < share_a < 0.5


def test_variants_are_chosen_by_weight_and_recorded(world: World) -> None:
    world.publish(
        journey(
            "variants",
            [{"id": "mail", "type": "send", "channel": "email", "variants": [
                {"name": "short", "template": "variant_a", "weight": 1},
                {"name": "long", "template": "variant_b", "weight": 1}]}],
        )
    )  # fmt: skip
    for i in range(20):
        world.identify(f"v{i}")
        world.track(f"v{i}", "Go")
    messages = world.outbox()
    assert {m.variant for m in messages} == {"short", "long"}
    for m in messages:
        assert m.template == {"short": "variant_a", "long": "variant_b"}[m.variant or ""]


def test_update_sets_traits_and_tags_and_score_adds_points(world: World) -> None:
    world.n.lifecycle.save(
        "score_model", "lead", {"rules": [{"event": "Demo Requested", "points": 10}]}
    )
    world.publish(
        journey(
            "tagger",
            [
                {"id": "mark", "type": "update", "set": {"plan.tier": "gold", "vip": True},
                 "unset": ["old"], "add_tags": ["nurtured"], "remove_tags": ["cold"]},
                {"id": "points", "type": "score", "model": "lead", "points": 25},
            ],
        )
    )  # fmt: skip
    world.identify("tina", old=1, tags=["cold", "web"], plan={"seats": 3})
    world.track("tina", "Go")
    with world.n.db.read() as conn:
        c = t.contacts.c
        traits = conn.execute(select(c.traits).where(c.id == world.contact("tina"))).scalar_one()
        s = t.contact_scores.c
        score = conn.execute(
            select(s.score).where(s.contact_id == world.contact("tina"), s.model == "lead")
        ).scalar_one()
    assert traits == {"plan": {"seats": 3, "tier": "gold"}, "vip": True,
                      "tags": ["web", "nurtured"]}  # fmt: skip
    assert score == 25


def test_webhook_is_signed_retried_with_backoff_then_parked(
    world: World, webhooks: RecordingWebhookCaller, monkeypatch: Any
) -> None:
    monkeypatch.setenv("CRM_SECRET", "s3cret")
    down = WebhookOutcome("retry", 503, "HTTP 503 from crm.example", None, None)
    webhooks.queue(down, down, WebhookOutcome("ok", 200, None, None, None))
    world.publish(
        journey(
            "crm",
            [
                {"id": "push", "type": "webhook", "url": "https://crm.example/leads",
                 "secret_env": "CRM_SECRET", "retries": 3},
                send("after", "welcome"),
            ],
        )
    )  # fmt: skip
    world.identify("lee", email="lee@example.com")
    world.track("lee", "Go")
    (e,) = world.enrolments("crm", "lee")
    assert e.attempts == 1 and e.last_error == "HTTP 503 from crm.example"
    world.advance(timedelta(hours=3))
    assert world.templates("lee") == ["welcome"]
    calls = webhooks.requests
    assert len(calls) == 3
    assert {c.idempotency_key for c in calls} == {f"nurture-{e.id}:0"}
    assert calls[0].body["contact"]["email"] == "lee@example.com"
    assert calls[0].secret == "s3cret"
    (e,) = world.enrolments("crm", "lee")
    assert world.steps(e.id) == [("push", "called:200"), ("after", "sent")]


def test_a_webhook_that_keeps_failing_is_parked_and_blocks_nobody(
    world: World, webhooks: RecordingWebhookCaller
) -> None:
    gone = WebhookOutcome("fail", 404, "HTTP 404 from crm.example", None, None)
    webhooks.queue(gone)
    world.publish(
        journey(
            "crm",
            [{"id": "push", "type": "webhook", "url": "https://crm.example/x"},
             send("after", "welcome")],
            entry={"reentry": "always"},
        )
    )  # fmt: skip
    world.identify("a")
    world.identify("b")
    world.track("a", "Go")
    world.track("b", "Go")
    (a,) = world.enrolments("crm", "a")
    assert a.status == "failed" and "404" in (a.last_error or "")
    assert world.templates("b") == ["welcome"]
    # And a parked enrolment can be retried once the cause is fixed
    world.n.journeys.retry(a.id)
    world.run()
    assert world.templates("a") == ["welcome"]


def test_notify_hands_a_hot_lead_to_sales_instead_of_the_sequence(world: World) -> None:
    world.publish(
        journey(
            "leads",
            [
                {"id": "big", "type": "branch",
                 "cases": [{"if": {"trait": "budget", "gt": 5000}, "next": "sales"}],
                 "else": "nurture"},
                {"id": "sales", "type": "notify", "to": "sales@acme.example",
                 "note": "Budget over 5,000", "next": "end"},
                send("nurture", "lead_digest"),
            ],
        )
    )  # fmt: skip
    world.identify("rich", budget=9000)
    world.identify("small", budget=100)
    world.track("rich", "Go")
    world.track("small", "Go")
    (hand_off,) = world.outbox("rich")
    assert (hand_off.recipient, hand_off.channel) == ("sales@acme.example", "email")
    assert world.templates("small") == ["lead_digest"]


def test_exit_step_ends_with_its_reason(world: World) -> None:
    world.publish(journey("short", [{"id": "stop", "type": "exit", "reason": "not for you"}]))
    world.identify("x")
    world.track("x", "Go")
    (e,) = world.enrolments("short", "x")
    assert (e.status, e.end_reason) == ("exited", "not for you")


def test_the_signature_verifies(webhooks: RecordingWebhookCaller) -> None:
    # The recording caller records what the real one would sign; `verify` is the receiver's.
    from nurture.webhooks import sign

    body = b'{"a":1}'
    header = sign("k", 1_700_000_000, body)
    assert verify("k", header, body, now=1_700_000_000)
