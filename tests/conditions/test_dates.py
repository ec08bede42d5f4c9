"""Date traits read the same everywhere, and survive PostgreSQL's parallel queries."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, text

from nurture.conditions.compile import SqlCompiler
from nurture.conditions.env import Env
from nurture.conditions.model import parse_condition
from nurture.store import Database
from nurture.store import tables as t

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_a_date_condition_runs_in_a_parallel_query(db: Database) -> None:
    # Given contacts with date traits, one of them invalid
    with db.write() as conn:
        conn.execute(
            insert(t.contacts),
            [
                {
                    "id": i,
                    "traits": {"renewal": value},
                    "trait_issues": {},
                    "first_seen_at": NOW,
                    "last_seen_at": NOW,
                    "created_at": NOW,
                    "updated_at": NOW,
                }
                for i, value in enumerate(["2026-03-20", "2026-02-30", "2027-01-01", 1773000000], 1)
            ],
        )
    condition = parse_condition({"trait": "renewal", "within_next": "30d"})
    with db.read() as conn:
        if not db.is_sqlite:
            # When PostgreSQL is made to plan every query in parallel
            conn.execute(text("SET force_parallel_mode = on"))
            conn.execute(text("SET parallel_setup_cost = 0"))
            conn.execute(text("SET parallel_tuple_cost = 0"))
        query = SqlCompiler(Env(now=NOW), db.backend).members(condition)
        members = set(conn.execute(query).scalars())
    # Then the invalid date is no date, and the valid ones in the window match
    assert members == {1, 4}
