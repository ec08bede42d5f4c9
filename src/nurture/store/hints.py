"""Hints to the query planner that both backends accept."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op


def unindexed(dialect: str, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """`column`, written so that SQLite does not drive the query from an index on it
    (`+column`, SQLite's documented way); PostgreSQL's planner needs no such hint."""
    if dialect != "sqlite":
        return column
    return UnaryExpression(column, operator=custom_op("+"), type_=column.type)
