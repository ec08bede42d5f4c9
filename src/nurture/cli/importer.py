"""`nurture import FILE`: bulk import of JSONL or CSV, with a progress bar and a summary."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from nurture.cli.common import console, err_console, fail, running
from nurture.errors import ValidationError
from nurture.ingest.csv_mapping import KINDS, TYPES
from nurture.ingest.importer import FORMATS, ImportReport, import_file

_MAP_HELP = (
    "Map a CSV column: COLUMN=TARGET (repeatable). TARGET is userId, anonymousId, messageId, "
    "timestamp, event, traits.PATH, properties.PATH, context.PATH, a bare name (a trait for "
    "contacts, a property for events) or - to drop the column; add :TYPE to convert the cell "
    f"({', '.join(TYPES)}), e.g. total=properties.total:number or gift=:bool."
)


def parse_mapping(items: list[str]) -> dict[str, str]:
    """`["a=b", ...]` as a dict; raises ValidationError for an item without `=`."""
    mapping: dict[str, str] = {}
    for item in items:
        column, sep, target = item.partition("=")
        if not sep or not column.strip() or not target.strip():
            raise ValidationError(f"--map {item!r}: expected COLUMN=TARGET", path="map")
        mapping[column.strip()] = target.strip()
    return mapping


def import_command(
    file: Path = typer.Argument(..., help="A .jsonl or .csv file, optionally .gz"),
    fmt: str | None = typer.Option(
        None, "--format", help="jsonl or csv (default: from the file name)"
    ),
    kind: str | None = typer.Option(
        None,
        "--kind",
        help="CSV only: contacts (identify) or events (track); default: events when the "
        "file has an event column",
    ),
    mapping: list[str] = typer.Option(None, "--map", help=_MAP_HELP),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="Rows per batch"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
) -> None:
    """Import a file of Segment messages (JSONL) or contacts/events (CSV).

    Every row is validated like HTTP ingest. Rejected rows are kept (`nurture rejected list`,
    source `import FILE:LINE`) and do not stop the import.

    The exit code is 0 unless the file cannot be read.

    Re-importing a file adds nothing: messages keep their messageId, and rows without one
    get an id derived from their content.
    """
    if fmt is not None and fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}")
    if kind is not None and kind not in KINDS:
        raise fail(f"--kind must be one of {', '.join(KINDS)}")
    try:
        columns = parse_mapping(mapping or [])
    except ValidationError as exc:
        raise fail(exc) from None
    if not file.is_file():
        raise fail(f"cannot read {file}: no such file")
    total = file.stat().st_size
    with running() as nurture:
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[rows]:,} rows  {task.fields[rate]:,.0f} rows/s"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        with bar:
            task = bar.add_task(f"importing {file.name}", total=total or None, rows=0, rate=0.0)

            def advance(bytes_read: int, rows: int) -> None:
                elapsed = bar.tasks[task].elapsed or 0.0
                rate = rows / elapsed if elapsed > 0 else 0.0
                bar.update(task, completed=bytes_read, rows=rows, rate=rate)

            report = import_file(
                nurture,
                file,
                fmt=fmt,
                kind=kind,
                mapping=columns,
                batch_size=batch_size,
                progress=advance,
            )
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    _print_summary(report)


def _print_summary(report: ImportReport) -> None:
    table = Table("", "", title=f"Imported {report.file}", show_header=False)
    kind = f" ({report.kind})" if report.kind else ""
    table.add_row("format", f"{report.format}{kind}")
    table.add_row("rows", f"{report.rows:,}")
    table.add_row("accepted", f"[green]{report.accepted:,}[/]")
    table.add_row("duplicates", f"{report.duplicates:,}")
    table.add_row("rejected", f"[red]{report.rejected:,}[/]" if report.rejected else "0")
    table.add_row("time", f"{report.elapsed:.1f} s ({report.rows_per_second:,.0f} rows/s)")
    console.print(table)
    if not report.samples:
        return
    rejected = Table("line", "code", "path", "message", title="Rejected rows")
    for s in report.samples:
        rejected.add_row(str(s.line), s.code, s.path or "", s.message)
    console.print(rejected)
    more = report.rejected - len(report.samples)
    if more > 0:
        console.print(f"… and {more:,} more.")
    console.print("All rejected rows are kept: `nurture rejected list`, then `replay` after a fix.")
