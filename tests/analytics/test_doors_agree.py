"""Every number is reproducible from both doors: the same question asked of the admin API
and of `nurture report … --format json` gets the same report, figure for figure (SQLite
and PostgreSQL). The rows are the known ones of the journey-report tests."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.analytics.test_journey_reports_doors import admin
from tests.analytics.test_journey_reports_doors import world as world  # the fixture
from typer.testing import CliRunner

from nurture.cli.main import app
from nurture.core import Nurture

runner = CliRunner()

# (API path, CLI arguments): the same question. Every range is explicit, because the CLI
# runs on the wall clock and the test's server on a simulated one.
QUESTIONS = [
    (
        "/api/reports/journeys/welcome?from=2026-03-01&to=2026-03-07&tz=Europe/Paris",
        ["report", "journey", "welcome", "--from", "2026-03-01", "--to", "2026-03-07",
         "--tz", "Europe/Paris"],
    ),
    (
        "/api/reports/messages?journey=welcome&from=2026-02-01&to=2026-04-01",
        ["report", "messages", "--journey", "welcome", "--from", "2026-02-01", "--to",
         "2026-04-01"],
    ),
    (
        "/api/reports/attribution?event=Order%20Completed&window=3d&from=2026-02-01&to=2026-04-01",
        ["report", "attribution", "--event", "Order Completed", "--window", "3d", "--from",
         "2026-02-01", "--to", "2026-04-01"],
    ),
    (
        "/api/reports/lifecycle/simple?from=2026-02-01&to=2026-02-10&every=day",
        ["report", "lifecycle", "simple", "--from", "2026-02-01", "--to", "2026-02-10"],
    ),
    (
        "/api/reports/lifecycle/simple/flows?from=2026-02-02&to=2026-02-28",
        ["report", "flows", "simple", "--from", "2026-02-02", "--to", "2026-02-28"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("path", "args"), QUESTIONS, ids=[q[1][1] for q in QUESTIONS])
def test_the_api_and_the_cli_give_the_same_report(
    world: Nurture, client: TestClient, admin_key: str, cli_url: str, path: str, args: list[str]
) -> None:
    answer = client.get(path, headers=admin(admin_key))
    assert answer.status_code == 200, answer.text
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    from_api: dict[str, Any] = answer.json()
    from_cli: dict[str, Any] = json.loads(result.stdout)
    # Something was counted, and both doors counted it alike.
    assert any(table["rows"] for table in from_api["tables"])
    assert from_cli == from_api
