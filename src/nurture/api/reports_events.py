"""Admin API: funnel and cohort retention reports (see nurture.api.reports).

Every route answers the report's JSON, or with `?chart=svg|png` its charts. Definitions:
docs/analytics/funnels.md and docs/analytics/cohorts.md.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import Response

from nurture.analytics.cohorts import cohorts
from nurture.analytics.funnels import funnel
from nurture.api.auth import admin_key
from nurture.api.reports import CHART, ChartFormat, respond
from nurture.core import Nurture
from nurture.errors import ValidationError

router = APIRouter(prefix="/api/reports", tags=["reports"], dependencies=[Depends(admin_key)])

FUNNEL_EXAMPLE = {
    "steps": [
        {"event": "Product Viewed"},
        {"event": "Product Added"},
        {"event": "Order Completed", "where": [{"property": "total", "gt": 20}]},
    ],
    "window": "7d",
    "from": "2026-03-01",
    "to": "2026-03-31",
    "breakdown": {"trait": "plan", "limit": 5},
}


def _nurture(request: Request) -> Nurture:
    return request.app.state.nurture  # type: ignore[no-any-return]


@router.post("/funnel")
def funnel_report(
    request: Request,
    body: Any = Body(..., examples=[FUNNEL_EXAMPLE]),
    chart: ChartFormat | None = CHART,
) -> Response:
    """Contacts at each step of an ordered funnel within a conversion window: conversion,
    drop-off and time between steps, by trait or segment; the bottleneck step."""
    if not isinstance(body, dict):
        raise ValidationError("expected a JSON object with `steps`", path="body")
    nurture = _nurture(request)
    return respond(funnel(nurture.db, body, nurture.clock.now()), chart)


def _filters(value: str | None, field: str) -> list[Any]:
    if value is None:
        return []
    try:
        parsed = json.loads(value)
    except ValueError:
        raise ValidationError("expected a JSON list of property filters", path=field) from None
    return parsed if isinstance(parsed, list) else [parsed]


@router.get("/cohorts")
def cohorts_report(
    request: Request,
    cohort_event: str = Query("*", description="The event that places a contact in a cohort"),
    cohort_type: str | None = Query(None, description="track, page or screen (default: any)"),
    cohort_where: str | None = Query(None, description="JSON list of property filters"),
    active_event: str = Query("*", description="The event that makes a contact active"),
    active_type: str | None = Query(None, description="track, page or screen (default: any)"),
    active_where: str | None = Query(None, description="JSON list of property filters"),
    every: str = Query("week", description="week (ISO, from Monday) or month"),
    periods: int = Query(12, description="Periods after period 0 to show"),
    start: str | None = Query(None, alias="from", description="First cohort: the period of"),
    end: str | None = Query(None, alias="to", description="Last cohort: the period of"),
    tz: str = Query("UTC", description="IANA time zone of the calendar"),
    segment: str | None = Query(None, description="Only members of this segment"),
    chart: ChartFormat | None = CHART,
) -> Response:
    """Retention: contacts by the week or month of their first cohort event, and the
    share active in each later period."""
    data: dict[str, Any] = {
        "cohort": {
            "event": cohort_event,
            "where": _filters(cohort_where, "cohort_where"),
            **({"type": cohort_type} if cohort_type else {}),
        },
        "active": {
            "event": active_event,
            "where": _filters(active_where, "active_where"),
            **({"type": active_type} if active_type else {}),
        },
        "every": every,
        "periods": periods,
        "tz": tz,
        **({"from": start} if start else {}),
        **({"to": end} if end else {}),
        **({"segment": segment} if segment else {}),
    }
    nurture = _nurture(request)
    try:
        report = cohorts(nurture.db, data, nurture.clock.now())
    except ValidationError as exc:
        raise ValidationError(exc.message, path=_query_name(exc.path), code=exc.code) from None
    return respond(report, chart)


def _query_name(path: str | None) -> str | None:
    """`cohort.where[0]` (the model's field) → `cohort_where[0]` (the query parameter)."""
    for side in ("cohort", "active"):
        if path is not None and path.startswith(f"{side}."):
            return f"{side}_{path[len(side) + 1 :]}"
    return path
