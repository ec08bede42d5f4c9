"""Web Push (RFC 8030) with VAPID (RFC 8292) and message encryption (RFC 8291).

The payload is the JSON `{title, body, url, icon}` that the service worker served at
`/push/sw.js` shows. pywebpush encrypts it for the subscription (aes128gcm), py_vapid signs
the VAPID claims (`sub`, the push service's origin as `aud`, an expiry 12 hours from the
clock's now); httpx sends it, so push shares the other HTTP channels' pooling and reading.

Answers: 201 is Sent (the push service's `Location`, the message resource, is the provider
id); 404 and 410 mean the subscription is gone for good (Failed bounce: the dispatcher
expires it); 429 is a Retry(throttled); 5xx a Retry. The `Topic` header is derived from the
outbox key: a resend replaces a copy the push service still holds instead of adding one.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

import httpx
import orjson
from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid, VapidException
from pywebpush import WebPusher, WebPushException

from nurture.channels import http
from nurture.channels.base import Failed, Outgoing, Push, Result, Sent
from nurture.clock import Clock, SystemClock

Urgency = Literal["very-low", "low", "normal", "high"]
GONE = frozenset({404, 410})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_vapid(private_key: str) -> Vapid:
    """A VAPID key from text: PEM, or base64url DER or raw 32-byte key (what `vapid --gen`
    and `generate_vapid_key` give). Raises ValueError when it is none of these."""
    try:
        if "-----BEGIN" in private_key:
            return Vapid.from_pem(private_key.strip().encode())
        return Vapid.from_string(private_key.strip())
    except (VapidException, ValueError, TypeError) as exc:
        raise ValueError(f"not a VAPID private key (PEM or base64url): {exc}") from None


def vapid_public_key(private_key: str) -> str:
    """The application server key a browser subscribes with (base64url, uncompressed point)."""
    public = load_vapid(private_key).public_key
    return _b64url(
        public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


def generate_vapid_key() -> tuple[str, str]:
    """A new (private key, public key) pair, both base64url: keep the private one secret."""
    vapid = Vapid()
    vapid.generate_keys()
    raw = vapid.private_key.private_numbers().private_value.to_bytes(32, "big")
    return _b64url(raw), vapid_public_key(_b64url(raw))


def topic(key: str) -> str:
    """The RFC 8030 Topic for an outbox key (at most 32 base64url characters)."""
    return _b64url(hashlib.sha256(key.encode()).digest())[:32]


class WebPushChannel:
    """Browser notifications through each subscription's push service."""

    provider = "webpush"
    channels = frozenset({"push"})

    def __init__(
        self,
        *,
        vapid_private_key: str,
        subject: str,
        ttl: int = 86400,
        urgency: Urgency = "normal",
        timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self.vapid = load_vapid(vapid_private_key)
        self.subject = subject
        self.ttl = ttl
        self.urgency = urgency
        self.clock = clock or SystemClock()
        self._http = http.client(timeout=timeout)

    def _authorization(self, endpoint: str) -> str:
        parts = urlsplit(endpoint)
        expires = self.clock.now() + timedelta(hours=12)
        claims = {
            "sub": self.subject,
            "aud": f"{parts.scheme}://{parts.netloc}",
            "exp": int(expires.timestamp()),
        }
        return str(self.vapid.sign(claims)["Authorization"])

    def send(self, batch: Sequence[Outgoing]) -> list[Result]:
        """Encrypt and deliver each notification."""
        return [self._one(item) for item in batch]

    def _one(self, item: Outgoing) -> Result:
        push = item.content
        if not isinstance(push, Push):
            kind = type(push).__name__
            return Failed(
                f"the webpush channel sends push notifications, not {kind}", "wrong_channel"
            )
        sub = push.subscription
        payload = {"title": push.title, "body": push.body, "url": push.url, "icon": push.icon}
        try:
            pusher = WebPusher(
                {"endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}}
            )
            body = pusher.encode(orjson.dumps(payload), "aes128gcm")["body"]
            authorization = self._authorization(sub.endpoint)
        except (WebPushException, VapidException, ValueError) as exc:
            # Keys the browser never could have made: this subscription cannot be used.
            return Failed(f"the push subscription is unusable: {exc}", "push_subscription", True)
        headers = {
            "Authorization": authorization,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(self.ttl),
            "Urgency": self.urgency,
            "Topic": topic(item.key),
        }
        answer = http.post(self._http, "webpush", sub.endpoint, content=body, headers=headers)
        if not isinstance(answer, httpx.Response):
            return answer
        if answer.status_code in (200, 201, 202):
            return Sent(answer.headers.get("Location") or topic(item.key))
        if answer.status_code in GONE:
            host, status = urlsplit(sub.endpoint).hostname, answer.status_code
            error = f"the push subscription expired or was removed ({host} answered {status})"
            return Failed(error, "push_gone", bounce=True)
        return http.classify(answer, "webpush", answer.text or None, self.clock.now)

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()
