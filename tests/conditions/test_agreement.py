"""Two evaluators, one meaning: for random contacts, events and conditions, the SQL
compiler (whole population) and the in-memory evaluator (one contact at a time) select
exactly the same contacts, on SQLite and on PostgreSQL.

Values are drawn so that the awkward cases come up: numbers that are strings, booleans
next to 1, JSON null, arrays, dates in several formats and invalid ones, events exactly
on a window's edge (and one microsecond either side), events after `now`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from nurture.conditions.compile import SqlCompiler
from nurture.conditions.env import Env
from nurture.conditions.facts import load_facts
from nurture.conditions.memory import Evaluator
from nurture.conditions.model import dump_condition, parse_condition
from nurture.store import Database
from nurture.store import tables as t

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR_US = 3_600_000_000
ENV = Env(
    now=NOW,
    score_bands={"lead": [("cold", 0.0), ("warm", 20.0), ("hot", 50.0)]},
    default_stage_model="lifecycle",
)
NAMES = ["A", "B", "C"]
# Hours before now on the edges of the windows below (negative: after now).
EDGE_HOURS = [0, 1, 2, 3, 24, 48, 72, 168, 336, 672, 720, -1, -2, -24, -48]
hours = st.one_of(st.sampled_from(EDGE_HOURS), st.integers(-2, 72), st.integers(-2, 40 * 24))
WINDOWS = ["1h", "2h", "1d", "3d", "7d", "30d"]
STAGES = ["new", "active", "at_risk"]

# -- worlds ---------------------------------------------------------------------------
scalars = st.one_of(
    st.sampled_from(["pro", "team", "free", "Pro", "", "1", "pro plan", "é"]),
    st.integers(-3, 60),
    st.sampled_from([0.5, 1.0, 2.5, -1.5]),
    st.booleans(),
)
dates = st.one_of(
    hours.map(lambda h: (NOW - timedelta(hours=h)).isoformat()),
    hours.map(lambda h: int((NOW - timedelta(hours=h)).timestamp())),
    st.integers(-40, 40).map(lambda d: (NOW + timedelta(days=d)).date().isoformat()),
    st.integers(-40 * 24, 40 * 24).map(
        lambda h: (NOW + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%MZ")
    ),
    st.integers(-40 * 24, 40 * 24).map(lambda h: int((NOW + timedelta(hours=h)).timestamp())),
    st.sampled_from(["2026-02-30", "yesterday", "2026-03-01T25:00", 1.5, True]),
)
trait_values = st.one_of(
    scalars,
    dates,
    st.none(),
    st.lists(scalars, max_size=3),
    st.fixed_dictionaries({"size": st.one_of(scalars, dates)}),
)
traits = st.fixed_dictionaries(
    {"signup": st.one_of(dates, trait_values)},
    optional={key: trait_values for key in ("plan", "size", "tags", "company")},
)
properties = st.dictionaries(
    st.sampled_from(["total", "cart", "plan"]),
    st.one_of(scalars, st.none(), st.sampled_from(["c1", "c2"])),
    max_size=3,
)
# Hours before now (negative: in the future), nudged by one microsecond either way.
offsets = st.tuples(hours, st.sampled_from([0, 0, 0, -1, 1]))
events = st.lists(
    st.tuples(
        st.sampled_from(["track", "track", "page"]), st.sampled_from(NAMES), offsets, properties
    ),
    max_size=12,
)
# Consent rows, as the sending rules read them: topic "*" (all marketing of the channel)
# next to single topics, recorded at times that tie as often as they differ.
CONSENT_TOPICS = ["*", "news", "billing"]


def consent_rows(min_size: int = 0) -> st.SearchStrategy[dict[tuple[str, str], Any]]:
    """{(channel, topic): (state, hours before now)}."""
    return st.dictionaries(
        st.tuples(st.sampled_from(["email", "sms"]), st.sampled_from(CONSENT_TOPICS)),
        st.tuples(st.sampled_from(["granted", "denied", "pending"]), st.sampled_from([0, 1, 48])),
        min_size=min_size,
        max_size=6,
    )


contacts = st.fixed_dictionaries(
    {
        "traits": traits,
        "email": st.sampled_from([None, "ann@example.com", "bob@rival.com"]),
        "events": events,
        "segments": st.sets(st.sampled_from(["s1", "s2"])),
        "stage": st.sampled_from([None, *STAGES]),
        "was": st.sets(st.sampled_from(STAGES)),
        "score": st.one_of(st.none(), st.sampled_from([0.0, 5.0, 20.0, 49.5, 50.0, 80.0, -10.0])),
        "consents": consent_rows(),
    }
)
worlds = st.lists(contacts, min_size=2, max_size=8)
# Contacts that differ only in consent, every one with some, for the consent test.
consent_worlds: st.SearchStrategy[list[dict[str, Any]]] = st.lists(
    consent_rows(min_size=1).map(
        lambda rows: {
            "traits": {},
            "email": None,
            "events": [],
            "segments": set(),
            "stage": None,
            "was": set(),
            "score": None,
            "consents": rows,
        }
    ),
    min_size=4,
    max_size=10,
)


# -- conditions -------------------------------------------------------------------------
def op(names: list[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """{operator: operand} for one of `names`."""
    return st.tuples(st.sampled_from(names), values).map(lambda p: {p[0]: p[1]})


date_operators = st.one_of(
    op(["within_last", "within_next"], st.sampled_from(WINDOWS)),
    op(
        ["before", "after"],
        st.sampled_from(["3d ago", "in 2d", "2026-03-01", "2026-02-20T08:00:00+02:00"]),
    ),
)


def comparisons(date_ops: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    ops = [
        st.fixed_dictionaries({"eq": scalars}),
        st.fixed_dictionaries({"ne": scalars}),
        st.fixed_dictionaries({"in": st.lists(scalars, min_size=1, max_size=3)}),
        st.fixed_dictionaries({"not_in": st.lists(scalars, min_size=1, max_size=3)}),
        op(["gt", "gte", "lt", "lte"], st.integers(-2, 55)),
        st.tuples(st.integers(-2, 30), st.integers(0, 30)).map(
            lambda p: {"between": [min(p), max(p)]}
        ),
        st.fixed_dictionaries({"contains": scalars}),
        st.fixed_dictionaries({"starts_with": st.sampled_from(["p", "Pro", "", "pro p"])}),
        st.fixed_dictionaries({"ends_with": st.sampled_from(["o", "plan", "", "@rival.com"])}),
        st.fixed_dictionaries({"exists": st.booleans()}),
    ]
    if date_ops:
        ops.append(date_operators)
    return st.one_of(ops)


trait_conditions = st.one_of(
    st.tuples(
        st.sampled_from(["plan", "size", "signup", "tags", "company.size", "email", "created_at"]),
        comparisons(),
    ).map(lambda p: {"trait": p[0], **p[1]}),
    # A nested date too: SQLite reads it by walking its parent object (json_each), and
    # the parent is sometimes no object at all (a string, a date, a list).
    st.tuples(st.sampled_from(["signup", "created_at", "company.size"]), date_operators).map(
        lambda p: {"trait": p[0], **p[1]}
    ),
)
filters = st.lists(
    st.tuples(st.sampled_from(["total", "cart", "plan"]), comparisons(date_ops=False)).map(
        lambda p: {"property": p[0], **p[1]}
    ),
    max_size=1,
)
event_conditions = st.builds(
    lambda name, type_, where, low, high, window: {
        "event": name,
        **({"type": type_} if type_ != "track" else {}),
        **({"where": where} if where else {}),
        **({"at_least": low} if low is not None else {}),
        **({"at_most": high} if high is not None and (low is None or high >= low) else {}),
        **({"within_last": window} if window else {}),
    },
    st.sampled_from([*NAMES, "*"]),
    st.sampled_from(["track", "page"]),
    filters,
    st.one_of(st.none(), st.integers(0, 3)),
    st.one_of(st.none(), st.integers(0, 3)),
    st.one_of(st.none(), st.sampled_from(WINDOWS)),
)
numeric = st.one_of(
    op(["eq", "ne", "gt", "gte", "lt", "lte"], st.sampled_from([0, 1, 2, 2.5, 5, 20, 50])),
    st.just({"between": [1, 3]}),
)
aggregate_conditions = st.builds(
    lambda function, name, window, cmp: {
        "aggregate": function,
        "event": name,
        **({"of": "total"} if function != "count" else {}),
        **({"within_last": window} if window else {}),
        **cmp,
    },
    st.sampled_from(["count", "sum", "avg", "min", "max", "count_distinct"]),
    st.sampled_from(NAMES),
    st.one_of(st.none(), st.sampled_from(WINDOWS)),
    numeric,
)
steps = st.builds(
    lambda name, within, same, where: {
        "event": name,
        **({"within": within} if within else {}),
        **({"same": ["cart"]} if same else {}),
        **({"where": where} if where else {}),
    },
    st.sampled_from(NAMES),
    st.one_of(st.none(), st.sampled_from(WINDOWS)),
    st.booleans(),
    filters,
)
sequence_conditions = st.builds(
    lambda first, rest, negative, window: {
        "sequence": [
            {k: v for k, v in first.items() if k not in ("within", "same")},
            *rest[:-1],
            *(
                [{("not_event" if k == "event" else k): v for k, v in rest[-1].items()}]
                if negative
                else rest[-1:]
            ),
        ],
        **({"within_last": window} if window else {}),
    },
    steps,
    st.lists(steps, min_size=1, max_size=2),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(WINDOWS)),
)
trend_conditions = st.builds(
    lambda name, period, direction, ratio: {
        "trend": "count",
        "event": name,
        "period": period,
        direction: ratio,
    },
    st.sampled_from(NAMES),
    st.sampled_from(["1d", "7d", "14d"]),
    st.sampled_from(["below", "above"]),
    st.sampled_from([0.5, 1, 1.5, 2]),
)
consent_conditions = st.builds(
    lambda channel, topic, state: {
        "consent": channel,
        **({"topic": topic} if topic else {}),
        **({"state": state} if state else {}),
    },
    st.sampled_from(["email", "email", "sms", "push"]),
    st.sampled_from([None, *CONSENT_TOPICS, "news", "other"]),
    st.sampled_from([None, "granted", "denied", "pending", "unknown"]),
)
state_conditions = st.one_of(
    st.sampled_from(["s1", "s2", "s3"]).map(lambda k: {"segment": k}),
    st.tuples(st.sampled_from(STAGES), st.booleans()).map(
        lambda p: {"stage": p[0], **({"ever": True} if p[1] else {})}
    ),
    numeric.map(lambda cmp: {"score": "lead", **cmp}),
    st.sampled_from(["cold", "warm", "hot"]).map(lambda x: {"score": "lead", "temperature": x}),
    consent_conditions,
)
leaves = st.one_of(
    trait_conditions,
    event_conditions,
    aggregate_conditions,
    sequence_conditions,
    trend_conditions,
    state_conditions,
)
conditions = st.one_of(
    leaves,
    st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"all": xs}),
            st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"any": xs}),
            inner.map(lambda x: {"not": x}),
        ),
        max_leaves=4,
    ),
)


# -- the test -----------------------------------------------------------------------------
def store(db: Database, world: list[dict[str, Any]]) -> None:
    rows: dict[Any, list[dict[str, Any]]] = {
        t.contacts: [],
        t.events: [],
        t.segment_memberships: [],
        t.contact_stages: [],
        t.stage_changes: [],
        t.contact_scores: [],
        t.consents: [],
    }
    for index, c in enumerate(world, start=1):
        rows[t.contacts].append(
            {
                "id": index,
                "email": c["email"],
                "traits": c["traits"],
                "trait_issues": {},
                "first_seen_at": NOW - timedelta(days=index),
                "last_seen_at": NOW,
                "created_at": NOW - timedelta(days=3 * index),
                "updated_at": NOW,
            }
        )
        for type_, name, (hours, nudge), props in c["events"]:
            number = len(rows[t.events]) + 1
            rows[t.events].append(
                {
                    "id": number,
                    "message_id": f"m{number}",
                    "type": type_,
                    "event": name,
                    "contact_id": index,
                    "timestamp": NOW - timedelta(microseconds=hours * HOUR_US + nudge),
                    "received_at": NOW,
                    "properties": props,
                }
            )
        rows[t.segment_memberships] += [
            {"segment_key": key, "contact_id": index, "entered_at": NOW} for key in c["segments"]
        ]
        if c["stage"]:
            rows[t.contact_stages].append(
                {"model": "lifecycle", "contact_id": index, "stage": c["stage"], "since": NOW}
            )
        rows[t.stage_changes] += [
            {"model": "lifecycle", "contact_id": index, "to_stage": stage, "changed_at": NOW}
            for stage in sorted(c["was"])
        ]
        if c["score"] is not None:
            rows[t.contact_scores].append(
                {
                    "model": "lead",
                    "contact_id": index,
                    "score": c["score"],
                    "temperature": ENV.temperature_of("lead", c["score"]),
                    "updated_at": NOW,
                }
            )
        rows[t.consents] += [
            {
                "contact_id": index,
                "channel": channel,
                "topic": topic,
                "state": state,
                "recorded_at": NOW - timedelta(hours=hours_ago),
            }
            for (channel, topic), (state, hours_ago) in c["consents"].items()
        ]
    with db.write() as conn:
        for table, values in rows.items():
            conn.execute(delete(table))
            if values:
                conn.execute(insert(table), values)


def sql_members(db: Database, condition: Any) -> set[int]:
    with db.read() as conn:
        return set(conn.execute(SqlCompiler(ENV, db.backend).members(condition)).scalars())


def memory_members(db: Database, condition: Any, count: int) -> set[int]:
    evaluate = Evaluator(ENV)
    with db.read() as conn:
        facts = load_facts(conn, list(range(1, count + 1)), now=NOW)
    return {cid for cid, f in facts.items() if evaluate(condition, f)}


SETTINGS = settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check(db: Database, world: list[dict[str, Any]], raw: list[Any]) -> None:
    # Given a random population and random conditions
    store(db, world)
    for data in raw:
        condition = parse_condition(data)
        # When both evaluators select the members
        in_sql = sql_members(db, condition)
        in_memory = memory_members(db, condition, len(world))
        # Then they select the same contacts
        assert in_sql == in_memory, dump_condition(condition)


@SETTINGS
@given(world=worlds, raw=st.lists(trait_conditions, min_size=4, max_size=10))
def test_trait_conditions_agree(db: Database, world: list[dict[str, Any]], raw: list[Any]) -> None:
    check(db, world, raw)


@SETTINGS
@given(
    world=worlds,
    raw=st.lists(
        st.one_of(event_conditions, aggregate_conditions, trend_conditions), min_size=4, max_size=10
    ),
)
def test_event_conditions_agree(db: Database, world: list[dict[str, Any]], raw: list[Any]) -> None:
    check(db, world, raw)


@SETTINGS
@given(world=worlds, raw=st.lists(sequence_conditions, min_size=4, max_size=8))
def test_sequence_conditions_agree(
    db: Database, world: list[dict[str, Any]], raw: list[Any]
) -> None:
    check(db, world, raw)


@SETTINGS
@given(world=worlds, raw=st.lists(conditions, min_size=2, max_size=6))
def test_nested_conditions_agree(db: Database, world: list[dict[str, Any]], raw: list[Any]) -> None:
    check(db, world, raw)


@SETTINGS
@given(world=consent_worlds, raw=st.lists(consent_conditions, min_size=6, max_size=12))
def test_consent_conditions_agree(
    db: Database, world: list[dict[str, Any]], raw: list[Any]
) -> None:
    check(db, world, raw)
