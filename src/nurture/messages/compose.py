"""Compose: turn claimed outbox rows into what a channel sends.

For each message: the contact's context (traits, computed traits, the triggering event,
the journey) with its personal links, the template rendered in the contact's locale and
timezone, tracking added to emails, and the address it goes to. A message that cannot be
composed (no template, a value the template needs and has no default for, no address)
is `Skipped` with the reason, never sent half-made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

from sqlalchemy import Connection, select

from nurture.channels.base import Content, Email, Outgoing, Push, PushSubscription, Sms, Voice
from nurture.errors import NotFound, NurtureError
from nurture.messages.content import EmailContent, PushContent, SmsContent, VoiceContent
from nurture.messages.context import build_contexts
from nurture.messages.render import RenderError
from nurture.messages.templates import Template, TemplateService
from nurture.messages.tracking import Tracker
from nurture.segments.engine import Engine
from nurture.store import tables as t
from nurture.store.bulk import one_of

log = logging.getLogger("nurture.dispatch")


@dataclass(frozen=True, slots=True)
class Skipped:
    rule: str
    reason: str


@dataclass(frozen=True)
class Sender:
    """Who messages come from (the channel configuration's defaults)."""

    email_from: str = "Nurture <nurture@localhost>"
    reply_to: str | None = None
    sms_from: str | None = None


Composed = tuple[Outgoing, str] | Skipped


class Composer:
    """Builds the `Outgoing` of each claimed message."""

    def __init__(
        self,
        templates: TemplateService,
        tracker: Tracker,
        sender: Sender,
        *,
        engine: Engine | None,
        default_timezone: str,
    ) -> None:
        self.templates = templates
        self.tracker = tracker
        self.sender = sender
        self.engine = engine
        self.default_timezone = default_timezone

    def compose(self, conn: Connection, rows: Sequence[Any], now: datetime) -> list[Composed]:
        """One `Outgoing` and address, or the reason it was skipped, per row, in order."""
        contexts = build_contexts(conn, rows, engine=self.engine, now=now)
        pushes = _subscriptions(conn, [r.contact_id for r in rows if r.channel == "push"])
        # Each template is looked up once per batch, not once per message (a query each).
        found: dict[str, Template | NurtureError] = {}

        def template(key: str) -> Template | NurtureError:
            if key not in found:
                try:
                    found[key] = self.templates.get(key, conn=conn)
                except NurtureError as e:  # missing, or a file that no longer compiles
                    found[key] = e
            return found[key]

        out: list[Composed] = []
        for row, context in zip(rows, contexts, strict=True):
            try:
                out.append(self._one(row, context, pushes, template))
            except Exception as e:  # a bug must cost this message, not the round
                log.exception("composing message %s failed", row.id)
                out.append(Skipped("internal", f"{e.__class__.__name__}: {e}"))
        return out

    def _one(
        self,
        row: Any,
        context: dict[str, Any] | None,
        pushes: dict[int, PushSubscription],
        lookup: Callable[[str], Template | NurtureError],
    ) -> Composed:
        if context is None:
            return Skipped("no_contact", f"contact {row.contact_id} no longer exists")
        contact = context["contact"]
        ref = _ref(row)
        address = _address(row, contact, pushes)
        if isinstance(address, Skipped):
            return address
        if row.template is None:
            content: Any = _notification(row, contact)
        else:
            template = lookup(row.template)
            if isinstance(template, NotFound):
                return Skipped("template", f"template {row.template!r} does not exist")
            if isinstance(template, NurtureError):
                return Skipped("template", f"template {row.template!r}: {template}")
            # Links a message was written with (a double opt-in's confirm link), then the
            # personal ones.
            links = dict((row.payload or {}).get("links") or {})
            if row.kind != "notification":
                links.update(self.tracker.links(ref))
            try:
                content = self.templates.render(
                    template,
                    row.channel,
                    {**context, "links": links},
                    contact.get("locale"),
                    contact.get("timezone") or self.default_timezone,
                )
            except RenderError as e:
                return Skipped(e.code, str(e))
        body = self._content(row, ref, address, contact, content, pushes)
        if isinstance(body, Skipped):
            return body
        tags = {"outbox_id": str(row.id), "contact_id": str(row.contact_id)}
        if row.journey_key:
            tags["journey"] = row.journey_key
        return Outgoing(row.idempotency_key, body, tags), address

    def _content(
        self,
        row: Any,
        ref: dict[str, Any],
        address: str,
        contact: dict[str, Any],
        content: Any,
        pushes: dict[int, PushSubscription],
    ) -> Content | Skipped:
        match row.channel:
            case "email":
                if not isinstance(content, EmailContent):
                    return Skipped("template", f"template {row.template!r} has no email part")
                headers: dict[str, str] = {}
                if row.kind == "marketing":
                    content = self.tracker.decorate_email(content, ref)
                    headers = self.tracker.email_headers(ref)
                elif row.kind == "transactional":
                    content = self.tracker.decorate_email(content, ref)
                return Email(
                    to=address,
                    to_name=_name(contact) if row.recipient is None else None,
                    from_address=self.sender.email_from,
                    subject=content.subject,
                    html=content.html,
                    text=content.text,
                    preheader=content.preheader,
                    reply_to=self.sender.reply_to,
                    headers=headers,
                )
            case "sms":
                if not isinstance(content, SmsContent):
                    return Skipped("template", f"template {row.template!r} has no sms part")
                return Sms(to=address, body=content.body, from_number=self.sender.sms_from)
            case "voice":
                text = content.text if isinstance(content, VoiceContent) else None
                if text is None and isinstance(content, SmsContent):
                    text = content.body
                if text is None:
                    return Skipped("template", f"template {row.template!r} has no voice part")
                return Voice(to=address, text=text, from_number=self.sender.sms_from)
            case "push":
                if not isinstance(content, PushContent):
                    return Skipped("template", f"template {row.template!r} has no push part")
                return Push(
                    subscription=pushes[row.contact_id],
                    title=content.title,
                    body=content.body,
                    url=content.url,
                    icon=content.icon,
                )
            case _:
                return Skipped("no_channel", f"the {row.channel} channel cannot be delivered")


def _ref(row: Any) -> dict[str, Any]:
    return {
        "message": row.id,
        "contact": row.contact_id,
        "channel": row.channel,
        "topic": row.topic,
        "kind": row.kind,
        "journey": row.journey_key,
    }


def _name(contact: dict[str, Any]) -> str | None:
    first, last = contact.get("first_name"), contact.get("last_name")
    name = " ".join(str(p) for p in (first, last) if p)
    return name or (str(contact["name"]) if contact.get("name") else None)


def _address(
    row: Any, contact: dict[str, Any], pushes: dict[int, PushSubscription]
) -> str | Skipped:
    if row.recipient is not None:
        return str(row.recipient)
    match row.channel:
        case "email":
            email = contact.get("email")
            return str(email) if email else Skipped("no_address", "the contact has no email")
        case "sms" | "voice":
            phone = contact.get("phone")
            return str(phone) if phone else Skipped("no_address", "the contact has no phone")
        case "push":
            sub = pushes.get(row.contact_id)
            if sub is None:
                return Skipped("no_address", "the contact has no push subscription")
            return sub.endpoint
        case _:
            return Skipped("no_channel", f"the {row.channel} channel cannot be delivered")


def _notification(row: Any, contact: dict[str, Any]) -> EmailContent:
    """A hand-over without a template: who, from which journey, and the step's note."""
    payload = row.payload or {}
    journey = (payload.get("journey") or {}).get("key", "")
    who = _name(contact) or contact.get("email") or f"contact {row.contact_id}"
    note = payload.get("note") or ""
    subject = f"Nurture: {who} handed over by {journey}".strip()
    lines = [f"{who} was handed over by the journey {journey!r}."]
    if note:
        lines.append(note)
    for key in ("email", "phone", "user_id"):
        if contact.get(key):
            lines.append(f"{key}: {contact[key]}")
    text = "\n\n".join(lines)
    html = "".join(f"<p>{escape(line)}</p>" for line in lines)
    return EmailContent(subject=subject, preheader="", html=html, text=text)


def _subscriptions(conn: Connection, contact_ids: list[int]) -> dict[int, PushSubscription]:
    """The newest live push subscription of each contact."""
    if not contact_ids:
        return {}
    p = t.push_subscriptions.c
    rows = conn.execute(
        select(p.contact_id, p.endpoint, p.p256dh, p.auth)
        .where(one_of(conn, p.contact_id, sorted(set(contact_ids))), p.expired_at.is_(None))
        .order_by(p.created_at)
    ).all()
    return {r.contact_id: PushSubscription(r.endpoint, r.p256dh, r.auth) for r in rows}
