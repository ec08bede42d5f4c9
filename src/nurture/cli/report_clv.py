"""`nurture report clv` and `nurture report rfm`: customer lifetime value and RFM segments
(registered on nurture.cli.report.report_app; docs/analytics/clv.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from nurture.analytics.clv_report import clv_report
from nurture.analytics.clv_store import ClvService
from nurture.analytics.rfm import rfm_report
from nurture.cli.common import running
from nurture.cli.report import CHART, FORMAT, TABLE, Format, emit, report_app

MODEL = typer.Option("default", "--model", help="The CLV model's key")


@report_app.command("clv")
def clv(
    fit: bool = typer.Option(False, "--fit", help="Fit the models to the purchases first"),
    model: str = MODEL,
    top: int = typer.Option(20, "--top", min=0, max=1000, help="How many top customers"),
    fmt: Format = FORMAT,
    table: str | None = TABLE,
    chart: Path | None = CHART,
) -> None:
    """Customer lifetime value: the fitted BG/NBD and Gamma-Gamma parameters, customers by
    P(alive), expected value by decile and the top customers."""
    with running() as nurture:
        service = ClvService.of(nurture)
        if fit:
            service.fit(model)
        report = clv_report(service, model, top=top)
    emit(report, fmt, table, chart)


@report_app.command("rfm")
def rfm(
    model: str = MODEL,
    fmt: Format = FORMAT,
    table: str | None = TABLE,
    chart: Path | None = CHART,
) -> None:
    """RFM segments as of now: counts, share, revenue and average CLV per segment, and
    purchasers by recency and frequency score."""
    with running() as nurture:
        service = ClvService.of(nurture)
        report = rfm_report(nurture.db, nurture.clock, service.config, model)
    emit(report, fmt, table, chart)
