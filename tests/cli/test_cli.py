"""The command line: config, migrate, keys, rejected (on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from nurture.cli.main import app
from nurture.core import Nurture
from nurture.settings import Settings
from nurture.store import Database

runner = CliRunner()


def test_config_show_masks_secrets(cli_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NURTURE_SECRET_KEY", "s3cr3t")
    result = runner.invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    # stdout alone: the runner captures stderr process-wide, where a server thread another
    # test left behind once printed a broken-pipe traceback in the middle of this run.
    shown = json.loads(result.stdout)
    assert shown["secret_key"] == "***" and "s3cr3t" not in result.output
    assert shown["port"] == 8000


def test_bad_setting_exits_2_with_the_reason(cli_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NURTURE_PORT", "not-a-port")
    result = runner.invoke(app, ["migrate"])
    assert result.exit_code == 2
    assert "NURTURE_PORT" in result.output and "integer" in result.output


def test_keys_create_list_revoke(cli_url: str) -> None:
    # When a write key is created
    created = runner.invoke(app, ["keys", "create", "--kind", "write", "--name", "web"])
    assert created.exit_code == 0, created.output
    secret = re.search(r"nk_w_\S+", created.output)
    assert secret is not None
    # Then it is listed by prefix only, and it authenticates
    listed = runner.invoke(app, ["keys", "list"])
    assert secret.group(0)[:10] in listed.output and secret.group(0) not in listed.output
    db = Database(str(Settings(database_url=cli_url).database_url))
    nurture = Nurture(Settings(database_url=cli_url), db=db)
    assert nurture.keys.kind_of(secret.group(0)) == "write"
    key_id = nurture.keys.list_keys()[0].id
    # When it is revoked, it no longer does
    assert runner.invoke(app, ["keys", "revoke", str(key_id)]).exit_code == 0
    nurture.keys.forget()
    assert nurture.keys.kind_of(secret.group(0)) is None
    assert runner.invoke(app, ["keys", "revoke", str(key_id)]).exit_code == 2
    db.dispose()


def test_keys_create_refuses_unknown_kind(cli_url: str) -> None:
    result = runner.invoke(app, ["keys", "create", "--kind", "root"])
    assert result.exit_code == 2 and "write, admin" in result.output


def test_rejected_list_and_replay(cli_url: str) -> None:
    # Given one rejected message in the store
    settings = Settings(database_url=cli_url)
    with Nurture(settings) as nurture:
        nurture.ingest([{"type": "track", "userId": "u", "messageId": "no-event"}])
    # When it is listed
    listed = runner.invoke(app, ["rejected", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = [json.loads(line) for line in listed.output.splitlines() if line.startswith("{")]
    assert (row["code"], row["path"], row["messageId"]) == (
        "missing_field",
        "batch[0].event",
        "no-event",
    )
    # Then a replay without a fix still rejects it and keeps it
    replay = runner.invoke(app, ["rejected", "replay"])
    assert "accepted 0" in replay.output and "still rejected 1" in replay.output
    table = runner.invoke(app, ["rejected", "list"])
    assert "1 pending" in table.output


def test_migrate_is_idempotent(cli_url: str) -> None:
    for _ in range(2):
        result = runner.invoke(app, ["migrate"])
        assert result.exit_code == 0 and "newest schema" in result.output
