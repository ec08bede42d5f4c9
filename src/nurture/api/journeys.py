"""Admin API for journeys: drafts, publishing, status, API entries and enrolments."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from nurture.api.auth import admin_key
from nurture.api.contacts import MAX_ID
from nurture.errors import ValidationError
from nurture.journeys.model import dump_journey
from nurture.journeys.service import JourneyService

router = APIRouter(prefix="/api", tags=["journeys"], dependencies=[Depends(admin_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "An invalid journey or request; `path` names the bad field"},
    401: {"description": "No key, or an unknown or revoked key"},
    403: {"description": "A write key; this needs an admin key"},
    404: {"description": "No such journey or enrolment"},
}
EnrolmentId = Path(ge=1, le=MAX_ID, description="The enrolment's id")
Key = Path(max_length=200, pattern=r"^[a-z0-9][a-z0-9_\-]*$", description="The journey key")
EXAMPLE = {
    "key": "welcome",
    "name": "Welcome series",
    "trigger": {"event": "Signed Up"},
    "goal": {"event": "Project Created", "within": "14d"},
    "steps": [
        {"id": "hello", "type": "send", "channel": "email", "template": "welcome"},
        {"id": "two_days", "type": "wait", "for": "2d"},
        {
            "id": "started",
            "type": "branch",
            "cases": [{"if": {"event": "Project Created"}, "next": "end"}],
        },
        {"id": "nudge", "type": "send", "channel": "email", "template": "tip_first_project"},
    ],
}


def _journeys(request: Request) -> JourneyService:
    return request.app.state.nurture.journeys  # type: ignore[no-any-return]


@router.get("/journeys", responses=_ERRORS)
def list_journeys(request: Request) -> list[dict[str, Any]]:
    """Every journey: status, published version, draft, enrolments by status."""
    return _journeys(request).all()


@router.post("/journeys", status_code=201, responses=_ERRORS)
def save_journey(
    request: Request,
    body: dict[str, Any] = Body(..., examples=[EXAMPLE]),
    publish: bool = Query(False, description="Publish the draft as a new version at once"),
) -> dict[str, Any]:
    """Save a draft (checked as a whole: steps, targets, loops, names it uses)."""
    return _journeys(request).save(body, publish=publish)


@router.post("/journeys/validate", responses=_ERRORS)
def validate_journey(request: Request, body: Any = Body(...)) -> dict[str, Any]:
    """Check a journey without saving: every problem, each with the path of its field."""
    journey, problems = _journeys(request).validate(body)
    return {
        "valid": not problems,
        "problems": [p.to_dict() for p in problems],
        "journey": dump_journey(journey),
    }


@router.get("/journeys/{key}", responses=_ERRORS)
def get_journey(request: Request, key: str = Key) -> dict[str, Any]:
    return _journeys(request).get(key)


@router.get("/journeys/{key}/versions", responses=_ERRORS)
def journey_versions(request: Request, key: str = Key) -> list[dict[str, Any]]:
    """Every published version, oldest first; each is immutable."""
    return _journeys(request).versions(key)


@router.post("/journeys/{key}/publish", responses=_ERRORS)
def publish_journey(request: Request, key: str = Key) -> dict[str, Any]:
    """Publish the draft as the next version (an unchanged draft makes none)."""
    return _journeys(request).publish(key)


@router.post("/journeys/{key}/pause", responses=_ERRORS)
def pause_journey(request: Request, key: str = Key) -> dict[str, Any]:
    """Hold every enrolment where it is; nobody enters while paused."""
    return _journeys(request).pause(key)


@router.post("/journeys/{key}/resume", responses=_ERRORS)
def resume_journey(request: Request, key: str = Key) -> dict[str, Any]:
    return _journeys(request).resume(key)


@router.post("/journeys/{key}/archive", responses=_ERRORS)
def archive_journey(request: Request, key: str = Key) -> dict[str, Any]:
    """End every live enrolment (reason `archived`); nobody enters again."""
    return _journeys(request).archive(key)


@router.post("/journeys/{key}/enrolments", status_code=201, responses=_ERRORS)
def enrol_contact(
    request: Request,
    key: str = Key,
    body: dict[str, Any] = Body(
        ..., examples=[{"contactId": 42, "idempotencyKey": "crm-123", "context": {"plan": "pro"}}]
    ),
) -> dict[str, Any]:
    """Enter a contact (the journey's entry rules apply); repeat-safe with idempotencyKey."""
    contact = body.get("contactId")
    if not isinstance(contact, int) or isinstance(contact, bool) or not 1 <= contact <= MAX_ID:
        raise ValidationError("expected the contact's id, a whole number", path="contactId")
    key_given = body.get("idempotencyKey")
    if key_given is not None and (not isinstance(key_given, str) or len(key_given) > 200):
        raise ValidationError("expected a string of at most 200 characters", path="idempotencyKey")
    context = body.get("context")
    if context is not None and not isinstance(context, dict):
        raise ValidationError("expected an object", path="context")
    result = _journeys(request).enrol(key, contact, idempotency_key=key_given, context=context)
    return result.to_dict()


@router.get("/journeys/{key}/enrolments", responses=_ERRORS)
def list_enrolments(
    request: Request,
    key: str = Key,
    status: str | None = Query(
        None, pattern="^(active|completed|converted|exited|failed)$", description="Only these"
    ),
    after: int = Query(0, ge=0, le=MAX_ID, description="Enrolment ids above this (paging)"),
    limit: int = Query(100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Enrolments in id order; `status=failed` lists parked ones with their errors."""
    return _journeys(request).enrolments(key, status=status, after=after, limit=limit)


@router.get("/enrolments/{enrolment_id}", responses=_ERRORS)
def get_enrolment(request: Request, enrolment_id: int = EnrolmentId) -> dict[str, Any]:
    """One enrolment with the steps it ran and the messages it wrote."""
    return _journeys(request).enrolment(enrolment_id)


@router.post("/enrolments/{enrolment_id}/retry", responses=_ERRORS)
def retry_enrolment(request: Request, enrolment_id: int = EnrolmentId) -> dict[str, Any]:
    """Put a parked (failed) enrolment back on its step, due now."""
    return _journeys(request).retry(enrolment_id)
