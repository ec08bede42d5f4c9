"""What conditions refer to besides the contact's own profile: the events to load and the
stored state (segments, scores, stage models, computed traits) they depend on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import assert_never

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
    walk,
)


@dataclass(frozen=True)
class References:
    """What a definition's conditions read besides the contact's profile: the events to
    load, and the stored state (segments, scores, stages, computed traits) it depends on."""

    events: frozenset[tuple[str, str]] = frozenset()  # (type, name); name `*` for any
    segments: frozenset[str] = frozenset()
    scores: frozenset[str] = frozenset()
    stage_models: frozenset[str | None] = frozenset()  # None: the default stage model
    computed: frozenset[str] = frozenset()

    def __or__(self, other: References) -> References:
        return References(
            self.events | other.events,
            self.segments | other.segments,
            self.scores | other.scores,
            self.stage_models | other.stage_models,
            self.computed | other.computed,
        )


def condition_references(conditions: Iterable[Condition]) -> References:
    """Everything the conditions (and the conditions nested in them) refer to."""
    events: set[tuple[str, str]] = set()
    segments: set[str] = set()
    scores: set[str] = set()
    stage_models: set[str | None] = set()
    computed: set[str] = set()
    for root in conditions:
        for condition in walk(root):
            match condition:
                case (
                    AllCondition()
                    | AnyCondition()
                    | NotCondition()
                    | TraitCondition()
                    | ConsentCondition()
                ):
                    pass  # combinators (walked into) and the contact's own profile
                case EventCondition() | AggregateCondition() | TrendCondition():
                    events.add((condition.type, condition.event))
                case SequenceCondition():
                    events.update((step.type, step.name) for step in condition.sequence)
                case SegmentCondition():
                    segments.add(condition.segment)
                case StageCondition():
                    stage_models.add(condition.model)
                case ScoreCondition():
                    scores.add(condition.score)
                case ComputedCondition():
                    computed.add(condition.computed)
                case _:
                    assert_never(condition)
    return References(
        frozenset(events),
        frozenset(segments),
        frozenset(scores),
        frozenset(stage_models),
        frozenset(computed),
    )
