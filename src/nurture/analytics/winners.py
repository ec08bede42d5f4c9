"""Automatic winners of split steps: decided once, recorded with their statistics.

The journey runtime asks `SplitWinners` when a split step with a `winner:` block runs
(`nurture.journeys.interpreter.split`). Once every path has `min_sample` contacts and the
best path's rate beats every other path's significantly (Holm-adjusted two-proportion
z-tests), the decision is inserted into `experiment_winners`, and every new contact goes
down the winner's path from then on. docs/analytics/experiments.md has the rule.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from nurture.analytics.experiments import Arm, recorded_winner, split_arms
from nurture.journeys import interpreter as ip
from nurture.journeys.model import Journey, SplitStep, SplitWinner
from nurture.store import tables as t
from nurture.store.bulk import insert_rows


def judge(
    step: SplitStep, rule: SplitWinner, arms: dict[str, Arm]
) -> tuple[str, dict[str, Any]] | None:
    """The winning path and the statistics of the decision, or None while undecided:
    every path has `min_sample` contacts, and the best rate beats every other path with
    a Holm-adjusted p-value below 1 - confidence."""
    from nurture.analytics import stats

    paths = [arms.get(p.name, Arm(p.name)) for p in step.paths]
    if any(a.recipients < rule.min_sample for a in paths):
        return None
    ranked = sorted(paths, key=lambda a: a.rate or 0.0, reverse=True)
    best = ranked[0]
    if (ranked[1].rate or 0.0) >= (best.rate or 0.0):
        return None  # a tie for best: nothing to decide
    tests = [
        stats.compare_proportions(
            a.conversions, a.recipients, best.conversions, best.recipients, rule.confidence
        )
        for a in ranked[1:]
    ]
    adjusted = stats.holm([r.p_value for r in tests])
    if not all(p is not None and p < 1 - rule.confidence for p in adjusted):
        return None
    statistics = {
        "metric": rule.metric,
        "confidence": rule.confidence,
        "min_sample": rule.min_sample,
        "method": "two-proportion z-test (pooled, two-sided), Holm-adjusted; Newcombe interval",
        "arms": [
            {"path": a.name, "recipients": a.recipients, "conversions": a.conversions,
             "rate": a.rate}
            for a in paths
        ],
        "comparisons": [
            {"against": a.name, "diff": r.diff, "diff_low": r.diff_low,
             "diff_high": r.diff_high, "p_value": r.p_value, "p_adjusted": p}
            for a, r, p in zip(ranked[1:], tests, adjusted, strict=True)
        ],
    }  # fmt: skip
    return best.name, statistics


class SplitWinners:
    """What the journey runtime asks when a split step with a `winner:` block runs.

    A decided winner is kept for good (a decision is never taken back); while undecided,
    a process looks at the figures again at most every `check_every` of the step. The
    check runs in the transaction that runs the step; the decision is inserted with the
    table's primary key as arbiter, so when workers decide at once the first writer
    wins and everyone reads that row back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decided: dict[tuple[str, int, str], str] = {}
        self._checked: dict[tuple[str, int, str], datetime] = {}

    def bind(self, conn: Connection, now: datetime) -> ip.Winners:
        """The `winners` callable for steps run in this transaction at `now`."""

        def winner(journey: Journey, version: int, step: SplitStep) -> str | None:
            assert step.winner is not None
            key = (journey.key, version, step.id)
            with self._lock:
                if key in self._decided:
                    return self._decided[key]
                last = self._checked.get(key)
            if last is not None and now - last < step.winner.check_every:
                return None
            name = self.decide(conn, journey, version, step, now)
            with self._lock:
                self._checked[key] = now
                if name is not None:
                    self._decided[key] = name
            return name

        return winner

    @staticmethod
    def decide(
        conn: Connection, journey: Journey, version: int, step: SplitStep, now: datetime
    ) -> str | None:
        """The recorded winner, or a new decision recorded now, or None."""
        assert step.winner is not None
        recorded = recorded_winner(conn, journey.key, step.id, version)
        if recorded is not None:
            return str(recorded["winner"])
        arms = split_arms(conn, journey.key, step.id, step.winner.metric, version=version)
        decision = judge(step, step.winner, arms)
        if decision is None:
            return None
        name, statistics = decision
        row = {
            "journey_key": journey.key,
            "version": version,
            "step": step.id,
            "winner": name,
            "decided_at": now,
            "statistics": statistics,
        }
        insert_rows(conn, t.experiment_winners, [row], ignore_conflicts=True)
        recorded = recorded_winner(conn, journey.key, step.id, version)
        assert recorded is not None
        return str(recorded["winner"])
