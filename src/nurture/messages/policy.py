"""The send-time policy: may this message go now, later, or never?

`decide` is pure: it reads the message, the facts `load_facts` loaded for its contact, the
configuration and the time, and answers `Allow()`, `Delay(until, rule, reason)` or
`Skip(rule, reason)`. The rules, in the order they are checked:

1. the contact exists, and has an address the channel can reach (`no_contact`,
   `no_address`, `invalid_address`);
2. the address is not suppressed (`suppressed`): bounces, complaints, erasure and manual
   entries stop every kind of message, and an SMS STOP stops every text (CTIA: after STOP
   nothing but the opt-out confirmation may be sent) but not calls;
3. marketing has the consent its channel and country require (`consent`,
   `opt_in_required`); transactional messages and notifications skip this rule;
4. the moment: the local send time (`send_time`), quiet hours (`quiet_hours`) and frequency
   caps (`frequency_cap`) together give the first moment all of them allow. A message is
   delayed, never dropped, by these, except by a cap configured to skip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

import phonenumbers

from nurture.conditions.durations import format_duration
from nurture.localtime import local_datetime, parse_clock
from nurture.messages.facts import ConsentState, PolicyFacts, PolicyMessage, load_facts
from nurture.messages.policy_config import PolicyConfig

__all__ = [
    "Allow",
    "Decision",
    "Delay",
    "PolicyConfig",
    "PolicyFacts",
    "PolicyMessage",
    "Skip",
    "decide",
    "decide_all",
    "load_facts",
]

Rule = Literal[
    "no_contact",
    "no_address",
    "invalid_address",
    "suppressed",
    "consent",
    "opt_in_required",
    "quiet_hours",
    "frequency_cap",
    "send_time",
]
CONSENT_CHANNELS = frozenset({"email", "sms", "voice", "push"})
_ROUNDS = 8  # quiet hours and caps push the moment forward; they settle in two or three


@dataclass(frozen=True, slots=True)
class Allow:
    """Send it now."""


@dataclass(frozen=True, slots=True)
class Delay:
    """Not yet: ask again at `until` (UTC)."""

    until: datetime
    rule: Rule
    reason: str


@dataclass(frozen=True, slots=True)
class Skip:
    """Never: the message is not sent."""

    rule: Rule
    reason: str


Decision = Allow | Delay | Skip


def recipient_address(recipient: str) -> str:
    """How a notification's recipient is looked up in the suppression list."""
    return recipient.strip().lower()


@lru_cache(maxsize=65536)
def _landline(number: str) -> bool:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.FIXED_LINE


def decide(
    message: PolicyMessage, facts: PolicyFacts, config: PolicyConfig, now: datetime
) -> Decision:
    """Whether `message` may go at `now`, later, or not at all (see the module doc)."""
    if not facts.found:
        return Skip("no_contact", f"contact {message.contact_id} no longer exists")
    if message.kind == "notification" and message.recipient:
        reason = facts.suppressed.get(recipient_address(message.recipient))
        if reason is not None:
            return Skip("suppressed", f"{message.recipient} is suppressed ({reason})")
        return Allow()
    refused = _address(message.channel, facts)
    if refused is not None:
        return refused
    if message.kind == "notification":
        return Allow()  # about the contact, to the contact: no consent or timing rules
    if message.kind == "marketing" and message.channel in CONSENT_CHANNELS:
        refused = _consent(message, facts, config)
        if refused is not None:
            return refused
    return _moment(message, facts, config, now)


def decide_all(
    messages: Sequence[PolicyMessage],
    facts: dict[int, PolicyFacts],
    config: PolicyConfig,
    now: datetime,
) -> dict[int, Decision]:
    """`decide` for a batch, oldest first; each message allowed counts against the caps
    of the messages after it (two messages to one contact in one batch are two sends)."""
    decisions: dict[int, Decision] = {}
    for message in sorted(messages, key=lambda m: (m.send_after, m.created_at, m.id)):
        f = facts[message.id]
        decision = decide(message, f, config, now)
        decisions[message.id] = decision
        if isinstance(decision, Allow) and message.kind != "notification":
            f.record_send(message.channel, message.kind, now)
    return decisions


def _address(channel: str, facts: PolicyFacts) -> Skip | None:
    """Skip when the channel cannot reach the contact, or may not (suppression)."""
    field = {"email": "email", "sms": "phone", "voice": "phone"}.get(channel)
    if field is not None:
        address = facts.email if field == "email" else facts.phone
        if address is None:
            if field in facts.issues:
                return Skip("invalid_address", f"the {field} cannot be used: {facts.issues[field]}")
            return Skip("no_address", f"the contact has no {field}")
        if channel == "sms" and _landline(address):
            return Skip("invalid_address", f"{address} is a landline; it cannot receive texts")
        reason = facts.suppressed.get(address)
        # STOP is an answer to texts: it does not stop calls.
        if reason is not None and not (reason == "stop" and channel == "voice"):
            return Skip("suppressed", f"the {field} is suppressed ({reason})")
    elif channel == "push" and not facts.push:
        return Skip("no_address", "the contact has no live push subscription")
    return None


def _consent(message: PolicyMessage, facts: PolicyFacts, config: PolicyConfig) -> Skip | None:
    """Marketing needs granted consent (opt-in) or no refusal (opt-out). Of the topic's
    own consent and the channel-wide one ("*"), the one recorded last speaks."""
    channel, topic = message.channel, message.topic
    specific = facts.consents.get((channel, topic)) if topic and topic != "*" else None
    overall = facts.consents.get((channel, "*"))
    latest: ConsentState | None = specific
    if overall is not None and (latest is None or overall.recorded_at > latest.recorded_at):
        latest = overall
    about = f"{channel} marketing" + (f" about {topic!r}" if topic else "")
    mode = config.mode(channel, facts.country)
    where = f" in {facts.country}" if facts.country else " (country unknown)"
    if latest is None:
        if mode == "opt_in":
            return Skip("opt_in_required", f"{about}{where} needs opt-in; the contact gave none")
        return None
    day = latest.recorded_at.date().isoformat()
    scope = "all topics" if latest is overall else repr(topic)
    if latest.state == "denied":
        return Skip("consent", f"the contact opted out of {channel} {scope} on {day}")
    if latest.state == "pending":
        return Skip("opt_in_required", f"{about} waits for double opt-in confirmation")
    return None


def _moment(
    message: PolicyMessage, facts: PolicyFacts, config: PolicyConfig, now: datetime
) -> Decision:
    """The first moment from `now` that send time, quiet hours and caps all allow."""
    tz = ZoneInfo(facts.timezone)
    moment, reason = now, ""
    rule: Rule | None = None
    send_at = _send_at(message, config)
    if send_at is not None:
        target = _send_time_target(message.created_at, send_at, config.send_time.grace, tz)
        if target > moment:
            moment, rule = target, "send_time"
            reason = f"sends at {send_at:%H:%M} {tz.key}: waits until {_local(target, tz)}"
    quiet = config.quiet_hours.get(message.channel)  # type: ignore[call-overload]
    if quiet is not None and message.kind not in quiet.kinds:
        quiet = None
    caps = [c for c in config.caps if c.channel == message.channel and c.kind == message.kind]
    for _ in range(_ROUNDS):
        moved = False
        if quiet is not None and quiet.window.contains(moment, tz):
            moment, rule, moved = quiet.window.next_close(moment, tz), "quiet_hours", True
            reason = (
                f"quiet hours for {message.channel} {quiet.start}-{quiet.end} {tz.key}: "
                f"waits until {_local(moment, tz)}"
            )
        for cap in caps:
            sent = facts.sent.get((cap.channel, cap.kind), [])
            counted = [s for s in sent if moment - cap.per < s <= moment]
            if len(counted) < cap.max:
                continue
            limit = f"{cap.max} {cap.kind} {cap.channel} per {format_duration(cap.per)}"
            if cap.over == "skip":
                return Skip("frequency_cap", f"frequency cap of {limit} reached")
            # Free once enough of the counted sends have left the window.
            moment, rule, moved = counted[len(counted) - cap.max] + cap.per, "frequency_cap", True
            reason = f"frequency cap of {limit} reached: waits until {_local(moment, tz)}"
        if not moved:
            break
    if rule is None or moment <= now:
        return Allow()
    return Delay(moment, rule, reason)


def _send_at(message: PolicyMessage, config: PolicyConfig) -> time | None:
    """The local time of day the message should go at, if any. A payload's `send_at`
    that is not a time of day is ignored rather than holding the message forever."""
    given = message.payload.get("send_at") if message.payload else None
    if isinstance(given, str):
        try:
            return parse_clock(given)
        except ValueError:
            pass
    if message.kind == "marketing":
        default = config.send_time.channels.get(message.channel)  # type: ignore[call-overload]
        if default is not None:
            return parse_clock(default)
    return None


def _send_time_target(created: datetime, at: time, grace: timedelta, tz: ZoneInfo) -> datetime:
    """The send-time moment, fixed by when the message was queued (not by now): the first
    local `at` that is not more than `grace` before `created`. Anchoring it there means a
    message held past it (quiet hours, a cap, an outage) is never pushed another day."""
    first = created.astimezone(tz).date() - timedelta(days=1)
    for offset in range(4):
        target = local_datetime(first + timedelta(days=offset), at, tz)
        if target + grace > created:
            return target
    raise AssertionError("unreachable: one of four days has the time")


def _local(moment: datetime, tz: ZoneInfo) -> str:
    return f"{moment.astimezone(tz):%Y-%m-%d %H:%M}"
