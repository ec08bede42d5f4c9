"""FeedbackService on SQLite and PostgreSQL: feedback is stored once, moves the outbox
status forward only, waits for sends not yet recorded, suppresses, denies consent, and
becomes system events that segments and journeys see."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update

from nurture.core import Nurture
from nurture.messages.feedback import OWN, FeedbackItem
from nurture.store import tables as t

EMAIL, PHONE = "ann@example.com", "+14155550123"


def _contact(n: Nurture, user: str = "ann", email: str = EMAIL, phone: str = PHONE) -> int:
    n.ingest([{"type": "identify", "userId": user, "traits": {"email": email, "phone": phone}}])
    with n.db.read() as conn:
        return int(
            conn.execute(select(t.contacts.c.id).where(t.contacts.c.user_id == user)).scalar_one()
        )


def _outbox(n: Nurture, contact: int, **values: Any) -> int:
    now = n.clock.now()
    row = {
        "idempotency_key": f"k{contact}:{values.get('provider_id')}:{now.isoformat()}",
        "contact_id": contact,
        "journey_key": "welcome",
        "step": "hello",
        "channel": "email",
        "template": "hello",
        "kind": "marketing",
        "topic": "news",
        "payload": {},
        "status": "sent",
        "created_at": now,
        "send_after": now,
        "address": EMAIL,
        "provider": "ses",
        **values,
    }
    with n.db.write() as conn:
        return int(
            conn.execute(insert(t.outbox).values(**row).returning(t.outbox.c.id)).scalar_one()
        )


def _status(n: Nurture, outbox_id: int) -> str:
    with n.db.read() as conn:
        return str(
            conn.execute(select(t.outbox.c.status).where(t.outbox.c.id == outbox_id)).scalar_one()
        )


def _events(n: Nurture, name: str) -> list[Any]:
    with n.db.read() as conn:
        return conn.execute(select(t.events).where(t.events.c.event == name)).all()


def _item(kind: Any, key: str, at: datetime, **values: Any) -> FeedbackItem:
    return FeedbackItem(kind, key, at, **values)


def test_a_repeated_webhook_is_stored_and_applied_once(nurture: Nurture) -> None:
    # Given a sent message
    contact = _contact(nurture)
    message = _outbox(nurture, contact, provider_id="ses-1")
    item = _item("delivered", "sns-1:0", nurture.clock.now(), provider_id="ses-1")
    # When the same delivery arrives twice, once in a batch with itself
    first = nurture.feedback.record("ses", [item, item])
    second = nurture.feedback.record("ses", [item])
    # Then it is stored once, applied once, and becomes one event
    assert (first.stored, first.duplicates, first.applied) == (1, 1, 1)
    assert (second.stored, second.duplicates) == (0, 1)
    with nurture.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(t.message_feedback)).scalar() == 1
    (event,) = _events(nurture, "email.delivered")
    assert event.type == "system" and event.contact_id == contact
    assert event.properties == {
        "provider": "ses",
        "message": message,
        "journey": "welcome",
        "step": "hello",
        "template": "hello",
    }
    assert _status(nurture, message) == "delivered"


def test_status_moves_forward_only_whatever_the_order(nurture: Nurture) -> None:
    # Given a sent message
    contact = _contact(nurture)
    message = _outbox(nurture, contact, provider_id="ses-2")
    now = nurture.clock.now()
    # When a hard bounce arrives, then (late) a delivery and a soft bounce
    nurture.feedback.record(
        "ses",
        [
            _item(
                "bounced",
                "b",
                now,
                provider_id="ses-2",
                bounce_type="hard",
                reason="550 no such user",
            )
        ],
    )
    nurture.feedback.record(
        "ses", [_item("delivered", "d", now - timedelta(seconds=5), provider_id="ses-2")]
    )
    nurture.feedback.record(
        "ses", [_item("bounced", "s", now, provider_id="ses-2", bounce_type="soft")]
    )
    # Then the message stays bounced, with the bounce's reason
    assert _status(nurture, message) == "bounced"
    with nurture.db.read() as conn:
        reason = conn.execute(select(t.outbox.c.reason).where(t.outbox.c.id == message)).scalar()
    assert reason == "550 no such user"
    # And the address is suppressed for the bounce; every piece is an event
    entry = nurture.suppressions.lookup("email", EMAIL)
    assert entry is not None and entry.reason == "bounced"
    bounces = _events(nurture, "email.bounced")
    assert sorted(e.properties["bounce_type"] for e in bounces) == ["hard", "soft"]
    assert len(_events(nurture, "email.delivered")) == 1


def test_feedback_before_the_send_is_recorded_waits_for_it(nurture: Nurture) -> None:
    # Given a message still queued, without a provider id
    contact = _contact(nurture)
    message = _outbox(nurture, contact, status="queued", provider_id=None)
    # When the provider's delivery arrives first
    early = nurture.feedback.record(
        "sendgrid", [_item("delivered", "sg-1", nurture.clock.now(), provider_id="sg-msg")]
    )
    # Then it waits, unapplied
    assert (early.stored, early.applied, early.pending) == (1, 0, 1)
    assert _events(nurture, "email.delivered") == []
    # When the dispatcher records the send and applies what waited, in one transaction
    with nurture.db.write() as conn:
        conn.execute(
            update(t.outbox)
            .where(t.outbox.c.id == message)
            .values(status="sent", provider_id="sg-msg")
        )
        applied = nurture.feedback.apply_pending(conn, [message])
    # Then the delivery is applied
    assert applied == 1
    assert _status(nurture, message) == "delivered"
    assert len(_events(nurture, "email.delivered")) == 1
    with nurture.db.read() as conn:
        pending = conn.execute(
            select(func.count())
            .select_from(t.message_feedback)
            .where(t.message_feedback.c.applied_at.is_(None))
        ).scalar()
    assert pending == 0
    # And applying again finds nothing
    with nurture.db.write() as conn:
        assert nurture.feedback.apply_pending(conn, [message]) == 0


def test_feedback_tagged_with_our_id_waits_while_the_message_is_sending(nurture: Nurture) -> None:
    # Given a message being sent (claimed, not yet recorded)
    contact = _contact(nurture)
    message = _outbox(nurture, contact, status="sending")
    # When a click arrives tagged with our outbox id
    result = nurture.feedback.record(
        "postmark",
        [_item("bounced", "pm-1", nurture.clock.now(), outbox_id=message, bounce_type="hard")],
    )
    # Then the status is left to the dispatcher, and the bounce waits for the record
    assert result.pending == 1 and _status(nurture, message) == "sending"
    with nurture.db.write() as conn:
        conn.execute(update(t.outbox).where(t.outbox.c.id == message).values(status="sent"))
        assert nurture.feedback.apply_pending(conn, [message]) == 1
    assert _status(nurture, message) == "bounced"


def test_a_complaint_suppresses_and_denies_email_consent(nurture: Nurture) -> None:
    # Given a sent message
    contact = _contact(nurture)
    _outbox(nurture, contact, provider_id="ses-3")
    # When the recipient marks it as spam
    nurture.feedback.record(
        "ses", [_item("complained", "c1", nurture.clock.now(), provider_id="ses-3", address=EMAIL)]
    )
    # Then the address is suppressed and email marketing consent denied, with its proof
    entry = nurture.suppressions.lookup("email", EMAIL)
    assert entry is not None and entry.reason == "complained"
    assert nurture.consent.states(contact)[("email", "*")] == "denied"
    assert nurture.consent.document(contact)["current"][0]["source"] == "complaint:ses"


def test_an_unsubscribe_denies_the_message_topic_and_reaches_segments_and_journeys(
    nurture: Nurture,
) -> None:
    # Given a sent message about "news"
    contact = _contact(nurture)
    message = _outbox(nurture, contact)
    with nurture.db.write() as conn:
        conn.execute(t.pending_evaluations.delete())
    # When the contact unsubscribes through our link
    item = _item(
        "unsubscribed",
        "u1",
        nurture.clock.now(),
        outbox_id=message,
        contact_id=contact,
        context={"ip": "203.0.113.9", "userAgent": "Mail"},
    )
    nurture.feedback.record(OWN, [item])
    # Then the topic is denied, with the IP as proof
    assert nurture.consent.states(contact)[("email", "news")] == "denied"
    (event,) = _events(nurture, "email.unsubscribed")
    assert event.properties["topic"] == "news" and event.context["ip"] == "203.0.113.9"
    # And the contact is queued for evaluation with the event's name
    with nurture.db.read() as conn:
        arrived = (
            conn.execute(
                select(t.pending_arrivals.c.event).where(t.pending_arrivals.c.contact_id == contact)
            )
            .scalars()
            .all()
        )
    assert "email.unsubscribed" in arrived


def test_stop_and_start_replies(nurture: Nurture) -> None:
    # Given a contact with a phone
    contact = _contact(nurture)
    now = nurture.clock.now()
    # When they reply STOP
    nurture.feedback.record(
        "twilio", [_item("replied", "SM1", now, channel="sms", address=PHONE, text="Stop.")]
    )
    # Then the number is suppressed and the reply is an event of the contact
    entry = nurture.suppressions.lookup("phone", PHONE)
    assert entry is not None and entry.reason == "stop"
    (event,) = _events(nurture, "sms.replied")
    assert event.contact_id == contact and event.properties["keyword"] == "stop"
    # When they reply START
    nurture.feedback.record(
        "twilio", [_item("replied", "SM2", now, channel="sms", address=PHONE, text="START")]
    )
    # Then the suppression is lifted
    assert nurture.suppressions.lookup("phone", PHONE) is None
    assert len(_events(nurture, "sms.replied")) == 2


def test_sms_failure_moves_the_message_to_failed(nurture: Nurture) -> None:
    # Given a sent SMS
    contact = _contact(nurture)
    message = _outbox(nurture, contact, channel="sms", provider_id="SM9", address=PHONE)
    # When Twilio reports it undelivered
    nurture.feedback.record(
        "twilio",
        [
            _item(
                "failed",
                "SM9:undelivered",
                nurture.clock.now(),
                channel="sms",
                provider_id="SM9",
                reason="undelivered (Twilio error 30003)",
            )
        ],
    )
    # Then it is failed with the reason, and an sms.failed event says why
    assert _status(nurture, message) == "failed"
    (event,) = _events(nurture, "sms.failed")
    assert event.properties["reason"] == "undelivered (Twilio error 30003)"


def test_nothing_pending_is_cheap_and_harmless(nurture: Nurture) -> None:
    # Given no feedback at all
    contact = _contact(nurture)
    message = _outbox(nurture, contact)
    # Then applying pending feedback does nothing
    with nurture.db.write() as conn:
        assert nurture.feedback.apply_pending(conn, [message]) == 0
        assert nurture.feedback.apply_pending(conn, []) == 0
