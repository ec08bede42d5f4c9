"""The CDNOW sample (Fader, Hardie & Lee 2005) as the `lifetimes` package ships it, read
for the CLV tests, and a helper that stores purchases as Nurture events."""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert

from nurture.store import Database
from nurture.store import tables as t

DATA = Path(__file__).resolve().parents[1] / "data" / "cdnow"


def summary() -> dict[str, np.ndarray]:
    """cdnow_customers_summary_with_transactions.csv: ID, x, t_x, T (weeks), zbar."""
    with (DATA / "cdnow_customers_summary_with_transactions.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {key: np.array([float(r[key]) for r in rows]) for key in ("ID", "x", "t_x", "T", "zbar")}


def transactions() -> list[tuple[int, date, float]]:
    """CDNOW_sample.txt as (summary ID, day, dollars); its columns are the master
    customer id, the sample's ID, yyyymmdd, number of CDs and dollar value."""
    out = []
    for line in (DATA / "CDNOW_sample.txt").read_text().splitlines():
        _master, sample_id, day, _cds, dollars = line.split()
        out.append(
            (int(sample_id), date(int(day[:4]), int(day[4:6]), int(day[6:])), float(dollars))
        )
    return out


def store_purchases(
    db: Database,
    purchases: list[tuple[int, datetime, Any]],
    *,
    event: str = "Order Completed",
    prop: str = "revenue",
    now: datetime,
) -> None:
    """Contacts 1..N and one track event per (contact, time, revenue) purchase; a revenue
    of None leaves the property out."""
    ids = sorted({cid for cid, _, _ in purchases})
    contacts = [
        {
            "id": cid,
            "traits": {},
            "trait_issues": {},
            "first_seen_at": now - timedelta(days=3650),
            "last_seen_at": now,
            "created_at": now - timedelta(days=3650),
            "updated_at": now,
        }
        for cid in ids
    ]
    events = [
        {
            "id": n,
            "message_id": f"m{n}",
            "type": "track",
            "event": event,
            "contact_id": cid,
            "timestamp": at,
            "received_at": now,
            "properties": {} if value is None else {prop: value},
        }
        for n, (cid, at, value) in enumerate(purchases, start=1)
    ]
    with db.write() as conn:
        if contacts:
            conn.execute(insert(t.contacts), contacts)
        for start in range(0, len(events), 5000):
            conn.execute(insert(t.events), events[start : start + 5000])


def noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def simulated_purchases(
    seed: int, customers: int, start: datetime, days: int, *, whales: int = 0
) -> list[tuple[int, datetime, Any]]:
    """Customers 1..N buying as BG/NBD tells (rate λ per day, dropout p after each
    purchase), first purchases spread over the first half of `days` from `start`, each
    purchase worth a Gamma-distributed amount around the customer's own mean. The last
    `whales` customers spend 5,000 a month four times, then stop 5 to 7 months before the end."""
    rng = np.random.default_rng(seed)
    out: list[tuple[int, datetime, Any]] = []
    for cid in range(1, customers + 1):
        first = int(rng.integers(0, days // 2))
        if cid > customers - whales:
            # four purchases a month apart, the last 5 to 7 months before the end
            for k in range(4):
                at = start + timedelta(days=days - 300 + 30 * k + 15 * (cid % 5), hours=12)
                out.append((cid, at, 5000.0))
            continue
        lam, p = rng.gamma(0.8, 1 / 25.0), rng.beta(1.0, 6.0)
        mean = rng.gamma(6.0, 8.0)
        day = float(first)
        while day < days:
            out.append(
                (
                    cid,
                    start + timedelta(days=int(day), hours=12),
                    round(rng.gamma(4.0, mean / 4.0), 2),
                )
            )
            if rng.random() < p:
                break
            day += rng.exponential(1 / lam)
    return out


# The `clock` fixture's now.
NOW_OF_TESTS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
