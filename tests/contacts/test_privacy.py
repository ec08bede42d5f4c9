"""GDPR/CCPA export and erasure, and the suppression list, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import orjson
import pytest
import yaml
from sqlalchemy import func, insert, select
from starlette.testclient import TestClient

from nurture.clock import SimulatedClock
from nurture.contacts.privacy import suppression_hash
from nurture.core import Nurture
from nurture.errors import NotFound
from nurture.lifecycle.presets import LEAD_SCORE_YAML, SAAS_YAML
from nurture.messages.providers import FeedbackItem
from nurture.segments.definitions import DefinitionStore
from nurture.store import tables as t


@pytest.fixture
def alice(nurture: Nurture, send: Any) -> int:
    """Given Alice: anonymous browsing merged on sign-up, an alias, an account, a rejected
    message with her user id; and Bob, who shares nothing with her but the case of an id."""
    send(
        {"type": "page", "anonymousId": "anon-alice", "name": "Pricing"},
    )
    send(
        {"type": "track", "userId": "alice-1", "event": "Signed Up"},
    )
    send(
        {
            "type": "identify",
            "userId": "alice-1",
            "anonymousId": "anon-alice",
            "traits": {"email": "Alice@Example.COM", "phone": "+1 415 555 0199", "age": 41},
        },
        {"type": "alias", "previousId": "old-alice", "userId": "alice-1"},
        {"type": "group", "userId": "alice-1", "groupId": "acme", "traits": {"name": "Acme"}},
        {"type": "track", "userId": "alice-1", "event": "Bad", "timestamp": "not a time"},
        {
            "type": "track",
            "userId": "x",
            "event": "Bad",
            "traits": {"email": "ALICE@example.com"},
            "timestamp": "nope",
        },
        {"type": "identify", "userId": "ALICE-1", "traits": {"email": "bob@example.com"}},
        {"type": "track", "userId": "ALICE-1", "event": "Bad", "timestamp": "never"},
        {"type": "group", "userId": "ALICE-1", "groupId": "acme"},
        rejected=3,
    )
    return int(nurture.contacts.lookup(user_id="alice-1")["id"])


def count(nurture: Nurture, table: Any, *where: Any) -> int:
    with nurture.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar())


def test_export_holds_everything_about_the_contact(nurture: Nurture, alice: int) -> None:
    # When exporting Alice
    doc = nurture.privacy.export(alice)
    # Then the document holds her profile, identities, events, account, merges and input
    assert doc["format"] == "nurture.contact-export/1"
    assert doc["exported_at"] == nurture.clock.now()
    assert doc["contact"]["email"] == "alice@example.com"
    assert doc["traits"]["age"] == 41
    assert {(i["kind"], i["value"]) for i in doc["identities"]} == {
        ("user_id", "alice-1"),
        ("user_id", "old-alice"),
        ("anonymous_id", "anon-alice"),
        ("anonymous_id", "old-alice"),
    }
    assert sorted(e["type"] for e in doc["events"]) == [
        "alias",
        "group",
        "identify",
        "page",
        "track",
    ]
    assert all(e["contact_id"] == alice for e in doc["events"])
    assert [(a["group_id"], a["name"]) for a in doc["accounts"]] == [("acme", "Acme")]
    (merge,) = doc["merges"]
    assert merge["into_contact_id"] == alice and merge["reason"] == "identify"
    assert [m["id"] for m in doc["merged_contacts"]] == [merge["from_contact_id"]]
    # Rejected input naming her (by user id, or by email in another case); not Bob's
    raws = [r["raw"] for r in doc["rejected_input"]]
    assert len(raws) == 2 and all("ALICE-1" not in r for r in raws)
    # And it is all JSON
    assert orjson.loads(orjson.dumps(doc))["contact"]["id"] == alice


def test_erase_removes_the_contact_and_keeps_only_hashes(nurture: Nurture, alice: int) -> None:
    bob_before = nurture.contacts.lookup(user_id="ALICE-1")
    tombstone = nurture.contacts.get(alice)["merged_contact_ids"][0]
    # When erasing Alice
    report = nurture.privacy.erase(alice)
    # Then everything about her is gone, in every table
    assert report["contact_id"] == alice
    assert report["events_deleted"] == 5
    assert report["contacts_deleted"] == 2  # her and her anonymous tombstone
    assert report["rejected_deleted"] == 2
    assert report["suppressed"] == ["email", "phone"]
    ids = (alice, tombstone)
    assert count(nurture, t.events, t.events.c.contact_id.in_(ids)) == 0
    assert count(nurture, t.contacts, t.contacts.c.id.in_(ids)) == 0
    assert count(nurture, t.identities, t.identities.c.contact_id.in_(ids)) == 0
    assert count(nurture, t.account_members, t.account_members.c.contact_id.in_(ids)) == 0
    assert count(nurture, t.contact_merges) == 0
    with nurture.db.read() as conn:
        raws = list(conn.execute(select(t.rejected_events.c.raw)).scalars())
        erasure = conn.execute(select(t.erasures)).one()
    assert len(raws) == 1 and "ALICE-1" in raws[0]  # Bob's rejected input stays
    assert not any("alice-1" in r.lower() and "ALICE-1" not in r for r in raws)
    assert (erasure.contact_id, erasure.events_deleted) == (alice, 5)
    # And the suppression list has her salted email hash, and knows her in any notation
    salt = nurture.db.meta_value("salt")
    assert salt
    digest = hashlib.sha256((salt + "alice@example.com").encode()).hexdigest()
    assert count(nurture, t.suppressions, t.suppressions.c.hash == digest) == 1
    assert nurture.privacy.is_suppressed(email="  ALICE@example.com")
    assert nurture.privacy.is_suppressed(phone="(415) 555-0199", region="US")
    assert nurture.privacy.is_suppressed(phone="+14155550199")
    assert not nurture.privacy.is_suppressed(email="bob@example.com", phone="+14155550100")
    assert not nurture.privacy.is_suppressed(email="not an email")
    # And Bob is untouched
    bob_after = nurture.contacts.lookup(user_id="ALICE-1")
    assert bob_after == bob_before
    assert nurture.contacts.account("acme")["member_count"] == 1
    # And neither her ids nor a second erasure find anything
    for lookup in ({"user_id": "alice-1"}, {"anonymous_id": "anon-alice"}):
        with pytest.raises(NotFound):
            nurture.contacts.lookup(**lookup)
    with pytest.raises(NotFound):
        nurture.privacy.erase(alice)
    with pytest.raises(NotFound):
        nurture.privacy.erase(tombstone)


def test_erase_by_merged_away_id_erases_the_survivor(nurture: Nurture, alice: int) -> None:
    # Given the id of Alice's anonymous contact, merged into her
    tombstone = nurture.contacts.get(alice)["merged_contact_ids"][0]
    # When erasing by that id
    report = nurture.privacy.erase(tombstone)
    # Then it is Alice (the same person) who is erased
    assert report["contact_id"] == alice
    with pytest.raises(NotFound):
        nurture.contacts.get(alice)


def test_the_same_person_coming_back_is_a_new_contact_but_stays_suppressed(
    nurture: Nurture, alice: int, send: Any
) -> None:
    nurture.privacy.erase(alice)
    # When she signs up again
    send({"type": "identify", "userId": "alice-1", "traits": {"email": "alice@example.com"}})
    # Then she is a new contact, and messaging still must not write to her address
    assert nurture.contacts.lookup(user_id="alice-1")["id"] != alice
    assert nurture.privacy.is_suppressed(email="alice@example.com")


def test_erase_suppresses_every_address_the_contact_ever_gave(nurture: Nurture, send: Any) -> None:
    # Given a customer who changed email and phone over time
    send(
        {"type": "identify", "userId": "u7", "traits": {"email": "old@example.com"}},
        {"type": "identify", "userId": "u7", "traits": {"phone": "+4930123456", "country": "DE"}},
        {"type": "identify", "userId": "u7", "traits": {"email": "new@example.com"}},
    )
    contact = nurture.contacts.lookup(user_id="u7")["id"]
    # When erasing them
    report = nurture.privacy.erase(contact)
    # Then every address they gave is suppressed, and nothing else
    assert report["suppressed"] == ["email", "email", "phone"]
    assert nurture.privacy.is_suppressed(email="OLD@example.com")
    assert nurture.privacy.is_suppressed(email="new@example.com")
    assert nurture.privacy.is_suppressed(phone="030 123456", region="DE")
    assert not nurture.privacy.is_suppressed(email="other@example.com")


def test_erase_removes_what_evaluation_derived_from_the_contact(
    nurture: Nurture, alice: int
) -> None:
    # Given Alice in a segment, with a stage and a score, and their histories
    nurture.segments.save({"key": "everyone", "where": {"trait": "email", "exists": True}})
    with nurture.db.write() as conn:
        for kind, text in (("stage_model", SAAS_YAML), ("score_model", LEAD_SCORE_YAML)):
            body = yaml.safe_load(text)
            DefinitionStore.put(
                conn, kind, body.pop("key"), body, name="", source="api", now=nurture.clock.now()
            )
    nurture.engine.evaluate_all()
    derived = (
        t.segment_memberships,
        t.segment_changes,
        t.contact_stages,
        t.stage_changes,
        t.contact_scores,
    )
    assert all(count(nurture, table, table.c.contact_id == alice) for table in derived)
    # When erasing her
    nurture.privacy.erase(alice)
    # Then none of it is left
    for table in (*derived, *t.EVALUATION_BY_CONTACT, t.consents):
        assert count(nurture, table, table.c.contact_id == alice) == 0, table.name


def test_erase_hardens_earlier_suppressions_of_the_contact(
    nurture: Nurture, client: TestClient, admin_key: str, clock: SimulatedClock, send: Any
) -> None:
    # Given Dana, whose email bounced and who texted STOP, and Bob, whose email bounced too
    send(
        {
            "type": "identify",
            "userId": "dana",
            "traits": {"email": "dana.smith@example.com", "phone": "+14155550123"},
        },
        {"type": "identify", "userId": "bob", "traits": {"email": "bob@example.com"}},
    )
    dana = int(nurture.contacts.lookup(user_id="dana")["id"])
    diagnostic = "550 5.1.1 <dana.smith@example.com>: mailbox of Dana Smith unknown"
    nurture.suppressions.add("email", "dana.smith@example.com", "bounced", diagnostic)
    nurture.suppressions.add("phone", "+14155550123", "stop", "STOP - Dana Smith")
    nurture.suppressions.add("email", "bob@example.com", "bounced", "550 no such user")
    clock.advance(timedelta(days=3))
    # When Dana is erased
    report = nurture.privacy.erase(dana)
    # Then both of her rows say "erased", dated by the erasure, with no detail left
    assert report["suppressed"] == ["email", "phone"]
    salt = nurture.db.meta_value("salt")
    assert salt
    with nurture.db.read() as conn:
        rows = {r.hash: r for r in conn.execute(select(t.suppressions))}
    hers = [rows[suppression_hash(salt, a)] for a in ("dana.smith@example.com", "+14155550123")]
    assert [(r.kind, r.reason, r.detail) for r in hers] == [
        ("email", "erased", None),
        ("phone", "erased", None),
    ]
    assert all(r.created_at == clock.now() for r in hers)
    # And nothing in the suppression list names her any more
    assert not any("dana" in str(value).lower() for r in rows.values() for value in r)
    # And Bob's bounce is untouched
    assert rows[suppression_hash(salt, "bob@example.com")].reason == "bounced"
    # When an admin tries to lift her email's suppression, and her phone's
    auth = {"Authorization": f"Bearer {admin_key}"}
    for address in ("dana.smith@example.com", "+1 415 555 0123"):
        response = client.delete("/api/suppressions", params={"address": address}, headers=auth)
        # Then the API refuses, and the address stays suppressed
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "erased_address"
    assert nurture.privacy.is_suppressed(email="Dana.Smith@example.com")
    assert nurture.privacy.is_suppressed(phone="+14155550123")


def test_erase_deletes_provider_feedback_about_the_contact(nurture: Nurture, send: Any) -> None:
    # Given Dana with a sent email, its delivery report, a bounce of her address that came
    # in for no known message, and a bounce of a look-alike address of someone else
    send({"type": "identify", "userId": "dana", "traits": {"email": "dana.smith@example.com"}})
    dana = int(nurture.contacts.lookup(user_id="dana")["id"])
    now = nurture.clock.now()
    with nurture.db.write() as conn:
        sent = conn.execute(
            insert(t.outbox)
            .values(
                idempotency_key="k1",
                contact_id=dana,
                channel="email",
                kind="marketing",
                payload={},
                status="sent",
                created_at=now,
                send_after=now,
                provider="ses",
                provider_id="ses-1",
            )
            .returning(t.outbox.c.id)
        ).scalar_one()
    nurture.feedback.record(
        "ses",
        [
            FeedbackItem("delivered", "d-1", now, provider_id="ses-1"),
            FeedbackItem(
                "bounced",
                "b-1",
                now,
                address="Dana.Smith@example.com",
                bounce_type="hard",
                reason="550 mailbox of Dana Smith unknown",
            ),
            FeedbackItem("bounced", "b-2", now, address="jdana.smith@example.com"),
        ],
    )
    assert count(nurture, t.message_feedback) == 3
    # When Dana is erased
    nurture.privacy.erase(dana)
    # Then only the other person's feedback is left, and her message is gone
    with nurture.db.read() as conn:
        left = conn.execute(select(t.message_feedback.c.event_key)).scalars().all()
    assert left == ["b-2"]
    assert count(nurture, t.outbox, t.outbox.c.id == sent) == 0
