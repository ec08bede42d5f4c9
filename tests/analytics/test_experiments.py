"""The experiment report on real journeys (SQLite and PostgreSQL): a split step's paths and
a send step's variants, counted from what customers actually got and did, with every
statistic checked against statsmodels and SciPy."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from scipy import stats as sp
from starlette.testclient import TestClient
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
)
from tests.analytics.ab_world import (
    buys,
    everyone_does,
    messages_by_user,
    row_of,
    templates_by_user,
    worlds,
)
from tests.journeys.world import World
from typer.testing import CliRunner

from nurture.analytics.experiments import experiment_report
from nurture.cli.main import app
from nurture.clock import SimulatedClock
from nurture.errors import ValidationError
from nurture.messages.providers import FeedbackItem
from nurture.store import Database


@pytest.fixture
def world(db: Database, clock: SimulatedClock, tmp_path: Path) -> Iterator[World]:
    yield from worlds(db, clock, tmp_path)


SPLIT: dict[str, Any] = {
    "key": "ab",
    "trigger": {"event": "Signed Up"},
    "goal": {"event": "Purchased", "revenue": "amount", "within": "7d"},
    "steps": [
        {"id": "settle", "type": "wait", "for": "1h"},
        {
            "id": "test",
            "type": "split",
            "paths": [
                {"name": "A", "weight": 1, "next": "send_a"},
                {"name": "B", "weight": 1, "next": "send_b"},
                {"name": "C", "weight": 1, "next": "send_c"},
            ],
        },
        {"id": "send_a", "type": "send", "channel": "email", "template": "welcome", "next": "end"},
        {"id": "send_b", "type": "send", "channel": "email", "template": "variant_a",
         "next": "end"},
        {"id": "send_c", "type": "send", "channel": "email", "template": "variant_b"},
    ],
}  # fmt: skip
PATH_OF = {"welcome": "A", "variant_a": "B", "variant_b": "C"}
USERS = [f"u{i:03d}" for i in range(150)]


def _run_split(world: World) -> tuple[dict[str, str], dict[str, float]]:
    """Everyone enters; some buy before the split (not counted), more buy after it. Returns
    each user's path (from their message) and what each buyer spent after the split."""
    world.publish(SPLIT)
    everyone_does(world, USERS, "Signed Up")
    early = {u: 5.0 for u in USERS[:6]}  # converts before the split: never reaches it
    buys(world, early)
    world.advance(timedelta(hours=2))
    paths = {u: PATH_OF[tpl] for u, tpl in templates_by_user(world, "ab").items()}
    # Path C sells best, B a little, A rarely: a rule that knows nothing of our code.
    spend: dict[str, float] = {}
    for i, user in enumerate(USERS[6:]):
        path = paths[user]
        if (path == "C" and i % 2 == 0) or (path == "B" and i % 4 == 0) or i % 9 == 0:
            spend[user] = float(10 + i % 7 * 5)
    buys(world, spend)
    return paths, spend


def test_split_report_matches_the_references(world: World) -> None:
    # Given 150 customers, 6 of whom convert before the split, and known conversions after
    paths, spend = _run_split(world)
    assert set(paths) == set(USERS[6:])
    # When we ask for the experiment report of the split
    report = experiment_report(world.n, "ab", "test")
    # Then each path counts its recipients and conversions exactly
    arms = {p: [u for u in paths if paths[u] == p] for p in "ABC"}
    conv = {p: sum(1 for u in arms[p] if u in spend) for p in "ABC"}
    for p in "ABC":
        row = row_of(report, p)
        assert (row["recipients"], row["conversions"]) == (len(arms[p]), conv[p])
        assert row["rate"] == pytest.approx(conv[p] / len(arms[p]))
        revenue = [spend.get(u, 0.0) for u in arms[p]]
        assert row["revenue_per_recipient"] == pytest.approx(sum(revenue) / len(revenue))
    # And B and C are compared with A by statsmodels' tests, Holm-adjusted over two
    raw = {}
    for p in "BC":
        row = row_of(report, p)
        na, nb, xa, xb = len(arms["A"]), len(arms[p]), conv["A"], conv[p]
        raw[p] = proportions_ztest([xb, xa], [nb, na])[1]
        assert row["p_value"] == pytest.approx(raw[p], rel=1e-9)
        low, high = confint_proportions_2indep(xb, nb, xa, na, method="newcomb", compare="diff")
        assert (row["diff_low"], row["diff_high"]) == pytest.approx((low, high), abs=1e-12)
        r_low, r_high = confint_proportions_2indep(xb, nb, xa, na, method="log", compare="ratio")
        assert (row["lift_low"], row["lift_high"]) == pytest.approx((r_low - 1, r_high - 1))
        h = abs(proportion_effectsize(xb / nb, xa / na))
        needed = NormalIndPower().solve_power(effect_size=h, alpha=0.05, power=0.8)
        assert abs(row["sample_per_arm"] - needed) < 1
        assert row["more_needed"] == max(0, row["sample_per_arm"] - min(na, nb))
        welch = sp.ttest_ind(
            [spend.get(u, 0.0) for u in arms[p]],
            [spend.get(u, 0.0) for u in arms["A"]],
            equal_var=False,
        )
        assert row["revenue_p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
        ci = welch.confidence_interval(0.95)
        assert (row["revenue_diff_low"], row["revenue_diff_high"]) == pytest.approx(
            (ci.low, ci.high), rel=1e-6
        )
    adjusted = multipletests([raw["B"], raw["C"]], method="holm")[1]
    for p, p_adj in zip("BC", adjusted, strict=True):
        row = row_of(report, p)
        assert row["p_adjusted"] == pytest.approx(p_adj)
        expected = "significant at 95%: higher" if p_adj < 0.05 else "not yet"
        assert row["verdict"] == expected
    assert row_of(report, "C")["verdict"] == "significant at 95%: higher"  # by design
    assert report.summary["adjustment"] == "Holm over 2 comparisons"
    assert report.summary["recipients"] == 144
    assert any("Holm" in n for n in report.notes)


def test_a_time_window_and_a_named_control(world: World) -> None:
    # Given the split ran two hours after entry
    paths, _ = _run_split(world)
    ran = world.clock.now()
    # When the window ends before the split ran, nobody counts
    empty = experiment_report(world.n, "ab", "test", end=ran - timedelta(days=1))
    assert [r["recipients"] for r in empty.table("variants").rows] == [0, 0, 0]
    assert row_of(empty, "B")["why"] == "the control has no recipients yet."
    # And with C as the control, A and B are compared with C
    report = experiment_report(world.n, "ab", "test", control="C", start=ran - timedelta(days=1))
    assert row_of(report, "C")["verdict"] == "control"
    assert row_of(report, "A")["diff"] < 0
    assert sum(r["recipients"] for r in report.table("variants").rows) == len(paths)


def test_split_report_by_human_opens_after_the_split(world: World) -> None:
    # Given the split's contacts, and opens and clicks on their messages: people's and a
    # scanner's
    paths, _ = _run_split(world)
    message = messages_by_user(world, "ab")
    at = world.clock.now()
    items, opened = [], set()
    for i, user in enumerate(sorted(paths)):
        if i % 3 == 0:
            opened.add(user)
            items.append(_item("opened", f"so{i}", message[user], at))
        elif i % 5 == 0:
            opened.add(user)  # a click alone proves the open
            items.append(_item("clicked", f"sc{i}", message[user], at))
        elif i % 2 == 0:
            items.append(_item("opened", f"sm{i}", message[user], at, machine=True))
    world.n.feedback.record("ses", items)
    # When we ask for the split's open rates
    report = experiment_report(world.n, "ab", "test", metric="opened")
    # Then each path counts the contacts a person opened a message of
    for p in "ABC":
        arm = [u for u in paths if paths[u] == p]
        row = row_of(report, p)
        assert (row["conversions"], row["recipients"]) == (
            sum(1 for u in arm if u in opened),
            len(arm),
        )


VARIANTS: dict[str, Any] = {
    "key": "subject_test",
    "trigger": {"event": "Signed Up"},
    "steps": [
        {
            "id": "hello",
            "type": "send",
            "channel": "email",
            "variants": [
                {"name": "plain", "template": "variant_a"},
                {"name": "emoji", "template": "variant_b"},
            ],
        }
    ],
}


def test_variant_report_counts_human_opens_and_clicks(world: World) -> None:
    # Given 120 customers who got one of two variants of a message
    world.publish(VARIANTS)
    users = [f"v{i:03d}" for i in range(120)]
    everyone_does(world, users, "Signed Up")
    variant = {
        u: {"variant_a": "plain", "variant_b": "emoji"}[tpl]
        for u, tpl in templates_by_user(world, "subject_test").items()
    }
    message = messages_by_user(world, "subject_test")
    # And opens and clicks: people's, and a scanner's (machine) that must not count
    at = world.clock.now()
    items, opened, clicked = [], set(), set()
    for i, user in enumerate(users):
        human_open = i % 3 == 0 or (variant[user] == "emoji" and i % 2 == 0)
        human_click = i % 5 == 0
        if human_open:
            opened.add(user)
            items.append(_item("opened", f"o{i}", message[user], at))
            items.append(_item("opened", f"o{i}-again", message[user], at))  # unique counts
        if human_click:
            opened.add(user)  # a click proves an open
            clicked.add(user)
            items.append(_item("clicked", f"c{i}", message[user], at))
        if i % 4 == 1:
            items.append(_item("opened", f"m{i}", message[user], at, machine=True))
            items.append(_item("clicked", f"mc{i}", message[user], at, machine=True))
    world.n.feedback.record("ses", items)
    # When we ask for the opened and the clicked report
    for metric, hits in (("opened", opened), ("clicked", clicked)):
        report = experiment_report(world.n, "subject_test", "hello", metric=metric)  # type: ignore[arg-type]
        # Then each variant counts its unique human opens (clicks)
        counts = {}
        for name in ("plain", "emoji"):
            arm = [u for u in users if variant[u] == name]
            row = row_of(report, name)
            counts[name] = (sum(1 for u in arm if u in hits), len(arm))
            assert (row["conversions"], row["recipients"]) == (counts[name][0], len(arm))
        # And the test is statsmodels' with two arms: no adjustment
        (xa, na), (xb, nb) = counts["plain"], counts["emoji"]
        row = row_of(report, "emoji")
        assert row["p_value"] == pytest.approx(proportions_ztest([xb, xa], [nb, na])[1])
        assert row["p_adjusted"] == row["p_value"]
        assert report.summary["adjustment"] == "none"
    # And converted is refused: the journey has no goal
    with pytest.raises(ValidationError) as caught:
        experiment_report(world.n, "subject_test", "hello")
    assert caught.value.path == "metric"


def _item(kind: Any, key: str, outbox_id: int, at: datetime, machine: bool = False) -> FeedbackItem:
    return FeedbackItem(kind, key, at, outbox_id=outbox_id, machine=machine)


def test_the_api_answers_and_names_bad_fields(world: World, client: TestClient) -> None:
    _run_split(world)
    key = world.n.keys.create("admin", "t")[1]
    auth = {"Authorization": f"Bearer {key}"}
    answer = client.get("/api/reports/experiments/ab/test?metric=converted", headers=auth)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["kind"] == "experiment" and body["params"]["control"] == "A"
    assert [r["variant"] for r in body["tables"][0]["rows"]] == ["A", "B", "C"]
    assert body["charts"][0]["kind"] == "bar"
    svg = client.get("/api/reports/experiments/ab/test?chart=svg", headers=auth)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg")
    for url, path in (
        ("/api/reports/experiments/ab/settle", "step"),
        ("/api/reports/experiments/ab/test?control=Z", "control"),
        ("/api/reports/experiments/ab/test?from=2026-03-01T00:00:00", "from"),
        ("/api/reports/experiments/ab/test?from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
         "to"),
    ):  # fmt: skip
        bad = client.get(url, headers=auth)
        assert bad.status_code == 400, (url, bad.text)
        assert bad.json()["error"]["path"] == path
    assert client.get("/api/reports/experiments/nope/test", headers=auth).status_code == 404
    assert client.get("/api/reports/experiments/ab/test?confidence=2", headers=auth).status_code
    assert client.get("/api/reports/experiments/ab/test").status_code == 401


runner = CliRunner()


def test_the_cli_prints_the_report(world: World, cli_url: str, tmp_path: Path) -> None:
    paths, _ = _run_split(world)
    out = runner.invoke(app, ["report", "experiment", "ab", "test"])
    assert out.exit_code == 0, out.output
    assert "not yet" in out.output or "significant at 95%" in out.output
    csv = runner.invoke(app, ["report", "experiment", "ab", "test", "--format", "csv"])
    lines = csv.stdout.strip().splitlines()
    assert lines[0].startswith("variant,recipients,conversions,rate")
    assert sum(int(line.split(",")[1]) for line in lines[1:]) == len(paths)
    chart = tmp_path / "rates.svg"
    drawn = runner.invoke(app, ["report", "experiment", "ab", "test", "--chart", str(chart)])
    assert drawn.exit_code == 0 and chart.read_text().lstrip().startswith("<")
    bad = runner.invoke(app, ["report", "experiment", "ab", "settle"])
    assert bad.exit_code == 2 and "step" in bad.output


def test_times_are_compared_as_instants(world: World) -> None:
    paths, _ = _run_split(world)
    later = datetime(2030, 1, 1, tzinfo=UTC)
    report = experiment_report(world.n, "ab", "test", start=later)
    assert report.summary["recipients"] == 0
    assert len(paths) == 144


# -- docs/analytics/experiments.md --------------------------------------------------------------
DOC = Path(__file__).resolve().parents[2] / "docs" / "analytics" / "experiments.md"
TEXT = DOC.read_text()


def _blocks(marker: str, lang: str) -> list[str]:
    return re.findall(rf"<!-- {marker} -->\n```{lang}\n(.*?)```", TEXT, re.S)


def test_the_doc_examples_run(world: World, client: TestClient, cli_url: str) -> None:
    # Given the page's journey, published, with trials that subscribe by a known rule
    [journey] = _blocks("example: experiment journey", "yaml")
    for name in ("trial_reminder", "trial_discount"):
        (world.n.settings.project_dir / "templates" / f"{name}.yaml").write_text(
            f"email: {{subject: {name}, html: '<p>{name}</p>'}}\n"
        )
    world.publish(yaml.safe_load(journey))
    users = [f"d{i:03d}" for i in range(80)]
    everyone_does(world, users, "Trial Started")
    world.advance(timedelta(hours=2))
    templates = templates_by_user(world, "trial_ab")
    at = world.clock.now().isoformat()
    world.n.ingest(
        [
            {"type": "track", "userId": u, "event": "Subscribed", "properties": {"amount": 30},
             "messageId": f"doc-{u}", "timestamp": at}
            for i, u in enumerate(users)
            if templates.get(u) == "trial_discount" or i % 4 == 0
        ]
    )  # fmt: skip
    world.run()
    key = world.n.keys.create("admin", "doc")[1]
    # When each API example is asked, Then it answers a report
    requests = _blocks("example: api", "http")
    assert len(requests) == 3
    answers = []
    for request in requests:
        method, url = request.split()
        answer = client.request(method, url, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, (url, answer.text)
        answers.append(answer.json())
    assert answers[0]["summary"]["recipients"] > 60
    # And the row shown has exactly the keys of a real row
    [shown] = _blocks("response: variant row", "json")
    real = next(r for r in answers[0]["tables"][0]["rows"] if r["variant"] == "discount")
    assert set(json.loads(shown)) == set(real)
    # And every CLI example runs
    commands = _blocks("example: cli", "console")
    assert len(commands) == 4
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "nurture"
        out = runner.invoke(app, args[1:])
        assert out.exit_code == 0, (command, out.output)
    # And the winner error shown is the error given
    shown_error = re.search(r"`(steps\[1\]\.winner\.min_sample: [^`]*)`", TEXT)
    assert shown_error is not None
    bad = yaml.safe_load(journey)
    bad["steps"][1]["winner"]["min_sample"] = 5
    with pytest.raises(ValidationError) as caught:
        world.n.journeys.save(bad)
    assert str(caught.value) == shown_error.group(1)
