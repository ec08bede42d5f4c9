"""A small world for journey scenarios: a Nurture on a simulated clock, customers who
do things at given times, and time that passes in jumps from one due step to the next
(so weeks of customer life run in a second). Nothing here imitates our own code: the
events go through ingest, the steps through the journey runtime, as in production."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.journeys import schedules
from nurture.store import tables as t

TEMPLATES = ("cart_reminder", "cart_discount", "cart_sms", "welcome", "tip_import",
             "tip_invite", "renewal_notice", "renewal_last_call", "reminder", "lead_digest",
             "usage_summary", "variant_a", "variant_b")  # fmt: skip


# Abandoned cart: wait 1 h, email; no order → wait 1 day, branch on cart value (discount
# email or SMS); an order for this cart converts and ends it.
ABANDONED_CART: dict[str, Any] = {
    "key": "abandoned_cart",
    "name": "Abandoned cart",
    "trigger": {"event": "Product Added"},
    "entry": {"reentry": "always"},
    "goal": {"event": "Order Completed", "same": ["cart_id"], "revenue": "total", "within": "7d"},
    "exit": [{"event": "Order Completed", "same": ["cart_id"]}],
    "steps": [
        {"id": "wait_hour", "type": "wait", "for": "1h"},
        {"id": "reminder", "type": "send", "channel": "email", "template": "cart_reminder"},
        {"id": "wait_day", "type": "wait", "for": "1d"},
        {
            "id": "by_value",
            "type": "branch",
            "cases": [
                {
                    "if": {"event": "Product Added", "where": [{"property": "price", "gte": 100}]},
                    "next": "discount",
                }
            ],
            "else": "sms",
        },
        {"id": "discount", "type": "send", "channel": "email", "template": "cart_discount",
         "next": "end"},
        {"id": "sms", "type": "send", "channel": "sms", "template": "cart_sms"},
    ],
}  # fmt: skip


def make_templates(project: Path) -> None:
    folder = project / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATES:
        # A real template (docs/templates.md) for every channel, so messages can be sent.
        (folder / f"{name}.yaml").write_text(
            f"email: {{subject: {name}, html: '<p>{name}</p>'}}\n"
            f"sms: {{body: {name}}}\npush: {{title: {name}, body: {name}}}\n"
        )


@dataclass
class Message:
    contact_id: int
    journey: str | None
    step: str | None
    channel: str
    template: str | None
    variant: str | None
    created_at: datetime
    recipient: str | None


class World:
    def __init__(self, nurture: Nurture) -> None:
        self.n = nurture
        assert isinstance(nurture.clock, SimulatedClock)
        self.clock: SimulatedClock = nurture.clock
        self._ids = itertools.count(1)

    # -- customers -------------------------------------------------------------------
    def identify(self, user: str, **traits: Any) -> int:
        self._send({"type": "identify", "userId": user, "traits": traits})
        return self.contact(user)

    def track(self, user: str, event: str, **props: Any) -> None:
        self._send({"type": "track", "userId": user, "event": event, "properties": props})

    def _send(self, message: dict[str, Any]) -> None:
        message = {
            **message,
            "messageId": f"m-{next(self._ids)}",
            "timestamp": self.clock.now().isoformat(),
        }
        self.n.ingest([message])
        self.run()

    def contact(self, user: str) -> int:
        with self.n.db.read() as conn:
            c = t.contacts.c
            return int(conn.execute(select(c.id).where(c.user_id == user)).scalar_one())

    # -- journeys --------------------------------------------------------------------
    def publish(self, definition: dict[str, Any]) -> dict[str, Any]:
        return self.n.journeys.save(definition, publish=True)

    # -- time ------------------------------------------------------------------------
    def run(self) -> int:
        """Work until nothing is left at the current time."""
        total = 0
        for _ in range(1000):
            done = self.n.engine.evaluate_pending(500)
            done += self.n.journey_runtime.process_inbox()
            done += self.n.journey_runtime.run_due()
            done += schedules.scan(self.n.journey_runtime)
            total += done
            if not done:
                return total
        raise AssertionError("the world never came to rest: a loop?")

    def advance(self, delta: timedelta) -> None:
        """Let `delta` pass, stopping at each due step on the way."""
        target = self.clock.now() + delta
        while True:
            due = self._next_due()
            fire = schedules.next_fire(self.n.journey_runtime, target)
            if fire is not None and (due is None or fire < due):
                due = fire
            if due is None or due > target:
                break
            if due > self.clock.now():
                self.clock.set(due)
            if not self.run():
                raise AssertionError(f"a step due at {due} does not run")
        self.clock.set(target)
        self.run()

    def _next_due(self) -> datetime | None:
        with self.n.db.read() as conn:
            n = t.enrolments.c
            paused = select(t.journeys.c.key).where(t.journeys.c.status == "paused")
            due: datetime | None = conn.execute(
                select(func.min(n.due_at)).where(n.status == "active", n.journey_key.not_in(paused))
            ).scalar()
            return due

    # -- what happened ---------------------------------------------------------------
    def outbox(self, user: str | None = None) -> list[Message]:
        with self.n.db.read() as conn:
            o = t.outbox.c
            query = select(t.outbox).order_by(o.id)
            if user is not None:
                query = query.where(o.contact_id == self.contact(user))
            return [
                Message(r.contact_id, r.journey_key, r.step, r.channel, r.template, r.variant,
                        r.created_at, r.recipient)
                for r in conn.execute(query)
            ]  # fmt: skip

    def templates(self, user: str) -> list[str | None]:
        return [m.template for m in self.outbox(user)]

    def enrolments(self, journey: str, user: str | None = None) -> list[Any]:
        with self.n.db.read() as conn:
            n = t.enrolments.c
            query = select(t.enrolments).where(n.journey_key == journey).order_by(n.id)
            if user is not None:
                query = query.where(n.contact_id == self.contact(user))
            return list(conn.execute(query))

    def steps(self, enrolment_id: int) -> list[tuple[str, str]]:
        with self.n.db.read() as conn:
            s = t.journey_steps.c
            return [
                (r.step, r.outcome)
                for r in conn.execute(
                    select(s.step, s.outcome).where(s.enrolment_id == enrolment_id).order_by(s.seq)
                )
            ]
