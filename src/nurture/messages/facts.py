"""What the send-time policy needs to know about the contacts of a batch of messages,
loaded in a handful of queries for the whole batch (never one per message).

The dispatcher calls `load_facts` inside the transaction that claimed the messages, then
`policy.decide` for each message, which reads only what is loaded here.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, select

from nurture.contacts.privacy import suppression_hash
from nurture.localtime import zone
from nurture.messages.policy_config import PolicyConfig
from nurture.store import tables as t
from nurture.store.bulk import one_of

_MAX_HOPS = 16  # merge chains are short; this only guards against a cycle


@dataclass(frozen=True, slots=True)
class ConsentState:
    state: str  # granted | denied | pending
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class PolicyMessage:
    """The fields of an outbox row the policy reads."""

    id: int
    contact_id: int
    channel: str
    kind: str  # marketing | transactional | notification
    topic: str | None
    payload: Mapping[str, Any]
    send_after: datetime
    created_at: datetime
    recipient: str | None = None  # a team member to notify; None: the contact

    @classmethod
    def from_row(cls, row: Any) -> PolicyMessage:
        """From an `outbox` row (a SQLAlchemy Row or anything with those attributes)."""
        return cls(
            id=row.id,
            contact_id=row.contact_id,
            channel=row.channel,
            kind=row.kind,
            topic=row.topic,
            payload=row.payload or {},
            send_after=row.send_after,
            created_at=row.created_at,
            recipient=row.recipient,
        )


@dataclass(slots=True)
class PolicyFacts:
    """One contact as the policy sees it. Shared by every message of the contact in a
    batch, so that `decide_all` can count a send against the caps of the next message."""

    contact_id: int  # the survivor, when the message named a merged-away contact
    found: bool = True
    country: str | None = None
    timezone: str = "UTC"  # the contact's zone, or the default zone
    email: str | None = None
    phone: str | None = None
    # Why an email or phone given for the contact could not be used (from trait_issues).
    issues: dict[str, str] = field(default_factory=dict)
    push: bool = False  # has a live push subscription
    consents: dict[tuple[str, str], ConsentState] = field(default_factory=dict)
    # Suppression reason by normalised address (the contact's and its messages' recipients).
    suppressed: dict[str, str] = field(default_factory=dict)
    # Send times of messages already sent, by (channel, kind), oldest first.
    sent: dict[tuple[str, str], list[datetime]] = field(default_factory=dict)

    def record_send(self, channel: str, kind: str, at: datetime) -> None:
        """Count a send decided in this batch against the caps of the contact's next one."""
        bisect.insort(self.sent.setdefault((channel, kind), []), at)


def _salt(conn: Connection) -> str:
    salt = conn.execute(select(t.meta.c.value).where(t.meta.c.key == "salt")).scalar()
    if salt is None:
        raise RuntimeError("the database has no salt; run migrations first")
    return str(salt)


def load_facts(
    conn: Connection,
    messages: Sequence[PolicyMessage],
    now: datetime,
    config: PolicyConfig,
    *,
    default_timezone: str = "UTC",
    salt: str | None = None,
) -> dict[int, PolicyFacts]:
    """The facts for each message, by outbox id: five queries for any batch size."""
    if not messages:
        return {}
    survivor, rows = _contacts(conn, {m.contact_id for m in messages})
    by_contact: dict[int, PolicyFacts] = {}
    for cid, row in rows.items():
        issues = row.trait_issues if isinstance(row.trait_issues, dict) else {}
        by_contact[cid] = PolicyFacts(
            contact_id=cid,
            country=row.country,
            timezone=zone(row.timezone, default_timezone).key,
            email=row.email,
            phone=row.phone,
            issues={k: str(v) for k, v in issues.items() if k in ("email", "phone")},
        )
    ids = sorted(by_contact)
    if ids:
        _consents(conn, ids, by_contact)
        if any(m.channel == "push" for m in messages):
            _push(conn, ids, by_contact)
        _suppressed(conn, messages, survivor, by_contact, salt or _salt(conn))
        _sent(conn, messages, ids, now, config, by_contact)
    out: dict[int, PolicyFacts] = {}
    for m in messages:
        found = survivor.get(m.contact_id)
        out[m.id] = by_contact[found] if found is not None else PolicyFacts(m.contact_id, False)
    return out


def _contacts(conn: Connection, wanted: set[int]) -> tuple[dict[int, int], dict[int, Any]]:
    """({asked id: survivor id}, {survivor id: row}), following merges."""
    c = t.contacts.c
    columns = (c.id, c.merged_into, c.country, c.timezone, c.email, c.phone, c.trait_issues)
    survivor: dict[int, int] = {}
    rows: dict[int, Any] = {}
    origin = {cid: cid for cid in wanted}  # id being looked at -> the id first asked for
    for _ in range(_MAX_HOPS):
        if not origin:
            break
        found = conn.execute(select(*columns).where(one_of(conn, c.id, sorted(origin)))).all()
        following: dict[int, int] = {}
        for row in found:
            if row.merged_into is None:
                survivor[origin[row.id]] = row.id
                rows[row.id] = row
            else:
                following[row.merged_into] = origin[row.id]
        origin = following
    return survivor, rows


def _consents(conn: Connection, ids: list[int], facts: dict[int, PolicyFacts]) -> None:
    c = t.consents.c
    query = select(c.contact_id, c.channel, c.topic, c.state, c.recorded_at)
    for row in conn.execute(query.where(one_of(conn, c.contact_id, ids))):
        state = ConsentState(row.state, row.recorded_at)
        facts[row.contact_id].consents[(row.channel, row.topic)] = state


def _push(conn: Connection, ids: list[int], facts: dict[int, PolicyFacts]) -> None:
    p = t.push_subscriptions.c
    query = select(p.contact_id).where(one_of(conn, p.contact_id, ids), p.expired_at.is_(None))
    for cid in conn.execute(query.distinct()).scalars():
        facts[cid].push = True


def _suppressed(
    conn: Connection,
    messages: Sequence[PolicyMessage],
    survivor: dict[int, int],
    facts: dict[int, PolicyFacts],
    salt: str,
) -> None:
    wanted: dict[str, list[tuple[PolicyFacts, str]]] = {}
    for f in facts.values():
        for address in (f.email, f.phone):
            if address:
                wanted.setdefault(suppression_hash(salt, address), []).append((f, address))
    for m in messages:
        cid = survivor.get(m.contact_id)
        if m.recipient and cid is not None:
            # Recipients are team members' emails, stored as written.
            address = m.recipient.strip().lower()
            wanted.setdefault(suppression_hash(salt, address), []).append((facts[cid], address))
    if not wanted:
        return
    s = t.suppressions.c
    query = select(s.hash, s.reason).where(one_of(conn, s.hash, sorted(wanted)))
    for row in conn.execute(query):
        for f, address in wanted[row.hash]:
            f.suppressed[address] = row.reason


def _sent(
    conn: Connection,
    messages: Sequence[PolicyMessage],
    ids: list[int],
    now: datetime,
    config: PolicyConfig,
    facts: dict[int, PolicyFacts],
) -> None:
    """Sends within the longest cap window of each capped channel. A message another
    dispatcher is sending right now (leased, not yet recorded) counts as sent now."""
    longest: dict[str, timedelta] = {}
    for cap in config.caps:
        longest[cap.channel] = max(longest.get(cap.channel, cap.per), cap.per)
    channels = sorted({m.channel for m in messages} & set(longest))
    if not channels:
        return
    o = t.outbox.c
    since = now - max(longest[ch] for ch in channels)
    query = select(o.contact_id, o.channel, o.kind, o.sent_at).where(
        one_of(conn, o.contact_id, ids),
        o.channel.in_(channels),
        or_(o.sent_at > since, and_(o.status == "sending", o.sent_at.is_(None))),
        o.id.not_in(sorted({m.id for m in messages})),
    )
    for row in conn.execute(query):
        if row.sent_at is None or row.sent_at > now - longest[row.channel]:
            facts[row.contact_id].record_send(row.channel, row.kind, row.sent_at or now)
