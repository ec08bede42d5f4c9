"""Reading the outbox: where each message stands, which rule held or skipped it, what the
provider answered, and the feedback that came back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from nurture.clock import Clock
from nurture.errors import NotFound, ValidationError
from nurture.store import Database
from nurture.store import tables as t

STATUSES = (
    "queued",
    "sending",
    "sent",
    "delivered",
    "bounced",
    "complained",
    "skipped",
    "failed",
)
_FIELDS = (
    "id",
    "contact_id",
    "journey_key",
    "version",
    "step",
    "channel",
    "template",
    "variant",
    "kind",
    "topic",
    "status",
    "rule",
    "reason",
    "attempts",
    "provider",
    "provider_id",
    "address",
    "flagged",
    "created_at",
    "send_after",
    "sent_at",
    "updated_at",
)


def _doc(row: Any) -> dict[str, Any]:
    doc = {name: getattr(row, name) for name in _FIELDS}
    for name in ("created_at", "send_after", "sent_at", "updated_at"):
        if doc[name] is not None:
            doc[name] = doc[name].isoformat()
    return doc


class MessageService:
    """The outbox as people read it (the admin API and `nurture messages`)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def list(
        self,
        *,
        status: str | None = None,
        contact_id: int | None = None,
        journey: str | None = None,
        rule: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Messages, newest first, filtered; page with `before_id` (the last id seen)."""
        if status is not None and status not in STATUSES:
            raise ValidationError(
                f"unknown status {status!r} (known: {', '.join(STATUSES)})", path="status"
            )
        o = t.outbox.c
        query = select(*(o[name] for name in _FIELDS)).order_by(o.id.desc()).limit(limit)
        for column, value in (
            (o.status, status),
            (o.contact_id, contact_id),
            (o.journey_key, journey),
            (o.rule, rule),
        ):
            if value is not None:
                query = query.where(column == value)
        if before_id is not None:
            query = query.where(o.id < before_id)
        with self.db.read() as conn:
            return [_doc(r) for r in conn.execute(query)]

    def get(self, message_id: int) -> dict[str, Any]:
        """One message with its payload and the provider feedback recorded for it."""
        o, f = t.outbox.c, t.message_feedback.c
        with self.db.read() as conn:
            row = conn.execute(
                select(*(o[name] for name in _FIELDS), o.payload, o.idempotency_key).where(
                    o.id == message_id
                )
            ).first()
            if row is None:
                raise NotFound(f"no message {message_id}", path="id")
            feedback = conn.execute(
                select(f.type, f.provider, f.occurred_at, f.received_at, f.applied_at)
                .where(f.outbox_id == message_id)
                .order_by(f.occurred_at, f.id)
            ).all()
        doc = _doc(row)
        doc["payload"] = row.payload
        doc["idempotency_key"] = row.idempotency_key
        doc["feedback"] = [
            {
                "type": r.type,
                "provider": r.provider,
                "occurred_at": r.occurred_at.isoformat(),
                "received_at": r.received_at.isoformat(),
                "applied": r.applied_at is not None,
            }
            for r in feedback
        ]
        return doc

    def counts(self) -> dict[str, int]:
        """Messages by status (the outbox's progress)."""
        o = t.outbox.c
        with self.db.read() as conn:
            rows = conn.execute(select(o.status, func.count()).group_by(o.status)).all()
        return {status: int(n) for status, n in rows}

    def retry(self, message_id: int) -> dict[str, Any]:
        """Queue a failed or skipped message again, now (after fixing what stopped it).
        It goes through the send-time policy again: a retry never bypasses consent."""
        o = t.outbox.c
        with self.db.write() as conn:
            now = self.clock.now()
            done = conn.execute(
                update(t.outbox)
                .where(o.id == message_id, o.status.in_(("failed", "skipped")))
                .values(
                    status="queued",
                    send_after=now,
                    attempts=0,
                    rule=None,
                    reason=None,
                    updated_at=now,
                )
            ).rowcount
        if not done:
            current = self.get(message_id)  # NotFound when there is no such message
            raise ValidationError(
                f"message {message_id} is {current['status']}; only failed or skipped "
                "messages can be retried",
                path="id",
                code="not_retryable",
            )
        return self.get(message_id)
