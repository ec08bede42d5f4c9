"""`nurture report …`: every analytics report in the terminal.

Each report prints as Rich tables by default, or `--format csv` (one table: the first, or
`--table KEY`) or `--format json` (the whole report, as the admin API answers it);
`--chart FILE.svg|.png` also draws its charts. The report commands live beside this
module (`report_*.py`) and register on `report_app`.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table as RichTable

from nurture.analytics import charts
from nurture.analytics.report import Report, show, to_csv
from nurture.cli.common import console, err_console, fail
from nurture.errors import NurtureError

report_app = typer.Typer(
    help="Reports: journeys, messages, experiments, funnels, cohorts, lifecycle, lifetime value.",
    no_args_is_help=True,
)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


FORMAT = typer.Option(Format.table, "--format", "-f", help="table (Rich), csv or json")
TABLE = typer.Option(None, "--table", help="With --format csv: which table (default: the first)")
CHART = typer.Option(None, "--chart", help="Also draw the charts to this .svg or .png file")


def emit(report: Report, fmt: Format, table: str | None = None, chart: Path | None = None) -> None:
    """Print a report in the asked format, and draw its charts when a file is named."""
    try:
        if chart is not None:
            written = charts.write(report, chart)
            err_console.print(f"chart written to {written}")
        if fmt is Format.json:
            sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        elif fmt is Format.csv:
            chosen = report.table(table) if table else report.tables[0]
            others = [t.key for t in report.tables if t is not chosen]
            if others and not table:
                err_console.print(f"other tables: {', '.join(others)} (choose with --table)")
            sys.stdout.write(to_csv(chosen))
        else:
            _print(report)
    except KeyError as exc:
        raise fail(str(exc.args[0])) from None
    except NurtureError as exc:
        raise fail(exc) from None


def _print(report: Report) -> None:
    console.print(f"[bold]{report.title}[/]")
    if report.summary:
        grid = RichTable.grid(padding=(0, 2))
        for key, value in report.summary.items():
            grid.add_row(key.replace("_", " "), _plain(value))
        console.print(grid)
    for table in report.tables:
        out = RichTable(title=table.title, title_justify="left")
        for column in table.columns:
            numeric = column.kind in ("int", "number", "percent", "money", "duration")
            out.add_column(column.title, justify="right" if numeric else "left")
        for row in table.rows:
            out.add_row(*(show(row.get(c.key), c.kind) for c in table.columns))
        console.print(out)
    for note in report.notes:
        console.print(f"[dim]{note}[/]")


def _plain(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return "-" if value is None else str(value)
