"""`nurture templates list | validate | preview` on a project folder (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nurture.cli.main import app

runner = CliRunner()


@pytest.fixture
def workdir(cli_url: str, tmp_path: Path) -> Path:
    """A project folder with one template, as the working directory."""
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "hello.yaml").write_text(
        "defaults: {first_name: there}\n"
        "sms: {body: 'Hi {{ contact.first_name }}, {{ 1234.5 | number }}'}\n"
        "locales: {de: {sms: {body: 'Hallo {{ contact.first_name }}, {{ 1234.5 | number }}'}}}\n"
    )
    return tmp_path


def test_list_validate_and_preview(workdir: Path) -> None:
    # Given a project template / Then it is listed and valid
    listed = runner.invoke(app, ["templates", "list"])
    assert listed.exit_code == 0, listed.output
    assert "hello" in listed.output and "sms" in listed.output
    valid = runner.invoke(app, ["templates", "validate"])
    assert valid.exit_code == 0 and "1 template valid" in valid.output
    # When a contact exists and the template is previewed for it in German
    from nurture.core import Nurture

    with Nurture() as n:
        n.ingest([{"type": "identify", "userId": "u", "messageId": "m", "traits": {"x": 1}}])
    shown = runner.invoke(
        app, ["templates", "preview", "hello", "--contact", "1", "--locale", "de-DE", "--json"]
    )
    # Then the German body renders with German numbers and the default name
    assert shown.exit_code == 0, shown.output
    content = json.loads(shown.output)["content"]
    assert content["body"] == "Hallo there, 1.234,5"
    assert (content["encoding"], content["segments"]) == ("GSM-7", 1)
    plain = runner.invoke(app, ["templates", "preview", "hello", "--contact", "1"])
    assert "body: Hi there, 1,234.5" in plain.output
    # And an unknown contact is an error
    missing = runner.invoke(app, ["templates", "preview", "hello", "--contact", "99"])
    assert missing.exit_code == 2 and "no contact with id 99" in missing.output


def test_validate_reports_file_field_line_and_column(workdir: Path) -> None:
    # Given a template with a typo in a trait name
    (workdir / "templates" / "oops.yaml").write_text(
        "sms:\n  body: 'Hi {{ contact.frist_name }}'\n"
    )
    # When validated
    result = runner.invoke(app, ["templates", "validate"])
    # Then the command fails naming the file, field and position
    assert result.exit_code == 2
    assert "templates/oops.yaml.sms.body" in result.output
    assert "'frist_name' is not a standard trait" in result.output
    assert "(line 1, column 7)" in result.output
