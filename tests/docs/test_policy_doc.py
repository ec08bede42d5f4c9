"""docs/policy.md is true: its configuration example is a valid `policy` setting, and every
row of its decision table is what `decide` answers, reason included; the rule table lists
every rule `decide` can give."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from nurture.messages.facts import ConsentState
from nurture.messages.policy import (
    Allow,
    Delay,
    PolicyConfig,
    PolicyFacts,
    PolicyMessage,
    Rule,
    Skip,
    decide,
)
from nurture.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
TEXT = DOC.read_text()


def block(name: str) -> Any:
    found = re.search(rf"<!-- example: {name} -->\n```yaml\n(.*?)```", TEXT, re.S)
    assert found, name
    return yaml.safe_load(found.group(1))


CONFIG = PolicyConfig.model_validate(block("policy")["policy"])


def test_the_configuration_example_is_a_valid_setting() -> None:
    # Given the YAML example, When read as the `policy` setting
    settings = Settings.model_validate({"policy": block("policy")["policy"]})
    # Then it holds what it says
    assert settings.policy == CONFIG
    assert "AU" in CONFIG.opt_in_countries
    assert CONFIG.consent_modes["push"] == "opt_out"  # left out: keeps its default
    assert [c.max for c in CONFIG.caps] == [3, 1]


def facts(name: str) -> PolicyFacts:
    spec = block("contacts")[name]
    recorded = datetime(2026, 3, 1, tzinfo=UTC)
    sent: dict[tuple[str, str], list[datetime]] = {}
    for key, times in spec.get("sent", {}).items():
        channel, kind = key.split("/")
        sent[(channel, kind)] = sorted(datetime.fromisoformat(t) for t in times)
    return PolicyFacts(
        contact_id=1,
        country=spec["country"],
        timezone=spec["timezone"],
        email=spec.get("email"),
        phone=spec.get("phone"),
        consents={
            tuple(key.split("/")): ConsentState(state, recorded)  # type: ignore[misc]
            for key, state in spec.get("consents", {}).items()
        },
        suppressed={address: "bounced" for address in spec.get("suppressed", [])},
        sent=sent,
    )


def rows() -> list[list[str]]:
    table = TEXT.split("<!-- example: decisions -->\n", 1)[1].split("\n\n", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_the_decision_table_has_rows() -> None:
    assert len(rows()) >= 8


@pytest.mark.parametrize("row", rows(), ids=lambda r: "-".join(r[:4]))
def test_each_decision_in_the_table_is_what_decide_answers(row: list[str]) -> None:
    who, channel, kind, topic, at, expected, reason = row
    # Given the contact and a message queued at the row's time
    now = datetime.strptime(at + "Z", "%Y-%m-%d %H:%M%z")
    message = PolicyMessage(1, 1, channel, kind, topic, {}, now, now)
    # When deciding it then
    decision = decide(message, facts(who), CONFIG, now)
    # Then it is the decision and the reason the page shows
    if expected == "allow":
        assert decision == Allow()
        return
    outcome, rule = expected.split()[:2]
    if outcome == "skip":
        assert decision == Skip(rule.strip("`"), reason)  # type: ignore[arg-type]
    else:
        until = datetime.strptime(expected.split("until ")[1] + "Z", "%Y-%m-%d %H:%M%z")
        assert decision == Delay(until, rule.strip("`"), reason)  # type: ignore[arg-type]


def test_every_rule_is_in_the_rule_table() -> None:
    for rule in get_args(Rule):
        assert f"| `{rule}` |" in TEXT, rule
