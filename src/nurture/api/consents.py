"""Admin API for consent (with its proof and double opt-in) and the suppression list.

Every route needs an admin key. JSON keys are camelCase like the rest of the admin API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from nurture.api.auth import admin_key
from nurture.core import Nurture
from nurture.errors import NotFound
from nurture.messages.suppression import guess_kind

router = APIRouter(prefix="/api", tags=["consent"], dependencies=[Depends(admin_key)])

MAX_ID = 2**63 - 1
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "An invalid channel, topic, state, source or address; `path` names it"},
    401: {"description": "No key, or an unknown or revoked key"},
    403: {"description": "A write key; this needs an admin key"},
    404: {"description": "No such contact, or the address is not suppressed"},
    409: {"description": "The address belonged to an erased contact: it stays suppressed"},
}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ConsentIn(_Model):
    channel: Literal["email", "sms", "voice", "push"]
    topic: str = Field("*", min_length=1, max_length=100, description="A topic, or * for all")
    state: Literal["granted", "denied", "pending"] = "granted"
    source: str = Field(min_length=1, max_length=200, description="e.g. 'signup form /pricing'")
    ip: str | None = Field(None, max_length=64, description="The person's IP address")
    wording: str | None = Field(None, max_length=10000, description="What the person was shown")
    double_opt_in: bool = Field(
        False, description="Set pending and send a confirmation message (email or sms)"
    )


class Consent(_Model):
    contact_id: int
    channel: str
    topic: str
    state: str
    source: str | None
    ip: str | None
    wording: str | None
    recorded_at: datetime


class Recorded(Consent):
    outbox_id: int | None = None
    confirm_url: str | None = None


class Consents(_Model):
    contact_id: int
    current: list[Consent]
    history: list[Consent]


class SuppressionIn(_Model):
    address: str = Field(min_length=1, max_length=320, description="An email or phone number")
    kind: Literal["email", "phone"] | None = Field(None, description="Default: email if it has @")
    reason: Literal["bounced", "complained", "stop", "manual"] = "manual"
    detail: str | None = Field(None, max_length=2000, description="Why (who added it, ...)")


class Suppression(_Model):
    kind: str
    suppressed: bool
    reason: str | None = None
    created_at: datetime | None = None
    detail: str | None = None


class SuppressionAdded(_Model):
    kind: str
    added: bool  # false: already suppressed for this reason or a harder one


def _nurture(request: Request) -> Nurture:
    return request.app.state.nurture  # type: ignore[no-any-return]


ContactId = Path(ge=1, le=MAX_ID, description="Internal id; a merged-away id gives the survivor")
Address = Query(min_length=1, max_length=320, description="An email or phone number")
Kind = Query(None, description="email or phone (default: email if it has @)")


@router.get("/contacts/{contact_id}/consents", response_model=Consents, responses=_ERRORS)
def get_consents(request: Request, contact_id: int = ContactId) -> dict[str, Any]:
    """The contact's consents now, and every change with its proof (oldest first)."""
    return _nurture(request).consent.document(contact_id)


@router.post("/contacts/{contact_id}/consents", response_model=Recorded, responses=_ERRORS)
def record_consent(
    request: Request,
    contact_id: int = ContactId,
    body: ConsentIn = Body(...),
    idempotency_key: str | None = Header(
        None, max_length=200, description="Makes a retried double opt-in request harmless"
    ),
) -> dict[str, Any]:
    """Record a consent with its proof; with `doubleOptIn`, start a double opt-in."""
    nurture = _nurture(request)
    if not body.double_opt_in:
        return nurture.consent.record(
            contact_id,
            body.channel,
            body.topic,
            body.state,
            source=body.source,
            ip=body.ip,
            wording=body.wording,
        )
    started = nurture.consent.start_double_opt_in(
        contact_id,
        body.channel,
        body.topic,
        source=body.source,
        template=nurture.policy.double_opt_in_template,
        base_url=nurture.settings.base_url,
        request_key=idempotency_key,
        ip=body.ip,
        wording=body.wording,
    )
    current = nurture.consent.document(started.contact_id)["current"]
    row = next(c for c in current if (c["channel"], c["topic"]) == (body.channel, body.topic))
    return {**row, "outbox_id": started.outbox_id, "confirm_url": started.confirm_url}


@router.get("/suppressions", response_model=Suppression, responses=_ERRORS)
def check_suppression(
    request: Request,
    address: str = Address,
    kind: Literal["email", "phone"] | None = Kind,
) -> dict[str, Any]:
    """Whether an address is suppressed, and why."""
    kind = kind or guess_kind(address)
    entry = _nurture(request).suppressions.lookup(kind, address)
    if entry is None:
        return {"kind": kind, "suppressed": False}
    return {
        "kind": kind,
        "suppressed": True,
        "reason": entry.reason,
        "created_at": entry.created_at,
        "detail": entry.detail,
    }


@router.post("/suppressions", response_model=SuppressionAdded, responses=_ERRORS)
def add_suppression(request: Request, body: SuppressionIn = Body(...)) -> dict[str, Any]:
    """Suppress an address (a manual entry by default)."""
    kind = body.kind or guess_kind(body.address)
    added = _nurture(request).suppressions.add(kind, body.address, body.reason, body.detail)
    return {"kind": kind, "added": added}


@router.delete("/suppressions", status_code=204, responses=_ERRORS)
def remove_suppression(
    request: Request,
    address: str = Address,
    kind: Literal["email", "phone"] | None = Kind,
) -> Response:
    """Lift a suppression (any reason but erasure, which stays)."""
    kind = kind or guess_kind(address)
    reasons = ("stop", "manual", "bounced", "complained")
    if not _nurture(request).suppressions.remove(kind, address, reasons=reasons):
        raise NotFound("the address is not suppressed", path="address")
    return Response(status_code=204)
