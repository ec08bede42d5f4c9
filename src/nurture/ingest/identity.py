"""Identity resolution for one batch of messages, inside one write transaction.

A contact is known by identities: `user_id` values (the primary one, and any
aliases) and `anonymous_id` values. For a batch we load every identity and
contact it mentions once, resolve message by message in memory (a message may
link identities that a later message in the same batch relies on), then write
the outcome with a handful of bulk statements.

The rules (DESIGN §2, docs/ingest.md "Identity"):

- userId U and anonymousId A: U's contact gets A. If A already had an anonymous
  contact, that contact is merged into U's. If A belongs to a *different*
  identified contact (a shared device), nothing is merged and the message goes to U.
- userId only: U's contact, created on first sight.
- anonymousId only: A's contact, created (anonymous) on first sight.
- alias previousId P → userId U: the contacts of P and U become one (P's merged
  into U's); if only one exists, it gets the other identity.

A merge moves events, identities and account memberships to the survivor and
combines traits (the identified contact's values win). The merged contact stays
as a tombstone pointing at the survivor; nothing is deleted or duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from nurture.contacts.profile import Profile, build_profile
from nurture.ingest.messages import Message
from nurture.store import tables as t
from nurture.store.bulk import in_list, insert_rows, list_param, one_of, update_rows

USER = "user_id"
ANON = "anonymous_id"
_CHUNK = 500


class _Queries:
    """`Resolver.prefetch`'s reads, built once per backend (they run in every ingest
    transaction), each taking its values as one list parameter."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        i, c = t.identities.c, t.contacts.c
        values = in_list(dialect, i.value, "values", String)
        self.identities = select(i.value, i.contact_id).where(i.kind == bindparam("kind"), values)
        self.contacts = select(
            c.id, c.user_id, c.first_seen_at, c.last_seen_at, c.merged_into
        ).where(in_list(dialect, c.id))


@lru_cache(maxsize=4)
def _queries(dialect: str) -> _Queries:
    return _Queries(dialect)


class ConcurrentWrite(Exception):
    """The transaction lost a race with another writer; retrying it is safe."""


@dataclass(slots=True)
class ContactState:
    key: int  # the database id, or a negative placeholder until inserted
    persisted: bool
    user_id: str | None
    first_seen: datetime
    last_seen: datetime
    # A stored contact's traits are read only when something needs them (identify,
    # merge); most messages only move first/last seen.
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    # Timezone and locale stored before this batch: kept when they came from a
    # message's context and a later identify says nothing about them.
    stored_timezone: str | None = None
    stored_locale: str | None = None
    dirty: bool = False
    traits_dirty: bool = False
    user_id_dirty: bool = False
    merged_into: int | None = None


@dataclass(slots=True)
class PendingMerge:
    loser: int
    winner: int
    reason: str
    message_id: str


@dataclass
class Resolver:
    """Resolves the contacts of one batch; `flush()` writes the result."""

    conn: Connection
    now: datetime
    default_region: str | None = None
    contacts: dict[int, ContactState] = field(default_factory=dict)
    ids: dict[tuple[str, str], int] = field(default_factory=dict)
    new_ids: list[tuple[str, str]] = field(default_factory=list)
    merges: list[PendingMerge] = field(default_factory=list)
    # Contacts merged into others by this batch (written by flush): now tombstones.
    merged: list[int] = field(default_factory=list)
    # Contacts created or merged into by this batch: evaluated on everything next time.
    renewed: set[int] = field(default_factory=set)
    _next_key: int = -1
    _real: dict[int, int] = field(default_factory=dict)

    # -- loading ---------------------------------------------------------------

    def prefetch(self, messages: list[Message]) -> None:
        """Load every identity and contact the batch mentions. No row locks: every
        writer of identities and contacts holds `Database.lock_identities` already."""
        wanted: dict[str, set[str]] = {USER: set(), ANON: set()}
        for m in messages:
            if m.user_id:
                wanted[USER].add(m.user_id)
            if m.anonymous_id:
                wanted[ANON].add(m.anonymous_id)
            if m.previous_id:
                wanted[USER].add(m.previous_id)
                wanted[ANON].add(m.previous_id)
        q = _queries(self.conn.dialect.name)
        contact_ids: set[int] = set()
        for kind, values in wanted.items():
            ordered = sorted(values)
            for n in range(0, len(ordered), _CHUNK):
                values_ = list_param(q.dialect, ordered[n : n + _CHUNK])
                rows = self.conn.execute(q.identities, {"kind": kind, "values": values_})
                for value, contact_id in rows:
                    self.ids[(kind, value)] = contact_id
                    contact_ids.add(contact_id)
        self._load_contacts(sorted(contact_ids))
        # An identity whose contact vanished meanwhile (erased by a concurrent request on
        # PostgreSQL) is treated as unknown; storing it again then fails on its key and
        # the writer retries the whole batch against the new state.
        for ident, contact_id in list(self.ids.items()):
            if contact_id not in self.contacts:
                del self.ids[ident]
        self._load_traits(messages)

    def _load_traits(self, messages: list[Message]) -> None:
        """Read, in one go, the traits of stored contacts that identify messages change."""
        ids = set()
        for m in messages:
            if m.type == "identify" and m.traits:
                for kind, value in ((USER, m.user_id), (ANON, m.anonymous_id)):
                    key = self.ids.get((kind, value)) if value else None
                    if key is not None:
                        ids.add(key)
        c = t.contacts.c
        ordered = sorted(ids)
        for n in range(0, len(ordered), _CHUNK):
            rows = self.conn.execute(
                select(c.id, c.traits, c.timezone, c.locale).where(
                    one_of(self.conn, c.id, ordered[n : n + _CHUNK])
                )
            )
            for row in rows:
                self._set_loaded(self.contacts[row.id], row.traits, row.timezone, row.locale)

    @staticmethod
    def _set_loaded(
        state: ContactState, traits: Any, timezone: str | None, locale: str | None
    ) -> None:
        state.traits = dict(traits or {})
        state.stored_timezone, state.stored_locale = timezone, locale

    def _load_contacts(self, ids: list[int]) -> None:
        q = _queries(self.conn.dialect.name)
        for n in range(0, len(ids), _CHUNK):
            params = {"ids": list_param(q.dialect, ids[n : n + _CHUNK])}
            for row in self.conn.execute(q.contacts, params):
                if row.merged_into is not None:
                    # Identities always point at live contacts; this one was merged by
                    # a transaction that committed after our identity read. Start over.
                    raise ConcurrentWrite(f"contact {row.id} was merged meanwhile")
                self.contacts[row.id] = ContactState(
                    key=row.id,
                    persisted=True,
                    user_id=row.user_id,
                    first_seen=row.first_seen_at,
                    last_seen=row.last_seen_at,
                )

    def _traits(self, state: ContactState) -> dict[str, Any]:
        """The contact's traits, read from the store on first use."""
        if state.traits is None:
            if state.persisted:
                c = t.contacts.c
                row = self.conn.execute(
                    select(c.traits, c.timezone, c.locale).where(c.id == state.key)
                ).one()
                self._set_loaded(state, row.traits, row.timezone, row.locale)
            else:
                state.traits = {}
        assert state.traits is not None
        return state.traits

    # -- resolving ---------------------------------------------------------------

    def find(self, key: int) -> int:
        """The live contact a key ends up at after merges."""
        state = self.contacts[key]
        while state.merged_into is not None:
            state = self.contacts[state.merged_into]
        return state.key

    def _lookup(self, kind: str, value: str | None) -> int | None:
        if value is None:
            return None
        key = self.ids.get((kind, value))
        return None if key is None else self.find(key)

    def _new_contact(self, user_id: str | None, at: datetime) -> int:
        key = self._next_key
        self._next_key -= 1
        self.contacts[key] = ContactState(
            key=key,
            persisted=False,
            user_id=user_id,
            first_seen=at,
            last_seen=at,
            traits={},
            dirty=True,
            traits_dirty=True,
        )
        return key

    def _attach(self, kind: str, value: str, key: int) -> None:
        if (kind, value) not in self.ids:
            self.ids[(kind, value)] = key
            self.new_ids.append((kind, value))

    def resolve(self, m: Message) -> int:
        """The contact key this message belongs to, linking identities on the way."""
        key = self._alias(m) if m.type == "alias" else self._identify(m)
        state = self.contacts[key]
        if m.timestamp > state.last_seen:
            state.last_seen = m.timestamp
            state.dirty = True
        if m.timestamp < state.first_seen:
            state.first_seen = m.timestamp
            state.dirty = True
        return key

    def _identify(self, m: Message) -> int:
        u, a = m.user_id, m.anonymous_id
        cu, ca = self._lookup(USER, u), self._lookup(ANON, a)
        if u is None:
            assert a is not None  # validation guarantees one of them
            if ca is None:
                ca = self._new_contact(None, m.timestamp)
                self._attach(ANON, a, ca)
            return ca
        if cu is None:
            if ca is not None and self.contacts[ca].user_id is None:
                state = self.contacts[ca]  # the anonymous visitor identifies
                state.user_id, state.user_id_dirty, state.dirty = u, True, True
                self._attach(USER, u, ca)
                return ca
            cu = self._new_contact(u, m.timestamp)
            self._attach(USER, u, cu)
            if a is not None and ca is None:
                self._attach(ANON, a, cu)
            return cu
        if a is not None:
            if ca is None:
                self._attach(ANON, a, cu)
            elif ca != cu and self.contacts[ca].user_id is None:
                return self._merge(ca, cu, "identify", m.message_id)
        return cu

    def _alias(self, m: Message) -> int:
        assert m.previous_id is not None and m.user_id is not None
        p, u = m.previous_id, m.user_id
        cp = self._lookup(USER, p) or self._lookup(ANON, p)
        cu = self._lookup(USER, u)
        if cp is None and cu is None:
            cu = self._new_contact(u, m.timestamp)
            self._attach(USER, u, cu)
            self._attach(USER, p, cu)
            self._attach(ANON, p, cu)
            return cu
        if cp is None:
            assert cu is not None
            self._attach(USER, p, cu)
            self._attach(ANON, p, cu)
            return cu
        if cu is None:
            state = self.contacts[cp]
            if state.user_id is None:
                state.user_id, state.user_id_dirty, state.dirty = u, True, True
            self._attach(USER, u, cp)
            return cp
        if cp != cu:
            return self._merge(cp, cu, "alias", m.message_id)
        return cu

    def _merge(self, loser: int, winner: int, reason: str, message_id: str) -> int:
        """Merge two live contacts; `winner`'s traits take precedence. Returns the survivor.

        When the winner was created in this very batch and the loser is an
        anonymous contact already stored, the stored row survives instead (it
        takes the winner's user id): fewer rows to move, same outcome.
        """
        lose, win = self.contacts[loser], self.contacts[winner]
        traits = {**self._traits(lose), **self._traits(win)}
        if not win.persisted and lose.persisted and lose.user_id is None:
            lose, win = win, lose
            win.user_id, win.user_id_dirty = lose.user_id, True
            lose.user_id = None
        win.traits = traits
        win.first_seen = min(win.first_seen, lose.first_seen)
        win.last_seen = max(win.last_seen, lose.last_seen)
        win.context = win.context or lose.context
        win.dirty = win.traits_dirty = True
        lose.merged_into = win.key
        for ident, key in self.ids.items():
            if key == lose.key:
                self.ids[ident] = win.key
        if lose.persisted:
            self.merges.append(PendingMerge(lose.key, win.key, reason, message_id))
        return win.key

    def apply_traits(
        self, key: int, traits: dict[str, Any], context: dict[str, Any] | None
    ) -> None:
        """Shallow-merge identify traits; a trait sent as null is removed."""
        state = self.contacts[key]
        current = self._traits(state)
        for name, value in traits.items():
            if value is None:
                current.pop(name, None)
            else:
                current[name] = value
        if context:
            state.context = context
        state.dirty = state.traits_dirty = True

    # -- writing -----------------------------------------------------------------

    def real_id(self, key: int) -> int:
        """The database id of the live contact behind `key` (after `flush_contacts`)."""
        live = self.find(key)
        return live if live > 0 else self._real[live]

    def flush_contacts(self) -> None:
        """Insert new contacts, apply merges, store identities and contact updates."""
        self._insert_new_contacts()
        for merge in self.merges:
            self._apply_merge(merge)
        if self.new_ids:
            rows = [
                {
                    "kind": k,
                    "value": v,
                    "contact_id": self.real_id(self.ids[(k, v)]),
                    "created_at": self.now,
                }
                for k, v in self.new_ids
            ]
            insert_rows(self.conn, t.identities, rows)
        self._update_contacts()

    def _profile_columns(self, state: ContactState) -> dict[str, Any]:
        traits = self._traits(state)
        if not traits and not state.context:
            profile = Profile()
        else:
            profile = build_profile(
                traits, context=state.context, default_region=self.default_region
            )
        if "timezone" not in traits and profile.timezone is None:
            profile.timezone = state.stored_timezone
        if "locale" not in traits and profile.locale is None:
            profile.locale = state.stored_locale
        return {
            "traits": traits,
            "trait_issues": profile.issues,
            "email": profile.email,
            "phone": profile.phone,
            "country": profile.country,
            "timezone": profile.timezone,
            "locale": profile.locale,
        }

    def _insert_new_contacts(self) -> None:
        new = [s for s in self.contacts.values() if not s.persisted and s.merged_into is None]
        if not new:
            return
        rows = []
        for s in new:
            row = self._profile_columns(s)
            row.update(
                user_id=s.user_id,
                first_seen_at=s.first_seen,
                last_seen_at=s.last_seen,
                created_at=self.now,
                updated_at=self.now,
            )
            rows.append(row)
        for s, row, new_id in zip(new, rows, allocate_ids(self.conn, len(rows)), strict=True):
            row["id"] = new_id
            self._real[s.key] = new_id
            self.renewed.add(new_id)
        insert_rows(self.conn, t.contacts, rows)

    def _apply_merge(self, merge: PendingMerge) -> None:
        into = self.real_id(merge.winner)
        loser = merge.loser
        self.merged.append(loser)
        self.renewed.add(into)
        self.conn.execute(
            update(t.events).where(t.events.c.contact_id == loser).values(contact_id=into)
        )
        self.conn.execute(
            update(t.identities).where(t.identities.c.contact_id == loser).values(contact_id=into)
        )
        m = t.account_members.c
        self.conn.execute(
            delete(t.account_members).where(
                and_(
                    m.contact_id == loser,
                    m.account_id.in_(select(m.account_id).where(m.contact_id == into)),
                )
            )
        )
        self.conn.execute(
            update(t.account_members).where(m.contact_id == loser).values(contact_id=into)
        )
        c = t.contacts.c
        self.conn.execute(update(t.contacts).where(c.merged_into == loser).values(merged_into=into))
        self.conn.execute(
            update(t.contacts)
            .where(c.id == loser)
            .values(
                merged_into=into,
                user_id=None,
                traits={},
                trait_issues={},
                email=None,
                phone=None,
                updated_at=self.now,
            )
        )
        self.conn.execute(
            insert(t.contact_merges).values(
                from_contact_id=loser,
                into_contact_id=into,
                reason=merge.reason,
                message_id=merge.message_id,
                merged_at=self.now,
            )
        )

    def _update_contacts(self) -> None:
        """Two bulk updates: contacts whose traits changed, and contacts that were
        only seen (first/last seen moved)."""
        seen: list[dict[str, Any]] = []
        full: list[dict[str, Any]] = []
        for s in self.contacts.values():
            if not (s.persisted and s.merged_into is None and s.dirty):
                continue
            row = {
                "_key": s.key,
                "first_seen_at": s.first_seen,
                "last_seen_at": s.last_seen,
                "updated_at": self.now,
            }
            if s.traits_dirty or s.user_id_dirty:
                row.update(self._profile_columns(s), user_id=s.user_id)
                full.append(row)
            else:
                seen.append(row)
        update_rows(self.conn, t.contacts, "id", seen)
        update_rows(self.conn, t.contacts, "id", full)


def allocate_ids(conn: Connection, count: int) -> list[int]:
    """Ids for `count` new contacts, known before the insert so that one bulk insert
    can store them (RETURNING with row order forces row-at-a-time inserts on SQLite).

    PostgreSQL draws them from the column's sequence. On SQLite the caller holds the
    single write lock; ids continue after the highest ever used, erased ones
    included, so an id never names two people."""
    if count == 0:
        return []
    if conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql(
            "SELECT nextval(pg_get_serial_sequence('contacts', 'id')) "
            "FROM generate_series(1, %(n)s)",
            {"n": count},
        )
        return [int(r[0]) for r in rows]
    top = conn.execute(
        select(
            func.max(t.contacts.c.id), select(func.max(t.erasures.c.contact_id)).scalar_subquery()
        )
    ).one()
    start = max(top[0] or 0, top[1] or 0) + 1
    return list(range(start, start + count))


def lookup_contact_id(
    conn: Connection, *, user_id: str | None, anonymous_id: str | None
) -> int | None:
    """The live contact id for a user id or anonymous id, or None."""
    conds = []
    if user_id:
        conds.append(and_(t.identities.c.kind == USER, t.identities.c.value == user_id))
    if anonymous_id:
        conds.append(and_(t.identities.c.kind == ANON, t.identities.c.value == anonymous_id))
    if not conds:
        return None
    found = conn.execute(select(t.identities.c.contact_id).where(or_(*conds)).limit(1)).scalar()
    return int(found) if found is not None else None
