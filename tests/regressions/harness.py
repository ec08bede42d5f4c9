"""The whole path for regression scenarios: customers do things, journeys write the outbox,
the dispatcher sends it through a channel, and time passes in jumps from one due moment
to the next on a simulated clock (journey steps, date triggers and queued messages alike).

`Scene` is the journey `World` with the dispatcher added to each round, so a scenario sees
what a customer would receive and when, not only what was queued. Nothing here imitates
our own code: events go through ingest, steps through the journey runtime, messages
through the dispatcher and a real channel adapter (the in-memory one unless a test gives
another).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from tests.conftest import make_settings
from tests.journeys.world import World

from nurture.channels.base import Channel
from nurture.channels.memory import MemoryChannel
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.store import Database
from nurture.store import tables as t

# Marketing goes out unless refused: the scenarios are about timing and counting, not about
# consent (tests/messages/test_consent.py covers that).
OPT_OUT = {"consent_modes": {"email": "opt_out", "sms": "opt_out", "push": "opt_out"}}


def template(key: str) -> dict[str, Any]:
    """A template with an email and an SMS part, each naming the template."""
    return {"email": {"subject": key, "html": f"<p>{key}</p>"}, "sms": {"body": key}}


@dataclass(frozen=True)
class Sent:
    """One outbox row as the customer experiences it."""

    id: int
    contact_id: int
    journey: str | None
    step: str | None
    channel: str
    template: str | None
    variant: str | None
    status: str
    rule: str | None
    reason: str | None
    attempts: int
    created_at: datetime
    send_after: datetime
    sent_at: datetime | None
    idempotency_key: str


class Scene(World):
    """A World whose rounds also run the dispatcher, and which records every round."""

    def __init__(self, nurture: Nurture, channel: MemoryChannel) -> None:
        super().__init__(nurture)
        self.channel = channel
        self.rounds: list[datetime] = []  # the moment of each round that did some work

    def run(self) -> int:
        """Journeys and the dispatcher, until neither has anything left at this moment."""
        total = 0
        for _ in range(1000):
            done = super().run() + self.n.dispatcher.run_due().handled
            if not done:
                return total
            total += done
            self.rounds.append(self.clock.now())
        raise AssertionError("the scene never came to rest: a loop?")

    def ingest(self, messages: list[dict[str, Any]]) -> None:
        """Many customers' messages in one batch (each with a messageId of its own), then
        one round: faster than one `track` each."""
        now = self.clock.now().isoformat()
        self.n.ingest(
            [{"messageId": f"m-{next(self._ids)}", "timestamp": now, **m} for m in messages]
        )
        self.run()

    def _next_due(self) -> datetime | None:
        due = [super()._next_due(), self.n.dispatcher.next_due()]
        return min((d for d in due if d is not None), default=None)

    def messages(self, user: str | None = None) -> list[Sent]:
        """Every outbox row (of `user`), oldest first."""
        o = t.outbox.c
        query = select(t.outbox).order_by(o.id)
        if user is not None:
            query = query.where(o.contact_id == self.contact(user))
        with self.n.db.read() as conn:
            return [
                Sent(r.id, r.contact_id, r.journey_key, r.step, r.channel, r.template, r.variant,
                     r.status, r.rule, r.reason, r.attempts, r.created_at, r.send_after,
                     r.sent_at, r.idempotency_key)
                for r in conn.execute(query)
            ]  # fmt: skip

    def count(self, table: Any, *where: Any) -> int:
        with self.n.db.read() as conn:
            query = select(func.count()).select_from(table).where(*where)
            return int(conn.execute(query).scalar_one())


@contextmanager
def scene(
    db: Database,
    clock: SimulatedClock,
    *,
    templates: tuple[str, ...],
    channel: MemoryChannel | None = None,
    channels: dict[str, Channel] | None = None,
    **settings: Any,
) -> Iterator[Scene]:
    """A started Nurture on `db` and `clock` with `templates` stored, every channel
    delivered by `channel` (a fresh MemoryChannel on the clock unless given)."""
    memory = channel or MemoryChannel(monotonic=clock.monotonic)
    wired: dict[str, Channel] = {c: memory for c in ("email", "sms", "push", "voice")}
    wired.update(channels or {})
    options = {"default_timezone": "UTC", "policy": OPT_OUT, **settings}
    nurture = Nurture(make_settings(str(db.url), **options), clock=clock, db=db, channels=wired)
    with nurture:
        for key in templates:
            nurture.templates.put(key, template(key))
        yield Scene(nurture, memory)
