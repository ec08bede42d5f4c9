"""The funnel and cohort reports through their doors: the admin API and `nurture report`,
running the examples of docs/analytics/funnels.md and cohorts.md as they are written, on a
small shop ingested through the real ingest path (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from nurture.cli.main import app
from nurture.core import Nurture

DOCS = Path(__file__).resolve().parents[2] / "docs" / "analytics"
runner = CliRunner()
FEB = datetime(2026, 2, 2, 9, 0, tzinfo=UTC)  # a Monday
PLANS = ["pro", "free", "team", None]
HOUR = timedelta(hours=1)


def example(page: str, name: str) -> str:
    """The fenced block after `<!-- example: name -->` in docs/analytics/<page>."""
    text = (DOCS / page).read_text()
    found = re.search(rf"<!-- example: {name} -->\n```\w+\n(.*?)```", text, re.DOTALL)
    assert found, f"no example {name} in {page}"
    return found.group(1)


def shop() -> list[dict[str, Any]]:
    """Twelve contacts: signed up through February, viewing, adding, ordering, logging in."""
    out: list[dict[str, Any]] = []
    for i in range(12):
        user = f"u{i}"
        start = FEB + timedelta(days=i)
        plan = PLANS[i % 4]
        traits = {"email": f"{user}@example.com", **({"plan": plan} if plan else {})}
        out.append({"type": "identify", "userId": user, "traits": traits, "timestamp": start})
        done = [
            ("Signed Up", start, {}),
            ("Logged In", start + timedelta(days=7 * (1 + i % 2)), {}),
            ("Product Viewed", start + timedelta(hours=1), {}),
        ]
        if i % 2 == 0:
            done.append(("Product Added", start + timedelta(hours=2), {}))
            out.append(
                {"type": "page", "userId": user, "name": "Cart", "timestamp": start + 3 * HOUR}
            )
        if i % 4 == 0:
            done.append(("Order Completed", start + timedelta(days=1), {"total": 10.0 * (i + 1)}))
        for event, at, props in done:
            out.append(
                {
                    "type": "track",
                    "userId": user,
                    "event": event,
                    "timestamp": at,
                    "properties": props,
                }
            )
    for message in out:
        message["timestamp"] = message["timestamp"].isoformat()
    return out


@pytest.fixture
def shop_nurture(nurture: Nurture) -> Nurture:
    result = nurture.ingest(shop())
    assert not result.rejected and result.accepted == len(shop())
    nurture.segments.save({"key": "buyers", "where": {"event": "Order Completed"}})
    return nurture


def admin(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


# -- the API ------------------------------------------------------------------------------------


def test_the_documented_funnel_body(
    shop_nurture: Nurture, client: TestClient, admin_key: str
) -> None:
    # Given the body of docs/analytics/funnels.md
    body = json.loads(example("funnels.md", "funnel-body"))
    # When it is posted
    answer = client.post("/api/reports/funnel", json=body, headers=admin(admin_key))
    # Then the report counts the shop: 12 viewed, 6 added, 3 ordered (all over 20 but
    # the first, whose total is 10)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["kind"] == "funnel"
    steps = {t["key"]: t for t in report["tables"]}["steps"]["rows"]
    assert [r["contacts"] for r in steps] == [12, 6, 2]
    assert steps[1]["median_from_previous"] == 3600.0
    assert report["summary"]["bottleneck_step"] == 3
    groups = {t["key"]: t for t in report["tables"]}["groups"]["rows"]
    assert {r["group"] for r in groups} == {"pro", "free", "team", "(none)"}
    # And the chart is an SVG image
    image = client.post("/api/reports/funnel?chart=svg", json=body, headers=admin(admin_key))
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/svg")


@pytest.mark.parametrize(
    ("body", "status", "path"),
    [
        ({"steps": [{"event": "A"}, {"event": ""}]}, 400, "steps[1].event"),
        ({"steps": [{"event": "A"}, {"event": "B"}], "window": "a week"}, 400, "window"),
        ({"steps": [{"event": "A"}, {"event": "B"}], "segment": "nope"}, 404, "segment"),
        ([{"event": "A"}], 400, "body"),
    ],
)
def test_bad_funnel_bodies_name_the_field(
    client: TestClient, admin_key: str, body: Any, status: int, path: str
) -> None:
    answer = client.post("/api/reports/funnel", json=body, headers=admin(admin_key))
    assert answer.status_code == status
    assert answer.json()["error"]["path"] == path


def test_the_documented_cohorts_query(
    shop_nurture: Nurture, client: TestClient, admin_key: str
) -> None:
    # Given the URL of docs/analytics/cohorts.md
    url = example("cohorts.md", "cohorts-url").strip()
    # When it is asked
    answer = client.get(url, headers=admin(admin_key))
    # Then contacts 0-6 signed up in the week of 2 February (Paris), 7-11 in the next
    assert answer.status_code == 200, answer.text
    rows = {t["key"]: t for t in answer.json()["tables"]}["cohorts"]["rows"]
    assert [(r["cohort"], r["size"]) for r in rows] == [
        ("2026-02-02", 7),
        ("2026-02-09", 5),
        ("2026-02-16", 0),
    ]
    # and log in again 7 days (even contacts) or 14 days (odd ones) later
    assert [rows[0][f"p{n}"] for n in range(4)] == [0, 4, 3, 0]
    image = client.get(url + "&chart=png", headers=admin(admin_key))
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("every=day", "every"),
        ("tz=Mars/Base", "tz"),
        ('active_where=[{"property": "x"}]', "active_where[0]"),
        ("active_where=nope", "active_where"),
        ("cohort_type=identify", "cohort_type"),
    ],
)
def test_bad_cohort_queries_name_the_parameter(
    client: TestClient, admin_key: str, query: str, path: str
) -> None:
    answer = client.get(f"/api/reports/cohorts?{query}", headers=admin(admin_key))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["path"] == path


# -- the command line -----------------------------------------------------------------------------


def commands(page: str, name: str) -> list[list[str]]:
    return [shlex.split(line)[1:] for line in example(page, name).splitlines() if line.strip()]


def test_the_documented_commands(shop_nurture: Nurture, cli_url: str, tmp_path: Path) -> None:
    # Given the steps file of the docs in the working directory
    (tmp_path / "funnel.yaml").write_text(example("funnels.md", "funnel-steps-yaml"))
    # When every documented command runs
    outputs = []
    for args in commands("funnels.md", "funnel-cli") + commands("cohorts.md", "cohorts-cli"):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.stdout)
    # Then the table, the CSV and the chart come out
    assert "Product Viewed" in outputs[0] and "Steps by group" in outputs[0]
    csv_lines = outputs[1].splitlines()
    assert csv_lines[0].startswith("step,event,contacts,")
    assert csv_lines[1].startswith("1,Product Viewed,3,")  # buyers: contacts 0, 4 and 8
    assert (tmp_path / "funnel.svg").read_bytes().startswith(b"<?xml")
    assert "Signed Up" in outputs[3]
    assert outputs[4].splitlines()[0] == "period,cohort_contacts,active,retention"


def test_a_yaml_file_of_steps_with_filters(
    shop_nurture: Nurture, cli_url: str, tmp_path: Path
) -> None:
    (tmp_path / "funnel.yaml").write_text(example("funnels.md", "funnel-steps-yaml"))
    args = ["report", "funnel", "--steps", "funnel.yaml", "--from", "2026-02-01", "--to",
            "2026-02-28", "--format", "json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["tables"][0]["rows"]
    # viewed 12, the cart page 6, orders over 20 within 3 days: contacts 4 and 8
    assert [r["contacts"] for r in rows] == [12, 6, 2]
    assert report["params"]["window"] == "3d"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "funnel", "Only One"], "steps"),
        (["report", "funnel", "A", "B", "--window", "soon"], "window"),
        (["report", "funnel", "A", "B", "--by", "plan", "--by-segment", "x"], "breakdown"),
        (["report", "funnel", "--steps", "missing.yaml"], "--steps"),
        (["report", "cohorts", "--every", "year"], "every"),
        (["report", "cohorts", "--active-where", "{property: x}"], "active.where[0]"),
    ],
)
def test_bad_arguments_fail_naming_the_field(cli_url: str, args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert f"error: {message}" in result.output
