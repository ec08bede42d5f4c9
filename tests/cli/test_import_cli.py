"""`nurture import FILE` on a SQLite database: summary, JSON output, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from nurture.cli.main import app

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with its own SQLite database and no nurture.yaml."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NURTURE_CONFIG", raising=False)
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{tmp_path / 'nurture.db'}")
    monkeypatch.setenv("NURTURE_SQLITE_SYNCHRONOUS", "NORMAL")
    return tmp_path


def jsonl(path: Path, lines: list[object]) -> Path:
    path.write_bytes(
        b"".join((x.encode() if isinstance(x, str) else orjson.dumps(x)) + b"\n" for x in lines)
    )
    return path


def test_import_prints_a_summary_with_rejected_lines(workdir: Path) -> None:
    # Given a JSONL file with a line that is not JSON at line 3
    path = jsonl(
        workdir / "events.jsonl",
        [
            {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "a"},
            {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
            "{oops",
        ],
    )
    # When it is imported
    result = runner.invoke(app, ["import", str(path)])
    # Then the command succeeds and the summary shows the counts and the bad line
    assert result.exit_code == 0, result.output
    assert re.search(r"accepted\s*│\s*2\s", result.stdout), result.stdout
    assert re.search(r"rejected\s*│\s*1\s", result.stdout)
    assert re.search(r"│\s*3\s*│\s*invalid_json", result.stdout)
    # And `nurture rejected list` shows the line it came from
    listed = runner.invoke(app, ["rejected", "list", "--json"])
    assert [json.loads(x)["source"] for x in listed.stdout.splitlines()] == [
        "import events.jsonl:3"
    ]


def test_import_json_output_and_rerun_adds_nothing(workdir: Path) -> None:
    # Given a CSV of events with a typed column
    path = workdir / "orders.csv"
    path.write_text("user,what,amount\nu1,Order Completed,9.5\nu2,Order Completed,x\n")
    args = ["import", str(path), "--kind", "events", "--map", "user=userId"]
    args += ["--map", "what=event", "--map", "amount=properties.total:number", "--json"]
    # When it is imported twice with --json
    first = runner.invoke(app, args)
    second = runner.invoke(app, args)
    # Then the JSON summaries count one accepted row, then one duplicate,
    # and name the rejected row by its line
    assert first.exit_code == 0, first.output
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert (one["kind"], one["accepted"], one["rejected"]) == ("events", 1, 1)
    assert one["rejectedSamples"][0]["line"] == 3
    assert one["rejectedSamples"][0]["path"] == "properties.total"
    assert (two["accepted"], two["duplicates"]) == (0, 1)


def test_import_of_a_missing_file_fails(workdir: Path) -> None:
    # Given no such file; When it is imported
    result = runner.invoke(app, ["import", str(workdir / "nope.jsonl")])
    # Then the command fails and says why
    assert result.exit_code != 0
    assert "cannot read" in result.output


def test_import_with_a_bad_mapping_fails(workdir: Path) -> None:
    # Given a CSV; When it is imported with a mapping that is not COLUMN=TARGET
    path = workdir / "c.csv"
    path.write_text("email\na@example.com\n")
    bad_form = runner.invoke(app, ["import", str(path), "--map", "email"])
    unknown = runner.invoke(app, ["import", str(path), "--map", "mail=email"])
    # Then the command fails and names the problem
    assert bad_form.exit_code == 2
    assert "COLUMN=TARGET" in bad_form.output
    assert unknown.exit_code == 2
    assert "mail" in unknown.output
