"""The RFM report against a brute-force reference: each purchaser's scores computed from
the definition (1 + ⌊5 L / N⌋, L the purchasers with a strictly worse value), the named
segments from the grid the docs draw, and per segment the counts, revenue and average
CLV summed by hand — on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from tests.analytics.clv_data import simulated_purchases, store_purchases

from nurture.analytics.clv_config import ClvConfig
from nurture.analytics.clv_store import ClvService
from nurture.analytics.rfm import SEGMENTS, rfm_report, segment_of
from nurture.core import Nurture

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY_US = 86_400_000_000

# The segment of each (R, F) cell, R = 5 on the first line, F = 1..5 left to right, as
# docs/analytics/clv.md draws it. Ch: Champions, Lo: Loyal customers, Ne: New customers,
# Po: Potential loyalists, Cl: Can't lose them, Ar: At risk, Hi: Hibernating, Ls: Lost.
GRID = """
Ne Po Lo Ch Ch
Po Po Lo Ch Ch
Hi Hi Lo Lo Lo
Hi Hi Ar Ar Ar
Ls Ls Ar Cl Cl
"""
NAMES = {
    "Ch": "Champions",
    "Lo": "Loyal customers",
    "Ne": "New customers",
    "Po": "Potential loyalists",
    "Cl": "Can't lose them",
    "Ar": "At risk",
    "Hi": "Hibernating",
    "Ls": "Lost",
}


def grid() -> dict[tuple[int, int], str]:
    lines = GRID.strip().splitlines()
    return {
        (5 - i, f + 1): NAMES[cell]
        for i, line in enumerate(lines)
        for f, cell in enumerate(line.split())
    }


def test_the_segment_rules_are_the_documented_grid() -> None:
    # Given every (R, F) cell, Then the first matching rule names the grid's segment
    for (r, f), name in grid().items():
        assert segment_of(r, f) == name, (r, f)
    # And every segment owns at least one cell
    assert {s.name for s in SEGMENTS} == set(grid().values())


def brute_scores(values: dict[int, float], better: str) -> dict[int, int]:
    """1 + ⌊5 L / N⌋ with L the purchasers whose value is strictly worse."""
    n = len(values)
    out = {}
    for cid, v in values.items():
        worse = sum(1 for w in values.values() if (w > v if better == "low" else w < v))
        out[cid] = 1 + 5 * worse // n
    return out


def test_rfm_report_matches_a_brute_force_reference(nurture: Nurture) -> None:
    # Given 300 simulated shoppers (several orders on some days, cents that round) and a
    # fitted CLV model
    purchases = simulated_purchases(21, 300, NOW - timedelta(days=420), 415, whales=4)
    purchases.append((1, NOW - timedelta(hours=1), 0.005))  # half a cent rounds up
    store_purchases(nurture.db, purchases, now=NOW)
    ClvService.of(nurture).fit()
    # When building the RFM report as of now
    report = rfm_report(nurture.db, nurture.clock, ClvConfig())
    # Then each purchaser's recency (days since the last order), frequency (orders) and
    # monetary (revenue in cents, half up) scores are the brute-force ones
    now_us = int((NOW - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000
    last: dict[int, int] = {}
    orders: dict[int, int] = defaultdict(int)
    revenue: dict[int, float] = defaultdict(float)
    for cid, at, value in purchases:
        at_us = int((at - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000
        last[cid] = max(last.get(cid, 0), at_us)
        orders[cid] += 1
        revenue[cid] += value
    days = {cid: (now_us - at) // DAY_US for cid, at in last.items()}
    cents = {cid: int(np.floor(revenue[cid] * 100 + 0.5)) for cid in revenue}
    r = brute_scores({k: float(v) for k, v in days.items()}, "low")
    f = brute_scores({k: float(v) for k, v in orders.items()}, "high")
    cells = grid()
    expected: dict[str, list[int]] = defaultdict(list)
    for cid in days:
        expected[cells[(r[cid], f[cid])]].append(cid)
    # And per segment the customers, share, revenue and average CLV are those sums
    clv = {
        row["contact_id"]: row["expected_value"]
        for row in ClvService.of(nurture).top_customers("default", 1000)
    }
    rows = {row["segment"]: row for row in report.table("segments").rows}
    assert sum(row["customers"] for row in rows.values()) == len(days) == 300
    for name in NAMES.values():
        members = expected[name]
        row = rows[name]
        assert row["customers"] == len(members), name
        assert row["share"] == pytest.approx(len(members) / 300)
        assert row["revenue"] == pytest.approx(sum(revenue[c] for c in members))
        if members:
            assert row["average_clv"] == pytest.approx(np.mean([clv[c] for c in members]))
        else:
            assert row["average_clv"] is None
    # And the grid counts purchasers by their (R, F) scores
    counted = {
        (int(row["recency"][1]), k): row[f"f{k}"]
        for row in report.table("grid").rows
        for k in range(1, 6)
    }
    for cell, count in counted.items():
        assert count == sum(1 for cid in days if (r[cid], f[cid]) == cell)
    # And the monetary bounds are the purchasers' cents at the nearest-rank quintiles
    ordered = sorted(cents.values())
    quintiles = [ordered[-(-k * 300 // 5) - 1] / 100 for k in range(1, 5)]
    assert report.summary["monetary_bounds"] == quintiles


def test_rfm_without_purchases_or_model_says_so(nurture: Nurture) -> None:
    # Given no purchases, Then the report is empty and says why
    report = rfm_report(nurture.db, nurture.clock, ClvConfig())
    assert report.summary["purchasers"] == 0
    assert all(row["customers"] == 0 for row in report.table("segments").rows)
    assert any("No purchases" in note for note in report.notes)
    # Given purchases but no fitted model, Then average CLV is missing, with a note
    store_purchases(nurture.db, [(1, NOW - timedelta(days=2), 10.0)], now=NOW)
    report = rfm_report(nurture.db, nurture.clock, ClvConfig())
    assert report.summary["purchasers"] == 1
    assert any("No CLV model" in note for note in report.notes)
    row: dict[str, Any] = next(r for r in report.table("segments").rows if r["customers"])
    assert row["average_clv"] is None
