"""Computed traits, kind by kind: small worlds with hand-computed values, checked in both
evaluators (SQL over the population, memory for one contact) on SQLite and PostgreSQL.

Every event age below is a time before NOW; a negative age is after NOW (not yet
happened, so never counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import insert, select

from nurture.conditions.compile import SqlCompiler
from nurture.conditions.computed import (
    ComputedTrait,
    RfmBounds,
    compute_state,
    computed_values,
    parse_computed,
)
from nurture.conditions.env import Env
from nurture.conditions.facts import load_facts
from nurture.conditions.memory import Evaluator
from nurture.conditions.model import parse_condition
from nurture.conditions.values import Moment
from nurture.errors import ValidationError
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.types import to_microseconds

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_US = to_microseconds(NOW)
US = timedelta(microseconds=1)
H = timedelta(hours=1)
D = timedelta(days=1)


# -- worlds -----------------------------------------------------------------------------
@dataclass
class Person:
    # (name, age, properties) or (name, age, properties, type)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    last_seen: timedelta = timedelta(0)
    merged: bool = False


def store(db: Database, people: dict[str, Person]) -> dict[str, int]:
    """Write the people as contacts 1..n with their events; their ids by name."""
    ids = {name: index for index, name in enumerate(people, start=1)}
    contacts, events = [], []
    for name, person in people.items():
        contacts.append(
            {
                "id": ids[name],
                "traits": {},
                "trait_issues": {},
                "first_seen_at": NOW - 400 * D,
                "last_seen_at": NOW - person.last_seen,
                "created_at": NOW - 400 * D,
                "updated_at": NOW,
                "merged_into": 1 if person.merged else None,
            }
        )
        for event in person.events:
            event_name, age, properties = event[:3]
            number = len(events) + 1
            events.append(
                {
                    "id": number,
                    "message_id": f"m{number}",
                    "type": event[3] if len(event) > 3 else "track",
                    "event": event_name,
                    "contact_id": ids[name],
                    "timestamp": NOW - age,
                    "received_at": NOW,
                    "properties": properties,
                }
            )
    with db.write() as conn:
        conn.execute(insert(t.contacts), contacts)
        if events:
            conn.execute(insert(t.events), events)
    return ids


def traits(**definitions: dict[str, Any]) -> dict[str, ComputedTrait]:
    return {key: parse_computed({"key": key, **body}) for key, body in definitions.items()}


def sql_plain(trait: ComputedTrait, raw: Any) -> Any:
    """A value read from SQL in the form the memory evaluator gives."""
    if raw is None:
        return None
    if trait.returns == "time":
        return Moment(raw if isinstance(raw, int) else to_microseconds(raw))
    if isinstance(raw, Decimal):
        return float(raw)
    return raw


def evaluate(
    db: Database, people: dict[str, Person], defined: dict[str, ComputedTrait], *, rfm: bool = False
) -> dict[str, dict[str, Any]]:
    """{trait key: {person: value}} for the live people, the same in both evaluators."""
    ids = store(db, people)
    env = Env(now=NOW, computed=defined)
    if rfm:
        with db.read() as conn:
            state = {key: compute_state(conn, trait, env) for key, trait in defined.items()}
        env = Env(now=NOW, computed=defined, computed_state=state)
    compiler = SqlCompiler(env, db.backend)
    names = {index: name for name, index in ids.items()}
    out: dict[str, dict[str, Any]] = {}
    with db.read() as conn:
        facts = load_facts(conn, list(ids.values()), now=NOW)
        for key, trait in defined.items():
            ref: Any = trait.sql_value(compiler)
            rows = conn.execute(
                select(t.contacts.c.id, ref.expr).where(t.contacts.c.merged_into.is_(None))
            )
            in_sql = {names[cid]: sql_plain(trait, raw) for cid, raw in rows}
            in_memory = {names[cid]: trait.value(f, env) for cid, f in facts.items()}
            assert in_sql == in_memory, key
            out[key] = in_memory
    return out


# -- days since last seen ---------------------------------------------------------------
def test_days_since_last_seen_floors_whole_days(db: Database) -> None:
    # Given contacts last seen just now, a microsecond short of a day, a day, ...
    people = {
        "now": Person(last_seen=timedelta(0)),
        "almost": Person(last_seen=D - US),
        "day": Person(last_seen=D),
        "47h": Person(last_seen=47 * H),
        "ten": Person(last_seen=10 * D + 5 * H),
        "future": Person(last_seen=-2 * H),  # a clock ahead of ours
    }
    # When the days since they were last seen are computed
    values = evaluate(db, people, traits(seen={"kind": "days_since_last_seen"}))
    # Then they are whole days, floored, and never negative
    assert values["seen"] == {"now": 0, "almost": 0, "day": 1, "47h": 1, "ten": 10, "future": 0}
    assert all(type(v) is int for v in values["seen"].values())


# -- counts -----------------------------------------------------------------------------
def test_count_of_orders_with_filters_windows_and_types(db: Database) -> None:
    # Given orders in and out of a 7-day window, of several plans, and other events
    order = "Order Completed"
    people = {
        "ann": Person(
            [
                (order, 1 * H, {"plan": "pro"}),
                (order, 7 * D, {"plan": "pro"}),  # exactly on the window's edge
                (order, 7 * D + US, {"plan": "free"}),
                (order, -H, {"plan": "pro"}),  # after now
                ("Viewed", 2 * H, {}),
                (order, 3 * H, {}, "page"),
            ]
        ),
        "bob": Person([("Viewed", 1 * D, {})]),
        "cy": Person(),
    }
    defined = traits(
        orders={"kind": "count", "event": order},
        recent={"kind": "count", "event": order, "within_last": "7d"},
        pro={"kind": "count", "event": order, "where": [{"property": "plan", "eq": "pro"}]},
        anything={"kind": "count", "event": "*"},
        pages={"kind": "count", "event": "*", "type": "page"},
    )
    # When they are counted
    values = evaluate(db, people, defined)
    # Then only matching events up to now count; the window includes its edge
    assert values["orders"] == {"ann": 3, "bob": 0, "cy": 0}
    assert values["recent"] == {"ann": 2, "bob": 0, "cy": 0}
    assert values["pro"] == {"ann": 2, "bob": 0, "cy": 0}
    assert values["anything"] == {"ann": 4, "bob": 1, "cy": 0}
    assert values["pages"] == {"ann": 1, "bob": 0, "cy": 0}


# -- sum, avg, min, max -------------------------------------------------------------------
def test_revenue_aggregates(db: Database) -> None:
    # Given three orders of 10, 20 and 30, and orders whose revenue is not a number
    order = "Order Completed"
    people = {
        "ann": Person(
            [
                (order, 3 * D, {"revenue": 10}),
                (order, 2 * D, {"revenue": 20.0}),
                (order, 1 * D, {"revenue": 30}),
                (order, 1 * H, {"revenue": "12"}),
                (order, 2 * H, {"revenue": True}),
                (order, 3 * H, {}),
            ]
        ),
        "bob": Person([(order, 1 * D, {"revenue": "40"})]),
        "cy": Person(),
    }
    defined = traits(
        total={"kind": "sum", "event": order, "of": "revenue"},
        aov={"kind": "avg", "event": order, "of": "revenue"},
        smallest={"kind": "min", "event": order, "of": "revenue"},
        largest={"kind": "max", "event": order, "of": "revenue"},
    )
    # When they are aggregated
    values = evaluate(db, people, defined)
    # Then numbers only count; the sum of nothing is 0, the rest nothing
    assert values["total"] == {"ann": 60.0, "bob": 0.0, "cy": 0.0}
    assert values["aov"] == {"ann": 20.0, "bob": None, "cy": None}
    assert values["smallest"] == {"ann": 10.0, "bob": None, "cy": None}
    assert values["largest"] == {"ann": 30.0, "bob": None, "cy": None}
    assert all(type(v) is float for v in values["total"].values())


# -- times ----------------------------------------------------------------------------------
def test_first_and_last_times_and_days_since(db: Database) -> None:
    # Given logins 10 days, 36 hours and 1 minute ago, and one after now
    people = {
        "ann": Person(
            [
                ("Logged In", 10 * D, {}),
                ("Logged In", 36 * H, {}),
                ("Logged In", timedelta(minutes=1), {}),
                ("Logged In", -H, {}),
            ]
        ),
        "bob": Person([("Logged In", 36 * H, {})]),
        "cy": Person(),
    }
    defined = traits(
        first={"kind": "first_at", "event": "Logged In"},
        last={"kind": "last_at", "event": "Logged In"},
        since={"kind": "days_since", "event": "Logged In"},
    )
    # When the times are computed
    values = evaluate(db, people, defined)
    # Then they are those of the first and last login up to now, and whole days
    assert values["first"] == {
        "ann": Moment(NOW_US - 10 * 86_400_000_000),
        "bob": Moment(NOW_US - 36 * 3_600_000_000),
        "cy": None,
    }
    assert values["last"]["ann"] == Moment(NOW_US - 60_000_000)
    assert values["since"] == {"ann": 0, "bob": 1, "cy": None}


def test_reached_the_aha_event_and_when(db: Database) -> None:
    # Given one contact who invited a teammate (the aha moment) twice, one who never did
    people = {
        "ann": Person([("Invited Teammate", 5 * D, {}), ("Invited Teammate", 1 * D, {})]),
        "bob": Person([("Logged In", 1 * D, {}), ("Invited Teammate", -D, {})]),
    }
    defined = traits(
        activated={"kind": "reached", "event": "Invited Teammate"},
        activated_at={"kind": "first_at", "event": "Invited Teammate"},
    )
    # When it is computed
    values = evaluate(db, people, defined)
    # Then it is true or false (never missing), and the first time gives when
    assert values["activated"] == {"ann": True, "bob": False}
    assert values["activated_at"] == {"ann": Moment(NOW_US - 5 * 86_400_000_000), "bob": None}


# -- RFM ----------------------------------------------------------------------------------
ORDER = "Order Completed"
# A population worked by hand: days since the last order, the revenue of each order,
# and the expected (R, F, M). Ten purchasers, so a score is 1 + floor(L / 2), L being
# the number of purchasers with a strictly worse value (more days, fewer orders, less
# money): ties share the lower score.
RFM_TABLE = {
    #       days  revenues               R  F  M
    "p1": (0, [50], (5, 1, 4)),
    "p2": (1, [19.98], (5, 1, 2)),
    "p3": (2, [19.99], (4, 1, 3)),  # 1998.9999999999998 cents in binary: 1999
    "p4": (3, [10], (4, 1, 2)),
    "p5": (5, [0.3], (3, 1, 1)),
    "p6": (8, [0.1, 0.2], (3, 3, 1)),  # 0.30000000000000004 in binary: 30 cents
    "p7": (13, [15, 15.5], (2, 3, 4)),
    "p8": (21, [10, 10, 10], (2, 4, 3)),
    "p9": (34, [40] * 5, (1, 5, 5)),
    "p10": (55, [12.5] * 8, (1, 5, 5)),
}


def rfm_people() -> dict[str, Person]:
    people = {}
    for name, (days, revenues, _) in RFM_TABLE.items():
        # The last order `days` days (and an hour) ago, earlier ones a day apart.
        orders = [
            (ORDER, (days + index) * D + H, {"revenue": revenue})
            for index, revenue in enumerate(reversed(revenues))
        ]
        people[name] = Person(orders)
    people["never"] = Person([("Viewed", 1 * D, {"revenue": 1000})])
    # Left out of the population: a merged tombstone, orders after now, page views.
    people["merged"] = Person([(ORDER, H, {"revenue": 10**6})] * 9, merged=True)
    people["later"] = Person([(ORDER, -H, {"revenue": 10**6})])
    people["paged"] = Person([(ORDER, H, {"revenue": 10**6}, "page")])
    return people


def test_the_rfm_table_is_the_independent_formula() -> None:
    # Given the hand-worked table, When each score is recomputed from its definition
    # (share of purchasers strictly worse), Then it is the table's.
    rows = [
        (days, len(revenues), round(sum(revenues) * 100))
        for days, revenues, _ in RFM_TABLE.values()
    ]
    for (days, count, cents), (_, _, expected) in zip(rows, RFM_TABLE.values(), strict=True):
        worse = (
            sum(1 for d, _, _ in rows if d > days),
            sum(1 for _, n, _ in rows if n < count),
            sum(1 for _, _, c in rows if c < cents),
        )
        assert tuple(1 + 5 * w // len(rows) for w in worse) == expected


def test_rfm_scores_quintiles_of_purchasers(db: Database) -> None:
    # Given ten purchasers (and contacts that are not in the population)
    defined = traits(
        r={"kind": "rfm", "part": "recency"},
        f={"kind": "rfm", "part": "frequency"},
        m={"kind": "rfm", "part": "monetary"},
        rfm={"kind": "rfm", "part": "score"},
    )
    # When the bounds are computed and the scores evaluated
    values = evaluate(db, rfm_people(), defined, rfm=True)
    # Then each purchaser has the table's scores, others none
    for name, (_, _, (r, f, m)) in RFM_TABLE.items():
        assert (values["r"][name], values["f"][name], values["m"][name]) == (r, f, m), name
        assert values["rfm"][name] == 100 * r + 10 * f + m
    for name in ("never", "later", "paged"):
        assert values["rfm"][name] is None


def test_rfm_state_holds_nearest_rank_bounds(db: Database) -> None:
    # Given the ten purchasers
    store(db, rfm_people())
    trait = parse_computed({"key": "rfm", "kind": "rfm", "part": "score"})
    # When the population's bounds are computed
    with db.read() as conn:
        state = compute_state(conn, trait, Env(now=NOW))
    # Then they are the values at ranks 2, 4, 6 and 8, best last
    assert state == {
        "purchasers": 10,
        "as_of": "2026-03-01T12:00:00+00:00",
        "recency_days": [34, 13, 5, 2],
        "frequency": [1, 1, 2, 3],
        "monetary_cents": [30, 1998, 3000, 5000],
    }


def test_rfm_in_a_condition_and_a_window(db: Database) -> None:
    # Given the ten purchasers
    ids = store(db, rfm_people())
    defined = traits(
        rfm={"kind": "rfm", "part": "score"},
        recent={"kind": "rfm", "part": "frequency", "within_last": "10d"},
    )
    env = Env(now=NOW, computed=defined)
    with db.read() as conn:
        state = {key: compute_state(conn, trait, env) for key, trait in defined.items()}
    env = Env(now=NOW, computed=defined, computed_state=state)
    # When champions (recency 5, frequency and money at least 4) are selected
    champions = parse_condition({"computed": "rfm", "in": [514, 544, 545, 554, 555]})
    recent = parse_condition({"computed": "recent", "gte": 1})
    with db.read() as conn:
        facts = load_facts(conn, list(ids.values()), now=NOW)
        compiler = SqlCompiler(env, db.backend)
        in_sql = set(conn.execute(compiler.members(champions)).scalars())
        recent_sql = set(conn.execute(compiler.members(recent)).scalars())
    evaluate_ = Evaluator(env)
    # Then both evaluators pick p1 only; the window leaves out older purchasers
    assert in_sql == {cid for cid, f in facts.items() if evaluate_(champions, f)} == {ids["p1"]}
    recent_names = {name for name, (days, _, _) in RFM_TABLE.items() if days <= 9}
    assert recent_sql == {cid for cid, f in facts.items() if evaluate_(recent, f)}
    assert recent_sql == {ids[name] for name in recent_names}
    assert state["recent"]["purchasers"] == len(recent_names)


def test_rfm_without_bounds_is_missing(db: Database) -> None:
    # Given purchasers, but bounds not computed yet (or computed over no purchaser)
    people = {"ann": Person([(ORDER, H, {"revenue": 5})]), "bob": Person()}
    defined = traits(rfm={"kind": "rfm", "part": "score"})
    # When the scores are evaluated, Then nobody has one yet
    assert evaluate(db, people, defined) == {"rfm": {"ann": None, "bob": None}}
    env = Env(now=NOW, computed=defined, computed_state={"rfm": {"purchasers": 0}})
    with db.read() as conn:
        facts = load_facts(conn, [1], now=NOW)
    assert defined["rfm"].value(facts[1], env) is None


def test_rfm_with_malformed_bounds_says_so(db: Database) -> None:
    # Given bounds that are not four integers per measure
    store(db, {"ann": Person([(ORDER, H, {"revenue": 5})])})
    defined = traits(rfm={"kind": "rfm", "part": "score"})
    env = Env(now=NOW, computed=defined, computed_state={"rfm": {"recency_days": [1, 2]}})
    with db.read() as conn:
        facts = load_facts(conn, [1], now=NOW)
    # When a score is asked for, Then the error says to compute them again
    with pytest.raises(ValidationError, match="compute them again"):
        defined["rfm"].value(facts[1], env)
    with pytest.raises(ValidationError, match="compute them again"):
        defined["rfm"].sql_value(SqlCompiler(env, db.backend))


@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.integers(1, 6), st.integers(0, 5)), min_size=1, max_size=40
    )
)
def test_bounds_score_as_the_share_of_worse_purchasers(rows: list[tuple[int, int, int]]) -> None:
    # Given any population of (days, count, cents), ties likely
    bounds = RfmBounds.of(rows)
    assert bounds is not None
    n = len(rows)
    for days, count, cents in rows:
        # When a purchaser is scored against the bounds
        r = 1 + sum(1 for b in bounds.recency_days if days < b)
        f = 1 + sum(1 for b in bounds.frequency if count > b)
        m = 1 + sum(1 for b in bounds.monetary_cents if cents > b)
        # Then the score is 1 + floor(5 x share of purchasers strictly worse)
        assert r == 1 + 5 * sum(1 for d, _, _ in rows if d > days) // n
        assert f == 1 + 5 * sum(1 for _, c, _ in rows if c < count) // n
        assert m == 1 + 5 * sum(1 for _, _, x in rows if x < cents) // n


# -- values for templates ---------------------------------------------------------------
def test_computed_values_are_json(db: Database) -> None:
    # Given a contact with two orders
    ids = store(
        db,
        {"ann": Person([(ORDER, 2 * D, {"revenue": 10}), (ORDER, H, {"revenue": 5})], last_seen=H)},
    )
    defined = traits(
        orders={"kind": "count", "event": ORDER},
        revenue={"kind": "sum", "event": ORDER, "of": "revenue"},
        first_order={"kind": "first_at", "event": ORDER},
        ordered={"kind": "reached", "event": ORDER},
        seen={"kind": "days_since_last_seen"},
    )
    with db.read() as conn:
        facts = load_facts(conn, [ids["ann"]], now=NOW)
    # When every computed trait is read for templates
    values = computed_values(facts[ids["ann"]], Env(now=NOW, computed=defined))
    # Then times are ISO 8601 text and the rest plain JSON values
    assert values == {
        "orders": 2,
        "revenue": 15.0,
        "first_order": "2026-02-27T12:00:00+00:00",
        "ordered": True,
        "seen": 0,
    }


def test_event_names_say_what_to_load() -> None:
    defined = traits(
        seen={"kind": "days_since_last_seen"},
        orders={"kind": "count", "event": ORDER},
        pages={"kind": "count", "event": "*", "type": "page"},
        rfm={"kind": "rfm", "part": "score"},
    )
    assert [trait.event_names() for trait in defined.values()] == [
        set(),
        {("track", ORDER)},
        {("page", "*")},
        {("track", ORDER)},
    ]


# -- definitions and their errors ---------------------------------------------------------
def test_defaults_of_an_rfm_definition() -> None:
    trait: Any = parse_computed({"key": "rfm", "kind": "rfm", "part": "score"})
    assert (trait.event, trait.of, trait.type, trait.within_last) == (
        ORDER,
        "revenue",
        "track",
        None,
    )


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ({"key": "x"}, "computed.kind", "expected a kind: use one of days_since_last_seen, count"),
        ({"key": "x", "kind": "median", "event": "A"}, "computed.kind", "unknown kind 'median'"),
        ({"key": "x", "kind": "count"}, "computed.event", "Field required"),
        ({"key": "x", "kind": "sum", "event": "A"}, "computed.of", "Field required"),
        (
            {"key": "x", "kind": "sum", "event": "A", "of": 'a."b"'},
            "computed.of",
            "is not a path",
        ),
        (
            {"key": "x", "kind": "count", "event": "A", "within_last": "a week"},
            "computed.within_last",
            "expected a duration like 30d",
        ),
        (
            {"key": "x", "kind": "count", "event": "A", "where": [{"property": "p", "gt": "1"}]},
            "computed.where[0].gt",
            "expected a number",
        ),
        ({"key": "x", "kind": "rfm", "part": "loyalty"}, "computed.part", "recency"),
        ({"key": "x", "kind": "reached", "event": "A", "at": 1}, "computed.at", "unknown"),
        ({"key": "1x", "kind": "days_since_last_seen"}, "computed.key", "key"),
        ({"key": "x", "kind": "count", "event": "A", "type": "click"}, "computed.type", ""),
    ],
)
def test_errors_name_the_bad_field(data: dict[str, Any], path: str, message: str) -> None:
    # Given a definition with one mistake, When it is parsed
    with pytest.raises(ValidationError) as caught:
        parse_computed(data, path="computed")
    # Then the error names the field and what is wrong
    assert caught.value.path == path
    assert message in caught.value.message
    assert caught.value.code == "invalid_computed_trait"
