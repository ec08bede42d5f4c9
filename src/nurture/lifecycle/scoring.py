"""Lead scoring: rules that add or subtract points, optional decay, temperature bands.

    key: lead
    name: Lead score
    half_life: 30d            # optional: an event's points halve every 30 days
    temperatures:             # lowest first; the first band has no lower bound
      - name: cold
      - name: warm
        at_least: 20
      - name: hot
        at_least: 50
    rules:
      - event: Order Completed          # points for each matching event, up to now
        points: 100
      - name: Pricing page visit
        event: Pricing
        type: page
        points: 5
        max_times: 4                    # the 4 most recent visits count
        within_last: 90d                # and only visits in the last 90 days
      - name: Competitor email domain   # points while a condition holds (no decay)
        when: {trait: email, ends_with: "@competitor.com"}
        points: -20

An event rule gives `points x 0.5^(age / half_life)` for each matching event (the full
`points` without a half-life); a condition rule gives `points` while its condition holds.
The score is the sum, rounded to 2 decimals, and `score()` explains it rule by rule.
Scores are computed in Python only: per contact when its events arrive, and in batches
on a schedule (decay changes scores with time alone).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, assert_never

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from nurture.conditions.durations import Duration
from nurture.conditions.events import matching
from nurture.conditions.facts import ContactFacts, EventFact
from nurture.conditions.memory import Evaluator
from nurture.conditions.model import (
    KINDS,
    Condition,
    EventType,
    Number,
    PropertyFilter,
    ScoreCondition,
    validation_error,
    walk,
    window_us,
)
from nurture.conditions.references import References, condition_references
from nurture.errors import ValidationError
from nurture.lifecycle.stages import join_path
from nurture.segments.definitions import check_key

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# Points a journey's `score` step adds: a system event with properties model and points.
POINTS_EVENT = "score.points"
ADDED_LABEL = "points added by journeys"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventRule(_Model):
    """Points for each matching event (decayed by age when the model has a half-life)."""

    name: str | None = Field(None, min_length=1)
    event: str = Field(min_length=1)
    type: EventType = "track"
    where: list[PropertyFilter] = Field(default_factory=list)
    points: Number
    max_times: int | None = Field(None, ge=1)
    within_last: Duration | None = None

    @property
    def label(self) -> str:
        """How the explanation names the rule: its name, or its event."""
        if self.name:
            return self.name
        return self.event if self.type == "track" else f"{self.type} {self.event}"


class ConditionRule(_Model):
    """Points while a condition holds (never decayed)."""

    name: str = Field(min_length=1)
    when: Condition
    points: Number

    @property
    def label(self) -> str:
        return self.name


def _rule_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "event" if "event" in value else "when" if "when" in value else None
    return "event" if isinstance(value, EventRule) else "when"


ScoreRule = Annotated[
    Annotated[EventRule, Tag("event")] | Annotated[ConditionRule, Tag("when")],
    Discriminator(
        _rule_kind,
        custom_error_type="unknown_rule",
        custom_error_message="expected a rule: `event` (points per event) or `when` "
        "(points while a condition holds), with `points`",
    ),
]


class Temperature(_Model):
    """A named band of scores: from `at_least` up to the next band's."""

    name: str = Field(min_length=1)
    at_least: Number | None = None


@dataclass(frozen=True, slots=True)
class RuleContribution:
    """What one rule gave: points (rounded), how many events (1 for a condition rule),
    and when the latest of them happened (None for a condition rule)."""

    rule: str
    points: float
    count: int
    last_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "points": self.points,
            "count": self.count,
            "lastAt": self.last_at.isoformat() if self.last_at else None,
        }


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """A score, its temperature, and the rules that make it up (those that gave points,
    in the model's order); the explanation's points add up to the score."""

    score: float
    temperature: str
    explanation: tuple[RuleContribution, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "temperature": self.temperature,
            "explanation": [part.to_dict() for part in self.explanation],
        }


class ScoreModel(_Model):
    """A lead (or engagement, or fit) score: rules, optional decay, temperatures."""

    key: str
    name: str = ""
    description: str = ""
    half_life: Duration | None = None
    temperatures: list[Temperature] = Field(default_factory=list)
    rules: list[ScoreRule] = Field(min_length=1)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        return check_key(value)

    @model_validator(mode="after")
    def _check(self) -> ScoreModel:
        # Raised as our ValidationError (not ValueError) so that the path names the item.
        self._check_temperatures()
        labels: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.label in labels:
                raise ValidationError(
                    f"rules[{labels[rule.label]}] is also called {rule.label!r}: give each "
                    "rule its own `name`, so that the explanation tells them apart",
                    path=f"rules[{index}].name",
                    code="invalid_score_model",
                )
            labels[rule.label] = index
            if isinstance(rule, ConditionRule) and any(
                isinstance(c, ScoreCondition) and c.score == self.key for c in walk(rule.when)
            ):
                raise ValidationError(
                    f"a rule cannot depend on the score it is part of ({self.key})",
                    path=f"rules[{index}].when",
                    code="invalid_score_model",
                )
        return self

    def _check_temperatures(self) -> None:
        names: set[str] = set()
        previous: Temperature | None = None
        for index, band in enumerate(self.temperatures):
            path = f"temperatures[{index}]"
            if band.name in names:
                raise ValidationError(
                    f"duplicate temperature {band.name!r}",
                    path=f"{path}.name",
                    code="invalid_score_model",
                )
            names.add(band.name)
            if previous is None:
                if band.at_least is not None:
                    raise ValidationError(
                        "the first temperature is the lowest band and has no lower bound: "
                        "leave out at_least",
                        path=f"{path}.at_least",
                        code="invalid_score_model",
                    )
            elif band.at_least is None:
                raise ValidationError(
                    "needs at_least: the lowest score of this band",
                    path=path,
                    code="invalid_score_model",
                )
            elif previous.at_least is not None and band.at_least <= previous.at_least:
                raise ValidationError(
                    f"must be above the band before it ({previous.name} at "
                    f"{previous.at_least}): list temperatures lowest first",
                    path=f"{path}.at_least",
                    code="invalid_score_model",
                )
            previous = band

    def bands(self) -> list[tuple[str, float]]:
        """(temperature, lowest score) lowest first, as `Env.score_bands` takes them."""
        return [
            (band.name, -math.inf if band.at_least is None else float(band.at_least))
            for band in self.temperatures
        ]

    def temperature_of(self, score: float) -> str:
        """The band `score` falls in (a score exactly at a band's `at_least` is in it);
        "" when the model has no temperatures. `Env.temperature_of` reads the same."""
        name = ""
        for band, lowest in self.bands():
            if not name or score >= lowest:
                name = band
        return name

    def score(self, facts: ContactFacts, evaluate: Evaluator) -> ScoreResult:
        """The contact's score as of `evaluate.env.now`, explained rule by rule."""
        now = evaluate.now_us
        parts: list[RuleContribution] = []
        for rule in self.rules:
            match rule:
                case EventRule():
                    part = self._event_points(rule, facts, now)
                case ConditionRule():
                    holds = evaluate(rule.when, facts)
                    part = (
                        RuleContribution(rule.label, float(rule.points), 1, None) if holds else None
                    )
                case _:
                    assert_never(rule)
            if part is not None:
                parts.append(part)
        added = self._added_points(facts, now)
        if added is not None:
            parts.append(added)
        # Summing the rounded parts keeps the explanation adding up to the score;
        # `+ 0.0` turns a -0.0 into 0.0.
        total = round(math.fsum(part.points for part in parts), 2) + 0.0
        return ScoreResult(total, self.temperature_of(total), tuple(parts))

    def _event_points(
        self, rule: EventRule, facts: ContactFacts, now: int
    ) -> RuleContribution | None:
        since = None if rule.within_last is None else now - _us(rule.within_last)
        events: list[EventFact] = list(
            matching(facts, rule.event, rule.type, rule.where, now, since)
        )
        if rule.max_times is not None:
            events = events[-rule.max_times :]  # the most recent (events are in time order)
        if not events:
            return None
        if self.half_life is None:
            points = float(rule.points) * len(events)
        else:
            half = _us(self.half_life)
            points = math.fsum(rule.points * 0.5 ** ((now - e.at) / half) for e in events)
        last = _EPOCH + timedelta(microseconds=events[-1].at)
        return RuleContribution(rule.label, round(points, 2) + 0.0, len(events), last)

    def _added_points(self, facts: ContactFacts, now: int) -> RuleContribution | None:
        """Points added by journeys' `score` steps: each is a system event
        `score.points` naming this model, decaying like an event rule's."""
        events = [
            e
            for e in matching(facts, POINTS_EVENT, "system", [], now)
            if e.properties.get("model") == self.key
            and isinstance(e.properties.get("points"), int | float)
        ]
        if not events:
            return None
        half = None if self.half_life is None else _us(self.half_life)
        points = math.fsum(
            e.properties["points"] * (1.0 if half is None else 0.5 ** ((now - e.at) / half))
            for e in events
        )
        last = _EPOCH + timedelta(microseconds=events[-1].at)
        return RuleContribution(ADDED_LABEL, round(points, 2) + 0.0, len(events), last)

    def references(self) -> References:
        """The events the rules count and what their conditions read."""
        events = frozenset(
            [(r.type, r.event) for r in self.rules if isinstance(r, EventRule)]
            + [("system", POINTS_EVENT)]
        )
        conditions = (r.when for r in self.rules if isinstance(r, ConditionRule))
        return References(events=events) | condition_references(conditions)


def _us(duration: timedelta) -> int:
    us = window_us(duration)
    assert us is not None
    return us


# A rule's kind (`event` or `when`) is a union tag that pydantic puts in error locations:
# `rules[2].event.points`; people read `rules[2].points`. `validation_error` has already
# merged a tag followed by the field of the same name (`rules[2].when.all[0]...` is the
# `when` field, whose condition starts with its own kind), and those stay.
_RULE_TAG = re.compile(r"(rules\[\d+\])\.(?:event|when(?!\.(?:" + "|".join(KINDS) + r")\b))(?=\.)")


def parse_score_model(data: Any, *, path: str = "") -> ScoreModel:
    """Validate a score model; errors name the bad field (`rules[2].when.trait`)."""
    if not isinstance(data, dict):
        raise ValidationError(
            "expected a mapping with key, name, rules and temperatures",
            path=path or None,
            code="invalid_score_model",
        )
    try:
        return ScoreModel.model_validate(data)
    except pydantic.ValidationError as exc:
        error = validation_error(exc, path)
        where = _RULE_TAG.sub(r"\1", error.path, count=1) if error.path else None
        raise ValidationError(error.message, path=where, code="invalid_score_model") from None
    except ValidationError as exc:
        raise ValidationError(exc.message, path=join_path(path, exc.path), code=exc.code) from None
