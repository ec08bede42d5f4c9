"""Bulk writes for the hot path: one compiled statement, rows converted once.

SQLAlchemy's executemany re-processes every parameter of every row through
several layers; for tens of thousands of events a second that is most of the
cost. Here each value goes through exactly its column type's own bind processor
(so what is stored is what Core would store), and the rows reach the driver in
the form that is cheapest for each backend: `executemany` for SQLite (in-process,
one prepared statement), one array per column for PostgreSQL (`unnest`: one short
statement and one round trip for any number of rows, instead of one per row).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    Column,
    ColumnElement,
    Connection,
    Table,
    any_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import sqltypes

Processor = Callable[[Any], Any] | None


@lru_cache(maxsize=64)
def _processors(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> tuple[Processor, ...]:
    return tuple(table.c[name].type._cached_bind_processor(dialect) for name in columns)


def _convert(
    rows: Sequence[dict[str, Any]], columns: tuple[str, ...], procs: tuple[Processor, ...]
) -> list[list[Any]]:
    pairs = list(zip(columns, procs, strict=True))
    return [
        [
            row[name] if proc is None or row[name] is None else proc(row[name])
            for name, proc in pairs
        ]
        for row in rows
    ]


@lru_cache(maxsize=64)
def _insert_sql(
    dialect: Dialect, table: Table, columns: tuple[str, ...], ignore_conflicts: bool
) -> tuple[str, tuple[str, ...]]:
    """The single-row INSERT and the order its parameters appear in."""
    if ignore_conflicts:
        module = postgresql if dialect.name == "postgresql" else sqlite
        stmt: Any = module.insert(table).on_conflict_do_nothing()
    else:
        stmt = table.insert()
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
    return str(compiled), tuple(compiled.positiontup or ())


def insert_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    ignore_conflicts: bool = False,
    encoded: frozenset[str] = frozenset(),
) -> int:
    """Insert rows that all have the same keys (`ON CONFLICT DO NOTHING` if asked);
    returns how many rows were inserted. Columns named in `encoded` hold values
    already in their stored form (JSON text) and skip their type's processing."""
    if not rows:
        return 0
    columns = tuple(rows[0])
    dialect = conn.dialect
    procs = _processors(dialect, table, columns)
    if encoded:
        procs = tuple(None if n in encoded else p for n, p in zip(columns, procs, strict=True))
    values = _convert(rows, columns, procs)
    if dialect.name == "postgresql":
        sql = _pg_insert_sql(dialect, table, columns, ignore_conflicts)
        return int(conn.exec_driver_sql(sql, _pg_arrays(values, len(columns))).rowcount)
    sql, order = _insert_sql(dialect, table, columns, ignore_conflicts)
    return _executemany(conn, sql, order, columns, values)


def _executemany(
    conn: Connection,
    sql: str,
    order: tuple[str, ...],
    columns: tuple[str, ...],
    values: list[list[Any]],
) -> int:
    """Run a single-row SQLite statement for every row of converted `values` (one list per
    row, in `columns`' order), its parameters in `order`; the rows it changed."""
    index = [columns.index(name) for name in order]
    return int(conn.exec_driver_sql(sql, [tuple(v[i] for i in index) for v in values]).rowcount)


@lru_cache(maxsize=64)
def _insert_returning_sql(
    dialect: Dialect, table: Table, columns: tuple[str, ...], returning: str
) -> tuple[str, tuple[str, ...] | None]:
    module = postgresql if dialect.name == "postgresql" else sqlite
    stmt = module.insert(table).on_conflict_do_nothing().returning(table.c[returning])
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
    order = compiled.positiontup
    return str(compiled), tuple(order) if order else None


def insert_one(conn: Connection, table: Table, row: dict[str, Any], *, returning: str) -> Any:
    """Insert one row unless it conflicts with a unique constraint or index (`ON CONFLICT
    DO NOTHING`); the row's `returning` column, or None when it conflicted. One compiled
    statement per shape: for rows inserted one at a time on a hot path."""
    columns = tuple(row)
    dialect = conn.dialect
    (values,) = _convert([row], columns, _processors(dialect, table, columns))
    sql, order = _insert_returning_sql(dialect, table, columns, returning)
    params: Any
    if order is None:  # named parameters (PostgreSQL)
        params = dict(zip(columns, values, strict=True))
    else:
        params = tuple(values[columns.index(name)] for name in order)
    return conn.exec_driver_sql(sql, params).scalar()


def insert_many_returning(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], *, returning: str
) -> list[Any]:
    """Insert rows that all have the same keys, skipping those that conflict (`ON
    CONFLICT DO NOTHING`); the `returning` column of each row inserted. On PostgreSQL one
    statement for all the rows; on SQLite (in-process, no round trips) one per row."""
    if not rows:
        return []
    dialect = conn.dialect
    if dialect.name != "postgresql":
        found = (insert_one(conn, table, row, returning=returning) for row in rows)
        return [value for value in found if value is not None]
    columns = tuple(rows[0])
    values = _convert(rows, columns, _processors(dialect, table, columns))
    sql = _pg_insert_sql(dialect, table, columns, True)
    sql += f" RETURNING {dialect.identifier_preparer.quote(returning)}"
    return list(conn.exec_driver_sql(sql, _pg_arrays(values, len(columns))).scalars())


def _pg_arrays(values: list[list[Any]], width: int) -> tuple[list[Any], ...]:
    """Rows to one list per column: PostgreSQL receives each column as one array."""
    return tuple([row[i] for row in values] for i in range(width))


@lru_cache(maxsize=64)
def _pg_unnest(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> str:
    arrays = ", ".join(f"%s::{table.c[n].type.compile(dialect)}[]" for n in columns)
    return f"unnest({arrays})"


@lru_cache(maxsize=64)
def _pg_insert_sql(
    dialect: Dialect, table: Table, columns: tuple[str, ...], ignore_conflicts: bool
) -> str:
    """INSERT ... SELECT FROM unnest(arrays): a short statement PostgreSQL plans once,
    whatever the number of rows."""
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(n) for n in columns)
    source = _pg_unnest(dialect, table, columns)
    sql = f"INSERT INTO {quote(table.name)} ({names}) SELECT * FROM {source}"
    return sql + (" ON CONFLICT DO NOTHING" if ignore_conflicts else "")


@lru_cache(maxsize=64)
def _pg_update_sql(dialect: Dialect, table: Table, key: str, columns: tuple[str, ...]) -> str:
    quote = dialect.identifier_preparer.quote
    target = quote(table.name)
    sets = ", ".join(f"{quote(n)} = v.{quote(n)}" for n in columns)
    names = ", ".join(quote(n) for n in ("_key", *columns))
    source = _pg_unnest(dialect, table, (key, *columns))
    where = f"{target}.{quote(key)} = v._key"
    return f"UPDATE {target} SET {sets} FROM {source} AS v({names}) WHERE {where}"


def update_rows(conn: Connection, table: Table, key: str, rows: Sequence[dict[str, Any]]) -> None:
    """Update rows by key: each dict holds `_key` and the same other columns."""
    if not rows:
        return
    columns = tuple(name for name in rows[0] if name != "_key")
    dialect = conn.dialect
    values = _convert(rows, columns, _processors(dialect, table, columns))
    keys = [row["_key"] for row in rows]
    if dialect.name == "postgresql":
        sql = _pg_update_sql(dialect, table, key, columns)
        arrays = _pg_arrays([[k, *v] for k, v in zip(keys, values, strict=True)], len(columns) + 1)
        conn.exec_driver_sql(sql, arrays)
        return
    stmt = (
        update(table)
        .where(table.c[key] == bindparam("_key"))
        .values({name: bindparam(name) for name in columns})
    )
    compiled = stmt.compile(dialect=dialect)
    order = tuple(compiled.positiontup or ())
    position = {name: i for i, name in enumerate(columns)}
    params = [
        tuple(k if name == "_key" else v[position[name]] for name in order)
        for k, v in zip(keys, values, strict=True)
    ]
    conn.exec_driver_sql(str(compiled), params)


# -- binary arrays and constants ---------------------------------------------------------
# psycopg builds a text array parameter in Python, value by value, escaping each with a
# regular expression: ~1.3 µs a value, 20 µs for a 16-column row (measured). In binary
# each value is packed as is (~0.15 µs), and the server parses less. A column whose
# value is the same in every row (a batch of steps: the journey, the step, the time) is
# sent once, as one value. `insert_batch` and `update_batch` are `insert_rows` and
# `update_rows` so (the same on SQLite); what is stored is the same.


@lru_cache(maxsize=64)
def _batch_processors(
    dialect: Dialect, table: Table, columns: tuple[str, ...]
) -> tuple[Processor, ...]:
    """Each column's bind processor, but JSON is serialized to text (the engine's
    serializer, as Core does; sent with a cast), so that equal values compare equal."""
    serialize = getattr(dialect, "_json_serializer", None) or json.dumps
    return tuple(
        serialize if isinstance(table.c[name].type.dialect_impl(dialect), sqltypes.JSON) else proc
        for name, proc in zip(columns, _processors(dialect, table, columns), strict=True)
    )


def _batch_columns(
    rows: Sequence[dict[str, Any]], columns: tuple[str, ...], procs: tuple[Processor, ...]
) -> tuple[list[list[Any]], tuple[bool, ...]]:
    """Each column's converted values, and whether it is the same in every row (then
    only its first value is sent); at least one column is sent as an array. A column
    whose values are one object, or equal ones of a plain type, is converted once (a
    batch of steps has the same time in every row); the others are converted, then
    compared (equal JSON texts are sent once)."""
    n = len(rows)
    out: list[list[Any]] = []
    same: list[bool] = []
    for name, proc in zip(columns, procs, strict=True):
        values = [row[name] for row in rows]
        if n > 1 and _all_same(values):
            out.append(_converted(values[:1], proc))
            same.append(True)
            continue
        values = _converted(values, proc)
        out.append(values)
        same.append(n > 1 and values.count(values[0]) == n)
    if all(same):
        same[0] = False
        out[0] = _converted([row[columns[0]] for row in rows], procs[0])
    return out, tuple(same)


def _converted(values: list[Any], proc: Processor) -> list[Any]:
    if proc is None:
        return values
    return [None if v is None else proc(v) for v in values]


# Types whose equal values are stored the same (not floats: -0.0 == 0.0; not JSON: 1 == 1.0).
_BY_VALUE = frozenset({str, int, bool, datetime})


def _all_same(values: list[Any]) -> bool:
    """Whether every value is stored as the first is: the same object, or an equal one
    of the same type among `_BY_VALUE` (equal aware datetimes are the same instant)."""
    first = values[0]
    if all(v is first for v in values):
        return True
    kind = type(first)
    if kind not in _BY_VALUE or values.count(first) != len(values):
        return False
    return all(type(v) is kind for v in values)


def _cast(dialect: Dialect, table: Table, name: str) -> str:
    return str(table.c[name].type.compile(dialect))


@lru_cache(maxsize=128)
def _pg_batch_insert_sql(
    dialect: Dialect,
    table: Table,
    columns: tuple[str, ...],
    same: tuple[bool, ...],
    ignore_conflicts: bool,
) -> str:
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(n) for n in columns)
    picks = ", ".join(
        f"%b::{_cast(dialect, table, n)}" if s else f"v.{quote(n)}"
        for n, s in zip(columns, same, strict=True)
    )
    varying = [n for n, s in zip(columns, same, strict=True) if not s]
    arrays = ", ".join(f"%b::{_cast(dialect, table, n)}[]" for n in varying)
    alias = ", ".join(quote(n) for n in varying)
    source = f"unnest({arrays}) AS v({alias})"
    sql = f"INSERT INTO {quote(table.name)} ({names}) SELECT {picks} FROM {source}"
    return sql + (" ON CONFLICT DO NOTHING" if ignore_conflicts else "")


@lru_cache(maxsize=128)
def _pg_batch_update_sql(
    dialect: Dialect, table: Table, key: str, columns: tuple[str, ...], same: tuple[bool, ...]
) -> str:
    quote = dialect.identifier_preparer.quote
    target = quote(table.name)
    sets = ", ".join(
        f"{quote(n)} = %b::{_cast(dialect, table, n)}" if s else f"{quote(n)} = v.{quote(n)}"
        for n, s in zip(columns, same, strict=True)
    )
    varying = [key, *(n for n, s in zip(columns, same, strict=True) if not s)]
    arrays = ", ".join(f"%b::{_cast(dialect, table, n)}[]" for n in varying)
    alias = ", ".join(quote(n) for n in ("_key", *varying[1:]))
    where = f"{target}.{quote(key)} = v._key"
    return f"UPDATE {target} SET {sets} FROM unnest({arrays}) AS v({alias}) WHERE {where}"


def insert_batch(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    ignore_conflicts: bool = False,
) -> int:
    """`insert_rows` for the hot paths: on PostgreSQL binary arrays, and a column that is
    the same in every row sent once. Returns how many rows were inserted."""
    if not rows or conn.dialect.name != "postgresql":
        return insert_rows(conn, table, rows, ignore_conflicts=ignore_conflicts)
    sql, params = _pg_batch_insert(conn.dialect, table, rows, ignore_conflicts)
    return int(conn.exec_driver_sql(sql, params).rowcount)


def _pg_batch_insert(
    dialect: Dialect, table: Table, rows: Sequence[dict[str, Any]], ignore_conflicts: bool
) -> tuple[str, tuple[Any, ...]]:
    """The INSERT of `rows` and its parameters: the values of the columns sent once, in
    column order, then the arrays of the others."""
    columns = tuple(rows[0])
    values, same = _batch_columns(rows, columns, _batch_processors(dialect, table, columns))
    sql = _pg_batch_insert_sql(dialect, table, columns, same, ignore_conflicts)
    params = [v[0] for v, s in zip(values, same, strict=True) if s]
    params += [v for v, s in zip(values, same, strict=True) if not s]
    return sql, tuple(params)


def insert_batch_returning(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], *, returning: str
) -> list[Any]:
    """`insert_many_returning` (rows that conflict are skipped; the `returning` column of
    each row inserted) for the hot paths: on PostgreSQL as `insert_batch` sends rows."""
    if not rows or conn.dialect.name != "postgresql":
        return insert_many_returning(conn, table, rows, returning=returning)
    sql, params = _pg_batch_insert(conn.dialect, table, rows, True)
    sql += f" RETURNING {conn.dialect.identifier_preparer.quote(returning)}"
    return list(conn.exec_driver_sql(sql, params).scalars())


def update_batch(conn: Connection, table: Table, key: str, rows: Sequence[dict[str, Any]]) -> None:
    """`update_rows` for the hot paths (each dict holds `_key` and the same other
    columns): on PostgreSQL binary arrays, and a column that is the same in every row
    sent once."""
    if not rows or conn.dialect.name != "postgresql":
        update_rows(conn, table, key, rows)
        return
    columns = tuple(name for name in rows[0] if name != "_key")
    dialect = conn.dialect
    values, same = _batch_columns(rows, columns, _batch_processors(dialect, table, columns))
    if all(same):  # the key varies: the other columns may all be sent once
        same = (True,) * len(columns)
    sql = _pg_batch_update_sql(dialect, table, key, columns, same)
    params: list[Any] = [v[0] for v, s in zip(values, same, strict=True) if s]
    params.append([row["_key"] for row in rows])
    params += [v for v, s in zip(values, same, strict=True) if not s]
    conn.exec_driver_sql(sql, tuple(params))


def one_of(conn: Connection, column: Column[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    """`column IN (values)` as each backend runs it best: on PostgreSQL one array
    parameter (`= ANY(:values)`), a short statement that is prepared once and planned
    with the index, instead of hundreds of parameters parsed anew each time."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def in_list(
    dialect_name: str, column: Any, name: str = "ids", type_: Any = sqltypes.BigInteger
) -> ColumnElement[bool]:
    """`column` is one of the values of the list parameter `name` (pass it through
    `list_param`), so that a statement built once takes any number of values: `IN (SELECT
    value FROM json_each(:name))` on SQLite, `= ANY(:name)` on PostgreSQL."""
    if dialect_name == "sqlite":
        items = func.json_each(bindparam(name, type_=sqltypes.String)).table_valued("value")
        found: ColumnElement[bool] = column.in_(select(items.c.value))
    else:
        found = column == any_(bindparam(name, type_=ARRAY(type_)))
    return found


def list_param(dialect_name: str, values: Sequence[Any]) -> Any:
    """A list as `in_list` reads it: JSON text on SQLite, an array on PostgreSQL."""
    return orjson.dumps(list(values)).decode() if dialect_name == "sqlite" else list(values)


def upsert_rows(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> None:
    """Insert rows, or where a row with the same `keys` exists, overwrite its other
    columns with the given values. Rows all have the same columns."""
    if not rows:
        return
    columns = tuple(rows[0])
    dialect = conn.dialect
    if dialect.name == "postgresql":
        conn.execute(_upsert_statement("postgresql", table, columns, tuple(keys)), list(rows))
        return
    # SQLite: the statement compiled once, each value through its type's processor, one
    # executemany (what Core does for a list of rows, without its per-row layers).
    sql, order = _upsert_sql(dialect, table, columns, tuple(keys))
    _executemany(
        conn, sql, order, columns, _convert(rows, columns, _processors(dialect, table, columns))
    )


@lru_cache(maxsize=64)
def _upsert_statement(
    dialect_name: str, table: Table, columns: tuple[str, ...], keys: tuple[str, ...]
) -> Any:
    module = postgresql if dialect_name == "postgresql" else sqlite
    stmt: Any = module.insert(table)
    others = [name for name in columns if name not in keys]
    if others:
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={name: stmt.excluded[name] for name in others}
        )
    return stmt.on_conflict_do_nothing()


@lru_cache(maxsize=64)
def _upsert_sql(
    dialect: Dialect, table: Table, columns: tuple[str, ...], keys: tuple[str, ...]
) -> tuple[str, tuple[str, ...]]:
    """`upsert_rows`' single-row statement and the order its parameters appear in."""
    stmt = _upsert_statement(dialect.name, table, columns, keys)
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
    return str(compiled), tuple(compiled.positiontup or ())
