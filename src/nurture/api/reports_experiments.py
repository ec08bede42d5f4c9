"""Admin API: A/B test and holdout lift reports (see nurture.api.reports)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from nurture.analytics.experiments import experiment_report, lift_report
from nurture.api.auth import admin_key
from nurture.api.errors import aware
from nurture.api.reports import CHART, ChartFormat, respond

router = APIRouter(prefix="/api/reports", tags=["reports"], dependencies=[Depends(admin_key)])

KEY = r"^[a-zA-Z0-9][a-zA-Z0-9_\-]*$"
FROM = Query(None, alias="from", description="Assigned (entered) at or after this time")
TO = Query(None, alias="to", description="Assigned (entered) before this time")
CONFIDENCE = Query(0.95, ge=0.5, le=0.999, description="Confidence level of the intervals")
VERSION = Query(None, ge=1, description="Only this journey version (default: all versions)")


@router.get("/experiments/{journey}/{step}")
def experiment(
    request: Request,
    journey: str = Path(max_length=200, pattern=KEY),
    step: str = Path(max_length=200, pattern=KEY),
    metric: Literal["converted", "opened", "clicked"] | None = Query(
        None, description="converted (the journey's goal, default), opened or clicked"
    ),
    start: datetime | None = FROM,
    end: datetime | None = TO,
    confidence: float = CONFIDENCE,
    control: str | None = Query(None, max_length=200, description="The control arm's name"),
    version: int | None = VERSION,
    chart: ChartFormat | None = CHART,
) -> Response:
    """A split step's paths or a send step's variants against the control: rates, the
    difference with its interval, p-value (Holm-adjusted with several variants), relative
    lift, the sample still needed for 80% power, and revenue per recipient."""
    report = experiment_report(
        request.app.state.nurture,
        journey,
        step,
        metric=metric,
        start=aware("from", start),
        end=aware("to", end),
        confidence=confidence,
        control=control,
        version=version,
    )
    return respond(report, chart)


@router.get("/lift/{journey}")
def lift(
    request: Request,
    journey: str = Path(max_length=200, pattern=KEY),
    start: datetime | None = FROM,
    end: datetime | None = TO,
    confidence: float = CONFIDENCE,
    version: int | None = VERSION,
    chart: ChartFormat | None = CHART,
) -> Response:
    """Treated against held-out contacts: conversion rates, absolute and relative lift
    with intervals, and revenue per recipient with the difference's interval."""
    report = lift_report(
        request.app.state.nurture,
        journey,
        start=aware("from", start),
        end=aware("to", end),
        confidence=confidence,
        version=version,
    )
    return respond(report, chart)
