"""Personal-data requests: GDPR/CCPA export and erasure, suppression of erased addresses.

Export (GDPR art. 15/20) gathers everything stored about a contact, its merged-away
tombstones included, into one JSON-ready document.

Erasure (GDPR art. 17) deletes everything about a contact in one transaction and
leaves only salted hashes of its email and phone in `suppressions`, so messaging
can refuse to write to the person again without knowing who they were.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from sqlalchemy import Connection, Text, and_, cast, delete, func, insert, or_, select
from sqlalchemy.sql.elements import ColumnElement

from nurture.clock import Clock
from nurture.contacts.profile import normalize_email, normalize_phone
from nurture.contacts.service import AnyRow, Doc, live_contact, profile_document, row_dict
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import upsert_rows

EXPORT_FORMAT = "nurture.contact-export/1"


def suppression_hash(salt: str, address: str) -> str:
    """The key of an address in `suppressions`: sha256(salt + normalised address)."""
    return hashlib.sha256((salt + address).encode()).hexdigest()


def _contains(conn: Connection, column: Any, needle: str) -> ColumnElement[bool]:
    """Case-sensitive substring test. Not LIKE: SQLite's LIKE ignores ASCII case,
    which would let erasing user "U1" delete input of user "u1"."""
    if conn.dialect.name == "postgresql":
        return func.strpos(column, needle) > 0
    return func.instr(column, needle) > 0


class PrivacyService:
    """GDPR/CCPA export and erasure of a contact, and suppression of erased addresses."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._salt: str | None = None

    def export(self, contact_id: int) -> Doc:
        """Everything stored about one contact, as one JSON-ready document (GDPR art. 15/20)."""
        with self.db.read() as conn:
            if conn.dialect.name == "postgresql":  # one snapshot for every query below
                conn.execution_options(isolation_level="REPEATABLE READ")
            row = live_contact(conn, contact_id)
            ids, needles, _ = self._personal_keys(conn, row)
            e, a, m = t.events.c, t.accounts.c, t.account_members.c
            cm, c, r = t.contact_merges.c, t.contacts.c, t.rejected_events.c
            events = conn.execute(
                select(t.events).where(e.contact_id.in_(ids)).order_by(e.timestamp, e.id)
            ).all()
            accounts = conn.execute(
                select(t.accounts, m.joined_at)
                .join(t.account_members, m.account_id == a.id)
                .where(m.contact_id.in_(ids))
                .order_by(a.id)
            ).all()
            merges = conn.execute(
                select(t.contact_merges)
                .where(or_(cm.into_contact_id.in_(ids), cm.from_contact_id.in_(ids)))
                .order_by(cm.id)
            ).all()
            tombstones = conn.execute(
                select(c.id, c.created_at, c.first_seen_at, c.last_seen_at, c.updated_at)
                .where(c.merged_into == row.id)
                .order_by(c.id)
            ).all()
            rejected = (
                conn.execute(
                    select(t.rejected_events)
                    .where(self._raw_mentions(conn, needles))
                    .order_by(r.id)
                ).all()
                if needles
                else []
            )
            profile = profile_document(conn, row)
        return {
            "format": EXPORT_FORMAT,
            "exported_at": self.clock.now(),
            "contact": profile,
            "identities": [{"kind": "user_id", "value": v} for v in profile["user_ids"]]
            + [{"kind": "anonymous_id", "value": v} for v in profile["anonymous_ids"]],
            "traits": profile["traits"],
            "events": [row_dict(x) for x in events],
            "accounts": [row_dict(x) for x in accounts],
            "merges": [row_dict(x) for x in merges],
            "merged_contacts": [row_dict(x) for x in tombstones],
            "rejected_input": [row_dict(x) for x in rejected],
        }

    def erase(self, contact_id: int) -> Doc:
        """Delete a contact and everything about it, in one transaction (GDPR art. 17).

        Its email and phone stay only as salted hashes in `suppressions` (reason
        "erased", replacing any earlier reason and its detail), and an
        `erasures` row records that it happened (no personal data). Erasing an
        unknown or already erased contact raises NotFound.
        """
        salt = self._get_salt()
        now = self.clock.now()
        with self.db.write() as conn:
            self.db.lock_identities(conn)  # no ingest resolves this person meanwhile
            row = live_contact(conn, contact_id)
            ids, needles, addresses = self._personal_keys(conn, row)
            e, i, m, cm = t.events.c, t.identities.c, t.account_members.c, t.contact_merges.c

            def gone(statement: Any) -> int:
                return int(conn.execute(statement).rowcount or 0)

            counts = {
                "events_deleted": gone(delete(t.events).where(e.contact_id.in_(ids))),
                "identities_deleted": gone(delete(t.identities).where(i.contact_id.in_(ids))),
                "memberships_deleted": gone(delete(t.account_members).where(m.contact_id.in_(ids))),
                "merges_deleted": gone(
                    delete(t.contact_merges).where(
                        or_(cm.into_contact_id.in_(ids), cm.from_contact_id.in_(ids))
                    )
                ),
                "rejected_deleted": gone(
                    delete(t.rejected_events).where(self._raw_mentions(conn, needles))
                )
                if needles
                else 0,
                "contacts_deleted": gone(delete(t.contacts).where(t.contacts.c.id.in_(ids))),
            }
            # Provider feedback about the person's messages, or naming their address (a
            # bounce, a reply: it holds the address, diagnostics, IPs), before the messages.
            conn.execute(delete(t.message_feedback).where(self._feedback_of(conn, ids, addresses)))
            # What evaluation derived from the person (memberships, stages, scores, their
            # histories, a pending evaluation), the person's consents, and their journeys
            # (enrolments, steps run, messages not yet sent, queued events).
            for table in (
                *t.EVALUATION_BY_CONTACT,
                t.consents,
                *t.MESSAGES_BY_CONTACT,
                *t.JOURNEYS_BY_CONTACT,
                *t.ANALYTICS_BY_CONTACT,  # clv predictions (analytics/clv_store.py)
            ):
                conn.execute(delete(table).where(table.c.contact_id.in_(ids)))
            # An address suppressed already (bounced, STOP, manual) becomes "erased" too:
            # an erased person's address must never be lifted, and the old row's detail
            # (a bounce diagnostic, a reply) and date are history of the person.
            rows = [
                {
                    "hash": suppression_hash(salt, value),
                    "kind": kind,
                    "reason": "erased",
                    "created_at": now,
                    "detail": None,
                }
                for kind, values in addresses.items()
                for value in values
            ]
            upsert_rows(conn, t.suppressions, rows, ["hash"])
            conn.execute(
                insert(t.erasures).values(
                    contact_id=row.id, events_deleted=counts["events_deleted"], erased_at=now
                )
            )
        return {"contact_id": row.id, **counts, "suppressed": [r["kind"] for r in rows]}

    def is_suppressed(
        self, email: str | None = None, phone: str | None = None, *, region: str | None = None
    ) -> bool:
        """Whether messaging must not write to this email or phone (erased, bounced, ...).

        Addresses are normalised as profiles normalise them, so `Alice@Example.COM`
        and `alice@example.com` are the same; `region` reads national phone numbers.
        """
        salt = self._get_salt()
        hashes = []
        if email:
            address, _ = normalize_email(email.strip())
            if address:
                hashes.append(suppression_hash(salt, address))
        if phone:
            number, _ = normalize_phone(phone.strip(), region)
            if number:
                hashes.append(suppression_hash(salt, number))
        if not hashes:
            return False
        with self.db.read() as conn:
            found = conn.execute(
                select(t.suppressions.c.hash).where(t.suppressions.c.hash.in_(hashes)).limit(1)
            ).first()
        return found is not None

    def _get_salt(self) -> str:
        if self._salt is None:
            salt = self.db.meta_value("salt")
            if salt is None:
                raise RuntimeError("the database has no salt; run migrations first")
            self._salt = salt
        return self._salt

    @staticmethod
    def _personal_keys(conn: Connection, row: AnyRow) -> tuple[list[int], list[str], Doc]:
        """The ids of the contact and its tombstones; the strings (as they appear in JSON)
        that identify the person in raw rejected input; and every normalised email and
        phone it ever gave in an identify call, by kind."""
        c, i, e = t.contacts.c, t.identities.c, t.events.c
        ids = [row.id, *conn.execute(select(c.id).where(c.merged_into == row.id)).scalars()]
        values = set(conn.execute(select(i.value).where(i.contact_id.in_(ids))).scalars())
        addresses: dict[str, set[str]] = {"email": set(), "phone": set()}
        given = conn.execute(
            select(e.traits).where(e.contact_id.in_(ids), e.type == "identify")
        ).scalars()
        for traits in [row.traits or {}, *given]:
            for key in ("email", "phone"):
                value = traits.get(key) if isinstance(traits, dict) else None
                if not isinstance(value, str | int) or isinstance(value, bool):
                    continue
                values.add(str(value))
                if key == "email":
                    normalized, _ = normalize_email(str(value))
                else:
                    normalized, _ = normalize_phone(str(value), row.country)
                if normalized:
                    addresses[key].add(normalized)
        for key, column in (("email", row.email), ("phone", row.phone)):
            if column:
                addresses[key].add(column)
        values.update(v for v in (row.user_id, row.email, row.phone) if v)
        needles = {orjson.dumps(v).decode() for v in values if v.strip()}
        # Numeric ids arrive unquoted in compact JSON (`"userId":123`); a bare `:123`
        # would also match unrelated numbers, so the field name is part of the needle.
        needles.update(
            f'"{field}":{v}{end}'
            for v in values
            if v.isdigit()
            for field in ("userId", "anonymousId", "previousId", "phone")
            for end in ",}"
        )
        return ids, sorted(needles), {k: sorted(v) for k, v in addresses.items()}

    @staticmethod
    def _feedback_of(conn: Connection, ids: list[int], addresses: Doc) -> ColumnElement[bool]:
        """Feedback rows about the contacts' messages, or whose payload names one of
        their addresses as a JSON string (quoted, so ann@x.com does not find joann@x.com)."""
        f, o = t.message_feedback.c, t.outbox.c
        theirs = o.contact_id.in_(ids)
        tests: list[ColumnElement[bool]] = [
            f.outbox_id.in_(select(o.id).where(theirs)),
            f.provider_id.in_(select(o.provider_id).where(theirs, o.provider_id.is_not(None))),
        ]
        text = func.lower(cast(f.payload, Text))
        for values in addresses.values():
            tests += [_contains(conn, text, orjson.dumps(v.lower()).decode()) for v in values]
        return or_(*tests)

    @staticmethod
    def _raw_mentions(conn: Connection, needles: list[str]) -> ColumnElement[bool]:
        raw = t.rejected_events.c.raw
        tests = [_contains(conn, raw, n) for n in needles]
        # Emails are matched ignoring case, as they are delivered.
        tests += [_contains(conn, func.lower(raw), n.lower()) for n in needles if "@" in n]
        return and_(raw.is_not(None), or_(*tests))
