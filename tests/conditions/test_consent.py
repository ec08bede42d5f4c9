"""The `consent:` condition means what the sending rules mean (docs/policy.md, Consent):
consent is per channel and topic, `*` stands for all marketing of a channel, and of a
topic's own consent and the channel's `*` one, the one recorded last speaks.

Consents are recorded the way the product records them (ConsentService, the clock moving
between changes); segments then select through both evaluators: the in-memory one (a
contact's real-time evaluation) and the SQL one (a segment preview), on SQLite and
PostgreSQL. A property test holds the condition to the policy's own decision.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from nurture.clock import SimulatedClock
from nurture.conditions.env import Env
from nurture.conditions.facts import ContactFacts
from nurture.conditions.memory import Evaluator
from nurture.conditions.model import parse_condition
from nurture.core import Nurture
from nurture.messages.facts import ConsentState, PolicyFacts, PolicyMessage
from nurture.messages.policy import PolicyConfig, Skip, decide
from nurture.store import tables as t
from nurture.store.types import to_microseconds

# Each contact's consent changes, oldest first: (channel, topic, state, hours later).
# 0 hours later: recorded at the same moment as the change before it.
HISTORIES: dict[str, list[tuple[str, str, str, int]]] = {
    "all_granted": [("email", "*", "granted", 1)],
    "news_only": [("email", "news", "granted", 1)],
    "all_then_news_off": [("email", "*", "granted", 1), ("email", "news", "denied", 1)],
    "news_then_all_off": [("email", "news", "granted", 1), ("email", "*", "denied", 1)],
    "off_then_news_on": [("email", "*", "denied", 1), ("email", "news", "granted", 1)],
    "same_moment": [("email", "*", "denied", 1), ("email", "news", "granted", 0)],
    "all_pending": [("email", "*", "pending", 1)],
    "texts_only": [("sms", "*", "granted", 1)],
    "nothing": [],
}
# (condition, the contacts it selects)
CASES: list[tuple[dict[str, Any], set[str]]] = [
    (
        {"consent": "email"},
        {"all_granted", "all_then_news_off"},
    ),
    (
        {"consent": "email", "topic": "*", "state": "granted"},
        {"all_granted", "all_then_news_off"},
    ),
    (
        {"consent": "email", "topic": "news"},
        {"all_granted", "news_only", "off_then_news_on", "same_moment"},
    ),
    (
        {"consent": "email", "topic": "news", "state": "denied"},
        {"all_then_news_off", "news_then_all_off"},
    ),
    (
        {"consent": "email", "topic": "billing", "state": "denied"},
        {"news_then_all_off", "off_then_news_on", "same_moment"},
    ),
    (
        {"consent": "email", "state": "unknown"},
        {"news_only", "texts_only", "nothing"},
    ),
    (
        {"consent": "email", "topic": "news", "state": "unknown"},
        {"texts_only", "nothing"},
    ),
    (
        {"consent": "email", "topic": "news", "state": "pending"},
        {"all_pending"},
    ),
    (
        {"consent": "sms", "topic": "offers"},
        {"texts_only"},
    ),
]


def record_histories(nurture: Nurture, clock: SimulatedClock) -> dict[int, str]:
    """One contact per history, consents recorded through the service; {id: name}."""
    names: dict[int, str] = {}
    for name, changes in HISTORIES.items():
        nurture.ingest([{"type": "identify", "userId": name, "traits": {"name": name}}])
        cid = int(nurture.contacts.lookup(user_id=name)["id"])
        names[cid] = name
        for channel, topic, state, hours in changes:
            clock.advance(timedelta(hours=hours))
            nurture.consent.record(cid, channel, topic, state, source="test")
    return names


def test_consent_conditions_select_as_the_sending_rules_read_consent(
    nurture: Nurture, clock: SimulatedClock
) -> None:
    # Given segments with consent conditions, and contacts whose consent changed over time
    for index, (where, _) in enumerate(CASES):
        nurture.segments.save({"key": f"c{index}", "name": f"case {index}", "where": where})
    names = record_histories(nurture, clock)
    # When the contacts are evaluated in real time (in memory), and each segment is
    # previewed (in SQL)
    nurture.engine.evaluate_pending()
    m = t.segment_memberships.c
    with nurture.db.read() as conn:
        stored = conn.execute(select(m.segment_key, m.contact_id)).all()
    for index, (where, expected) in enumerate(CASES):
        in_memory = {names[row.contact_id] for row in stored if row.segment_key == f"c{index}"}
        count, ids = nurture.engine.preview(parse_condition(where), sample=100)
        in_sql = {names[cid] for cid in ids}
        # Then both select the contacts the sending rules would treat as in that state
        assert in_memory == expected, where
        assert in_sql == expected and count == len(expected), where


def test_a_segment_of_granted_email_follows_consent_changes(
    nurture: Nurture, clock: SimulatedClock
) -> None:
    # Given a segment of contacts who may get email marketing, and a contact who grants it
    nurture.segments.save({"key": "mailable", "name": "Mailable", "where": {"consent": "email"}})
    nurture.ingest([{"type": "identify", "userId": "ann", "traits": {"name": "Ann"}}])
    ann = int(nurture.contacts.lookup(user_id="ann")["id"])
    nurture.consent.record(ann, "email", "*", "granted", source="signup form")
    nurture.engine.evaluate_pending()
    m = t.segment_memberships.c
    query = select(m.contact_id).where(m.segment_key == "mailable")
    with nurture.db.read() as conn:
        assert set(conn.execute(query).scalars()) == {ann}
    # When she unsubscribes from all email marketing (one-click unsubscribe writes "*")
    clock.advance(timedelta(minutes=5))
    nurture.consent.record(ann, "email", "*", "denied", source="unsubscribe link")
    nurture.engine.evaluate_pending()
    # Then she leaves the segment
    with nurture.db.read() as conn:
        assert set(conn.execute(query).scalars()) == set()


# -- the condition against the policy --------------------------------------------------
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OPT_IN = PolicyConfig.model_validate({"consent_modes": {"email": "opt_in"}, "quiet_hours": {}})
rows = st.dictionaries(
    st.sampled_from(["*", "news", "billing"]),
    st.tuples(st.sampled_from(["granted", "denied", "pending"]), st.sampled_from([0, 1, 5])),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(consents=rows, topic=st.sampled_from([None, "*", "news", "billing", "offers"]))
def test_the_condition_agrees_with_the_send_time_policy(
    consents: dict[str, tuple[str, int]], topic: str | None
) -> None:
    # Given a contact's email consents, recorded some hours before now
    recorded = {name: NOW - timedelta(hours=hours) for name, (_, hours) in consents.items()}
    policy_facts = PolicyFacts(
        1,
        email="ann@example.com",
        consents={
            ("email", name): ConsentState(state, recorded[name])
            for name, (state, _) in consents.items()
        },
    )
    facts = ContactFacts(
        id=1,
        columns={},
        traits={},
        consents={
            ("email", name): (state, to_microseconds(recorded[name]))
            for name, (state, _) in consents.items()
        },
    )
    message = PolicyMessage(1, 1, "email", "marketing", topic, {}, NOW, NOW)
    # When the policy decides on a marketing email about `topic` (opt-in required), and
    # the condition reads the contact's consent for that topic
    decision = decide(message, policy_facts, OPT_IN, NOW)
    refused = decision.rule if isinstance(decision, Skip) else None
    evaluate = Evaluator(Env(now=NOW))

    def holds(state: str) -> bool:
        where = {"consent": "email", "state": state, **({"topic": topic} if topic else {})}
        return evaluate(parse_condition(where), facts)

    # Then consent granted is exactly what lets it through, and a refusal is a denial
    assert holds("granted") == (refused is None)
    assert holds("denied") == (refused == "consent")
    assert (holds("pending") or holds("unknown")) == (refused == "opt_in_required")
