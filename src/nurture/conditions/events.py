"""A contact's events as conditions select them: property paths compiled once, property
filters, and the events of a name within a window, found by binary search in time order.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import attrgetter
from typing import Any

from nurture.conditions.facts import ContactFacts, EventFact
from nurture.conditions.model import PropertyFilter, SequenceStep
from nurture.conditions.values import (
    Cache,
    Test,
    cached,
    comparison_test,
    new_cache,
    same_value,
    split_path,
    window,
)

Getter = Callable[[Any], Any]
Filter = tuple[Getter, Test]
# (facts, now_us, since_us) -> the events matched, in time order
Select = Callable[[ContactFacts, int, int | None], list[EventFact]]
AT = attrgetter("at")


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


def property_filter(where: PropertyFilter) -> Filter:
    return path_getter(where.property), comparison_test(where)


def passes(filters: Sequence[Filter], properties: Any, now_us: int) -> bool:
    for get, test in filters:  # noqa: SIM110 - all() of a generator costs more here
        if not test(get(properties), now_us):
            return False
    return True


def first_from(events: list[EventFact], since_us: int | None) -> int:
    """The index of the first of `events` (in time order) at `since_us` or later."""
    if since_us is None or not events or events[0].at >= since_us:
        return 0
    return bisect_left(events, since_us, key=AT)


def up_to(events: list[EventFact], now_us: int) -> int:
    """How many of `events` (in time order) are at `now_us` or earlier: all of them, but
    for events after now, without a search."""
    if not events or events[-1].at <= now_us:
        return len(events)
    return bisect_right(events, now_us, key=AT)


def selector(type_: str, name: str, where: Sequence[PropertyFilter]) -> Select:
    """`matching` compiled: the events of this type and name (`*`: any) that pass the
    filters, from `since_us` (None: any time) to `now_us`, both included."""
    filters = tuple(property_filter(f) for f in where)

    def select(facts: ContactFacts, now_us: int, since_us: int | None) -> list[EventFact]:
        events = facts.named(type_, name)
        found = events[first_from(events, since_us) : up_to(events, now_us)]
        if filters:
            return [e for e in found if passes(filters, e.properties, now_us)]
        return found

    return select


def since(span: int | None, now_us: int) -> int | None:
    return None if span is None else now_us - span


def same_all(same: tuple[Getter, ...], prev: EventFact, nxt: EventFact) -> bool:
    for get in same:  # noqa: SIM110 - all() of a generator costs more here
        if not same_value(get(prev.properties), get(nxt.properties)):
            return False
    return True


_FILTERS: Cache[Filter] = new_cache()


def filters_hold(event: EventFact, filters: Iterable[PropertyFilter], now_us: int) -> bool:
    return passes([cached(_FILTERS, f, property_filter) for f in filters], event.properties, now_us)


def matching(
    facts: ContactFacts,
    name: str,
    type_: str,
    filters: list[PropertyFilter],
    now_us: int,
    since_us: int | None = None,
) -> Iterator[EventFact]:
    """The contact's events of this name and type that pass the filters, up to now."""
    tests = [cached(_FILTERS, f, property_filter) for f in filters]
    for event in facts.named(type_, name, since_us):
        if event.at > now_us:
            break
        if not tests or passes(tests, event.properties, now_us):
            yield event


def follows(step: SequenceStep, prev: EventFact, nxt: EventFact) -> bool:
    """Does `nxt` follow `prev` as `step` requires (later, within, same properties)?"""
    if nxt.at <= prev.at:
        return False
    if step.within is not None and nxt.at > prev.at + window(step.within):
        return False
    return same_all(tuple(path_getter(path) for path in step.same), prev, nxt)
