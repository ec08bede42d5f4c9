"""The holdout lift report on a real journey (SQLite and PostgreSQL): treated contacts (who
got the message) against held-out ones (who did not), checked against statsmodels and
SciPy computed from what each customer got and did."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from scipy import stats as sp
from starlette.testclient import TestClient
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from tests.analytics.ab_world import buys, everyone_does, templates_by_user, worlds
from tests.journeys.world import World
from typer.testing import CliRunner

from nurture.analytics.experiments import lift_report
from nurture.cli.main import app
from nurture.clock import SimulatedClock
from nurture.errors import ValidationError
from nurture.store import Database


@pytest.fixture
def world(db: Database, clock: SimulatedClock, tmp_path: Path) -> Iterator[World]:
    yield from worlds(db, clock, tmp_path)


HOLDOUT: dict[str, Any] = {
    "key": "winback",
    "trigger": {"event": "Churn Risk"},
    "entry": {"holdout": 0.3},
    "goal": {"event": "Purchased", "revenue": "amount", "within": "7d"},
    "steps": [{"id": "offer", "type": "send", "channel": "email", "template": "welcome"}],
}
USERS = [f"w{i:03d}" for i in range(200)]


def _run(world: World) -> tuple[set[str], dict[str, float]]:
    """Everyone enters; treated customers buy more often. Returns the treated (those with
    a message) and what each buyer spent within the goal's window."""
    world.publish(HOLDOUT)
    everyone_does(world, USERS, "Churn Risk")
    treated = set(templates_by_user(world, "winback"))
    spend: dict[str, float] = {}
    for i, user in enumerate(USERS):
        if (user in treated and i % 3 == 0) or i % 8 == 0:
            spend[user] = float(20 + i % 5 * 10)
    world.advance(timedelta(days=2))
    buys(world, spend)
    # Purchases after the goal's window convert nobody
    world.advance(timedelta(days=6))
    buys(world, {u: 99.0 for u in USERS if u not in spend and USERS.index(u) % 7 == 0})
    return treated, spend


def test_lift_matches_the_references(world: World) -> None:
    # Given 200 customers, about 30% held out, and purchases by a known rule
    treated, spend = _run(world)
    control = [u for u in USERS if u not in treated]
    assert 40 < len(control) < 80  # the holdout share holds, roughly
    # When we ask for the lift report
    report = lift_report(world.n, "winback")
    # Then each arm counts its contacts and conversions exactly
    arms = {"treated": [u for u in USERS if u in treated], "control": control}
    conv = {k: sum(1 for u in v if u in spend) for k, v in arms.items()}
    rows = {r["arm"]: r for r in report.table("arms").rows}
    for arm, members in arms.items():
        assert (rows[arm]["contacts"], rows[arm]["conversions"]) == (len(members), conv[arm])
        assert rows[arm]["revenue"] == pytest.approx(sum(spend.get(u, 0) for u in members))
    # And the lift's statistics are statsmodels' and SciPy's
    nt, nc, xt, xc = len(arms["treated"]), len(control), conv["treated"], conv["control"]
    lift = {r["measure"]: r for r in report.table("lift").rows}
    diff = lift["conversion rate difference"]
    assert diff["value"] == pytest.approx(xt / nt - xc / nc)
    assert diff["p_value"] == pytest.approx(proportions_ztest([xt, xc], [nt, nc])[1])
    low, high = confint_proportions_2indep(xt, nt, xc, nc, method="newcomb", compare="diff")
    assert (diff["low"], diff["high"]) == pytest.approx((low, high))
    rel = lift["relative lift"]
    r_low, r_high = confint_proportions_2indep(xt, nt, xc, nc, method="log", compare="ratio")
    assert rel["value"] == pytest.approx((xt / nt) / (xc / nc) - 1)
    assert (rel["low"], rel["high"]) == pytest.approx((r_low - 1, r_high - 1))
    money = lift["revenue per recipient difference"]
    welch = sp.ttest_ind(
        [spend.get(u, 0.0) for u in arms["treated"]],
        [spend.get(u, 0.0) for u in control],
        equal_var=False,
    )
    ci = welch.confidence_interval(0.95)
    assert money["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
    assert (money["low"], money["high"]) == pytest.approx((ci.low, ci.high), rel=1e-6)
    assert report.summary["incremental_conversions"] == pytest.approx((xt / nt - xc / nc) * nt)
    significant = proportions_ztest([xt, xc], [nt, nc])[1] < 0.05
    assert report.summary["result"] == ("" if significant else "not yet ") + "significant at 95%"


def test_entry_window_and_confidence(world: World) -> None:
    _run(world)
    entered = world.clock.now() - timedelta(days=8)
    none = lift_report(world.n, "winback", start=entered + timedelta(hours=1))
    assert report_contacts(none) == (0, 0)
    wide = lift_report(world.n, "winback", confidence=0.99)
    narrow = lift_report(world.n, "winback", confidence=0.9)
    w = wide.table("lift").rows[0]
    n = narrow.table("lift").rows[0]
    assert w["low"] < n["low"] < n["high"] < w["high"]


def report_contacts(report: Any) -> tuple[int, int]:
    return report.summary["treated"], report.summary["control"]


def test_a_journey_without_holdout_or_goal_is_refused(world: World) -> None:
    world.publish({**HOLDOUT, "key": "no_holdout", "entry": {}})
    with pytest.raises(ValidationError, match="holds nobody out") as caught:
        lift_report(world.n, "no_holdout")
    assert caught.value.path == "journey"
    world.publish({k: v for k, v in HOLDOUT.items() if k != "goal"} | {"key": "no_goal"})
    with pytest.raises(ValidationError, match="no goal"):
        lift_report(world.n, "no_goal")


def test_the_api_and_the_cli(world: World, client: TestClient, cli_url: str) -> None:
    treated, _ = _run(world)
    key = world.n.keys.create("admin", "t")[1]
    answer = client.get("/api/reports/lift/winback", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["summary"]["treated"] == len(treated)
    bad = client.get(
        "/api/reports/lift/winback?to=2026-01-01T00:00:00",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["path"] == "to"
    out = CliRunner().invoke(
        app, ["report", "lift", "winback", "--format", "csv", "--table", "arms"]
    )
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[1].startswith(f"treated,{len(treated)},")
