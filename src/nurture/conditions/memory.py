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

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import assert_never

from nurture.conditions.env import Env
from nurture.conditions.events import (
    AT,
    Getter,
    Select,
    first_from,
    passes,
    path_getter,
    property_filter,
    same_all,
    selector,
    since,
    up_to,
)
from nurture.conditions.facts import TEXT_COLUMNS, TIME_COLUMNS, ContactFacts, EventFact
from nurture.conditions.model import (
    AggregateCondition,
    AllCondition,
    AnyCondition,
    ComputedCondition,
    Condition,
    ConsentCondition,
    EventCondition,
    NotCondition,
    ScoreCondition,
    SegmentCondition,
    SequenceCondition,
    StageCondition,
    TraitCondition,
    TrendCondition,
)
from nurture.conditions.values import (
    Cache,
    Moment,
    aggregate,
    cached,
    clear_caches,
    comparison_test,
    consent_state,
    new_cache,
    number_test,
    window,
)

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
            stop = up_to(events, now)
            since = None if span is None else now - span
            return _at_least(events, stop, since, least) and (
                most is None or not _at_least(events, stop, since, most + 1)
            )

        return counted
    filters = tuple(property_filter(f) for f in condition.where)
    # Counting can stop once the answer is known: at `least` without an upper bound,
    # past `most` with one.
    enough = least if most is None else most + 1

    def filtered(facts: ContactFacts, ev: Evaluator) -> bool:
        now = ev.now_us
        events = facts.named(type_, name)
        count = 0
        for event in events[first_from(events, since(span, now)) : up_to(events, now)]:
            if passes(filters, event.properties, now):
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
    select = selector(condition.type, condition.event, condition.where)
    span = None if condition.within_last is None else window(condition.within_last)
    get = None if condition.of is None else path_getter(condition.of)
    function, test = condition.aggregate, number_test(condition)

    def aggregated(facts: ContactFacts, ev: Evaluator) -> bool:
        now = ev.now_us
        events = select(facts, now, since(span, now))
        values = [get(e.properties) for e in events] if get and function != "count" else []
        return test(aggregate(values, len(events), function))

    return aggregated


def _trend(condition: TrendCondition) -> Holds:
    select = selector(condition.type, condition.event, condition.where)
    period = window(condition.period)
    below, above = condition.below, condition.above

    def trend(facts: ContactFacts, ev: Evaluator) -> bool:
        now = ev.now_us
        events = select(facts, now, now - 2 * period)
        previous = first_from(events, now - period)
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
    select_first = selector(first.type, first.name, first.where)
    span = None if condition.within_last is None else window(condition.within_last)
    steps: tuple[_Step, ...] = tuple(
        (
            selector(step.type, step.name, step.where),
            step.negative,
            None if step.within is None else window(step.within),
            tuple(path_getter(path) for path in step.same),
        )
        for step in condition.sequence[1:]
    )

    def sequence(facts: ContactFacts, ev: Evaluator) -> bool:
        now = ev.now_us
        reached = select_first(facts, now, since(span, now))
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
    stop = bisect_left(reached, nxt.at, key=AT)
    start = 0 if within is None else bisect_left(reached, nxt.at - within, key=AT)
    if not same or start >= stop:
        return start < stop
    return any(same_all(same, prev, nxt) for prev in reached[start:stop])


def _followed(
    prev: EventFact, candidates: list[EventFact], within: int | None, same: tuple[Getter, ...]
) -> bool:
    """Does one of `candidates` follow `prev` (later, within, same properties)?"""
    start = bisect_right(candidates, prev.at, key=AT)
    stop = len(candidates) if within is None else bisect_right(candidates, prev.at + within, key=AT)
    if not same or start >= stop:
        return start < stop
    return any(same_all(same, prev, nxt) for nxt in candidates[start:stop])


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


_CONDITIONS: Cache[Holds] = new_cache()


def compiled(condition: Condition) -> Holds:
    """The condition's closure, compiled on its first use."""
    return cached(_CONDITIONS, condition, compile_condition)


def clear_compiled() -> None:
    """Forget every compiled condition, comparison and filter (they compile again when
    used)."""
    clear_caches()


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
