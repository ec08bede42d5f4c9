"""Admin API for contacts and accounts: search, profiles, timelines, export, erasure.

Every route needs an admin key. JSON keys are camelCase like the ingest API; the
contents of traits, properties and context are returned exactly as received.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from nurture.api.auth import admin_key
from nurture.contacts.privacy import PrivacyService
from nurture.contacts.service import ContactService

router = APIRouter(prefix="/api", tags=["contacts"], dependencies=[Depends(admin_key)])

MAX_ID = 2**63 - 1
EventType = Literal["identify", "track", "page", "screen", "group", "alias", "system"]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No key, or an unknown or revoked key"},
    403: {"description": "A write key; this needs an admin key"},
    404: {"description": "No such contact or account"},
}


class _Out(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ContactSummary(_Out):
    id: int
    user_id: str | None
    email: str | None
    phone: str | None
    name: str | None
    created_at: datetime
    first_seen_at: datetime
    last_seen_at: datetime


class ContactPage(_Out):
    items: list[ContactSummary]
    next_after_id: int | None


class AccountRef(_Out):
    group_id: str
    name: str | None
    joined_at: datetime


class ContactProfile(ContactSummary):
    country: str | None
    timezone: str | None
    locale: str | None
    traits: dict[str, Any]
    trait_issues: dict[str, Any]
    updated_at: datetime
    user_ids: list[str]
    anonymous_ids: list[str]
    accounts: list[AccountRef]
    event_count: int
    merged_contact_ids: list[int]


class LookupResult(ContactProfile):
    also_matching: list[int]


class Event(_Out):
    id: int
    message_id: str
    type: str
    event: str | None
    contact_id: int
    user_id: str | None
    anonymous_id: str | None
    group_id: str | None
    timestamp: datetime
    received_at: datetime
    sent_at: datetime | None
    original_timestamp: datetime | None
    properties: dict[str, Any] | None
    traits: dict[str, Any] | None
    context: dict[str, Any] | None


class EventPage(_Out):
    contact_id: int
    items: list[Event]
    next_before: str | None


class Account(_Out):
    id: int
    group_id: str
    name: str | None
    traits: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class AccountWithCount(Account):
    member_count: int


class AccountPage(_Out):
    items: list[AccountWithCount]
    next_after_id: int | None


class AccountMember(ContactSummary):
    joined_at: datetime


class AccountDetail(AccountWithCount):
    members: list[AccountMember]
    next_members_after_id: int | None


class Identity(_Out):
    kind: str
    value: str


class Membership(Account):
    joined_at: datetime


class Merge(_Out):
    id: int
    from_contact_id: int
    into_contact_id: int
    reason: str
    message_id: str | None
    merged_at: datetime


class MergedContact(_Out):
    id: int
    created_at: datetime
    first_seen_at: datetime
    last_seen_at: datetime
    updated_at: datetime


class RejectedInput(_Out):
    id: int
    received_at: datetime
    source: str
    code: str
    path: str | None
    message: str
    message_id: str | None
    raw: str | None
    size: int
    replayed_at: datetime | None
    replay_result: str | None


class ContactExport(_Out):
    format: str
    exported_at: datetime
    contact: ContactProfile
    identities: list[Identity]
    traits: dict[str, Any]
    events: list[Event]
    accounts: list[Membership]
    merges: list[Merge]
    merged_contacts: list[MergedContact]
    rejected_input: list[RejectedInput]


class Erasure(_Out):
    contact_id: int
    events_deleted: int
    identities_deleted: int
    memberships_deleted: int
    merges_deleted: int
    rejected_deleted: int
    contacts_deleted: int
    suppressed: list[str]


def _contacts(request: Request) -> ContactService:
    return request.app.state.nurture.contacts  # type: ignore[no-any-return]


def _privacy(request: Request) -> PrivacyService:
    return request.app.state.nurture.privacy  # type: ignore[no-any-return]


ContactId = Path(ge=1, le=MAX_ID, description="Internal id; a merged-away id gives the survivor")
Limit = Query(50, ge=1, le=1000, description="Page size")
AfterId = Query(0, ge=0, le=MAX_ID, description="`nextAfterId` of the previous page")


@router.get("/contacts", response_model=ContactPage, responses=_ERRORS)
def search_contacts(
    request: Request,
    q: str | None = Query(
        None, max_length=320, description="Part of an email, user id, name or phone; or an id"
    ),
    after_id: int = AfterId,
    limit: int = Limit,
) -> dict[str, Any]:
    """Contacts in id order, optionally matching `q` (pages never count the table)."""
    return _contacts(request).search(q, after_id=after_id, limit=limit)


@router.get("/contacts/lookup", response_model=LookupResult, responses=_ERRORS)
def lookup_contact(
    request: Request,
    user_id: str | None = Query(None, max_length=255),
    anonymous_id: str | None = Query(None, max_length=255),
    email: str | None = Query(None, max_length=320),
) -> dict[str, Any]:
    """The contact with this user id, anonymous id or email (give exactly one)."""
    return _contacts(request).lookup(user_id=user_id, anonymous_id=anonymous_id, email=email)


@router.get("/contacts/{contact_id}", response_model=ContactProfile, responses=_ERRORS)
def get_contact(request: Request, contact_id: int = ContactId) -> dict[str, Any]:
    """A contact's profile: traits, flagged trait values, identities, accounts, counts."""
    return _contacts(request).get(contact_id)


@router.get("/contacts/{contact_id}/events", response_model=EventPage, responses=_ERRORS)
def contact_events(
    request: Request,
    contact_id: int = ContactId,
    before: str | None = Query(
        None, max_length=200, description="`nextBefore` of the previous page, or a date-time"
    ),
    type: EventType | None = Query(None, description="Only messages of this type"),
    event: str | None = Query(None, max_length=255, description="Only this event/page name"),
    limit: int = Query(100, ge=1, le=1000, description="Page size"),
) -> dict[str, Any]:
    """A contact's timeline, newest first."""
    return _contacts(request).timeline(
        contact_id, before=before, type=type, event=event, limit=limit
    )


@router.get("/contacts/{contact_id}/export", response_model=ContactExport, responses=_ERRORS)
def export_contact(
    request: Request, response: Response, contact_id: int = ContactId
) -> dict[str, Any]:
    """Everything stored about a contact, as one JSON document (GDPR access/portability)."""
    document = _privacy(request).export(contact_id)
    name = f"nurture-contact-{document['contact']['id']}.json"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return document


@router.delete("/contacts/{contact_id}", response_model=Erasure, responses=_ERRORS)
def erase_contact(request: Request, contact_id: int = ContactId) -> dict[str, Any]:
    """Erase a contact and all its data (GDPR erasure); keeps only suppression hashes."""
    return _privacy(request).erase(contact_id)


@router.get("/accounts", response_model=AccountPage, responses=_ERRORS)
def list_accounts(
    request: Request,
    q: str | None = Query(None, max_length=255, description="Part of the group id or name"),
    after_id: int = AfterId,
    limit: int = Limit,
) -> dict[str, Any]:
    """Accounts (Segment groups) in id order, with member counts."""
    return _contacts(request).accounts(q, after_id=after_id, limit=limit)


@router.get("/accounts/{group_id:path}", response_model=AccountDetail, responses=_ERRORS)
def get_account(
    request: Request,
    group_id: str = Path(max_length=255, description="The Segment groupId"),
    members_after_id: int = Query(0, ge=0, le=MAX_ID, description="`nextMembersAfterId`"),
    members_limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """One account with its traits and a page of its members."""
    return _contacts(request).account(
        group_id, members_after_id=members_after_id, members_limit=members_limit
    )
