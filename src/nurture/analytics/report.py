"""What every report is: named tables of rows, headline figures, notes and charts.

One shape for all reports lets one door serve them all: the admin API returns
`Report.to_json()`, `nurture report …` prints the tables with Rich or as CSV/JSON, and
`nurture.analytics.charts` draws `Report.charts` to SVG or PNG. A report also carries the
parameters it was asked with (`params`), so any number it shows can be asked for again.

Values in rows are plain JSON values: numbers, strings, None, and datetimes or dates
(written as ISO 8601 by `to_json`). Rates are fractions (0.25, not 25); a column's
`kind` says how to show it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

ColumnKind = Literal["text", "int", "number", "percent", "money", "time", "date", "duration"]
ChartKind = Literal["line", "bar", "stacked_bar", "heatmap"]


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table: the row key it reads, its heading, how to show it."""

    key: str
    title: str
    kind: ColumnKind = "text"


@dataclass(slots=True)
class Table:
    """Rows of one kind (steps, variants, days, cohorts), each a dict keyed by column."""

    key: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def column(self, key: str) -> Column:
        for column in self.columns:
            if column.key == key:
                return column
        raise KeyError(key)


@dataclass(frozen=True, slots=True)
class Chart:
    """A chart of one table: `x` along the bottom, one series per `y` column.

    `heatmap` (cohort retention) reads `x` as the column of row labels and `y` as the
    columns of the grid, in order.
    """

    kind: ChartKind
    table: str
    x: str
    y: tuple[str, ...]
    title: str
    y_label: str = ""


@dataclass(slots=True)
class Report:
    """A report: what was asked (`params`), headline figures, tables, notes, charts."""

    kind: str  # "journey", "funnel", "experiment", ...
    title: str
    params: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)

    def table(self, key: str) -> Table:
        for table in self.tables:
            if table.key == key:
                return table
        known = ", ".join(t.key for t in self.tables) or "none"
        raise KeyError(f"no table {key!r} in this report (tables: {known})")

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready values: what the admin API answers."""
        return {
            "kind": self.kind,
            "title": self.title,
            "params": jsonable(self.params),
            "summary": jsonable(self.summary),
            "tables": [
                {
                    "key": t.key,
                    "title": t.title,
                    "columns": [
                        {"key": c.key, "title": c.title, "kind": c.kind} for c in t.columns
                    ],
                    "rows": [jsonable(row) for row in t.rows],
                }
                for t in self.tables
            ],
            "notes": list(self.notes),
            "charts": [
                {
                    "kind": c.kind,
                    "table": c.table,
                    "x": c.x,
                    "y": list(c.y),
                    "title": c.title,
                    "y_label": c.y_label,
                }
                for c in self.charts
            ],
        }


def jsonable(value: Any) -> Any:
    """Datetimes and dates as ISO 8601, durations as seconds, NaN and infinity as None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # a numpy scalar
        return jsonable(value.item())
    return value


def show(value: Any, kind: ColumnKind) -> str:
    """A value as a person reads it in a terminal table."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "percent":
        return f"{value * 100:.2f} %"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "money":
        return f"{value:,.2f}"
    if kind == "number":
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if kind == "duration":
        return _duration(value.total_seconds() if isinstance(value, timedelta) else value)
    if kind == "date" and isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def to_csv(table: Table) -> str:
    """One table as CSV: a header of column keys, raw values (ISO times, fractions)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in table.columns])
    for row in table.rows:
        writer.writerow(
            ["" if (v := jsonable(row.get(c.key))) is None else v for c in table.columns]
        )
    return out.getvalue()


def rows_of(table: Table, keys: Sequence[str]) -> list[list[Any]]:
    """The raw values of some columns, row by row (for charts and tests)."""
    return [[row.get(k) for k in keys] for row in table.rows]
