"""Peer bug: Mautic inlines every nested segment into one huge query, so a segment of
segments costs the product of its parents' conditions. Here a segment that uses another
reads the parent's stored memberships: its query is as small as its own condition,
however deep the nesting, and it still follows its parents."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from nurture.conditions.compile import SqlCompiler
from nurture.core import Nurture

# Three levels of segments on a base segment with a costly condition of its own.
BASE = {
    "key": "active_buyers",
    "where": {
        "all": [
            {"event": "Logged In", "at_least": 3, "within_last": "30d"},
            {"event": "Order Completed", "within_last": "90d"},
            {"aggregate": "sum", "of": "revenue", "event": "Order Completed", "gte": 100},
        ]
    },
}
LEVELS = [
    {"key": "level1", "where": {"all": [{"segment": "active_buyers"}, {"trait": "plan", "eq": "pro"}]}},  # noqa: E501
    {"key": "level2", "where": {"all": [{"segment": "level1"}, {"trait": "country", "eq": "DE"}]}},
    {"key": "level3", "where": {"all": [{"segment": "level2"}, {"trait": "tier", "eq": "gold"}]}},
]  # fmt: skip


def _sql(nurture: Nurture, key: str) -> str:
    with nurture.db.read() as conn:
        reg = nurture.engine.registry(conn)
        env = reg.env(nurture.clock.now(), nurture.engine.computed_state(conn))
    query = SqlCompiler(env, nurture.db.backend).members(reg.segments[key].where)
    dialect = sqlite.dialect() if nurture.db.is_sqlite else postgresql.dialect()
    return str(query.compile(dialect=dialect))


def _members(nurture: Nurture, key: str) -> set[str]:
    ids = {item["contactId"] for item in nurture.segments.members(key)["items"]}
    return {nurture.contacts.get(i)["user_id"] for i in ids}


def _identify(nurture: Nurture, user: str, **traits: Any) -> None:
    nurture.ingest([{"type": "identify", "userId": user, "traits": traits}])


def _track(nurture: Nurture, user: str, event: str, **props: Any) -> None:
    # A messageId of its own: identical events without one are one retried event.
    message = {"type": "track", "userId": user, "event": event, "properties": props}
    nurture.ingest([{**message, "messageId": str(uuid.uuid4())}])


def test_a_deep_segment_query_is_its_own_condition_only(nurture: Nurture) -> None:
    # Given a base segment over events and three levels of segments built on it
    nurture.segments.save(BASE)
    for level in LEVELS:
        nurture.segments.save(level)
    # When each level is compiled to SQL
    sizes = {level["key"]: _sql(nurture, level["key"]) for level in LEVELS}
    # Then no level reads the events table (its parents are memberships, not inlined)...
    for key, sql in sizes.items():
        assert "events" not in sql, key
        assert sql.count("FROM segment_memberships") == 1, key
    # ...and the deepest query is no bigger than the first level's
    assert len(sizes["level3"]) <= len(sizes["level1"]) * 1.1
    assert "events" in _sql(nurture, "active_buyers")  # the base does read events


def test_a_deep_segment_still_follows_its_parents(nurture: Nurture) -> None:
    nurture.segments.save(BASE)
    for level in LEVELS:
        nurture.segments.save(level)
    # Given a contact that meets every level's own condition but not yet the base's
    _identify(nurture, "ada", plan="pro", country="DE", tier="gold")
    _identify(nurture, "bob", plan="pro", country="DE", tier="silver")
    for user in ("ada", "bob"):
        for _ in range(3):
            _track(nurture, user, "Logged In")
    nurture.engine.evaluate_pending()
    assert _members(nurture, "level3") == set()
    # When the base condition becomes true through events
    for user in ("ada", "bob"):
        _track(nurture, user, "Order Completed", revenue=150)
    nurture.engine.evaluate_pending()
    # Then one real-time evaluation carries the change up the three levels (parents are
    # evaluated first), for the contact that meets every level (bob is not gold)
    assert _members(nurture, "level3") == {"ada"}
    assert _members(nurture, "level2") == {"ada", "bob"}
