"""The in-memory evaluator: one condition, one contact's facts, at event time.

Its meaning is the SQL compiler's (`compile.py`); docs/conditions.md states it once and
tests/conditions/test_agreement.py holds the two to the same answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, assert_never

from nurture.conditions.env import Env
from nurture.conditions.facts import (
    TEXT_COLUMNS,
    TIME_COLUMNS,
    ContactFacts,
    EventFact,
    count_between,
)
from nurture.conditions.model import (
    ALL_TOPICS,
    AggregateCondition,
    AllCondition,
    AnyCondition,
    Comparison,
    ComputedCondition,
    Condition,
    ConsentCondition,
    EventCondition,
    NotCondition,
    PropertyFilter,
    ScoreCondition,
    SegmentCondition,
    SequenceCondition,
    SequenceStep,
    StageCondition,
    TraitCondition,
    TrendCondition,
    window_us,
)
from nurture.store.functions import timestamp_us


@dataclass(frozen=True, slots=True)
class Moment:
    """A value that is a time already (a date column), not a trait to be read as one."""

    us: int


def split_path(path: str) -> list[str]:
    return path.split(".")


def json_at(doc: Any, path: str) -> Any:
    """The value at a dotted path in a JSON document; None when missing or null."""
    for part in split_path(path):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def trait_value(facts: ContactFacts, path: str) -> Any:
    if path in TEXT_COLUMNS:
        return facts.columns.get(path)
    if path in TIME_COLUMNS:
        us = facts.columns.get(path)
        return None if us is None else Moment(us)
    return json_at(facts.traits, path)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def scalar_equal(a: Any, b: Any) -> bool:
    """Type-strict equality of JSON scalars: 1 equals 1.0, never true or "1"."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if is_number(a) and is_number(b):
        return bool(a == b)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


def as_time(value: Any) -> int | None:
    if isinstance(value, Moment):
        return value.us
    return timestamp_us(value)


def compare(value: Any, cmp: Comparison, now_us: int) -> bool:
    """Does `value` (a trait, property or computed value; None when missing) satisfy
    the comparison?"""
    op, x = cmp.operator, cmp.operand
    if op == "exists":
        return (value is not None) is bool(x)
    if op == "eq":
        return scalar_equal(value, x)
    if op == "ne":
        return not scalar_equal(value, x)
    if op == "in":
        return any(scalar_equal(value, item) for item in x)
    if op == "not_in":
        return not any(scalar_equal(value, item) for item in x)
    if op in ("gt", "gte", "lt", "lte", "between"):
        return is_number(value) and _numeric(value, op, x)
    if op == "contains":
        if isinstance(value, str):
            return isinstance(x, str) and x in value
        if isinstance(value, list):
            return any(scalar_equal(item, x) for item in value)
        return False
    if op == "starts_with":
        return isinstance(value, str) and value.startswith(str(x))
    if op == "ends_with":
        return isinstance(value, str) and value.endswith(str(x))
    at = as_time(value)
    if at is None:
        return False
    if op == "within_last":
        return now_us - window(x) <= at <= now_us
    if op == "within_next":
        return now_us <= at <= now_us + window(x)
    if op == "before":
        return at < int(x.resolve_us(now_us))
    if op == "after":
        return at > int(x.resolve_us(now_us))
    raise AssertionError(f"unhandled operator {op}")


def compare_number(value: float | int | None, cmp: Comparison) -> bool:
    """A numeric comparison where a missing number satisfies nothing (not even `ne`)."""
    if value is None:
        return False
    op, x = cmp.operator, cmp.operand
    if op == "eq":
        return bool(value == x)
    if op == "ne":
        return bool(value != x)
    return _numeric(value, op, x)


def _numeric(value: float | int, op: str, x: Any) -> bool:
    if op == "gt":
        return bool(value > x)
    if op == "gte":
        return bool(value >= x)
    if op == "lt":
        return bool(value < x)
    if op == "lte":
        return bool(value <= x)
    if op == "between":
        return bool(x[0] <= value <= x[1])
    if op == "eq":
        return bool(value == x)
    if op == "ne":
        return bool(value != x)
    raise AssertionError(f"unhandled numeric operator {op}")


def window(duration: Any) -> int:
    us = window_us(duration)
    assert us is not None
    return us


def filters_hold(event: EventFact, filters: Iterable[PropertyFilter], now_us: int) -> bool:
    return all(compare(json_at(event.properties, f.property), f, now_us) for f in filters)


def matching(
    facts: ContactFacts,
    name: str,
    type_: str,
    filters: list[PropertyFilter],
    now_us: int,
    since_us: int | None = None,
) -> Iterator[EventFact]:
    """The contact's events of this name and type that pass the filters, up to now."""
    for event in facts.named(type_, name, since_us):
        if event.at > now_us:
            break
        if not filters or filters_hold(event, filters, now_us):
            yield event


def aggregate(values: list[Any], events: int, function: str) -> float | int | None:
    """count, sum, avg, min, max or count_distinct of property values (numbers only,
    but count_distinct, which counts distinct strings and distinct numbers)."""
    if function == "count":
        return events
    if function == "count_distinct":
        strings = {v for v in values if isinstance(v, str)}
        numbers = {v for v in values if is_number(v)}
        return len(strings) + len(numbers)
    numbers_only = [v for v in values if is_number(v)]
    if function == "sum":
        return math.fsum(numbers_only) if numbers_only else 0
    if not numbers_only:
        return None
    if function == "avg":
        return math.fsum(numbers_only) / len(numbers_only)
    if function == "min":
        low: float | int = min(numbers_only)
        return low
    if function == "max":
        high: float | int = max(numbers_only)
        return high
    raise AssertionError(f"unhandled aggregate {function}")


def consent_state(facts: ContactFacts, channel: str, topic: str) -> str:
    """The contact's consent for marketing about `topic` on `channel`, as the send-time
    policy reads it: of the topic's own row and the channel's `*` row, the one recorded
    last speaks (the topic's own on a tie); "unknown" when neither exists."""
    overall = facts.consents.get((channel, ALL_TOPICS))
    specific = facts.consents.get((channel, topic)) if topic != ALL_TOPICS else None
    latest = specific
    if overall is not None and (latest is None or overall[1] > latest[1]):
        latest = overall
    return "unknown" if latest is None else latest[0]


class Evaluator:
    """Evaluates conditions for contacts, all as of `env.now`."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.now_us = env.now_us

    def __call__(self, condition: Condition, facts: ContactFacts) -> bool:
        return self.holds(condition, facts)

    def holds(self, condition: Condition, facts: ContactFacts) -> bool:
        now = self.now_us
        match condition:
            case AllCondition():
                return all(self.holds(child, facts) for child in condition.all)
            case AnyCondition():
                return any(self.holds(child, facts) for child in condition.any)
            case NotCondition():
                return not self.holds(condition.not_, facts)
            case TraitCondition():
                return compare(trait_value(facts, condition.trait), condition, now)
            case EventCondition():
                since = (
                    None if condition.within_last is None else now - window(condition.within_last)
                )
                if condition.where:
                    found = matching(
                        facts, condition.event, condition.type, condition.where, now, since
                    )
                    count = sum(1 for _ in found)
                else:  # no property to test: count by time alone
                    named = facts.named(condition.type, condition.event)
                    count = count_between(named, since, now)
                low, high = condition.bounds
                return (low is None or count >= low) and (high is None or count <= high)
            case AggregateCondition():
                return self._aggregate(condition, facts)
            case SequenceCondition():
                return self._sequence(condition, facts)
            case TrendCondition():
                return self._trend(condition, facts)
            case SegmentCondition():
                return condition.segment in facts.segments
            case StageCondition():
                model = self.env.stage_model(condition.model)
                if condition.ever:
                    return condition.stage in facts.stages_ever.get(model, set())
                return facts.stages.get(model) == condition.stage
            case ScoreCondition():
                score, temperature = facts.scores.get(
                    condition.score, (0.0, self.env.temperature_of(condition.score, 0.0))
                )
                if condition.temperature is not None:
                    return temperature == condition.temperature
                return compare_number(score, condition)
            case ConsentCondition():
                return consent_state(facts, condition.consent, condition.topic) == condition.state
            case ComputedCondition():
                trait = self.env.computed_trait(condition.computed)
                value = trait.value(facts, self.env)
                return compare(value, condition, now)
            case _:
                assert_never(condition)

    def _aggregate(self, condition: AggregateCondition, facts: ContactFacts) -> bool:
        now = self.now_us
        since = None if condition.within_last is None else now - window(condition.within_last)
        events = list(matching(facts, condition.event, condition.type, condition.where, now, since))
        values = [json_at(e.properties, condition.of) for e in events] if condition.of else []
        return compare_number(aggregate(values, len(events), condition.aggregate), condition)

    def _trend(self, condition: TrendCondition, facts: ContactFacts) -> bool:
        now = self.now_us
        period = window(condition.period)
        recent = previous = 0
        for event in matching(
            facts, condition.event, condition.type, condition.where, now, now - 2 * period
        ):
            if event.at >= now - period:
                recent += 1
            else:
                previous += 1
        if condition.below is not None:
            return previous > 0 and recent < condition.below * previous
        assert condition.above is not None
        return recent > condition.above * previous

    def _sequence(self, condition: SequenceCondition, facts: ContactFacts) -> bool:
        now = self.now_us
        first = condition.sequence[0]
        since = None if condition.within_last is None else now - window(condition.within_last)
        reached = list(matching(facts, first.name, first.type, first.where, now, since))
        for step in condition.sequence[1:]:
            if not reached:
                return False
            candidates = list(matching(facts, step.name, step.type, step.where, now))
            if step.negative:
                return any(
                    self._closed(step, prev)
                    and not any(follows(step, prev, nxt) for nxt in candidates)
                    for prev in reached
                )
            reached = [
                nxt for nxt in candidates if any(follows(step, prev, nxt) for prev in reached)
            ]
        return bool(reached)

    def _closed(self, step: SequenceStep, prev: EventFact) -> bool:
        # "B did not follow within 1h" is only known once the hour is over.
        return step.within is None or prev.at + window(step.within) <= self.now_us


def follows(step: SequenceStep, prev: EventFact, nxt: EventFact) -> bool:
    """Does `nxt` follow `prev` as `step` requires (later, within, same properties)?"""
    if nxt.at <= prev.at:
        return False
    if step.within is not None and nxt.at > prev.at + window(step.within):
        return False
    return all(
        same_value(json_at(prev.properties, path), json_at(nxt.properties, path))
        for path in step.same
    )


def same_value(a: Any, b: Any) -> bool:
    """`same:` compares scalars only; missing values or objects never match."""
    if a is None or isinstance(a, dict | list):
        return False
    return scalar_equal(a, b)


EvaluateFn = Callable[[Condition, ContactFacts], bool]
