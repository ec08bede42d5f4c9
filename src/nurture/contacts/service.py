"""Contacts: search, profiles, timelines and accounts.

Reads return plain dicts with snake_case keys and `datetime` values; the HTTP API
shapes them. Lists are keyset-paginated and never count the whole table: a page
says where the next one starts (`next_after_id`, `next_before`), or that it is the
last one (None).

A contact merged into another stays as a tombstone (`merged_into` set). Every read
by contact id follows the tombstone to the survivor (`live_contact`), so old ids
keep working.

Personal-data requests (export, erasure, suppression) are in `contacts/privacy.py`.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Row, and_, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from nurture.clock import Clock
from nurture.contacts.profile import normalize_email
from nurture.errors import NotFound, ValidationError
from nurture.ingest.messages import MESSAGE_TYPES
from nurture.store import Database
from nurture.store import tables as t

MAX_LIMIT = 1000
_USER, _ANON = "user_id", "anonymous_id"
_MAX_HOPS = 32  # merges flatten chains; this only guards against a corrupt cycle
_PHONE_LIKE = re.compile(r"^\+?[\d\s().\-]{3,}$")
Doc = dict[str, Any]
AnyRow = Row[*tuple[Any, ...]]

# What a timeline holds: the messages ingested, and the changes evaluation emitted.
TIMELINE_TYPES = (*MESSAGE_TYPES, "system")


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"must be between 1 and {MAX_LIMIT}", path="limit")


def _text(value: str | None, path: str) -> str | None:
    """`value` stripped, None when blank; NUL cannot be stored, so it is refused."""
    if value is None or not value.strip():
        return None
    if "\x00" in value:
        raise ValidationError("must not contain NUL characters", path=path)
    return value.strip()


def _display_name(traits: dict[str, Any]) -> str | None:
    name = traits.get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    parts = [traits.get(k) for k in ("first_name", "last_name", "firstName", "lastName")]
    joined = " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
    return joined or None


def row_dict(row: AnyRow) -> Doc:
    """A result row as a plain dict, keyed by column name."""
    # Column names are `quoted_name` (a str subclass); plain keys serialise anywhere.
    return {str(k): v for k, v in row._mapping.items()}


def _summary(row: AnyRow) -> Doc:
    return {
        "id": row.id,
        "user_id": row.user_id,
        "email": row.email,
        "phone": row.phone,
        "name": _display_name(row.traits or {}),
        "created_at": row.created_at,
        "first_seen_at": row.first_seen_at,
        "last_seen_at": row.last_seen_at,
    }


def encode_cursor(timestamp: datetime, event_id: int) -> str:
    """An opaque timeline cursor: the (timestamp, id) of the last event shown."""
    raw = orjson.dumps([timestamp.astimezone(UTC).isoformat(), event_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(before: str) -> tuple[datetime, int | None]:
    """A cursor from `encode_cursor`, or an ISO-8601 time (events strictly before it)."""
    try:
        ts, event_id = orjson.loads(base64.urlsafe_b64decode(before + "=" * (-len(before) % 4)))
        if isinstance(ts, str) and isinstance(event_id, int) and not isinstance(event_id, bool):
            moment = datetime.fromisoformat(ts)
            if moment.tzinfo is not None:
                return moment.astimezone(UTC), event_id
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        pass
    try:
        moment = datetime.fromisoformat(before.strip())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC), None
    except (ValueError, OverflowError):
        raise ValidationError(
            "expected a cursor from `next_before` or an ISO-8601 date-time", path="before"
        ) from None


def _lower_function(conn: Connection, q: str) -> Any:
    """SQL lower() for matching `q`. SQLite's own lower() folds only ASCII, so for a
    non-ASCII query it gets Python's, registered on this connection."""
    if conn.dialect.name != "sqlite" or q.isascii():
        return func.lower
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    dbapi.create_function(
        "nurture_lower", 1, lambda v: v.lower() if isinstance(v, str) else v, deterministic=True
    )
    return func.nurture_lower


def live_contact(conn: Connection, contact_id: int) -> AnyRow:
    """The contact row, following merges to the survivor; NotFound otherwise."""
    current = contact_id
    for _ in range(_MAX_HOPS):
        row = conn.execute(select(t.contacts).where(t.contacts.c.id == current)).first()
        if row is None:
            break
        if row.merged_into is None:
            return row
        current = row.merged_into
    raise NotFound(f"no contact with id {contact_id}", path="contact_id")


def profile_document(conn: Connection, row: AnyRow) -> Doc:
    """The profile of a live contact row: its columns, identities, accounts and counts."""
    i, m, a, e = t.identities.c, t.account_members.c, t.accounts.c, t.events.c
    idents = conn.execute(
        select(i.kind, i.value, i.created_at)
        .where(i.contact_id == row.id)
        .order_by(i.created_at, i.kind, i.value)
    ).all()
    accounts = conn.execute(
        select(a.group_id, a.name, m.joined_at)
        .join(t.accounts, a.id == m.account_id)
        .where(m.contact_id == row.id)
        .order_by(m.joined_at, a.group_id)
    ).all()
    count = conn.execute(select(func.count()).where(e.contact_id == row.id)).scalar_one()
    merged = conn.execute(
        select(t.contacts.c.id).where(t.contacts.c.merged_into == row.id).order_by(t.contacts.c.id)
    ).scalars()
    return {
        **_summary(row),
        "country": row.country,
        "timezone": row.timezone,
        "locale": row.locale,
        "traits": row.traits or {},
        "trait_issues": row.trait_issues or {},
        "updated_at": row.updated_at,
        "user_ids": [r.value for r in idents if r.kind == _USER],
        "anonymous_ids": [r.value for r in idents if r.kind == _ANON],
        "accounts": [row_dict(r) for r in accounts],
        "event_count": int(count),
        "merged_contact_ids": list(merged),
    }


class ContactService:
    """Reads contacts and accounts."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    # -- contacts ----------------------------------------------------------------

    def search(self, q: str | None = None, *, after_id: int = 0, limit: int = 50) -> Doc:
        """Live contacts in id order, optionally matching `q`.

        `q` matches, ignoring case, part of the email, the user id or the name
        (`name`, or `first_name last_name`), part of the phone number in any
        notation, or exactly a user id (aliases too) or anonymous id.
        """
        _check_limit(limit)
        c = t.contacts.c
        query = (
            select(t.contacts)
            .where(c.merged_into.is_(None), c.id > after_id)
            .order_by(c.id)
            .limit(limit + 1)
        )
        q = _text(q, "q")
        with self.db.read() as conn:
            if q:
                query = query.where(self._matches(q, _lower_function(conn, q)))
            rows = conn.execute(query).all()
        more = len(rows) > limit
        items = [_summary(r) for r in rows[:limit]]
        return {"items": items, "next_after_id": items[-1]["id"] if more else None}

    @staticmethod
    def _matches(q: str, lower: Any) -> ColumnElement[bool]:
        c = t.contacts.c
        low = q.lower()

        def text(column: Any) -> ColumnElement[bool]:
            return lower(column).contains(low, autoescape=True)  # type: ignore[no-any-return]

        first = func.coalesce(c.traits["first_name"].as_string(), "")
        last = func.coalesce(c.traits["last_name"].as_string(), "")
        conditions = [
            text(c.email),
            text(c.user_id),
            text(c.traits["name"].as_string()),
            text(first + " " + last),
        ]
        digits = re.sub(r"\D", "", q)
        if _PHONE_LIKE.match(q) and len(digits) >= 3:
            conditions.append(c.phone.contains(digits, autoescape=True))
        i = t.identities.c
        conditions.append(
            c.id.in_(select(i.contact_id).where(i.kind.in_((_USER, _ANON)), i.value == q))
        )
        return or_(*conditions)

    def get(self, contact_id: int) -> Doc:
        """A contact's profile; a merged-away id gives the contact it was merged into."""
        with self.db.read() as conn:
            row = live_contact(conn, contact_id)
            return profile_document(conn, row)

    def lookup(
        self,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        email: str | None = None,
    ) -> Doc:
        """The profile of the contact with this user id, anonymous id or email.

        An email may belong to several contacts: the identified, most recently seen
        one is returned, the others' ids are listed in `also_matching`.
        """
        pairs = (("user_id", user_id), ("anonymous_id", anonymous_id), ("email", email))
        given = {k: text for k, v in pairs if (text := _text(v, k))}
        if len(given) != 1:
            raise ValidationError(
                "give exactly one of user_id, anonymous_id or email", path="user_id"
            )
        ((kind, value),) = given.items()
        others: list[int] = []
        with self.db.read() as conn:
            if kind == "email":
                address, reason = normalize_email(value)
                if address is None:
                    raise ValidationError(f"not an email address: {reason}", path="email")
                c = t.contacts.c
                ids = (
                    conn.execute(
                        select(c.id)
                        .where(c.email == address, c.merged_into.is_(None))
                        .order_by(c.user_id.is_(None), c.last_seen_at.desc(), c.id.desc())
                        .limit(11)
                    )
                    .scalars()
                    .all()
                )
                if not ids:
                    raise NotFound(f"no contact has the email {address}", path="email")
                found, others = ids[0], list(ids[1:])
            else:
                i = t.identities.c
                found = conn.execute(
                    select(i.contact_id).where(i.kind == kind, i.value == value)
                ).scalar()
                if found is None:
                    raise NotFound(f"no contact has the {kind} {value!r}", path=kind)
            profile = profile_document(conn, live_contact(conn, found))
        profile["also_matching"] = others
        return profile

    # -- timeline ----------------------------------------------------------------

    def timeline(
        self,
        contact_id: int,
        *,
        before: str | None = None,
        type: str | None = None,
        event: str | None = None,
        limit: int = 100,
    ) -> Doc:
        """A contact's events, newest first; `before` is the previous page's `next_before`."""
        _check_limit(limit)
        if event is not None and "\x00" in event:
            raise ValidationError("must not contain NUL characters", path="event")
        if type is not None and type not in TIMELINE_TYPES:
            raise ValidationError(f"must be one of {', '.join(TIMELINE_TYPES)}", path="type")
        e = t.events.c
        with self.db.read() as conn:
            live = live_contact(conn, contact_id).id
            query = (
                select(t.events)
                .where(e.contact_id == live)
                .order_by(e.timestamp.desc(), e.id.desc())
                .limit(limit + 1)
            )
            if before:
                moment, last_id = decode_cursor(before)
                if last_id is None:
                    query = query.where(e.timestamp < moment)
                else:  # the redundant `<=` lets the (contact_id, timestamp) index bound the scan
                    query = query.where(
                        e.timestamp <= moment,
                        or_(e.timestamp < moment, and_(e.timestamp == moment, e.id < last_id)),
                    )
            if type:
                query = query.where(e.type == type)
            if event:
                query = query.where(e.event == event)
            rows = conn.execute(query).all()
        items = [row_dict(r) for r in rows[:limit]]
        last = items[-1] if len(rows) > limit else None
        return {
            "contact_id": live,
            "items": items,
            "next_before": encode_cursor(last["timestamp"], last["id"]) if last else None,
        }

    # -- accounts ----------------------------------------------------------------

    def accounts(self, q: str | None = None, *, after_id: int = 0, limit: int = 50) -> Doc:
        """Accounts (Segment groups) in id order, optionally matching part of the
        group id or the name (ignoring case), each with its member count."""
        _check_limit(limit)
        a, m = t.accounts.c, t.account_members.c
        members = select(func.count()).where(m.account_id == a.id).scalar_subquery()
        query = (
            select(t.accounts, members.label("member_count"))
            .where(a.id > after_id)
            .order_by(a.id)
            .limit(limit + 1)
        )
        q = _text(q, "q")
        if q:
            low = q.lower()
            query = query.where(
                or_(
                    func.lower(a.group_id).contains(low, autoescape=True),
                    func.lower(a.name).contains(low, autoescape=True),
                )
            )
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        items = [row_dict(r) for r in rows[:limit]]
        return {"items": items, "next_after_id": items[-1]["id"] if len(rows) > limit else None}

    def account(self, group_id: str, *, members_after_id: int = 0, members_limit: int = 100) -> Doc:
        """One account with its traits and a page of its members (by contact id)."""
        _check_limit(members_limit)
        if "\x00" in group_id:
            raise NotFound(f"no account with group id {group_id!r}", path="group_id")
        a, m, c = t.accounts.c, t.account_members.c, t.contacts.c
        with self.db.read() as conn:
            row = conn.execute(select(t.accounts).where(a.group_id == group_id)).first()
            if row is None:
                raise NotFound(f"no account with group id {group_id!r}", path="group_id")
            count = conn.execute(select(func.count()).where(m.account_id == row.id)).scalar_one()
            members = conn.execute(
                select(t.contacts, m.joined_at)
                .join(t.account_members, m.contact_id == c.id)
                .where(m.account_id == row.id, c.id > members_after_id)
                .order_by(c.id)
                .limit(members_limit + 1)
            ).all()
        items = [{**_summary(r), "joined_at": r.joined_at} for r in members[:members_limit]]
        more = len(members) > members_limit
        return {
            **row_dict(row),
            "member_count": int(count),
            "members": items,
            "next_members_after_id": items[-1]["id"] if more else None,
        }
