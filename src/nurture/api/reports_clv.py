"""Admin API: customer lifetime value and RFM reports (see nurture.api.reports and
docs/analytics/clv.md)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from nurture.analytics.clv_report import clv_report
from nurture.analytics.clv_store import ClvService
from nurture.analytics.rfm import rfm_report
from nurture.api.auth import admin_key
from nurture.api.reports import CHART, ChartFormat, respond

router = APIRouter(prefix="/api/reports", tags=["reports"], dependencies=[Depends(admin_key)])

MODEL = Query(
    "default",
    min_length=1,
    max_length=64,
    pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
    description="The CLV model's key",
)
TOP = Query(20, ge=0, le=1000, description="How many top customers to list")


@router.post("/clv/fit")
def fit_clv(
    request: Request, model: str = MODEL, top: int = TOP, chart: ChartFormat | None = CHART
) -> Response:
    """Fit BG/NBD and Gamma-Gamma to the purchase events now, store the model and every
    purchaser's predictions (replacing the last fit's), and answer the CLV report."""
    service = ClvService.of(request.app.state.nurture)
    service.fit(model)
    return respond(clv_report(service, model, top=top), chart)


@router.get("/clv")
def clv(
    request: Request, model: str = MODEL, top: int = TOP, chart: ChartFormat | None = CHART
) -> Response:
    """The stored model: parameters, fit statistics, customers by P(alive), expected value
    by decile and the top customers (404 before the first fit)."""
    return respond(clv_report(ClvService.of(request.app.state.nurture), model, top=top), chart)


@router.get("/rfm")
def rfm(request: Request, model: str = MODEL, chart: ChartFormat | None = CHART) -> Response:
    """Purchasers' RFM scores as of now in named segments, with counts, share, revenue and
    the average expected value under the CLV model `model`."""
    nurture = request.app.state.nurture
    service = ClvService.of(nurture)
    return respond(rfm_report(nurture.db, nurture.clock, service.config, model), chart)
