"""Admin API for reports: every analytics report as JSON, or its charts as an image.

The report routes live beside this module (`reports_*.py`), each with its own router
under `/api/reports`; `router` here gathers them. A route answers `respond(report, chart)`:
the report's JSON, or with `?chart=svg|png` its charts.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from nurture.analytics import charts
from nurture.analytics.report import Report

CHART = Query(None, description="Answer with the report's charts as an image instead of JSON")
ChartFormat = Literal["svg", "png"]
MEDIA = {"svg": "image/svg+xml", "png": "image/png"}


def respond(report: Report, chart: ChartFormat | None = None) -> Response:
    """A report as JSON, or its charts as an SVG or PNG image."""
    if chart is not None:
        return Response(charts.render(report, chart), media_type=MEDIA[chart])
    return JSONResponse(report.to_json())


def _router() -> APIRouter:
    from nurture.api import reports_clv, reports_events, reports_experiments, reports_journeys

    router = APIRouter()
    for module in (reports_journeys, reports_experiments, reports_events, reports_clv):
        router.include_router(module.router)
    return router


router = _router()
