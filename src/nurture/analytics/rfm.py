"""The RFM report: every purchaser's recency, frequency and monetary scores and the named
RFM segments they fall in, with counts, revenue and average CLV (docs/analytics/clv.md).

Scores are those of an `rfm` computed trait on the `clv` setting's purchase event and
revenue property (conditions/computed.py: quintile bounds over every live purchaser as
of now, 1 to 5, ties share the lower score), so a segment built on `rfm` agrees with
this report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from nurture.analytics.clv_config import ClvConfig
from nurture.analytics.report import Chart, Column, Report, Table
from nurture.clock import Clock
from nurture.conditions.compile import SqlCompiler
from nurture.conditions.computed import Rfm, RfmBounds, compute_state
from nurture.conditions.env import Env
from nurture.conditions.sqlvalues import NumberExpr
from nurture.store import Database
from nurture.store import tables as t


@dataclass(frozen=True)
class RfmSegment:
    """A named segment: the recency and frequency scores it takes (inclusive ranges).
    Rules are tried in order; the first that holds names the customer."""

    name: str
    recency: tuple[int, int]
    frequency: tuple[int, int]
    meaning: str

    def holds(self, r: int, f: int) -> bool:
        return self.recency[0] <= r <= self.recency[1] and (
            self.frequency[0] <= f <= self.frequency[1]
        )

    @property
    def rule(self) -> str:
        return f"R {_span(self.recency)}, F {_span(self.frequency)}"


def _span(bounds: tuple[int, int]) -> str:
    low, high = bounds
    return str(low) if low == high else f"{low}-{high}"


# Together they cover all 25 (R, F) cells; the docs table is this list.
SEGMENTS = (
    RfmSegment("Champions", (4, 5), (4, 5), "bought recently and often"),
    RfmSegment("Loyal customers", (3, 5), (3, 5), "buy often, fairly recently"),
    RfmSegment("New customers", (5, 5), (1, 1), "first purchase very recently"),
    RfmSegment("Potential loyalists", (4, 5), (1, 2), "recent, not yet frequent"),
    RfmSegment("Can't lose them", (1, 1), (4, 5), "bought often, but long ago"),
    RfmSegment("At risk", (1, 2), (3, 5), "bought fairly often, not lately"),
    RfmSegment("Hibernating", (2, 3), (1, 2), "few purchases, a while ago"),
    RfmSegment("Lost", (1, 1), (1, 2), "few purchases, long ago"),
)


def segment_of(r: int, f: int) -> str:
    """The name of the first segment whose rule holds for scores (r, f)."""
    for segment in SEGMENTS:
        if segment.holds(r, f):
            return segment.name
    raise ValueError(f"no RFM segment for R {r}, F {f}")  # the rules cover every cell


@dataclass
class Scored:
    contact_id: int
    r: int
    f: int
    m: int
    purchases: int
    revenue: float
    clv: float | None


def score_purchasers(
    conn: Connection, config: ClvConfig, now: datetime, model: str = "default"
) -> tuple[list[Scored], RfmBounds | None]:
    """Every live purchaser's (R, F, M) as of `now`, their purchases and revenue, and
    their expected value under the stored CLV model `model` (None without one)."""
    trait = Rfm(
        key="rfm_report", kind="rfm", event=config.purchase_event, of=config.revenue, part="score"
    )
    env = Env(now=now, computed={trait.key: trait})
    state = compute_state(conn, trait, env)
    bounds = RfmBounds.from_state(state, trait.key)
    if bounds is None:
        return [], None
    env = Env(now=now, computed={trait.key: trait}, computed_state={trait.key: state})
    compiler = SqlCompiler(env, conn.dialect.name)
    c, p = t.contacts.c, t.clv_predictions.c
    value = trait.sql_value(compiler)
    assert isinstance(value, NumberExpr)  # an rfm score is an integer expression
    scores = (
        select(c.id.label("contact_id"), value.expr.label("score"))
        .where(c.merged_into.is_(None))
        .subquery()
    )
    e = t.events.alias("e")
    b = compiler.b
    totals = (
        select(
            e.c.contact_id,
            func.count().label("purchases"),
            b.sum(b.json(e.c.properties, config.revenue).number_value()).label("revenue"),
        )
        .where(*compiler.event_match(e, config.purchase_event, "track", [], None))
        .group_by(e.c.contact_id)
        .subquery()
    )
    query = (
        select(
            scores.c.contact_id,
            scores.c.score,
            totals.c.purchases,
            totals.c.revenue,
            p.expected_value,
        )
        .join(totals, totals.c.contact_id == scores.c.contact_id)
        .outerjoin(
            t.clv_predictions,
            (p.contact_id == scores.c.contact_id) & (p.model == model),
        )
        .where(scores.c.score.is_not(None))
        .order_by(scores.c.contact_id)
    )
    out = []
    for row in conn.execute(query):
        score = int(row.score)
        out.append(
            Scored(
                contact_id=row.contact_id,
                r=score // 100,
                f=score // 10 % 10,
                m=score % 10,
                purchases=int(row.purchases),
                revenue=float(row.revenue or 0.0),
                clv=None if row.expected_value is None else float(row.expected_value),
            )
        )
    return out, bounds


def rfm_report(db: Database, clock: Clock, config: ClvConfig, model: str = "default") -> Report:
    """Named RFM segments with counts, share, revenue and average CLV, and purchasers by
    recency and frequency score."""
    now = clock.now()
    with db.read() as conn:
        scored, bounds = score_purchasers(conn, config, now, model)
    n = len(scored)
    revenue = sum(s.revenue for s in scored)
    report = Report(
        kind="rfm",
        title="RFM segments",
        params={"model": model, "as_of": now},
        summary={
            "as_of": now,
            "purchase_event": config.purchase_event,
            "revenue_property": config.revenue,
            "purchasers": n,
            "revenue": revenue,
            "recency_bounds_days": list(bounds.recency_days) if bounds else None,
            "frequency_bounds": list(bounds.frequency) if bounds else None,
            "monetary_bounds": [c / 100 for c in bounds.monetary_cents] if bounds else None,
        },
    )
    rows = []
    for segment in SEGMENTS:
        members = [s for s in scored if segment_of(s.r, s.f) == segment.name]
        values = [s.clv for s in members if s.clv is not None]
        spent = sum(s.revenue for s in members)
        rows.append(
            {
                "segment": segment.name,
                "rule": segment.rule,
                "customers": len(members),
                "share": len(members) / n if n else None,
                "revenue": spent,
                "revenue_share": spent / revenue if revenue else None,
                "revenue_per_customer": spent / len(members) if members else None,
                "average_clv": sum(values) / len(values) if values else None,
                "with_clv": len(values),
            }
        )
    report.tables.append(
        Table(
            "segments",
            "RFM segments",
            [
                Column("segment", "Segment"),
                Column("rule", "Rule"),
                Column("customers", "Customers", "int"),
                Column("share", "Share", "percent"),
                Column("revenue", "Revenue", "money"),
                Column("revenue_share", "Share of revenue", "percent"),
                Column("revenue_per_customer", "Revenue per customer", "money"),
                Column("average_clv", "Average CLV", "money"),
                Column("with_clv", "With a CLV", "int"),
            ],
            rows,
        )
    )
    report.tables.append(_grid(scored))
    report.charts.append(
        Chart("bar", "segments", "segment", ("customers",), "Customers by RFM segment")
    )
    report.charts.append(
        Chart(
            "heatmap",
            "grid",
            "recency",
            tuple(f"f{k}" for k in range(1, 6)),
            "Purchasers by R and F score",
        )
    )
    if not scored:
        report.notes.append(f"No purchases ({config.purchase_event!r} events) yet.")
    if scored and not any(s.clv is not None for s in scored):
        report.notes.append(f"No CLV model {model!r} fitted yet: average CLV is missing.")
    return report


def _grid(scored: list[Scored]) -> Table:
    """Purchasers by recency score (rows, 5 first) and frequency score (columns)."""
    counts = {(r, f): 0 for r in range(1, 6) for f in range(1, 6)}
    for s in scored:
        counts[(s.r, s.f)] += 1
    rows: list[dict[str, Any]] = [
        {"recency": f"R{r}", **{f"f{f}": counts[(r, f)] for f in range(1, 6)}}
        for r in range(5, 0, -1)
    ]
    return Table(
        "grid",
        "Purchasers by recency (R) and frequency (F) score",
        [Column("recency", "Recency"), *(Column(f"f{f}", f"F{f}", "int") for f in range(1, 6))],
        rows,
    )
