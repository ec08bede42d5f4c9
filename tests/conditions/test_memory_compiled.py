"""The in-memory evaluator compiles each condition once and caches the closure by the
condition's identity: what changes between evaluations (now, the env) is read at every
call, the cache can be cleared or overflow without changing an answer, and no other
condition can be mistaken for a cached one.

The meaning itself is held to the SQL compiler's by test_agreement.py; these tests guard
what compiling adds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nurture.conditions import memory, values
from nurture.conditions.env import Env
from nurture.conditions.facts import ContactFacts, EventFact
from nurture.conditions.memory import Evaluator, clear_compiled, compiled
from nurture.conditions.model import TraitCondition, parse_condition
from nurture.conditions.values import compare
from nurture.store.types import to_microseconds

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
HOUR = 3_600_000_000


def at(hours_ago: float) -> int:
    return to_microseconds(NOW) - int(hours_ago * HOUR)


def contact(events: Sequence[tuple[Any, ...]] = (), **traits: Any) -> ContactFacts:
    """A contact with events (name, hours before NOW[, properties]), in time order."""
    facts = [
        EventFact(0, "track", e[0], at(e[1]), dict(e[2]) if len(e) > 2 else {}) for e in events
    ]
    facts.sort(key=lambda e: e.at)
    for number, event in enumerate(facts, start=1):
        event.id = number
    return ContactFacts(id=1, columns={}, traits=dict(traits), events=facts)


def evaluator(hours_later: float = 0, **env: Any) -> Evaluator:
    return Evaluator(Env(now=NOW + timedelta(hours=hours_later), **env))


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_compiled()


# -- now is read at every call -----------------------------------------------------------
# (condition, contact, hours after NOW, holds?) for one condition object evaluated at
# several moments, in an order that would expose an answer compiled at the first.
TIMED: list[tuple[dict[str, Any], ContactFacts, list[tuple[float, bool]]]] = [
    (
        {"event": "Logged In", "within_last": "7d"},
        contact([("Logged In", 24)]),
        [(0, True), (6 * 24, True), (6 * 24 + 1, False), (-25, False), (-24, True)],
    ),
    (
        {
            "event": "Logged In",
            "at_least": 2,
            "within_last": "1d",
            "where": [{"property": "method", "eq": "sso"}],
        },
        contact([("Logged In", 2, {"method": "sso"}), ("Logged In", 10, {"method": "sso"})]),
        [(0, True), (15, False), (-3, False), (14, True)],
    ),
    (
        {"trait": "renews_on", "within_next": "2d"},
        contact(renews_on=(NOW + timedelta(days=3)).isoformat()),
        [(0, False), (24, True), (72, True), (73, False)],
    ),
    (
        {"trait": "signed_up", "before": "30d ago"},
        contact(signed_up=(NOW - timedelta(days=29)).isoformat()),
        [(0, False), (25, True), (24, False), (48, True)],
    ),
    (
        {
            "sequence": [
                {"event": "Product Added"},
                {"not_event": "Order Completed", "within": "1h"},
            ]
        },
        contact([("Product Added", 0.5)]),
        [(0, False), (0.5, True), (0.4, False), (-1, False)],
    ),
    (
        {"trend": "count", "event": "Logged In", "period": "1d", "below": 0.5},
        contact([("Logged In", 30), ("Logged In", 36)]),
        [(0, True), (-7, False), (20, False), (1, True)],
    ),
    (
        {
            "aggregate": "sum",
            "of": "total",
            "event": "Order Completed",
            "within_last": "1d",
            "gt": 100,
        },
        contact([("Order Completed", 2, {"total": 60}), ("Order Completed", 20, {"total": 60})]),
        [(0, True), (5, False), (-3, False), (4, True)],
    ),
]


@pytest.mark.parametrize(("where", "facts", "moments"), TIMED)
def test_one_condition_answers_for_each_moment(
    where: dict[str, Any], facts: ContactFacts, moments: list[tuple[float, bool]]
) -> None:
    # Given one condition object
    condition = parse_condition(where)
    for hours_later, expected in moments:
        # When it is evaluated at another moment (its closure compiled at the first)
        answer = evaluator(hours_later)(condition, facts)
        # Then the answer is the one for that moment
        assert answer is expected, (hours_later, expected)


def test_one_evaluator_reads_its_now_at_each_call() -> None:
    # Given an evaluator whose moment moves after a condition was compiled with it
    condition = parse_condition({"event": "Logged In", "within_last": "1h"})
    facts = contact([("Logged In", 0.5)])
    evaluate = evaluator()
    assert evaluate(condition, facts)
    # When its now moves on by an hour
    evaluate.now_us += HOUR
    # Then the login has left the window
    assert not evaluate(condition, facts)


# -- the env is read at every call --------------------------------------------------------
def test_env_dependent_conditions_read_each_evaluators_env() -> None:
    # Given conditions whose meaning depends on the env, compiled under a first env
    stage = parse_condition({"stage": "customer"})
    cold = parse_condition({"score": "lead", "temperature": "cold"})
    facts = contact()
    facts.stages = {"lifecycle": "customer", "sales": "lead"}
    lifecycle = evaluator(
        default_stage_model="lifecycle", score_bands={"lead": [("cold", 0.0), ("hot", 50.0)]}
    )
    assert lifecycle(stage, facts) and lifecycle(cold, facts)
    # When another env names another default stage model and other score bands
    sales = evaluator(
        default_stage_model="sales", score_bands={"lead": [("cold", 10.0), ("icy", -10.0)]}
    )
    # Then each answers by its own env
    assert not sales(stage, facts)
    assert not sales(cold, facts)  # an unscored contact (0) is icy there
    assert lifecycle(stage, facts) and lifecycle(cold, facts)


# -- the cache ----------------------------------------------------------------------------
def test_a_condition_is_compiled_once_and_again_after_clearing() -> None:
    condition = parse_condition({"all": [{"trait": "plan", "eq": "pro"}, {"segment": "s"}]})
    facts = contact(plan="pro")
    facts.segments.add("s")
    first = compiled(condition)
    assert compiled(condition) is first
    # When the cache is cleared
    clear_compiled()
    # Then the closure compiled before still answers, and the condition compiles again
    assert first(facts, evaluator())
    assert compiled(condition) is not first
    assert evaluator()(condition, facts)
    facts.segments.clear()
    assert not evaluator()(condition, facts)


def test_conditions_that_come_and_go_are_never_mistaken_for_one_another() -> None:
    # Given contacts each of two conditions tells apart
    pro, free = contact(plan="pro"), contact(plan="free")
    evaluate = evaluator()
    for i in range(300):
        # When conditions are parsed, evaluated once and dropped (CPython hands a dropped
        # object's memory, and so its id, to the next object of its size)
        plan = "pro" if i % 2 else "free"
        answers = (
            evaluate(parse_condition({"trait": "plan", "eq": plan}), pro),
            evaluate(parse_condition({"trait": "plan", "eq": plan}), free),
        )
        # Then each is answered by its own compiled closure
        assert answers == ((True, False) if plan == "pro" else (False, True)), i


def test_the_cache_stays_within_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a cache limit of 5
    monkeypatch.setattr(values, "CACHE_LIMIT", 5)
    conditions = [parse_condition({"trait": "n", "gte": n}) for n in range(20)]
    facts = contact(n=10)
    evaluate = evaluator()
    # When 20 conditions are evaluated, twice
    answers = [evaluate(c, facts) for c in conditions + conditions]
    # Then the cache never held more than 5, and every answer is right
    assert len(memory._CONDITIONS) <= 5
    assert answers == [n <= 10 for n in range(20)] * 2


# -- counting by times alone, and with filters, at the edges -------------------------------
EDGES = [("A", 0), ("A", 24), ("A", 48), ("A", 7 * 24), ("A", -1), ("B", 1)]
# (condition, holds?) for a contact with A now, 1 and 2 days ago, exactly 7 days ago and
# one in an hour (not yet happened).
COUNTS: list[tuple[dict[str, Any], bool]] = [
    ({"event": "A"}, True),
    ({"event": "A", "at_least": 4}, True),
    ({"event": "A", "at_least": 5}, False),
    ({"event": "A", "at_most": 4}, True),
    ({"event": "A", "at_most": 3}, False),
    ({"event": "A", "at_least": 0}, True),
    ({"event": "A", "at_most": 0}, False),
    ({"event": "C", "at_most": 0}, True),
    ({"event": "C", "at_least": 0}, True),
    ({"event": "A", "within_last": "7d", "at_least": 4, "at_most": 4}, True),
    ({"event": "A", "within_last": "2d", "at_least": 3, "at_most": 3}, True),
    ({"event": "A", "within_last": "1d", "at_least": 2, "at_most": 2}, True),
    ({"event": "A", "within_last": "1h", "at_least": 2}, False),
    ({"event": "A", "within_last": "1h", "at_most": 1}, True),
    ({"event": "*", "within_last": "1h", "at_least": 2, "at_most": 2}, True),
    ({"event": "A", "where": [{"property": "k", "eq": 1}], "at_least": 4}, True),
    ({"event": "A", "where": [{"property": "k", "eq": 1}], "at_most": 3}, False),
    ({"event": "A", "where": [{"property": "k", "eq": 1}], "within_last": "2d"}, True),
    (
        {
            "event": "A",
            "where": [{"property": "k", "eq": 1}],
            "within_last": "1d",
            "at_least": 2,
            "at_most": 2,
        },
        True,
    ),
    ({"event": "A", "where": [{"property": "k", "eq": True}]}, False),
]


@pytest.mark.parametrize(("where", "expected"), COUNTS)
def test_event_counts_at_the_edges(where: dict[str, Any], expected: bool) -> None:
    facts = contact([(name, hours, {"k": 1}) for name, hours in EDGES])
    assert evaluator()(parse_condition(where), facts) is expected


# -- compiled comparisons are type-strict ---------------------------------------------------
# (comparison, value, holds?)
STRICT: list[tuple[dict[str, Any], Any, bool]] = [
    ({"eq": 1}, 1.0, True),
    ({"eq": 1}, True, False),
    ({"eq": 1}, "1", False),
    ({"eq": True}, 1, False),
    ({"eq": True}, True, True),
    ({"eq": "1"}, 1, False),
    ({"ne": 1}, None, True),
    ({"in": [1, "a", False]}, 1.0, True),
    ({"in": [1, "a", False]}, True, False),
    ({"in": [1, "a", False]}, False, True),
    ({"in": [1, "a", False]}, 0, False),
    ({"in": [1, "a", False]}, "a", True),
    ({"in": [1, "a", False]}, ["a"], False),
    ({"in": [math.nan]}, math.nan, False),
    ({"not_in": [1]}, None, True),
    ({"not_in": [True]}, 1, True),
    ({"contains": 1}, [True, 1.0], True),
    ({"contains": True}, [1], False),
    ({"contains": "b"}, "abc", True),
    ({"contains": 1}, "1", False),
    ({"gt": 1}, True, False),
    ({"gt": 1}, 1.5, True),
    ({"between": [1, 2]}, 2, True),
    ({"between": [1, 2]}, "2", False),
    ({"starts_with": "a"}, ["a"], False),
    ({"exists": False}, None, True),
    ({"within_last": "1d"}, to_microseconds(NOW) // 1_000_000, True),
    ({"within_last": "1d"}, True, False),
]


@pytest.mark.parametrize(("operator", "value", "expected"), STRICT)
def test_compiled_comparisons_are_type_strict(
    operator: dict[str, Any], value: Any, expected: bool
) -> None:
    condition = parse_condition({"trait": "x", **operator})
    assert isinstance(condition, TraitCondition)
    now_us = to_microseconds(NOW)
    assert evaluator()(condition, contact(x=value)) is expected
    assert compare(value, condition, now_us) is expected
