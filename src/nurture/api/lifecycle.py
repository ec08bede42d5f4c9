"""Admin API for lifecycle stages, scores and the definitions behind them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from nurture.api.auth import admin_key
from nurture.api.errors import aware
from nurture.errors import ValidationError
from nurture.lifecycle.service import LifecycleService

router = APIRouter(prefix="/api", tags=["lifecycle"], dependencies=[Depends(admin_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "An invalid definition or parameter; `path` names it"},
    401: {"description": "No key, or an unknown or revoked key"},
    403: {"description": "A write key; this needs an admin key"},
    404: {"description": "No such model, contact or definition"},
    409: {"description": "Defined in the project files"},
}
Kind = Literal["computed", "stage_model", "score_model"]


def _key(description: str) -> Any:
    # One Path() per parameter: FastAPI keeps the first parameter's name on a shared one.
    return Path(max_length=200, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_\-]*$", description=description)


def _service(request: Request) -> LifecycleService:
    return request.app.state.nurture.lifecycle  # type: ignore[no-any-return]


@router.get("/stages/{model}", responses=_ERRORS)
def stage_counts(request: Request, model: str = _key("The stage model")) -> dict[str, int]:
    """How many contacts are in each stage now."""
    return _service(request).counts(model)


@router.get("/stages/{model}/moves", responses=_ERRORS)
def stage_moves(
    request: Request,
    model: str = _key("The stage model"),
    from_stage: str | None = Query(None, alias="from", max_length=200),
    to_stage: str | None = Query(None, alias="to", max_length=200),
    since: datetime | None = Query(None, description="From this time (inclusive)"),
    until: datetime | None = Query(None, description="Up to this time (exclusive)"),
    limit: int = Query(1000, ge=1, le=10000),
) -> list[dict[str, Any]]:
    """Stage changes, oldest first (e.g. from=engaged&to=at_risk&since=...)."""
    return _service(request).moves(
        model,
        from_stage=from_stage,
        to_stage=to_stage,
        since=aware("since", since),
        until=aware("until", until),
        limit=limit,
    )


@router.get("/contacts/{contact_id}/scores/{model}", responses=_ERRORS)
def explain_score(
    request: Request, contact_id: int = Path(ge=1, le=2**63 - 1), model: str = _key("Score model")
) -> dict[str, Any]:
    """The contact's score now, explained: which rules gave how many points, when."""
    return _service(request).explain(contact_id, model)


@router.get("/definitions/{kind}", responses=_ERRORS)
def list_definitions(request: Request, kind: Kind) -> list[dict[str, Any]]:
    """Stage models, score models or computed traits."""
    return _service(request).definitions(kind)


@router.put("/definitions/{kind}/{key}", responses=_ERRORS)
def put_definition(
    request: Request, kind: Kind, key: str = _key("The key"), body: dict[str, Any] = Body(...)
) -> dict[str, Any]:
    """Create or replace a stage model, score model or computed trait."""
    if body.get("key", key) != key:
        raise ValidationError("differs from the key in the URL", path="key")
    return _service(request).save(kind, key, body)


@router.delete("/definitions/{kind}/{key}", status_code=204, responses=_ERRORS)
def delete_definition(request: Request, kind: Kind, key: str = _key("The key")) -> JSONResponse:
    _service(request).delete(kind, key)
    return JSONResponse(None, status_code=204)
