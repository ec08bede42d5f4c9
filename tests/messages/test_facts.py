"""load_facts + decide on real databases: what the dispatcher sees, and the "Done when"
scenarios of the issue (an unsubscribe, a bounce and an SMS STOP each stop the next
marketing message and not the next billing alert, except that suppression also stops
transactional email)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from itertools import count
from typing import Any

import pytest
from sqlalchemy import event, insert, select

from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.messages.policy import (
    Allow,
    Decision,
    Delay,
    PolicyConfig,
    PolicyMessage,
    Skip,
    decide,
    decide_all,
    load_facts,
)
from nurture.store import tables as t

_ids = count(1)


def person(nurture: Nurture, user: str, **traits: Any) -> int:
    """A contact, through the real ingest path; its id."""
    result = nurture.ingest([{"type": "identify", "userId": user, "traits": traits}])
    assert not result.rejected
    return int(nurture.contacts.lookup(user_id=user)["id"])


def queue(nurture: Nurture, contact_id: int, **fields: Any) -> int:
    """An outbox row, as a journey step writes it; its id."""
    now = nurture.clock.now()
    row = {
        "idempotency_key": f"test:{next(_ids)}",
        "contact_id": contact_id,
        "channel": "email",
        "template": "t",
        "kind": "marketing",
        "topic": "newsletter",
        "payload": {},
        "status": "queued",
        "created_at": now,
        "send_after": now,
        **fields,
    }
    with nurture.db.write() as conn:
        return int(conn.execute(insert(t.outbox).values(**row).returning(t.outbox.c.id)).scalar())


def decisions(
    nurture: Nurture, ids: list[int], config: PolicyConfig | None = None
) -> dict[int, Decision]:
    """What the dispatcher would decide for these outbox rows now."""
    config = config or nurture.policy
    now = nurture.clock.now()
    with nurture.db.read() as conn:
        rows = conn.execute(select(t.outbox).where(t.outbox.c.id.in_(ids))).all()
        messages = [PolicyMessage.from_row(r) for r in rows]
        facts = load_facts(conn, messages, now, config, default_timezone="Europe/Berlin")
    return {m.id: decide(m, facts[m.id], config, now) for m in messages}


def one(nurture: Nurture, outbox_id: int, config: PolicyConfig | None = None) -> Decision:
    return decisions(nurture, [outbox_id], config)[outbox_id]


@pytest.fixture
def ann(nurture: Nurture) -> int:
    """Given Ann in the US (email opt-out country), who opted in to texts."""
    cid = person(
        nurture,
        "ann",
        email="ann@example.com",
        phone="+12015550123",
        country="US",
        timezone="America/New_York",
    )
    nurture.consent.record(cid, "sms", "*", "granted", source="signup form")
    return cid


@pytest.fixture
def afternoon(clock: SimulatedClock) -> None:
    """At 15:00 in New York: no quiet hours anywhere in the US."""
    clock.advance(timedelta(hours=8))


def test_an_unsubscribe_stops_marketing_not_the_billing_alert(
    nurture: Nurture, ann: int, afternoon: None
) -> None:
    # Given Ann unsubscribes from the newsletter
    nurture.consent.record(ann, "email", "newsletter", "denied", source="unsubscribe link")
    # When the next newsletter and a billing alert are due
    newsletter = queue(nurture, ann)
    billing = queue(nurture, ann, kind="transactional", topic="billing")
    found = decisions(nurture, [newsletter, billing])
    # Then the newsletter is skipped and the billing alert goes
    assert isinstance(found[newsletter], Skip) and found[newsletter].rule == "consent"
    assert found[billing] == Allow()
    # And an unsubscribe from everything ("*") stops other topics too
    nurture.clock.advance(timedelta(seconds=1))
    product = queue(nurture, ann, topic="product_updates")
    assert one(nurture, product) == Allow()
    nurture.consent.record(ann, "email", "*", "denied", source="preference centre")
    assert one(nurture, product) == Skip(
        "consent", "the contact opted out of email all topics on 2026-03-01"
    )


def test_a_bounce_stops_marketing_and_transactional_email(
    nurture: Nurture, ann: int, afternoon: None
) -> None:
    # Given Ann's address hard-bounced
    assert nurture.suppressions.add("email", "Ann@Example.com", "bounced", "550 5.1.1")
    # When a newsletter and a billing alert by email are due, and a billing text
    newsletter = queue(nurture, ann)
    billing = queue(nurture, ann, kind="transactional", topic="billing")
    text = queue(nurture, ann, channel="sms", kind="transactional", topic="billing")
    found = decisions(nurture, [newsletter, billing, text])
    # Then both emails are skipped as suppressed, and the text still goes
    assert found[newsletter] == Skip("suppressed", "the email is suppressed (bounced)")
    assert found[billing] == Skip("suppressed", "the email is suppressed (bounced)")
    assert found[text] == Allow()


def test_an_sms_stop_stops_texts_not_the_billing_alert_by_email(
    nurture: Nurture, ann: int, afternoon: None
) -> None:
    # Given Ann replied STOP to a text
    assert nurture.suppressions.add("phone", "+1 201 555 0123", "stop", "STOP")
    # When a marketing text, a billing alert by email and one by text are due
    promo = queue(nurture, ann, channel="sms")
    billing = queue(nurture, ann, kind="transactional", topic="billing")
    billing_text = queue(nurture, ann, channel="sms", kind="transactional", topic="billing")
    found = decisions(nurture, [promo, billing, billing_text])
    # Then the marketing text is skipped, the billing email goes, and, by the carriers'
    # rule (nothing but the opt-out confirmation after STOP), the billing text is skipped
    assert found[promo] == Skip("suppressed", "the phone is suppressed (stop)")
    assert found[billing] == Allow()
    assert found[billing_text] == Skip("suppressed", "the phone is suppressed (stop)")
    # And after START the texts go again
    assert nurture.suppressions.remove("phone", "+12015550123")
    assert one(nurture, promo) == Allow()


def test_opt_in_by_country_reads_the_contact_country(nurture: Nurture, afternoon: None) -> None:
    # Given Max in Germany and Lee whose country is unknown, neither gave consent
    max_ = person(nurture, "max", email="max@example.de", country="DE")
    lee = person(nurture, "lee", email="lee@example.com")
    a, b = queue(nurture, max_), queue(nurture, lee)
    found = decisions(nurture, [a, b])
    # Then both need opt-in (Germany by law, unknown by the safe default)
    assert isinstance(found[a], Skip) and "in DE needs opt-in" in found[a].reason
    assert isinstance(found[b], Skip) and "country unknown" in found[b].reason
    # And Max's double opt-in, once confirmed, lets the newsletter go
    token = nurture.consent.request_confirmation(max_, "email", "newsletter", source="form")
    assert isinstance(one(nurture, a), Skip)
    nurture.consent.confirm(token)
    assert one(nurture, a) == Allow()


def test_addresses_come_from_the_profile(nurture: Nurture, afternoon: None) -> None:
    # Given a contact whose email was invalid, one with no phone, and one with a push
    # subscription
    bad = person(nurture, "bad", email="not-an-email", country="US")
    no_phone = person(nurture, "np", email="np@example.com", country="US")
    pushy = person(nurture, "pushy", country="US")
    with nurture.db.write() as conn:
        conn.execute(
            insert(t.push_subscriptions).values(
                contact_id=pushy,
                endpoint="https://push.example/1",
                p256dh="k",
                auth="a",
                created_at=nurture.clock.now(),
            )
        )
    m1, m2 = queue(nurture, bad, kind="transactional"), queue(nurture, no_phone, channel="sms")
    m3, m4 = queue(nurture, pushy, channel="push"), queue(nurture, no_phone, channel="push")
    found = decisions(nurture, [m1, m2, m3, m4])
    # Then each answer names the problem
    assert isinstance(found[m1], Skip) and found[m1].rule == "invalid_address"
    assert found[m2] == Skip("no_address", "the contact has no phone")
    assert found[m3] == Allow()
    assert found[m4] == Skip("no_address", "the contact has no live push subscription")


def test_caps_count_sends_in_the_database(nurture: Nurture, ann: int, afternoon: None) -> None:
    # Given a cap of 2 marketing emails per 7 days, one sent 6 days ago, one being sent now
    # by another dispatcher, and one sent 8 days ago (outside the window)
    config = PolicyConfig(caps=[{"channel": "email", "max": 2, "per": "7d"}])
    now = nurture.clock.now()
    queue(nurture, ann, status="sent", sent_at=now - timedelta(days=8))
    queue(nurture, ann, status="delivered", sent_at=now - timedelta(days=6))
    queue(nurture, ann, status="sending")
    queue(nurture, ann, kind="transactional", status="sent", sent_at=now - timedelta(hours=1))
    # When the next newsletter is decided
    waiting = queue(nurture, ann)
    decision = one(nurture, waiting, config)
    # Then it waits one day, until the send of 6 days ago leaves the window
    assert isinstance(decision, Delay) and decision.rule == "frequency_cap"
    assert decision.until == now + timedelta(days=1)


def test_a_batch_never_counts_itself_and_counts_what_it_allows(
    nurture: Nurture, ann: int, afternoon: None
) -> None:
    # Given two newsletters for Ann claimed in one batch (status sending) and a cap of 1/day
    config = PolicyConfig(caps=[{"channel": "email", "max": 1, "per": "1d"}])
    ids = [queue(nurture, ann, status="sending") for _ in range(2)]
    now = nurture.clock.now()
    with nurture.db.read() as conn:
        rows = conn.execute(select(t.outbox).where(t.outbox.c.id.in_(ids))).all()
        messages = [PolicyMessage.from_row(r) for r in rows]
        facts = load_facts(conn, messages, now, config)
    # When the batch is decided
    found = decide_all(messages, facts, config, now)
    # Then the first goes and the second waits a day
    assert found[ids[0]] == Allow()
    assert isinstance(found[ids[1]], Delay) and found[ids[1]].until == now + timedelta(days=1)


def test_a_merged_away_contact_is_decided_as_its_survivor(
    nurture: Nurture, afternoon: None
) -> None:
    # Given an anonymous visitor queued a message, then was merged into Bea, who opted out
    nurture.ingest([{"type": "page", "anonymousId": "a-1", "name": "Home"}])
    with nurture.db.read() as conn:
        anon = conn.execute(select(t.identities.c.contact_id)).scalar_one()
    waiting = queue(nurture, anon)
    nurture.ingest(
        [
            {
                "type": "identify",
                "userId": "bea",
                "anonymousId": "a-1",
                "traits": {"email": "bea@example.com", "country": "US"},
            }
        ]
    )
    bea = int(nurture.contacts.lookup(user_id="bea")["id"])
    nurture.consent.record(bea, "email", "*", "denied", source="api")
    # Then the message is decided with Bea's facts
    assert isinstance(one(nurture, waiting), Skip)
    assert one(nurture, waiting).rule == "consent"  # type: ignore[union-attr]


def test_an_erased_contact_is_skipped(nurture: Nurture, ann: int) -> None:
    waiting = queue(nurture, ann)
    with nurture.db.read() as conn:
        row = conn.execute(select(t.outbox).where(t.outbox.c.id == waiting)).one()
    nurture.privacy.erase(ann)
    with nurture.db.read() as conn:
        message = PolicyMessage.from_row(row)
        facts = load_facts(conn, [message], nurture.clock.now(), nurture.policy)
    assert decide(message, facts[waiting], nurture.policy, nurture.clock.now()) == Skip(
        "no_contact", f"contact {ann} no longer exists"
    )


@contextmanager
def counting(nurture: Nurture) -> Iterator[list[str]]:
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    event.listen(nurture.db.engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(nurture.db.engine, "before_cursor_execute", seen)


def test_facts_load_in_a_few_queries_for_any_batch(nurture: Nurture) -> None:
    # Given 40 contacts with consents, and messages on every channel for each
    config = PolicyConfig(caps=[{"channel": "email", "max": 2, "per": "7d"}])
    ids = []
    for i in range(40):
        cid = person(nurture, f"u{i}", email=f"u{i}@example.com", phone="+12015550123")
        nurture.consent.record(cid, "email", "*", "granted", source="import")
        ids += [queue(nurture, cid, channel=ch) for ch in ("email", "sms", "push")]
    with nurture.db.read() as conn:
        rows = conn.execute(select(t.outbox).where(t.outbox.c.id.in_(ids))).all()
        messages = [PolicyMessage.from_row(r) for r in rows]
        # When the facts of all 120 messages load
        with counting(nurture) as statements:
            facts = load_facts(conn, messages, nurture.clock.now(), config)
    # Then it took at most six statements (contacts, consents, push, salt, suppressions,
    # sends), and every message has the facts of its contact
    assert len(statements) <= 6, statements
    assert len(facts) == 120
    assert all(f.consents for f in facts.values())
