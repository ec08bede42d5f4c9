"""The rules docs/ingest.md states in prose hold: the identity tables, merges, traits and the
timestamp example. Each test names the row or paragraph it checks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from nurture.core import Nurture
from nurture.store import tables as t


def send(nurture: Nurture, *messages: dict[str, Any]) -> None:
    """Ingest each message in its own batch, as separate requests would."""
    for m in messages:
        result = nurture.ingest([m])
        assert result.accepted == 1, result.to_dict()


def owner(nurture: Nurture, kind: str, value: str) -> int | None:
    i = t.identities.c
    with nurture.db.read() as conn:
        return conn.execute(select(i.contact_id).where(i.kind == kind, i.value == value)).scalar()


def contact(nurture: Nurture, contact_id: int | None) -> Any:
    assert contact_id is not None
    with nurture.db.read() as conn:
        return conn.execute(select(t.contacts).where(t.contacts.c.id == contact_id)).one()


def live_contacts(nurture: Nurture) -> int:
    with nurture.db.read() as conn:
        query = select(t.contacts.c.id).where(t.contacts.c.merged_into.is_(None))
        return len(conn.execute(query).all())


def merges(nurture: Nurture) -> list[tuple[Any, ...]]:
    m = t.contact_merges.c
    with nurture.db.read() as conn:
        rows = conn.execute(select(m.from_contact_id, m.into_contact_id, m.reason)).all()
    return [tuple(r) for r in rows]


def identify(user: str | None = None, anon: str | None = None, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user, "anonymousId": anon, "traits": traits}


def page(anon: str) -> dict[str, Any]:
    return {"type": "page", "anonymousId": anon, "name": "Home"}


def test_userid_and_anonymousid_on_an_anonymous_contact_identifies_it(nurture: Nurture) -> None:
    # Given an anonymous visitor
    send(nurture, page("a1"))
    visitor = owner(nurture, "anonymous_id", "a1")
    # When an unknown user identifies with that anonymousId
    send(nurture, identify("u1", "a1"))
    # Then that contact gets the user id: no new contact, no merge
    assert owner(nurture, "user_id", "u1") == visitor
    assert contact(nurture, visitor).user_id == "u1"
    assert live_contacts(nurture) == 1 and merges(nurture) == []


def test_anonymousid_of_an_identified_contact_is_not_taken_by_a_new_user(nurture: Nurture) -> None:
    # Given a device used by u1
    send(nurture, identify("u1", "device"))
    # When an unknown u2 identifies on the same device
    send(nurture, identify("u2", "device"))
    # Then u2 gets a contact of its own and the device stays with u1
    assert owner(nurture, "user_id", "u2") != owner(nurture, "user_id", "u1")
    assert owner(nurture, "anonymous_id", "device") == owner(nurture, "user_id", "u1")


def test_known_user_with_anonymous_contact_merges_it(nurture: Nurture) -> None:
    # Given a known user with a trait, and an anonymous visitor with a conflicting one
    send(nurture, identify("u1", plan="pro"), page("a1"), identify(None, "a1", plan="free", x=1))
    user, visitor = owner(nurture, "user_id", "u1"), owner(nurture, "anonymous_id", "a1")
    assert user != visitor
    # When the user identifies with the visitor's anonymousId
    send(nurture, identify("u1", "a1"))
    # Then the visitor is merged into the user: events and identities move, traits combine with
    # the survivor's value winning, and the visitor remains as a tombstone
    assert merges(nurture) == [(visitor, user, "identify")]
    assert owner(nurture, "anonymous_id", "a1") == user
    assert contact(nurture, visitor).merged_into == user
    assert contact(nurture, user).traits == {"plan": "pro", "x": 1}
    with nurture.db.read() as conn:
        owners = set(conn.execute(select(t.events.c.contact_id)).scalars())
    assert owners == {user}


def test_identify_never_merges_two_identified_contacts(nurture: Nurture) -> None:
    # Given two identified users, the device belonging to u2
    send(nurture, identify("u1"), identify("u2", "device"))
    # When u1 identifies on u2's device
    send(nurture, identify("u1", "device"))
    # Then nothing is merged and the device stays with u2
    assert merges(nurture) == []
    assert owner(nurture, "anonymous_id", "device") == owner(nurture, "user_id", "u2")


def test_alias_rows(nurture: Nurture) -> None:
    # neither known: a new contact with U; P as user id and as anonymous id
    send(nurture, {"type": "alias", "previousId": "p1", "userId": "u1"})
    u1 = owner(nurture, "user_id", "u1")
    assert owner(nurture, "user_id", "p1") == owner(nurture, "anonymous_id", "p1") == u1
    # only P known (anonymous): U is added to P's contact as its primary user id
    send(nurture, page("p2"), {"type": "alias", "previousId": "p2", "userId": "u2"})
    assert contact(nurture, owner(nurture, "anonymous_id", "p2")).user_id == "u2"
    # both known, different contacts, both identified: P's contact is merged into U's
    send(nurture, identify("u3"), {"type": "alias", "previousId": "u2", "userId": "u3"})
    assert merges(nurture)[-1][2] == "alias"
    assert owner(nurture, "user_id", "u2") == owner(nurture, "user_id", "u3")


def test_traits_shallow_merge_and_null_removes(nurture: Nurture) -> None:
    # Given a contact with traits
    send(nurture, identify("u1", plan="pro", address={"city": "Berlin", "zip": "10115"}))
    # When an identify sends a nested object and a null
    send(nurture, identify("u1", plan=None, address={"city": "Hamburg"}))
    # Then the nested object is replaced whole and the null trait removed
    assert contact(nurture, owner(nurture, "user_id", "u1")).traits == {
        "address": {"city": "Hamburg"}
    }


def test_bad_reserved_traits_are_kept_and_flagged(nurture: Nurture) -> None:
    # When an identify carries values that fail validation
    send(nurture, identify("u1", email="not-an-email", timezone="Mars/Base"))
    # Then the message is stored, the traits kept as sent, the columns empty, the issues recorded
    row = contact(nurture, owner(nurture, "user_id", "u1"))
    assert row.traits == {"email": "not-an-email", "timezone": "Mars/Base"}
    assert (row.email, row.timezone) == (None, None)
    assert set(row.trait_issues) == {"email", "timezone"}


def test_timestamp_example(nurture: Nurture) -> None:
    # Given the "Timestamps" example: sent 5 s after creation by the device clock
    now = nurture.clock.now()
    assert now == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    message = {
        "type": "track",
        "userId": "u1",
        "event": "E",
        "originalTimestamp": "2026-03-01T11:59:50Z",
    }
    # When it arrives in a batch whose sentAt is 11:59:55
    result = nurture.ingest([message], batch_sent_at=datetime(2026, 3, 1, 11, 59, 55, tzinfo=UTC))
    assert result.accepted == 1
    # Then timestamp = receivedAt - (sentAt - originalTimestamp) = 11:59:55
    with nurture.db.read() as conn:
        stored = conn.execute(select(t.events.c.timestamp)).scalar_one()
    assert stored == datetime(2026, 3, 1, 11, 59, 55, tzinfo=UTC)
