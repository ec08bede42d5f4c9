"""Admin API for the outbox: every message, where it stands and which rule held it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request

from nurture.api.auth import admin_key
from nurture.api.contacts import MAX_ID
from nurture.messages.service import MessageService

router = APIRouter(prefix="/api", tags=["messages"], dependencies=[Depends(admin_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "An invalid filter, or a message that cannot be retried"},
    401: {"description": "No key, or an unknown or revoked key"},
    403: {"description": "A write key; this needs an admin key"},
    404: {"description": "No such message"},
}
MessageId = Path(ge=1, le=MAX_ID, description="The message's id (the outbox row)")


def _messages(request: Request) -> MessageService:
    return request.app.state.nurture.messages  # type: ignore[no-any-return]


@router.get("/messages", responses=_ERRORS)
def list_messages(
    request: Request,
    status: str | None = Query(None, description="queued, sending, sent, delivered, ..."),
    contact_id: int | None = Query(None, ge=1, le=MAX_ID),
    journey: str | None = Query(None, max_length=200),
    rule: str | None = Query(None, max_length=32, description="e.g. quiet_hours, consent"),
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(None, ge=1, le=MAX_ID, description="Page: last id seen"),
) -> list[dict[str, Any]]:
    """Messages, newest first: status, the rule that held or skipped it and why, the
    provider and its message id."""
    return _messages(request).list(
        status=status,
        contact_id=contact_id,
        journey=journey,
        rule=rule,
        limit=limit,
        before_id=before_id,
    )


@router.get("/messages/counts", responses=_ERRORS)
def message_counts(request: Request) -> dict[str, int]:
    """Messages by status: the outbox's progress."""
    return _messages(request).counts()


@router.get("/messages/{message_id}", responses=_ERRORS)
def get_message(request: Request, message_id: int = MessageId) -> dict[str, Any]:
    """One message with its payload and the provider feedback recorded for it."""
    return _messages(request).get(message_id)


@router.post("/messages/{message_id}/retry", responses=_ERRORS)
def retry_message(request: Request, message_id: int = MessageId) -> dict[str, Any]:
    """Queue a failed or skipped message again; the sending rules apply again."""
    return _messages(request).retry(message_id)
