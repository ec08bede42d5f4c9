"""docs/analytics/clv.md is true: its setting loads, its traits and segment work on a
fitted model, its API calls and commands answer, and its RFM table is the code's rules
— on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient
from tests.analytics.clv_data import NOW_OF_TESTS, simulated_purchases, store_purchases
from typer.testing import CliRunner

from nurture.analytics.clv_store import ClvService
from nurture.analytics.rfm import SEGMENTS
from nurture.cli.main import app
from nurture.conditions.computed import parse_computed
from nurture.core import Nurture
from nurture.settings import load_settings
from nurture.store import Database

DOC = Path(__file__).resolve().parents[2] / "docs" / "analytics" / "clv.md"
# A marked example: a fenced block, or a Markdown table, right after its marker.
_EXAMPLE = re.compile(
    r"<!-- example: (?P<name>[a-z-]+) -->\n"
    r"(?:```\w+\n(?P<body>[\s\S]*?)^```|(?P<table>(?:^\|[^\n]*\n)+))",
    re.M,
)
runner = CliRunner()


def examples() -> dict[str, str]:
    found = {}
    for match in _EXAMPLE.finditer(DOC.read_text()):
        found[match["name"]] = match["body"] if match["body"] is not None else match["table"]
    return found


def test_the_page_has_its_examples() -> None:
    assert set(examples()) == {"setting", "traits", "segment", "rfm-segments", "api", "cli"}


def test_the_setting_example_loads() -> None:
    # Given the page's `clv:` block, When loading it as the setting, Then it holds
    block = yaml.safe_load(examples()["setting"])["clv"]
    settings = load_settings(clv=block)
    assert settings.clv is not None
    assert settings.clv.purchase_event == "Order Completed"
    assert settings.clv.horizon_units == pytest.approx(365 / 7)
    assert str(settings.clv.calibration_end) == "2026-02-28"


def test_the_rfm_table_is_the_codes_rules() -> None:
    # Given the page's segment table, Then its rows are the rules, in order
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in examples()["rfm-segments"].strip().splitlines()[2:]
    ]
    assert [(name, f"R {r}, F {f}", who) for name, r, f, who in rows] == [
        (s.name, s.rule, s.meaning) for s in SEGMENTS
    ]


def test_the_traits_and_segment_select_the_valuable_lapsing_customers(
    nurture: Nurture, client: TestClient, admin_key: str
) -> None:
    # Given a shop with lapsed big spenders, a fitted model and the page's traits
    store_purchases(
        nurture.db, simulated_purchases(11, 400, START, 420, whales=5), now=NOW_OF_TESTS
    )
    ClvService.of(nurture).fit()
    for trait in yaml.safe_load(examples()["traits"]):
        parse_computed(trait)
        nurture.lifecycle.save("computed", trait["key"], trait)
    # When saving and evaluating the page's segment
    segment = yaml.safe_load(examples()["segment"])
    nurture.segments.save(segment)
    nurture.engine.evaluate_all()
    # Then its members are the lapsing big spenders, and the preview agrees
    members = nurture.segments.members(segment["key"])["items"]
    ids = {m["contactId"] for m in members}
    assert ids and ids <= set(range(396, 401))
    answer = client.get(
        f"/api/segments/{segment['key']}/preview",
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert answer.json()["count"] == len(ids)


def test_the_api_examples_answer(nurture: Nurture, client: TestClient, admin_key: str) -> None:
    # Given purchases
    store_purchases(nurture.db, simulated_purchases(3, 300, START, 420), now=NOW_OF_TESTS)
    # When calling each of the page's requests in order, Then each answers 200
    for line in examples()["api"].strip().splitlines():
        method, path = line.split()
        answer = client.request(method, path, headers={"Authorization": f"Bearer {admin_key}"})
        assert answer.status_code == 200, (line, answer.text)


def test_the_cli_examples_run(cli_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    # Given purchases in 2025 and a calibration period ending with it
    db = Database(cli_url)
    db.migrate()
    store_purchases(db, simulated_purchases(3, 300, START, 360), now=NOW_OF_TESTS)
    db.dispose()
    monkeypatch.setenv("NURTURE_CLV", '{"calibration_end": "2025-12-31"}')
    # When running each of the page's commands in order, Then each succeeds
    for line in examples()["cli"].strip().splitlines():
        result = runner.invoke(app, shlex.split(line)[1:])
        assert result.exit_code == 0, (line, result.output)
    assert (tmp_path / "p_alive.svg").exists()


START = NOW_OF_TESTS.replace(year=2025, month=1, day=1, hour=0)
