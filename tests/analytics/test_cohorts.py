"""Cohort retention: the SQL report against a reference written here from local calendar
dates (not UTC boundaries), on SQLite and PostgreSQL, plus time zone and DST edges."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from nurture.analytics.cohorts import cohorts, parse_cohorts, run_cohorts
from nurture.core import Nurture
from nurture.errors import NotFound, ValidationError
from nurture.store import Database
from nurture.store import tables as t

NOW = datetime(2026, 4, 15, 12, 0, tzinfo=UTC)
BASE = datetime(2026, 1, 20, tzinfo=UTC)
HOUR = timedelta(hours=1)
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]


def store(db: Database, contacts: list[dict[str, Any]]) -> None:
    rows: dict[Any, list[dict[str, Any]]] = {
        t.contacts: [],
        t.events: [],
        t.segment_memberships: [],
    }
    for cid, c in enumerate(contacts, start=1):
        rows[t.contacts].append(
            {
                "id": cid,
                "traits": {},
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
        for name, type_, at, props in c["events"]:
            rows[t.events].append(
                {
                    "message_id": f"m{len(rows[t.events])}",
                    "type": type_,
                    "event": name,
                    "contact_id": cid,
                    "timestamp": at,
                    "received_at": at,
                    "properties": props,
                }
            )
    with db.write() as conn:
        for table, values in rows.items():
            conn.execute(delete(table))
            if values:
                conn.execute(insert(table), values)


# -- the reference ---------------------------------------------------------------------------


def matches(m: dict[str, Any], name: str, type_: str, props: dict[str, Any]) -> bool:
    if m.get("event", "*") != "*" and name != m["event"]:
        return False
    if type_ != m.get("type", type_) or type_ not in ("track", "page", "screen"):
        return False
    return all(props.get(f["property"]) == f["eq"] for f in m.get("where", []))


def start_of(day: date, every: str) -> date:
    return day - timedelta(days=day.weekday()) if every == "week" else day.replace(day=1)


def periods_between(a: date, b: date, every: str) -> int:
    if every == "week":
        return (b - a).days // 7
    return (b.year * 12 + b.month) - (a.year * 12 + a.month)


def add_periods(a: date, n: int, every: str) -> date:
    if every == "week":
        return a + timedelta(weeks=n)
    months = a.year * 12 + a.month - 1 + n
    return date(months // 12, months % 12 + 1, 1)


def reference(contacts: list[dict[str, Any]], q: dict[str, Any]) -> list[dict[str, Any]]:
    zone = ZoneInfo(q.get("tz", "UTC"))
    every = q["every"]
    first = start_of(date.fromisoformat(q["from"]), every)
    last = start_of(date.fromisoformat(q["to"]), every)
    n_periods = q["periods"]
    local = lambda at: at.astimezone(zone).date()  # noqa: E731
    out: dict[date, dict[str, Any]] = {}
    day = first
    while day <= last:
        out[day] = {"size": 0, "active": [0] * (n_periods + 1)}
        day = add_periods(day, 1, every)
    for c in contacts:
        if q.get("segment") and q["segment"] not in c["segments"]:
            continue
        mine = [e for e in c["events"] if e[2] <= NOW]
        starts = [at for name, type_, at, props in mine if matches(q["cohort"], name, type_, props)]
        if not starts:
            continue
        cohort = start_of(local(min(starts)), every)
        if cohort not in out:
            continue
        out[cohort]["size"] += 1
        seen = set()
        for name, type_, at, props in mine:
            if matches(q["active"], name, type_, props):
                n = periods_between(cohort, start_of(local(at), every), every)
                if 0 <= n <= n_periods:
                    seen.add(n)
        for n in seen:
            out[cohort]["active"][n] += 1
    rows = []
    for cohort, v in out.items():
        row: dict[str, Any] = {"cohort": cohort, "size": v["size"]}
        for n in range(n_periods + 1):
            begins = datetime.combine(add_periods(cohort, n, every), datetime.min.time(), zone)
            row[f"p{n}"] = v["active"][n] if begins <= NOW else None
        rows.append(row)
    return rows


# -- generated worlds ----------------------------------------------------------------------------

times = st.integers(0, 90 * 24).map(lambda h: BASE + h * HOUR)
events = st.lists(
    st.tuples(
        st.sampled_from(["A", "B"]),
        st.sampled_from(["track", "track", "page", "identify"]),
        times,
        st.fixed_dictionaries({}, optional={"plan": st.sampled_from(["pro", "free"])}),
    ),
    max_size=8,
)
world = st.lists(
    st.fixed_dictionaries({"events": events, "segments": st.sets(st.sampled_from(["s1"]))}),
    min_size=1,
    max_size=10,
)
matchers = st.builds(
    lambda name, type_, plan: {
        "event": name,
        **({"type": type_} if type_ else {}),
        **({"where": [{"property": "plan", "eq": plan}]} if plan else {}),
    },
    st.sampled_from(["A", "B", "*"]),
    st.sampled_from([None, None, "track", "page"]),
    st.sampled_from([None, None, "pro"]),
)
questions = st.fixed_dictionaries(
    {
        "cohort": matchers,
        "active": matchers,
        "every": st.sampled_from(["week", "month"]),
        "periods": st.integers(1, 5),
        "from": st.integers(0, 60).map(lambda d: (BASE.date() + timedelta(days=d)).isoformat()),
        "span": st.integers(0, 40),
        "tz": st.sampled_from(ZONES),
        "segment": st.sampled_from([None, None, "s1"]),
    }
)


def body_of(q: dict[str, Any]) -> dict[str, Any]:
    to = (date.fromisoformat(q["from"]) + timedelta(days=q["span"])).isoformat()
    out = {k: v for k, v in q.items() if k != "span" and v is not None}
    return {**out, "to": to}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(contacts=world, asked=st.lists(questions, min_size=3, max_size=6))
def test_cohorts_agree_with_the_reference(
    db: Database, contacts: list[dict[str, Any]], asked: list[dict[str, Any]]
) -> None:
    # Given random histories
    store(db, contacts)
    for q in asked:
        body = body_of(q)
        # When the cohort table is computed in SQL
        report = run_cohorts(db, parse_cohorts(body), NOW)
        # Then cohorts, sizes and active counts equal the reference's
        expected = reference(contacts, body)
        rows = report.table("cohorts").rows
        keys = ["cohort", "size", *(f"p{n}" for n in range(q["periods"] + 1))]
        assert [{k: r[k] for k in keys} for r in rows] == expected
        for r in rows:
            for n in range(q["periods"] + 1):
                value = r[f"p{n}"]
                rate = None if value is None or not r["size"] else value / r["size"]
                assert r[f"r{n}"] == rate


# -- hand-built cases ------------------------------------------------------------------------------


def test_a_dst_week_boundary_in_paris(db: Database) -> None:
    # Given a contact first seen on Sunday 29 March 2026 at 22:30 UTC: already Monday
    # 30 March at 00:30 in Paris (CEST since that morning), and one first seen at 21:30 UTC
    # (Sunday 23:30 in Paris)
    monday = datetime(2026, 3, 29, 22, 30, tzinfo=UTC)
    store(
        db,
        [
            {"events": [("A", "track", monday, {})]},
            {"events": [("A", "track", monday - HOUR, {}), ("A", "track", monday, {})]},
        ],
    )
    body = {"every": "week", "from": "2026-03-23", "to": "2026-03-30", "tz": "Europe/Paris"}
    rows = run_cohorts(db, parse_cohorts(body), NOW).table("cohorts").rows
    # Then in Paris they fall in different weeks, and the second is active in its week 1
    assert [(r["cohort"], r["size"], r["p0"], r["p1"]) for r in rows] == [
        (date(2026, 3, 23), 1, 1, 1),
        (date(2026, 3, 30), 1, 1, 0),
    ]
    # And in UTC both fall in the week of 23 March
    utc = run_cohorts(db, parse_cohorts({**body, "tz": "UTC"}), NOW).table("cohorts").rows
    assert [(r["cohort"], r["size"]) for r in utc] == [
        (date(2026, 3, 23), 2),
        (date(2026, 3, 30), 0),
    ]


def test_new_york_month_boundary(db: Database) -> None:
    # Given an event at 1 March 03:00 UTC: still 28 February in New York
    at = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    store(db, [{"events": [("A", "track", at, {}), ("B", "track", at + 24 * HOUR, {})]}])
    body = {
        "cohort": {"event": "A"},
        "active": {"event": "B"},
        "every": "month",
        "periods": 2,
        "from": "2026-02-01",
        "to": "2026-03-01",
        "tz": "America/New_York",
    }
    rows = run_cohorts(db, parse_cohorts(body), NOW).table("cohorts").rows
    # Then the February cohort holds it, and it was active (B) in month 1 only
    assert [(r["cohort"], r["size"], r["p0"], r["p1"], r["p2"]) for r in rows] == [
        (date(2026, 2, 1), 1, 0, 1, 0),
        (date(2026, 3, 1), 0, 0, 0, None),
    ]


def test_period_zero_counts_the_first_event_itself(db: Database) -> None:
    store(db, [{"events": [("Signed Up", "track", BASE, {})]}])
    body = {
        "cohort": {"event": "Signed Up"},
        "active": {"event": "Signed Up"},
        "from": "2026-01-19",
        "to": "2026-01-19",
    }
    rows = run_cohorts(db, parse_cohorts(body), NOW).table("cohorts").rows
    assert (rows[0]["size"], rows[0]["p0"], rows[0]["r0"], rows[0]["p1"]) == (1, 1, 1.0, 0)


def test_the_periods_table_adds_cohorts_that_reached_each_period(db: Database) -> None:
    store(
        db,
        [
            {
                "events": [
                    ("A", "track", datetime(2026, 4, 6, tzinfo=UTC), {}),
                    ("A", "track", datetime(2026, 4, 14, tzinfo=UTC), {}),
                ]
            },
            {"events": [("A", "track", datetime(2026, 4, 13, tzinfo=UTC), {})]},
        ],
    )
    body = {"periods": 2, "from": "2026-04-06", "to": "2026-04-13"}
    report = run_cohorts(db, parse_cohorts(body), NOW)
    overall = [(r["cohort_contacts"], r["active"]) for r in report.table("periods").rows]
    # week 1 has begun for the cohort of 6 April only; week 2 for none
    assert overall == [(2, 2), (1, 1), (0, 0)]
    assert report.summary["retention_week_1"] == 1.0


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"every": "day"}, "every"),
        ({"periods": 0}, "periods"),
        ({"tz": "Nowhere/City"}, "tz"),
        (
            {"active": {"event": "A", "where": [{"property": "x", "eq": 1, "gt": 2}]}},
            "active.where[0]",
        ),
        ({"cohort": {"type": "identify"}}, "cohort.type"),
        ({"to": "soon"}, "to"),
    ],
)
def test_bad_questions_name_the_field(body: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_cohorts(body)
    assert caught.value.path == path


def test_unknown_segment_and_reversed_range(nurture: Nurture) -> None:
    with pytest.raises(NotFound) as caught:
        cohorts(nurture.db, {"segment": "nope"}, NOW)
    assert caught.value.path == "segment"
    with pytest.raises(ValidationError) as caught:
        cohorts(nurture.db, {"from": "2026-03-10", "to": "2026-03-01"}, NOW)
    assert caught.value.path == "from"
