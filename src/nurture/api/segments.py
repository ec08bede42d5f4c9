"""Admin API for segments and conditions: define, preview, members, history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from nurture.api.auth import admin_key
from nurture.api.errors import aware
from nurture.conditions.model import dump_condition, parse_condition
from nurture.errors import ValidationError
from nurture.segments.service import SegmentService

router = APIRouter(prefix="/api", tags=["segments"], dependencies=[Depends(admin_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "An invalid definition; `path` names the bad field"},
    401: {"description": "No key, or an unknown or revoked key"},
    403: {"description": "A write key; this needs an admin key"},
    404: {"description": "No such segment"},
    409: {"description": "Defined in project files, or used by another segment"},
}
Key = Path(max_length=200, pattern=r"^[a-z0-9][a-z0-9_\-]*$", description="The segment key")
SEGMENT_EXAMPLE = {
    "key": "engaged_non_buyers",
    "name": "Logged in 3+ times in 30 days, never ordered",
    "where": {
        "all": [
            {"event": "Logged In", "at_least": 3, "within_last": "30d"},
            {"not": {"event": "Order Completed"}},
        ]
    },
}


def _segments(request: Request) -> SegmentService:
    return request.app.state.nurture.segments  # type: ignore[no-any-return]


@router.get("/segments", responses=_ERRORS)
def list_segments(request: Request) -> list[dict[str, Any]]:
    """Every segment with its status, last evaluation and member count."""
    return _segments(request).all()


@router.post("/segments", status_code=201, responses=_ERRORS)
def create_segment(
    request: Request, body: dict[str, Any] = Body(..., examples=[SEGMENT_EXAMPLE])
) -> dict[str, Any]:
    """Create (or replace) a segment and evaluate it for everyone."""
    return _segments(request).save(body)


@router.post("/segments/preview", responses=_ERRORS)
def preview_condition(
    request: Request,
    body: dict[str, Any] = Body(..., examples=[{"where": SEGMENT_EXAMPLE["where"], "sample": 5}]),
) -> dict[str, Any]:
    """How many contacts match a condition now, and a sample of them; nothing is saved."""
    sample = body.get("sample", 10)
    if not isinstance(sample, int) or isinstance(sample, bool) or not 0 <= sample <= 100:
        raise ValidationError("expected a whole number from 0 to 100", path="sample")
    if "where" not in body:
        raise ValidationError("missing: the condition to preview", path="where")
    return _segments(request).preview(body["where"], sample=sample).to_dict()


@router.post("/conditions/validate", responses=_ERRORS)
def validate_condition(request: Request, body: Any = Body(...)) -> dict[str, Any]:
    """Check a condition; returns it as Nurture reads it, or an error naming the field."""
    return {"valid": True, "where": dump_condition(parse_condition(body))}


@router.get("/segments/{key}", responses=_ERRORS)
def get_segment(request: Request, key: str = Key) -> dict[str, Any]:
    return _segments(request).get(key)


@router.put("/segments/{key}", responses=_ERRORS)
def put_segment(
    request: Request, key: str = Key, body: dict[str, Any] = Body(...)
) -> dict[str, Any]:
    """Replace a segment's definition (the body's `key`, if any, must match)."""
    if body.get("key", key) != key:
        raise ValidationError("differs from the key in the URL", path="key")
    return _segments(request).save({**body, "key": key})


@router.delete("/segments/{key}", status_code=204, responses=_ERRORS)
def delete_segment(request: Request, key: str = Key) -> JSONResponse:
    """Delete a segment and its memberships (no exit events are emitted)."""
    _segments(request).delete(key)
    return JSONResponse(None, status_code=204)


@router.post("/segments/{key}/evaluate", responses=_ERRORS)
def evaluate_segment(request: Request, key: str = Key) -> dict[str, Any]:
    """Re-evaluate a segment for everyone now; returns the counts of the change."""
    result = _segments(request).evaluate(key)
    return {
        "key": result.key,
        "members": result.members,
        "entered": result.entered,
        "exited": result.exited,
        "error": result.error,
    }


@router.get("/segments/{key}/preview", responses=_ERRORS)
def preview_segment(
    request: Request, key: str = Key, sample: int = Query(10, ge=0, le=100)
) -> dict[str, Any]:
    """Count and sample of a saved segment's condition evaluated now (memberships untouched)."""
    return _segments(request).preview_key(key, sample=sample).to_dict()


@router.get("/segments/{key}/members", responses=_ERRORS)
def segment_members(
    request: Request,
    key: str = Key,
    after: int = Query(0, ge=0, le=2**63 - 1, description="`next` of the previous page"),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Current members in contact id order, with when each entered."""
    return _segments(request).members(key, after=after, limit=limit)


@router.get("/segments/{key}/changes", responses=_ERRORS)
def segment_changes(
    request: Request,
    key: str = Key,
    since: datetime | None = Query(None, description="From this time (inclusive)"),
    until: datetime | None = Query(None, description="Up to this time (exclusive)"),
    limit: int = Query(1000, ge=1, le=10000),
) -> list[dict[str, Any]]:
    """Entries and exits, oldest first."""
    return _segments(request).changes(
        key, since=aware("since", since), until=aware("until", until), limit=limit
    )


@router.get("/contacts/{contact_id}/state", responses=_ERRORS)
def contact_state(request: Request, contact_id: int = Path(ge=1, le=2**63 - 1)) -> dict[str, Any]:
    """A contact's segment memberships, lifecycle stages and scores."""
    state: dict[str, Any] = request.app.state.nurture.engine.contact_state(contact_id)
    return state
