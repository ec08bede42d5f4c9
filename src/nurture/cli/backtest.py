"""`nurture backtest`: replay stored history through a journey, published or a draft file,
and show who would have entered, which messages they would have received and when, and
how their enrolments would have ended. A thin door over `journeys.backtest`; reads only.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from nurture.cli.common import console, err_console, fail, settings
from nurture.conditions.durations import parse_date_ref
from nurture.core import Nurture
from nurture.errors import NurtureError
from nurture.journeys.backtest import backtest
from nurture.journeys.backtest_report import BacktestReport
from nurture.journeys.model import Journey
from nurture.store.types import from_microseconds, to_microseconds

FORMATS = ("table", "json")


def backtest_command(
    journey: str | None = typer.Argument(
        None, metavar="JOURNEY", help="A published journey's key (optional with --file)"
    ),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="A journey definition (YAML or JSON), published or not"
    ),
    start: str = typer.Option(
        ..., "--from", help="Start of the period: 2026-01-01, a date-time or '30d ago'"
    ),
    end: str | None = typer.Option(None, "--to", help="End of the period (default: now)"),
    output: str = typer.Option("table", "--format", help="table or json"),
    messages: int = typer.Option(20, "--messages", min=0, help="How many messages to list"),
) -> None:
    """Replay stored events of a period through a journey on a simulated clock and report
    who would have entered, their messages and when, conversions and exits. Writes nothing."""
    if journey is None and file is None:
        raise fail("give a journey key or --file")
    if output not in FORMATS:
        raise fail(f"--format: expected one of {', '.join(FORMATS)}")
    # Not started: a back-test only reads, so it neither migrates nor starts the writer.
    nurture = Nurture(settings())
    path = nurture.db.url.database
    if nurture.db.is_sqlite and path and path != ":memory:" and not Path(path).exists():
        nurture.stop()
        raise fail(f"no database at {path}")  # rather than create an empty one
    try:
        definition = _journey(nurture, journey, file)
        if journey is not None and definition.key != journey:
            raise fail(f"{file} defines the journey {definition.key!r}, not {journey!r}")
        now = nurture.clock.now()
        first = _moment(start, now, "--from")
        last = _moment(end, now, "--to") if end is not None else now
        if last <= first:
            raise fail("--to must be after --from")
        report = _run(nurture, definition, first, last)
    except NurtureError as exc:
        raise fail(exc) from None
    except SQLAlchemyError as exc:
        raise fail(
            f"cannot read the database ({exc.__class__.__name__}); is it migrated?"
        ) from None
    finally:
        nurture.stop()
    if output == "json":
        print(json.dumps(report.to_dict()))
    else:
        _print(report, definition, messages)


def _journey(nurture: Nurture, key: str | None, file: Path | None) -> Journey:
    """The definition in `file` (checked as a whole), else the published version of `key`."""
    if file is None:
        assert key is not None
        return nurture.journeys.definition(key)
    try:
        data: Any = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise fail(f"cannot read {file}: {exc}") from None
    journey, problems = nurture.journeys.validate(data)
    if problems:
        first = problems[0]
        if len(problems) > 1:
            first.message += f" (and {len(problems) - 1} more)"
        raise first
    return journey


def _moment(text: str, now: datetime, option: str) -> datetime:
    try:
        ref = parse_date_ref(text)
    except ValueError as exc:
        raise fail(f"{option}: {exc}") from None
    return from_microseconds(ref.resolve_us(to_microseconds(now)))


def _run(nurture: Nurture, journey: Journey, start: datetime, end: datetime) -> BacktestReport:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(f"back-testing {journey.key}", total=None)

        def advanced(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return backtest(nurture.journey_runtime, journey, start, end, progress=advanced)


def _print(report: BacktestReport, journey: Journey, limit: int) -> None:
    summary = Table("", "", title=f"Back-test of {report.journey}", show_header=False)
    rows = [
        ("period", f"{report.start.isoformat()} … {report.end.isoformat()}"),
        ("events replayed", str(report.events)),
        ("entered", str(report.entered)),
        ("control (holdout)", str(report.control)),
        ("refused", _counts(report.refused)),
        ("messages", str(len(report.messages))),
        ("converted", f"{_share(report.converted, report.entered)}, revenue {report.revenue:g}"),
        ("control converted", _share(len(report.conversions) - report.converted, report.control)),
        ("completed", str(report.completed)),
        ("exited", _counts(report.exits)),
        ("failed", _counts(report.failed)),
        ("still active", _counts(report.active)),
        ("webhooks (not called)", _counts(report.webhooks)),
    ]
    for name, value in rows:
        summary.add_row(name, value)
    console.print(summary)
    steps = Table("step", "type", "runs", "outcomes", title="Steps")
    for step in journey.steps:
        outcomes = report.steps.get(step.id, {})
        steps.add_row(step.id, step.type, str(sum(outcomes.values())), _counts(outcomes))
    console.print(steps)
    if limit and report.messages:
        shown = Table("at (UTC)", "contact", "userId", "step", "channel", "template", "variant")
        for m in report.messages[:limit]:
            shown.add_row(
                m.at.strftime("%Y-%m-%d %H:%M:%S"), str(m.contact_id), m.user_id or "",
                m.step, m.channel, m.template or "", m.variant or "",
            )  # fmt: skip
        more = len(report.messages) - limit
        shown.title = f"Messages (first {limit}, {more} more)" if more > 0 else "Messages"
        console.print(shown)
    for caveat in report.caveats:
        console.print(f"[dim]note: {caveat}[/]")


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} ({part / whole:.1%})" if whole else str(part)


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "0"
    total = sum(counts.values())
    parts = ", ".join(f"{name or '?'} {n}" for name, n in sorted(counts.items()))
    return f"{total}: {parts}"
