"""The Liquid engine templates run in: sandboxed, strict about missing values, with filters
for money, numbers and dates in the contact's locale and time zone (Babel).

Sandbox: no `include`/`render` tags (nothing is read from the file system), no remote
anything, bounded loops and output. Templates only see plain JSON-like data.

Missing values: a variable without a value renders nothing silently nowhere. It is falsy in
`{% if %}` and comparisons, takes Liquid's `default` filter, and anywhere else (output,
other filters, loops) raises `MissingValue` naming the variable, so the message is skipped
with that reason instead of going out as "Hi ,".
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from io import StringIO
from typing import Any, ClassVar, NoReturn
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_time
from babel.numbers import format_currency, format_decimal, format_percent
from liquid import BoundTemplate, Environment, FalsyStrictUndefined, Mode
from liquid.exceptions import LiquidError, OutputStreamLimitError, UndefinedError
from liquid.token import Token

from nurture.errors import NurtureError


class RenderError(NurtureError):
    """A message could not be rendered for this contact; the dispatcher skips it."""

    code = "render_failed"


class MissingValue(RenderError):
    """A variable has no value and no default."""

    code = "missing_value"

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(reason, path=variable)
        self.variable = variable
        self.reason = reason


class TemplateProblem(NurtureError):
    """A template that does not compile or uses what it may not; `line` and `column`
    (1-based) point into the field named by `path`."""

    code = "invalid_template"

    def __init__(
        self,
        message: str,
        *,
        path: str | None,
        code: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"{message}{where}", path=path, code=code)
        self.line = line
        self.column = column

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "line": self.line, "column": self.column}


class _MissingVariable(UndefinedError):
    def __init__(self, variable: str, token: Token | None) -> None:
        super().__init__(f"{variable} has no value", token=token)
        self.variable = variable


def _missing(undefined: object) -> NoReturn:
    """Raise for a missing value, naming its full path (`contact.first_name`)."""
    name = str(object.__getattribute__(undefined, "name"))
    hint = object.__getattribute__(undefined, "hint") or ""
    variable = hint.removesuffix(" is undefined").strip("'") if "is undefined" in hint else name
    raise _MissingVariable(variable, object.__getattribute__(undefined, "token"))


class _Missing(FalsyStrictUndefined):
    """Falsy in conditions, taken by `default`, an error everywhere else."""

    __slots__ = ()
    force_liquid_default = True

    def __getattribute__(self, name: str) -> object:
        if name in object.__getattribute__(self, "allowed_properties"):
            return object.__getattribute__(self, name)
        _missing(self)

    def __str__(self) -> str:
        _missing(self)

    def __iter__(self) -> Iterator[Any]:
        _missing(self)

    def __len__(self) -> int:
        _missing(self)

    def __getitem__(self, key: str) -> object:
        _missing(self)

    def __contains__(self, item: object) -> bool:
        _missing(self)

    def __int__(self) -> int:
        _missing(self)


MAX_OUTPUT = 5_000_000  # characters one field may render to


class _Output(StringIO):
    """Output that stops a runaway template. Liquid's own limit encodes every chunk to
    count bytes, which costs a quarter of an email's render; characters are enough."""

    size = 0

    def write(self, text: str, /) -> int:
        self.size += len(text)
        if self.size > MAX_OUTPUT:
            raise OutputStreamLimitError("output stream limit reached", token=None)
        return super().write(text)


class _Bounded(BoundTemplate):
    def _get_buffer(self) -> StringIO:
        return _Output()


class _Sandbox(Environment):
    loop_iteration_limit: ClassVar[int | None] = 10_000
    template_class = _Bounded

    def error(
        self,
        exc: type[LiquidError] | LiquidError,
        msg: str | None = None,
        token: Token | None = None,
    ) -> None:
        # Some parse errors point at an "end of expression" with no position; the tag
        # or output statement that holds it has one.
        lost = isinstance(exc, LiquidError) and (exc.token is None or exc.token.start_index < 0)
        if lost and token is not None and token.start_index >= 0:
            assert isinstance(exc, LiquidError)
            exc.token = token
        super().error(exc, msg, token)


# -- what filters need to know about the message being rendered ---------------------------
@dataclass(frozen=True, slots=True)
class Locality:
    """The locale, zone, currency and moment a message is rendered for."""

    locale: Locale
    zone: ZoneInfo
    currency: str | None
    now: datetime | None  # None outside a message: `"now" | date` is then an error


_LOCALITY: contextvars.ContextVar[Locality] = contextvars.ContextVar("nurture_locality")


@lru_cache(maxsize=512)
def babel_locale(tag: str) -> Locale | None:
    """A Babel locale for a BCP 47 tag (`pt-BR`), or None if Babel does not know it."""
    try:
        return Locale.parse(tag.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return None


def _here() -> Locality:
    try:
        return _LOCALITY.get()
    except LookupError:
        # Outside a message (a test, a tool): English, UTC, no currency.
        return Locality(Locale.parse("en"), ZoneInfo("UTC"), None, None)


def _number(value: object, filter_name: str) -> Decimal | int | float:
    if isinstance(value, _Missing):
        _missing(value)
    if isinstance(value, bool):
        raise RenderError(f"`{filter_name}` expects a number, got {value!r}")
    if isinstance(value, int | float | Decimal):
        return value
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            pass
    raise RenderError(f"`{filter_name}` expects a number, got {value!r}", code="bad_value")


def money(value: object, currency: object = None) -> str:
    """`{{ order.total | money: "EUR" }}` → 1.234,50 € (de-DE); the template's currency
    when none is given."""
    amount = _number(value, "money")
    here = _here()
    code = currency if isinstance(currency, str) and currency else here.currency
    if code is None:
        raise RenderError('`money` needs a currency: money: "EUR", or `currency:` in the template')
    return _currency(amount, code.upper(), str(here.locale))


# An email formats the same total and date in its subject, HTML and text: memoised.
@lru_cache(maxsize=8192)
def _currency(amount: Decimal | int | float, code: str, locale: str) -> str:
    return str(format_currency(amount, code, locale=babel_locale(locale)))


def number(value: object, digits: object = None) -> str:
    """`{{ n | number }}` (grouped), `number: 2` (exactly 2 decimals), or a CLDR pattern."""
    amount = _number(value, "number")
    here = _here()
    if isinstance(digits, int) and not isinstance(digits, bool) and 0 <= digits <= 10:
        pattern = "#,##0" + ("." + "0" * digits if digits else "")
        return str(format_decimal(amount, format=pattern, locale=here.locale))
    if isinstance(digits, str) and digits:
        return str(format_decimal(amount, format=digits, locale=here.locale))
    return str(format_decimal(amount, locale=here.locale))


def percent(value: object) -> str:
    """`{{ 0.256 | percent }}` → 26 % (de-DE): the value is a fraction."""
    return str(format_percent(_number(value, "percent"), locale=_here().locale))


_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FORMATS = ("short", "medium", "long", "full")


def _moment(value: object, filter_name: str) -> datetime | date:
    """A datetime (aware, in the contact's zone) or a plain date (a birthday does not move
    with time zones)."""
    if isinstance(value, _Missing):
        _missing(value)
    here = _here()
    moment: datetime | date
    if value in ("now", "today"):
        if here.now is None:
            raise RenderError(f"`{filter_name}` of {value!r} needs the time of the message")
        moment = here.now
    elif isinstance(value, datetime | date):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str) and _DATE_ONLY.match(value.strip()):
        moment = date.fromisoformat(value.strip())
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise RenderError(
                f"`{filter_name}` expects a date or time, got {value!r}", code="bad_value"
            ) from None
    else:
        raise RenderError(
            f"`{filter_name}` expects a date or time, got {value!r}", code="bad_value"
        )
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        moment = moment.astimezone(here.zone)
    return moment


def _format(value: object, style: object, default: str, kind: str) -> str:
    moment = _moment(value, kind)
    style = style if isinstance(style, str) and style else default
    # Equal instants in different zones are equal datetimes: the zone is part of the key.
    zone = str(moment.tzinfo) if isinstance(moment, datetime) else ""
    return _format_moment(moment, zone, style, kind, str(_here().locale))


@lru_cache(maxsize=8192)
def _format_moment(moment: datetime | date, zone: str, style: str, kind: str, tag: str) -> str:
    if "%" in style:  # Shopify's strftime flavour, for templates written for it
        return moment.strftime(style)
    locale = babel_locale(tag)
    if kind == "date" or not isinstance(moment, datetime):
        return str(format_date(moment, style, locale=locale))
    if kind == "time":
        return str(format_time(moment, style, locale=locale))
    return str(format_datetime(moment, style, locale=locale))


def date_filter(value: object, style: object = None) -> str:
    """`{{ event.timestamp | date: "medium" }}` in the contact's zone and locale; a CLDR
    pattern ("d MMMM y") or a strftime one ("%d.%m.%Y") works too."""
    return _format(value, style, "medium", "date")


def datetime_filter(value: object, style: object = None) -> str:
    """Date and time of day, in the contact's zone and locale."""
    return _format(value, style, "medium", "datetime")


def time_filter(value: object, style: object = None) -> str:
    """The time of day, in the contact's zone and locale."""
    return _format(value, style, "short", "time")


FILTERS = {
    "money": money,
    "number": number,
    "percent": percent,
    "date": date_filter,
    "datetime": datetime_filter,
    "time": time_filter,
}


def _environment(*, html: bool) -> Environment:
    env = _Sandbox(undefined=_Missing, autoescape=html, tolerance=Mode.STRICT, strict_filters=True)
    for tag in ("include", "render"):  # the only tags that read other files
        env.tags.pop(tag, None)
    for name, function in FILTERS.items():
        env.add_filter(name, function)
    return env


# Values are HTML-escaped in HTML bodies (a trait is data, never markup); text is as is.
HTML = _environment(html=True)
TEXT = _environment(html=False)


def _position(exc: LiquidError, source: str) -> tuple[int | None, int | None]:
    context = exc.context()
    if context is not None:
        return context[0], context[1] + 1
    unclosed = TEXT.analyze_tags_from_string(source).unclosed_tags
    for spans in unclosed.values():
        line, column = spans[0].line_col(source)
        return line, column + 1
    return None, None


def compile_liquid(source: str, path: str, *, html: bool = False) -> BoundTemplate:
    """Parse once; raises TemplateProblem with the line and column of a syntax error."""
    try:
        return (HTML if html else TEXT).from_string(source, name=path)
    except LiquidError as exc:
        line, column = _position(exc, source)
        raise TemplateProblem(
            str(exc.message), path=path, code="template_syntax", line=line, column=column
        ) from None


def render_liquid(template: BoundTemplate, context: dict[str, Any], locality: Locality) -> str:
    """Render with `context` as the globals; MissingValue names a variable with no value."""
    token = _LOCALITY.set(locality)
    try:
        return template.render(context)
    except _MissingVariable as exc:
        raise MissingValue(exc.variable, "has no value and no default") from None
    except RenderError:
        raise
    except LiquidError as exc:
        raise RenderError(f"{template.name}: {exc.message}") from None
    finally:
        _LOCALITY.reset(token)
