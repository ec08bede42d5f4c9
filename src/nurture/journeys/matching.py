"""Which events a journey reacts to, and whether one event matches a trigger, a goal, an
exit rule or a wait. The property tests are the condition language's own (`where:`
filters, `same:` comparisons), so an event matches here exactly when it would count in
a segment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from nurture.conditions.events import filters_hold
from nurture.conditions.facts import EventFact
from nurture.conditions.model import Condition
from nurture.conditions.values import is_number, json_at, same_value
from nurture.journeys.model import (
    EventMatch,
    EventTrigger,
    Goal,
    Journey,
    SegmentExit,
    SegmentTrigger,
    WaitStep,
)
from nurture.store.types import to_microseconds


@dataclass(frozen=True, slots=True)
class Happened:
    """An event as journeys see it."""

    message_id: str
    type: str
    name: str | None
    contact_id: int
    at: datetime
    properties: dict[str, Any]

    def fact(self) -> EventFact:
        return EventFact(0, self.type, self.name, to_microseconds(self.at), self.properties)

    def to_context(self) -> dict[str, Any]:
        return {
            "event": self.name,
            "type": self.type,
            "messageId": self.message_id,
            "timestamp": self.at.isoformat(),
            "properties": self.properties,
        }


def interest(journey: Journey) -> set[tuple[str, str]]:
    """The (type, name) of every event the journey reacts to."""
    out = reactions(journey)
    trigger = journey.trigger
    if isinstance(trigger, EventTrigger):
        out.add((trigger.type, trigger.event))
    elif isinstance(trigger, SegmentTrigger):
        out.add(("system", f"segment.{trigger.on}"))
    return out


def reactions(journey: Journey) -> set[tuple[str, str]]:
    """The (type, name) of the events that may act on the journey's enrolments: its
    goal, exit rules and waits (a name `*`: any event of the type). Other events can
    only start enrolments."""
    out: set[tuple[str, str]] = set()
    matches: list[EventMatch] = [journey.goal] if journey.goal is not None else []
    for rule in journey.exit:
        if isinstance(rule, SegmentExit):
            out.add(("system", f"segment.{rule.on}"))
        else:
            matches.append(rule)
    for step in journey.steps:
        if isinstance(step, WaitStep):
            if step.until_event is not None:
                matches.append(step.until_event)
            matches += step.restart_on
    out |= {(m.type, m.event) for m in matches}
    return out


def _name_matches(pattern: str, type_: str, event: Happened) -> bool:
    return event.type == type_ and (pattern == "*" or event.name == pattern)


def trigger_matches(trigger: EventTrigger | SegmentTrigger, event: Happened) -> bool:
    if isinstance(trigger, SegmentTrigger):
        return segment_event(event, trigger.segment, trigger.on)
    if not _name_matches(trigger.event, trigger.type, event):
        return False
    return filters_hold(event.fact(), trigger.where, to_microseconds(event.at))


def segment_event(event: Happened, segment: str, on: str) -> bool:
    return (
        event.type == "system"
        and event.name == f"segment.{on}"
        and event.properties.get("segment") == segment
    )


def event_matches(match: EventMatch, event: Happened, trigger: dict[str, Any] | None) -> bool:
    """Name, type, filters and `same:` (against the properties of the event that started
    the enrolment, `trigger`). The `if:` condition is the caller's: it needs facts."""
    if not _name_matches(match.event, match.type, event):
        return False
    if not filters_hold(event.fact(), match.where, to_microseconds(event.at)):
        return False
    if match.same:
        started = (trigger or {}).get("properties") or {}
        return all(
            same_value(json_at(started, path), json_at(event.properties, path))
            for path in match.same
        )
    return True


def exit_matches(
    rule: EventMatch | SegmentExit,
    event: Happened,
    trigger: dict[str, Any] | None,
    holds: Callable[[Condition], bool],
) -> bool:
    if isinstance(rule, SegmentExit):
        return segment_event(event, rule.segment, rule.on)
    return event_matches(rule, event, trigger) and (rule.if_ is None or holds(rule.if_))


def goal_reached(
    goal: Goal,
    entered_at: datetime,
    trigger: dict[str, Any] | None,
    event: Happened,
    holds: Callable[[Condition], bool],
) -> bool:
    """Does `event` convert an enrolment entered at `entered_at`? Within the goal's window,
    which starts when the triggering event happened (an order sent in the same SDK batch
    as its cart event converts), else at entry."""
    start = _window_start(entered_at, trigger)
    return (
        start <= event.at <= start + goal.within
        and event_matches(goal, event, trigger)
        and (goal.if_ is None or holds(goal.if_))
    )


def goal_revenue(goal: Goal, event: Happened) -> float | None:
    """The revenue a goal event carries, in the property the goal names."""
    value = json_at(event.properties, goal.revenue) if goal.revenue else None
    return float(cast(float, value)) if is_number(value) else None


def _window_start(entered_at: datetime, trigger: dict[str, Any] | None) -> datetime:
    if isinstance(trigger, dict) and isinstance(trigger.get("timestamp"), str):
        try:
            return min(entered_at, datetime.fromisoformat(trigger["timestamp"]))
        except ValueError:
            pass
    return entered_at
