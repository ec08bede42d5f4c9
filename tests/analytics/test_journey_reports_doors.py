"""The journey, message, attribution and lifecycle reports through their doors: the admin
API and `nurture report`, running the examples of docs/analytics/journeys.md and
lifecycle.md as they are written (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import re
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.analytics.test_attribution import order
from tests.analytics.test_journey_metrics import JOURNEY, T0, Rows, build_known_world, publish
from tests.analytics.test_lifecycle_report import MODEL, known_history
from typer.testing import CliRunner

from nurture.cli.main import app
from nurture.core import Nurture

DOCS = Path(__file__).resolve().parents[2] / "docs" / "analytics"
runner = CliRunner()


def example(page: str, name: str) -> str:
    """The fenced block after `<!-- example: name -->` in docs/analytics/<page>."""
    text = (DOCS / page).read_text()
    found = re.search(rf"<!-- example: {name} -->\n```\w+\n(.*?)```", text, re.DOTALL)
    assert found, f"no example {name} in {page}"
    return found.group(1)


def requests(page: str, name: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in example(page, name).splitlines() if line.strip()]


def commands(page: str, name: str) -> list[list[str]]:
    return [shlex.split(line)[1:] for line in example(page, name).splitlines() if line.strip()]


@pytest.fixture
def world(nurture: Nurture) -> Nurture:
    """The known rows of test_journey_metrics, orders, and a stage history."""
    publish(nurture.db, JOURNEY)
    rows = Rows(nurture.db)
    build_known_world(rows)
    order(nurture.db, 1, T0 + timedelta(hours=3), revenue=30)  # contact 1 got m1 at T0+2h
    nurture.lifecycle.save("stage_model", "simple", MODEL)
    known_history(nurture)
    return nurture


def admin(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


def tables(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {t["key"]: t["rows"] for t in report["tables"]}


# -- the API --------------------------------------------------------------------------------
def test_the_documented_requests(world: Nurture, client: TestClient, admin_key: str) -> None:
    answers = []
    for page, name in (("journeys.md", "journey-api"), ("journeys.md", "attribution-api"),
                       ("lifecycle.md", "lifecycle-api")):  # fmt: skip
        for path in requests(page, name):
            answer = client.get(path, headers=admin(admin_key))
            assert answer.status_code == 200, (path, answer.text)
            answers.append(answer)
    journey, svg, messages, attribution, goals, stages, weeks, flows = answers
    report = journey.json()
    assert report["kind"] == "journey" and report["params"]["tz"] == "Europe/Paris"
    assert report["summary"]["sent"] == 5 and report["summary"]["opened"] == 1
    assert tables(report)["days"][0]["day"] == "2026-03-01"
    assert svg.headers["content-type"].startswith("image/svg")
    assert messages.json()["summary"]["sent"] == 3  # template hello: m1, m3, m4
    credited = [r for r in tables(attribution.json())["messages"] if r["conversions"]]
    assert [(r["template"], r["attributed_revenue"]) for r in credited] == [("hello", 30.0)]
    assert goals.json()["summary"]["conversions"] == 1  # enrolment 2's goal
    rows = tables(stages.json())["stages"]
    assert len(rows) == 10 and rows[2]["engaged"] == 2
    assert weeks.headers["content-type"].startswith("image/svg")
    listed = tables(flows.json())["contacts"]
    assert [r["contact_id"] for r in listed] == [1]


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/api/reports/journeys/nope", 404, "journey"),
        ("/api/reports/journeys/welcome?from=2026-03-05&to=2026-03-01", 400, "from"),
        ("/api/reports/journeys/welcome?tz=Nowhere/City", 400, "tz"),
        ("/api/reports/journeys/welcome?version=9", 400, "version"),
        ("/api/reports/messages?journey=nope", 404, "journey"),
        ("/api/reports/attribution?event=Order%20Completed&window=soon", 400, "window"),
        ("/api/reports/attribution?model=linear", 400, "model"),
        ("/api/reports/lifecycle/nope", 404, "model"),
        ("/api/reports/lifecycle/simple?every=month", 400, "every"),
        ("/api/reports/lifecycle/simple/flows?to=2026-02-01", 400, "from"),
    ],
)
def test_bad_requests_name_the_field(
    world: Nurture, client: TestClient, admin_key: str, path: str, status: int, field: str
) -> None:
    answer = client.get(path, headers=admin(admin_key))
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["path"] == field


def test_reports_need_the_admin_key(client: TestClient) -> None:
    assert client.get("/api/reports/messages").status_code == 401


# -- the command line -----------------------------------------------------------------------
def test_the_documented_commands(world: Nurture, cli_url: str, tmp_path: Path) -> None:
    outputs = []
    for page, name in (("journeys.md", "journey-cli"), ("journeys.md", "attribution-cli"),
                       ("lifecycle.md", "lifecycle-cli")):  # fmt: skip
        for args in commands(page, name):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, (args, result.output)
            outputs.append(result.stdout)
    journey, csv, as_json, messages, attribution, first, by_journey = outputs[:7]
    stages, weekly, flows, changes = outputs[7:]
    assert "Journey welcome" in journey and "Steps" in journey
    assert csv.splitlines()[0].startswith("version,step,template,variant,channel,sent,")
    assert json.loads(as_json)["summary"]["entered"] == 4
    assert (tmp_path / "welcome.svg").read_bytes().startswith(b"<?xml")
    assert messages.splitlines()[0].startswith("journey,version,step,template,")
    assert "Attribution of Order Completed" in attribution
    assert first.splitlines()[0].startswith("message,journey,version,step,")
    assert json.loads(by_journey)["params"]["window"] == "7d"
    assert "Contacts per stage" in stages and "engaged" in stages
    assert "Week of" in weekly
    assert (tmp_path / "stages.svg").read_bytes().startswith(b"<?xml")
    assert "Contacts who moved from new to at_risk" in flows
    assert changes.splitlines() == ["from,to,contacts", "engaged,at_risk,1", "at_risk,engaged,1"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["report", "journey", "nope"], "journey"),
        (["report", "journey", "welcome", "--from", "2026-03-05", "--to", "2026-03-01"], "from"),
        (["report", "messages", "--tz", "Nowhere/City"], "tz"),
        (["report", "attribution", "--window", "a while"], "window"),
        (["report", "lifecycle", "nope"], "model"),
        (["report", "flows", "simple", "--to", "2026-02-01"], "from"),
    ],
)
def test_bad_arguments_fail_naming_the_field(
    world: Nurture, cli_url: str, args: list[str], field: str
) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert f"error: {field}" in result.output, result.output
