"""Typed reads of trait, property and column values in SQL, for SQLite and PostgreSQL.

Each reader answers the questions the comparison operators ask (is it a string, a
number, equal to this scalar, a date, ...) with expressions that are never NULL, so
that `not` means the same in SQL as in Python. The semantics are those of
`values.compare`; the two are held equal by tests/conditions/test_agreement.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Float,
    Interval,
    Numeric,
    String,
    and_,
    bindparam,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB

from nurture.errors import ValidationError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Bool = ColumnElement[bool]


def definite(expr: ColumnElement[Any]) -> Bool:
    """`expr`, with NULL read as false."""
    return func.coalesce(expr, false())


class Backend:
    """What differs between SQLite and PostgreSQL: time values and JSON access."""

    def __init__(self, name: str) -> None:
        if name not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported backend {name}")
        self.name = name
        self.sqlite = name == "sqlite"

    # -- time: SQLite stores integer microseconds, PostgreSQL timestamptz ----------
    def ts(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        return type_coerce(column, BigInteger) if self.sqlite else column

    def at(self, us: int) -> ColumnElement[Any]:
        if self.sqlite:
            return bindparam(None, us, type_=BigInteger)
        return bindparam(None, _EPOCH + timedelta(microseconds=us), type_=DateTime(timezone=True))

    def plus(self, expr: ColumnElement[Any], us: int) -> ColumnElement[Any]:
        if self.sqlite:
            return expr + bindparam(None, us, type_=BigInteger)
        return expr + bindparam(None, timedelta(microseconds=us), type_=Interval())

    def number(self, value: float | int) -> ColumnElement[Any]:
        if isinstance(value, int):
            return bindparam(None, value, type_=BigInteger if self.sqlite else Numeric())
        return bindparam(None, value, type_=Float())

    def sum(self, expr: ColumnElement[Any]) -> ColumnElement[Any]:
        # SQLite's sum() raises on integer overflow; total() is its float sum.
        if self.sqlite:
            return func.total(expr)
        return func.coalesce(func.sum(expr), 0)

    def json(self, doc: ColumnElement[Any], path: str) -> JsonValue:
        return JsonValue(self, doc, path)


def check_path(path: str) -> list[str]:
    parts = path.split(".")
    if any(not part or '"' in part for part in parts):
        raise ValidationError(
            f"{path!r} is not a path: use names separated by dots, without quotes",
            code="invalid_condition",
        )
    return parts


class ValueRef:
    """A value that may be missing; subclasses say how to read it in SQL."""

    backend: Backend

    def exists(self) -> Bool:
        raise NotImplementedError

    def equals(self, value: Any) -> Bool:
        return false()

    def compare_number(self, op: str, value: Any) -> Bool:
        return false()

    def equals_any(self, values: list[Any]) -> Bool:
        """Equal to one of `values` (never NULL)."""
        return or_(false(), *(self.equals(item) for item in values))

    def text(self) -> ColumnElement[Any] | None:
        """The value as text when it is a string (else NULL); None if it never is."""
        return None

    def array_contains(self, value: Any) -> Bool:
        return false()

    def time(self) -> ColumnElement[Any] | None:
        """The value as a time in the backend's unit (NULL when not a date)."""
        return None

    def time_prefilter(self, low_us: int | None, high_us: int | None) -> Bool | None:
        """A cheap test that every value whose time is in [low, high] passes (others may
        pass too), run before the exact but costly date parsing; None when there is none."""
        return None

    def time_between(self, low_us: int | None, high_us: int | None) -> Bool:
        """The value is a date within [low, high] (a bound of None: no bound)."""
        at = self.time()
        if at is None:
            return false()
        exact = _between(at, low_us, high_us, self.backend.at)
        prefilter = self.time_prefilter(low_us, high_us)
        # The prefilter first: parsing dates (nurture_ts) costs far more than comparing.
        return definite(and_(*([prefilter] if prefilter is not None else []), *exact))


def _between(
    value: ColumnElement[Any],
    low: int | None,
    high: int | None,
    bound: Callable[[int], ColumnElement[Any]],
) -> list[Bool]:
    """`value >= bound(low)` and `value <= bound(high)`, for the bounds that are given."""
    tests: list[Bool] = []
    if low is not None:
        tests.append(value >= bound(low))
    if high is not None:
        tests.append(value <= bound(high))
    return tests


def _seconds_between(
    value: ColumnElement[Any], low_us: int | None, high_us: int | None, backend: Backend
) -> list[Bool]:
    """A number of seconds since 1970 that can be a date in [low, high] (a second's
    slack either side): the prefilter of numeric dates."""
    low = None if low_us is None else low_us // 1_000_000 - 1
    high = None if high_us is None else high_us // 1_000_000 + 1
    return _between(value, low, high, backend.number)


def _date_text(us: int, days: int) -> str:
    moment = _EPOCH + timedelta(microseconds=us) + timedelta(days=days)
    return moment.strftime("%Y-%m-%d")


def _text_prefilter(
    text: ColumnElement[Any], low_us: int | None, high_us: int | None, sqlite: bool
) -> Bool:
    # A valid date-time's first ten characters are its local date, which is within a day
    # of its UTC date (offsets are under 15 hours).
    head = func.substr(text, 1, 10) if sqlite else func.left(text, 10).collate("C")
    tests: list[Bool] = []
    if low_us is not None:
        tests.append(head >= _date_text(max(low_us, _MIN_US), -1))
    if high_us is not None:
        tests.append(head <= _date_text(min(high_us, _MAX_US), 1))
    return and_(*tests)


_MIN_US = -62135596800 * 1_000_000 + 2 * 86_400_000_000
_MAX_US = 253402300799 * 1_000_000 - 2 * 86_400_000_000


class JsonValue(ValueRef):
    """The value at a dotted path in a JSON column (traits, properties)."""

    def __init__(self, backend: Backend, doc: ColumnElement[Any], path: str) -> None:
        self.backend = backend
        self.doc = doc
        self.parts = check_path(path)
        if backend.sqlite:
            self.path = "$" + "".join(f'."{part}"' for part in self.parts)
            self.type = func.json_type(doc, self.path)
            self.value: ColumnElement[Any] = func.json_extract(doc, self.path)
        else:
            keys = [literal(part, String) for part in self.parts]
            self.node = func.jsonb_extract_path(doc, *keys)
            self.type = func.jsonb_typeof(self.node)
            self.value = func.jsonb_extract_path_text(doc, *keys)

    def _is_number(self) -> Bool:
        if self.backend.sqlite:
            return self.type.in_(("integer", "real"))
        return self.type == "number"

    def _is_text(self) -> Bool:
        return self.type == ("text" if self.backend.sqlite else "string")

    def number_value(self) -> ColumnElement[Any]:
        """The value when it is a JSON number, else NULL (never an error)."""
        if self.backend.sqlite:
            return case((self._is_number(), self.value))
        return case((self._is_number(), cast(self.node, Numeric)))

    def exists(self) -> Bool:
        return definite(and_(self.type.is_not(None), self.type != "null"))

    def equals(self, value: Any) -> Bool:
        if not self.backend.sqlite:
            return definite(self.node == cast(literal(json.dumps(value)), JSONB))
        if isinstance(value, bool):
            return definite(self.type == ("true" if value else "false"))
        if isinstance(value, int | float):
            equal = self.value == self.backend.number(value)
            if value in (0, 1):  # json_extract reads true and false as 1 and 0
                return definite(and_(self._is_number(), equal))
            # Only a JSON number extracts to a number equal to this one: one JSON parse.
            return definite(equal)
        equal = self.value == literal(value, String)
        if value.startswith(("[", "{")):  # objects and arrays extract as their JSON text
            return definite(and_(self._is_text(), equal))
        return definite(equal)

    def compare_number(self, op: str, value: Any) -> Bool:
        return number_comparison(self.number_value(), op, value, self.backend)

    def equals_any(self, values: list[Any]) -> Bool:
        if not self.backend.sqlite:
            return super().equals_any(values)
        # One `json_extract(...) IN (...)`, one parse of the document, for the values
        # whose equality needs nothing but the extracted value (see `equals`): strings
        # that are no JSON text of an object or array, numbers other than 0 and 1.
        plain: list[Any] = []
        tests: list[Bool] = []
        for v in values:
            if (isinstance(v, str) and not v.startswith(("[", "{"))) or (
                isinstance(v, int | float) and not isinstance(v, bool) and v not in (0, 1)
            ):
                plain.append(v)
            else:
                tests.append(self.equals(v))
        if plain:
            items = [
                literal(v, String) if isinstance(v, str) else self.backend.number(v) for v in plain
            ]
            tests.append(definite(self.value.in_(items)))
        return or_(false(), *tests)

    def text(self) -> ColumnElement[Any]:
        return case((self._is_text(), self.value))

    def array_contains(self, value: Any) -> Bool:
        b = self.backend
        if b.sqlite:
            items = func.json_each(self.doc, self.path).table_valued("type", "value")
            if isinstance(value, bool):
                match: Bool = items.c.type == ("true" if value else "false")
            elif isinstance(value, int | float):
                match = and_(
                    items.c.type.in_(("integer", "real")), items.c.value == b.number(value)
                )
            else:
                match = and_(items.c.type == "text", items.c.value == literal(value, String))
            return and_(self.type == "array", exists(select(1).select_from(items).where(match)))
        elements = func.jsonb_array_elements(
            case((self.type == "array", self.node), else_=cast(literal("[]"), JSONB))
        ).table_valued("value")
        return and_(
            definite(self.type == "array"),
            exists(
                select(1)
                .select_from(elements)
                .where(elements.c.value == cast(literal(json.dumps(value)), JSONB))
            ),
        )

    def time(self) -> ColumnElement[Any]:
        if self.backend.sqlite:
            return case((self.type.in_(("text", "integer")), func.nurture_ts(self.value)))
        return func.nurture_ts(self.node)

    def time_prefilter(self, low_us: int | None, high_us: int | None) -> Bool:
        seconds = _seconds_between(self.number_value(), low_us, high_us, self.backend)
        return or_(
            and_(
                self._is_text(), _text_prefilter(self.text(), low_us, high_us, self.backend.sqlite)
            ),
            and_(self._is_number(), *seconds),
        )

    def time_between(self, low_us: int | None, high_us: int | None) -> Bool:
        if not self.backend.sqlite:
            return super().time_between(low_us, high_us)
        # SQLite (before 3.45) parses the document again for every json_type and
        # json_extract, and the tests above take about ten of them per row. Walking the
        # parent object once with json_each reads the value's type and SQL value together:
        # one parse (measured on 1M contacts' traits: 3.3 s against 1.4 s).
        parent = "$" + "".join(f'."{part}"' for part in self.parts[:-1])
        node = func.json_each(self.doc, parent).table_valued("key", "type", "atom")
        kind, atom = node.c.type, node.c.atom
        text = and_(kind == "text", _text_prefilter(atom, low_us, high_us, True))
        seconds = [kind == "integer", *_seconds_between(atom, low_us, high_us, self.backend)]
        exact = _between(func.nurture_ts(atom), low_us, high_us, self.backend.at)
        return exists(
            select(1)
            .select_from(node)
            .where(node.c.key == self.parts[-1], or_(text, and_(*seconds)), *exact)
        )

    def same_as(self, other: JsonValue) -> Bool:
        """Type-strict equality of two scalars (for sequence steps' `same:`)."""
        if self.backend.sqlite:
            return definite(
                case(
                    (self._is_text(), and_(other._is_text(), self.value == other.value)),
                    (self._is_number(), and_(other._is_number(), self.value == other.value)),
                    (self.type.in_(("true", "false")), other.type == self.type),
                    else_=false(),
                )
            )
        return definite(
            and_(self.type.in_(("string", "number", "boolean")), self.node == other.node)
        )


class TextColumn(ValueRef):
    """A reserved trait kept in a text column (email, phone, ...)."""

    def __init__(self, backend: Backend, column: ColumnElement[Any]) -> None:
        self.backend = backend
        self.column = column

    def exists(self) -> Bool:
        return self.column.is_not(None)

    def equals(self, value: Any) -> Bool:
        if isinstance(value, str):
            return definite(self.column == literal(value, String))
        return false()

    def equals_any(self, values: list[Any]) -> Bool:
        strings = [literal(v, String) for v in values if isinstance(v, str)]
        return definite(self.column.in_(strings)) if strings else false()

    def text(self) -> ColumnElement[Any]:
        return self.column

    def time(self) -> ColumnElement[Any]:
        if self.backend.sqlite:
            return func.nurture_ts(self.column)
        return func.nurture_ts(func.to_jsonb(self.column))

    def time_prefilter(self, low_us: int | None, high_us: int | None) -> Bool:
        return _text_prefilter(self.column, low_us, high_us, self.backend.sqlite)


class TimeColumn(ValueRef):
    """A time kept in a column (first_seen_at, ...): only date operators apply."""

    def __init__(self, backend: Backend, column: ColumnElement[Any]) -> None:
        self.backend = backend
        self.column = column

    def exists(self) -> Bool:
        return self.column.is_not(None)

    def time(self) -> ColumnElement[Any]:
        return self.backend.ts(self.column)


class NumberExpr(ValueRef):
    """A computed number (NULL when there is none)."""

    def __init__(self, backend: Backend, expr: ColumnElement[Any]) -> None:
        self.backend = backend
        self.expr = expr

    def exists(self) -> Bool:
        return self.expr.is_not(None)

    def equals(self, value: Any) -> Bool:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return number_comparison(self.expr, "eq", value, self.backend)
        return false()

    def compare_number(self, op: str, value: Any) -> Bool:
        return number_comparison(self.expr, op, value, self.backend)


class TimeExpr(ValueRef):
    """A computed time in the backend's unit (NULL when there is none)."""

    def __init__(self, backend: Backend, expr: ColumnElement[Any]) -> None:
        self.backend = backend
        self.expr = expr

    def exists(self) -> Bool:
        return self.expr.is_not(None)

    def time(self) -> ColumnElement[Any]:
        return self.expr


class BoolExpr(ValueRef):
    """A computed true/false (never NULL)."""

    def __init__(self, backend: Backend, expr: Bool) -> None:
        self.backend = backend
        self.expr = expr

    def exists(self) -> Bool:
        return true()

    def equals(self, value: Any) -> Bool:
        if isinstance(value, bool):
            return self.expr if value else ~self.expr
        return false()


def number_comparison(expr: ColumnElement[Any], op: str, value: Any, backend: Backend) -> Bool:
    """`expr op value` for numbers; NULL (no number) satisfies nothing, not even ne."""
    if op == "between":
        low, high = value
        result = and_(expr >= backend.number(low), expr <= backend.number(high))
    else:
        x = backend.number(value)
        result = {
            "eq": expr == x,
            "ne": expr != x,
            "gt": expr > x,
            "gte": expr >= x,
            "lt": expr < x,
            "lte": expr <= x,
        }[op]
    return definite(and_(expr.is_not(None), result))


def any_of(conditions: list[Bool]) -> Bool:
    return or_(*conditions) if conditions else false()
