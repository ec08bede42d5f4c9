"""`nurture suppressions ...` and `nurture consents show`, against the test database."""

from __future__ import annotations

from typer.testing import CliRunner

from nurture.cli.main import app

runner = CliRunner()


def test_suppressions_add_check_list_remove(cli_url: str) -> None:
    # Given an address added by hand
    added = runner.invoke(app, ["suppressions", "add", "Bob@Example.com", "--detail", "by phone"])
    assert added.exit_code == 0 and "suppressed" in added.output
    # Then check finds it (exit 1) and list counts it
    checked = runner.invoke(app, ["suppressions", "check", "bob@example.com"])
    assert checked.exit_code == 1 and "manual (by phone)" in checked.output
    listed = runner.invoke(app, ["suppressions", "list"])
    assert listed.exit_code == 0 and "manual" in listed.output and "bob" not in listed.output
    # When it is removed, Then check says so, and removing again fails
    assert runner.invoke(app, ["suppressions", "remove", "bob@example.com"]).exit_code == 0
    assert runner.invoke(app, ["suppressions", "check", "bob@example.com"]).exit_code == 0
    assert runner.invoke(app, ["suppressions", "remove", "bob@example.com"]).exit_code == 1


def test_a_bad_address_is_an_error_naming_it(cli_url: str) -> None:
    result = runner.invoke(app, ["suppressions", "add", "12", "--kind", "phone"])
    assert result.exit_code == 2 and "not a valid phone" in result.output


def test_consents_show_an_unknown_contact(cli_url: str) -> None:
    result = runner.invoke(app, ["consents", "show", "42"])
    assert result.exit_code == 2 and "no contact with id 42" in result.output
