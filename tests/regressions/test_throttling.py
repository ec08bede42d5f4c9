"""Peer bug: listmonk users saw half of a campaign never delivered when Amazon SES
throttled them: messages refused with "Throttling" were counted as sent, or as failed,
and nobody noticed until the numbers did not add up.

Here a campaign goes through a provider that accepts 14 messages a second and answers
"429 / Throttling" above that (the in-memory provider, driven by the simulated clock; the
dispatcher polls every second): every message is delivered in the end, exactly once; the
dispatcher finds the provider's pace (most of the time near its limit, with a small number
of refusals, not one per message); and the outbox shows the progress while it runs.

10,000 messages on SQLite; PostgreSQL, whose transactions cost more per round, sends 2,000
so that the suite stays fast (the behaviour is the same: so are the rounds). A round takes
at most two seconds' worth of messages (`dispatch_batch`): the dispatcher renders what it
claims before its throttle decides how many may go, so a bigger batch only renders more
messages to hold back, round after round.

Naive implementations this catches: a refusal counted as sent (lost messages), counted as
a failed attempt (messages failed after N refusals), retried all at once (a 429 per
message and no progress), or slowed down for good (the campaign takes hours).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from tests.conftest import make_settings
from tests.messages.test_dispatch import people
from tests.regressions.harness import OPT_OUT, template

from nurture.channels.base import Outgoing, Result, Retry
from nurture.channels.memory import MemoryChannel
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_rows

RATE = 14  # messages a second the provider accepts
POLL = timedelta(seconds=1)
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class CountingProvider:
    """The in-memory provider, counting the throttling answers it gave (what an operator
    would read off the provider's dashboard)."""

    def __init__(self, inner: MemoryChannel) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.channels = inner.channels
        self.refused = 0

    def send(self, batch: Sequence[Outgoing]) -> list[Result]:
        results = self.inner.send(batch)
        self.refused += sum(isinstance(r, Retry) and r.throttled for r in results)
        return results

    def close(self) -> None:
        self.inner.close()


def test_a_throttled_campaign_is_delivered_whole_once_at_the_providers_pace(db: Database) -> None:
    n = 10_000 if db.is_sqlite else 2_000
    clock = SimulatedClock(START)
    memory = MemoryChannel(rate_per_second=RATE, monotonic=clock.monotonic)
    provider = CountingProvider(memory)
    settings = make_settings(str(db.url), policy=OPT_OUT, dispatch_batch=2 * RATE)
    with Nurture(settings, clock=clock, db=db, channels={"email": provider}) as nurture:
        # Given a campaign of n marketing emails, all due now
        nurture.templates.put("campaign", template("campaign"))
        now = clock.now()
        rows = [
            {"idempotency_key": f"campaign:{c}", "contact_id": c, "channel": "email",
             "template": "campaign", "kind": "marketing", "payload": {}, "status": "queued",
             "created_at": now, "send_after": now}
            for c in people(nurture, n)
        ]  # fmt: skip
        with nurture.db.write() as conn:
            insert_rows(conn, t.outbox, rows)
        # When the dispatcher works through it, polling every second, and someone watches
        # the outbox every simulated minute
        progress: list[dict[str, int]] = []
        watched = clock.now()
        for _ in range(n):  # bounded: a round is 14 messages at the limit
            nurture.dispatcher.run_due()
            if clock.now() - watched >= timedelta(minutes=1):
                progress.append(nurture.messages.counts())
                watched = clock.now()
            due = nurture.dispatcher.next_due()
            if due is None:
                break
            clock.set(max(due, clock.now() + POLL))
        elapsed = (clock.now() - START).total_seconds()

        # Then every message was delivered, exactly once
        assert nurture.messages.counts() == {"sent": n}
        keys = [o.key for o in memory.sent]
        assert len(keys) == len(set(keys)) == n
        # And the outbox showed steady progress, nothing lost or failed on the way
        assert len(progress) >= n // RATE // 60 - 1
        sent = [p.get("sent", 0) for p in progress]
        assert sent == sorted(sent) and len(set(sent)) == len(sent)
        assert all(
            sum(p.values()) == n and set(p) <= {"queued", "sending", "sent"} for p in progress
        )
        # And the rate adapted: over the campaign the provider accepted between half its
        # limit and its limit, with throttling answers for a small share of messages only
        assert RATE / 2 <= n / elapsed <= RATE, n / elapsed
        assert provider.refused <= 0.05 * n, provider.refused
