"""Admin API for message templates: list, read, save, delete, validate and preview."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Path, Request

from nurture.api.auth import admin_key
from nurture.api.contacts import MAX_ID
from nurture.errors import ValidationError
from nurture.messages.templates import TemplateService

router = APIRouter(prefix="/api", tags=["templates"], dependencies=[Depends(admin_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "An invalid template (`path` names the field, the message its line "
        "and column), or a preview that cannot render (`missing_value`)"
    },
    401: {"description": "No key, or an unknown or revoked key"},
    403: {"description": "A write key; this needs an admin key"},
    404: {"description": "No such template or contact"},
}
Key = Path(max_length=200, pattern=r"^[a-z0-9][a-z0-9_\-]*$", description="The template key")
EXAMPLE = {
    "name": "Welcome",
    "defaults": {"first_name": "there"},
    "email": {
        "subject": "Welcome, {{ contact.first_name }}",
        "preheader": "Three steps to your first project",
        "html": "<p>Hi {{ contact.first_name }}</p>"
        '<p><a href="{{ links.unsubscribe }}">Unsubscribe</a></p>',
    },
    "sms": {"body": "Welcome, {{ contact.first_name }}!", "max_segments": 1},
    "locales": {"de": {"email": {"subject": "Willkommen, {{ contact.first_name }}"}}},
}


def _templates(request: Request) -> TemplateService:
    return request.app.state.nurture.templates  # type: ignore[no-any-return]


@router.get("/templates", responses=_ERRORS)
def list_templates(request: Request) -> list[dict[str, Any]]:
    """Every template, stored and from project files, with its problem if it has one."""
    return _templates(request).all()


@router.post("/templates/validate", responses=_ERRORS)
def validate_template(
    request: Request, body: Any = Body(..., examples=[EXAMPLE])
) -> dict[str, Any]:
    """Check a template without saving: every problem, each with its field, line, column."""
    _definition, problems = _templates(request).check(body)
    return {"valid": not problems, "problems": [p.to_dict() for p in problems]}


@router.get("/templates/{key}", responses=_ERRORS)
def get_template(request: Request, key: str = Key) -> dict[str, Any]:
    """The template in force for KEY (a stored one wins over a project file)."""
    return _templates(request).describe(key)


@router.put("/templates/{key}", responses=_ERRORS)
def put_template(
    request: Request, key: str = Key, body: dict[str, Any] = Body(..., examples=[EXAMPLE])
) -> dict[str, Any]:
    """Create or replace a stored template; refused with its first problem if invalid."""
    return _templates(request).put(key, body)


@router.delete("/templates/{key}", status_code=204, responses=_ERRORS)
def delete_template(request: Request, key: str = Key) -> None:
    """Delete a stored template (a project file of the same key applies again)."""
    _templates(request).delete(key)


@router.post("/templates/{key}/preview", responses=_ERRORS)
def preview_template(
    request: Request,
    key: str = Key,
    body: dict[str, Any] = Body(
        ..., examples=[{"contactId": 42, "channel": "email", "locale": "de-DE"}]
    ),
) -> dict[str, Any]:
    """Render for a real contact (`contactId`) or an inline `context`, as it would be sent
    (links point to preview.invalid)."""
    contact = body.get("contactId")
    if contact is not None and (
        not isinstance(contact, int) or isinstance(contact, bool) or not 1 <= contact <= MAX_ID
    ):
        raise ValidationError("expected the contact's id, a whole number", path="contactId")
    context = body.get("context")
    if context is not None and not isinstance(context, dict):
        raise ValidationError("expected an object", path="context")
    if contact is None and context is None:
        raise ValidationError("give a contactId or a context", path="contactId")
    options = {name: body.get(name) for name in ("channel", "locale")}
    for name, value in options.items():
        if value is not None and not isinstance(value, str):
            raise ValidationError("expected a string", path=name)
    return _templates(request).preview(
        key,
        contact_id=contact,
        context=context,
        channel=options["channel"],
        locale=options["locale"],
    )
