"""What a step does, as pure functions: given a journey, an enrolment, the contact and
the time, the transition to make. No I/O here: the runtime (`runtime.py`) writes the
transitions to the database, the back-test (`backtest.py`) keeps them in memory, and
both mean the same journey.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, assert_never

from nurture import localtime
from nurture.conditions.model import Condition
from nurture.conditions.values import json_at
from nurture.journeys.model import (
    END,
    BranchStep,
    ExitStep,
    HttpTarget,
    Journey,
    NotifyStep,
    ScoreStep,
    SendStep,
    SplitStep,
    UpdateStep,
    WaitStep,
    WebhookStep,
)


@dataclass(slots=True)
class Contact:
    """What steps read of a contact."""

    id: int
    timezone: str | None = None
    email: str | None = None
    phone: str | None = None
    user_id: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)

    def to_context(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "userId": self.user_id,
            "email": self.email,
            "phone": self.phone,
            "traits": self.traits,
        }


@dataclass(slots=True)
class Enrolment:
    id: int
    journey_key: str
    version: int
    contact_id: int
    step: str | None
    due_at: datetime | None
    seq: int
    attempts: int
    control: bool
    context: dict[str, Any]
    entered_at: datetime
    status: str = "active"

    @property
    def run_key(self) -> str:
        """Names this run of the current step: the outbox idempotency key."""
        return f"{self.id}:{self.seq}"


@dataclass(slots=True)
class Transition:
    """The result of running a step (or of arriving at a journey's first step)."""

    outcome: str  # for the step log: sent, waited, case:0, path:A, ...
    step: str | None  # the step to run next; None when the enrolment ends
    due_at: datetime | None
    status: str = "active"  # active | completed | exited
    reason: str | None = None
    message: dict[str, Any] | None = None  # an outbox row (without ids and times)
    update: UpdateStep | None = None
    score: ScoreStep | None = None


# A condition's truth for the enrolment's contact, now (facts loaded on demand).
Holds = Callable[[Condition], bool]


def unit(*parts: object) -> float:
    """A stable number in [0, 1) from `parts`: the same contact always gets the same
    split path, variant and holdout group, in every process and every run."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def pick(weights: list[float], draw: float) -> int:
    """The index whose share of the total weight `draw` (in [0, 1)) falls in."""
    total = sum(weights)
    mark = draw * total
    running = 0.0
    for i, weight in enumerate(weights):
        running += weight
        if mark < running:
            return i
    return len(weights) - 1


def arrive(
    journey: Journey,
    step_id: str,
    contact: Contact,
    context: dict[str, Any],
    now: datetime,
    default_tz: str,
) -> datetime:
    """When the enrolment arriving at `step_id` now runs it: later for waits, now else.
    Notes the wait's start in `context`."""
    step = journey.step(step_id)
    if not isinstance(step, WaitStep):
        return now
    context["wait"] = {"step": step.id, "since": now.isoformat()}
    if step.for_ is not None:
        return now + step.for_
    if step.until_event is not None:
        assert step.timeout is not None
        return now + step.timeout
    tz = localtime.zone(contact.timezone, default_tz)  # only windows and dates are local
    if step.until_window is not None:
        return step.until_window.window().next_open(now, tz)
    if step.until_date is not None:
        spec = step.until_date
        value = _date_of(contact, spec.trait)
        if value is None:
            return now  # no date: nothing to wait for (recorded as "no date" when run)
        # Whole days move the local date (DST-safe); what is left of the offset (12h)
        # is added as elapsed time.
        days = spec.offset.days
        at = localtime.date_at(value, days, localtime.parse_clock(spec.at), tz)
        return max(at + (spec.offset - timedelta(days=days)), now)
    raise AssertionError("a wait has exactly one kind")


def _date_of(contact: Contact, trait: str) -> date | None:
    return localtime.parse_date_value(json_at(contact.traits, trait))


def run(
    journey: Journey,
    enrolment: Enrolment,
    contact: Contact,
    holds: Holds,
    now: datetime,
    default_tz: str,
    winners: Winners | None = None,
) -> Transition:
    """Run the enrolment's current step (not webhooks: see `http_call`). `winners` tells
    split steps with an automatic winner whether it is decided (none: never)."""
    assert enrolment.step is not None
    step = journey.step(enrolment.step)
    following = journey.following(step.id)
    context = enrolment.context
    outcome: str
    target = following
    message: dict[str, Any] | None = None
    update: UpdateStep | None = None
    score: ScoreStep | None = None
    match step:
        case WaitStep():
            tz = localtime.zone(contact.timezone, default_tz)
            window = step.until_window.window() if step.until_window is not None else None
            if window is not None and not window.contains(now, tz):
                # Late (a paused journey resumed, a worker was down): wait for the window.
                return Transition("", step.id, window.next_open(now, tz))
            if step.until_event is not None:
                outcome, target = "timeout", step.on_timeout or following
            elif (
                step.until_date is not None
                and localtime.parse_date_value(json_at(contact.traits, step.until_date.trait))
                is None
            ):
                outcome = "no date"
            else:
                outcome = "waited"
            context.pop("wait", None)
        case SendStep():
            variant = None
            template = step.template
            if step.variants:
                draw = unit(journey.key, step.id, contact.id, "variant")
                chosen = step.variants[pick([v.weight for v in step.variants], draw)]
                variant, template = chosen.name, chosen.template
            message = {
                "channel": step.channel,
                "template": template,
                "variant": variant,
                "kind": step.kind,
                "topic": step.topic,
                "recipient": None,
                "payload": payload(journey, enrolment),
            }
            if step.at is not None:
                message["payload"]["send_at"] = step.at
            outcome = f"sent:{variant}" if variant else "sent"
        case BranchStep():
            outcome, target = "else", step.else_ or following
            for i, case in enumerate(step.cases):
                if holds(case.if_):
                    outcome, target = f"case:{i}", case.next
                    break
        case SplitStep():
            outcome, target = split(journey, step, enrolment, contact, winners)
        case UpdateStep():
            outcome, update = "updated", step
        case ScoreStep():
            outcome, score = "scored", step
        case NotifyStep():
            assert step.to is not None, "webhook notifications run through http_call"
            message = {
                "channel": "email",
                "template": step.template,
                "variant": None,
                "kind": "notification",
                "topic": None,
                "recipient": step.to,
                "payload": {**payload(journey, enrolment), "note": step.note},
            }
            outcome = "notified"
        case ExitStep():
            return Transition(
                "exited", None, None, status="exited", reason=step.reason or f"step {step.id}"
            )
        case WebhookStep():
            raise AssertionError("webhook steps run through http_call")
        case _:
            assert_never(step)
    moved = move(journey, target, contact, context, now, default_tz)
    moved.outcome = outcome
    moved.message, moved.update, moved.score = message, update, score
    return moved


# -- split steps ------------------------------------------------------------------------
# The decided winner of a split step with a `winner:` block, by (journey, version, step):
# the path's name, or None while undecided (nurture.analytics.winners.SplitWinners).
Winners = Callable[[Journey, int, SplitStep], str | None]


def split(
    journey: Journey,
    step: SplitStep,
    enrolment: Enrolment,
    contact: Contact,
    winners: Winners | None,
) -> tuple[str, str]:
    """(outcome, target) of a split step. A random path is logged `path:NAME` (the
    experiment counts these); the decided winner's path `winner:NAME` (it does not)."""
    if step.winner is not None and winners is not None:
        decided = winners(journey, enrolment.version, step)
        for path in step.paths:
            if path.name == decided:
                return f"winner:{path.name}", path.next
    draw = unit(journey.key, step.id, contact.id)
    path = step.paths[pick([p.weight for p in step.paths], draw)]
    return f"path:{path.name}", path.next


# -- end split steps --------------------------------------------------------------------


def move(
    journey: Journey,
    target: str,
    contact: Contact,
    context: dict[str, Any],
    now: datetime,
    default_tz: str,
) -> Transition:
    """Go to `target` (a step id or the end)."""
    if target == END:
        return Transition("", None, None, status="completed", reason="completed")
    due = arrive(journey, target, contact, context, now, default_tz)
    return Transition("", target, due)


def http_target(journey: Journey, step_id: str) -> HttpTarget | None:
    """The HTTP call a step makes, if it is a webhook or a webhook notification."""
    step = journey.step(step_id)
    if isinstance(step, WebhookStep):
        return step
    if isinstance(step, NotifyStep) and step.webhook is not None:
        return step.webhook
    return None


def http_body(journey: Journey, enrolment: Enrolment, contact: Contact) -> Any:
    assert enrolment.step is not None
    step = journey.step(enrolment.step)
    if isinstance(step, WebhookStep) and step.body is not None:
        return step.body
    body = {**payload(journey, enrolment), "contact": contact.to_context()}
    if isinstance(step, NotifyStep):
        body["note"] = step.note
    return body


def payload(journey: Journey, enrolment: Enrolment) -> dict[str, Any]:
    """What a message knows besides the contact (read fresh when it is sent): the event
    that started the enrolment, the event that ended a wait, and where it comes from."""
    context = enrolment.context
    return {
        "journey": {"key": journey.key, "version": enrolment.version, "step": enrolment.step},
        "enrolment": enrolment.id,
        "trigger": context.get("trigger"),
        "event": context.get("event"),
    }
