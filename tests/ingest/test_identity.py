"""Identity resolution: anonymous → identified, aliases, merges; nothing lost or doubled."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from nurture.core import Nurture
from nurture.store import tables as t


def live_contacts(nurture: Nurture) -> dict[int, dict[str, Any]]:
    with nurture.db.read() as conn:
        rows = conn.execute(select(t.contacts).where(t.contacts.c.merged_into.is_(None)))
        return {r.id: dict(r._mapping) for r in rows}


def contact_of(nurture: Nurture, kind: str, value: str) -> int:
    with nurture.db.read() as conn:
        found = conn.execute(
            select(t.identities.c.contact_id).where(
                t.identities.c.kind == kind, t.identities.c.value == value
            )
        ).scalar_one()
    return int(found)


def events_by_contact(nurture: Nurture) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    with nurture.db.read() as conn:
        for mid, cid in conn.execute(select(t.events.c.message_id, t.events.c.contact_id)):
            out[cid].append(mid)
    return out


def test_anonymous_activity_joins_the_contact_on_identify(nurture: Nurture) -> None:
    # Given page views by an anonymous visitor
    nurture.ingest(
        [
            {"type": "page", "anonymousId": "anon-1", "name": "Pricing", "messageId": "p1"},
            {"type": "page", "anonymousId": "anon-1", "name": "Signup", "messageId": "p2"},
        ]
    )
    # When the visitor signs up and is identified
    nurture.ingest(
        [
            {
                "type": "identify",
                "userId": "user-1",
                "anonymousId": "anon-1",
                "messageId": "i1",
                "traits": {"email": "Ada@Example.COM", "name": "Ada"},
            }
        ]
    )
    # Then one contact holds all three events, with both identities
    (contact,) = live_contacts(nurture).values()
    assert contact["user_id"] == "user-1" and contact["email"] == "ada@example.com"
    assert sorted(events_by_contact(nurture)[contact["id"]]) == ["i1", "p1", "p2"]
    assert contact_of(nurture, "anonymous_id", "anon-1") == contact["id"]


def test_identify_merges_an_anonymous_contact_into_a_known_user(nurture: Nurture) -> None:
    # Given a known user and, separately, a new anonymous session on another device
    nurture.ingest(
        [
            {
                "type": "identify",
                "userId": "u",
                "messageId": "i1",
                "traits": {"plan": "pro", "name": "Known"},
                "timestamp": "2026-02-01T00:00:00Z",
            }
        ]
    )
    nurture.ingest(
        [
            {
                "type": "identify",
                "anonymousId": "tablet",
                "messageId": "i2",
                "traits": {"name": "Guessed", "color": "blue"},
                "timestamp": "2026-01-01T00:00:00Z",
            },
            {
                "type": "track",
                "anonymousId": "tablet",
                "event": "Viewed",
                "messageId": "t1",
                "timestamp": "2026-02-15T00:00:00Z",
            },
        ]
    )
    assert len(live_contacts(nurture)) == 2
    # When the tablet logs in
    nurture.ingest(
        [
            {
                "type": "track",
                "userId": "u",
                "anonymousId": "tablet",
                "event": "Logged In",
                "messageId": "t2",
            }
        ]
    )
    # Then the anonymous contact is merged: events moved, traits combined (the user's win)
    contacts = live_contacts(nurture)
    (survivor,) = contacts.values()
    assert survivor["traits"] == {"plan": "pro", "name": "Known", "color": "blue"}
    assert sorted(events_by_contact(nurture)[survivor["id"]]) == ["i1", "i2", "t1", "t2"]
    assert survivor["first_seen_at"].isoformat() == "2026-01-01T00:00:00+00:00"
    with nurture.db.read() as conn:
        merges = conn.execute(select(t.contact_merges)).all()
    assert len(merges) == 1 and merges[0].into_contact_id == survivor["id"]


def test_a_shared_device_does_not_merge_two_people(nurture: Nurture) -> None:
    # Given two people who logged in on the same browser, one after the other
    nurture.ingest(
        [
            {"type": "identify", "userId": "alice", "anonymousId": "family-pc", "messageId": "1"},
            {"type": "identify", "userId": "bob", "anonymousId": "family-pc", "messageId": "2"},
            {"type": "track", "userId": "bob", "event": "Bought", "messageId": "3"},
        ]
    )
    # Then they stay two contacts; bob's events are bob's
    contacts = live_contacts(nurture)
    assert sorted(c["user_id"] for c in contacts.values()) == ["alice", "bob"]
    bob = contact_of(nurture, "user_id", "bob")
    assert sorted(events_by_contact(nurture)[bob]) == ["2", "3"]


def test_alias_merges_two_identified_contacts_with_their_accounts(nurture: Nurture) -> None:
    # Given one person known under an old and a new user id, each in an account
    nurture.ingest(
        [
            {
                "type": "identify",
                "userId": "old-id",
                "traits": {"email": "p@example.com"},
                "messageId": "1",
            },
            {
                "type": "group",
                "userId": "old-id",
                "groupId": "acme",
                "messageId": "2",
                "traits": {"name": "Acme"},
            },
            {"type": "group", "userId": "new-id", "groupId": "acme", "messageId": "3"},
            {"type": "group", "userId": "new-id", "groupId": "globex", "messageId": "4"},
        ]
    )
    # When an alias links them
    nurture.ingest(
        [{"type": "alias", "previousId": "old-id", "userId": "new-id", "messageId": "5"}]
    )
    # Then one contact remains, reachable by both ids, with every event and membership once
    (contact,) = live_contacts(nurture).values()
    assert contact["user_id"] == "new-id" and contact["email"] == "p@example.com"
    assert contact_of(nurture, "user_id", "old-id") == contact["id"]
    assert sorted(events_by_contact(nurture)[contact["id"]]) == ["1", "2", "3", "4", "5"]
    with nurture.db.read() as conn:
        members = conn.execute(select(t.account_members.c.contact_id)).scalars().all()
        account = conn.execute(select(t.accounts).where(t.accounts.c.group_id == "acme")).one()
    assert sorted(members) == [contact["id"], contact["id"]]
    assert account.name == "Acme"


def test_bad_reserved_traits_are_kept_and_flagged(nurture: Nurture) -> None:
    result = nurture.ingest(
        [
            {
                "type": "identify",
                "userId": "u",
                "messageId": "i",
                "traits": {
                    "email": "not-an-email",
                    "phone": "12",
                    "timezone": "Mars/Olympus",
                    "locale": "xx-YY-ZZ",
                    "country": "Germany",
                },
            }
        ]
    )
    assert result.accepted == 1
    (c,) = live_contacts(nurture).values()
    assert c["traits"]["email"] == "not-an-email" and c["email"] is None
    assert set(c["trait_issues"]) == {"email", "phone", "timezone", "locale", "country"}
    assert "IANA" in c["trait_issues"]["timezone"]


def test_reserved_traits_are_normalised(nurture: Nurture) -> None:
    nurture.ingest(
        [
            {
                "type": "identify",
                "userId": "u",
                "messageId": "i",
                "traits": {
                    "email": "Jo@Example.org",
                    "phone": "030 901820",
                    "country": "de",
                    "timezone": "Europe/Berlin",
                    "locale": "pt_br",
                },
            }
        ]
    )
    (c,) = live_contacts(nurture).values()
    assert (c["email"], c["phone"], c["country"], c["timezone"], c["locale"]) == (
        "jo@example.org",
        "+4930901820",
        "DE",
        "Europe/Berlin",
        "pt-BR",
    )
    assert c["trait_issues"] == {}


def test_null_trait_removes_it(nurture: Nurture) -> None:
    nurture.ingest([{"type": "identify", "userId": "u", "traits": {"a": 1, "b": 2}}])
    nurture.ingest([{"type": "identify", "userId": "u", "traits": {"a": None, "c": 3}}])
    (c,) = live_contacts(nurture).values()
    assert c["traits"] == {"b": 2, "c": 3}


# -- the invariant, under random interleavings ----------------------------------------------

USERS = ["u0", "u1", "u2"]
ANONS = ["a0", "a1", "a2"]
TRAIT_KEYS = ["k0", "k1", "k2", "k3"]

_op = st.one_of(
    st.tuples(
        st.just("identify"),
        st.sampled_from([*USERS, None]),
        st.sampled_from([*ANONS, None]),
        st.dictionaries(st.sampled_from(TRAIT_KEYS), st.integers(0, 9), max_size=2),
    ),
    st.tuples(
        st.just("track"),
        st.sampled_from([*USERS, None]),
        st.sampled_from([*ANONS, None]),
        st.just({}),
    ),
    st.tuples(
        st.just("alias"),
        st.sampled_from(USERS),
        st.sampled_from([*USERS, *ANONS]),
        st.just({}),
    ),
)
_counter = itertools.count()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=st.lists(_op, min_size=1, max_size=25),
    cuts=st.lists(st.integers(1, 6), max_size=8),
    resend=st.booleans(),
)
def test_merges_never_lose_or_duplicate_events_or_traits(
    nurture: Nurture, ops: list[Any], cuts: list[int], resend: bool
) -> None:
    # Given a random sequence of identify/track/alias calls over a few identities
    # (namespaced per example so that examples share one database)
    ns = f"x{next(_counter)}-"
    messages: list[dict[str, Any]] = []
    for i, (kind, user, anon, traits) in enumerate(ops):
        if kind != "alias" and user is None and anon is None:
            anon = ANONS[0]
        m: dict[str, Any] = {"type": kind, "messageId": f"{ns}{i}"}
        if kind == "alias":
            m.update(userId=ns + user, previousId=ns + anon)
            if user == anon:
                continue
        else:
            if user:
                m["userId"] = ns + user
            if anon:
                m["anonymousId"] = ns + anon
        if kind == "identify":
            m["traits"] = traits
        if kind == "track":
            m["event"] = "E"
        messages.append(m)
    # When they arrive in random batches (and possibly all over again, as a retry)
    batches, start = [], 0
    for size in [*cuts, len(messages)]:
        if start >= len(messages):
            break
        batches.append(messages[start : start + size])
        start += size
    if resend:
        batches.append(messages)
    for batch in batches:
        nurture.ingest(batch)

    # Then every message is stored exactly once, on a live contact ...
    with nurture.db.read() as conn:
        rows = conn.execute(
            select(t.events.c.message_id, t.events.c.contact_id, t.contacts.c.merged_into)
            .join(t.contacts, t.contacts.c.id == t.events.c.contact_id)
            .where(t.events.c.message_id.like(f"{ns}%"))
        ).all()
        contacts = {
            r.id: r
            for r in conn.execute(
                select(t.contacts.c.id, t.contacts.c.traits, t.contacts.c.merged_into)
            )
        }
    assert sorted(r.message_id for r in rows) == sorted(m["messageId"] for m in messages)
    assert all(r.merged_into is None for r in rows)
    where = {r.message_id: r.contact_id for r in rows}
    # ... that is the contact its identity resolves to now
    expected_keys: dict[int, set[str]] = defaultdict(set)
    for m in messages:
        if m.get("userId"):
            owner = contact_of(nurture, "user_id", m["userId"])
        else:
            owner = contact_of(nurture, "anonymous_id", m["anonymousId"])
        assert where[m["messageId"]] == owner, m
        assert contacts[owner].merged_into is None
        expected_keys[owner] |= set(m.get("traits", {}))
    # ... and every trait ever identified is on that contact
    for owner, keys in expected_keys.items():
        assert keys <= set(contacts[owner].traits), (owner, keys, contacts[owner].traits)
