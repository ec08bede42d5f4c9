"""What the funnel and cohort reports share: the time fields of a question (dates in a
time zone), which events count, and segments as filters or groups."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic
from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator
from sqlalchemy import BigInteger, ColumnElement, Select, cast, func, select

from nurture.conditions.compile import SqlCompiler
from nurture.conditions.model import PropertyFilter, validation_error
from nurture.conditions.sqlvalues import Backend, Bool
from nurture.errors import NotFound, ValidationError
from nurture.segments.definitions import DefinitionStore
from nurture.store import Database
from nurture.store import tables as t

StepType = Literal["track", "page", "screen"]


class QuestionModel(BaseModel):
    """A report's question: unknown fields are errors, values cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _moment(value: Any) -> date | datetime:
    """A date (`2026-03-01`) or a date-time (`2026-03-01T10:00:00+01:00`)."""
    if isinstance(value, datetime | date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    raise ValueError("expected a date (2026-03-01) or a date-time (2026-03-01T10:00:00Z)")


Moment = Annotated[
    date | datetime, PlainValidator(_moment), PlainSerializer(lambda v: v.isoformat())
]


def _zone(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a time zone name like UTC or Europe/Paris")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use a name like Europe/Paris)") from None
    return value


Zone = Annotated[str, PlainValidator(_zone)]


Question = TypeVar("Question", bound=BaseModel)


def parse_question(model: type[Question], data: Any) -> Question:
    """A report's question (a funnel, a cohort table) validated; ValidationError naming
    the bad field (`steps[1].event`)."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_error(exc) from None


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of `day` in `zone`."""
    return datetime.combine(day, time(0), tzinfo=zone)


def resolve_range(
    start: date | datetime | None,
    end: date | datetime | None,
    zone: ZoneInfo,
    now: datetime,
    default: timedelta,
) -> tuple[datetime, datetime]:
    """[from, to) as aware datetimes: a date `from` starts at its local midnight, a date
    `to` ends at the end of its day; date-times without an offset are local times."""

    def instant(value: date | datetime, *, end_of_day: bool) -> datetime:
        if isinstance(value, datetime):
            return value if value.tzinfo is not None else value.replace(tzinfo=zone)
        return local_midnight(value + timedelta(days=1 if end_of_day else 0), zone)

    upper = instant(end, end_of_day=True) if end is not None else now
    lower = instant(start, end_of_day=False) if start is not None else upper - default
    if lower >= upper:
        raise ValidationError("`from` must be before `to`", path="from")
    return lower, upper


def microseconds(b: Backend, expr: ColumnElement[Any]) -> ColumnElement[Any]:
    """A stored time as integer microseconds since 1970 UTC."""
    if b.sqlite:
        return b.ts(expr)
    return cast(func.extract("epoch", expr) * 1_000_000, BigInteger)


# -- which events -------------------------------------------------------------------------


def event_where(
    compiler: SqlCompiler,
    e: Any,
    name: str,
    types: Sequence[str],
    filters: Sequence[PropertyFilter],
) -> list[Bool]:
    """Conditions on an `events` alias: name (`*`: any), type(s) (none: any), filters."""
    where: list[Bool] = []
    if name != "*":
        where.append(e.c.event == name)
    if types:
        where.append(e.c.type == types[0] if len(types) == 1 else e.c.type.in_(list(types)))
    for f in filters:
        where.append(compiler.comparison(compiler.b.json(e.c.properties, f.property), f))
    return where


def members_of(segment: str) -> Select[Any]:
    m = t.segment_memberships.c
    return select(m.contact_id).where(m.segment_key == segment)


def check_segments(db: Database, keys: Sequence[str], path: str) -> None:
    """NotFound naming the field when a segment does not exist."""
    with db.read() as conn:
        for i, key in enumerate(keys):
            if DefinitionStore.get(conn, "segment", key) is None:
                where = path if len(keys) == 1 and not path.endswith("s") else f"{path}[{i}]"
                raise NotFound(f"segment {key!r} does not exist", path=where)
