"""Consent per channel and topic, with its proof, and double opt-in.

The current state of each (contact, channel, topic) is one row of `consents`; every change
is appended to `consent_history` with its proof (source, time, IP, the wording the person
saw). Topic "*" stands for every marketing topic of a channel. A change queues the contact
for evaluation, because segments can test consent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import Connection, select

from nurture.clock import Clock
from nurture.contacts.service import live_contact
from nurture.errors import ValidationError
from nurture.messages.tokens import BadToken, sign, verify
from nurture.segments.queue import queue_evaluations
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_one, upsert_rows

ConsentChannel = Literal["email", "sms", "voice", "push"]
State = Literal["granted", "denied", "pending"]
ALL_TOPICS = "*"
CONFIRM_PURPOSE = "confirm"
CONFIRM_SOURCE = "double opt-in"
# Channels whose confirmation can travel as a link in a message we send.
CONFIRMABLE = ("email", "sms")


@dataclass(frozen=True, slots=True)
class Proof:
    """Where a consent came from: what a person (or an auditor) reads back later."""

    source: str
    ip: str | None = None
    wording: str | None = None


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A double opt-in started: the outbox message that carries the link, and the link."""

    contact_id: int
    channel: str
    topic: str
    state: str
    outbox_id: int | None
    confirm_url: str
    created: bool  # False when the same request (idempotency key) was made before


def check(channel: str, topic: str, state: str, source: str) -> None:
    """Refuse a consent the tables cannot hold, naming the bad field."""
    if channel not in get_args(ConsentChannel):
        raise ValidationError(
            f"unknown channel {channel!r}; use email, sms, voice or push", path="channel"
        )
    if state not in get_args(State):
        raise ValidationError(
            f"unknown state {state!r}; use granted, denied or pending", path="state"
        )
    if not topic or len(topic) > 100 or topic != topic.strip():
        raise ValidationError(
            "a topic is 1-100 characters without surrounding spaces, or * for all", path="topic"
        )
    if not source or len(source) > 200:
        raise ValidationError(
            "say where the consent came from (1-200 characters), e.g. 'signup form /pricing'",
            path="source",
        )


class ConsentService:
    """Record, read and confirm consent. `secret` gives the key that signs confirm links."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        secret: Callable[[], str],
        *,
        confirm_ttl: timedelta = timedelta(days=7),
    ) -> None:
        self.db = db
        self.clock = clock
        self.secret = secret
        self.confirm_ttl = confirm_ttl

    def record(
        self,
        contact_id: int,
        channel: str,
        topic: str,
        state: str,
        *,
        source: str,
        ip: str | None = None,
        wording: str | None = None,
        conn: Connection | None = None,
    ) -> dict[str, Any]:
        """Set the consent of a contact (the survivor, if it was merged) and log it.

        Returns the consent row as stored. Raises NotFound for an unknown contact and
        ValidationError for a channel, topic, state or source the tables cannot hold.
        """
        check(channel, topic, state, source)
        proof = Proof(source, ip, wording)
        if conn is None:
            with self.db.write() as own:
                return self._record(own, contact_id, channel, topic, state, proof)
        return self._record(conn, contact_id, channel, topic, state, proof)

    def _record(
        self, conn: Connection, contact_id: int, channel: str, topic: str, state: str, proof: Proof
    ) -> dict[str, Any]:
        cid = live_contact(conn, contact_id).id
        now = self.clock.now()
        row = {
            "contact_id": cid,
            "channel": channel,
            "topic": topic,
            "state": state,
            "source": proof.source,
            "ip": proof.ip,
            "wording": proof.wording,
            "recorded_at": now,
        }
        upsert_rows(conn, t.consents, [row], ["contact_id", "channel", "topic"])
        conn.execute(t.consent_history.insert().values(**row))
        # Segments may read consent (`consent:` conditions): evaluate every definition.
        queue_evaluations(conn, [cid], now, full=[cid])
        return row

    def states(self, contact_id: int) -> dict[tuple[str, str], str]:
        """The contact's current consents: {(channel, topic): state}."""
        with self.db.read() as conn:
            cid = live_contact(conn, contact_id).id
            c = t.consents.c
            rows = conn.execute(select(c.channel, c.topic, c.state).where(c.contact_id == cid))
            return {(row.channel, row.topic): row.state for row in rows}

    def document(self, contact_id: int) -> dict[str, Any]:
        """Current consents and the full history with proof, oldest change first."""
        with self.db.read() as conn:
            cid = live_contact(conn, contact_id).id
            c, h = t.consents.c, t.consent_history.c
            current = conn.execute(
                select(t.consents).where(c.contact_id == cid).order_by(c.channel, c.topic)
            ).all()
            history = conn.execute(
                select(t.consent_history).where(h.contact_id == cid).order_by(h.recorded_at, h.id)
            ).all()
        return {
            "contact_id": cid,
            "current": [dict(r._mapping) for r in current],
            "history": [dict(r._mapping) for r in history],
        }

    def request_confirmation(
        self,
        contact_id: int,
        channel: str,
        topic: str,
        *,
        source: str,
        ip: str | None = None,
        wording: str | None = None,
        conn: Connection | None = None,
    ) -> str:
        """Start a double opt-in: consent becomes pending, and the signed token returned
        confirms it (purpose "confirm", valid for `confirm_ttl`).

        A consent already granted stays granted: asking again must not stop the messages
        a person already receives.
        """
        check(channel, topic, "pending", source)
        proof = Proof(source, ip, wording)
        if conn is None:
            with self.db.write() as own:
                return self._request(own, contact_id, channel, topic, proof)
        return self._request(conn, contact_id, channel, topic, proof)

    def _request(
        self, conn: Connection, contact_id: int, channel: str, topic: str, proof: Proof
    ) -> str:
        cid = live_contact(conn, contact_id).id
        if self._state(conn, cid, channel, topic) != "granted":
            self._record(conn, cid, channel, topic, "pending", proof)
        issued = int(self.clock.now().timestamp())
        payload = {"c": cid, "ch": channel, "t": topic, "iat": issued}
        return sign(self.secret(), CONFIRM_PURPOSE, payload)

    def start_double_opt_in(
        self,
        contact_id: int,
        channel: str,
        topic: str,
        *,
        source: str,
        template: str,
        base_url: str,
        request_key: str | None = None,
        ip: str | None = None,
        wording: str | None = None,
    ) -> Confirmation:
        """Set consent pending and queue the transactional message carrying the confirm
        link (`payload.links.confirm`), in one transaction.

        `request_key` (an HTTP Idempotency-Key) makes a retried request harmless: the
        outbox row is keyed by it and a repeat changes nothing. Without one, each call is
        a new request.
        """
        check(channel, topic, "pending", source)
        if channel not in CONFIRMABLE:
            raise ValidationError(
                f"double opt-in needs a channel that carries a link ({', '.join(CONFIRMABLE)})",
                path="channel",
            )
        proof = Proof(source, ip, wording)
        now = self.clock.now()
        with self.db.write() as conn:
            cid = live_contact(conn, contact_id).id
            unique = request_key or now.isoformat(timespec="microseconds")
            key = f"confirm:{cid}:{channel}:{topic}:{unique}"[:255]
            o = t.outbox.c
            earlier = conn.execute(select(o.id, o.payload).where(o.idempotency_key == key)).first()
            if earlier is not None:
                return Confirmation(
                    cid,
                    channel,
                    topic,
                    self._state(conn, cid, channel, topic) or "pending",
                    earlier.id,
                    str(earlier.payload["links"]["confirm"]),
                    created=False,
                )
            token = self._request(conn, cid, channel, topic, proof)
            url = f"{base_url.rstrip('/')}/t/confirm/{token}"
            outbox_id = insert_one(
                conn,
                t.outbox,
                {
                    "idempotency_key": key,
                    "contact_id": cid,
                    "channel": channel,
                    "template": template,
                    "kind": "transactional",
                    "topic": None,
                    "payload": {
                        "links": {"confirm": url},
                        "consent": {"channel": channel, "topic": topic},
                    },
                    "status": "queued",
                    "created_at": now,
                    "send_after": now,
                },
                returning="id",
            )
            state = self._state(conn, cid, channel, topic) or "pending"
        return Confirmation(cid, channel, topic, state, outbox_id, url, created=True)

    def confirmation(self, token: str) -> tuple[int, str, str]:
        """What a double opt-in token asks to confirm: (contact_id, channel, topic).
        Raises BadToken for a forged, foreign or expired token; changes nothing."""
        payload = verify(self.secret(), CONFIRM_PURPOSE, token)
        try:
            cid, channel, topic = int(payload["c"]), str(payload["ch"]), str(payload["t"])
            issued = datetime.fromtimestamp(int(payload["iat"]), UTC)
        except (KeyError, TypeError, ValueError):
            raise BadToken("the link is not valid (it cannot be read)") from None
        if self.clock.now() > issued + self.confirm_ttl:
            raise BadToken("the link has expired; please sign up again to get a new one")
        return cid, channel, topic

    def confirm(self, token: str, *, ip: str | None = None) -> tuple[int, str, str]:
        """Grant the consent a double opt-in token names; (contact_id, channel, topic).

        Raises BadToken for a forged, foreign or expired token and NotFound once the
        contact is gone. Confirming twice (mail scanners follow links) records once.
        """
        cid, channel, topic = self.confirmation(token)
        with self.db.write() as conn:
            cid = live_contact(conn, cid).id
            if self._state(conn, cid, channel, topic) != "granted":
                c = t.consents.c
                shown = conn.execute(
                    select(c.wording).where(
                        c.contact_id == cid, c.channel == channel, c.topic == topic
                    )
                ).scalar()
                # The proof keeps the wording the person saw when they asked.
                proof = Proof(CONFIRM_SOURCE, ip, shown)
                self._record(conn, cid, channel, topic, "granted", proof)
        return cid, channel, topic

    @staticmethod
    def _state(conn: Connection, cid: int, channel: str, topic: str) -> str | None:
        c = t.consents.c
        return conn.execute(
            select(c.state).where(c.contact_id == cid, c.channel == channel, c.topic == topic)
        ).scalar()
