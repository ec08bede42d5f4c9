"""The one condition language (DESIGN §4) as pydantic models.

A condition is a mapping whose leading key says what it tests: `trait`, `event`,
`aggregate`, `sequence`, `trend`, `segment`, `stage`, `score`, `consent`, `computed`, or
the combinators `all`, `any`, `not`. `parse_condition` turns YAML/JSON data into a
`Condition`, or raises a ValidationError whose path names the bad field
(`where.all[2].event.within_last: expected a duration like 30d`).

What each construct means is written down once, in docs/conditions.md; the SQL compiler
(`compile.py`) and the in-memory evaluator (`memory.py`) both implement that meaning and
a property test holds them to the same answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    model_validator,
)

from nurture.conditions.durations import DateRefField, Duration
from nurture.errors import ValidationError

# Strict: a YAML `1` stays a number and `"1"` a string, as the evaluators compare them.
Scalar = StrictStr | StrictBool | StrictInt | StrictFloat
Number = StrictInt | StrictFloat
EventType = Literal["track", "page", "screen", "system"]

# The comparison operators, in the order the docs list them.
OPERATORS = (
    "eq",
    "ne",
    "in",
    "not_in",
    "gt",
    "gte",
    "lt",
    "lte",
    "between",
    "contains",
    "starts_with",
    "ends_with",
    "exists",
    "within_last",
    "within_next",
    "before",
    "after",
)
NUMERIC_OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "between")
DATE_OPERATORS = ("within_last", "within_next", "before", "after", "exists")


def check_path(value: str) -> str:
    """A dotted path of object keys (`company.size`); numbers would index lists, which
    the language tests with `contains` instead."""
    parts = value.split(".")
    if any(not part or '"' in part for part in parts):
        raise ValueError("expected names separated by dots (company.size), without quotes")
    if any(part.isdigit() for part in parts):
        raise ValueError("a path cannot index a list (items.0); test lists with `contains`")
    return value


Path = Annotated[str, Field(min_length=1), AfterValidator(check_path)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Comparison(_Model):
    """One operator and its operand; exactly one may be set."""

    eq: Scalar | None = None
    ne: Scalar | None = None
    in_: list[Scalar] | None = Field(None, alias="in", min_length=1)
    not_in: list[Scalar] | None = Field(None, min_length=1)
    gt: Number | None = None
    gte: Number | None = None
    lt: Number | None = None
    lte: Number | None = None
    between: tuple[Number, Number] | None = None
    contains: Scalar | None = None
    starts_with: str | None = None
    ends_with: str | None = None
    exists: bool | None = None
    within_last: Duration | None = None
    within_next: Duration | None = None
    before: DateRefField | None = None
    after: DateRefField | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> Comparison:
        given = self._given()
        allowed = self._allowed_operators()
        if len(given) != 1:
            listed = ", ".join(allowed)
            found = f"found {', '.join(given)}" if given else "found none"
            raise ValueError(f"expected exactly one operator of {listed}; {found}")
        if given[0] not in allowed:
            raise ValueError(
                f"operator {given[0]} does not apply here; use one of {', '.join(allowed)}"
            )
        if self.between is not None and self.between[0] > self.between[1]:
            raise ValueError("between: the lower bound is above the upper bound")
        return self

    @classmethod
    def _allowed_operators(cls) -> tuple[str, ...]:
        return OPERATORS

    # Fields named like an operator that mean something else in a subclass (the window
    # `within_last` of an aggregate).
    _NOT_OPERATORS: ClassVar[tuple[str, ...]] = ()

    def _given(self) -> list[str]:
        return [
            name
            for name in OPERATORS
            if name not in self._NOT_OPERATORS and getattr(self, _attr(name)) is not None
        ]

    # Cached: the evaluators ask for these once per contact and condition.
    @cached_property
    def operator(self) -> str:
        given = self._given()
        if not given:
            raise AssertionError("validated comparisons have an operator")
        return given[0]

    @cached_property
    def operand(self) -> Any:
        return getattr(self, _attr(self.operator))


def _attr(operator: str) -> str:
    return "in_" if operator == "in" else operator


class NumericComparison(Comparison):
    @classmethod
    def _allowed_operators(cls) -> tuple[str, ...]:
        return NUMERIC_OPERATORS


class PropertyFilter(Comparison):
    """A test of one event property: `{property: plan, eq: pro}`."""

    property: Path


class _EventMatch(_Model):
    """Which events count: name (`*` for any), type and property filters."""

    event: str = Field(min_length=1)
    type: EventType = "track"
    where: list[PropertyFilter] = Field(default_factory=list)


class TraitCondition(Comparison):
    """A contact trait: `{trait: company.size, gt: 50}`."""

    trait: Path


class EventCondition(_EventMatch):
    """Did (or did not) do an event, how often, within a window."""

    at_least: int | None = Field(None, ge=0)
    at_most: int | None = Field(None, ge=0)
    within_last: Duration | None = None

    @model_validator(mode="after")
    def _bounds(self) -> EventCondition:
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError("at_least is above at_most: no count can satisfy both")
        return self

    @property
    def bounds(self) -> tuple[int | None, int | None]:
        """(at_least, at_most) with the default of "at least once"."""
        if self.at_least is None and self.at_most is None:
            return 1, None
        return self.at_least, self.at_most


class AggregateCondition(NumericComparison, _EventMatch):
    """An aggregate of an event property over a window: `sum of total over 90d > 500`."""

    aggregate: Literal["count", "sum", "avg", "min", "max", "count_distinct"]
    of: Path | None = None
    within_last: Duration | None = None
    _NOT_OPERATORS: ClassVar[tuple[str, ...]] = ("within_last",)

    @model_validator(mode="after")
    def _needs_property(self) -> AggregateCondition:
        if self.aggregate != "count" and self.of is None:
            raise ValueError(f"aggregate {self.aggregate} needs `of: <property>`")
        return self


class SequenceStep(_Model):
    """One step of a sequence: an event that happened (`event`) or did not (`not_event`)."""

    event: str | None = Field(None, min_length=1)
    not_event: str | None = Field(None, min_length=1)
    type: EventType = "track"
    where: list[PropertyFilter] = Field(default_factory=list)
    within: Duration | None = None
    same: list[Path] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_name(self) -> SequenceStep:
        if (self.event is None) == (self.not_event is None):
            raise ValueError("a step needs exactly one of `event` or `not_event`")
        return self

    @property
    def name(self) -> str:
        return self.event or self.not_event or ""

    @property
    def negative(self) -> bool:
        return self.not_event is not None


class SequenceCondition(_Model):
    """A then B (within a window), or A and then *not* B (abandonment)."""

    sequence: list[SequenceStep] = Field(min_length=2)
    within_last: Duration | None = None

    @model_validator(mode="after")
    def _shape(self) -> SequenceCondition:
        if self.sequence[0].negative:
            raise ValueError("the first step must be an `event`, not a `not_event`")
        for step in self.sequence[1:-1]:
            if step.negative:
                raise ValueError("only the last step can be a `not_event`")
        if self.sequence[0].within is not None or self.sequence[0].same:
            raise ValueError(
                "the first step has no previous step: `within`/`same` go on later steps"
            )
        return self


class TrendCondition(_EventMatch):
    """Activity that dropped (or grew): count in the last `period` against the period
    before it. `below: 0.5` holds when recent < 0.5 x previous and previous > 0."""

    trend: Literal["count"]
    period: Duration
    below: Number | None = Field(None, gt=0)
    above: Number | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_direction(self) -> TrendCondition:
        if (self.below is None) == (self.above is None):
            raise ValueError("a trend needs exactly one of `below` or `above`")
        return self


class SegmentCondition(_Model):
    """Membership of another segment, now."""

    segment: str = Field(min_length=1)


class StageCondition(_Model):
    """The contact's lifecycle stage now (or `ever: true`: at any time so far)."""

    stage: str = Field(min_length=1)
    model: str | None = None
    ever: bool = False


class ScoreCondition(NumericComparison):
    """A score threshold (`{score: lead, gte: 50}`) or temperature (`temperature: hot`)."""

    score: str = Field(min_length=1)
    temperature: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_operator(self) -> ScoreCondition:
        given = self._given()
        if self.temperature is not None:
            if given:
                raise ValueError(f"use either temperature or {given[0]}, not both")
            return self
        Comparison._one_operator(self)  # type: ignore[operator]
        return self


ALL_TOPICS = "*"


class ConsentCondition(_Model):
    """Consent state for a channel and topic, as the sending rules read it: without a
    topic (or with `*`), the channel's consent for all marketing; with a topic, the latest
    recorded of that topic's consent and the channel's `*` one."""

    consent: Literal["email", "sms", "push", "whatsapp", "voice"]
    topic: str = Field(ALL_TOPICS, min_length=1, max_length=100)
    state: Literal["granted", "denied", "pending", "unknown"] = "granted"


class ComputedCondition(Comparison):
    """A computed trait declared in the project (`{computed: orders, gte: 2}`)."""

    computed: str = Field(min_length=1)


class AllCondition(_Model):
    all: list[Condition] = Field(min_length=1)


class AnyCondition(_Model):
    any: list[Condition] = Field(min_length=1)


class NotCondition(_Model):
    not_: Condition = Field(alias="not")


# The leading key of each kind, in the order a mapping is recognised: the keys that
# can appear alongside others (`event` in an aggregate) come after the kinds using them.
KINDS = (
    "all",
    "any",
    "not",
    "aggregate",
    "trend",
    "sequence",
    "event",
    "trait",
    "segment",
    "stage",
    "score",
    "consent",
    "computed",
)
_BY_CLASS: dict[type, str] = {}


def _kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in KINDS:
            if key in value:
                return key
        return None
    return _BY_CLASS.get(type(value))


Condition = Annotated[
    (
        Annotated[AllCondition, Tag("all")]
        | Annotated[AnyCondition, Tag("any")]
        | Annotated[NotCondition, Tag("not")]
        | Annotated[AggregateCondition, Tag("aggregate")]
        | Annotated[TrendCondition, Tag("trend")]
        | Annotated[SequenceCondition, Tag("sequence")]
        | Annotated[EventCondition, Tag("event")]
        | Annotated[TraitCondition, Tag("trait")]
        | Annotated[SegmentCondition, Tag("segment")]
        | Annotated[StageCondition, Tag("stage")]
        | Annotated[ScoreCondition, Tag("score")]
        | Annotated[ConsentCondition, Tag("consent")]
        | Annotated[ComputedCondition, Tag("computed")]
    ),
    Discriminator(
        _kind,
        custom_error_type="unknown_condition",
        custom_error_message="expected a condition: a mapping with one of the keys "
        + ", ".join(KINDS),
    ),
]

_BY_CLASS.update(
    {
        AllCondition: "all",
        AnyCondition: "any",
        NotCondition: "not",
        AggregateCondition: "aggregate",
        TrendCondition: "trend",
        SequenceCondition: "sequence",
        EventCondition: "event",
        TraitCondition: "trait",
        SegmentCondition: "segment",
        StageCondition: "stage",
        ScoreCondition: "score",
        ConsentCondition: "consent",
        ComputedCondition: "computed",
    }
)
for _model in (AllCondition, AnyCondition, NotCondition):
    _model.model_rebuild()

_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Condition)


def format_location(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """`('all', 2, 'event', 'within_last')` → `all[2].event.within_last`."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-wrap", "function-before"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


_TYPE_LABELS = {"int": "number", "float": "number", "str": "string", "bool": "true/false"}


def validation_error(exc: pydantic.ValidationError, prefix: str = "") -> ValidationError:
    """The first problem of a pydantic error as our ValidationError, path included."""
    errors = exc.errors()
    first = errors[0]
    # A value of the wrong type fails each member of a scalar union: one error per
    # member, located at field.int, field.float, ...; report them as one.
    if first["loc"] and first["loc"][-1] in _TYPE_LABELS:
        field = first["loc"][:-1]
        labels = [e["loc"][-1] for e in errors if e["loc"][:-1] == field]
        named = {_TYPE_LABELS[str(label)] for label in labels}
        kinds = [k for k in ("string", "number", "true/false") if k in named]
        first = {**first, "loc": field, "msg": "expected a " + " or ".join(kinds)}
        errors = [e for e in errors if e["loc"][:-1] != field]
        errors.insert(0, first)
    loc: list[int | str] = []
    for part in first["loc"]:
        # A union member's tag precedes its fields: ('all', 'all', 2, 'event', 'within')
        # reads all[2].event.within; a kind's own key field would be named twice.
        if _is_internal(part) or (loc and loc[-1] == part and isinstance(part, str)):
            continue
        loc.append(part)
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    path = format_location(tuple(loc), prefix) or prefix or None
    more = len(errors) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ValidationError(message, path=path, code="invalid_condition")


def _is_internal(part: int | str) -> bool:
    # pydantic names union members and validator wrappers in locations; people do not.
    return isinstance(part, str) and (part.startswith("function-"))


def parse_condition(data: Any, *, path: str = "where") -> Condition:
    """Validate one condition; raises ValidationError naming the bad field."""
    try:
        condition: Condition = _ADAPTER.validate_python(data)
        return condition
    except pydantic.ValidationError as exc:
        raise validation_error(exc, path) from None


def walk(condition: Condition) -> Iterator[Condition]:
    """The condition and every condition nested in it, depth first."""
    yield condition
    if isinstance(condition, AllCondition | AnyCondition):
        children = condition.all if isinstance(condition, AllCondition) else condition.any
        for child in children:
            yield from walk(child)
    elif isinstance(condition, NotCondition):
        yield from walk(condition.not_)


def dump_condition(condition: Condition) -> Any:
    """The condition as plain data, as a person would write it (aliases, no defaults)."""
    data = _ADAPTER.dump_python(condition, by_alias=True, exclude_defaults=True, mode="json")
    return _kind_first(data)


def _kind_first(data: Any) -> Any:
    if isinstance(data, list):
        return [_kind_first(item) for item in data]
    if not isinstance(data, dict):
        return data
    kind = _kind(data)
    out = {kind: data[kind]} if kind is not None else {}
    out.update(data)
    return {key: _kind_first(value) for key, value in out.items()}


def window_us(value: timedelta | None) -> int | None:
    return None if value is None else value // timedelta(microseconds=1)
