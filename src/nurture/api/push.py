"""Web Push from the visitor's browser: subscribe, unsubscribe, the application server key,
and the service-worker snippet that shows a notification and opens its link.

`POST /v1/push/subscriptions` takes the write key like the ingest API. The contact is
resolved the way ingest resolves it, by ingesting a `Push Subscribed` track event for the
userId or anonymousId (a new anonymous visitor becomes a contact, and journeys can start on
the event); its messageId comes from the endpoint, so a repeated subscribe is one event.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticError
from starlette.responses import Response

from nurture.api.auth import require_key
from nurture.api.responses import JSONResponse
from nurture.channels.base import PushSubscription
from nurture.channels.config import ChannelsConfig, WebPushConfig
from nurture.channels.subscriptions import check
from nurture.channels.webpush import vapid_public_key
from nurture.core import Nurture
from nurture.errors import NotFound, ValidationError
from nurture.settings import secret

router = APIRouter(tags=["push"])
EVENT = "Push Subscribed"
MAX_BODY = 8 * 1024

SERVICE_WORKER = """\
// Nurture Web Push: shows each notification and opens its link when clicked.
// Use it from your site's own service worker:
//   importScripts("<this URL>");
self.addEventListener("push", (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch (e) { data = {}; }
  const title = data.title || "";
  const options = { body: data.body || "", icon: data.icon || undefined,
                    data: { url: data.url || null } };
  event.waitUntil(self.registration.showNotification(title, options));
});
self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = event.notification.data && event.notification.data.url;
  if (url) { event.waitUntil(self.clients.openWindow(url)); }
});
"""


class _Keys(BaseModel):
    model_config = ConfigDict(extra="ignore")
    p256dh: str = Field(max_length=200)
    auth: str = Field(max_length=100)


class _Subscription(BaseModel):
    model_config = ConfigDict(extra="ignore")  # browsers add expirationTime
    endpoint: str = Field(max_length=2000)
    keys: _Keys


class _Subscribe(BaseModel):
    model_config = ConfigDict(extra="ignore")
    userId: str | None = Field(None, max_length=255)
    anonymousId: str | None = Field(None, max_length=255)
    subscription: _Subscription


def _nurture(request: Request) -> Nurture:
    return request.app.state.nurture  # type: ignore[no-any-return]


async def _json(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ValidationError(f"the body is over {MAX_BODY} bytes", path=None)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"the body is not valid JSON: {exc}") from None


def _parse(body: Any) -> _Subscribe:
    try:
        parsed = _Subscribe.model_validate(body)
    except PydanticError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise ValidationError(first["msg"], path=path or None) from None
    if not (parsed.userId or parsed.anonymousId):
        raise ValidationError("give a userId or an anonymousId", path="userId")
    return parsed


async def _resolve(nurture: Nurture, body: _Subscribe) -> int:
    """The contact of the subscriber, created through ingest when new."""
    endpoint = body.subscription.endpoint
    who = f"{body.userId or ''}\x00{body.anonymousId or ''}\x00{endpoint}"
    message = {
        "type": "track",
        "event": EVENT,
        "messageId": "push-" + hashlib.sha256(who.encode()).hexdigest()[:32],
        "userId": body.userId,
        "anonymousId": body.anonymousId,
        "properties": {"push_service": urlsplit(endpoint).hostname},
    }
    parsed = nurture.parse([message], source="http /v1/push/subscriptions", path_prefix="")
    result = await asyncio.wrap_future(nurture.writer.submit(parsed))
    if result.rejected:
        first = result.rejected[0]
        raise ValidationError(first.message, path=first.path, code=first.code)
    contact_id = nurture.push_subscriptions.contact_for(
        user_id=body.userId, anonymous_id=body.anonymousId
    )
    if contact_id is None:  # cannot happen after a stored event; said plainly if it does
        raise NotFound("the subscriber could not be resolved to a contact", path="userId")
    return contact_id


@router.post("/v1/push/subscriptions", response_class=JSONResponse)
async def subscribe(request: Request) -> JSONResponse:
    """Keep a browser's push subscription for the contact with this userId or anonymousId."""
    require_key(request, "write")
    nurture = _nurture(request)
    body = _parse(await _json(request))
    sub = body.subscription
    subscription = PushSubscription(sub.endpoint, sub.keys.p256dh, sub.keys.auth)
    check(subscription)  # before the event: a bad subscription leaves no trace
    contact_id = await _resolve(nurture, body)
    await asyncio.to_thread(
        nurture.push_subscriptions.subscribe,
        contact_id,
        subscription,
        user_agent=request.headers.get("user-agent"),
    )
    return JSONResponse({"success": True, "contactId": contact_id})


@router.delete("/v1/push/subscriptions", response_class=JSONResponse)
async def unsubscribe(request: Request) -> JSONResponse:
    """Forget a subscription by its endpoint (JSON body `{"endpoint": ...}` or `?endpoint=`)."""
    require_key(request, "write")
    endpoint = request.query_params.get("endpoint")
    if endpoint is None:
        body = await _json(request)
        endpoint = body.get("endpoint") if isinstance(body, dict) else None
    if not isinstance(endpoint, str) or not endpoint:
        raise ValidationError("give the subscription's endpoint", path="endpoint")
    removed = await asyncio.to_thread(_nurture(request).push_subscriptions.unsubscribe, endpoint)
    return JSONResponse({"success": True, "removed": removed})


@router.get("/v1/push/vapid-public-key", response_class=JSONResponse)
def public_key(request: Request) -> JSONResponse:
    """The application server key for `pushManager.subscribe` (public: no key needed)."""
    # Validated here too: embedders and tests may build Settings without validation.
    config = ChannelsConfig.model_validate(_nurture(request).settings.channels).push
    if not isinstance(config, WebPushConfig):
        raise NotFound("push is not set up with web push (channels.push.provider: webpush)")
    private = secret(config.vapid_private_key_env)
    if not private:
        raise NotFound(
            f"the VAPID key is not set (environment variable {config.vapid_private_key_env})",
            path="channels.push.vapid_private_key_env",
        )
    return JSONResponse({"publicKey": vapid_public_key(private)})


@router.get("/push/sw.js", include_in_schema=False)
def service_worker() -> Response:
    """The service-worker snippet that shows notifications and opens their links."""
    return Response(
        SERVICE_WORKER,
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=3600"},
    )
