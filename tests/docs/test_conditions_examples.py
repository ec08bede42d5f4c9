"""Every condition example in docs/conditions.md holds, in both evaluators, on SQLite and
PostgreSQL; every error message the page quotes is the one `parse_condition` gives.

An example is a condition block followed by the small world it is checked against, in an
HTML comment that rendered Markdown hides:

    <!-- example: NAME -->
    ```yaml            (or ```json) a condition, or a definition whose `where:` is one
    ```
    <!-- scenario
    now: 2026-03-01T12:00:00Z          optional; this is the default
    contacts:
      ann:                              a name, as `matches` lists it
        traits: {plan: pro}             the traits JSON (YAML dates become ISO 8601 text)
        email: ann@example.com          reserved columns, as ingest normalises them:
                                        email phone country timezone locale user_id
        created_at: 40d                 time columns as ages: created_at first_seen_at
                                        last_seen_at (default 365d, 365d, the last event)
        events: [[Logged In, 2d], [Order Completed, 1h, {total: 80}], [Pricing, 3d, page]]
        segments: [trial]               stored memberships
        stages: {lifecycle: customer}   current stage per model (also counted as reached)
        reached: {lifecycle: [lead]}    stages reached before
        scores: {lead: 42}              the temperature is the model's band for the score
        consents: {email: granted, email/product: [denied, 2d]}   channel[/topic]: state
                                        or [state, age]; no topic is *, the age now
    matches: [ann]                      exactly these contacts satisfy the condition
    -->

An event is [name, age, properties?, type?] (type `track` unless given); an age is a
duration before now (`2d`, `1d12h`), `now`, or `in 2h` for a moment after now. A scenario
may start from another example's with `same_as: NAME` and override its keys.

An error example is a block that `parse_condition` refuses, then the message it gives:

    <!-- error-example -->
    ```yaml
    ```
    ```text
    where.event.within_last: expected a duration like 30d, 12h, 90m or 1d12h
    ```

Every ```yaml and ```json block on the page belongs to an example or an error example.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import delete, insert

from nurture.conditions.compile import SqlCompiler
from nurture.conditions.durations import parse_duration
from nurture.conditions.env import Env
from nurture.conditions.facts import TEXT_COLUMNS, TIME_COLUMNS, load_facts
from nurture.conditions.memory import Evaluator
from nurture.conditions.model import (
    KINDS,
    OPERATORS,
    AggregateCondition,
    Condition,
    EventCondition,
    SequenceCondition,
    TraitCondition,
    TrendCondition,
    dump_condition,
    parse_condition,
    walk,
)
from nurture.errors import ValidationError
from nurture.store import Database
from nurture.store import tables as t

DOC = Path(__file__).resolve().parents[2] / "docs" / "conditions.md"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# The score and stage models the page says its examples assume.
SCORE_BANDS = {"lead": [("cold", 0.0), ("warm", 20.0), ("hot", 50.0)]}
DEFAULT_STAGE_MODEL = "lifecycle"
# Kinds whose examples need definitions this page does not make (computed traits are
# declared in the project); the page still gives each its own section.
DOCUMENTED_ELSEWHERE = {"computed": "## Computed traits: `computed`"}

_EXAMPLE = re.compile(
    r"<!-- example: (?P<name>[a-z0-9-]+) -->\s*"
    r"```(?P<lang>yaml|json)\n(?P<body>[^`]*)^```\s*"
    r"<!-- scenario\n(?P<scenario>[^`]*?)^-->",
    re.S | re.M,
)
_ERROR = re.compile(
    r"<!-- error-example -->\s*"
    r"```(?P<lang>yaml|json)\n(?P<body>[^`]*)^```\s*"
    r"```text\n(?P<message>.*?)\n```$",
    re.S | re.M,
)
_BLOCK = re.compile(r"^```(?:yaml|json)\n", re.M)
_CONTACT_KEYS = {
    "traits",
    "events",
    "segments",
    "stages",
    "reached",
    "scores",
    "consents",
    *TEXT_COLUMNS,
    *TIME_COLUMNS,
}
_TABLES = (
    t.contacts,
    t.events,
    t.segment_memberships,
    t.contact_stages,
    t.stage_changes,
    t.contact_scores,
    t.consents,
)


@dataclass
class Example:
    name: str
    line: int
    data: Any
    scenario: dict[str, Any]

    @property
    def where(self) -> Any:
        """The condition: the block itself, or the `where:` of a definition."""
        if isinstance(self.data, dict) and "where" in self.data and "key" in self.data:
            return self.data["where"]
        return self.data


@dataclass
class ErrorExample:
    line: int
    data: Any
    message: str


def _load(lang: str, body: str) -> Any:
    return json.loads(body) if lang == "json" else yaml.safe_load(body)


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def parse_page(text: str) -> tuple[list[Example], list[ErrorExample]]:
    """The page's examples and error examples; fails on a block that belongs to neither."""
    claimed: set[int] = set()
    examples: dict[str, Example] = {}
    for m in _EXAMPLE.finditer(text):
        name = m.group("name")
        assert name not in examples, f"two examples are named {name}"
        scenario = yaml.safe_load(m.group("scenario"))
        assert isinstance(scenario, dict), f"{name}: the scenario is not a mapping"
        if "same_as" in scenario:
            base_name = scenario.pop("same_as")
            assert base_name in examples, f"{name}: same_as names no earlier example"
            base = examples[base_name].scenario
            scenario = {**base, **scenario}
        examples[name] = Example(
            name, _line(text, m.start()), _load(m.group("lang"), m.group("body")), scenario
        )
        claimed.add(m.start("lang") - 3)
    errors = []
    for m in _ERROR.finditer(text):
        errors.append(
            ErrorExample(
                _line(text, m.start()),
                _load(m.group("lang"), m.group("body")),
                m.group("message").strip(),
            )
        )
        claimed.add(m.start("lang") - 3)
    starts = {m.start() for m in (*_EXAMPLE.finditer(text), *_ERROR.finditer(text))}
    lacking = [
        _line(text, m.start())
        for m in re.finditer(r"<!-- (?:example:|error-example)", text)
        if m.start() not in starts
    ]
    assert not lacking, f"example comments without their blocks at lines {lacking}"
    orphans = [_line(text, m.start()) for m in _BLOCK.finditer(text) if m.start() not in claimed]
    assert not orphans, f"yaml/json blocks without an example comment at lines {orphans}"
    return list(examples.values()), errors


EXAMPLES, ERRORS = parse_page(DOC.read_text())


# -- building a scenario's world ---------------------------------------------------------
def moment(now: datetime, age: Any) -> datetime:
    """`2d` → two days before now; `in 2h` → two hours after; `now` → now."""
    text = str(age).strip()
    if text == "now":
        return now
    if text.startswith("in "):
        return now + parse_duration(text[3:])
    return now - parse_duration(text)


def plain(value: Any) -> Any:
    """A YAML value as JSON would carry it: dates and date-times as ISO 8601 text."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def scenario_now(scenario: dict[str, Any]) -> datetime:
    now = scenario.get("now", NOW)
    if isinstance(now, str):
        now = datetime.fromisoformat(now)
    assert isinstance(now, datetime) and now.tzinfo is not None, "now needs a time zone"
    return now


def env_for(scenario: dict[str, Any]) -> Env:
    return Env(
        now=scenario_now(scenario),
        score_bands=SCORE_BANDS,
        default_stage_model=DEFAULT_STAGE_MODEL,
    )


def world_rows(scenario: dict[str, Any]) -> tuple[dict[str, int], dict[Any, list[dict[str, Any]]]]:
    """(contact ids by name, rows by table) for the scenario's contacts."""
    now = scenario_now(scenario)
    env = env_for(scenario)
    rows: dict[Any, list[dict[str, Any]]] = {table: [] for table in _TABLES}
    ids: dict[str, int] = {}
    for index, (name, spec) in enumerate((scenario.get("contacts") or {}).items(), start=1):
        spec = spec or {}
        unknown = set(spec) - _CONTACT_KEYS
        assert not unknown, f"contact {name}: unknown keys {sorted(unknown)}"
        ids[str(name)] = index
        events: list[dict[str, Any]] = []
        for event in spec.get("events", []):
            event_name, age, *rest = event
            props = next((x for x in rest if isinstance(x, dict)), {})
            type_ = next((x for x in rest if isinstance(x, str)), "track")
            number = len(rows[t.events]) + len(events) + 1
            events.append(
                {
                    "id": number,
                    "message_id": f"m{number}",
                    "type": type_,
                    "event": event_name,
                    "contact_id": index,
                    "timestamp": moment(now, age),
                    "received_at": now,
                    "properties": plain(props),
                }
            )
        rows[t.events] += events
        first_seen = moment(now, spec.get("first_seen_at", "365d"))
        seen = [e["timestamp"] for e in events if e["timestamp"] <= now]
        rows[t.contacts].append(
            {
                "id": index,
                **{column: spec.get(column) for column in TEXT_COLUMNS},
                "traits": plain(spec.get("traits", {})),
                "trait_issues": {},
                "first_seen_at": first_seen,
                "last_seen_at": (
                    moment(now, spec["last_seen_at"])
                    if "last_seen_at" in spec
                    else max(seen, default=first_seen)
                ),
                "created_at": moment(now, spec.get("created_at", "365d")),
                "updated_at": now,
            }
        )
        rows[t.segment_memberships] += [
            {"segment_key": key, "contact_id": index, "entered_at": now}
            for key in spec.get("segments", [])
        ]
        reached = {model: set(stages) for model, stages in spec.get("reached", {}).items()}
        for model, stage in spec.get("stages", {}).items():
            rows[t.contact_stages].append(
                {"model": model, "contact_id": index, "stage": stage, "since": now}
            )
            reached.setdefault(model, set()).add(stage)
        rows[t.stage_changes] += [
            {"model": model, "contact_id": index, "to_stage": stage, "changed_at": now}
            for model, stages in reached.items()
            for stage in sorted(stages)
        ]
        rows[t.contact_scores] += [
            {
                "model": model,
                "contact_id": index,
                "score": float(score),
                "temperature": env.temperature_of(model, float(score)),
                "updated_at": now,
            }
            for model, score in spec.get("scores", {}).items()
        ]
        for channel_topic, given in spec.get("consents", {}).items():
            channel, _, topic = channel_topic.partition("/")
            state, age = given if isinstance(given, list) else (given, "now")
            rows[t.consents].append(
                {
                    "contact_id": index,
                    "channel": channel,
                    "topic": topic or "*",
                    "state": state,
                    "recorded_at": moment(now, age),
                }
            )
    return ids, rows


def store(db: Database, rows: dict[Any, list[dict[str, Any]]]) -> None:
    with db.write() as conn:
        for table in _TABLES:
            conn.execute(delete(table))
            if rows[table]:
                conn.execute(insert(table), rows[table])


def members(db: Database, example: Example) -> tuple[set[str], set[str]]:
    """(names selected by the SQL compiler, names selected by the in-memory evaluator)."""
    ids, rows = world_rows(example.scenario)
    store(db, rows)
    names = {i: name for name, i in ids.items()}
    condition = parse_condition(example.where)
    env = env_for(example.scenario)
    with db.read() as conn:
        in_sql = set(conn.execute(SqlCompiler(env, db.backend).members(condition)).scalars())
        facts = load_facts(conn, list(names), now=env.now)
    evaluate = Evaluator(env)
    in_memory = {i for i, f in facts.items() if evaluate(condition, f)}
    return {names[i] for i in in_sql}, {names[i] for i in in_memory}


# -- what the examples cover -------------------------------------------------------------
def conditions() -> Iterator[Condition]:
    for example in EXAMPLES:
        yield from walk(parse_condition(example.where))


def kind_of(condition: Condition) -> str:
    return str(next(iter(dump_condition(condition))))


# -- the tests ---------------------------------------------------------------------------
def test_the_page_has_examples() -> None:
    assert len(EXAMPLES) >= 40
    assert len(ERRORS) >= 5


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_is_well_formed(example: Example) -> None:
    # Given an example of the page
    where = f"{example.name} (line {example.line})"
    # Then its condition is valid, and its scenario names the contacts it selects
    parse_condition(example.where)
    assert set(example.scenario) <= {"now", "contacts", "matches"}, where
    contacts = set(example.scenario.get("contacts") or {})
    matches = example.scenario.get("matches")
    assert isinstance(matches, list), f"{where}: the scenario needs `matches: [...]`"
    assert set(matches) <= contacts, f"{where}: matches names unknown contacts"
    assert contacts - set(matches), f"{where}: show at least one contact that does not match"
    world_rows(example.scenario)


def test_examples_hold(db: Database) -> None:
    # Given one database for all the examples, each storing its own world in turn
    failures = []
    for example in EXAMPLES:
        # When both evaluators select the members of the example's condition
        in_sql, in_memory = members(db, example)
        # Then each selects exactly the contacts the page says
        expected = set(example.scenario["matches"])
        if in_sql != expected or in_memory != expected:
            failures.append(
                f"{example.name} (line {example.line}): documented {sorted(expected)}, "
                f"SQL {sorted(in_sql)}, in memory {sorted(in_memory)}"
            )
    assert not failures, "\n".join(failures)


def test_every_kind_has_an_example() -> None:
    # Given the kinds the examples use
    used = {kind_of(c) for c in conditions()}
    # Then every kind of the language has one, or its section says where it is shown
    text = DOC.read_text()
    for kind, heading in DOCUMENTED_ELSEWHERE.items():
        assert f"\n{heading}\n" in text, f"no {heading} section for {kind}"
    missing = set(KINDS) - used - set(DOCUMENTED_ELSEWHERE)
    assert not missing, f"kinds without an example: {sorted(missing)}"


def test_every_operator_has_a_trait_example() -> None:
    used = {c.operator for c in conditions() if isinstance(c, TraitCondition)}
    missing = [op for op in OPERATORS if op not in used]
    assert not missing, f"operators without a trait example: {missing}"


def test_events_filters_and_sequences_have_examples() -> None:
    found = list(conditions())
    assert any(isinstance(c, EventCondition) and c.where for c in found), "property filters"
    assert any(isinstance(c, EventCondition) and c.type != "track" for c in found), "types"
    assert {c.aggregate for c in found if isinstance(c, AggregateCondition)} == {
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "count_distinct",
    }
    steps = [s for c in found if isinstance(c, SequenceCondition) for s in c.sequence]
    assert any(s.same for s in steps) and any(s.negative for s in steps), "same, not_event"
    trends = [c for c in found if isinstance(c, TrendCondition)]
    assert any(c.below for c in trends) and any(c.above for c in trends), "below, above"


@pytest.mark.parametrize("error", ERRORS, ids=[f"line-{e.line}" for e in ERRORS])
def test_error_message_is_the_real_one(error: ErrorExample) -> None:
    # Given an input the page says is refused
    # When it is parsed
    with pytest.raises(ValidationError) as caught:
        parse_condition(error.data)
    # Then the message is the one quoted, path included
    assert str(caught.value) == error.message, f"line {error.line}"
    assert caught.value.code == "invalid_condition"
