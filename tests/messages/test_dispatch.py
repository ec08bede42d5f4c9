"""Dispatch: outbox rows become delivered messages once, the sending rules are checked again
at send time, provider answers are recorded and acted on; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from tests.conftest import make_settings

from nurture.channels.base import Email, Failed, Retry, Sms
from nurture.channels.memory import MemoryChannel
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_rows

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, noon UTC
WELCOME = {
    "defaults": {"first_name": "there"},
    "email": {
        "subject": "Welcome, {{ contact.first_name }}",
        "html": '<html><body><p>Hi {{ contact.first_name }}</p><a href="https://acme.test/start?utm_source=x">Start</a></body></html>',
    },
    "sms": {"body": "Hi {{ contact.first_name }}, your code is ready"},
}  # fmt: skip
PLAN = {
    "traits": ["plan"],
    "email": {"subject": "Your {{ contact.plan }} plan", "html": "<p>{{ contact.plan }}</p>"},
}


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


@pytest.fixture
def channel(clock: SimulatedClock) -> MemoryChannel:
    return MemoryChannel(monotonic=clock.monotonic)


@pytest.fixture
def app(db: Database, clock: SimulatedClock, channel: MemoryChannel) -> Iterator[Nurture]:
    settings = make_settings(
        str(db.url),
        policy={"quiet_hours": {"sms": {"start": "21:00", "end": "09:00"}}},
        public_url="https://nurture.example.com",
    )
    nurture = Nurture(
        settings, clock=clock, db=db, channels={c: channel for c in ("email", "sms", "push")}
    )
    with nurture:
        nurture.templates.put("welcome", WELCOME)
        nurture.templates.put("plan", PLAN)
        yield nurture


def person(app: Nurture, user: str, **traits: Any) -> int:
    traits = {"email": f"{user}@example.com", "country": "US", **traits}
    app.ingest([{"type": "identify", "userId": user, "traits": traits}])
    with app.db.read() as conn:
        return int(
            conn.execute(
                select(t.identities.c.contact_id).where(t.identities.c.value == user)
            ).scalar_one()
        )


def people(app: Nurture, n: int) -> list[int]:
    """`n` contacts with email addresses, made in one batch."""
    app.ingest(
        [
            {"type": "identify", "userId": f"p{i}", "traits": {"email": f"p{i}@example.com"}}
            for i in range(n)
        ]
    )
    with app.db.read() as conn:
        return list(conn.execute(select(t.contacts.c.id).order_by(t.contacts.c.id)).scalars())


def queue(
    app: Nurture,
    contact_id: int,
    *,
    template: str = "welcome",
    channel: str = "email",
    kind: str = "marketing",
    topic: str | None = None,
    payload: dict[str, Any] | None = None,
) -> int:
    key = f"test:{uuid.uuid4()}"
    now = app.clock.now()
    with app.db.write() as conn:
        insert_rows(
            conn,
            t.outbox,
            [
                {
                    "idempotency_key": key,
                    "contact_id": contact_id,
                    "channel": channel,
                    "template": template,
                    "kind": kind,
                    "topic": topic,
                    "payload": payload or {},
                    "status": "queued",
                    "created_at": now,
                    "send_after": now,
                }
            ],
        )
        return int(
            conn.execute(
                select(t.outbox.c.id).where(t.outbox.c.idempotency_key == key)
            ).scalar_one()
        )


def row(app: Nurture, message_id: int) -> Any:
    with app.db.read() as conn:
        return conn.execute(select(t.outbox).where(t.outbox.c.id == message_id)).one()


def drain(
    app: Nurture, clock: SimulatedClock, *, until: timedelta, step: timedelta = timedelta(0)
) -> None:
    """Dispatch, stepping the clock to each next due time (at least `step` on, as a
    polling dispatcher would), for `until` of simulated time."""
    end = clock.now() + until
    while True:
        app.dispatcher.run_due()
        due = app.dispatcher.next_due()
        if due is None or due > end:
            break
        clock.set(max(due, clock.now() + step))


def test_a_marketing_email_is_rendered_tracked_sent_and_recorded(
    app: Nurture, channel: MemoryChannel
) -> None:
    # Given a contact and a queued welcome email
    ada = person(app, "ada", first_name="Ada")
    message = queue(app, ada, topic="news")
    # When the dispatcher runs
    report = app.dispatcher.run_due()
    # Then one email went, personalised, with click tracking, pixel and RFC 8058 headers
    assert report.sent == 1
    (sent,) = channel.sent
    email = sent.content
    assert isinstance(email, Email)
    assert email.to == "ada@example.com" and email.subject == "Welcome, Ada"
    assert "https://nurture.example.com/t/c/" in email.html
    assert 'href="https://acme.test/start' not in email.html  # the link goes via the redirect
    assert "/t/o/" in email.html
    assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert email.headers["List-Unsubscribe"].startswith("<https://nurture.example.com/t/u/")
    assert sent.tags["outbox_id"] == str(message)
    # And the outbox records the provider's id
    stored = row(app, message)
    assert stored.status == "sent" and stored.provider == "memory"
    assert stored.provider_id and stored.provider_id.startswith("memory-")
    assert stored.address == "ada@example.com" and stored.sent_at == START
    assert stored.attempts == 1 and stored.lease_until is None


def test_a_missing_value_skips_the_message_with_the_reason(
    app: Nurture, channel: MemoryChannel
) -> None:
    # Given a template that needs the plan trait, and a contact without one
    bob = person(app, "bob")
    message = queue(app, bob, template="plan")
    app.dispatcher.run_due()
    # Then nothing is sent ("Your  plan") and the reason names the variable
    assert channel.sent == []
    stored = row(app, message)
    assert stored.status == "skipped" and stored.rule == "missing_value"
    assert "contact.plan" in stored.reason


def test_a_template_default_fills_a_missing_value(app: Nurture, channel: MemoryChannel) -> None:
    cat = person(app, "cat")  # no first_name
    queue(app, cat)
    app.dispatcher.run_due()
    assert channel.sent[0].content.subject == "Welcome, there"  # type: ignore[union-attr]


def test_consent_is_checked_again_at_send_time(app: Nurture, channel: MemoryChannel) -> None:
    # Given an email queued by a journey, then the contact unsubscribes before it goes
    dan = person(app, "dan")
    message = queue(app, dan, topic="news")
    app.consent.record(dan, "email", "*", "denied", source="preference centre")
    # When the dispatcher runs, the marketing email is skipped with the rule
    app.dispatcher.run_due()
    assert channel.sent == []
    assert row(app, message).rule == "consent"
    # But a billing alert (transactional) still goes
    billing = queue(app, dan, kind="transactional")
    app.dispatcher.run_due()
    assert row(app, billing).status == "sent"


def test_a_transient_error_is_retried_with_backoff_then_sent(
    app: Nurture, channel: MemoryChannel, clock: SimulatedClock
) -> None:
    eve = person(app, "eve")
    message = queue(app, eve)
    channel.fail_next(2, Retry("451 4.7.1 try again later"))
    app.dispatcher.run_due()
    first = row(app, message)
    assert first.status == "queued" and first.rule == "provider_retry"
    assert first.attempts == 1 and first.send_after > START
    assert "451" in first.reason
    drain(app, clock, until=timedelta(hours=2))
    done = row(app, message)
    assert done.status == "sent" and done.attempts == 3
    assert len(channel.sent) == 1


def test_retries_end_in_failure_after_the_last_attempt(
    app: Nurture, channel: MemoryChannel, clock: SimulatedClock
) -> None:
    fay = person(app, "fay")
    message = queue(app, fay)
    channel.fail_address("fay@example.com", Retry("connection reset"))
    drain(app, clock, until=timedelta(days=3))
    failed = row(app, message)
    assert failed.status == "failed"
    assert failed.attempts == app.settings.dispatch_attempts
    assert failed.reason.startswith(f"gave up after {app.settings.dispatch_attempts} attempts")


def test_a_permanent_rejection_fails_once_and_suppresses_the_address(
    app: Nurture, channel: MemoryChannel, clock: SimulatedClock
) -> None:
    gus = person(app, "gus")
    first = queue(app, gus)
    channel.fail_next(1, Failed("550 5.1.1 no such user", "550", bounce=True))
    app.dispatcher.run_due()
    stored = row(app, first)
    assert stored.status == "failed" and stored.attempts == 1
    assert stored.reason == "550 5.1.1 no such user"
    # Not retried, however long we wait
    drain(app, clock, until=timedelta(days=2))
    assert row(app, first).attempts == 1
    # And the address is suppressed: the next marketing and transactional emails are skipped
    later = [queue(app, gus), queue(app, gus, kind="transactional")]
    app.dispatcher.run_due()
    assert [row(app, m).rule for m in later] == ["suppressed", "suppressed"]
    assert channel.sent == []


def test_quiet_hours_delay_an_sms_to_the_morning_never_drop_it(
    app: Nurture, channel: MemoryChannel, clock: SimulatedClock
) -> None:
    # Given 22:00 in Berlin and a marketing SMS to a contact who opted in
    clock.set(datetime(2026, 3, 2, 21, 0, tzinfo=UTC))
    hal = person(app, "hal", phone="+4915112345678", timezone="Europe/Berlin", country="DE")
    app.consent.record(hal, "sms", "*", "granted", source="checkout", ip="192.0.2.1")
    message = queue(app, hal, channel="sms")
    app.dispatcher.run_due()
    held = row(app, message)
    assert held.status == "queued" and held.rule == "quiet_hours"
    assert held.send_after == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)  # 09:00 in Berlin
    assert channel.sent == []
    drain(app, clock, until=timedelta(days=1))
    (sms,) = channel.sent
    assert isinstance(sms.content, Sms) and sms.content.to == "+4915112345678"
    assert row(app, message).sent_at == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)


def test_a_lease_that_ran_out_is_sent_again_with_the_same_key_and_flagged(
    app: Nurture, channel: MemoryChannel, clock: SimulatedClock
) -> None:
    # Given a message a dispatcher claimed and then died with (status sending, lease set)
    ivy = person(app, "ivy")
    message = queue(app, ivy)
    lease = START + timedelta(minutes=5)
    with app.db.write() as conn:
        conn.execute(
            update(t.outbox)
            .where(t.outbox.c.id == message)
            .values(status="sending", lease_until=lease, attempts=1, sent_at=START)
        )
    # When another dispatcher runs before the lease ends, it leaves it alone
    assert app.dispatcher.run_due().claimed == 0
    # And after the lease, it sends it once, with the message's own key, flagged
    clock.set(lease)
    assert app.dispatcher.run_due().sent == 1
    (sent,) = channel.sent
    stored = row(app, message)
    assert sent.key == stored.idempotency_key
    assert stored.status == "sent" and stored.flagged and stored.attempts == 2


def test_a_throttling_provider_loses_nothing_and_the_rate_adapts(
    db: Database, clock: SimulatedClock
) -> None:
    # Given a provider that refuses more than 14 messages a second
    provider = MemoryChannel(rate_per_second=14, monotonic=clock.monotonic)
    nurture = Nurture(make_settings(str(db.url)), clock=clock, db=db, channels={"email": provider})
    with nurture:
        nurture.templates.put("welcome", WELCOME)
        for contact in people(nurture, 300):
            queue(nurture, contact, kind="transactional")
        # When the dispatcher works through them, polling every 0.2 s
        drain(nurture, clock, until=timedelta(hours=1), step=timedelta(seconds=0.2))
        # Then every message went, once, and the outbox shows all of them sent
        assert len(provider.sent) == 300
        assert len({o.key for o in provider.sent}) == 300
        assert nurture.messages.counts() == {"sent": 300}
        # And it took about as long as the provider's rate allows (it slowed down)
        elapsed = (clock.now() - START).total_seconds()
        assert 300 / 14 - 1 <= elapsed <= 300 / 14 * 4


def test_two_dispatchers_racing_send_each_message_once(db: Database, clock: SimulatedClock) -> None:
    if db.is_sqlite:
        pytest.skip("one writer on SQLite: dispatchers take turns, there is no race to test")
    provider = MemoryChannel(monotonic=clock.monotonic)
    a = Nurture(make_settings(str(db.url)), clock=clock, db=db, channels={"email": provider})
    b = Nurture(make_settings(str(db.url)), clock=clock, db=db, channels={"email": provider})
    with a:
        a.templates.put("welcome", WELCOME)
        for contact in people(a, 200):
            queue(a, contact, kind="transactional")
        a.dispatcher.options = type(a.dispatcher.options)(batch=20)
        b.dispatcher.options = type(b.dispatcher.options)(batch=20)

        def work(n: Nurture) -> None:
            while n.dispatcher.run_due().handled:
                pass

        threads = [threading.Thread(target=work, args=(n,)) for n in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(provider.sent) == 200
        assert len({o.key for o in provider.sent}) == 200


def test_frequency_caps_hold_across_a_batch(db: Database, clock: SimulatedClock) -> None:
    provider = MemoryChannel(monotonic=clock.monotonic)
    settings = make_settings(
        str(db.url),
        policy={"caps": [{"channel": "email", "max": 2, "per": "7d", "over": "skip"}]},
    )
    with Nurture(settings, clock=clock, db=db, channels={"email": provider}) as nurture:
        nurture.templates.put("welcome", WELCOME)
        jo = person(nurture, "jo")
        ids = [queue(nurture, jo) for _ in range(3)]
        nurture.dispatcher.run_due()
        assert [row(nurture, m).status for m in ids] == ["sent", "sent", "skipped"]
        assert row(nurture, ids[2]).rule == "frequency_cap"
        assert len(provider.sent) == 2


def test_a_template_file_that_breaks_skips_its_messages_not_the_round(
    db: Database, clock: SimulatedClock, tmp_path: Any
) -> None:
    # Given a template file that stopped compiling after its journey was published
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "broken.yaml").write_text("email: {subject: 'Hi {% if', html: x}\n")
    provider = MemoryChannel(monotonic=clock.monotonic)
    settings = make_settings(str(db.url), project_dir=tmp_path)
    with Nurture(settings, clock=clock, db=db, channels={"email": provider}) as nurture:
        nurture.templates.put("welcome", WELCOME)
        kim = person(nurture, "kim")
        bad, good = (
            queue(nurture, kim, template="broken"),
            queue(nurture, kim, kind="transactional"),
        )
        # When the dispatcher runs
        nurture.dispatcher.run_due()
        # Then the broken one is skipped with the template's problem, the other one goes
        skipped = row(nurture, bad)
        assert skipped.status == "skipped" and skipped.rule == "template"
        assert "broken" in skipped.reason
        assert row(nurture, good).status == "sent" and len(provider.sent) == 1
