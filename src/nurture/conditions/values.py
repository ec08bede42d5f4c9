"""Values as conditions read them: traits and property paths, JSON scalars compared
type-strictly, times, and comparisons compiled once into tests.

Shared by the in-memory evaluator (`memory.py`), computed traits and journeys; the SQL
compiler (`compile.py`) states the same meaning in SQL, and
tests/conditions/test_agreement.py holds the two to the same answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nurture.conditions.facts import TEXT_COLUMNS, TIME_COLUMNS, ContactFacts
from nurture.conditions.model import ALL_TOPICS, Comparison, window_us
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


def window(duration: Any) -> int:
    us = window_us(duration)
    assert us is not None
    return us


# -- compiled comparisons ---------------------------------------------------------------
# A comparison compiles to `test(value, now_us)`: does `value` (a trait, property or
# computed value; None when missing) satisfy it as of `now_us`?
Test = Callable[[Any, int], bool]
NumberTest = Callable[[float | int | None], bool]
_NUMBERS = (int, float)


def comparison_test(cmp: Comparison) -> Test:
    """`compare` for one comparison, its operator and operand chosen once."""
    op, x = cmp.operator, cmp.operand
    if op == "exists":
        present = bool(x)
        return lambda value, now_us: (value is not None) is present
    if op in ("eq", "ne"):
        return _negated(_equal_to(x)) if op == "ne" else _equal_to(x)
    if op in ("in", "not_in"):
        return _negated(_one_of(x)) if op == "not_in" else _one_of(x)
    if op in ("gt", "gte", "lt", "lte", "between"):
        order = _order(op, x)
        return lambda value, now_us: (
            isinstance(value, _NUMBERS) and not isinstance(value, bool) and order(value)
        )
    if op == "contains":
        return _contains(x)
    if op == "starts_with":
        prefix = str(x)
        return lambda value, now_us: isinstance(value, str) and value.startswith(prefix)
    if op == "ends_with":
        suffix = str(x)
        return lambda value, now_us: isinstance(value, str) and value.endswith(suffix)
    if op in ("within_last", "within_next", "before", "after"):
        return _time_test(op, x)
    raise AssertionError(f"unhandled operator {op}")


def number_test(cmp: Comparison) -> NumberTest:
    """`compare_number` for one comparison, its operator and operand chosen once."""
    op, x = cmp.operator, cmp.operand
    if op == "eq":
        return lambda value: value is not None and bool(value == x)
    if op == "ne":
        return lambda value: value is not None and bool(value != x)
    if op in ("gt", "gte", "lt", "lte", "between"):
        order = _order(op, x)
        return lambda value: value is not None and order(value)

    def unhandled(value: float | int | None) -> bool:
        if value is None:
            return False
        raise AssertionError(f"unhandled numeric operator {op}")

    return unhandled


def _negated(test: Test) -> Test:
    return lambda value, now_us: not test(value, now_us)


def _equal_to(x: Any) -> Test:
    """`scalar_equal(value, x)` for a fixed operand."""
    if isinstance(x, bool):
        return lambda value, now_us: value is x
    if isinstance(x, str):
        return lambda value, now_us: isinstance(value, str) and value == x
    if is_number(x):
        return lambda value, now_us: (
            value == x and isinstance(value, _NUMBERS) and not isinstance(value, bool)
        )
    return lambda value, now_us: False


def _one_of(items: list[Any]) -> Test:
    """`any(scalar_equal(value, item) for item in items)`, as set lookups by type."""
    flags = frozenset(i for i in items if isinstance(i, bool))
    texts = frozenset(i for i in items if isinstance(i, str))
    numbers = frozenset(i for i in items if is_number(i))

    def one_of(value: Any, now_us: int) -> bool:
        if isinstance(value, bool):
            return value in flags
        if isinstance(value, str):
            return value in texts
        # `value == value`: a set finds NaN by identity, which equality never does.
        return isinstance(value, _NUMBERS) and value == value and value in numbers

    return one_of


def _order(op: str, x: Any) -> Callable[[Any], bool]:
    """`value <op> x` for a number `value`."""
    if op == "gt":
        return lambda value: bool(value > x)
    if op == "gte":
        return lambda value: bool(value >= x)
    if op == "lt":
        return lambda value: bool(value < x)
    if op == "lte":
        return lambda value: bool(value <= x)
    if op == "between":
        low, high = x
        return lambda value: bool(low <= value <= high)
    raise AssertionError(f"unhandled numeric operator {op}")


def _contains(x: Any) -> Test:
    """A string containing `x`, or a list with an element equal to it."""
    equal = _equal_to(x)
    text = x if isinstance(x, str) else None

    def contains(value: Any, now_us: int) -> bool:
        if isinstance(value, str):
            return text is not None and text in value
        if isinstance(value, list):
            return any(equal(item, now_us) for item in value)
        return False

    return contains


def _time_test(op: str, x: Any) -> Test:
    """A date in a window around `now_us`, or before or after a date reference."""
    if op == "within_last":
        span = window(x)

        def within_last(value: Any, now_us: int) -> bool:
            at = as_time(value)
            return at is not None and now_us - span <= at <= now_us

        return within_last
    if op == "within_next":
        span = window(x)

        def within_next(value: Any, now_us: int) -> bool:
            at = as_time(value)
            return at is not None and now_us <= at <= now_us + span

        return within_next
    fixed: int | None = x.at_us
    shift: int = 0 if fixed is not None else x.resolve_us(0)  # relative: now + shift
    before = op == "before"

    def dated(value: Any, now_us: int) -> bool:
        at = as_time(value)
        if at is None:
            return False
        reference = now_us + shift if fixed is None else fixed
        return at < reference if before else at > reference

    return dated


# -- caches -------------------------------------------------------------------------------
# Compiled forms by the id of the definition they were compiled from. Each entry holds the
# definition too, so that no other object can take its id while it is cached; definitions
# are frozen models, so what was compiled stays true. Past CACHE_LIMIT entries a cache
# starts again (definitions that are replaced are not held forever).
CACHE_LIMIT = 10_000
_T = TypeVar("_T")
Cache = dict[int, tuple[Any, _T]]
_CACHES: list[Cache[Any]] = []


def new_cache() -> Cache[Any]:
    """A cache of compiled forms, emptied by `clear_caches`."""
    cache: Cache[Any] = {}
    _CACHES.append(cache)
    return cache


def cached(cache: Cache[_T], definition: Any, build: Callable[[Any], _T]) -> _T:
    found = cache.get(id(definition))
    if found is not None:
        return found[1]
    made = build(definition)
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[id(definition)] = (definition, made)
    return made


def clear_caches() -> None:
    """Forget every compiled condition, comparison and filter (compiled again when used)."""
    for cache in _CACHES:
        cache.clear()


_TESTS: Cache[Test] = new_cache()
_NUMBER_TESTS: Cache[NumberTest] = new_cache()


def compare(value: Any, cmp: Comparison, now_us: int) -> bool:
    """Does `value` (a trait, property or computed value; None when missing) satisfy
    the comparison?"""
    return cached(_TESTS, cmp, comparison_test)(value, now_us)


def compare_number(value: float | int | None, cmp: Comparison) -> bool:
    """A numeric comparison where a missing number satisfies nothing (not even `ne`)."""
    return cached(_NUMBER_TESTS, cmp, number_test)(value)


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


def same_value(a: Any, b: Any) -> bool:
    """`same:` compares scalars only; missing values or objects never match."""
    if a is None or isinstance(a, dict | list):
        return False
    return scalar_equal(a, b)
