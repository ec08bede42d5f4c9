"""Lifecycle reports: contacts per stage over time rebuilt from the stage history, and
the flows between stages, checked against histories whose answers are known and against
a brute-force reference; the last period agrees with the stages the engine stores."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from nurture.analytics.lifecycle_report import NEW, flows_report, stages_report
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.errors import NotFound, ValidationError
from nurture.store import tables as t

MODEL: dict[str, Any] = {
    "name": "Simple",
    "stages": [
        {"key": "new"},
        {"key": "engaged", "when": {"event": "Logged In", "within_last": "7d"}},
        {"key": "at_risk", "when": {"all": [{"event": "Logged In"},
                                            {"not": {"event": "Logged In", "within_last": "7d"}}]}},
    ],
}  # fmt: skip
D = datetime(2026, 2, 1, tzinfo=UTC)


def change(nurture: Nurture, contact: int, before: str | None, to: str, at: datetime) -> None:
    """A stage change as the engine records it."""
    with nurture.db.write() as conn:
        conn.execute(insert(t.stage_changes).values(
            model="simple", contact_id=contact, from_stage=before, to_stage=to, changed_at=at,
        ))  # fmt: skip


@pytest.fixture
def model(nurture: Nurture) -> str:
    nurture.lifecycle.save("stage_model", "simple", MODEL)
    return "simple"


def known_history(nurture: Nurture) -> None:
    # 1: new on day 1, engaged on day 2 at 23:30 UTC, at risk on day 10
    change(nurture, 1, None, "new", D)
    change(nurture, 1, "new", "engaged", D + timedelta(days=1, hours=23, minutes=30))
    change(nurture, 1, "engaged", "at_risk", D + timedelta(days=9, hours=5))
    # 2: engaged on day 3, at risk on day 5, engaged again on day 6
    change(nurture, 2, None, "new", D + timedelta(days=2))
    change(nurture, 2, "new", "engaged", D + timedelta(days=2, hours=1))
    change(nurture, 2, "engaged", "at_risk", D + timedelta(days=4))
    change(nurture, 2, "at_risk", "engaged", D + timedelta(days=5))


def test_contacts_per_stage_at_the_end_of_each_day(nurture: Nurture, model: str) -> None:
    known_history(nurture)
    report = stages_report(nurture.engine, model, start="2026-02-01", end="2026-02-10")
    got = {r["period"]: (r["new"], r["engaged"], r["at_risk"]) for r in report.table("stages").rows}
    assert got[date(2026, 2, 1)] == (1, 0, 0)
    assert got[date(2026, 2, 2)] == (0, 1, 0)  # 1 engaged at 23:30 UTC
    assert got[date(2026, 2, 3)] == (0, 2, 0)
    assert got[date(2026, 2, 5)] == (0, 1, 1)
    assert got[date(2026, 2, 6)] == (0, 2, 0)
    assert got[date(2026, 2, 10)] == (0, 1, 1)
    assert len(got) == 10 and report.summary == {"new": 0, "engaged": 1, "at_risk": 1}
    # In Paris (UTC+1) contact 1's 23:30 UTC move falls on the 3rd
    paris = stages_report(nurture.engine, model, start="2026-02-02", end="2026-02-02",
                          tz="Europe/Paris")  # fmt: skip
    assert [(r["new"], r["engaged"]) for r in paris.table("stages").rows] == [(1, 0)]


def test_weeks_start_on_monday(nurture: Nurture, model: str) -> None:
    known_history(nurture)
    report = stages_report(nurture.engine, model, start="2026-02-01", end="2026-02-14",
                           every="week")  # fmt: skip
    rows = report.table("stages").rows
    # 2026-02-01 is a Sunday: its week began on Monday 26 January
    assert [r["period"] for r in rows] == [date(2026, 1, 26), date(2026, 2, 2), date(2026, 2, 9)]
    assert [(r["engaged"], r["at_risk"]) for r in rows] == [(0, 0), (2, 0), (1, 1)]
    assert report.charts[0].kind == "stacked_bar"


def test_net_flows_changes_and_who_moved(nurture: Nurture, model: str) -> None:
    known_history(nurture)
    # Over days 4 to 6: contact 2 went engaged → at_risk → engaged (net: no move)
    net = flows_report(nurture.engine, model, start="2026-02-04", end="2026-02-06")
    assert net.table("flows").rows == []
    changes = flows_report(nurture.engine, model, start="2026-02-04", end="2026-02-06",
                           mode="changes")  # fmt: skip
    assert [(r["from"], r["to"], r["contacts"]) for r in changes.table("flows").rows] == [
        ("engaged", "at_risk", 1), ("at_risk", "engaged", 1)]  # fmt: skip
    # Over the whole history, net: both entered (from NEW); over days 2 to 10: one moved
    whole = flows_report(nurture.engine, model, start="2026-02-01", end="2026-02-28")
    assert {(r["from"], r["to"]): r["contacts"] for r in whole.table("flows").rows} == {
        (NEW, "at_risk"): 1, (NEW, "engaged"): 1}  # fmt: skip
    later = flows_report(nurture.engine, model, start="2026-02-02", end="2026-02-28",
                         from_stage="new", to_stage="at_risk", limit=5)  # fmt: skip
    assert [(r["from"], r["to"], r["contacts"]) for r in later.table("flows").rows] == [
        (NEW, "engaged", 1), ("new", "at_risk", 1)]  # fmt: skip
    listed = later.table("contacts").rows
    assert [(r["contact_id"], r["moved_at"]) for r in listed] == [
        (1, D + timedelta(days=9, hours=5))]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "path"),
    [
        (lambda e: stages_report(e, "simple", every="month"), "every"),
        (lambda e: stages_report(e, "simple", start="2020-01-01", end="2026-01-01"), "every"),
        (lambda e: stages_report(e, "simple", start="2026-02-02", end="2026-02-01"), "from"),
        (lambda e: flows_report(e, "simple", start=None, end="2026-02-01"), "from"),
        (lambda e: flows_report(e, "simple", start="2026-02-01", end="2026-02-02",
                                mode="gross"), "mode"),
        (lambda e: flows_report(e, "simple", start="2026-02-01", end="2026-02-02",
                                from_stage="new"), "to_stage"),
        (lambda e: flows_report(e, "simple", start="2026-02-01", end="2026-02-02",
                                limit=0), "limit"),
    ],
)  # fmt: skip
def test_bad_input_names_the_field(nurture: Nurture, model: str, call: Any, path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        call(nurture.engine)
    assert caught.value.path == path


def test_an_unknown_model_is_not_found(nurture: Nurture, model: str) -> None:
    with pytest.raises(NotFound) as caught:
        stages_report(nurture.engine, "nope")
    assert caught.value.path == "model"


def test_agrees_with_a_brute_force_reference(nurture: Nurture, model: str) -> None:
    rng = random.Random(4)
    history: list[tuple[int, str, datetime]] = []
    for contact in range(1, 16):
        at, stage = D + timedelta(hours=rng.randint(0, 200)), None
        for _ in range(rng.randint(1, 5)):
            to = rng.choice([s for s in ("new", "engaged", "at_risk") if s != stage])
            change(nurture, contact, stage, to, at)
            history.append((contact, to, at))
            stage, at = to, at + timedelta(hours=rng.randint(1, 100))
    report = stages_report(nurture.engine, model, start="2026-02-01", end="2026-02-20")
    for row in report.table("stages").rows:
        moment = row["ends"]
        latest: dict[int, tuple[datetime, str]] = {}
        for contact, to, at in history:  # brute force: each contact's last change before
            if at < moment and (contact not in latest or at >= latest[contact][0]):
                latest[contact] = (at, to)
        expected = Counter(to for _, to in latest.values())
        assert {s: row[s] for s in ("new", "engaged", "at_risk")} == {
            s: expected.get(s, 0) for s in ("new", "engaged", "at_risk")}  # fmt: skip


def test_the_last_period_agrees_with_the_stored_stages(
    nurture: Nurture, clock: SimulatedClock, model: str
) -> None:
    # Given contacts whose stages the engine evaluates as they log in and go quiet
    def login(user: str) -> None:
        nurture.ingest([{"type": "track", "userId": user, "event": "Logged In",
                         "timestamp": clock.now().isoformat()}])  # fmt: skip

    nurture.ingest([{"type": "identify", "userId": u, "timestamp": clock.now().isoformat()}
                    for u in ("a", "b", "c")])  # fmt: skip
    nurture.engine.evaluate_pending()
    login("a")
    login("b")
    nurture.engine.evaluate_pending()
    clock.advance(timedelta(days=10))
    login("a")
    nurture.engine.evaluate_pending()
    nurture.engine.evaluate_all()
    # When the report runs up to today
    report = stages_report(nurture.engine, model)
    # Then its last day shows what the engine stores now
    last = report.table("stages").rows[-1]
    stored = nurture.lifecycle.counts(model)
    assert {s: last[s] for s in stored} == stored == {"new": 1, "engaged": 1, "at_risk": 1}
