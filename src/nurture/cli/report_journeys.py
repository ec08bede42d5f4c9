"""`nurture report journey|messages|attribution|lifecycle|flows`: journey and message
metrics, attribution and lifecycle stages (registered on nurture.cli.report.report_app)."""

from __future__ import annotations

from pathlib import Path

import typer

from nurture.analytics.attribution import attribution_report
from nurture.analytics.journey_metrics import journey_report, messages_report
from nurture.analytics.lifecycle_report import flows_report, stages_report
from nurture.cli.common import running
from nurture.cli.report import CHART, FORMAT, TABLE, Format, emit, report_app

FROM = typer.Option(None, "--from", help="Start: a date (its midnight in --tz) or an ISO time")
TO = typer.Option(None, "--to", help="End, excluded; a date includes that whole day")
TZ = typer.Option("UTC", "--tz", help="IANA time zone of dates and of the by-day table")


@report_app.command("journey")
def journey(
    key: str = typer.Argument(..., help="The journey's key"),
    start: str | None = FROM,
    end: str | None = TO,
    tz: str = TZ,
    version: int | None = typer.Option(None, "--version", help="Only this version"),
    fmt: Format = FORMAT,
    table: str | None = TABLE,
    chart: Path | None = CHART,
) -> None:
    """A journey's metrics: steps, messages, days, exits and versions."""
    with running() as nurture:
        report = journey_report(nurture.db, key, start=start, end=end, tz=tz, version=version)
    emit(report, fmt, table, chart)


@report_app.command("messages")
def messages(
    journey: str | None = typer.Option(None, "--journey", help="Only this journey's messages"),
    template: str | None = typer.Option(None, "--template", help="Only this template's"),
    start: str | None = FROM,
    end: str | None = TO,
    tz: str = TZ,
    fmt: Format = FORMAT,
    table: str | None = TABLE,
    chart: Path | None = CHART,
) -> None:
    """Message metrics per journey, step, template and variant, and by day."""
    with running() as nurture:
        report = messages_report(
            nurture.db, journey=journey, template=template, start=start, end=end, tz=tz
        )
    emit(report, fmt, table, chart)


@report_app.command("attribution")
def attribution(
    event: str | None = typer.Option(
        None, "--event", help="The conversion event, e.g. 'Order Completed' (default: goals)"
    ),
    revenue: str = typer.Option("revenue", "--revenue", help="The property holding revenue"),
    window: str = typer.Option(
        "3d", "--window", help="How long before a conversion a message counts"
    ),
    model: str = typer.Option("last", "--model", help="last or first touch"),
    journey: str | None = typer.Option(None, "--journey", help="Only credit this journey"),
    start: str | None = FROM,
    end: str | None = TO,
    tz: str = TZ,
    fmt: Format = FORMAT,
    table: str | None = TABLE,
    chart: Path | None = CHART,
) -> None:
    """Conversions credited to the last (or first) message sent within the window."""
    with running() as nurture:
        report = attribution_report(
            nurture.db,
            event=event,
            revenue_property=revenue,
            window=window,
            model=model,
            journey=journey,
            start=start,
            end=end,
            tz=tz,
        )
    emit(report, fmt, table, chart)


@report_app.command("lifecycle")
def lifecycle(
    model: str = typer.Argument(..., help="The stage model's key"),
    start: str | None = FROM,
    end: str | None = TO,
    every: str = typer.Option("day", "--every", help="day or week"),
    tz: str = TZ,
    fmt: Format = FORMAT,
    table: str | None = TABLE,
    chart: Path | None = CHART,
) -> None:
    """Contacts per stage at the end of each day or week."""
    with running() as nurture:
        report = stages_report(nurture.engine, model, start=start, end=end, every=every, tz=tz)
    emit(report, fmt, table, chart)


@report_app.command("flows")
def flows(
    model: str = typer.Argument(..., help="The stage model's key"),
    start: str | None = FROM,
    end: str | None = TO,
    tz: str = TZ,
    mode: str = typer.Option("net", "--mode", help="net (start against end) or changes"),
    from_stage: str | None = typer.Option(None, "--from-stage", help="List who moved from..."),
    to_stage: str | None = typer.Option(None, "--to-stage", help="...to this stage"),
    limit: int = typer.Option(100, "--limit", help="At most this many contacts listed"),
    fmt: Format = FORMAT,
    table: str | None = TABLE,
    chart: Path | None = CHART,
) -> None:
    """Moves between stages over a period, and who made one of them."""
    with running() as nurture:
        report = flows_report(
            nurture.engine,
            model,
            start=start,
            end=end,
            tz=tz,
            mode=mode,
            from_stage=from_stage,
            to_stage=to_stage,
            limit=limit,
        )
    emit(report, fmt, table, chart)
