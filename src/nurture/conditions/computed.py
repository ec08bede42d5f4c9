"""Computed traits: named values derived from a contact's events and profile (days since
last seen, order count, total revenue, RFM scores, ...), declared in the project and
usable in conditions (`{computed: orders, gte: 2}`) and templates.

Each kind computes its value twice, with one meaning: in SQL for a whole population
(`sql_value`) and in Python for one contact (`value`); tests/conditions/
test_computed_agreement.py holds the two equal. Like every event condition, a value is
"as of" `env.now`: later events do not exist yet, windows are `[now - d, now]`.

Whole days are floored: 23h59m is 0 days, 24h is 1. RFM scores rank a contact against
every purchaser; the population's quintile bounds are computed once (`compute_state`)
and both evaluators read them from `env.computed_state`, so they score alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    Integer,
    Select,
    case,
    cast,
    exists,
    extract,
    func,
    literal,
    null,
    select,
)

from nurture.conditions.compile import SqlCompiler
from nurture.conditions.durations import Duration
from nurture.conditions.events import matching
from nurture.conditions.model import EventType, PropertyFilter, validation_error, window_us
from nurture.conditions.sqlvalues import (
    Backend,
    BoolExpr,
    NumberExpr,
    TimeExpr,
    ValueRef,
    check_path,
)
from nurture.conditions.values import Moment, aggregate, is_number, json_at
from nurture.errors import ValidationError
from nurture.store import tables as t

if TYPE_CHECKING:
    from nurture.conditions.env import Env
    from nurture.conditions.facts import ContactFacts, EventFact

DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
contacts = t.contacts


def _property_path(path: str) -> str:
    try:
        check_path(path)
    except ValidationError as exc:
        raise ValueError(exc.message) from None
    return path


# A dotted path into event properties (`order.total`).
PropertyPath = Annotated[str, Field(min_length=1), AfterValidator(_property_path)]


class ComputedTrait(Protocol):
    """What the evaluators need of a computed trait (every definition below is one)."""

    @property
    def key(self) -> str: ...

    @property
    def returns(self) -> Literal["number", "time", "boolean"]:
        """What the value is: a number, a time (a `Moment`) or a boolean."""

    def value(self, facts: ContactFacts, env: Env) -> Any:
        """The value for one contact (None when there is none)."""

    def sql_value(self, compiler: SqlCompiler) -> ValueRef:
        """The value as a typed SQL expression over `contacts`."""

    def event_names(self) -> set[tuple[str, str]]:
        """The (type, name) events the value reads (name `*`: any), for `load_facts`."""


# -- definitions ------------------------------------------------------------------------
class _Definition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # What the value is, for checking conditions and rendering: number, time or boolean.
    returns: ClassVar[Literal["number", "time", "boolean"]] = "number"

    key: str = Field(min_length=1, max_length=200)
    name: str | None = None
    description: str | None = None

    @field_validator("key")
    @classmethod
    def _key_is_a_name(cls, key: str) -> str:
        # Templates read computed.<key>: a name, not any text.
        if not (key[0].isascii() and key[0].isalpha()) or not all(
            ch.isascii() and (ch.isalnum() or ch == "_") for ch in key
        ):
            raise ValueError("expected a key of letters, digits and _, starting with a letter")
        return key

    def event_names(self) -> set[tuple[str, str]]:
        return set()


class DaysSinceLastSeen(_Definition):
    """Whole days since the contact was last seen (0 when seen at or after now)."""

    kind: Literal["days_since_last_seen"]

    def value(self, facts: ContactFacts, env: Env) -> int | None:
        seen = facts.columns.get("last_seen_at")
        if seen is None:
            return None
        return max(0, (env.now_us - int(seen)) // DAY_US)

    def sql_value(self, compiler: SqlCompiler) -> ValueRef:
        b = compiler.b
        seen = b.ts(contacts.c.last_seen_at)
        days = case((seen >= compiler.now, 0), else_=_days_before(b, compiler.now_us, seen))
        return IntegerExpr(b, days)


class _EventDefinition(_Definition):
    """Which events count: name (`*` for any), type, property filters and a window."""

    event: str = Field(min_length=1)
    type: EventType = "track"
    where: list[PropertyFilter] = Field(default_factory=list)
    within_last: Duration | None = None

    def event_names(self) -> set[tuple[str, str]]:
        return {(self.type, self.event)}

    def events(self, facts: ContactFacts, env: Env) -> list[EventFact]:
        """The contact's matching events up to now, oldest first."""
        now = env.now_us
        return list(matching(facts, self.event, self.type, self.where, now, self._since(now)))

    def _since(self, now_us: int) -> int | None:
        us = window_us(self.within_last)
        return None if us is None else now_us - us

    def _match(self, compiler: SqlCompiler, e: Any) -> list[ColumnElement[bool]]:
        since = self._since(compiler.now_us)
        return compiler.event_match(e, self.event, self.type, self.where, since)

    def _per_contact(
        self, compiler: SqlCompiler, value: Callable[[Any], ColumnElement[Any]]
    ) -> ColumnElement[Any]:
        """`value(e)`, an aggregate over the contact's matching events `e`, as a subquery
        correlated with `contacts` (one index range scan per contact)."""
        e = t.events.alias("e")
        return (
            select(value(e))
            .select_from(e)
            .where(e.c.contact_id == contacts.c.id, *self._match(compiler, e))
            .scalar_subquery()
        )


class EventCount(_EventDefinition):
    """How many matching events (order count: `event: Order Completed`)."""

    kind: Literal["count"]

    def value(self, facts: ContactFacts, env: Env) -> int:
        return len(self.events(facts, env))

    def sql_value(self, compiler: SqlCompiler) -> ValueRef:
        return IntegerExpr(compiler.b, self._per_contact(compiler, lambda e: func.count()))


class PropertyAggregate(_EventDefinition):
    """sum, avg, min or max of a numeric property (total revenue: `sum of revenue`).

    As in `aggregate` conditions only JSON numbers count (not `"12"`, not `true`); the
    sum of nothing is 0, the others are None. Values are floats."""

    kind: Literal["sum", "avg", "min", "max"]
    of: PropertyPath

    def value(self, facts: ContactFacts, env: Env) -> float | None:
        events = self.events(facts, env)
        values = [json_at(event.properties, self.of) for event in events]
        result = aggregate(values, len(events), self.kind)
        # A float even for the empty sum: an integer would read as a date (seconds).
        return None if result is None else float(result)

    def sql_value(self, compiler: SqlCompiler) -> ValueRef:
        b = compiler.b
        functions: dict[str, Callable[[ColumnElement[Any]], ColumnElement[Any]]] = {
            "sum": b.sum,
            "avg": func.avg,
            "min": func.min,
            "max": func.max,
        }

        def value(e: Any) -> ColumnElement[Any]:
            return functions[self.kind](b.json(e.c.properties, self.of).number_value())

        return NumberExpr(b, self._per_contact(compiler, value))


class EventTime(_EventDefinition):
    """When the first (or last) matching event happened; None if it never did."""

    kind: Literal["first_at", "last_at"]
    returns: ClassVar[Literal["number", "time", "boolean"]] = "time"

    def value(self, facts: ContactFacts, env: Env) -> Moment | None:
        events = self.events(facts, env)
        if not events:
            return None
        return Moment(events[0].at if self.kind == "first_at" else events[-1].at)

    def sql_value(self, compiler: SqlCompiler) -> ValueRef:
        b = compiler.b
        function = func.min if self.kind == "first_at" else func.max
        return TimeExpr(b, self._per_contact(compiler, lambda e: function(b.ts(e.c.timestamp))))


class DaysSince(_EventDefinition):
    """Whole days since the last matching event; None if it never happened."""

    kind: Literal["days_since"]

    def value(self, facts: ContactFacts, env: Env) -> int | None:
        events = self.events(facts, env)
        return None if not events else (env.now_us - events[-1].at) // DAY_US

    def sql_value(self, compiler: SqlCompiler) -> ValueRef:
        b = compiler.b

        def days(e: Any) -> ColumnElement[Any]:
            return _days_before(b, compiler.now_us, func.max(b.ts(e.c.timestamp)))

        return IntegerExpr(b, self._per_contact(compiler, days))


class Reached(_EventDefinition):
    """Whether a matching event ever happened (first value reached: the 'aha' event).
    Declare a `first_at` trait on the same event for when."""

    kind: Literal["reached"]
    returns: ClassVar[Literal["number", "time", "boolean"]] = "boolean"

    def value(self, facts: ContactFacts, env: Env) -> bool:
        return bool(self.events(facts, env))

    def sql_value(self, compiler: SqlCompiler) -> ValueRef:
        e = t.events.alias("e")
        happened = exists(
            select(1)
            .select_from(e)
            .where(e.c.contact_id == contacts.c.id, *self._match(compiler, e))
        )
        return BoolExpr(compiler.b, happened)


RfmPart = Literal["recency", "frequency", "monetary", "score"]


class Rfm(_EventDefinition):
    """An RFM score, 1 to 5 (5 best), ranking a purchaser against all purchasers.

    Recency is whole days since the last purchase (fewer is better), frequency the
    number of purchases, monetary the sum of `of` in cents (rounded half up, so equal
    spends tie exactly). A contact scores 1 + floor(5 * L / N), where N counts purchasers
    and L those with a strictly worse value: ties share the lower score. `score` is
    100 * R + 10 * F + M (545: recency 5, frequency 4, monetary 5). None for contacts
    without purchases, and for everyone until the bounds are computed."""

    kind: Literal["rfm"]
    event: str = Field("Order Completed", min_length=1)
    of: PropertyPath = "revenue"
    part: RfmPart

    def value(self, facts: ContactFacts, env: Env) -> int | None:
        bounds = RfmBounds.from_state(env.computed_state.get(self.key), self.key)
        events = self.events(facts, env)
        if bounds is None or not events:
            return None
        days = (env.now_us - events[-1].at) // DAY_US
        numbers = [v for v in (json_at(e.properties, self.of) for e in events) if is_number(v)]
        cents = math.floor(math.fsum(numbers) * 100 + 0.5)
        recency = 1 + sum(1 for bound in bounds.recency_days if days < bound)
        frequency = 1 + sum(1 for bound in bounds.frequency if len(events) > bound)
        monetary = 1 + sum(1 for bound in bounds.monetary_cents if cents > bound)
        return int(_pick(self.part, recency, frequency, monetary))

    def sql_value(self, compiler: SqlCompiler) -> ValueRef:
        b = compiler.b
        bounds = RfmBounds.from_state(compiler.env.computed_state.get(self.key), self.key)
        if bounds is None:
            return IntegerExpr(b, null())

        def score(beats: list[ColumnElement[bool]]) -> ColumnElement[Any]:
            total: ColumnElement[Any] = _int(1)
            for beat in beats:
                total = total + case((beat, 1), else_=0)
            return total

        def value(e: Any) -> ColumnElement[Any]:
            days, count, cents = self.metrics(compiler, e)
            recency = score([days < _int(bound) for bound in bounds.recency_days])
            frequency = score([count > _int(bound) for bound in bounds.frequency])
            monetary = score([cents > _int(bound) for bound in bounds.monetary_cents])
            return case((count > 0, _pick(self.part, recency, frequency, monetary)))

        return IntegerExpr(b, self._per_contact(compiler, value))

    def metrics(
        self, compiler: SqlCompiler, e: Any
    ) -> tuple[ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]]:
        """(days since the last, count, cents) as aggregates over the events alias `e`."""
        b = compiler.b
        days = _days_before(b, compiler.now_us, func.max(b.ts(e.c.timestamp)))
        total = b.sum(b.json(e.c.properties, self.of).number_value())
        if not b.sqlite:
            total = cast(total, Float)  # round as Python does: on the double
        cents = _floor(b, total * literal(100, Integer) + literal(0.5, Float))
        return days, func.count(), cents

    def population(self, compiler: SqlCompiler) -> Select[Any]:
        """(days, count, cents) of every live contact with a matching event."""
        e = t.events.alias("e")
        return (
            select(*self.metrics(compiler, e))
            .select_from(e)
            .join(contacts, contacts.c.id == e.c.contact_id)
            .where(contacts.c.merged_into.is_(None), *self._match(compiler, e))
            .group_by(e.c.contact_id)
        )


def _pick(part: RfmPart, recency: Any, frequency: Any, monetary: Any) -> Any:
    if part == "recency":
        return recency
    if part == "frequency":
        return frequency
    if part == "monetary":
        return monetary
    return recency * 100 + frequency * 10 + monetary


@dataclass(frozen=True)
class RfmBounds:
    """Quintile bounds of one RFM trait: four per measure, from the 20th, 40th, 60th and
    80th nearest-rank percentile (the value at rank ceil(k * N / 5), k = 1..4, best last).

    A value beyond k bounds scores 1 + k, which is 1 + floor(5 * L / N) with L the number
    of purchasers whose value is strictly worse."""

    recency_days: tuple[int, ...]  # descending: fewer days is better
    frequency: tuple[int, ...]
    monetary_cents: tuple[int, ...]

    @classmethod
    def of(cls, rows: list[tuple[int, int, int]]) -> RfmBounds | None:
        """Bounds of a population of (days, count, cents); None when it is empty."""
        if not rows:
            return None
        days, counts, cents = (list(column) for column in zip(*rows, strict=True))
        return cls(
            recency_days=_nearest_ranks(sorted(days, reverse=True)),
            frequency=_nearest_ranks(sorted(counts)),
            monetary_cents=_nearest_ranks(sorted(cents)),
        )

    def to_state(self, purchasers: int, as_of: datetime) -> dict[str, Any]:
        return {
            "purchasers": purchasers,
            "as_of": as_of.astimezone(UTC).isoformat(),
            "recency_days": list(self.recency_days),
            "frequency": list(self.frequency),
            "monetary_cents": list(self.monetary_cents),
        }

    @classmethod
    def from_state(cls, state: object, key: str) -> RfmBounds | None:
        """The bounds stored by `compute_state`; None before any purchaser was seen."""
        if state is None or (isinstance(state, dict) and state.get("purchasers") == 0):
            return None
        names = ("recency_days", "frequency", "monetary_cents")
        parts = (
            [_four_integers(state.get(name)) for name in names] if isinstance(state, dict) else []
        )
        if None in parts:
            raise ValidationError(
                f"the stored RFM bounds of {key!r} are malformed: compute them again",
                code="invalid_state",
            )
        recency, frequency, monetary = (part or () for part in parts)
        return cls(recency, frequency, monetary)


def _four_integers(value: object) -> tuple[int, ...] | None:
    if not isinstance(value, list) or len(value) != 4:
        return None
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return None
    return tuple(value)


def _nearest_ranks(ordered: list[int]) -> tuple[int, ...]:
    n = len(ordered)
    return tuple(ordered[-(-k * n // 5) - 1] for k in range(1, 5))


# -- clv (analytics/clv_store.py fits the models and stores the predictions) -----------
ClvMeasure = Literal["p_alive", "expected_purchases", "expected_spend", "expected_value"]


class Clv(_Definition):
    """A contact's customer-lifetime-value prediction (docs/analytics/clv.md), as stored
    by the model's last fit: the probability of being alive, the expected purchases or
    the expected value over the model's horizon, or the expected spend per purchase.
    None for contacts the last fit did not cover (no purchase then), and for everyone
    before the first fit."""

    kind: Literal["clv"]
    measure: ClvMeasure
    model: str = Field("default", min_length=1, max_length=64)

    def value(self, facts: ContactFacts, env: Env) -> float | None:
        return facts.clv.get(self.model, {}).get(self.measure)

    def sql_value(self, compiler: SqlCompiler) -> ValueRef:
        p = t.clv_predictions
        stored = (
            select(p.c[self.measure])
            .where(p.c.contact_id == contacts.c.id, p.c.model == self.model)
            .scalar_subquery()
        )
        return NumberExpr(compiler.b, stored)


# -- end clv ------------------------------------------------------------------------------


Definition = (
    DaysSinceLastSeen | EventCount | PropertyAggregate | EventTime | DaysSince | Reached | Rfm | Clv
)
# For models that embed a definition: the union, told apart by `kind`.
ComputedTraitDefinition = Annotated[Definition, Field(discriminator="kind")]
_BY_KIND: dict[str, type[Definition]] = {
    "days_since_last_seen": DaysSinceLastSeen,
    "count": EventCount,
    "sum": PropertyAggregate,
    "avg": PropertyAggregate,
    "min": PropertyAggregate,
    "max": PropertyAggregate,
    "first_at": EventTime,
    "last_at": EventTime,
    "days_since": DaysSince,
    "reached": Reached,
    "rfm": Rfm,
    "clv": Clv,
}
KINDS = tuple(_BY_KIND)


def parse_computed(data: Any, *, path: str = "") -> Definition:
    """Validate one computed trait definition; raises ValidationError naming the bad
    field (`where[0].eq`, or `<path>.where[0].eq` given a path)."""

    def error(message: str, field: str | None) -> ValidationError:
        where = ".".join(part for part in (path, field) if part) or None
        return ValidationError(message, path=where, code="invalid_computed_trait")

    if not isinstance(data, dict):
        raise error("expected a mapping with a key and a kind", None)
    kind = data.get("kind")
    model = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if model is None:
        given = "expected a kind" if kind is None else f"unknown kind {kind!r}"
        raise error(f"{given}: use one of " + ", ".join(KINDS), "kind")
    try:
        # One kind's model, not the union: its errors then name fields, not the kind.
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problem = validation_error(exc)
        raise error(problem.message, problem.path) from None


def compute_state(conn: Connection, trait: ComputedTrait, env: Env) -> object:
    """The population values `trait` needs (JSON), for `env.computed_state[trait.key]`:
    RFM quintile bounds over every live purchaser as of `env.now`. None for the kinds
    that need none."""
    if not isinstance(trait, Rfm):
        return None
    compiler = SqlCompiler(env, conn.dialect.name)
    rows = [(int(d), int(n), int(c)) for d, n, c in conn.execute(trait.population(compiler))]
    bounds = RfmBounds.of(rows)
    if bounds is None:
        return {"purchasers": 0, "as_of": env.now.astimezone(UTC).isoformat()}
    return bounds.to_state(len(rows), env.now)


def computed_values(facts: ContactFacts, env: Env) -> dict[str, Any]:
    """Every declared computed trait's value for one contact, as JSON values (times as
    ISO 8601 text in UTC), for templates and the contact profile."""
    out: dict[str, Any] = {}
    for key, trait in env.computed.items():
        value = trait.value(facts, env)
        if isinstance(value, Moment):
            value = (_EPOCH + timedelta(microseconds=value.us)).isoformat()
        out[key] = value
    return out


# -- SQL helpers ----------------------------------------------------------------------
class IntegerExpr(NumberExpr):
    """A computed whole number. Date operators read it as seconds since 1970, as
    `values.compare` reads every integer (a trait holding 3 is 1970-01-01T00:00:03)."""

    def time(self) -> ColumnElement[Any]:
        if self.backend.sqlite:
            return self.expr * literal(1_000_000, BigInteger)
        return func.to_timestamp(cast(self.expr, Float))


def _int(value: int) -> ColumnElement[Any]:
    return literal(value, BigInteger)


def _micros(b: Backend, ts: ColumnElement[Any]) -> ColumnElement[Any]:
    """A time in the backend's unit as integer microseconds since 1970."""
    if b.sqlite:
        return ts
    # EXTRACT returns an exact numeric on PostgreSQL 14 and later.
    return cast(extract("epoch", ts) * literal(1_000_000, BigInteger), BigInteger)


def _days_before(b: Backend, now_us: int, ts: ColumnElement[Any]) -> ColumnElement[Any]:
    """Whole days from `ts` to now, for `ts` <= now (integer division floors there)."""
    return (_int(now_us) - _micros(b, ts)) // _int(DAY_US)


def _floor(b: Backend, x: ColumnElement[Any]) -> ColumnElement[Any]:
    """floor(x) as an integer; on SQLite without the optional math functions."""
    if not b.sqlite:
        return cast(func.floor(x), BigInteger)
    truncated = cast(x, BigInteger)
    return truncated - case((x < truncated, 1), else_=0)
