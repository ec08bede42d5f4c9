"""Segments of segments (issue "regressions", scenario 7): a segment built on three levels of
other segments is evaluated in time proportional to its own condition, because it reads its
parents' stored memberships instead of inlining their conditions (Mautic's bug).

On the reference world (100,000 contacts by default), as of its end: the base segment (four
costly conditions over events, any of them), three levels each adding one trait condition to the
level below, and, for contrast, the third level written the naive way, with every parent's
condition inlined. Each is evaluated for the whole population and stored
(`Engine.evaluate_segment`), best of 3 after a warm-up.

Command line::

    python -m bench.nested_segments [--contacts N] [--backend sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.segments import REFERENCE
from bench.world_db import world_info
from nurture.clock import SimulatedClock
from nurture.core import Nurture
from nurture.settings import Settings

OWN = [
    {"trait": "plan", "exists": True},
    {"not": {"trait": "country", "eq": "ZZ"}},
    {"trait": "email", "exists": True},
]


# A costly base: the reference condition, an abandonment sequence, a login trend and a
# revenue aggregate, any of them.
BASE = {
    "any": [
        REFERENCE,
        {
            "sequence": [
                {"event": "Product Added"},
                {"not_event": "Order Completed", "within": "1h"},
            ],
            "within_last": "7d",
        },
        {"trend": "count", "event": "Logged In", "period": "14d", "below": 0.5},
        {"aggregate": "sum", "of": "total", "event": "Order Completed", "gt": 200},
    ]
}


def definitions() -> list[dict[str, Any]]:
    """The base, three levels on it, and the third level with its parents inlined."""
    levels = [{"key": "base", "where": BASE}]
    for i, own in enumerate(OWN, start=1):
        parent = levels[-1]["key"]
        levels.append({"key": f"level{i}", "where": {"all": [{"segment": parent}, own]}})
    inlined = {"key": "level3_inlined", "where": {"all": [BASE, *OWN]}}
    return [*levels, inlined]


def best_of(nurture: Nurture, key: str, runs: int = 3) -> tuple[float, int]:
    nurture.engine.evaluate_segment(key)  # warm-up (and the first entries)
    times = []
    members = 0
    for _ in range(runs):
        started = time.perf_counter()
        result = nurture.engine.evaluate_segment(key)
        times.append(time.perf_counter() - started)
        members = result.members
    return min(times), members


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args(argv)
    world = world_info(args.backend, args.contacts, None)
    settings = Settings.model_validate(
        {**dict(Settings.model_construct()), "database_url": world.url}
    )
    clock = SimulatedClock(world.end)
    with Nurture(settings, clock=clock) as nurture:
        for definition in definitions():
            nurture.segments.save(definition, evaluate=False)
        table = Table(title=f"Segments of segments, {args.contacts:,} contacts ({args.backend})")
        for column in ("segment", "reads", "members", "seconds", "vs base"):
            table.add_column(column, justify="right" if column != "segment" else "left")
        base_time = None
        for definition in definitions():
            key = definition["key"]
            seconds, members = best_of(nurture, key)
            base_time = base_time or seconds
            reads = "events" if key in ("base", "level3_inlined") else "memberships + 1 trait"
            table.add_row(
                key, reads, f"{members:,}", f"{seconds:.3f}", f"{seconds / base_time:.2f}"
            )
        for definition in reversed(definitions()):  # children before their parents
            nurture.segments.delete(definition["key"])
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
