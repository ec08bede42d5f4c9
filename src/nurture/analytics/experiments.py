"""A/B tests and holdouts: per arm rates with the test's statistics, never a bare winner.

Three uses, on the same counts:

- the experiment report of a split step (arms: its paths, read from `journey_steps`
  outcomes `path:NAME`) or of a send step's variants (arms: `outbox.variant`);
- the lift report of a journey's holdout (`enrolments.control`);
- the counts behind a split step's automatic winner (`nurture.analytics.winners`).

The unit is the contact: a contact counts once per arm however often they entered, and
converts when any of their enrolments through the arm converted after the assignment.
docs/analytics/experiments.md defines every number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    case,
    exists,
    func,
    literal,
    select,
)

from nurture.analytics.report import Chart, Column, Report, Table
from nurture.errors import ValidationError
from nurture.journeys.model import SendStep, SplitStep
from nurture.messages.feedback import by_machine
from nurture.store import tables as t

if TYPE_CHECKING:
    from nurture.core import Nurture

# `nurture.analytics.stats` loads SciPy (seconds on a busy machine): the journey runtime
# imports this module, so the functions that compute import it when they first run.

Metric = Literal["converted", "opened", "clicked"]
METRICS: tuple[Metric, ...] = ("converted", "opened", "clicked")
# A click proves an open (images blocked hide opens): a human click counts as opened.
FEEDBACK_TYPES: dict[str, tuple[str, ...]] = {
    "opened": ("opened", "clicked"),
    "clicked": ("clicked",),
}
PATH_PREFIX = "path:"


@dataclass(frozen=True, slots=True)
class Arm:
    """One arm's counts: contacts, contacts who converted (or opened, clicked), and the
    sum and sum of squares of revenue per contact."""

    name: str
    recipients: int = 0
    conversions: int = 0
    revenue: float = 0.0
    revenue_squares: float = 0.0

    @property
    def rate(self) -> float | None:
        return self.conversions / self.recipients if self.recipients else None

    @property
    def revenue_per_recipient(self) -> float | None:
        return self.revenue / self.recipients if self.recipients else None


# -- counting ------------------------------------------------------------------------------
def _human(types: tuple[str, ...]) -> ColumnElement[bool]:
    f = t.message_feedback.c
    return and_(f.type.in_(types), by_machine(f.payload).is_(False))


def split_arms(
    conn: Connection,
    journey_key: str,
    step: str,
    metric: Metric,
    *,
    version: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Arm]:
    """The arms of a split step: contacts by the path drawn for them (`path:NAME`; a
    decided winner's `winner:NAME` does not count), assigned in [start, end)."""
    s, e = t.journey_steps.c, t.enrolments.c
    arm = func.substr(s.outcome, len(PATH_PREFIX) + 1)
    after = e.converted_at >= s.executed_at
    source: Any = t.journey_steps.join(t.enrolments, e.id == s.enrolment_id)
    if metric == "converted":
        hit: ColumnElement[Any] = case((after, 1), else_=0)
    else:
        # Per enrolment, the newest of its messages a person opened (clicked): one was
        # after the split exactly when the newest was.
        o, f = t.outbox.c, t.message_feedback.c
        seen = (
            select(o.enrolment_id, func.max(o.created_at).label("last"))
            .select_from(t.outbox.join(t.message_feedback, f.outbox_id == o.id))
            .where(o.journey_key == journey_key, _human(FEEDBACK_TYPES[metric]))
            .group_by(o.enrolment_id)
            .subquery()
        )
        source = source.outerjoin(seen, seen.c.enrolment_id == s.enrolment_id)
        hit = case((seen.c.last >= s.executed_at, 1), else_=0)
    where = [s.journey_key == journey_key, s.step == step, s.outcome.like(f"{PATH_PREFIX}%")]
    where += _window(s.executed_at, version, s.version, start, end)
    per_contact = (
        select(
            arm.label("arm"),
            func.max(hit).label("hit"),
            func.sum(case((after, func.coalesce(e.revenue, 0.0)), else_=0.0)).label("revenue"),
        )
        .select_from(source)
        .where(*where)
        .group_by(arm, s.contact_id)
        .subquery()
    )
    return _arms(conn, per_contact)


def variant_arms(
    conn: Connection,
    journey_key: str,
    step: str,
    metric: Metric,
    *,
    version: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Arm]:
    """The arms of a send step's variants: contacts by the variant of the message written
    for them (any status: who was assigned, not who was reached), written in [start, end)."""
    o, e = t.outbox.c, t.enrolments.c
    after = e.converted_at >= o.created_at
    if metric == "converted":
        hit: ColumnElement[Any] = case((after, 1), else_=0)
    else:
        f = t.message_feedback.c
        seen = exists(select(literal(1)).where(f.outbox_id == o.id, _human(FEEDBACK_TYPES[metric])))
        hit = case((seen, 1), else_=0)
    where = [o.journey_key == journey_key, o.step == step, o.variant.is_not(None)]
    where += _window(o.created_at, version, o.version, start, end)
    per_contact = (
        select(
            o.variant.label("arm"),
            func.max(hit).label("hit"),
            func.sum(case((after, func.coalesce(e.revenue, 0.0)), else_=0.0)).label("revenue"),
        )
        .select_from(t.outbox.outerjoin(t.enrolments, e.id == o.enrolment_id))
        .where(*where)
        .group_by(o.variant, o.contact_id)
        .subquery()
    )
    return _arms(conn, per_contact)


def holdout_arms(
    conn: Connection,
    journey_key: str,
    *,
    version: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Arm]:
    """`treated` and `control` contacts of a journey, entered in [start, end): converted
    when any of their enrolments reached the goal (within its window)."""
    e = t.enrolments.c
    arm = case((e.control, "control"), else_="treated")
    where = [e.journey_key == journey_key, *_window(e.entered_at, version, e.version, start, end)]
    per_contact = (
        select(
            arm.label("arm"),
            func.max(case((e.converted_at.is_not(None), 1), else_=0)).label("hit"),
            func.sum(func.coalesce(e.revenue, 0.0)).label("revenue"),
        )
        .where(*where)
        .group_by(arm, e.contact_id)
        .subquery()
    )
    return _arms(conn, per_contact)


def _window(
    at: Any, version: int | None, version_column: Any, start: datetime | None, end: datetime | None
) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if version is not None:
        out.append(version_column == version)
    if start is not None:
        out.append(at >= start)
    if end is not None:
        out.append(at < end)
    return out


def _arms(conn: Connection, per_contact: Any) -> dict[str, Arm]:
    c = per_contact.c
    rows = conn.execute(
        select(
            c.arm,
            func.count(),
            func.sum(c.hit),
            func.sum(c.revenue),
            func.sum(c.revenue * c.revenue),
        ).group_by(c.arm)
    )
    return {
        str(name): Arm(str(name), int(n), int(hits or 0), float(rev or 0), float(sq or 0))
        for name, n, hits, rev, sq in rows
    }


# -- the experiment report -------------------------------------------------------------------
def percent(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def check_confidence(confidence: float) -> float:
    if not 0.5 <= confidence <= 0.999:
        raise ValidationError("expected a confidence between 0.5 and 0.999", path="confidence")
    return confidence


def check_window(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and start >= end:
        raise ValidationError("`to` must be after `from`", path="to")


def experiment_report(
    nurture: Nurture,
    journey_key: str,
    step_id: str,
    *,
    metric: Metric | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    confidence: float = 0.95,
    control: str | None = None,
    version: int | None = None,
) -> Report:
    """Per arm of a split step or of a send step's variants: recipients, conversions,
    rate, and against the control its difference, intervals, p-value, relative lift,
    the sample still needed, and revenue per recipient."""
    check_confidence(confidence)
    check_window(start, end)
    journey = nurture.journeys.definition(journey_key, version)
    step = journey.by_id.get(step_id)
    if isinstance(step, SplitStep):
        names, kind = [p.name for p in step.paths], "split"
    elif isinstance(step, SendStep) and step.variants:
        names, kind = [v.name for v in step.variants], "variants"
    else:
        raise ValidationError(
            f"{step_id!r} is not a split step or a send step with variants in journey "
            f"{journey_key!r} (version {version or 'newest'})",
            path="step",
        )
    if metric is None:
        metric = step.winner.metric if isinstance(step, SplitStep) and step.winner else "converted"
    if metric not in METRICS:
        raise ValidationError(f"expected one of {', '.join(METRICS)}", path="metric")
    if metric == "converted" and journey.goal is None:
        raise ValidationError(
            "the journey has no goal, so nothing converts: choose metric opened or clicked",
            path="metric",
        )
    count = split_arms if kind == "split" else variant_arms
    with nurture.db.read() as conn:
        found = count(conn, journey_key, step_id, metric, version=version, start=start, end=end)
        decision = recorded_winner(conn, journey_key, step_id, version)
        forced = _winner_runs(conn, journey_key, step_id, version) if kind == "split" else 0
    # Arms in the definition's order, then any the data has that it no longer names.
    names += sorted(set(found) - set(names))
    arms = [found.get(name, Arm(name)) for name in names]
    control = control or names[0]
    if control not in names:
        raise ValidationError(f"no arm {control!r}: arms are {', '.join(names)}", path="control")
    params = {
        "journey": journey_key,
        "step": step_id,
        "metric": metric,
        "from": start,
        "to": end,
        "confidence": confidence,
        "control": control,
        "version": version,
    }
    report = Report(
        "experiment",
        f"Experiment {journey_key} / {step_id} ({metric})",
        params,
    )
    table, verdict = _variants_table(arms, control, metric, confidence)
    report.tables.append(table)
    compared = len(arms) - 1
    report.summary = {
        "kind": "split paths" if kind == "split" else "message variants",
        "metric": metric,
        "control": control,
        "recipients": sum(a.recipients for a in arms),
        "result": verdict,
        "adjustment": f"Holm over {compared} comparisons" if compared > 1 else "none",
    }
    if decision is not None:
        report.summary["winner"] = decision["winner"]
        report.summary["winner_decided_at"] = decision["decided_at"]
        report.summary["sent_down_the_winner_since"] = forced
    report.charts.append(
        Chart("bar", "variants", "variant", ("rate",), f"{metric} rate per variant", "rate")
    )
    report.notes += _notes(confidence, compared, kind)
    return report


def _variants_table(
    arms: Sequence[Arm], control: str, metric: str, confidence: float
) -> tuple[Table, str]:
    from nurture.analytics import stats

    level = percent(confidence)
    base = next(a for a in arms if a.name == control)
    others = [a for a in arms if a.name != control]
    tests = {
        a.name: stats.compare_proportions(
            base.conversions, base.recipients, a.conversions, a.recipients, confidence
        )
        for a in others
    }
    money = {
        a.name: stats.compare_means(
            base.recipients, base.revenue, base.revenue_squares,
            a.recipients, a.revenue, a.revenue_squares, confidence,
        )
        for a in others
    }  # fmt: skip
    adjusted = dict(zip(tests, stats.holm([r.p_value for r in tests.values()]), strict=True))
    rows: list[dict[str, Any]] = []
    winners: list[str] = []
    for arm in arms:
        interval = stats.wilson(arm.conversions, arm.recipients, confidence)
        row: dict[str, Any] = {
            "variant": arm.name,
            "recipients": arm.recipients,
            "conversions": arm.conversions,
            "rate": arm.rate,
            "rate_low": interval[0] if interval else None,
            "rate_high": interval[1] if interval else None,
            "revenue_per_recipient": arm.revenue_per_recipient,
        }
        if arm.name == control:
            row["verdict"] = "control"
        else:
            test, means, p_adj = tests[arm.name], money[arm.name], adjusted[arm.name]
            significant = p_adj is not None and p_adj < 1 - confidence
            if significant:
                assert test.diff is not None
                side = "higher" if test.diff > 0 else "lower"
                row["verdict"] = f"significant at {level}: {side}"
                winners.append(f"{arm.name} {side} than {control}")
            else:
                row["verdict"] = "not yet"
            row.update(
                diff=test.diff,
                diff_low=test.diff_low,
                diff_high=test.diff_high,
                p_value=test.p_value,
                p_adjusted=p_adj,
                lift=test.lift,
                lift_low=test.lift_low,
                lift_high=test.lift_high,
                sample_per_arm=test.sample_per_arm,
                more_needed=test.more_needed,
                revenue_diff=means.diff,
                revenue_diff_low=means.diff_low,
                revenue_diff_high=means.diff_high,
                revenue_p_value=means.p_value,
                why=" ".join(f"{r}." for r in test.reasons) or None,
            )
        rows.append(row)
    columns = [
        Column("variant", "variant"),
        Column("recipients", "recipients", "int"),
        Column("conversions", metric, "int"),
        Column("rate", "rate", "percent"),
        Column("rate_low", f"rate {level} low", "percent"),
        Column("rate_high", f"rate {level} high", "percent"),
        Column("diff", f"diff vs {control}", "percent"),
        Column("diff_low", f"diff {level} low", "percent"),
        Column("diff_high", f"diff {level} high", "percent"),
        Column("p_value", "p-value", "number"),
        Column("p_adjusted", "p (Holm)", "number"),
        Column("verdict", "verdict"),
        Column("lift", "relative lift", "percent"),
        Column("lift_low", f"lift {level} low", "percent"),
        Column("lift_high", f"lift {level} high", "percent"),
        Column("sample_per_arm", "needed per arm", "int"),
        Column("more_needed", "more per arm", "int"),
        Column("revenue_per_recipient", "revenue / recipient", "money"),
        Column("revenue_diff", f"revenue diff vs {control}", "money"),
        Column("revenue_diff_low", f"revenue diff {level} low", "money"),
        Column("revenue_diff_high", f"revenue diff {level} high", "money"),
        Column("revenue_p_value", "revenue p-value", "number"),
        Column("why", "why some figure is missing"),
    ]
    verdict = "; ".join(f"significant at {level}: {w}" for w in winners) or (
        f"not yet significant at {level}"
    )
    return Table("variants", "Variants", columns, rows), verdict


def _notes(confidence: float, compared: int, kind: str) -> list[str]:
    level = percent(confidence)
    unit = (
        "Recipients: contacts whose path was drawn at random (`path:`); contacts sent down "
        "a decided winner's path are not counted."
        if kind == "split"
        else "Recipients: contacts a message of the variant was written for, sent or not."
    )
    notes = [
        unit,
        "p-value: two-proportion z-test, pooled standard error, two-sided. Difference "
        f"interval: Newcombe hybrid score ({level}). Relative lift interval: log method.",
        "Needed per arm: contacts per arm for 80% power to detect the observed difference "
        f"at alpha {1 - confidence:.3g}, two-sided (Cohen's h, normal approximation).",
        "Revenue per recipient: Welch's t interval of the difference.",
    ]
    if compared > 1:
        notes.append(
            f"{compared} variants are compared with the control: significance uses "
            "Holm-adjusted p-values; the intervals are not adjusted."
        )
    return notes


def recorded_winner(
    conn: Connection, journey_key: str, step: str, version: int | None = None
) -> dict[str, Any] | None:
    """The automatic winner recorded for a split step (the newest version's, unless
    one is named)."""
    w = t.experiment_winners.c
    query = select(t.experiment_winners).where(w.journey_key == journey_key, w.step == step)
    if version is not None:
        query = query.where(w.version == version)
    row = conn.execute(query.order_by(w.version.desc()).limit(1)).first()
    return None if row is None else dict(row._mapping)


def _winner_runs(conn: Connection, journey_key: str, step: str, version: int | None) -> int:
    s = t.journey_steps.c
    query = select(func.count()).where(
        s.journey_key == journey_key, s.step == step, s.outcome.like("winner:%")
    )
    if version is not None:
        query = query.where(s.version == version)
    return int(conn.execute(query).scalar_one())


# -- the holdout lift report -----------------------------------------------------------------
def lift_report(
    nurture: Nurture,
    journey_key: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    confidence: float = 0.95,
    version: int | None = None,
) -> Report:
    """Treated against held-out contacts: conversion rates with the absolute and relative
    lift and their intervals, and revenue per recipient with the difference's interval."""
    from nurture.analytics import stats

    check_confidence(confidence)
    check_window(start, end)
    journey = nurture.journeys.definition(journey_key, version)
    if journey.goal is None:
        raise ValidationError(
            f"journey {journey_key!r} has no goal: nothing converts, there is no lift to measure",
            path="journey",
        )
    with nurture.db.read() as conn:
        found = holdout_arms(conn, journey_key, version=version, start=start, end=end)
    treated, control = found.get("treated", Arm("treated")), found.get("control", Arm("control"))
    if control.recipients == 0 and journey.entry.holdout == 0:
        raise ValidationError(
            f"journey {journey_key!r} holds nobody out (entry.holdout is 0): no lift to "
            "measure; set entry.holdout, e.g. 0.1",
            path="journey",
        )
    level = percent(confidence)
    rates = stats.compare_proportions(
        control.conversions, control.recipients, treated.conversions, treated.recipients,
        confidence,
    )  # fmt: skip
    money = stats.compare_means(
        control.recipients, control.revenue, control.revenue_squares,
        treated.recipients, treated.revenue, treated.revenue_squares, confidence,
    )  # fmt: skip
    arms = Table(
        "arms",
        "Treated and control",
        [
            Column("arm", "arm"),
            Column("contacts", "contacts", "int"),
            Column("conversions", "converted", "int"),
            Column("rate", "rate", "percent"),
            Column("rate_low", f"rate {level} low", "percent"),
            Column("rate_high", f"rate {level} high", "percent"),
            Column("revenue", "revenue", "money"),
            Column("revenue_per_recipient", "revenue / recipient", "money"),
        ],
    )
    for arm in (treated, control):
        interval = stats.wilson(arm.conversions, arm.recipients, confidence)
        arms.rows.append(
            {
                "arm": arm.name,
                "contacts": arm.recipients,
                "conversions": arm.conversions,
                "rate": arm.rate,
                "rate_low": interval[0] if interval else None,
                "rate_high": interval[1] if interval else None,
                "revenue": arm.revenue,
                "revenue_per_recipient": arm.revenue_per_recipient,
            }
        )
    lift = Table(
        "lift",
        "Lift of treated over control",
        [
            Column("measure", "measure"),
            Column("value", "value", "number"),
            Column("low", f"{level} low", "number"),
            Column("high", f"{level} high", "number"),
            Column("p_value", "p-value", "number"),
        ],
        [
            {"measure": "conversion rate difference", "value": rates.diff,
             "low": rates.diff_low, "high": rates.diff_high, "p_value": rates.p_value},
            {"measure": "relative lift", "value": rates.lift,
             "low": rates.lift_low, "high": rates.lift_high, "p_value": rates.p_value},
            {"measure": "revenue per recipient difference", "value": money.diff,
             "low": money.diff_low, "high": money.diff_high, "p_value": money.p_value},
        ],
    )  # fmt: skip
    significant = rates.p_value is not None and rates.p_value < 1 - confidence
    incremental = (
        rates.diff * treated.recipients if rates.diff is not None else None
    )  # conversions the journey caused, by the point estimate
    report = Report(
        "lift",
        f"Holdout lift of {journey_key}",
        {"journey": journey_key, "from": start, "to": end, "confidence": confidence,
         "version": version},
        summary={
            "treated": treated.recipients,
            "control": control.recipients,
            "rate_treated": treated.rate,
            "rate_control": control.rate,
            "absolute_lift": rates.diff,
            "relative_lift": rates.lift,
            "p_value": rates.p_value,
            "result": f"{'' if significant else 'not yet '}significant at {level}",
            "incremental_conversions": incremental,
            "revenue_per_recipient_difference": money.diff,
        },
        tables=[arms, lift],
        charts=[Chart("bar", "arms", "arm", ("rate",), "conversion rate, treated and control")],
        notes=[
            "Contacts entered in the period; treated: messaged, control: held out (never "
            "messaged). Converted: reached the journey's goal within its window.",
            "p-value: two-proportion z-test (pooled, two-sided); difference: Newcombe "
            f"hybrid score interval ({level}); relative lift: log interval of the ratio; "
            "revenue per recipient: Welch's t interval.",
            "Contacts who entered less than the goal's window ago may still convert.",
            *[f"{r}." for r in (*rates.reasons, *money.reasons)],
        ],
    )  # fmt: skip
    return report
