"""`nurture report experiment` and `nurture report lift`: A/B tests and holdouts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path

import typer

from nurture.analytics.experiments import experiment_report, lift_report
from nurture.cli.common import fail, running
from nurture.cli.report import CHART, FORMAT, TABLE, Format, emit, report_app
from nurture.conditions.durations import parse_date_ref
from nurture.store.types import from_microseconds, to_microseconds


class Metric(StrEnum):
    converted = "converted"
    opened = "opened"
    clicked = "clicked"


FROM = typer.Option(None, "--from", help="Assigned (entered) from: 2026-01-01, a time, '30d ago'")
TO = typer.Option(None, "--to", help="Assigned (entered) before this time")
CONFIDENCE = typer.Option(0.95, "--confidence", min=0.5, max=0.999, help="e.g. 0.95 or 0.99")
VERSION = typer.Option(None, "--version", min=1, help="Only this journey version")


def _moment(text: str | None, now: datetime, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        ref = parse_date_ref(text)
    except ValueError as exc:
        raise fail(f"{option}: {exc}") from None
    return from_microseconds(ref.resolve_us(to_microseconds(now)))


@report_app.command("experiment")
def experiment(
    journey: str = typer.Argument(..., metavar="JOURNEY", help="The journey's key"),
    step: str = typer.Argument(..., metavar="STEP", help="A split step, or a send with variants"),
    metric: Metric | None = typer.Option(
        None, "--metric", help="converted (the goal; default), opened or clicked"
    ),
    start: str | None = FROM,
    end: str | None = TO,
    confidence: float = CONFIDENCE,
    control: str | None = typer.Option(None, "--control", help="The control arm (default: first)"),
    version: int | None = VERSION,
    fmt: Format = FORMAT,
    table: str | None = TABLE,
    chart: Path | None = CHART,
) -> None:
    """An A/B test: per variant its rate, and against the control the difference with
    its interval, the p-value, relative lift, sample still needed and revenue per recipient."""
    with running() as nurture:
        now = nurture.clock.now()
        report = experiment_report(
            nurture,
            journey,
            step,
            metric=metric.value if metric is not None else None,
            start=_moment(start, now, "--from"),
            end=_moment(end, now, "--to"),
            confidence=confidence,
            control=control,
            version=version,
        )
    emit(report, fmt, table, chart)


@report_app.command("lift")
def lift(
    journey: str = typer.Argument(..., metavar="JOURNEY", help="The journey's key"),
    start: str | None = FROM,
    end: str | None = TO,
    confidence: float = CONFIDENCE,
    version: int | None = VERSION,
    fmt: Format = FORMAT,
    table: str | None = TABLE,
    chart: Path | None = CHART,
) -> None:
    """A journey's holdout: treated against control conversion rates, the absolute and
    relative lift with intervals, and revenue per recipient."""
    with running() as nurture:
        now = nurture.clock.now()
        report = lift_report(
            nurture,
            journey,
            start=_moment(start, now, "--from"),
            end=_moment(end, now, "--to"),
            confidence=confidence,
            version=version,
        )
    emit(report, fmt, table, chart)
