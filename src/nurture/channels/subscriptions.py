"""Web Push subscriptions: what a browser hands over when a visitor allows notifications.

One row per endpoint (the push service's URL for that browser): subscribing again moves the
endpoint to the contact who subscribed last and revives it. A subscription the push
service answered 404/410 for is kept as expired (the dispatcher no longer uses it).
"""

from __future__ import annotations

import base64
import binascii

from sqlalchemy import Connection, delete, select, update

from nurture.channels.base import PushSubscription
from nurture.clock import Clock
from nurture.errors import ValidationError
from nurture.ingest.identity import lookup_contact_id
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import upsert_rows

MAX_ENDPOINT = 2000


def _key_bytes(value: str, path: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValidationError("expected base64url text", path=path) from None


def check(subscription: PushSubscription) -> PushSubscription:
    """The subscription when it is one a browser could have made; raises ValidationError
    naming the bad field otherwise (a bad one could never be delivered to)."""
    endpoint = subscription.endpoint
    if not endpoint.startswith(("https://", "http://")) or len(endpoint) > MAX_ENDPOINT:
        raise ValidationError(
            f"expected the push service's http(s) URL, at most {MAX_ENDPOINT} characters",
            path="subscription.endpoint",
        )
    p256dh = _key_bytes(subscription.p256dh, "subscription.keys.p256dh")
    if len(p256dh) != 65 or p256dh[0] != 4:
        raise ValidationError(
            "expected an uncompressed P-256 public key (65 bytes, base64url)",
            path="subscription.keys.p256dh",
        )
    if len(_key_bytes(subscription.auth, "subscription.keys.auth")) != 16:
        raise ValidationError(
            "expected a 16-byte authentication secret (base64url)", path="subscription.keys.auth"
        )
    return subscription


class PushSubscriptions:
    """Stores and removes push subscriptions."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def subscribe(
        self, contact_id: int, subscription: PushSubscription, *, user_agent: str | None = None
    ) -> None:
        """Keep `subscription` for the contact (idempotent; revives an expired one)."""
        check(subscription)
        row = {
            "contact_id": contact_id,
            "endpoint": subscription.endpoint,
            "p256dh": subscription.p256dh,
            "auth": subscription.auth,
            "user_agent": (user_agent or "")[:500] or None,
            "created_at": self.clock.now(),
            "expired_at": None,
        }
        with self.db.write() as conn:
            upsert_rows(conn, t.push_subscriptions, [row], ["endpoint"])

    def contact_for(self, *, user_id: str | None, anonymous_id: str | None) -> int | None:
        """The live contact with this user id (preferred) or anonymous id, or None."""
        with self.db.read() as conn:
            found = lookup_contact_id(conn, user_id=user_id, anonymous_id=None)
            if found is None:
                found = lookup_contact_id(conn, user_id=None, anonymous_id=anonymous_id)
            return found

    def unsubscribe(self, endpoint: str) -> bool:
        """Forget the subscription; False when it was not known."""
        p = t.push_subscriptions.c
        with self.db.write() as conn:
            return (
                conn.execute(delete(t.push_subscriptions).where(p.endpoint == endpoint)).rowcount
                > 0
            )

    def expire(self, conn: Connection, endpoint: str) -> bool:
        """Mark a subscription gone (its push service answered 404 or 410), inside the
        caller's transaction; False when it was not known or already expired."""
        p = t.push_subscriptions.c
        result = conn.execute(
            update(t.push_subscriptions)
            .where(p.endpoint == endpoint, p.expired_at.is_(None))
            .values(expired_at=self.clock.now())
        )
        return result.rowcount > 0

    def of(self, contact_id: int) -> list[dict[str, object]]:
        """The contact's subscriptions, newest first (live and expired)."""
        p = t.push_subscriptions.c
        with self.db.read() as conn:
            rows = conn.execute(
                select(p.endpoint, p.user_agent, p.created_at, p.expired_at)
                .where(p.contact_id == contact_id)
                .order_by(p.created_at.desc(), p.id.desc())
            ).all()
        return [dict(r._mapping) for r in rows]
