"""Funnels: the SQL funnel against a brute-force reference written here, on SQLite and
PostgreSQL, plus hand-built cases for the edges the definition names (docs/analytics/funnels.md).

The reference reads each contact's events one by one, in (timestamp, id) order, and
follows the definition word for word; it shares no code with nurture.analytics.funnels.
"""

from __future__ import annotations

import json
import statistics
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from nurture.analytics.funnels import _halves, funnel, parse_funnel, run_funnel
from nurture.core import Nurture
from nurture.errors import NotFound, ValidationError
from nurture.store import Database
from nurture.store import tables as t

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BASE = datetime(2026, 2, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


# -- storing a world ---------------------------------------------------------------------------


# Contact ids this far apart: from four contacts on, SQLite counts two halves on two threads.
SPACING = 400


def store(db: Database, contacts: list[dict[str, Any]]) -> None:
    """The contacts with their traits, segments and events; ids SPACING apart."""
    rows: dict[Any, list[dict[str, Any]]] = {
        t.contacts: [],
        t.events: [],
        t.segment_memberships: [],
    }
    for index, c in enumerate(contacts):
        cid = 1 + index * SPACING
        rows[t.contacts].append(
            {
                "id": cid,
                "traits": c.get("traits", {}),
                "trait_issues": {},
                "first_seen_at": BASE,
                "last_seen_at": BASE,
                "created_at": BASE,
                "updated_at": BASE,
            }
        )
        rows[t.segment_memberships] += [
            {"segment_key": key, "contact_id": cid, "entered_at": BASE}
            for key in sorted(c.get("segments", ()))
        ]
    for index, c in enumerate(contacts):
        for name, type_, at, props in c["events"]:
            rows[t.events].append(
                {
                    "message_id": f"m{len(rows[t.events])}",
                    "type": type_,
                    "event": name,
                    "contact_id": 1 + index * SPACING,
                    "timestamp": at,
                    "received_at": at,
                    "properties": props,
                }
            )
    # Ids follow a shuffled order (by a fixed key) so that id order and time order differ.
    rows[t.events].sort(key=lambda r: zlib.crc32(r["message_id"].encode()))
    for i, row in enumerate(rows[t.events], start=1):
        row["id"] = i
    with db.write() as conn:
        for table, values in rows.items():
            conn.execute(delete(table))
            if values:
                conn.execute(insert(table), values)


# -- the reference ----------------------------------------------------------------------------


def matches(step: dict[str, Any], event: dict[str, Any]) -> bool:
    if step["event"] != "*" and event["event"] != step["event"]:
        return False
    if event["type"] != step.get("type", "track"):
        return False
    props = event["properties"] or {}
    for f in step.get("where", []):
        value = props.get(f["property"])
        if "eq" in f and not (type(value) is type(f["eq"]) and value == f["eq"]):
            return False
        if "gt" in f and not (
            isinstance(value, int | float) and not isinstance(value, bool) and value > f["gt"]
        ):
            return False
    return True


def reference_times(
    events: list[dict[str, Any]], q: dict[str, Any], lower: datetime, upper: datetime
) -> list[datetime]:
    """The times of the steps one contact reached, by the definition."""
    ordered = sorted(events, key=lambda e: (e["timestamp"], e["id"]))
    window = q["window"]
    chosen: list[dict[str, Any]] = []
    for k, step in enumerate(q["steps"]):
        found = None
        for e in ordered:
            if not matches(step, e) or e["timestamp"] > NOW or any(e is c for c in chosen):
                continue
            if k == 0:
                if lower <= e["timestamp"] < upper:
                    found = e
                    break
            elif chosen[-1]["timestamp"] <= e["timestamp"] <= chosen[0]["timestamp"] + window:
                found = e
                break
        if found is None:
            break
        chosen.append(found)
    return [e["timestamp"] for e in chosen]


def pct(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, statistics.median(values), q3


def reference_steps(reached: list[list[datetime]], n: int) -> list[dict[str, Any]]:
    rows = []
    for k in range(n):
        at = [times for times in reached if len(times) > k]
        before = len([times for times in reached if len(times) > k - 1]) if k else None
        prev = [(x[k] - x[k - 1]).total_seconds() for x in at] if k else []
        start = [(x[k] - x[0]).total_seconds() for x in at] if k else []
        p25, p50, p75 = pct(prev)
        s25, s50, s75 = pct(start)
        rows.append(
            {
                "contacts": len(at),
                "conversion_from_previous": len(at) / before if before else None,
                "dropped": before - len(at) if before is not None else None,
                "median_from_previous": p50,
                "p25_from_previous": p25,
                "p75_from_previous": p75,
                "median_from_start": s50,
                "p25_from_start": s25,
                "p75_from_start": s75,
            }
        )
    return rows


def label(value: Any) -> str:
    if value is None:
        return "(none)"
    return value if isinstance(value, str) else json.dumps(value)


def reference(contacts: list[dict[str, Any]], q: dict[str, Any]) -> dict[str, Any]:
    """{group: steps rows} with group "total" for everyone."""
    with_ids: list[list[dict[str, Any]]] = [[] for _ in contacts]
    number = 0
    # The same ids as `store`.
    all_events = []
    for cid, c in enumerate(contacts, start=1):
        for name, type_, at, props in c["events"]:
            all_events.append(
                {
                    "message_id": f"m{number}",
                    "event": name,
                    "type": type_,
                    "timestamp": at,
                    "properties": props,
                    "cid": cid,
                }
            )
            number += 1
    all_events.sort(key=lambda r: zlib.crc32(r["message_id"].encode()))
    for i, e in enumerate(all_events, start=1):
        e["id"] = i
        with_ids[e["cid"] - 1].append(e)
    reached: dict[int, list[datetime]] = {}
    for cid, c in enumerate(contacts, start=1):
        if q.get("segment") and q["segment"] not in c.get("segments", ()):
            continue
        times = reference_times(with_ids[cid - 1], q, q["lower"], q["upper"])
        if times:
            reached[cid] = times
    n = len(q["steps"])
    out = {"total": reference_steps(list(reached.values()), n)}
    bd = q.get("breakdown")
    if bd and "segments" in bd:
        for key in bd["segments"]:
            members = [x for cid, x in reached.items() if key in contacts[cid - 1]["segments"]]
            out[key] = reference_steps(members, n)
    elif bd:
        by: dict[str, list[list[datetime]]] = {}
        for cid, x in reached.items():
            value = contacts[cid - 1]["traits"].get(bd["trait"])
            by.setdefault(label(value), []).append(x)
        ranked = sorted(by, key=lambda g: (-len(by[g]), g == "(none)", g))
        limit = bd.get("limit", 10)
        for g in ranked[:limit]:
            out[g] = reference_steps(by[g], n)
        rest = [x for g in ranked[limit:] for x in by[g]]
        if rest:
            out["(other)"] = reference_steps(rest, n)
    return out


# -- generated worlds and funnels ---------------------------------------------------------------

NAMES = ["A", "B", "C"]
# A coarse grid of times so that ties and window edges come up often.
times = st.integers(0, 40).map(lambda h: BASE + h * 6 * HOUR)
properties = st.fixed_dictionaries(
    {}, optional={"plan": st.sampled_from(["pro", "free"]), "total": st.integers(0, 3)}
)
events = st.lists(
    st.tuples(
        st.sampled_from(NAMES), st.sampled_from(["track", "track", "page"]), times, properties
    ),
    max_size=10,
)
contacts = st.lists(
    st.fixed_dictionaries(
        {
            "events": events,
            "traits": st.fixed_dictionaries(
                {}, optional={"plan": st.sampled_from(["pro", "free", "team", True, 3])}
            ),
            "segments": st.sets(st.sampled_from(["s1", "s2"])),
        }
    ),
    min_size=1,
    max_size=8,
)
filters = st.lists(
    st.one_of(
        st.sampled_from(["pro", "free"]).map(lambda v: {"property": "plan", "eq": v}),
        st.integers(0, 2).map(lambda v: {"property": "total", "gt": v}),
    ),
    max_size=1,
)
steps = st.builds(
    lambda name, type_, where: {
        "event": name,
        **({"type": type_} if type_ != "track" else {}),
        **({"where": where} if where else {}),
    },
    st.sampled_from([*NAMES, "*"]),
    st.sampled_from(["track", "track", "track", "page"]),
    filters,
)
breakdowns = st.one_of(
    st.none(),
    st.just({"segments": ["s1", "s2"]}),
    st.integers(1, 3).map(lambda n: {"trait": "plan", "limit": n}),
)
funnels = st.fixed_dictionaries(
    {
        "steps": st.lists(steps, min_size=2, max_size=4),
        "window": st.sampled_from(["6h", "12h", "1d", "3d", "30d"]),
        "from_h": st.integers(0, 30),
        "span_h": st.integers(1, 240),
        "breakdown": breakdowns,
        "segment": st.sampled_from([None, None, "s1"]),
    }
)


def ask(q: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the API body, the same question for the reference)."""
    lower = BASE + q["from_h"] * 6 * HOUR
    upper = lower + q["span_h"] * HOUR
    body = {
        "steps": q["steps"],
        "window": q["window"],
        "from": lower.isoformat(),
        "to": upper.isoformat(),
        **({"breakdown": q["breakdown"]} if q["breakdown"] else {}),
        **({"segment": q["segment"]} if q["segment"] else {}),
    }
    window = parse_funnel(body).window
    return body, {**body, "window": window, "lower": lower, "upper": upper}


KEYS = [
    "contacts",
    "conversion_from_previous",
    "dropped",
    "median_from_previous",
    "p25_from_previous",
    "p75_from_previous",
    "median_from_start",
    "p25_from_start",
    "p75_from_start",
]


def same(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    for a, e in zip(actual, expected, strict=True):
        for key in KEYS:
            if isinstance(e[key], float):
                assert a[key] == pytest.approx(e[key], rel=1e-12, abs=1e-9), key
            else:
                assert a[key] == e[key], key


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(world=contacts, questions=st.lists(funnels, min_size=3, max_size=6))
def test_funnels_agree_with_the_reference(
    db: Database, world: list[dict[str, Any]], questions: list[dict[str, Any]]
) -> None:
    # Given random event histories
    store(db, world)
    for q in questions:
        body, question = ask(q)
        # When the funnel is computed in SQL
        report = run_funnel(db, parse_funnel(body), NOW)
        # Then every number equals the reference's
        expected = reference(world, question)
        same(report.table("steps").rows, expected["total"])
        if q["breakdown"]:
            groups: dict[str, list[dict[str, Any]]] = {}
            for row in report.table("groups").rows:
                groups.setdefault(row["group"], []).append(row)
            if "segments" in q["breakdown"]:
                assert set(groups) == set(q["breakdown"]["segments"])
            else:
                assert list(groups) == [g for g in expected if g != "total"]
            for key, rows in groups.items():
                same(rows, expected[key])


# -- hand-built cases ----------------------------------------------------------------------------


def ev(name: str, at: datetime, **props: Any) -> tuple[str, str, datetime, dict[str, Any]]:
    return (name, "track", at, props)


def steps_of(db: Database, body: dict[str, Any]) -> list[int]:
    base = {"from": BASE.isoformat(), "to": (BASE + timedelta(days=20)).isoformat()}
    report = run_funnel(db, parse_funnel({**base, **body}), NOW)
    return [row["contacts"] for row in report.table("steps").rows]


ABC = [{"event": "A"}, {"event": "B"}, {"event": "C"}]


def test_window_edge_is_inclusive(db: Database) -> None:
    # Given C exactly 7 days after A, and C one microsecond later for another contact
    week = timedelta(days=7)
    store(
        db,
        [
            {"events": [ev("A", BASE), ev("B", BASE + HOUR), ev("C", BASE + week)]},
            {
                "events": [
                    ev("A", BASE),
                    ev("B", BASE + HOUR),
                    ev("C", BASE + week + timedelta(microseconds=1)),
                ]
            },
        ],
    )
    # Then the window measured from the first step includes its last instant only
    assert steps_of(db, {"steps": ABC, "window": "7d"}) == [2, 2, 1]


def test_same_timestamp_events_count_in_funnel_order(db: Database) -> None:
    # Given A, B and C all at the same instant (stored in the order C, B, A)
    store(db, [{"events": [ev("C", BASE), ev("B", BASE), ev("A", BASE)]}])
    # Then the contact converts: "at or after" the previous step
    assert steps_of(db, {"steps": ABC}) == [1, 1, 1]


def test_a_repeated_step_needs_a_second_event(db: Database) -> None:
    # Given one contact with A then B, one with A, A, B, one with two A at the same time
    store(
        db,
        [
            {"events": [ev("A", BASE), ev("B", BASE + HOUR)]},
            {"events": [ev("A", BASE), ev("A", BASE + HOUR), ev("B", BASE + 2 * HOUR)]},
            {"events": [ev("A", BASE), ev("A", BASE), ev("B", BASE)]},
        ],
    )
    # Then A, A, B counts only contacts with two A events (one event serves one step)
    funnel_aab = {"steps": [{"event": "A"}, {"event": "A"}, {"event": "B"}]}
    assert steps_of(db, funnel_aab) == [3, 2, 2]


def test_one_attempt_per_contact_from_the_first_start(db: Database) -> None:
    # Given A, then 10 days later A again followed by B
    store(
        db,
        [{"events": [ev("A", BASE), ev("A", BASE + 10 * 24 * HOUR), ev("B", BASE + 241 * HOUR)]}],
    )
    # Then the attempt starts at the first A and B is out of its 7-day window
    assert steps_of(db, {"steps": [{"event": "A"}, {"event": "B"}]}) == [1, 0]


def test_later_steps_may_fall_after_the_range(db: Database) -> None:
    # Given A inside the range and B after its end
    store(db, [{"events": [ev("A", BASE + 23 * HOUR), ev("B", BASE + 25 * HOUR)]}])
    body = {
        "steps": [{"event": "A"}, {"event": "B"}],
        "from": BASE.isoformat(),
        "to": (BASE + 24 * HOUR).isoformat(),
    }
    # Then B still counts: the range applies to the first step only
    report = run_funnel(db, parse_funnel(body), NOW)
    assert [r["contacts"] for r in report.table("steps").rows] == [1, 1]


def test_property_filters_and_medians(db: Database) -> None:
    # Given three contacts who viewed then bought after 1h, 2h and 4h, one cheaply
    store(
        db,
        [
            {"events": [ev("A", BASE), ev("B", BASE + HOUR, total=50)]},
            {"events": [ev("A", BASE), ev("B", BASE + 2 * HOUR, total=80)]},
            {"events": [ev("A", BASE), ev("B", BASE + 4 * HOUR, total=5)]},
        ],
    )
    body = {
        "steps": [{"event": "A"}, {"event": "B", "where": [{"property": "total", "gt": 10}]}],
        "from": BASE.isoformat(),
    }
    report = run_funnel(db, parse_funnel(body), NOW)
    last = report.table("steps").rows[-1]
    # Then only purchases over 10 count, and the median is that of 1h and 2h
    assert last["contacts"] == 2
    assert last["median_from_previous"] == 5400.0
    assert report.summary["bottleneck_step"] == 2


def test_breakdown_by_trait_keeps_the_top_values(db: Database) -> None:
    store(
        db,
        [
            {"events": [ev("A", BASE), ev("B", BASE)], "traits": {"plan": "pro"}},
            {"events": [ev("A", BASE), ev("B", BASE)], "traits": {"plan": "pro"}},
            {"events": [ev("A", BASE)], "traits": {"plan": "free"}},
            {"events": [ev("A", BASE)], "traits": {"plan": "team"}},
            {"events": [ev("A", BASE)], "traits": {}},
        ],
    )
    body = {
        "steps": [{"event": "A"}, {"event": "B"}],
        "from": BASE.isoformat(),
        "breakdown": {"trait": "plan", "limit": 1},
    }
    report = run_funnel(db, parse_funnel(body), NOW)
    groups = {(r["group"], r["step"]): r["contacts"] for r in report.table("groups").rows}
    assert groups == {("pro", 1): 2, ("pro", 2): 2, ("(other)", 1): 3, ("(other)", 2): 0}
    wide = report.table("group_conversion").rows
    assert [r["g0"] for r in wide] == [1.0, 1.0] and [r["g1"] for r in wide] == [1.0, 0.0]


def test_segment_filter_and_breakdown(db: Database) -> None:
    store(
        db,
        [
            {"events": [ev("A", BASE), ev("B", BASE)], "segments": {"s1", "s2"}},
            {"events": [ev("A", BASE)], "segments": {"s1"}},
            {"events": [ev("A", BASE), ev("B", BASE)], "segments": set()},
        ],
    )
    base = {"steps": [{"event": "A"}, {"event": "B"}], "from": BASE.isoformat()}
    filtered = run_funnel(db, parse_funnel({**base, "segment": "s1"}), NOW)
    assert [r["contacts"] for r in filtered.table("steps").rows] == [2, 1]
    split = run_funnel(db, parse_funnel({**base, "breakdown": {"segments": ["s1", "s2"]}}), NOW)
    assert [r["contacts"] for r in split.table("steps").rows] == [3, 2]
    groups = {(r["group"], r["step"]): r["contacts"] for r in split.table("groups").rows}
    assert groups == {("s1", 1): 2, ("s1", 2): 1, ("s2", 1): 1, ("s2", 2): 1}


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"steps": [{"event": "A"}]}, "steps"),
        ({"steps": [{"event": "A"}, {"event": ""}]}, "steps[1].event"),
        ({"steps": [{"event": "A"}, {"event": "B", "type": "identify"}]}, "steps[1].type"),
        (
            {"steps": [{"event": "A"}, {"event": "B", "where": [{"property": "x"}]}]},
            "steps[1].where[0]",
        ),
        ({"steps": [{"event": "A"}, {"event": "B"}], "window": "soon"}, "window"),
        ({"steps": [{"event": "A"}, {"event": "B"}], "from": "yesterday"}, "from"),
        ({"steps": [{"event": "A"}, {"event": "B"}], "tz": "Mars/Base"}, "tz"),
        ({"steps": [{"event": "A"}, {"event": "B"}], "breakdown": {}}, "breakdown"),
        ({"steps": [{"event": "A"}, {"event": "B"}], "colour": "red"}, "colour"),
    ],
)
def test_bad_questions_name_the_field(body: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_funnel(body)
    assert caught.value.path == path


def test_unknown_segments_and_empty_ranges_are_refused(nurture: Nurture) -> None:
    body = {"steps": [{"event": "A"}, {"event": "B"}]}
    with pytest.raises(NotFound) as caught:
        funnel(nurture.db, {**body, "segment": "nope"}, NOW)
    assert caught.value.path == "segment"
    with pytest.raises(NotFound) as caught:
        funnel(nurture.db, {**body, "breakdown": {"segments": ["nope"]}}, NOW)
    assert caught.value.path == "breakdown.segments[0]"
    with pytest.raises(ValidationError) as caught:
        funnel(nurture.db, {**body, "from": "2026-03-02", "to": "2026-03-01"}, NOW)
    assert caught.value.path == "from"


def test_sqlite_counts_two_halves_of_the_contacts_like_the_whole(db: Database) -> None:
    # Given six contacts whose ids span more than 1000 (split in two on SQLite)
    store(db, [{"events": [ev("A", BASE), ev("B", BASE + i * HOUR)]} for i in range(6)])
    query = parse_funnel({"steps": [{"event": "A"}, {"event": "B"}], "from": BASE.isoformat()})
    if db.is_sqlite:
        assert len(_halves(db, query.steps[0])) == 2
    # When counted on two threads and on one
    two = run_funnel(db, query, NOW, threads=2).table("steps").rows
    one = run_funnel(db, query, NOW, threads=1).table("steps").rows
    # Then the numbers are the same, and right: medians of 0..5 hours
    assert two == one
    assert [r["contacts"] for r in two] == [6, 6]
    assert two[1]["median_from_previous"] == 2.5 * 3600
