"""Links in messages: the open pixel, click redirects, unsubscribe (RFC 8058 one-click),
the preference centre and double opt-in confirmation.

No API key: the signed token in the URL is the authority. A token that does not verify
gets an error page, never a redirect. Recording a hit never stands between the person
and where they are going: if it fails, it is logged and the pixel or redirect is served.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from nurture.core import Nurture
from nurture.errors import NotFound
from nurture.messages import preferences as pages
from nurture.messages.feedback import OWN
from nurture.messages.preferences import PreferencesConfig
from nurture.messages.providers import FeedbackItem, FeedbackType
from nurture.messages.tokens import BadToken
from nurture.messages.tracking import ONE_CLICK, PIXEL_GIF, MessageRef, is_machine

router = APIRouter(tags=["tracking"], include_in_schema=False)
log = logging.getLogger("nurture.tracking")
_NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, private", "Pragma": "no-cache"}
_FORM_LIMIT = 64 * 1024


def _nurture(request: Request) -> Nurture:
    return request.app.state.nurture  # type: ignore[no-any-return]


def _person(request: Request) -> dict[str, Any]:
    """Who made the request, kept as the event's context (Segment's names)."""
    return {
        "ip": request.client.host if request.client else None,
        "userAgent": request.headers.get("user-agent"),
    }


def _bad_link(message: str, status: int = 400) -> HTMLResponse:
    return HTMLResponse(pages.problem_page("This link does not work", message), status, _NO_STORE)


def _ref(nurture: Nurture, purpose: str, token: str) -> MessageRef:
    return MessageRef.from_payload(nurture.tracker.read(purpose, token))


def _hit(
    nurture: Nurture, request: Request, kind: FeedbackType, ref: MessageRef, **extra: Any
) -> None:
    """Record an open, click or unsubscribe from one of our links."""
    person = _person(request)
    now = nurture.clock.now()
    # The same request repeated within a minute (a proxy, a double click) is one event.
    seen = f"{kind}|{ref.outbox_id}|{ref.channel}|{extra.get('url')}|{extra.get('topic')}|{person}|"
    seen += now.isoformat(timespec="minutes" if kind != "unsubscribed" else "seconds")
    item = FeedbackItem(
        kind,
        f"{kind}:{ref.outbox_id}:{hashlib.sha256(seen.encode()).hexdigest()[:32]}",
        now,
        channel=ref.channel,
        outbox_id=ref.outbox_id,
        contact_id=ref.contact_id,
        machine=is_machine(person["userAgent"]) if kind != "unsubscribed" else False,
        context=person,
        **extra,
    )
    nurture.feedback.record(OWN, [item])


def _quietly(
    nurture: Nurture, request: Request, kind: FeedbackType, ref: MessageRef, **extra: Any
) -> None:
    try:
        _hit(nurture, request, kind, ref, **extra)
    except Exception:  # the person still gets the image or the page they asked for
        log.exception("could not record a %s of message %s", kind, ref.outbox_id)


async def _form(request: Request) -> tuple[bytes, dict[str, list[str]]]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _FORM_LIMIT:
            break
    return body, parse_qs(body[:_FORM_LIMIT].decode("utf-8", "replace"), keep_blank_values=True)


@router.get("/t/o/{token}.gif")
def open_pixel(request: Request, token: str) -> Response:
    """The open pixel: a 1x1 GIF; records `email.opened`."""
    nurture = _nurture(request)
    try:
        ref = _ref(nurture, "open", token)
    except BadToken:
        return Response(PIXEL_GIF, 404, media_type="image/gif", headers=_NO_STORE)
    _quietly(nurture, request, "opened", ref)
    return Response(PIXEL_GIF, media_type="image/gif", headers=_NO_STORE)


@router.get("/t/c/{token}")
def click(request: Request, token: str) -> Response:
    """A tracked link: records `email.clicked` and redirects to the signed target."""
    nurture = _nurture(request)
    try:
        payload = nurture.tracker.read("click", token)
        ref = MessageRef.from_payload(payload)
        target = payload["u"]
        if not isinstance(target, str) or not target.lower().startswith(("http://", "https://")):
            raise BadToken("the link is not valid (it has no web address)")
    except (BadToken, KeyError) as e:
        return _bad_link(getattr(e, "message", "the link is not valid"))
    _quietly(nurture, request, "clicked", ref, url=target)
    return RedirectResponse(target, 302, headers=_NO_STORE)


@router.get("/t/u/{token}")
def unsubscribe_page(request: Request, token: str) -> Response:
    """Asks before unsubscribing: mail scanners open links, a GET changes nothing."""
    nurture = _nurture(request)
    try:
        ref = _ref(nurture, "unsubscribe", token)
    except BadToken as e:
        return _bad_link(e.message)
    prefs = nurture.tracker.links(ref)["preferences"]
    return HTMLResponse(pages.unsubscribe_page(request.url.path, prefs), headers=_NO_STORE)


@router.post("/t/u/{token}")
async def unsubscribe(request: Request, token: str) -> Response:
    """Unsubscribes: the page's button, or a mail client's RFC 8058 one-click POST
    (body `List-Unsubscribe=One-Click`), which needs no further interaction."""
    nurture = _nurture(request)
    try:
        ref = _ref(nurture, "unsubscribe", token)
    except BadToken as e:
        return _bad_link(e.message)
    body, form = await _form(request)
    await run_in_threadpool(_hit, nurture, request, "unsubscribed", ref, topic=ref.topic)
    if body.strip() == ONE_CLICK.encode() or form.get("List-Unsubscribe") == ["One-Click"]:
        return PlainTextResponse("unsubscribed\n", headers=_NO_STORE)
    prefs = nurture.tracker.links(ref)["preferences"]
    return HTMLResponse(pages.unsubscribed_page(prefs), headers=_NO_STORE)


def _config(nurture: Nurture) -> PreferencesConfig:
    return nurture.settings.preferences or PreferencesConfig()


def _centre(nurture: Nurture, request: Request, ref: MessageRef, *, saved: bool) -> Response:
    try:
        rows = nurture.consent.document(ref.contact_id)["current"]
    except NotFound:
        return _bad_link("we no longer hold your details, so there is nothing to manage", 404)
    page = pages.preferences_page(
        _config(nurture), pages.consents_of(rows), ref.channel, request.url.path, saved=saved
    )
    return HTMLResponse(page, headers=_NO_STORE)


@router.get("/t/p/{token}")
def preference_centre(request: Request, token: str) -> Response:
    """The preference centre: topics per channel, and unsubscribe from all marketing."""
    nurture = _nurture(request)
    try:
        ref = _ref(nurture, "preferences", token)
    except BadToken as e:
        return _bad_link(e.message)
    return _centre(nurture, request, ref, saved=False)


def _save(
    nurture: Nurture, request: Request, ref: MessageRef, form: dict[str, list[str]]
) -> Response:
    config = _config(nurture)
    if "unsubscribe_all" in form:
        for channel in pages.channels_of(config, ref.channel):
            _hit(
                nurture,
                request,
                "unsubscribed",
                MessageRef(ref.outbox_id, ref.contact_id, channel),
                topic="*",
            )
        return _centre(nurture, request, ref, saved=True)
    try:
        rows = nurture.consent.document(ref.contact_id)["current"]
    except NotFound:
        return _bad_link("we no longer hold your details, so there is nothing to manage", 404)
    checked = {name for name, values in form.items() if "1" in values}
    ip = _person(request)["ip"]
    for channel, topic, state in pages.changes(
        config, pages.consents_of(rows), ref.channel, checked
    ):
        nurture.consent.record(
            ref.contact_id, channel, topic, state, source="preference centre", ip=ip
        )
    return _centre(nurture, request, ref, saved=True)


@router.post("/t/p/{token}")
async def save_preferences(request: Request, token: str) -> Response:
    """Saves the preference centre form."""
    nurture = _nurture(request)
    try:
        ref = _ref(nurture, "preferences", token)
    except BadToken as e:
        return _bad_link(e.message)
    _, form = await _form(request)
    return await run_in_threadpool(_save, nurture, request, ref, form)


@router.get("/t/confirm/{token}")
def confirm_page(request: Request, token: str) -> Response:
    """Double opt-in, first step: a page with a button. Mail scanners and link previews
    follow links, so a GET confirms nothing; the person's press (a POST) does."""
    nurture = _nurture(request)
    try:
        _, channel, topic = nurture.consent.confirmation(token)  # signature and expiry
    except BadToken as e:
        return _bad_link(e.message)
    page = pages.confirm_page(request.url.path, _config(nurture), channel, topic)
    return HTMLResponse(page, headers=_NO_STORE)


@router.post("/t/confirm/{token}")
def confirm(request: Request, token: str) -> Response:
    """Double opt-in: grants the consent the token names, then says thank you."""
    nurture = _nurture(request)
    try:
        nurture.consent.confirm(token, ip=_person(request)["ip"])
    except BadToken as e:
        return _bad_link(e.message)
    except NotFound:
        return _bad_link("we no longer hold your details", 404)
    return HTMLResponse(pages.confirmed_page(), headers=_NO_STORE)
