# ruff: noqa: RUF001, RUF003  (the papers' notation: α, γ, ν, λ, ×)
"""The CLV report: a stored model's parameters and fit, how P(alive) and expected value
are spread over its customers, and the customers worth most (docs/analytics/clv.md)."""

from __future__ import annotations

from typing import Any

import numpy as np

from nurture.analytics.clv_store import ClvService
from nurture.analytics.report import Chart, Column, Report, Table

MEANINGS = {
    "r": ("BG/NBD", "shape of the purchase rate's Gamma distribution"),
    "alpha": ("BG/NBD", "rate (scale) of the purchase rate's Gamma distribution, per unit"),
    "a": ("BG/NBD", "Beta(a, b) of the dropout probability after a purchase"),
    "b": ("BG/NBD", "Beta(a, b) of the dropout probability after a purchase"),
    "p": ("Gamma-Gamma", "shape of the spend per purchase's Gamma distribution"),
    "q": ("Gamma-Gamma", "shape of the Gamma distribution of the spend's rate ν"),
    "gamma": ("Gamma-Gamma", "rate of the Gamma distribution of the spend's rate ν"),
}


def clv_report(service: ClvService, model: str = "default", *, top: int = 20) -> Report:
    """The report of the stored model `model` (NotFound before its first fit)."""
    stored = service.model(model)
    fit = stored["fit"]
    parameters = {
        **stored["parameters"]["bgnbd"],
        **(stored["parameters"].get("gamma_gamma") or {}),
    }
    ids, alive, value = service.distribution(model)
    best = service.top_customers(model, top)
    unit = fit["unit"]
    report = Report(
        kind="clv",
        title=f"Customer lifetime value: model {model}",
        params={"model": model, "top": top},
        summary={
            "model": model,
            "fitted_at": stored["fitted_at"],
            "calibration_end": fit["calibration_end"],
            "horizon": f"{fit['horizon']:g} {unit}",
            "customers": stored["customers"],
            "log_likelihood": stored["log_likelihood"],
            "mean_p_alive": float(alive.mean()) if alive.size else None,
            "mean_spend": fit.get("mean_spend"),
            "total_expected_value": float(np.nansum(value)) if np.isfinite(value).any() else None,
            **parameters,
        },
    )
    report.tables.append(_parameters(parameters))
    report.tables.append(_fits(fit, stored["customers"]))
    report.tables.append(_alive_histogram(alive, value))
    report.tables.append(_value_deciles(ids, value))
    report.tables.append(_top(best))
    report.charts.append(
        Chart("bar", "p_alive", "bucket", ("customers",), "Customers by P(alive)", "customers")
    )
    if fit.get("gamma_gamma", {}).get("skipped"):
        report.notes.append(
            f"No spend model: {fit['gamma_gamma']['skipped']}; expected values are missing."
        )
    report.notes.append(
        f"Expected purchases and value look {fit['horizon']:g} {unit} past the calibration "
        f"end {fit['calibration_end']}; expected value = expected purchases × expected "
        "spend per purchase"
        + (" (discounted)." if stored["settings"].get("discount_rate") else ".")
    )
    return report


def _parameters(parameters: dict[str, float]) -> Table:
    rows = [
        {
            "parameter": name,
            "model": MEANINGS[name][0],
            "value": value,
            "meaning": MEANINGS[name][1],
        }
        for name, value in parameters.items()
    ]
    return Table(
        "parameters",
        "Fitted parameters",
        [
            Column("parameter", "Parameter"),
            Column("model", "Model"),
            Column("value", "Value", "number"),
            Column("meaning", "Meaning"),
        ],
        rows,
    )


def _fits(fit: dict[str, Any], customers: int) -> Table:
    rows: list[dict[str, Any]] = []
    for name, title in (("bgnbd", "BG/NBD"), ("gamma_gamma", "Gamma-Gamma")):
        stats = fit.get(name) or {}
        if "skipped" in stats:
            rows.append({"model": title, "message": f"not fitted: {stats['skipped']}"})
            continue
        rows.append({"model": title, **{k: stats.get(k) for k in _FIT_KEYS}})
    return Table(
        "fit",
        f"Maximum-likelihood fits ({customers:,} customers)",
        [
            Column("model", "Model"),
            Column("customers", "Customers", "int"),
            Column("distinct_rows", "Distinct rows", "int"),
            Column("log_likelihood", "Log-likelihood", "number"),
            Column("iterations", "Iterations", "int"),
            Column("evaluations", "Evaluations", "int"),
            Column("converged", "Converged"),
            Column("message", "Optimizer"),
        ],
        rows,
    )


_FIT_KEYS = (
    "customers",
    "distinct_rows",
    "log_likelihood",
    "iterations",
    "evaluations",
    "converged",
    "message",
)


def _alive_histogram(alive: np.ndarray, value: np.ndarray) -> Table:
    """Customers by P(alive) in ten buckets [0, 0.1), ..., [0.9, 1]."""
    bucket = np.minimum((alive * 10).astype(np.int64), 9) if alive.size else alive.astype(int)
    n = max(alive.size, 1)
    rows = []
    for k in range(10):
        inside = bucket == k
        count = int(inside.sum())
        values = value[inside]
        rows.append(
            {
                "bucket": f"{k / 10:.1f}–{(k + 1) / 10:.1f}",
                "customers": count,
                "share": count / n,
                "expected_value": float(np.nansum(values)) if count else 0.0,
                "mean_expected_value": float(np.nanmean(values))
                if count and np.isfinite(values).any()
                else None,
            }
        )
    return Table(
        "p_alive",
        "Customers by probability alive",
        [
            Column("bucket", "P(alive)"),
            Column("customers", "Customers", "int"),
            Column("share", "Share", "percent"),
            Column("expected_value", "Expected value", "money"),
            Column("mean_expected_value", "Mean expected value", "money"),
        ],
        rows,
    )


def _value_deciles(ids: np.ndarray, value: np.ndarray) -> Table:
    """Customers ranked by expected value (highest first, then contact id), cut into ten
    groups of equal size: decile k holds ranks ⌊(k-1)N/10⌋ + 1 to ⌊kN/10⌋."""
    known = np.isfinite(value)
    ids, value = ids[known], value[known]
    order = np.lexsort((ids, -value))
    ranked = value[order]
    n = ranked.size
    total = float(ranked.sum()) if n else 0.0
    rows = []
    for k in range(1, 11):
        part = ranked[(k - 1) * n // 10 : k * n // 10]
        rows.append(
            {
                "decile": k,
                "customers": int(part.size),
                "min": float(part.min()) if part.size else None,
                "max": float(part.max()) if part.size else None,
                "mean": float(part.mean()) if part.size else None,
                "total": float(part.sum()),
                "share": float(part.sum()) / total if total else None,
            }
        )
    return Table(
        "value_deciles",
        "Expected value by decile (1: the most valuable tenth)",
        [
            Column("decile", "Decile", "int"),
            Column("customers", "Customers", "int"),
            Column("min", "Lowest", "money"),
            Column("max", "Highest", "money"),
            Column("mean", "Mean", "money"),
            Column("total", "Total", "money"),
            Column("share", "Share of value", "percent"),
        ],
        rows,
    )


def _top(rows: list[dict[str, Any]]) -> Table:
    return Table(
        "top_customers",
        "Top customers by expected value",
        [
            Column("contact_id", "Contact", "int"),
            Column("user_id", "User id"),
            Column("email", "Email"),
            Column("x", "Repeat purchases", "int"),
            Column("t_x", "t_x", "number"),
            Column("T", "T", "number"),
            Column("monetary", "Mean repeat spend", "money"),
            Column("p_alive", "P(alive)", "percent"),
            Column("expected_purchases", "Expected purchases", "number"),
            Column("expected_spend", "Expected spend", "money"),
            Column("expected_value", "Expected value", "money"),
        ],
        rows,
    )
