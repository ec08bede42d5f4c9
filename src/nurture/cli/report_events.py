"""`nurture report funnel` and `nurture report cohorts` (registered on report_app).

Definitions: docs/analytics/funnels.md and docs/analytics/cohorts.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from nurture.analytics.cohorts import cohorts
from nurture.analytics.funnels import funnel
from nurture.cli.common import fail, running
from nurture.cli.report import CHART, FORMAT, TABLE, Format, emit, report_app
from nurture.errors import NurtureError, ValidationError


def _yaml(text: str, field: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationError(f"not valid YAML: {exc}", path=field) from None


def _steps_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON file: a list of steps, or a funnel (a mapping with `steps`)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}", path="--steps") from None
    data = _yaml(text, "--steps")
    if isinstance(data, list):
        return {"steps": data}
    if isinstance(data, dict):
        return data
    raise ValidationError("expected a list of steps or a mapping with `steps`", path="--steps")


def funnel_question(
    events: list[str],
    steps_file: Path | None,
    *,
    window: str | None,
    start: str | None,
    end: str | None,
    tz: str | None,
    by: str | None,
    by_segment: list[str],
    top: int | None,
    segment: str | None,
) -> dict[str, Any]:
    """The funnel body the command's arguments ask for (options win over the file)."""
    if events and steps_file is not None:
        raise ValidationError("give the steps as arguments or with --steps, not both", path="steps")
    data = _steps_file(steps_file) if steps_file is not None else {}
    if events:
        data["steps"] = [{"event": name} for name in events]
    given = {"window": window, "from": start, "to": end, "tz": tz, "segment": segment}
    data.update({key: value for key, value in given.items() if value is not None})
    if by is not None and by_segment:
        raise ValidationError(
            "break down by a trait (--by) or by segments, not both", path="breakdown"
        )
    if by is not None:
        data["breakdown"] = {"trait": by, **({"limit": top} if top is not None else {})}
    elif by_segment:
        data["breakdown"] = {"segments": by_segment}
    return data


@report_app.command("funnel")
def funnel_command(
    events: list[str] = typer.Argument(None, help="The steps' event names, in order"),
    steps_file: Path | None = typer.Option(
        None, "--steps", help="YAML/JSON file: a list of steps (with type and where), or a funnel"
    ),
    window: str | None = typer.Option(None, "--window", help="Conversion window (default 7d)"),
    start: str | None = typer.Option(None, "--from", help="First step from (date or time)"),
    end: str | None = typer.Option(None, "--to", help="First step until (a date: whole day)"),
    tz: str | None = typer.Option(None, "--tz", help="Time zone of dates (default UTC)"),
    by: str | None = typer.Option(None, "--by", help="Break down by this contact trait"),
    by_segment: list[str] = typer.Option(
        [], "--by-segment", help="Break down by this segment (repeat for each group)"
    ),
    top: int | None = typer.Option(None, "--top", help="With --by: groups kept (default 10)"),
    segment: str | None = typer.Option(None, "--segment", help="Only members of this segment"),
    fmt: Format = FORMAT,
    table: str | None = TABLE,
    chart: Path | None = CHART,
) -> None:
    """Funnel: contacts through ordered steps within a window; drop-off and bottleneck."""
    with running() as nurture:
        try:
            body = funnel_question(
                events or [],
                steps_file,
                window=window,
                start=start,
                end=end,
                tz=tz,
                by=by,
                by_segment=by_segment,
                top=top,
                segment=segment,
            )
            report = funnel(nurture.db, body, nurture.clock.now())
        except NurtureError as exc:
            raise fail(exc) from None
    emit(report, fmt, table, chart)


def _match(event: str, type_: str | None, where: list[str], side: str) -> dict[str, Any]:
    filters = [_yaml(text, f"--{side}-where") for text in where]
    return {"event": event, "where": filters, **({"type": type_} if type_ else {})}


@report_app.command("cohorts")
def cohorts_command(
    active: str = typer.Option("*", "--active", help="Event that counts as active (* = any)"),
    active_type: str | None = typer.Option(None, "--active-type", help="track, page or screen"),
    active_where: list[str] = typer.Option(
        [], "--active-where", help="Property filter, e.g. '{property: total, gt: 20}' (repeat)"
    ),
    cohort: str = typer.Option("*", "--cohort", help="Event whose first time sets the cohort"),
    cohort_type: str | None = typer.Option(None, "--cohort-type", help="track, page or screen"),
    cohort_where: list[str] = typer.Option([], "--cohort-where", help="Property filter (repeat)"),
    every: str = typer.Option("week", "--every", help="week (ISO, Monday) or month"),
    periods: int = typer.Option(12, "--periods", help="Periods after period 0"),
    start: str | None = typer.Option(None, "--from", help="First cohort: the period of this date"),
    end: str | None = typer.Option(None, "--to", help="Last cohort: the period of this date"),
    tz: str = typer.Option("UTC", "--tz", help="Time zone of the calendar"),
    segment: str | None = typer.Option(None, "--segment", help="Only members of this segment"),
    fmt: Format = FORMAT,
    table: str | None = TABLE,
    chart: Path | None = CHART,
) -> None:
    """Cohort retention: by week or month of the first event, active in each later period."""
    with running() as nurture:
        try:
            body = {
                "cohort": _match(cohort, cohort_type, cohort_where, "cohort"),
                "active": _match(active, active_type, active_where, "active"),
                "every": every,
                "periods": periods,
                "tz": tz,
                **({"from": start} if start else {}),
                **({"to": end} if end else {}),
                **({"segment": segment} if segment else {}),
            }
            report = cohorts(nurture.db, body, nurture.clock.now())
        except NurtureError as exc:
            raise fail(exc) from None
    emit(report, fmt, table, chart)
