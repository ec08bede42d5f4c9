"""Durations (`30d`, `12h`, `1d12h`) and date references (`2026-05-01`, `30d ago`,
`in 7d`) as the condition language writes them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

from nurture.store.functions import timestamp_us

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([wdhms])")
_WHOLE = re.compile(r"(?:\d+[wdhms])+")


def parse_duration(value: object) -> timedelta:
    """`30d` → 30 days. Units: w d h m s, combinable (`1d12h`)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
        seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(value))
        if seconds > 0:
            return timedelta(seconds=seconds)
    raise ValueError("expected a duration like 30d, 12h, 90m or 1d12h")


def format_duration(value: timedelta) -> str:
    """The shortest text that reads back as `value` (`1d12h`)."""
    seconds = int(value.total_seconds())
    out = []
    for unit, size in _UNITS.items():
        if unit == "w":
            continue
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


@dataclass(frozen=True, slots=True)
class DateRef:
    """A moment: absolute (`at_us`, microseconds since 1970 UTC) or relative to now
    (`offset`, negative for the past)."""

    at_us: int | None = None
    offset: timedelta | None = None

    def resolve_us(self, now_us: int) -> int:
        if self.at_us is not None:
            return self.at_us
        assert self.offset is not None
        return now_us + self.offset // timedelta(microseconds=1)

    def __str__(self) -> str:
        if self.offset is None:
            return str(self.text)
        if self.offset < timedelta(0):
            return f"{format_duration(-self.offset)} ago"
        return f"in {format_duration(self.offset)}"

    text: str | None = None


def parse_date_ref(value: Any) -> DateRef:
    if isinstance(value, DateRef):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(" ago"):
            return DateRef(offset=-_duration_or_raise(text[:-4]))
        if text.startswith("in "):
            return DateRef(offset=_duration_or_raise(text[3:]))
        at = timestamp_us(text)
        if at is not None:
            return DateRef(at_us=at, text=text)
    elif hasattr(value, "isoformat"):  # YAML reads bare dates as date / datetime
        return parse_date_ref(value.isoformat())
    raise ValueError("expected a date like 2026-05-01, a date-time, '30d ago' or 'in 7d'")


def _duration_or_raise(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError("expected a duration like 30d in '30d ago' or 'in 7d'") from None


DateRefField = Annotated[
    DateRef,
    BeforeValidator(parse_date_ref),
    PlainSerializer(str, return_type=str),
]
