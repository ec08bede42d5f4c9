"""`nurture apply` with a journey file, then `nurture journeys …` (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nurture.cli.main import app

runner = CliRunner()

JOURNEY = """\
key: welcome
trigger: {api: true}
steps:
  - {id: hello, type: send, channel: email, template: welcome}
"""


@pytest.fixture
def workdir(cli_url: str, tmp_path: Path) -> Path:
    """A project folder as the working directory, with NURTURE_DATABASE_URL set."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "welcome.yaml").write_text(
        "email: {subject: Hello, html: '<p>Hello</p>'}\n"
    )
    (tmp_path / "journeys").mkdir()
    (tmp_path / "journeys" / "welcome.yaml").write_text(JOURNEY)
    return tmp_path


def test_apply_then_manage_a_journey(workdir: Path) -> None:
    applied = runner.invoke(app, ["apply"])
    assert applied.exit_code == 0, applied.output
    assert "+ journey welcome" in applied.output
    listed = runner.invoke(app, ["journeys", "list"])
    assert "welcome" in listed.output and "active" in listed.output
    shown = runner.invoke(app, ["journeys", "show", "welcome"])
    assert '"template": "welcome"' in shown.output
    paused = runner.invoke(app, ["journeys", "pause", "welcome"])
    assert "paused" in paused.output
    again = runner.invoke(app, ["journeys", "pause", "welcome"])
    assert again.exit_code == 2 and "only a journey that is active" in again.output
    refused = runner.invoke(app, ["journeys", "enrol", "welcome", "1"])
    assert refused.exit_code == 2
    resumed = runner.invoke(app, ["journeys", "resume", "welcome"])
    assert resumed.exit_code == 0 and "active" in resumed.output
    entered = runner.invoke(app, ["journeys", "enrol", "welcome", "1"])
    assert entered.exit_code == 0 and "refused: no such contact" in entered.output
    archived = runner.invoke(app, ["journeys", "archive", "welcome"])
    assert "archived" in archived.output


def test_a_wrong_journey_file_fails_validate_with_its_path(workdir: Path) -> None:
    (workdir / "journeys" / "welcome.yaml").write_text(
        JOURNEY.replace("template: welcome", "template: nope")
    )
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 2
    assert "journeys/welcome.yaml.steps[0].template" in result.output
