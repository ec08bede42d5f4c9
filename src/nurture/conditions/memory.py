"""The in-memory evaluator: one condition, one contact's facts, at event time.

Its meaning is the SQL compiler's (`compile.py`); docs/conditions.md states it once and
tests/conditions/test_agreement.py holds the two to the same answers.

Real-time evaluation asks some sixty conditions of every contact, so each condition is
compiled once into a closure `holds(facts, evaluator)`: what depends on the condition alone
(windows in microseconds, bounds, the operator's test, property paths, the children's
closures) is worked out when it is compiled; what depends on the evaluation (`now_us`, `env`)
is read from the evaluator at every call.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, TypeVar, assert_never

from nurture.conditions.env import Env
from nurture.conditions.facts import TEXT_COLUMNS, TIME_COLUMNS, ContactFacts, EventFact
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


# -- compiled property paths and event matches --------------------------------------------
Getter = Callable[[Any], Any]
Filter = tuple[Getter, Test]
# (facts, now_us, since_us) -> the events matched, in time order
Select = Callable[[ContactFacts, int, int | None], list[EventFact]]
_AT = attrgetter("at")


def path_getter(path: str) -> Getter:
    """`json_at(doc, path)` with the path split once."""
    parts = tuple(split_path(path))
    if len(parts) == 1:
        (key,) = parts
        return lambda doc: doc.get(key) if isinstance(doc, dict) else None

    def at_path(doc: Any) -> Any:
        for part in parts:
            if not isinstance(doc, dict):
                return None
            doc = doc.get(part)
        return doc

    return at_path


def _filter(where: PropertyFilter) -> Filter:
    return path_getter(where.property), comparison_test(where)


def _passes(filters: Sequence[Filter], properties: Any, now_us: int) -> bool:
    for get, test in filters:  # noqa: SIM110 - all() of a generator costs more here
        if not test(get(properties), now_us):
            return False
    return True


def _start(events: list[EventFact], since_us: int | None) -> int:
    """The index of the first of `events` (in time order) at `since_us` or later."""
    if since_us is None or not events or events[0].at >= since_us:
        return 0
    return bisect_left(events, since_us, key=_AT)


def _stop(events: list[EventFact], now_us: int) -> int:
    """How many of `events` (in time order) are at `now_us` or earlier: all of them, but
    for events after now, without a search."""
    if not events or events[-1].at <= now_us:
        return len(events)
    return bisect_right(events, now_us, key=_AT)


def _selector(type_: str, name: str, where: Sequence[PropertyFilter]) -> Select:
    """`matching` compiled: the events of this type and name (`*`: any) that pass the
    filters, from `since_us` (None: any time) to `now_us`, both included."""
    filters = tuple(_filter(f) for f in where)

    def select(facts: ContactFacts, now_us: int, since_us: int | None) -> list[EventFact]:
        events = facts.named(type_, name)
        found = events[_start(events, since_us) : _stop(events, now_us)]
        if filters:
            return [e for e in found if _passes(filters, e.properties, now_us)]
        return found

    return select


def _since(span: int | None, now_us: int) -> int | None:
    return None if span is None else now_us - span


# -- compiled conditions ------------------------------------------------------------------
Holds = Callable[[ContactFacts, "Evaluator"], bool]


def compile_condition(condition: Condition) -> Holds:
    """The condition as a closure `holds(facts, evaluator)`; its children are compiled
    with it, so it does not depend on the cache (see `compiled`)."""
    match condition:
        case AllCondition():
            return _all(tuple(compile_condition(child) for child in condition.all))
        case AnyCondition():
            return _any(tuple(compile_condition(child) for child in condition.any))
        case NotCondition():
            child = compile_condition(condition.not_)
            return lambda facts, ev: not child(facts, ev)
        case TraitCondition():
            return _trait(condition)
        case EventCondition():
            return _event(condition)
        case AggregateCondition():
            return _aggregate(condition)
        case SequenceCondition():
            return _sequence(condition)
        case TrendCondition():
            return _trend(condition)
        case SegmentCondition():
            segment = condition.segment
            return lambda facts, ev: segment in facts.segments
        case StageCondition():
            return _stage(condition)
        case ScoreCondition():
            return _score(condition)
        case ConsentCondition():
            channel, topic, state = condition.consent, condition.topic, condition.state
            return lambda facts, ev: consent_state(facts, channel, topic) == state
        case ComputedCondition():
            return _computed(condition)
        case _:
            assert_never(condition)


def _all(children: tuple[Holds, ...]) -> Holds:
    if len(children) == 1:
        return children[0]

    def all_hold(facts: ContactFacts, ev: Evaluator) -> bool:
        for child in children:  # noqa: SIM110 - all() of a generator costs more here
            if not child(facts, ev):
                return False
        return True

    return all_hold


def _any(children: tuple[Holds, ...]) -> Holds:
    if len(children) == 1:
        return children[0]

    def any_holds(facts: ContactFacts, ev: Evaluator) -> bool:
        for child in children:  # noqa: SIM110 - any() of a generator costs more here
            if child(facts, ev):
                return True
        return False

    return any_holds


def _trait(condition: TraitCondition) -> Holds:
    test, path = comparison_test(condition), condition.trait
    if path in TEXT_COLUMNS:
        return lambda facts, ev: test(facts.columns.get(path), ev.now_us)
    if path in TIME_COLUMNS:

        def column_time(facts: ContactFacts, ev: Evaluator) -> bool:
            us = facts.columns.get(path)
            return test(None if us is None else Moment(us), ev.now_us)

        return column_time
    get = path_getter(path)
    return lambda facts, ev: test(get(facts.traits), ev.now_us)


def _event(condition: EventCondition) -> Holds:
    type_, name = condition.type, condition.event
    span = None if condition.within_last is None else window(condition.within_last)
    low, most = condition.bounds
    least = low or 0
    if not condition.where:
        # No property to test: the answer is in the times alone. Of the events up to now
        # (in time order), at least k are in the window when the k-th last is.
        def counted(facts: ContactFacts, ev: Evaluator) -> bool:
            now = ev.now_us
            events = facts.named(type_, name)
            stop = _stop(events, now)
            since = None if span is None else now - span
            return _at_least(events, stop, since, least) and (
                most is None or not _at_least(events, stop, since, most + 1)
            )

        return counted
    filters = tuple(_filter(f) for f in condition.where)
    # Counting can stop once the answer is known: at `least` without an upper bound,
    # past `most` with one.
    enough = least if most is None else most + 1

    def filtered(facts: ContactFacts, ev: Evaluator) -> bool:
        now = ev.now_us
        events = facts.named(type_, name)
        count = 0
        for event in events[_start(events, _since(span, now)) : _stop(events, now)]:
            if _passes(filters, event.properties, now):
                count += 1
                if count >= enough:
                    break
        return count >= least and (most is None or count <= most)

    return filtered


def _at_least(events: list[EventFact], stop: int, since_us: int | None, k: int) -> bool:
    """Are at least `k` of `events[:stop]` (in time order) at `since_us` or later?"""
    if k <= 0:
        return True
    if stop < k:
        return False
    return since_us is None or events[stop - k].at >= since_us


def _aggregate(condition: AggregateCondition) -> Holds:
    select = _selector(condition.type, condition.event, condition.where)
    span = None if condition.within_last is None else window(condition.within_last)
    get = None if condition.of is None else path_getter(condition.of)
    function, test = condition.aggregate, number_test(condition)

    def aggregated(facts: ContactFacts, ev: Evaluator) -> bool:
        now = ev.now_us
        events = select(facts, now, _since(span, now))
        values = [get(e.properties) for e in events] if get and function != "count" else []
        return test(aggregate(values, len(events), function))

    return aggregated


def _trend(condition: TrendCondition) -> Holds:
    select = _selector(condition.type, condition.event, condition.where)
    period = window(condition.period)
    below, above = condition.below, condition.above

    def trend(facts: ContactFacts, ev: Evaluator) -> bool:
        now = ev.now_us
        events = select(facts, now, now - 2 * period)
        previous = _start(events, now - period)
        recent = len(events) - previous
        if below is not None:
            return previous > 0 and recent < below * previous
        assert above is not None
        return recent > above * previous

    return trend


# A later step of a sequence: (select, negative, within in microseconds, `same` paths).
_Step = tuple[Select, bool, int | None, tuple[Getter, ...]]


def _sequence(condition: SequenceCondition) -> Holds:
    first = condition.sequence[0]
    select_first = _selector(first.type, first.name, first.where)
    span = None if condition.within_last is None else window(condition.within_last)
    steps: tuple[_Step, ...] = tuple(
        (
            _selector(step.type, step.name, step.where),
            step.negative,
            None if step.within is None else window(step.within),
            tuple(path_getter(path) for path in step.same),
        )
        for step in condition.sequence[1:]
    )

    def sequence(facts: ContactFacts, ev: Evaluator) -> bool:
        now = ev.now_us
        reached = select_first(facts, now, _since(span, now))
        for select, negative, within, same in steps:
            if not reached:
                return False
            candidates = select(facts, now, None)
            if negative:
                # "B did not follow within 1h" is only known once the hour is over.
                return any(
                    (within is None or prev.at + within <= now)
                    and not _followed(prev, candidates, within, same)
                    for prev in reached
                )
            reached = [nxt for nxt in candidates if _preceded(nxt, reached, within, same)]
        return bool(reached)

    return sequence


# Both lists of events are in time order: the events close enough in time are a slice
# found by binary search, and only those are compared on `same`.
def _preceded(
    nxt: EventFact, reached: list[EventFact], within: int | None, same: tuple[Getter, ...]
) -> bool:
    """Does `nxt` follow one of `reached` (later, within, same properties)?"""
    stop = bisect_left(reached, nxt.at, key=_AT)
    start = 0 if within is None else bisect_left(reached, nxt.at - within, key=_AT)
    if not same or start >= stop:
        return start < stop
    return any(_same(same, prev, nxt) for prev in reached[start:stop])


def _followed(
    prev: EventFact, candidates: list[EventFact], within: int | None, same: tuple[Getter, ...]
) -> bool:
    """Does one of `candidates` follow `prev` (later, within, same properties)?"""
    start = bisect_right(candidates, prev.at, key=_AT)
    stop = (
        len(candidates) if within is None else bisect_right(candidates, prev.at + within, key=_AT)
    )
    if not same or start >= stop:
        return start < stop
    return any(_same(same, prev, nxt) for nxt in candidates[start:stop])


def _same(same: tuple[Getter, ...], prev: EventFact, nxt: EventFact) -> bool:
    for get in same:  # noqa: SIM110 - all() of a generator costs more here
        if not same_value(get(prev.properties), get(nxt.properties)):
            return False
    return True


def _stage(condition: StageCondition) -> Holds:
    stage, model = condition.stage, condition.model
    if condition.ever:
        return lambda facts, ev: stage in facts.stages_ever.get(ev.env.stage_model(model), ())
    return lambda facts, ev: facts.stages.get(ev.env.stage_model(model)) == stage


def _score(condition: ScoreCondition) -> Holds:
    """A contact without a score has 0, in the band 0 falls in."""
    name, temperature = condition.score, condition.temperature
    if temperature is not None:

        def in_band(facts: ContactFacts, ev: Evaluator) -> bool:
            found = facts.scores.get(name)
            band = ev.env.temperature_of(name, 0.0) if found is None else found[1]
            return band == temperature

        return in_band
    test = number_test(condition)

    def threshold(facts: ContactFacts, ev: Evaluator) -> bool:
        found = facts.scores.get(name)
        return test(0.0 if found is None else found[0])

    return threshold


def _computed(condition: ComputedCondition) -> Holds:
    key, test = condition.computed, comparison_test(condition)

    def computed(facts: ContactFacts, ev: Evaluator) -> bool:
        env = ev.env
        return test(env.computed_trait(key).value(facts, env), ev.now_us)

    return computed


# -- caches -------------------------------------------------------------------------------
# Compiled forms by the id of the definition they were compiled from. Each entry holds the
# definition too, so that no other object can take its id while it is cached; definitions
# are frozen models, so what was compiled stays true. Past CACHE_LIMIT entries a cache
# starts again (definitions that are replaced are not held forever).
CACHE_LIMIT = 10_000
_T = TypeVar("_T")
_CONDITIONS: dict[int, tuple[Condition, Holds]] = {}
_TESTS: dict[int, tuple[Comparison, Test]] = {}
_NUMBER_TESTS: dict[int, tuple[Comparison, NumberTest]] = {}
_FILTERS: dict[int, tuple[PropertyFilter, Filter]] = {}


def _cached(cache: dict[int, tuple[Any, _T]], definition: Any, build: Callable[[Any], _T]) -> _T:
    found = cache.get(id(definition))
    if found is not None:
        return found[1]
    made = build(definition)
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[id(definition)] = (definition, made)
    return made


def compiled(condition: Condition) -> Holds:
    """The condition's closure, compiled on its first use."""
    return _cached(_CONDITIONS, condition, compile_condition)


def clear_compiled() -> None:
    """Forget every compiled condition and comparison (they compile again when used)."""
    for cache in (_CONDITIONS, _TESTS, _NUMBER_TESTS, _FILTERS):
        cache.clear()


# -- the module's functions, for callers that evaluate pieces themselves -------------------
def compare(value: Any, cmp: Comparison, now_us: int) -> bool:
    """Does `value` (a trait, property or computed value; None when missing) satisfy
    the comparison?"""
    return _cached(_TESTS, cmp, comparison_test)(value, now_us)


def compare_number(value: float | int | None, cmp: Comparison) -> bool:
    """A numeric comparison where a missing number satisfies nothing (not even `ne`)."""
    return _cached(_NUMBER_TESTS, cmp, number_test)(value)


def filters_hold(event: EventFact, filters: Iterable[PropertyFilter], now_us: int) -> bool:
    return _passes([_cached(_FILTERS, f, _filter) for f in filters], event.properties, now_us)


def matching(
    facts: ContactFacts,
    name: str,
    type_: str,
    filters: list[PropertyFilter],
    now_us: int,
    since_us: int | None = None,
) -> Iterator[EventFact]:
    """The contact's events of this name and type that pass the filters, up to now."""
    tests = [_cached(_FILTERS, f, _filter) for f in filters]
    for event in facts.named(type_, name, since_us):
        if event.at > now_us:
            break
        if not tests or _passes(tests, event.properties, now_us):
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


def follows(step: SequenceStep, prev: EventFact, nxt: EventFact) -> bool:
    """Does `nxt` follow `prev` as `step` requires (later, within, same properties)?"""
    if nxt.at <= prev.at:
        return False
    if step.within is not None and nxt.at > prev.at + window(step.within):
        return False
    return _same(tuple(path_getter(path) for path in step.same), prev, nxt)


def same_value(a: Any, b: Any) -> bool:
    """`same:` compares scalars only; missing values or objects never match."""
    if a is None or isinstance(a, dict | list):
        return False
    return scalar_equal(a, b)


class Evaluator:
    """Evaluates conditions for contacts, all as of `env.now`."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.now_us = env.now_us

    def holds(self, condition: Condition, facts: ContactFacts) -> bool:
        # The cache lookup inlined: this runs some sixty times per contact evaluated.
        found = _CONDITIONS.get(id(condition))
        holds = compiled(condition) if found is None else found[1]
        return holds(facts, self)

    __call__ = holds


EvaluateFn = Callable[[Condition, ContactFacts], bool]
