"""Computed traits have one meaning: for random populations and random definitions of
every kind, the SQL value of each live contact is the in-memory value, and conditions on
it select the same contacts, on SQLite and on PostgreSQL.

Times sit on the awkward edges: exactly a day (or a window) before now and a microsecond
either side, after now, last seen after now. Amounts include 0.1 + 0.2 (not 0.3 in
binary, 30 cents in RFM), negative refunds, numbers as strings and booleans.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select

from nurture.conditions.compile import SqlCompiler
from nurture.conditions.computed import ComputedTrait, compute_state, parse_computed
from nurture.conditions.env import Env
from nurture.conditions.facts import load_facts
from nurture.conditions.memory import Evaluator
from nurture.conditions.model import parse_condition
from nurture.conditions.values import Moment, is_number
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.types import to_microseconds

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR_US = 3_600_000_000
NAMES = ["A", "B"]
WINDOWS = ["1h", "1d", "2d", "7d"]
# Hours before now on the edges of days and windows (negative: after now).
EDGE_HOURS = [0, 1, 23, 24, 25, 48, 72, 168, -1, -24]
hours = st.one_of(st.sampled_from(EDGE_HOURS), st.integers(-2, 10 * 24))
# Hours before now, nudged by a microsecond either way.
offsets = st.tuples(hours, st.sampled_from([0, 0, -1, 1]))

# -- worlds -------------------------------------------------------------------------------
amounts = st.one_of(
    st.integers(-3, 60),
    st.sampled_from([0.5, 2.5, -1.5]),
    st.sampled_from(["12", True, False, None]),
)
revenues = st.one_of(st.sampled_from([0.1, 0.2, 0.3, 19.98, 19.99, 5, 0.005, -0.1]), amounts)
properties = st.fixed_dictionaries(
    {},
    optional={
        "total": amounts,
        "revenue": revenues,
        "plan": st.sampled_from(["pro", "free", 1, True]),
    },
)
events = st.lists(
    st.tuples(
        st.sampled_from(["track", "track", "page"]), st.sampled_from(NAMES), offsets, properties
    ),
    max_size=8,
)
contacts = st.fixed_dictionaries(
    {"last_seen": offsets, "events": events, "merged": st.sampled_from([False, False, False, True])}
)
worlds = st.lists(contacts, min_size=1, max_size=8)


# -- definitions and conditions -----------------------------------------------------------
def optional(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), values)


filters = st.lists(
    st.one_of(
        st.sampled_from(["pro", "free", 1]).map(lambda v: {"property": "plan", "eq": v}),
        st.sampled_from([0, 2, 20]).map(lambda v: {"property": "total", "gte": v}),
        st.booleans().map(lambda v: {"property": "revenue", "exists": v}),
    ),
    max_size=1,
)
matches = st.fixed_dictionaries(
    {"event": st.sampled_from([*NAMES, "*"])},
    optional={
        "type": st.sampled_from(["track", "page"]),
        "where": filters,
        "within_last": st.sampled_from(WINDOWS),
    },
)
definitions = st.one_of(
    st.just({"kind": "days_since_last_seen"}),
    st.tuples(
        st.sampled_from(["count", "first_at", "last_at", "days_since", "reached"]), matches
    ).map(lambda p: {"kind": p[0], **p[1]}),
    st.tuples(st.sampled_from(["sum", "avg", "min", "max"]), matches).map(
        lambda p: {"kind": p[0], "of": "total", **p[1]}
    ),
    st.tuples(
        st.sampled_from(["recency", "frequency", "monetary", "score"]),
        st.sampled_from(["revenue", "total"]),
        matches,
    ).map(lambda p: {"kind": "rfm", "part": p[0], "of": p[1], **p[2]}),
)
scalars = st.one_of(
    st.integers(-1, 6),
    st.sampled_from([0.5, 2.5, 100, 111, 355, 555, 1.0]),
    st.booleans(),
    st.sampled_from(["1", "", "A"]),
)
comparisons = st.one_of(
    st.tuples(st.sampled_from(["eq", "ne"]), scalars).map(lambda p: {p[0]: p[1]}),
    st.tuples(st.sampled_from(["in", "not_in"]), st.lists(scalars, min_size=1, max_size=3)).map(
        lambda p: {p[0]: p[1]}
    ),
    st.tuples(
        st.sampled_from(["gt", "gte", "lt", "lte"]), st.sampled_from([0, 1, 2, 2.5, 5, 300])
    ).map(lambda p: {p[0]: p[1]}),
    st.tuples(st.integers(0, 4), st.integers(0, 4)).map(lambda p: {"between": sorted(p)}),
    st.booleans().map(lambda v: {"exists": v}),
    st.sampled_from(["1", "A"]).map(lambda v: {"contains": v}),
    st.tuples(st.sampled_from(["within_last", "within_next"]), st.sampled_from(WINDOWS)).map(
        lambda p: {p[0]: p[1]}
    ),
    st.tuples(st.sampled_from(["before", "after"]), st.sampled_from(["1d ago", "2026-03-01"])).map(
        lambda p: {p[0]: p[1]}
    ),
)


# -- the test -------------------------------------------------------------------------------
def store(db: Database, world: list[dict[str, Any]]) -> None:
    contact_rows, event_rows = [], []
    for index, c in enumerate(world, start=1):
        hours_ago, nudge = c["last_seen"]
        contact_rows.append(
            {
                "id": index,
                "traits": {},
                "trait_issues": {},
                "first_seen_at": NOW - timedelta(days=30),
                "last_seen_at": NOW - timedelta(microseconds=hours_ago * HOUR_US + nudge),
                "created_at": NOW - timedelta(days=30),
                "updated_at": NOW,
                "merged_into": 1 if c["merged"] and index > 1 else None,
            }
        )
        for type_, name, (hours_ago, nudge), props in c["events"]:
            number = len(event_rows) + 1
            event_rows.append(
                {
                    "id": number,
                    "message_id": f"m{number}",
                    "type": type_,
                    "event": name,
                    "contact_id": index,
                    "timestamp": NOW - timedelta(microseconds=hours_ago * HOUR_US + nudge),
                    "received_at": NOW,
                    "properties": props,
                }
            )
    with db.write() as conn:
        conn.execute(delete(t.events))
        conn.execute(delete(t.contacts))
        conn.execute(insert(t.contacts), contact_rows)
        if event_rows:
            conn.execute(insert(t.events), event_rows)


def plain(trait: ComputedTrait, raw: Any) -> Any:
    """A value read from SQL in the form the memory evaluator gives."""
    if raw is None:
        return None
    if trait.returns == "time":
        return Moment(raw if isinstance(raw, int) else to_microseconds(raw))
    return float(raw) if isinstance(raw, Decimal) else raw


def same(a: Any, b: Any) -> bool:
    if is_number(a) and is_number(b):
        # PostgreSQL averages in decimal: the last bit of a float may differ.
        return math.isclose(a, b, rel_tol=1e-12)
    return bool(a == b) and type(a) is type(b)  # True is not 1 here


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    world=worlds,
    raw=st.lists(definitions, min_size=1, max_size=5),
    cmps=st.lists(comparisons, min_size=2, max_size=4),
)
def test_computed_traits_agree(
    db: Database, world: list[dict[str, Any]], raw: list[dict[str, Any]], cmps: list[Any]
) -> None:
    # Given a random population and computed traits of random kinds
    store(db, world)
    defined = {f"k{i}": parse_computed({"key": f"k{i}", **body}) for i, body in enumerate(raw)}
    env = Env(now=NOW, computed=defined)
    with db.read() as conn:
        state = {key: compute_state(conn, trait, env) for key, trait in defined.items()}
    env = Env(now=NOW, computed=defined, computed_state=state)
    compiler = SqlCompiler(env, db.backend)
    evaluate = Evaluator(env)
    with db.read() as conn:
        facts = load_facts(conn, list(range(1, len(world) + 1)), now=NOW)
        for key, trait in defined.items():
            # When each is computed in SQL for everyone and in memory for each contact
            ref: Any = trait.sql_value(compiler)
            rows = conn.execute(
                select(t.contacts.c.id, ref.expr).where(t.contacts.c.merged_into.is_(None))
            )
            in_sql = {cid: plain(trait, value) for cid, value in rows}
            in_memory = {cid: trait.value(f, env) for cid, f in facts.items()}
            # Then the values are the same
            assert in_sql.keys() == in_memory.keys()
            for cid, value in in_sql.items():
                assert same(value, in_memory[cid]), (raw, key, cid, value, in_memory[cid])
            # And so are the contacts that conditions on them select
            for cmp in cmps:
                condition = parse_condition({"computed": key, **cmp})
                selected = set(conn.execute(compiler.members(condition)).scalars())
                expected = {cid for cid, f in facts.items() if evaluate(condition, f)}
                assert selected == expected, (defined[key], cmp, in_memory)
