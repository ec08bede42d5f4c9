"""docs/segments.md is true: its definitions load, its presets are the shipped ones, its
scenarios play out as its tables say and its JSON is what the API answers, on SQLite and
PostgreSQL.

The page marks what is checked with HTML comments that rendered Markdown hides:

    <!-- example: KIND -->        a ```yaml definition (or a list of them) of that kind:
                                  segment, computed, stage_model, score_model; or a bare
                                  condition (`condition`), previewed against the others
    <!-- preset: NAME -->         a ```yaml block equal to nurture.lifecycle.presets.NAME
    <!-- json: NAME [subset] --> a ```json request body or response that a scenario test
                                  sends or compares: equal to the real response, or with
                                  `subset`, every field shown is there with that value
    <!-- scenario: NAME -->       a scenario table, played by test_scenario_NAME

Every ```yaml and ```json block of the page carries one of the first three. Scenarios start
at 2026-03-01 12:00 UTC and do the scheduled run (`evaluate_all`) once a day at 12:10, as
the page says.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from sqlalchemy import select
from starlette.testclient import TestClient

from nurture.cli.main import app
from nurture.clock import SimulatedClock
from nurture.conditions.computed import computed_values
from nurture.conditions.durations import parse_date_ref
from nurture.conditions.facts import load_facts
from nurture.core import Nurture
from nurture.errors import ValidationError
from nurture.lifecycle import presets
from nurture.project import FOLDERS, Project
from nurture.store import tables as t
from nurture.store.types import from_microseconds, to_microseconds

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOC = DOCS / "segments.md"
TEXT = DOC.read_text()

DEFINITION_KINDS = ("computed", "score_model", "stage_model", "segment")  # in loading order
PRESET_KINDS = {
    "SAAS_YAML": "stage_model",
    "SHOP_YAML": "stage_model",
    "LEADS_YAML": "stage_model",
    "LEAD_SCORE_YAML": "score_model",
}
FOLDER_OF = {kind: folder for folder, kind in FOLDERS.items()}

_MARKED = re.compile(
    r"<!-- (?P<what>example|preset|json): (?P<name>[A-Za-z0-9_-]+)(?P<flags>(?: [a-z]+)*) -->\s*"
    r"```(?P<lang>yaml|json)\n(?P<body>.*?)^```$",
    re.S | re.M,
)
_BLOCK = re.compile(r"^```(?:yaml|json)\n", re.M)
_SCENARIO = re.compile(r"<!-- scenario: (?P<name>[a-z_]+) -->")


@dataclass(frozen=True)
class Block:
    what: str  # example, preset or json
    name: str
    flags: frozenset[str]
    body: str
    data: Any
    line: int


@dataclass(frozen=True)
class Definition:
    kind: str
    key: str
    data: dict[str, Any]
    line: int


def _line(offset: int) -> int:
    return TEXT.count("\n", 0, offset) + 1


def parse_blocks() -> list[Block]:
    """The marked blocks of the page; fails on a yaml/json block that nothing marks."""
    blocks, claimed = [], set()
    for m in _MARKED.finditer(TEXT):
        body = m.group("body")
        data = json.loads(body) if m.group("lang") == "json" else yaml.safe_load(body)
        flags = frozenset(m.group("flags").split())
        blocks.append(Block(m.group("what"), m.group("name"), flags, body, data, _line(m.start())))
        claimed.add(m.start("lang") - 3)
    markers = len(re.findall(r"<!-- (?:example|preset|json):", TEXT))
    assert markers == len(blocks), "a marker comment is not followed by its block"
    orphans = [_line(m.start()) for m in _BLOCK.finditer(TEXT) if m.start() not in claimed]
    assert not orphans, f"yaml/json blocks without a marker at lines {orphans}"
    return blocks


BLOCKS = parse_blocks()
JSON = {b.name: b for b in BLOCKS if b.what == "json"}
CONDITIONS = [b for b in BLOCKS if b.what == "example" and b.name == "condition"]


def parse_definitions() -> list[Definition]:
    found = []
    for block in BLOCKS:
        if block.what == "example" and block.name != "condition":
            kind = block.name
        elif block.what == "preset":
            kind = PRESET_KINDS[block.name]
        else:
            continue
        assert kind in DEFINITION_KINDS, f"line {block.line}: unknown kind {kind}"
        items = block.data if isinstance(block.data, list) else [block.data]
        found += [Definition(kind, item["key"], item, block.line) for item in items]
    keys = [(d.kind, d.key) for d in found]
    assert len(keys) == len(set(keys)), "two examples define the same kind and key"
    return found


DEFINITIONS = parse_definitions()


def definition(kind: str, key: str) -> dict[str, Any]:
    """A definition of the page, as its YAML reads."""
    found = [d.data for d in DEFINITIONS if (d.kind, d.key) == (kind, key)]
    assert found, f"the page defines no {kind} {key}"
    return dict(found[0])


def documented(name: str, actual: Any) -> None:
    """`actual` is what the page shows as the JSON block `name`."""
    block = JSON[name]
    if "subset" in block.flags:
        assert_subset(actual, block.data, f"{name}: $")
    else:
        assert actual == block.data, f"{name} (line {block.line}): the API answers {actual!r}"


def assert_subset(actual: Any, shown: Any, where: str) -> None:
    if isinstance(shown, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in shown.items():
            assert key in actual, f"{where}.{key} is shown but missing in {actual!r}"
            assert_subset(actual[key], value, f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(actual, list) and len(actual) == len(shown), f"{where}: {actual!r}"
        for index, (a, s) in enumerate(zip(actual, shown, strict=True)):
            assert_subset(a, s, f"{where}[{index}]")
    else:
        assert actual == shown, f"{where}: shown {shown!r}, the API answers {actual!r}"


# -- a scenario's world ------------------------------------------------------------------
def at(month: int, day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def send(nurture: Nurture, user: str, event: str, when: datetime, **properties: Any) -> None:
    """A track call (or a page view, with `type_="page"`) timestamped `when`."""
    kind = properties.pop("type_", "track")
    message = {"type": kind, "userId": user, "timestamp": when.isoformat()}
    message["name" if kind == "page" else "event"] = event
    message["properties"] = properties
    result = nurture.ingest([message])
    assert result.accepted == 1, result.to_dict()


def advance_to(nurture: Nurture, clock: SimulatedClock, moment: datetime) -> None:
    """Move the clock to `moment`, doing the daily 12:10 scheduled runs on the way."""
    now = clock.now()
    run = now.replace(hour=12, minute=10, second=0, microsecond=0)
    if run <= now:
        run += timedelta(days=1)
    while run <= moment:
        clock.advance(run - clock.now())
        nurture.engine.evaluate_all()
        run += timedelta(days=1)
    clock.advance(moment - clock.now())


def contact(nurture: Nurture, user: str) -> int:
    with nurture.db.read() as conn:
        c = t.contacts.c
        return int(conn.execute(select(c.id).where(c.user_id == user)).scalar_one())


def members(nurture: Nurture, key: str) -> set[str]:
    with nurture.db.read() as conn:
        m, c = t.segment_memberships.c, t.contacts.c
        query = select(c.user_id).join_from(t.segment_memberships, t.contacts, m.contact_id == c.id)
        return set(conn.execute(query.where(m.segment_key == key)).scalars())


def changes(nurture: Nurture, key: str) -> list[tuple[str, datetime]]:
    return [(h["change"], datetime.fromisoformat(h["at"])) for h in nurture.segments.changes(key)]


def stage(nurture: Nurture, user: str, model: str) -> str:
    return str(nurture.engine.contact_state(contact(nurture, user))["stages"][model]["stage"])


def score(nurture: Nurture, user: str, model: str) -> tuple[float, str]:
    found = nurture.engine.contact_state(contact(nurture, user))["scores"][model]
    return found["score"], found["temperature"]


def system_events(nurture: Nurture, user: str) -> list[tuple[str, dict[str, Any], datetime]]:
    """(event, properties, timestamp) of the contact's system events, oldest first."""
    with nurture.db.read() as conn:
        e = t.events.c
        rows = conn.execute(
            select(e.event, e.properties, e.timestamp)
            .where(e.type == "system", e.contact_id == contact(nurture, user))
            .order_by(e.id)
        )
        return [(r.event, r.properties, r.timestamp) for r in rows]


class Api:
    """The admin API with an admin key; each call checks the status it expects."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}

    def __call__(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = self.client.request(method, path, headers=self.headers, **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.content else None


# -- the page as a whole -----------------------------------------------------------------
def test_the_page_marks_its_blocks() -> None:
    kinds = {d.kind for d in DEFINITIONS}
    assert kinds == set(DEFINITION_KINDS)
    assert {b.name for b in BLOCKS if b.what == "preset"} == set(PRESET_KINDS)
    assert CONDITIONS


@pytest.mark.parametrize("name", sorted(PRESET_KINDS))
def test_a_preset_is_shown_verbatim(name: str) -> None:
    # Given the page's block for a preset
    (block,) = [b for b in BLOCKS if b.what == "preset" and b.name == name]
    # Then it is the YAML Nurture ships, character for character
    assert block.body == getattr(presets, name)


def test_every_scenario_is_played_by_a_test() -> None:
    documented_names = {m.group("name") for m in _SCENARIO.finditer(TEXT)}
    tests = {
        name[len("test_scenario_") :] for name in globals() if name.startswith("test_scenario_")
    }
    assert documented_names == tests


def test_every_json_block_is_checked() -> None:
    # The scenario tests below send or compare exactly these.
    checked = {
        "create-request",
        "create-response",
        "preview-request",
        "preview-response",
        "members-response",
        "system-event",
        "cycle-error",
        "changes-response",
        "file-conflict",
        "failed-segment",
        "put-model-request",
        "put-model-response",
        "moves-response",
        "counts-response",
        "explain-response",
    }
    assert set(JSON) == checked


def _commands() -> Iterator[str]:
    for m in re.finditer(r"^```sh\n(.*?)^```$", TEXT, re.S | re.M):
        yield from (line for line in m.group(1).splitlines() if line.strip())


@pytest.mark.parametrize("line", list(_commands()))
def test_a_command_line_is_one_the_cli_takes(line: str) -> None:
    # Given a command line of the page
    words = shlex.split(line)
    assert words[0] == "nurture"
    command: Any = typer.main.get_command(app)
    words = words[1:]
    while hasattr(command, "commands"):
        command = command.commands[words.pop(0)]
    # Then its command, options and arguments parse (nothing runs)
    command.make_context(command.name, words)


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    prose = re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", prose, re.M)}


def test_links_to_sections_resolve() -> None:
    for m in re.finditer(r"\]\((?P<file>[a-z]*\.md)?(?:#(?P<anchor>[^)]+))?\)", TEXT):
        target = DOCS / (m.group("file") or DOC.name)
        assert target.exists(), f"line {_line(m.start())}: no {target.name}"
        if m.group("anchor"):
            assert m.group("anchor") in _anchors(target.read_text()), (
                f"line {_line(m.start())}: no section #{m.group('anchor')} in {target.name}"
            )


# -- the definitions load ----------------------------------------------------------------
def _every_definition_is_active(nurture: Nurture, source: str) -> None:
    stored = nurture.segments.all() + [
        d for kind in DEFINITION_KINDS[:3] for d in nurture.lifecycle.definitions(kind)
    ]
    assert sorted((d["kind"], d["key"]) for d in stored) == sorted(
        (d.kind, d.key) for d in DEFINITIONS
    )
    for d in stored:
        assert (d["status"], d["error"], d["source"]) == ("active", None, source), d


def _some_activity(nurture: Nurture) -> None:
    when = nurture.clock.now()
    for event in ("Signed Up", "Logged In", "Order Completed", "Report Exported"):
        send(nurture, "ann", event, when, revenue=10, format="pdf")
    send(nurture, "ann", "Pricing", when, type_="page")
    assert nurture.engine.evaluate_pending() == 1


def test_every_definition_loads_through_the_services(nurture: Nurture) -> None:
    # Given every definition of the page, saved kind by kind, as the API would
    for kind in DEFINITION_KINDS:
        for d in DEFINITIONS:
            if d.kind != kind:
                continue
            if kind == "segment":
                nurture.segments.save(d.data)
            else:
                nurture.lifecycle.save(kind, d.key, d.data)
    # Then every condition example can be previewed against them
    for block in CONDITIONS:
        nurture.segments.preview(block.data)
    # And evaluating a contact in real time and everyone on schedule fails nothing
    _some_activity(nurture)
    report = nurture.engine.evaluate_all()
    assert not [r for r in report.segments if r.error]
    _every_definition_is_active(nurture, "api")


def test_every_definition_loads_as_project_files(
    nurture: Nurture, tmp_path: Path, client: TestClient, admin_key: str
) -> None:
    # Given every definition block of the page as a file of its folder
    for block in BLOCKS:
        if block.what == "json" or block.name == "condition":
            continue
        kind = PRESET_KINDS.get(block.name, block.name)
        path = tmp_path / FOLDER_OF[kind] / f"line_{block.line}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(block.body)
    # When the project is applied
    plan = Project(tmp_path, nurture.db, nurture.clock).apply()
    # Then each one is added and works
    assert len(plan.add) == len(DEFINITIONS)
    _some_activity(nurture)
    nurture.engine.evaluate_all()
    _every_definition_is_active(nurture, "file")
    # And a file segment cannot be changed through the API
    api = Api(client, admin_key)
    refused = api(
        "PUT", "/api/segments/engaged", 409, json={"where": {"trait": "plan", "eq": "pro"}}
    )
    documented("file-conflict", refused)


# -- the definitions API ------------------------------------------------------------------
def test_definitions_are_saved_and_deleted_through_their_route(
    client: TestClient, admin_key: str
) -> None:
    api = Api(client, admin_key)
    api("PUT", "/api/definitions/computed/orders", json=definition("computed", "orders"))
    api("DELETE", "/api/definitions/computed/orders", 204)


def save_definition(nurture: Nurture, kind: str, key: str, body: dict[str, Any]) -> Any:
    """`PUT /api/definitions/{kind}/{key}`, by the service the route calls (the route
    answers what the service returns)."""
    return nurture.lifecycle.save(kind, key, body)


# -- scenarios ---------------------------------------------------------------------------
def test_scenario_engaged(
    nurture: Nurture, clock: SimulatedClock, client: TestClient, admin_key: str
) -> None:
    api = Api(client, admin_key)
    # Given `engaged`, created through the API before anyone logs in, and two more segments
    documented(
        "create-response", api("POST", "/api/segments", 201, json=JSON["create-request"].data)
    )
    nurture.segments.save(definition("segment", "engaged_never_ordered"))
    nurture.segments.save(definition("segment", "recently_engaged"))
    # When Ann, who told us her email and name, logs in three times, and Bob once
    traits = {"email": "ann@example.com", "name": "Ann"}
    timestamp = at(3, 1).isoformat()
    nurture.ingest(
        [{"type": "identify", "userId": "ann", "traits": traits, "timestamp": timestamp}]
    )
    for hour in (9, 10, 11):
        send(nurture, "ann", "Logged In", at(3, 1, hour))
    send(nurture, "bob", "Logged In", at(3, 1, 11, 30))
    # Then a preview counts both logins of the day, saving nothing
    preview = api("POST", "/api/segments/preview", json=JSON["preview-request"].data)
    documented("preview-response", preview)
    # When they are evaluated in real time
    assert nurture.engine.evaluate_pending() == 2
    # Then Ann is in two segments, with an event each, but not yet in recently_engaged
    assert (members(nurture, "engaged"), members(nurture, "engaged_never_ordered")) == (
        {"ann"},
        {"ann"},
    )
    assert members(nurture, "recently_engaged") == set()
    assert system_events(nurture, "ann") == [
        ("segment.entered", {"segment": "engaged"}, at(3, 1)),
        ("segment.entered", {"segment": "engaged_never_ordered"}, at(3, 1)),
    ]
    documented("members-response", api("GET", "/api/segments/engaged/members"))
    timeline = api("GET", "/api/contacts/1/events", params={"event": "segment.entered"})
    (entered,) = [e for e in timeline["items"] if e["properties"] == {"segment": "engaged"}]
    documented("system-event", entered)
    # And a cycle is refused
    cycle = {"where": {"segment": "engaged_never_ordered"}}
    documented("cycle-error", api("PUT", "/api/segments/engaged", 400, json=cycle))
    # And so are a missing segment and deleting one that another uses, as the page quotes
    typo = {"key": "typo", "where": {"segment": "engadged"}}
    missing = api("POST", "/api/segments", 400, json=typo)["error"]["message"]
    in_use = api("DELETE", "/api/segments/engaged", 409)["error"]["message"]
    assert f"`{missing}`" in TEXT
    assert f"409: `{in_use}`" in " ".join(TEXT.split())
    # When the scheduled run comes at 12:10
    advance_to(nurture, clock, at(3, 1, 12, 10))
    # Then it sees the segment.entered event of 12:00
    assert members(nurture, "recently_engaged") == {"ann"}
    # When Ann orders on Mar 3
    advance_to(nurture, clock, at(3, 3))
    send(nurture, "ann", "Order Completed", at(3, 3), revenue=30)
    nurture.engine.evaluate_pending()
    # Then she leaves engaged_never_ordered in real time, and stays engaged
    assert members(nurture, "engaged_never_ordered") == set()
    assert system_events(nurture, "ann")[-1] == (
        "segment.exited",
        {"segment": "engaged_never_ordered"},
        at(3, 3),
    )
    # When the month runs out, with a scheduled run a day
    advance_to(nurture, clock, at(3, 31, 12, 10))
    # Then she left recently_engaged on Mar 8 and engaged on Mar 31; Bob joined nothing
    assert changes(nurture, "recently_engaged") == [
        ("entered", at(3, 1, 12, 10)),
        ("exited", at(3, 8, 12, 10)),
    ]
    assert changes(nurture, "engaged") == [("entered", at(3, 1)), ("exited", at(3, 31, 12, 10))]
    assert system_events(nurture, "bob") == []
    documented("changes-response", api("GET", "/api/segments/engaged_never_ordered/changes"))


def computed_world(nurture: Nurture) -> None:
    """The customer-values scenario: the page's traits, repeat_buyers, Ann and Bob."""
    for d in DEFINITIONS:
        if d.kind == "computed":
            nurture.lifecycle.save("computed", d.key, d.data)
    nurture.segments.save(definition("segment", "repeat_buyers"))
    send(nurture, "ann", "Order Completed", at(2, 10, 9), revenue=40)
    send(nurture, "ann", "Order Completed", at(2, 25, 18, 30), revenue=60)
    send(nurture, "ann", "Feature Used", at(2, 28, 10), feature="dashboard_created")
    send(nurture, "bob", "Order Completed", datetime(2025, 11, 1, 10, tzinfo=UTC), revenue=500)
    assert nurture.engine.evaluate_pending() == 2


def _shown(value: Any) -> str:
    """A computed value as the page's table writes it."""
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _values_table() -> dict[str, tuple[str, str]]:
    after = TEXT[TEXT.index("<!-- scenario: computed -->") :]
    table = re.search(r"^\|.*?\n(?!\|)", after, re.S | re.M)
    assert table, "no table after the computed scenario"
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|$", table.group(0), re.M)
    return {key: (ann.strip(), bob.strip()) for key, ann, bob in rows}


def values(nurture: Nurture) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ann's and Bob's computed values now, as templates would read them."""
    now = nurture.clock.now()
    ids = [contact(nurture, "ann"), contact(nurture, "bob")]
    with nurture.db.read() as conn:
        reg = nurture.engine.registry(conn)
        env = reg.env(now, nurture.engine.computed_state(conn))
        facts = load_facts(conn, ids, event_names=reg.event_names, now=now)
    ann, bob = (computed_values(facts[i], env) for i in ids)
    return ann, bob


def test_scenario_computed(nurture: Nurture, clock: SimulatedClock) -> None:
    # Given the customer-values world
    computed_world(nurture)
    # Then each trait has the value the table shows, for Ann and for Bob
    ann, bob = values(nurture)
    shown = {key: (_shown(ann[key]), _shown(bob[key])) for key in ann}
    assert shown == _values_table()
    # And the conditions the page names select Ann
    assert members(nurture, "repeat_buyers") == {"ann"}
    recent_first_order = nurture.segments.preview(
        {"computed": "first_order_at", "within_last": "30d"}
    )
    dashboard = nurture.segments.preview({"computed": "made_dashboard", "eq": True})
    assert [c["userId"] for c in recent_first_order.sample] == ["ann"]
    assert [c["userId"] for c in dashboard.sample] == ["ann"]
    # And an operator that does not fit the value is refused with the page's message
    with pytest.raises(ValidationError) as refused:
        nurture.segments.preview({"computed": "first_order_at", "gt": 3})
    assert f"`{refused.value.message}`" in " ".join(TEXT.split())
    # And RFM is ranked from the scheduled run of 12:10 on
    advance_to(nurture, clock, at(3, 1, 12, 10))
    ann, bob = values(nurture)
    assert (ann["rfm"], bob["rfm"]) == (331, 113)


def test_scenario_failure(
    nurture: Nurture, clock: SimulatedClock, client: TestClient, admin_key: str, tmp_path: Path
) -> None:
    api = Api(client, admin_key)

    def listed() -> dict[str, Any]:
        (found,) = [s for s in api("GET", "/api/segments") if s["key"] == "repeat_buyers"]
        return dict(found)

    # Given the customer-values world, and a segment built on repeat_buyers
    computed_world(nurture)
    nurture.segments.save({"key": "repeat_pro", "where": {"segment": "repeat_buyers"}})
    # Then the trait repeat_buyers reads cannot be deleted through the API
    refused = api("DELETE", "/api/definitions/computed/orders", 409)
    assert "is used by segment repeat_buyers" in refused["error"]["message"]
    # When it was a project file's, and `nurture apply` runs without that file at 12:05
    nurture.lifecycle.save("computed", "orders", definition("computed", "orders"), source="file")
    advance_to(nurture, clock, at(3, 1, 12, 5))
    plan = Project(tmp_path, nurture.db, nurture.clock).apply()
    assert [(d.kind, d.key) for d in plan.remove] == [("computed", "orders")]
    # Then nothing is evaluated yet
    assert listed()["status"] == "active"
    # When Bob orders again at 12:08
    advance_to(nurture, clock, at(3, 1, 12, 8))
    send(nurture, "bob", "Order Completed", at(3, 1, 12, 8), revenue=20)
    assert nurture.engine.evaluate_pending() == 1
    # Then the segment is failed with its error, and its members stay as they were
    documented("failed-segment", listed())
    assert members(nurture, "repeat_buyers") == {"ann"}
    # And the segment built on it fails too, with the page's message
    child = nurture.segments.get("repeat_pro")
    assert child["status"] == "failed"
    assert f"with the message `{child['error']}`" in " ".join(TEXT.split())
    # When the trait is declared again at 12:15 (after the 12:10 run)
    advance_to(nurture, clock, at(3, 1, 12, 15))
    save_definition(nurture, "computed", "orders", definition("computed", "orders"))
    # Then it is still shown failed, until the next scheduled run
    assert listed()["status"] == "failed"
    advance_to(nurture, clock, at(3, 2, 12, 10))
    assert (listed()["status"], listed()["error"]) == ("active", None)
    assert members(nurture, "repeat_buyers") == {"ann", "bob"}


def test_scenario_saas(
    nurture: Nurture, clock: SimulatedClock, client: TestClient, admin_key: str
) -> None:
    api = Api(client, admin_key)
    # Given the saas preset saved as `lifecycle` through the API, and a segment reading it
    request = JSON["put-model-request"].data
    documented("put-model-response", save_definition(nurture, "stage_model", "lifecycle", request))
    nurture.segments.save(definition("segment", "at_risk_users"))
    # When Ann signs up and Bob views the home page
    send(nurture, "ann", "Signed Up", at(3, 1))
    send(nurture, "bob", "Home", at(3, 1), type_="page")
    nurture.engine.evaluate_pending()
    assert (stage(nurture, "ann", "lifecycle"), stage(nurture, "bob", "lifecycle")) == (
        "signed_up",
        "visitor",
    )
    # And Ann uses a feature the next day and logs in daily from Mar 3 to Mar 9
    advance_to(nurture, clock, at(3, 2))
    send(nurture, "ann", "Feature Used", at(3, 2))
    nurture.engine.evaluate_pending()
    assert stage(nurture, "ann", "lifecycle") == "activated"
    for day in range(3, 10):
        advance_to(nurture, clock, at(3, day))
        send(nurture, "ann", "Logged In", at(3, day))
        nurture.engine.evaluate_pending()
        assert stage(nurture, "ann", "lifecycle") == ("activated" if day < 5 else "engaged")
    # When she stops, with a scheduled run a day
    advance_to(nurture, clock, at(3, 21, 12, 9))
    assert stage(nurture, "ann", "lifecycle") == "engaged"
    advance_to(nurture, clock, at(3, 21, 12, 10))
    # Then the run of Mar 21 finds her at risk, and the segment follows in the same run
    assert stage(nurture, "ann", "lifecycle") == "at_risk"
    assert members(nurture, "at_risk_users") == {"ann"}
    # And on Mar 25 she is who moved from engaged to at risk last week
    advance_to(nurture, clock, at(3, 25))
    since = parse_date_ref("7d ago").resolve_us(to_microseconds(clock.now()))  # as the CLI
    assert from_microseconds(since) == at(3, 18)
    moves = api(
        "GET",
        "/api/stages/lifecycle/moves",
        params={"from": "engaged", "to": "at_risk", "since": "2026-03-18T12:00:00Z"},
    )
    documented("moves-response", moves)
    # When the month without a login is over, and she comes back the next day
    advance_to(nurture, clock, at(4, 8, 12, 10))
    assert stage(nurture, "ann", "lifecycle") == "churned"
    assert members(nurture, "at_risk_users") == set()
    advance_to(nurture, clock, at(4, 9))
    send(nurture, "ann", "Logged In", at(4, 9))
    nurture.engine.evaluate_pending()
    # Then she is reactivated, and her moves are the ones the page lists
    assert stage(nurture, "ann", "lifecycle") == "reactivated"
    moved = [
        (p["from"], p["to"], when)
        for event, p, when in system_events(nurture, "ann")
        if event == "stage.changed"
    ]
    assert moved == [
        (None, "signed_up", at(3, 1)),
        ("signed_up", "activated", at(3, 2)),
        ("activated", "engaged", at(3, 5)),
        ("engaged", "at_risk", at(3, 21, 12, 10)),
        ("at_risk", "churned", at(4, 8, 12, 10)),
        ("churned", "reactivated", at(4, 9)),
    ]
    assert system_events(nurture, "bob") == [
        ("stage.changed", {"model": "lifecycle", "from": None, "to": "visitor"}, at(3, 1))
    ]
    assert changes(nurture, "at_risk_users") == [
        ("entered", at(3, 21, 12, 10)),
        ("exited", at(4, 8, 12, 10)),
    ]
    documented("counts-response", api("GET", "/api/stages/lifecycle"))


def test_scenario_lead(
    nurture: Nurture, clock: SimulatedClock, client: TestClient, admin_key: str
) -> None:
    api = Api(client, admin_key)
    # Given the lead score model, the sales funnel and hot_leads, as the page defines them
    nurture.lifecycle.save("score_model", "lead", definition("score_model", "lead"))
    nurture.lifecycle.save("stage_model", "sales", definition("stage_model", "sales"))
    nurture.segments.save(definition("segment", "hot_leads"))
    # When Dana signs up
    send(nurture, "dana", "Signed Up", at(3, 1))
    nurture.engine.evaluate_pending()
    # Then she is a warm lead
    assert (score(nurture, "dana", "lead"), stage(nurture, "dana", "sales")) == (
        (20.0, "warm"),
        "lead",
    )
    # When she views the pricing page three times and requests a demo the next day
    advance_to(nurture, clock, at(3, 2))
    for hour, minute in ((11, 0), (11, 30), (11, 45)):
        send(nurture, "dana", "Pricing", at(3, 2, hour, minute), type_="page")
    send(nurture, "dana", "Demo Requested", at(3, 2))
    nurture.engine.evaluate_pending()
    # Then one evaluation makes her hot, an MQL and a hot lead, and explains why
    assert (score(nurture, "dana", "lead"), stage(nurture, "dana", "sales")) == (
        (64.53, "hot"),
        "mql",
    )
    assert members(nurture, "hot_leads") == {"dana"}
    documented("explain-response", api("GET", "/api/contacts/1/scores/lead"))
    # When no event comes for a month, with a scheduled run a day
    advance_to(nurture, clock, at(3, 14, 12, 9))
    assert score(nurture, "dana", "lead")[1] == "hot"
    advance_to(nurture, clock, at(3, 14, 12, 10))
    # Then the run of Mar 14 cools her to warm, and back to lead
    assert (score(nurture, "dana", "lead"), stage(nurture, "dana", "sales")) == (
        (48.9, "warm"),
        "lead",
    )
    advance_to(nurture, clock, at(4, 1, 12, 10))
    assert score(nurture, "dana", "lead") == (32.26, "warm")
    # And her system events are the ones the table lists
    expected: list[tuple[str, dict[str, Any], datetime]] = [
        ("stage.changed", {"model": "sales", "from": None, "to": "lead"}, at(3, 1)),
        ("score.changed", {"model": "lead", "from": "cold", "to": "warm", "score": 20.0}, at(3, 1)),
        ("segment.entered", {"segment": "hot_leads"}, at(3, 2)),
        ("stage.changed", {"model": "sales", "from": "lead", "to": "mql"}, at(3, 2)),
        ("score.changed", {"model": "lead", "from": "warm", "to": "hot", "score": 64.53}, at(3, 2)),
        ("segment.exited", {"segment": "hot_leads"}, at(3, 14, 12, 10)),
        ("stage.changed", {"model": "sales", "from": "mql", "to": "lead"}, at(3, 14, 12, 10)),
        (
            "score.changed",
            {"model": "lead", "from": "hot", "to": "warm", "score": 48.9},
            at(3, 14, 12, 10),
        ),
    ]

    def order(item: tuple[str, dict[str, Any], datetime]) -> tuple[datetime, str]:
        return item[2], item[0]

    assert sorted(system_events(nurture, "dana"), key=order) == sorted(expected, key=order)
