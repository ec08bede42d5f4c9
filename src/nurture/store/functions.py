"""SQL functions that the condition language needs and neither database has as such.

`nurture_ts(value)` reads a date trait or property: an ISO 8601 date or date-time
(`2026-05-01`, `2026-05-01T10:00`, `2026-05-01 10:00:00.5+02:00`; no zone means UTC)
or an integer number of seconds since 1970. Anything else is no date (NULL), never an
error. On SQLite the function below is registered on every connection, so SQL and the
in-memory evaluator run the very same code; on PostgreSQL migration 0003 creates a
PL/pgSQL twin with the same grammar, held to this one by tests.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Hours, minutes, seconds and offsets are range-checked here because PostgreSQL is more
# lenient than Python (24:00, leap seconds, offsets up to 15:59); days are checked by
# datetime() and by PostgreSQL's own calendar.
DATE_PATTERN = (
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9])(?:\.([0-9]{1,6}))?)?"
    r"(Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])?)?$"
)
_DATE_RE = re.compile(DATE_PATTERN)
# Integer seconds since 1970 within years 1..9999.
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300799


@lru_cache(maxsize=65536)
def _parse_text(value: str) -> int | None:
    match = _DATE_RE.fullmatch(value)  # `$` alone would allow a final newline
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    tz = UTC
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:
        return None
    micros = (moment - _EPOCH) // _MICROSECOND
    # An offset can push 9999-12-31 past year 9999, which no backend reads back.
    if not _MIN_SECONDS * 1_000_000 <= micros <= _MAX_SECONDS * 1_000_000 + 999_999:
        return None
    return micros


def timestamp_us(value: object) -> int | None:
    """A date trait or property as microseconds since 1970 UTC, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return _parse_text(value)
    if isinstance(value, int):
        if _MIN_SECONDS <= value <= _MAX_SECONDS:
            return value * 1_000_000
        return None
    return None


def _sqlite_nurture_ts(value: object) -> int | None:
    # SQLite hands JSON integers over as int and strings as str; floats, blobs and
    # NULL are no dates.
    return timestamp_us(value)


def register_sqlite_functions(dbapi_conn: object) -> None:
    """Make `nurture_ts` callable from SQL on this SQLite connection."""
    dbapi_conn.create_function(  # type: ignore[attr-defined]
        "nurture_ts", 1, _sqlite_nurture_ts, deterministic=True
    )


# The PostgreSQL twin: same grammar, NULL for anything that is not a valid date. Not
# parallel safe: its exception block is a subtransaction, which parallel workers cannot
# start (a parallel query over a date trait failed with it declared safe).
POSTGRES_FUNCTION = r"""
CREATE OR REPLACE FUNCTION nurture_ts(value jsonb) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL UNSAFE AS $fn$
DECLARE
    m text[];
    result timestamptz;
BEGIN
    IF value IS NULL THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(value) = 'number' THEN
        IF value::text !~ '^-?[0-9]+$'
           OR value::numeric < -62135596800 OR value::numeric > 253402300799 THEN
            RETURN NULL;
        END IF;
        RETURN to_timestamp(value::numeric::float8);
    END IF;
    IF jsonb_typeof(value) <> 'string' THEN
        RETURN NULL;
    END IF;
    m := regexp_match(value #>> '{}', '__PATTERN__');
    IF m IS NULL THEN
        RETURN NULL;
    END IF;
    BEGIN
        result := (m[1] || '-' || m[2] || '-' || m[3] || ' ' || coalesce(m[4], '00') || ':'
                || coalesce(m[5], '00') || ':' || coalesce(m[6], '00') || '.'
                || rpad(coalesce(m[7], '0'), 6, '0')
                || CASE WHEN m[8] IS NULL OR m[8] = 'Z' THEN '+00:00' ELSE m[8] END
               )::timestamptz;
        IF result < '0001-01-01 00:00:00+00' OR result >= '10000-01-01 00:00:00+00' THEN
            RETURN NULL;
        END IF;
        RETURN result;
    EXCEPTION WHEN others THEN
        RETURN NULL;
    END;
END
$fn$;
""".replace("__PATTERN__", DATE_PATTERN)
