"""Peer bug: Mautic kept resending to an address Amazon SES had rejected with a 554, for
days: a permanent error was treated like a temporary one, and the address never left the
list.

Here, end to end (journey → outbox → dispatcher → a real SMTP server, aiosmtpd, and the
local SES stand-in of tests/channels/servers.py): a permanent refusal (SMTP 5xx, SES
`MessageRejected`) fails the message once, with the provider's reason, and is never tried
again; an SMTP hard bounce (550 5.1.1, unknown user) also suppresses the address, so the
next message to it is not even attempted. Transient answers (SMTP 4xx, a timeout, HTTP 503,
429) are retried, with growing backoff, and a limit.

Naive implementations this catches: retrying every error ("maybe it works next time"),
failing without keeping the reason, treating any 5xx as a bounce, retrying at a fixed
interval or without end.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from tests.channels import servers
from tests.regressions.harness import Scene, Sent, scene

from nurture.channels.ses import SesChannel
from nurture.channels.smtp import SmtpChannel
from nurture.clock import SimulatedClock
from nurture.store import Database

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ATTEMPTS = 4
NEWS = {
    "key": "news",
    "trigger": {"event": "News Due"},
    "entry": {"reentry": "always"},
    "steps": [{"id": "issue", "type": "send", "channel": "email", "template": "news"}],
}


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


def newsletter(world: Scene, *users: str) -> dict[str, Sent]:
    """Each user is sent the newsletter (one round, as a worker would); their messages."""
    world.ingest([{"type": "track", "userId": u, "event": "News Due"} for u in users])
    latest = {m.contact_id: m for m in world.messages()}
    return {u: latest[world.contact(u)] for u in users}


def message(world: Scene, user: str) -> Sent:
    return world.messages(user)[-1]


def follow(world: Scene, user: str) -> list[datetime]:
    """Let time pass to each retry of `user`'s last message until it leaves the queue;
    returns the moment of every attempt after the first. Bounded: a retry loop fails."""
    moments: list[datetime] = []
    for _ in range(2 * ATTEMPTS):
        current = message(world, user)
        if current.status != "queued":
            return moments
        world.clock.set(max(current.send_after, world.clock.now()))
        world.n.dispatcher.run_due()
        moments.append(world.clock.now())
    raise AssertionError(f"{user}'s message is still queued after {2 * ATTEMPTS} rounds")


def growing(moments: list[datetime], first: datetime) -> list[float]:
    gaps = [(b - a).total_seconds() for a, b in zip([first, *moments], moments, strict=False)]
    assert gaps == sorted(gaps) and len(set(gaps)) == len(gaps), (
        gaps
    )  # backoff, not a fixed interval
    return gaps


@pytest.fixture
def smtp() -> Iterator[tuple[servers.SmtpHandler, int]]:
    with servers.smtp_server() as server:
        yield server


def test_smtp_5xx_fails_once_and_suppresses_4xx_and_timeouts_retry_with_a_limit(
    db: Database, clock: SimulatedClock, smtp: tuple[servers.SmtpHandler, int]
) -> None:
    handler, port = smtp
    channel = SmtpChannel("127.0.0.1", port, starttls=False, timeout=0.3, clock=clock)
    with scene(db, clock, templates=("news",), channels={"email": channel},
               dispatch_attempts=ATTEMPTS) as world:  # fmt: skip
        # Given customers whose mail server answers 550 5.1.1 (no such user), 451 4.3.0
        # (try later), 250, and not at all within the timeout
        world.publish(NEWS)
        for who in ("bad1", "boom1", "good1", "slow1"):
            world.identify(who, email=f"{who}@example.com")
        # When the newsletter goes out (to the slow one later: a timeout drops the
        # connection, and the rest of its batch with it)
        first = newsletter(world, "bad1", "boom1", "good1")
        sent_at = world.clock.now()
        # Then the hard bounce failed at once, with the server's words, and is suppressed
        bad = first["bad1"]
        assert (bad.status, bad.attempts) == ("failed", 1)
        assert bad.rule == "provider:smtp_550"
        assert bad.reason == "SMTP 550 5.1.1 <bad1@example.com>: no such user"
        entry = world.n.suppressions.lookup("email", "bad1@example.com")
        assert entry is not None and entry.reason == "bounced"
        assert first["good1"].status == "sent"
        # And the 451 waits for a retry
        assert (first["boom1"].status, first["boom1"].rule) == ("queued", "provider_retry")
        # When time passes, retry after retry, for the 451 and then for the timeout
        boom = follow(world, "boom1")
        newsletter(world, "slow1")
        slow_at = world.clock.now()
        slow = follow(world, "slow1")
        # Then each was tried ATTEMPTS times, further and further apart, then failed
        for who, moments, since, error in (("boom1", boom, sent_at, "SMTP 451 4.3.0"),
                                           ("slow1", slow, slow_at, "timed out")):  # fmt: skip
            last = message(world, who)
            assert (last.status, last.attempts) == ("failed", ATTEMPTS)
            assert (last.reason or "").startswith(f"gave up after {ATTEMPTS} attempts: ")
            assert error in (last.reason or "")
            assert growing(moments, since)[0] >= 15  # 30 s with jitter, then doubling
        # And the bounced address was never tried again, even by the next newsletter
        world.advance(timedelta(days=2))
        assert message(world, "bad1").attempts == 1
        again = newsletter(world, "bad1")["bad1"]
        assert (again.status, again.rule) == ("skipped", "suppressed")
        # (the server accepted only the good one: nothing else was ever delivered)
        assert [r.recipients for r in handler.received] == [["good1@example.com"]]
        channel.close()


def test_ses_message_rejected_fails_once_503_and_429_are_retried(
    db: Database, clock: SimulatedClock
) -> None:
    with servers.providers() as server:
        channel = SesChannel(region="eu-west-1", access_key_id="AKID",
                             secret_access_key="secret", endpoint=server.base, timeout=2.0,
                             clock=clock)  # fmt: skip
        with scene(db, clock, templates=("news",), channels={"email": channel},
                   dispatch_attempts=ATTEMPTS) as world:  # fmt: skip
            # Given customers SES answers MessageRejected (400), 503, 429 with
            # Retry-After: 7, and 200
            world.publish(NEWS)
            for who in ("bad1", "boom1", "throttle1", "good1"):
                world.identify(who, email=f"{who}@example.com")
            # When the newsletter goes out
            first = newsletter(world, "bad1", "boom1", "throttle1", "good1")
            sent_at = world.clock.now()
            # Then the rejection failed at once with SES's reason; SES's refusal is about the
            # message or the account, not the mailbox, so the address is not suppressed (the
            # hard bounce, when there is one, comes by SNS: test_feedback_order.py)
            bad = first["bad1"]
            assert (bad.status, bad.attempts) == ("failed", 1)
            assert bad.rule == "provider:ses_MessageRejected"
            assert bad.reason == "ses MessageRejected: Email address is not verified."
            assert world.n.suppressions.lookup("email", "bad1@example.com") is None
            assert first["good1"].status == "sent"
            # And the throttled one waits at least the Retry-After, without using a try
            throttled = first["throttle1"]
            assert (throttled.status, throttled.rule, throttled.attempts) == (
                "queued",
                "rate_limit",
                0,
            )
            assert throttled.send_after >= sent_at + timedelta(seconds=7)
            # When time passes
            boom = follow(world, "boom1")
            # Then the 503 was tried ATTEMPTS times with growing backoff, then failed
            last = message(world, "boom1")
            assert (last.status, last.attempts) == ("failed", ATTEMPTS)
            assert (last.reason or "").startswith(
                f"gave up after {ATTEMPTS} attempts: ses answered HTTP 503"
            )
            growing(boom, sent_at)
            # And SES saw the rejected message exactly once
            assert [r.recipient for r in server.requests].count("bad1@example.com") == 1
        channel.close()


def test_a_throttled_answer_that_never_clears_also_ends(
    db: Database, clock: SimulatedClock, smtp: tuple[servers.SmtpHandler, int]
) -> None:
    _, port = smtp
    channel = SmtpChannel("127.0.0.1", port, starttls=False, timeout=0.3, clock=clock)
    with scene(db, clock, templates=("news",), channels={"email": channel},
               dispatch_attempts=ATTEMPTS) as world:  # fmt: skip
        # Given a customer whose mail server answers 451 4.7.1 (rate limited) every time
        world.publish(NEWS)
        world.identify("throttle1", email="throttle1@example.com")
        newsletter(world, "throttle1")
        # When time passes: a day of retries, whatever their pace, at most 100 rounds
        end = world.clock.now() + timedelta(days=1)
        for _ in range(100):
            due = world.n.dispatcher.next_due()
            if due is None or due > end:
                break
            world.clock.set(max(due, world.clock.now() + timedelta(seconds=0.2)))
            world.n.dispatcher.run_due()
        # Then the message has left the queue: failed, with the server's reason
        last = message(world, "throttle1")
        channel.close()
        assert last.status == "failed", (last.status, last.attempts, last.reason)
        assert "451 4.7.1" in (last.reason or "")
