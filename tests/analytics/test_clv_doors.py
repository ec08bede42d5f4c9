"""CLV from Nurture's events through its doors: the fit and report from the admin API and
the CLI, the stored predictions as `clv` computed traits in segments (SQL and in-memory
agree), erasure, and clear errors — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from tests.analytics.clv_data import simulated_purchases, store_purchases
from typer.testing import CliRunner

from nurture.analytics.clv import fit_bgnbd
from nurture.analytics.clv_store import ClvService
from nurture.cli.main import app
from nurture.conditions.compile import SqlCompiler
from nurture.conditions.computed import parse_computed
from nurture.conditions.env import Env
from nurture.conditions.facts import load_facts
from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t

START = datetime(2025, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # the `clock` fixture's
runner = CliRunner()


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def shop(nurture: Nurture) -> list[tuple[int, datetime, Any]]:
    """400 simulated customers over 420 days, the last 5 of them lapsed big spenders."""
    purchases = simulated_purchases(11, 400, START, 420, whales=5)
    store_purchases(nurture.db, purchases, now=NOW)
    return purchases


def stored_predictions(db: Database) -> dict[int, dict[str, Any]]:
    p = t.clv_predictions.c
    with db.read() as conn:
        rows = conn.execute(select(t.clv_predictions).where(p.model == "default")).all()
    return {row.contact_id: dict(row._mapping) for row in rows}


def test_fit_from_the_api_stores_the_model_and_every_purchasers_prediction(
    nurture: Nurture, client: TestClient, admin_key: str, shop: list[Any]
) -> None:
    # Given a shop's purchase events
    # When fitting through the admin API
    answer = client.post("/api/reports/clv/fit?top=5", headers=headers(admin_key))
    # Then the report names the model, its parameters and fit, and lists the top 5
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["kind"] == "clv"
    tables = {tb["key"]: tb for tb in report["tables"]}
    assert set(tables) == {"parameters", "fit", "p_alive", "value_deciles", "top_customers"}
    assert {r["parameter"] for r in tables["parameters"]["rows"]} == {
        "r", "alpha", "a", "b", "p", "q", "gamma"
    }  # fmt: skip
    assert all(row["converged"] for row in tables["fit"]["rows"])
    # And every purchaser has a prediction; the parameters are those of an independent
    # fit of the stored (x, t_x, T), and the summary counts them
    predictions = stored_predictions(nurture.db)
    assert len(predictions) == len({cid for cid, _, _ in shop}) == report["summary"]["customers"]
    rows = list(predictions.values())
    again, _ = fit_bgnbd(*(np.array([r[k] for r in rows]) for k in ("x", "t_x", "T")))
    assert report["summary"]["r"] == pytest.approx(again.r, rel=1e-6)
    # And the P(alive) buckets count every customer once, by the stored values
    alive = np.array([r["p_alive"] for r in rows])
    buckets = [row["customers"] for row in tables["p_alive"]["rows"]]
    assert sum(buckets) == len(rows)
    assert buckets[9] == int(np.sum(alive >= 0.9))
    assert buckets[0] == int(np.sum(alive < 0.1))
    # And the top customers are the 5 highest expected values, highest first
    values = sorted((r["expected_value"] for r in rows), reverse=True)[:5]
    top = tables["top_customers"]["rows"]
    assert [r["expected_value"] for r in top] == pytest.approx(values)
    # And decile 1 holds the most valuable tenth; the deciles' totals add up
    deciles = tables["value_deciles"]["rows"]
    assert deciles[0]["customers"] == len(rows) // 10
    ranked = sorted((r["expected_value"] for r in rows), reverse=True)
    assert deciles[0]["total"] == pytest.approx(sum(ranked[: len(rows) // 10]))
    assert sum(d["total"] for d in deciles) == pytest.approx(sum(r["expected_value"] for r in rows))
    # And GET answers the same stored model; ?chart=svg draws it
    same = client.get("/api/reports/clv?top=5", headers=headers(admin_key)).json()
    assert same["summary"] == report["summary"]
    image = client.get("/api/reports/clv?chart=svg", headers=headers(admin_key))
    assert image.headers["content-type"].startswith("image/svg+xml")


def test_predictions_follow_the_definitions_from_the_events(nurture: Nurture) -> None:
    # Given Ann: orders of 10 and 5 on 2026-01-05 (one purchase day), 30 on 01-19 at
    # midnight and 20.5 on 02-02; Bob: one order on 2026-02-20; Cy: an order without
    # revenue on 01-10, another with "12" (text, not a number) on 02-01
    purchases = [
        (1, datetime(2026, 1, 5, 9, tzinfo=UTC), 10),
        (1, datetime(2026, 1, 5, 23, 59, tzinfo=UTC), 5),
        (1, datetime(2026, 1, 19, 0, 0, tzinfo=UTC), 30),
        (1, datetime(2026, 2, 2, 12, tzinfo=UTC), 20.5),
        (2, datetime(2026, 2, 20, 12, tzinfo=UTC), 99),
        (3, datetime(2026, 1, 10, 12, tzinfo=UTC), None),
        (3, datetime(2026, 2, 1, 12, tzinfo=UTC), "12"),
    ]
    store_purchases(nurture.db, purchases, now=NOW)
    service = ClvService(nurture.db, nurture.clock, {"unit": "days"})
    # When summarising as of now (2026-03-01 12:00)
    with nurture.db.read() as conn:
        c = service.customers(conn)
    assert c.contact_id.tolist() == [1, 2, 3]
    # Then x counts purchase days after the first, t_x and T are whole days
    assert c.x.tolist() == [2, 0, 1]
    assert c.t_x.tolist() == [28, 0, 22]  # Jan 5 → Feb 2; Jan 10 → Feb 1
    assert c.T.tolist() == [55, 9, 50]  # to Mar 1
    # And monetary is the repeat days' revenue over x (the first day's 15 left out);
    # Cy's repeat purchase has no numeric revenue
    assert c.monetary[0] == pytest.approx((30 + 20.5) / 2)
    assert np.isnan(c.monetary[1])
    assert c.monetary[2] == 0.0
    # And in weeks the same days are divided by 7
    weekly = ClvService(nurture.db, nurture.clock, {"unit": "weeks"})
    with nurture.db.read() as conn:
        w = weekly.customers(conn)
    assert w.T.tolist() == pytest.approx([55 / 7, 9 / 7, 50 / 7])


def test_calibration_end_and_unit_change_alpha_not_the_predictions(
    nurture: Nurture, shop: list[Any]
) -> None:
    # Given the same purchases fitted in days and in weeks
    days = ClvService(nurture.db, nurture.clock, {"unit": "days", "horizon": "90d"})
    weeks = ClvService(nurture.db, nurture.clock, {"unit": "weeks", "horizon": "90d"})
    in_days = days.fit("in_days")["parameters"]["bgnbd"]
    in_weeks = weeks.fit("in_weeks")["parameters"]["bgnbd"]
    # Then alpha scales by 7 and r, a, b do not change; the predictions are the same
    assert in_weeks["alpha"] == pytest.approx(in_days["alpha"] / 7, rel=1e-4)
    for name in ("r", "a", "b"):
        assert in_weeks[name] == pytest.approx(in_days[name], rel=1e-4)
    p = t.clv_predictions.c
    with nurture.db.read() as conn:
        by_model = {
            model: dict(
                conn.execute(
                    select(p.contact_id, p.expected_purchases).where(p.model == model)
                ).all()
            )
            for model in ("in_days", "in_weeks")
        }
    for cid, value in by_model["in_days"].items():
        assert by_model["in_weeks"][cid] == pytest.approx(value, rel=1e-3, abs=1e-9)
    # And a calibration end leaves later purchases out and is recorded
    cut = ClvService(nurture.db, nurture.clock, {"calibration_end": "2025-06-30"})
    stored = cut.fit("cut")
    assert stored["fit"]["calibration_end"] == "2025-06-30"
    early = {cid for cid, at, _ in shop if at.date() <= date(2025, 6, 30)}
    assert stored["customers"] == len(early)


def test_a_segment_on_clv_traits_selects_valuable_customers_at_risk(
    nurture: Nurture, client: TestClient, admin_key: str, shop: list[Any]
) -> None:
    # Given the fitted model and two computed traits reading its predictions
    ClvService.of(nurture).fit()
    nurture.lifecycle.save("computed", "clv_value", {"kind": "clv", "measure": "expected_value"})
    nurture.lifecycle.save("computed", "clv_alive", {"kind": "clv", "measure": "p_alive"})
    where = {"all": [{"computed": "clv_value", "gt": 500}, {"computed": "clv_alive", "lt": 0.3}]}
    # When previewing "expected value > 500 and P(alive) < 0.3"
    answer = client.post(
        "/api/segments/preview?sample=100", json={"where": where}, headers=headers(admin_key)
    )
    assert answer.status_code == 200, answer.text
    # Then it selects exactly the customers whose stored predictions say so: the lapsed
    # big spenders
    expected = {
        cid
        for cid, row in stored_predictions(nurture.db).items()
        if row["expected_value"] > 500 and row["p_alive"] < 0.3
    }
    assert expected and expected <= set(range(396, 401))
    assert answer.json()["count"] == len(expected)
    assert {m["id"] for m in answer.json()["sample"]} == expected
    # And a saved segment's members, evaluated for everyone, are the same
    nurture.segments.save({"key": "at_risk_value", "where": where})
    nurture.engine.evaluate_all()
    m = t.segment_memberships.c
    with nurture.db.read() as conn:
        members = set(
            conn.execute(select(m.contact_id).where(m.segment_key == "at_risk_value")).scalars()
        )
    assert members == expected


@pytest.mark.parametrize(
    "measure", ["p_alive", "expected_purchases", "expected_spend", "expected_value"]
)
def test_clv_traits_agree_in_sql_and_in_memory(
    nurture: Nurture, shop: list[Any], measure: str
) -> None:
    # Given a fitted model, and a trait on another model that was never fitted
    ClvService.of(nurture).fit()
    trait = parse_computed({"key": "v", "kind": "clv", "measure": measure})
    missing = parse_computed({"key": "w", "kind": "clv", "measure": measure, "model": "other"})
    env = Env(now=NOW, computed={"v": trait, "w": missing})
    compiler = SqlCompiler(env, nurture.db.backend)
    with nurture.db.read() as conn:
        ids = list(range(1, 402))  # 401 does not exist
        facts = load_facts(conn, ids, now=NOW)
        for definition in (trait, missing):
            rows = conn.execute(select(t.contacts.c.id, definition.sql_value(compiler).expr)).all()
            in_sql = dict(rows)
            # Then every contact's value is the same both ways (None where not predicted)
            assert in_sql == {cid: definition.value(f, env) for cid, f in facts.items()}
    assert all(v is None for v in (missing.value(f, env) for f in facts.values()))


def test_erasure_removes_the_contacts_predictions(nurture: Nurture, shop: list[Any]) -> None:
    # Given predictions for contact 7
    ClvService.of(nurture).fit()
    assert 7 in stored_predictions(nurture.db)
    # When erasing contact 7, Then its predictions are gone and the others stay
    nurture.privacy.erase(7)
    after = stored_predictions(nurture.db)
    assert 7 not in after and 8 in after


def test_errors_name_what_is_wrong(nurture: Nurture, client: TestClient, admin_key: str) -> None:
    # Given no purchases: the report before a fit is a 404 naming the model
    answer = client.get("/api/reports/clv", headers=headers(admin_key))
    assert answer.status_code == 404
    assert answer.json()["error"]["path"] == "model"
    # And a fit without customers is refused, saying why
    answer = client.post("/api/reports/clv/fit", headers=headers(admin_key))
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "clv_fit_failed"
    assert "nobody made a purchase" in answer.json()["error"]["message"]
    # And a bad model key is refused naming the field
    answer = client.get("/api/reports/clv?model=no%20spaces", headers=headers(admin_key))
    assert answer.status_code == 422
    assert answer.json()["error"]["path"] == "model"
    # And a calibration end after today names the setting
    service = ClvService(nurture.db, nurture.clock, {"calibration_end": "2026-03-02"})
    with pytest.raises(Exception, match="after today") as caught:
        service.fit()
    assert getattr(caught.value, "path", None) == "clv.calibration_end"


def test_cli_fits_and_prints_the_reports(cli_url: str, tmp_path: Path) -> None:
    # Given a shop's purchases in 2025, a calibration period ending 2025-12-31
    db = Database(cli_url)
    db.migrate()
    store_purchases(db, simulated_purchases(5, 300, START, 360), now=NOW)
    db.dispose()
    env = {"NURTURE_CLV": json.dumps({"calibration_end": "2025-12-31"})}
    # When fitting from the terminal, as JSON
    fitted = runner.invoke(app, ["report", "clv", "--fit", "--format", "json"], env=env)
    # Then the report is the API's JSON
    assert fitted.exit_code == 0, fitted.output
    report = json.loads(fitted.stdout)
    assert report["kind"] == "clv" and report["summary"]["calibration_end"] == "2025-12-31"
    # And the stored model prints as tables, with a P(alive) chart on request
    chart = tmp_path / "alive.svg"
    shown = runner.invoke(app, ["report", "clv", "--top", "3", "--chart", str(chart)], env=env)
    assert shown.exit_code == 0, shown.output
    assert "Customers by probability alive" in shown.stdout and chart.read_text().startswith("<")
    # And the p_alive table as CSV has ten buckets
    csv = runner.invoke(app, ["report", "clv", "--format", "csv", "--table", "p_alive"], env=env)
    assert csv.exit_code == 0 and len(csv.stdout.strip().splitlines()) == 11
    # And the RFM report prints its segments
    rfm = runner.invoke(app, ["report", "rfm", "--format", "csv"], env=env)
    assert rfm.exit_code == 0, rfm.output
    assert rfm.stdout.splitlines()[0].startswith("segment,rule,customers")
    # And an unknown model is an error naming it, exit code 2
    missing = runner.invoke(app, ["report", "clv", "--model", "nope"], env=env)
    assert missing.exit_code == 2 and "no CLV model 'nope'" in missing.output
