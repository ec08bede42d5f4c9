"""Profiles, lookups, timelines and accounts, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from nurture.core import Nurture
from nurture.errors import NotFound, ValidationError


def at(minute: int) -> str:
    """A timestamp `minute` minutes after 2026-02-01 09:00 UTC."""
    return f"2026-02-01T{9 + minute // 60:02d}:{minute % 60:02d}:00Z"


def test_profile_after_anonymous_visitor_identifies(nurture: Nurture, send: Any) -> None:
    # Given an anonymous visitor who browses, then signs up as u1 (in a later batch),
    # with a bad timezone, and joins an account
    send(
        {"type": "page", "anonymousId": "anon-1", "name": "Pricing", "timestamp": at(0)},
        {"type": "track", "anonymousId": "anon-1", "event": "Demo Booked", "timestamp": at(1)},
    )
    send({"type": "track", "userId": "u1", "event": "Login", "timestamp": at(2)})
    send(
        {
            "type": "identify",
            "userId": "u1",
            "anonymousId": "anon-1",
            "timestamp": at(3),
            "traits": {"email": "U1@Example.com", "plan": "pro", "timezone": "Mars/Base"},
        },
        {
            "type": "group",
            "userId": "u1",
            "groupId": "acme",
            "traits": {"name": "Acme", "seats": 10},
            "timestamp": at(4),
        },
    )
    # When looking the contact up by its anonymous id
    profile = nurture.contacts.lookup(anonymous_id="anon-1")
    # Then it is the identified contact, with everything merged into it
    assert profile["user_id"] == "u1"
    assert profile["email"] == "u1@example.com"
    assert profile["traits"]["plan"] == "pro"
    assert "timezone" in profile["trait_issues"] and profile["timezone"] is None
    assert profile["user_ids"] == ["u1"] and profile["anonymous_ids"] == ["anon-1"]
    assert [a["group_id"] for a in profile["accounts"]] == ["acme"]
    assert profile["event_count"] == 5
    assert profile["first_seen_at"].isoformat() == "2026-02-01T09:00:00+00:00"
    assert profile["last_seen_at"].isoformat() == "2026-02-01T09:04:00+00:00"
    # And the anonymous contact's old id redirects to the survivor
    (tombstone,) = profile["merged_contact_ids"]
    assert nurture.contacts.get(tombstone)["id"] == profile["id"]
    # And the other lookups agree
    assert nurture.contacts.lookup(user_id="u1")["id"] == profile["id"]
    assert nurture.contacts.lookup(email="  u1@EXAMPLE.com ")["id"] == profile["id"]


def test_lookup_errors(nurture: Nurture, send: Any) -> None:
    send({"type": "track", "userId": "u1", "event": "Login"})
    # When the lookup names nothing, two things, an unknown id or a bad email
    with pytest.raises(ValidationError):
        nurture.contacts.lookup()
    with pytest.raises(ValidationError):
        nurture.contacts.lookup(user_id="u1", anonymous_id="a")
    with pytest.raises(NotFound):
        nurture.contacts.lookup(user_id="U1")  # user ids are case-sensitive
    with pytest.raises(ValidationError) as exc:
        nurture.contacts.lookup(email="not-an-email")
    # Then each is refused with the right error
    assert exc.value.path == "email"
    with pytest.raises(NotFound):
        nurture.contacts.get(999_999)


def test_lookup_by_shared_email_prefers_identified(nurture: Nurture, send: Any) -> None:
    # Given an anonymous and an identified contact with the same email
    send(
        {"type": "identify", "anonymousId": "a9", "traits": {"email": "x@example.com"}},
        {"type": "identify", "userId": "u9", "traits": {"email": "x@example.com"}},
    )
    # When looking up the email
    found = nurture.contacts.lookup(email="x@example.com")
    # Then the identified one wins and the other is listed
    assert found["user_id"] == "u9"
    assert len(found["also_matching"]) == 1
    assert nurture.contacts.get(found["also_matching"][0])["anonymous_ids"] == ["a9"]


def test_timeline_is_newest_first_and_pages_exactly(nurture: Nurture, send: Any) -> None:
    # Given 7 events, three of them at the same moment, sent out of order
    minutes = [5, 1, 3, 3, 3, 0, 9]
    send(
        *[
            {"type": "track", "userId": "u1", "event": f"E{n}", "timestamp": at(m)}
            for n, m in enumerate(minutes)
        ]
    )
    contact = nurture.contacts.lookup(user_id="u1")["id"]
    # When reading the timeline two events at a time
    seen: list[dict[str, Any]] = []
    before = None
    while True:
        page = nurture.contacts.timeline(contact, before=before, limit=2)
        seen += page["items"]
        before = page["next_before"]
        if before is None:
            break
    # Then every event comes once, newest first, ties broken by id (newest first)
    keys = [(e["timestamp"], e["id"]) for e in seen]
    assert len(seen) == 7 and len(set(keys)) == 7
    assert keys == sorted(keys, reverse=True)
    assert [e["event"] for e in seen][:2] == ["E6", "E0"]


def test_timeline_filters(nurture: Nurture, send: Any) -> None:
    send(
        {"type": "track", "userId": "u1", "event": "Login", "timestamp": at(1)},
        {"type": "track", "userId": "u1", "event": "Order Completed", "timestamp": at(2)},
        {"type": "page", "userId": "u1", "name": "Home", "timestamp": at(3)},
        {"type": "track", "userId": "u1", "event": "Login", "timestamp": at(4)},
    )
    contact = nurture.contacts.lookup(user_id="u1")["id"]
    # When filtering by type, by name, and by a point in time
    tracks = nurture.contacts.timeline(contact, type="track")["items"]
    logins = nurture.contacts.timeline(contact, event="Login")["items"]
    early = nurture.contacts.timeline(contact, before="2026-02-01T09:02:00+00:00")["items"]
    # Then only the matching events come back
    assert [e["event"] for e in tracks] == ["Login", "Order Completed", "Login"]
    assert [e["timestamp"].minute for e in logins] == [4, 1]
    assert [e["event"] for e in early] == ["Login"]
    with pytest.raises(ValidationError):
        nurture.contacts.timeline(contact, before="yesterday-ish")
    with pytest.raises(ValidationError):
        nurture.contacts.timeline(contact, type="click")


def test_accounts_list_and_detail(nurture: Nurture, send: Any) -> None:
    # Given two accounts, one with two members
    send(
        {"type": "group", "userId": "u1", "groupId": "acme", "traits": {"name": "Acme Inc"}},
        {"type": "group", "userId": "u2", "groupId": "acme", "traits": {"plan": "enterprise"}},
        {"type": "group", "userId": "u3", "groupId": "globex/eu", "traits": {"name": "Globex"}},
    )
    # When listing and searching accounts
    listed = nurture.contacts.accounts()["items"]
    searched = nurture.contacts.accounts("ACME")["items"]
    detail = nurture.contacts.account("acme", members_limit=1)
    rest = nurture.contacts.account(
        "acme", members_after_id=detail["next_members_after_id"], members_limit=1
    )
    # Then counts, traits (merged across group calls) and member pages are right
    assert [(a["group_id"], a["member_count"]) for a in listed] == [("acme", 2), ("globex/eu", 1)]
    assert [a["group_id"] for a in searched] == ["acme"]
    assert detail["traits"] == {"name": "Acme Inc", "plan": "enterprise"}
    assert detail["member_count"] == 2
    assert [m["user_id"] for m in detail["members"] + rest["members"]] == ["u1", "u2"]
    assert rest["next_members_after_id"] is None
    assert nurture.contacts.account("globex/eu")["name"] == "Globex"
    with pytest.raises(NotFound):
        nurture.contacts.account("initech")
