"""Admin API: journey, message, attribution and lifecycle reports (see nurture.api.reports).

Every route answers the report's JSON, or with `?chart=svg|png` its charts. Ranges are
`from` (inclusive) and `to` (exclusive, or the whole day when it is a date), in `tz`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from nurture.analytics.attribution import attribution_report
from nurture.analytics.journey_metrics import journey_report, messages_report
from nurture.analytics.lifecycle_report import flows_report, stages_report
from nurture.api.auth import admin_key
from nurture.api.reports import CHART, ChartFormat, respond
from nurture.core import Nurture

router = APIRouter(prefix="/api/reports", tags=["reports"], dependencies=[Depends(admin_key)])

FROM = Query(None, alias="from", description="Start: a date (its midnight in tz) or a time")
TO = Query(None, description="End, excluded; a date includes that whole day")
TZ = Query("UTC", description="IANA time zone of dates and of the by-day table")


def _nurture(request: Request) -> Nurture:
    return request.app.state.nurture  # type: ignore[no-any-return]


@router.get("/journeys/{key}")
def journey(
    request: Request,
    key: str,
    start: str | None = FROM,
    end: str | None = Query(None, alias="to", description=TO.description),
    tz: str = TZ,
    version: int | None = Query(None, description="Only this version"),
    chart: ChartFormat | None = CHART,
) -> Response:
    """Entered, waiting, sent, delivered, opened, clicked, converted, exits: by step,
    message, day and version."""
    db = _nurture(request).db
    report = journey_report(db, key, start=start, end=end, tz=tz, version=version)
    return respond(report, chart)


@router.get("/messages")
def messages(
    request: Request,
    journey: str | None = Query(None, description="Only this journey's messages"),
    template: str | None = Query(None, description="Only this template's messages"),
    start: str | None = FROM,
    end: str | None = Query(None, alias="to", description=TO.description),
    tz: str = TZ,
    chart: ChartFormat | None = CHART,
) -> Response:
    """Per journey, step, template and variant: sent, delivered, opened, clicked, ..."""
    db = _nurture(request).db
    report = messages_report(db, journey=journey, template=template, start=start, end=end, tz=tz)
    return respond(report, chart)


@router.get("/attribution")
def attribution(
    request: Request,
    event: str | None = Query(None, description="The conversion event (default: goals)"),
    revenue: str = Query("revenue", description="The event property holding revenue"),
    window: str = Query("3d", description="How long before a conversion a message counts"),
    model: str = Query("last", description="last or first touch"),
    journey: str | None = Query(None, description="Only credit this journey's messages"),
    start: str | None = FROM,
    end: str | None = Query(None, alias="to", description=TO.description),
    tz: str = TZ,
    chart: ChartFormat | None = CHART,
) -> Response:
    """Conversions credited to the last (or first) message within the window."""
    db = _nurture(request).db
    report = attribution_report(
        db,
        event=event,
        revenue_property=revenue,
        window=window,
        model=model,
        journey=journey,
        start=start,
        end=end,
        tz=tz,
    )
    return respond(report, chart)


@router.get("/lifecycle/{model}")
def lifecycle(
    request: Request,
    model: str,
    start: str | None = FROM,
    end: str | None = Query(None, alias="to", description=TO.description),
    every: str = Query("day", description="day or week"),
    tz: str = TZ,
    chart: ChartFormat | None = CHART,
) -> Response:
    """Contacts per stage at the end of each day or week."""
    engine = _nurture(request).engine
    report = stages_report(engine, model, start=start, end=end, every=every, tz=tz)
    return respond(report, chart)


@router.get("/lifecycle/{model}/flows")
def flows(
    request: Request,
    model: str,
    start: str | None = FROM,
    end: str | None = Query(None, alias="to", description=TO.description),
    tz: str = TZ,
    mode: str = Query("net", description="net (start against end) or changes (every one)"),
    from_stage: str | None = Query(None, description="List the contacts of this move..."),
    to_stage: str | None = Query(None, description="...to this stage"),
    limit: int = Query(100, description="At most this many contacts listed"),
    chart: ChartFormat | None = CHART,
) -> Response:
    """Moves between stages over [from, to), and who made one of them."""
    engine = _nurture(request).engine
    report = flows_report(
        engine,
        model,
        start=start,
        end=end,
        tz=tz,
        mode=mode,
        from_stage=from_stage,
        to_stage=to_stage,
        limit=limit,
    )
    return respond(report, chart)
