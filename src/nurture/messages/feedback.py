"""Feedback on sent messages: delivery, bounces, complaints, opens, clicks, unsubscribes
and SMS replies, from providers' webhooks and from our own tracking links.

Each piece of feedback is kept once in `message_feedback` (unique per provider event), then
applied to its message: the outbox status moves forward only (sent < delivered < bounced,
complained or failed: a late "delivered" never undoes a bounce), hard bounces and
complaints suppress the address, unsubscribes and complaints deny consent, and every piece
becomes a system event of the contact (`email.delivered`, `email.clicked`, `sms.replied`,
...) that segments and journeys see like any other event.

Feedback can arrive before the dispatcher has recorded the send it is about (a provider's
webhook is faster than our commit). It then waits unapplied, and `apply_pending`, which
the dispatcher calls in the transaction that records sends, applies it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, false, func, or_, select, update

from nurture.clock import Clock
from nurture.contacts.profile import normalize_phone
from nurture.errors import NotFound, ValidationError
from nurture.journeys.inbox import offer as offer_to_journeys
from nurture.messages.providers import FeedbackItem
from nurture.messages.suppression import Suppressions, is_start_word, is_stop_word
from nurture.segments.queue import queue_evaluations
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_many_returning, one_of

if TYPE_CHECKING:
    from nurture.messages.consent import ConsentService

OWN = "nurture"  # the provider name of feedback from our own tracking links

# Statuses a send has been recorded in: feedback applies to these only, because the
# dispatcher's own update to `sent` would otherwise overwrite what feedback moved.
RECORDED = ("sent", "delivered", "bounced", "complained", "failed")
_RANK = {"sent": 1, "delivered": 2, "bounced": 3, "complained": 3, "failed": 3}


@dataclass
class Recorded:
    """What `record` did with a batch."""

    stored: int = 0
    duplicates: int = 0
    applied: int = 0
    pending: int = 0


def _dump(item: FeedbackItem) -> dict[str, Any]:
    data = asdict(item)
    data["occurred_at"] = item.occurred_at.isoformat()
    return data


def _load(data: dict[str, Any]) -> FeedbackItem:
    return FeedbackItem(**{**data, "occurred_at": datetime.fromisoformat(data["occurred_at"])})


def by_machine(payload: ColumnElement[Any]) -> ColumnElement[bool]:
    """SQL: whether a stored feedback row (its `payload`, as `_dump` writes it) is an open
    or click made by software (a privacy proxy, a link scanner); false where unmarked."""
    return func.coalesce(payload["machine"].as_boolean(), false())


def event_name(item: FeedbackItem) -> str:
    """The event the feedback becomes: `email.bounced`, `sms.replied`, ..."""
    return f"{item.channel}.{item.type}"


def _message_id(name: str, provider: str, key: str, contact_id: int) -> str:
    # Deterministic: the same provider event always names the same stored event.
    text = f"{name}:{provider}:{key}:{contact_id}"
    if len(text) <= 255:
        return text
    return f"{name}:{provider}:" + hashlib.sha256(text.encode()).hexdigest()


_OUTBOX = (
    t.outbox.c.id,
    t.outbox.c.contact_id,
    t.outbox.c.status,
    t.outbox.c.channel,
    t.outbox.c.topic,
    t.outbox.c.journey_key,
    t.outbox.c.step,
    t.outbox.c.template,
    t.outbox.c.variant,
    t.outbox.c.provider_id,
    t.outbox.c.address,
)


class FeedbackService:
    """Records provider feedback and applies it to messages, contacts and consent."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        suppressions: Suppressions,
        consent: ConsentService,
    ) -> None:
        self.db = db
        self.clock = clock
        self.suppressions = suppressions
        self.consent = consent

    def record(self, provider: str, items: Sequence[FeedbackItem]) -> Recorded:
        """Store the items (a repeated event is ignored) and apply those whose message's
        send is recorded; the others wait for `apply_pending`."""
        result = Recorded()
        unique: dict[str, FeedbackItem] = {}
        for item in items:
            unique.setdefault(item.event_key[:255], item)
        result.duplicates = len(items) - len(unique)
        if not unique:
            return result
        with self.db.write() as conn:
            now = self.clock.now()
            rows = [
                {
                    "provider": provider[:32],
                    "event_key": key,
                    "provider_id": item.provider_id,
                    "outbox_id": item.outbox_id,
                    "type": item.type,
                    "occurred_at": item.occurred_at,
                    "received_at": now,
                    "payload": _dump(item),
                }
                for key, item in unique.items()
            ]
            new = set(insert_many_returning(conn, t.message_feedback, rows, returning="event_key"))
            result.duplicates += len(unique) - len(new)
            fresh = [(provider, key, item) for key, item in unique.items() if key in new]
            result.stored = len(fresh)
            for _, _, item in fresh:
                # The address is known now: suppress it now, even if the message is not.
                self._suppress(conn, item, None)
            applied = self._apply(conn, fresh, now, waiting=False)
            result.applied = len(applied)
            result.pending = result.stored - result.applied
        return result

    def apply_pending(self, conn: Connection, outbox_ids: Sequence[int]) -> int:
        """Apply feedback that waited for these messages' sends to be recorded; call in
        the transaction that records them, after their status is set. Returns how many
        were applied. One indexed query when nothing waits."""
        if not outbox_ids:
            return 0
        f, o = t.message_feedback.c, t.outbox.c
        ids = list(outbox_ids)
        sent = select(o.provider_id).where(one_of(conn, o.id, ids), o.provider_id.is_not(None))
        rows = conn.execute(
            select(f.provider, f.event_key, f.payload).where(
                f.applied_at.is_(None),
                or_(one_of(conn, f.outbox_id, ids), f.provider_id.in_(sent.scalar_subquery())),
            )
        ).all()
        if not rows:
            return 0
        waiting = [(r.provider, r.event_key, _load(r.payload)) for r in rows]
        now = self.clock.now()
        return len(self._apply(conn, waiting, now, waiting=True))

    # -- applying -------------------------------------------------------------------------
    def _apply(
        self,
        conn: Connection,
        items: list[tuple[str, str, FeedbackItem]],
        now: datetime,
        *,
        waiting: bool,
    ) -> list[tuple[str, str]]:
        """Apply what can be applied; returns the (provider, event_key) pairs applied."""
        if not items:
            return []
        by_id, by_provider_id = self._messages(conn, [item for _, _, item in items])
        events: list[dict[str, Any]] = []
        done: list[tuple[str, str]] = []
        linked: list[tuple[str, str, int]] = []
        for provider, key, item in items:
            row = (by_id.get(item.outbox_id) if item.outbox_id is not None else None) or (
                by_provider_id.get(item.provider_id) if item.provider_id else None
            )
            recorded = row is not None and row.status in RECORDED
            own = provider == OWN and (row is not None or item.contact_id is not None)
            if not (recorded or own or item.type == "replied"):
                if row is not None and item.outbox_id is None:
                    linked.append((provider, key, row.id))
                continue
            events += self._effects(conn, provider, key, item, row, now)
            done.append((provider, key))
        self._mark(conn, done, linked, now)
        self._write_events(conn, events, now)
        return done

    def _messages(
        self, conn: Connection, items: Iterable[FeedbackItem]
    ) -> tuple[dict[int, Any], dict[str, Any]]:
        ids = sorted({i.outbox_id for i in items if i.outbox_id is not None})
        pids = sorted({i.provider_id for i in items if i.provider_id})
        by_id: dict[int, Any] = {}
        by_pid: dict[str, Any] = {}
        o = t.outbox.c
        if ids:
            for row in conn.execute(select(*_OUTBOX).where(one_of(conn, o.id, ids))):
                by_id[row.id] = row
        if pids:
            for row in conn.execute(select(*_OUTBOX).where(one_of(conn, o.provider_id, pids))):
                by_pid[row.provider_id] = row
        return by_id, by_pid

    def _effects(
        self,
        conn: Connection,
        provider: str,
        key: str,
        item: FeedbackItem,
        row: Any | None,
        now: datetime,
    ) -> list[dict[str, Any]]:
        """Apply one item: status, suppression, consent; returns the events it makes."""
        # An unsubscribe names its channel ("unsubscribe from all" covers each channel).
        channel = item.channel if row is None or item.type == "unsubscribed" else row.channel
        contact_id = row.contact_id if row is not None else item.contact_id
        match item.type:
            case "delivered":
                self._move(conn, row, "delivered", None, now)
            case "bounced" if item.bounce_type == "hard":
                self._move(conn, row, "bounced", item.reason, now)
                self._suppress(conn, item, row)
            case "complained":
                self._move(conn, row, "complained", item.reason, now)
                self._suppress(conn, item, row)
                if contact_id is not None and not self._deny(
                    conn, contact_id, "email", "*", f"complaint:{provider}", None
                ):
                    return []
            case "failed":
                self._move(conn, row, "failed", item.reason, now)
            case "unsubscribed" if contact_id is not None:
                topic = item.topic or (row.topic if row is not None else None) or "*"
                ip = (item.context or {}).get("ip")
                if not self._deny(conn, contact_id, channel, topic, f"unsubscribe:{provider}", ip):
                    return []
            case "replied":
                return self._reply_events(conn, provider, key, item, now)
            case _:  # opened, clicked, deferred, soft bounces: events only
                pass
        if contact_id is None:
            return []
        return [self._event(provider, key, item, row, contact_id, channel, now)]

    def _deny(
        self, conn: Connection, contact_id: int, channel: str, topic: str, source: str, ip: Any
    ) -> bool:
        """Deny consent; False when the contact is gone (erased): nothing more to record."""
        try:
            self.consent.record(
                contact_id, channel, topic, "denied", source=source, ip=ip, conn=conn
            )
        except NotFound:
            return False
        return True

    def _move(
        self, conn: Connection, row: Any | None, status: str, reason: str | None, now: datetime
    ) -> None:
        """Move the message's status forward (never back), whatever order feedback came in."""
        if row is None:
            return
        lower = [name for name, rank in _RANK.items() if rank < _RANK[status]]
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if reason:
            values["reason"] = reason
        o = t.outbox.c
        conn.execute(update(t.outbox).where(o.id == row.id, o.status.in_(lower)).values(**values))

    def _suppress(self, conn: Connection, item: FeedbackItem, row: Any | None) -> None:
        address = item.address or (row.address if row is not None else None)
        if not address:
            return
        try:
            if item.type == "bounced" and item.bounce_type == "hard":
                self.suppressions.add("email", address, "bounced", item.reason, conn=conn)
            elif item.type == "complained":
                self.suppressions.add("email", address, "complained", item.reason, conn=conn)
            elif item.type == "replied" and item.text is not None:
                if is_stop_word(item.text):
                    self.suppressions.add("phone", address, "stop", item.text, conn=conn)
                elif is_start_word(item.text):
                    self.suppressions.remove("phone", address, reasons=("stop",), conn=conn)
        except ValidationError:
            pass  # an address the provider reported that is not one: nothing to suppress

    def _reply_events(
        self, conn: Connection, provider: str, key: str, item: FeedbackItem, now: datetime
    ) -> list[dict[str, Any]]:
        """One `sms.replied` event for each contact with the number that replied."""
        number, _ = normalize_phone(item.address or "", None)
        if number is None:
            return []
        c = t.contacts.c
        contacts = conn.execute(
            select(c.id).where(c.phone == number, c.merged_into.is_(None)).order_by(c.id)
        ).scalars()
        return [self._event(provider, key, item, None, cid, item.channel, now) for cid in contacts]

    @staticmethod
    def _event(
        provider: str,
        key: str,
        item: FeedbackItem,
        row: Any | None,
        contact_id: int,
        channel: str,
        now: datetime,
    ) -> dict[str, Any]:
        name = f"{channel}.{item.type}"
        props: dict[str, Any] = {"provider": provider}
        if row is not None:
            props.update(
                message=row.id,
                journey=row.journey_key,
                step=row.step,
                template=row.template,
                variant=row.variant,
            )
        if item.type == "replied" and item.text is not None:
            props["text"] = item.text
            props["keyword"] = (
                "stop" if is_stop_word(item.text) else "start" if is_start_word(item.text) else None
            )
        if item.type == "unsubscribed":
            props["topic"] = item.topic or (row.topic if row is not None else None) or "*"
        props.update(url=item.url, bounce_type=item.bounce_type, reason=item.reason)
        if item.type in ("opened", "clicked"):
            props["machine"] = item.machine
        return {
            "message_id": _message_id(name, provider, key, contact_id),
            "type": "system",
            "event": name,
            "contact_id": contact_id,
            "timestamp": item.occurred_at,
            "received_at": now,
            "properties": {k: v for k, v in props.items() if v is not None},
            "context": item.context or None,
        }

    @staticmethod
    def _mark(
        conn: Connection,
        done: list[tuple[str, str]],
        linked: list[tuple[str, str, int]],
        now: datetime,
    ) -> None:
        f = t.message_feedback.c
        by_provider: dict[str, list[str]] = {}
        for provider, key in done:
            by_provider.setdefault(provider, []).append(key)
        for provider, keys in by_provider.items():
            conn.execute(
                update(t.message_feedback)
                .where(f.provider == provider, one_of(conn, f.event_key, keys))
                .values(applied_at=now)
            )
        # Found by the provider's id before the send was recorded: remember the message,
        # so apply_pending finds it by id too.
        for provider, key, outbox_id in linked:
            conn.execute(
                update(t.message_feedback)
                .where(f.provider == provider, f.event_key == key)
                .values(outbox_id=outbox_id)
            )

    @staticmethod
    def _write_events(conn: Connection, events: list[dict[str, Any]], now: datetime) -> None:
        """Store the events and hand them on as ingest does: to the journey inbox and
        to the evaluation queue (segments, stages, scores)."""
        if not events:
            return
        stored = set(insert_many_returning(conn, t.events, events, returning="message_id"))
        fresh = [e for e in events if e["message_id"] in stored]
        if not fresh:
            return
        offer_to_journeys(conn, fresh, now)
        queue_evaluations(
            conn,
            [e["contact_id"] for e in fresh],
            now,
            arrived=[(e["contact_id"], "system", e["event"]) for e in fresh],
        )
