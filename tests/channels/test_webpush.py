"""Web Push: the local push service receives an RFC 8291-encrypted request with a valid
VAPID signature, and the browser's private key decrypts the notification."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import http_ece
from py_vapid import Vapid02
from tests.channels import servers
from tests.channels.test_contract import browser_keys

from nurture.channels.base import Failed, Outgoing, Push, PushSubscription, Sent
from nurture.channels.webpush import (
    WebPushChannel,
    generate_vapid_key,
    load_vapid,
    topic,
    vapid_public_key,
)
from nurture.clock import SimulatedClock

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _claims(authorization: str) -> dict[str, object]:
    token = authorization.split("t=", 1)[1].split(",", 1)[0]
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_the_push_service_gets_an_encrypted_signed_notification() -> None:
    private, public = generate_vapid_key()
    ua_key, p256dh, auth = browser_keys()
    with servers.providers() as server:
        # Given a browser's subscription at the local push service
        endpoint = f"{server.base}/push/browser1"
        channel = WebPushChannel(
            vapid_private_key=private,
            subject="mailto:ops@acme.test",
            ttl=3600,
            urgency="high",
            clock=SimulatedClock(NOW),
        )
        push = Push(PushSubscription(endpoint, p256dh, auth), "Back in stock", "Size 42",
                    url="https://acme.test/p/1", icon="https://acme.test/i.png")  # fmt: skip
        # When a notification is sent
        (result,) = channel.send([Outgoing("outbox-7", push)])
        channel.close()
    # Then the push service accepted it, and its Location is the provider id
    assert result == Sent(f"{server.base}/messages/1")
    (request,) = server.requests
    headers = request.headers
    assert headers["Content-Encoding"] == "aes128gcm"
    assert headers["TTL"] == "3600" and headers["Urgency"] == "high"
    assert headers["Topic"] == topic("outbox-7") and len(headers["Topic"]) <= 32
    # And the browser's key decrypts exactly the notification the service worker shows
    plain = http_ece.decrypt(
        request.body, private_key=ua_key, auth_secret=base64.urlsafe_b64decode(auth + "=="),
        version="aes128gcm",
    )  # fmt: skip
    assert json.loads(plain) == {
        "title": "Back in stock",
        "body": "Size 42",
        "url": "https://acme.test/p/1",
        "icon": "https://acme.test/i.png",
    }
    # And the VAPID signature verifies with our public key, for this origin, until +12 h
    assert Vapid02.verify(headers["Authorization"])
    assert headers["Authorization"].endswith(f"k={public}")
    claims = _claims(headers["Authorization"])
    assert claims["aud"] == server.base
    assert claims["sub"] == "mailto:ops@acme.test"
    assert claims["exp"] == int(NOW.timestamp()) + 12 * 3600


def test_a_gone_subscription_is_a_bounce_and_garbage_keys_never_leave() -> None:
    private, _ = generate_vapid_key()
    _, p256dh, auth = browser_keys()
    with servers.providers() as server:
        channel = WebPushChannel(vapid_private_key=private, subject="mailto:ops@acme.test")
        # Given a subscription the push service forgot, and one with keys no browser makes
        gone = Push(PushSubscription(f"{server.base}/push/bad1", p256dh, auth), "t", "b")
        broken = Push(PushSubscription(f"{server.base}/push/x", "AAAA", auth), "t", "b")
        # When both are sent
        results = channel.send([Outgoing("k1", gone), Outgoing("k2", broken)])
        channel.close()
    # Then both fail as bounces (the dispatcher expires them), and only one was requested
    assert [type(r) for r in results] == [Failed, Failed]
    assert all(isinstance(r, Failed) and r.bounce for r in results)
    assert results[0].code == "push_gone"  # type: ignore[union-attr]
    assert len(server.requests) == 1


def test_keys_load_from_base64url_and_pem() -> None:
    # Given a generated key pair
    private, public = generate_vapid_key()
    pem = load_vapid(private).private_pem().decode()
    # When the public key is derived from either form
    # Then it is the same application server key
    assert vapid_public_key(private) == public == vapid_public_key(pem)
    assert len(base64.urlsafe_b64decode(public + "=")) == 65
