"""Back-tests: history stored with no journey live, then replayed through a journey in
memory. Who enters, which messages go when, conversions, re-entry, holdout, branches on
later events, date and schedule triggers; the database stays as it was; and the back-test
agrees with the live engine fed the same history. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from sqlalchemy import func, select
from tests.journeys.world import ABANDONED_CART, World
from typer.testing import CliRunner

from nurture.cli.backtest import backtest_command
from nurture.journeys import backtest as backtest_module
from nurture.journeys.backtest import backtest
from nurture.journeys.backtest_report import BacktestReport
from nurture.journeys.interpreter import unit
from nurture.journeys.model import parse_journey
from nurture.store import tables as t
from nurture.webhooks import RecordingWebhookCaller

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # the clock fixture's start
H, D = timedelta(hours=1), timedelta(days=1)

CART: dict[str, Any] = {**ABANDONED_CART, "key": "cart_test"}

# Variants, an event wait with a timeout, a trait update read by a branch, a rescheduled
# wait, a webhook, a goal and an exit rule: the engine's every moving part.
TRIAL: dict[str, Any] = {
    "key": "trial",
    "trigger": {"event": "Trial Started"},
    "goal": {"event": "Subscribed", "revenue": "amount", "within": "14d"},
    "exit": [{"event": "Account Deleted", "reason": "deleted"}],
    "steps": [
        {"id": "welcome", "type": "send", "channel": "email", "variants": [
            {"name": "A", "template": "variant_a"}, {"name": "B", "template": "variant_b"}]},
        {"id": "wait_project", "type": "wait", "until_event": {"event": "Project Created"},
         "timeout": "2d", "on_event": "tag", "on_timeout": "nudge"},
        {"id": "nudge", "type": "send", "channel": "email", "template": "tip_import",
         "next": "by_plan"},
        {"id": "tag", "type": "update", "set": {"activated": True}},
        {"id": "by_plan", "type": "branch", "else": "later", "cases": [
            {"if": {"trait": "activated", "eq": True}, "next": "invite"}]},
        {"id": "invite", "type": "send", "channel": "email", "template": "tip_invite",
         "next": "crm"},
        {"id": "later", "type": "wait", "for": "1d", "restart_on": [{"event": "Logged In"}]},
        {"id": "reminder", "type": "send", "channel": "sms", "template": "reminder"},
        {"id": "crm", "type": "webhook", "url": "https://crm.example.com/hook"},
    ],
}  # fmt: skip


def cart_history(world: World) -> None:
    """ann leaves a big cart; bob orders his cart within the hour; cy orders another cart."""
    for user in ("ann", "bob", "cy"):
        world.identify(user, email=f"{user}@example.com")
    world.track("ann", "Product Added", cart_id="c1", price=150)
    world.advance(timedelta(minutes=10))
    world.track("bob", "Product Added", cart_id="c2", price=20)
    world.advance(timedelta(minutes=10))
    world.track("cy", "Product Added", cart_id="c3", price=20)
    world.advance(timedelta(minutes=10))
    world.track("cy", "Order Completed", cart_id="other", total=5)
    world.advance(timedelta(minutes=10))
    world.track("bob", "Order Completed", cart_id="c2", total=80.5)
    world.advance(3 * D)


def trial_history(world: World) -> None:
    """ann creates a project; bob does not but logs in; cy subscribes; dan leaves."""
    for user in ("ann", "bob", "cy", "dan"):
        world.identify(user, email=f"{user}@example.com")
        world.track(user, "Trial Started")
    world.advance(H)
    world.track("dan", "Account Deleted")
    world.advance(4 * H)
    world.track("cy", "Subscribed", amount=49)
    world.advance(D)
    world.track("ann", "Project Created")
    world.advance(D + 12 * H)
    world.track("bob", "Logged In")
    world.advance(5 * D)


def replay(world: World, definition: dict[str, Any], **kwargs: Any) -> BacktestReport:
    """Back-test `definition` over everything from T0 to now."""
    journey = parse_journey(definition)
    return backtest(world.n.journey_runtime, journey, T0, world.clock.now(), **kwargs)


def sent(report: BacktestReport) -> list[tuple[str | None, str, str | None, datetime]]:
    return [(m.user_id, m.step, m.template, m.at) for m in report.messages]


def rows(world: World) -> dict[str, int]:
    tables = (t.events, t.contacts, t.enrolments, t.outbox, t.journey_steps, t.journey_inbox,
              t.journeys, t.segment_memberships)  # fmt: skip
    with world.n.db.read() as conn:
        return {x.name: conn.execute(select(func.count()).select_from(x)).scalar_one()
                for x in tables}  # fmt: skip


def test_abandoned_cart_messages_times_and_conversion(world: World) -> None:
    # Given a history of carts stored while no journey ran
    cart_history(world)
    # When the cart journey is back-tested over it
    report = replay(world, CART)
    # Then each cart entered; the reminder went exactly an hour after the product was added,
    # the follow-up a day later; the cart ordered within the hour got nothing
    assert report.entered == 3 and report.control == 0
    assert sent(report) == [
        ("ann", "reminder", "cart_reminder", T0 + H),
        ("cy", "reminder", "cart_reminder", T0 + 20 * timedelta(minutes=1) + H),
        ("ann", "discount", "cart_discount", T0 + H + D),
        ("cy", "sms", "cart_sms", T0 + 20 * timedelta(minutes=1) + H + D),
    ]
    # And bob converted with his order's revenue; cy's order of another cart ended nothing
    assert report.by_contact() == {world.contact("bob"): 80.5}
    assert (report.converted, report.revenue) == (1, 80.5)
    assert report.completed == 2 and not report.exits and not report.active
    assert report.steps["by_value"] == {"case:0": 1, "else": 1}
    # And over the first two hours only, both carts still wait for their second day
    early = backtest(world.n.journey_runtime, parse_journey(CART), T0, T0 + 2 * H)
    assert early.active == {"wait_day": 2} and len(early.messages) == 2


def test_a_backtest_writes_nothing(world: World) -> None:
    # Given stored history, and the journey as a draft only
    cart_history(world)
    before = rows(world)
    # When it is back-tested, with a trait update, a score and a webhook on the way
    journey = {**CART, "steps": [
        {"id": "wait_hour", "type": "wait", "for": "1h"},
        {"id": "mark", "type": "update", "set": {"vip": True}, "add_tags": ["cart"]},
        {"id": "points", "type": "score", "points": 5, "model": "lead"},
        {"id": "crm", "type": "webhook", "url": "https://crm.example.com/cart"},
        {"id": "vip", "type": "branch", "else": "end", "cases": [
            {"if": {"trait": "vip", "eq": True}, "next": "reminder"}]},
        {"id": "reminder", "type": "send", "channel": "email", "template": "cart_reminder"},
    ]}  # fmt: skip
    report = replay(world, journey)
    # Then the simulation saw its own update, counted points and calls, made no call
    assert [m.user_id for m in report.messages] == ["ann", "cy"]
    assert report.points == {"lead": 10.0}
    assert report.webhooks == {"POST https://crm.example.com/cart": 2}
    webhooks = world.n.journey_runtime.webhooks
    assert isinstance(webhooks, RecordingWebhookCaller) and not webhooks.requests
    # And not a row changed, nor a trait
    assert rows(world) == before
    with world.n.db.read() as conn:
        traits = conn.execute(select(t.contacts.c.traits)).scalars().all()
    assert not any("vip" in (x or {}) for x in traits)


@pytest.mark.parametrize(
    ("reentry", "wait", "entries", "refused"),
    [
        ("never", None, [0], {"entered before (re-entry: never)": 3}),
        ("always", None, [0, 2, 3, 8], {}),
        ({"after": "7d"}, None, [0, 8], {"entered less than 7 days, 0:00:00 ago": 2}),
        ({"after": "1d"}, "5d", [0, 8], {"already in the journey": 2}),
    ],
)
def test_reentry_rules(
    world: World, reentry: Any, wait: str | None, entries: list[int], refused: dict[str, int]
) -> None:
    # Given a visitor on days 0, 2, 3 and 8
    world.identify("ann")
    for day in (0, 2, 3, 8):
        world.clock.set(T0 + day * D)
        world.track("ann", "Visited")
    world.clock.set(T0 + 14 * D)
    # When a welcome journey with this re-entry rule is back-tested
    steps = [{"id": "hello", "type": "send", "channel": "email", "template": "welcome"}]
    if wait is not None:
        steps.insert(0, {"id": "pause", "type": "wait", "for": wait})
    report = replay(world, {"key": "hello", "trigger": {"event": "Visited"},
                            "entry": {"reentry": reentry}, "steps": steps})  # fmt: skip
    # Then the visitor entered on these days only, refused for this reason otherwise
    delay = timedelta(days=5) if wait else timedelta(0)
    assert [m.at for m in report.messages] == [T0 + day * D + delay for day in entries]
    assert dict(report.refused) == refused


def test_holdout_share_is_the_configured_one_and_stable(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 400 sign-ups at the same moment, read back a few dozen at a time
    monkeypatch.setattr(backtest_module, "PAGE", 37)
    world.n.ingest([
        {"type": "track", "userId": f"u{i}", "event": "Signed Up", "messageId": f"s-{i}",
         "timestamp": T0.isoformat()}
        for i in range(400)
    ])  # fmt: skip
    world.run()
    # When a journey holding out a quarter is back-tested
    report = replay(world, {"key": "welcome_ab", "trigger": {"event": "Signed Up"},
                            "entry": {"holdout": 0.25}, "steps": [
        {"id": "hi", "type": "send", "channel": "email", "template": "welcome"}]})  # fmt: skip
    # Then everyone entered; the control group is the one `unit` picks, close to a quarter
    with world.n.db.read() as conn:
        ids = list(conn.execute(select(t.contacts.c.id)).scalars())
    control = {i for i in ids if unit("welcome_ab", i, "holdout") < 0.25}
    assert report.events == 400 and report.entered + report.control == 400
    assert report.control == len(control) and 70 <= len(control) <= 130
    assert {m.contact_id for m in report.messages} == set(ids) - control
    assert {e.contact_id for e in report.entrants if e.control} == control


def test_a_branch_sees_events_up_to_its_own_time(world: World) -> None:
    # Given three trials: ann creates a project a day in, cy only after the branch ran
    for user in ("ann", "bob", "cy"):
        world.identify(user)
        world.track(user, "Trial Started")
    world.advance(D)
    world.track("ann", "Project Created")
    world.advance(3 * D)
    world.track("cy", "Project Created")
    world.advance(D)
    # When a journey branching three days in on "created a project" is back-tested
    report = replay(world, {"key": "onboarding", "trigger": {"event": "Trial Started"}, "steps": [
        {"id": "wait", "type": "wait", "for": "3d"},
        {"id": "check", "type": "branch", "else": "tip_import", "cases": [
            {"if": {"event": "Project Created"}, "next": "tip_invite"}]},
        {"id": "tip_invite", "type": "send", "channel": "email", "template": "tip_invite",
         "next": "end"},
        {"id": "tip_import", "type": "send", "channel": "email", "template": "tip_import"},
    ]})  # fmt: skip
    # Then only ann's project counted: cy's came after the branch
    assert sent(report) == [
        ("ann", "tip_invite", "tip_invite", T0 + 3 * D),
        ("bob", "tip_import", "tip_import", T0 + 3 * D),
        ("cy", "tip_import", "tip_import", T0 + 3 * D),
    ]


def test_date_trigger_fires_at_local_time_in_the_period(world: World) -> None:
    # Given renewals on March 20 (Berlin) and April 30, and one outside the period
    world.identify("ann", renewal_date="2026-03-20", timezone="Europe/Berlin")
    world.identify("bob", renewal_date="2026-04-30")
    world.identify("cy", renewal_date="2026-09-01")
    world.clock.set(T0 + 60 * D)
    # When a notice a week before, at 10:00 local, is back-tested over 60 days
    report = replay(world, {"key": "renewal", "steps": [
        {"id": "notice", "type": "send", "channel": "email", "template": "renewal_notice"}],
        "trigger": {"date": "renewal_date", "before": "7d", "at": "10:00"}})  # fmt: skip
    # Then ann's notice went at 10:00 Berlin (09:00 UTC) on March 13, bob's at 10:00 UTC
    assert sent(report) == [
        ("ann", "notice", "renewal_notice", datetime(2026, 3, 13, 9, tzinfo=UTC)),
        ("bob", "notice", "renewal_notice", datetime(2026, 4, 23, 10, tzinfo=UTC)),
    ]


def test_schedule_trigger_enters_its_audience_as_of_each_fire(world: World) -> None:
    # Given ann, who signed up at once, and bob, who signed up ten days later
    world.identify("ann")
    world.track("ann", "Signed Up")
    world.advance(10 * D)
    world.identify("bob")
    world.track("bob", "Signed Up")
    world.clock.set(T0 + 20 * D)
    # When a Monday digest for everyone signed up is back-tested over 20 days
    report = replay(world, {"key": "digest", "entry": {"reentry": "always"}, "steps": [
        {"id": "digest", "type": "send", "channel": "email", "template": "usage_summary"}],
        "trigger": {"schedule": "0 9 * * 1", "audience": {"event": "Signed Up"}}})  # fmt: skip
    # Then each Monday's audience is who had signed up by then
    mondays = [datetime(2026, 3, d, 9, tzinfo=UTC) for d in (2, 9, 16)]
    assert [(u, at) for u, _, _, at in sent(report)] == [
        ("ann", mondays[0]), ("ann", mondays[1]), ("ann", mondays[2]), ("bob", mondays[2]),
    ]  # fmt: skip


def test_segment_trigger_replays_stored_segment_entries(world: World) -> None:
    # Given a segment of buyers that ann joined an hour in
    world.n.segments.save({"key": "buyers", "where": {"event": "Order Completed"}})
    world.identify("ann")
    world.advance(H)
    world.track("ann", "Order Completed")
    world.advance(D)
    # When a thank-you journey on entering the segment is back-tested
    report = replay(world, {"key": "thanks", "trigger": {"segment": "buyers"}, "steps": [
        {"id": "thanks", "type": "send", "channel": "email", "template": "welcome"}]})  # fmt: skip
    # Then ann was thanked when she entered it
    assert sent(report) == [("ann", "thanks", "welcome", T0 + H)]


@pytest.mark.parametrize(("definition", "history"), [(CART, cart_history), (TRIAL, trial_history)])
def test_the_backtest_agrees_with_the_live_engine(
    world: World, definition: dict[str, Any], history: Callable[[World], None]
) -> None:
    # Given the journey live while the history happens
    world.publish(definition)
    history(world)
    # When the same journey is back-tested over the same history
    calls: list[tuple[int, int]] = []
    report = replay(world, definition, progress=lambda done, total: calls.append((done, total)))
    # Then it sends what the live engine sent, at the same times
    live = [(m.contact_id, m.step, m.template, m.variant, m.created_at) for m in world.outbox()]
    simulated = [(m.contact_id, m.step, m.template, m.variant, m.at) for m in report.messages]
    assert sorted(simulated) == sorted(live) and live
    # And its enrolments end the same way, after the same step runs
    enrolments = world.enrolments(definition["key"])
    revenue = {c.contact_id: c.revenue for c in report.conversions}
    assert sorted(
        (e.contact_id, e.status, e.reason, revenue.get(e.contact_id)) for e in report.entrants
    ) == sorted((e.contact_id, e.status, e.end_reason, e.revenue) for e in enrolments)
    steps: Counter[tuple[str, str]] = Counter()
    for e in enrolments:
        steps.update(world.steps(e.id))
    assert steps == Counter(
        {(s, o): n for s, outcomes in report.steps.items() for o, n in outcomes.items()}
    )
    assert calls[-1][0] == calls[-1][1] > 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_cli_reports_a_draft_file_as_json_and_tables(
    world: World, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given stored history in a SQLite file, and a journey draft in a YAML file
    cart_history(world)
    draft = tmp_path / "cart.yaml"
    draft.write_text(yaml.safe_dump(CART))
    for name in list(os.environ):
        if name.startswith("NURTURE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NURTURE_DATABASE_URL", str(world.n.db.url))
    monkeypatch.setenv("NURTURE_PROJECT_DIR", str(project))
    app = typer.Typer()
    app.command()(backtest_command)
    period = ["--file", str(draft), "--from", T0.isoformat(), "--to", world.clock.now().isoformat()]
    # When it is back-tested as JSON
    result = CliRunner().invoke(app, [*period, "--format", "json"])
    # Then the report lists the messages and the conversion
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [m["template"] for m in data["messages"]] == [
        "cart_reminder", "cart_reminder", "cart_discount", "cart_sms",
    ]  # fmt: skip
    assert data["conversions"]["revenue"] == 80.5 and data["entered"] == 3
    assert data["messages"][0]["at"] == (T0 + H).isoformat()
    # And as tables, the first message listed and the rest counted
    shown = CliRunner().invoke(app, [*period, "--messages", "1"])
    assert shown.exit_code == 0, shown.output
    assert "Back-test of cart_test" in shown.stdout and "3 more" in shown.stdout
    assert "wait_hour" in shown.stdout and "traits are today's" in shown.stdout.lower()
    # And the published version, named by its key, back-tests the same
    world.publish(CART)
    published = CliRunner().invoke(app, ["cart_test", *period[2:], "--format", "json"])
    assert published.exit_code == 0, published.output
    assert json.loads(published.stdout)["messages"] == data["messages"]
    # And a file of another journey than the one named, or a bad period, is refused
    other = CliRunner().invoke(app, ["other", *period])
    assert other.exit_code == 2 and "'cart_test', not 'other'" in other.output
    bad = CliRunner().invoke(app, ["--file", str(draft), "--from", "soon"])
    assert bad.exit_code == 2 and "--from" in bad.output
