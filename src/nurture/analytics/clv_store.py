# ruff: noqa: RUF002, RUF003  (the papers' notation: α, γ, ν, λ, ×)
"""Customer lifetime value from Nurture's events: the purchase summary in SQL, the fit,
and the stored model and per-contact predictions (`clv_models`, `clv_predictions`).

A purchase is a track event named `clv.purchase_event`; purchases on the same UTC day are
one purchase (their revenue adds up), as in the papers' CDNOW data. Per contact, up to and
including the calibration end day:

- x: purchase days after the first (repeat purchases)
- t_x: days from the first purchase day to the last, in the unit
- T: days from the first purchase day to the calibration end day, in the unit
- monetary: the revenue of the repeat purchase days divided by x (none when x = 0)

Predictions look `clv.horizon` past the calibration end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    case,
    cast,
    delete,
    extract,
    func,
    select,
)

from nurture.analytics.clv import BgNbd, GammaGamma, fit_bgnbd, fit_gamma_gamma
from nurture.analytics.clv_config import ClvConfig
from nurture.clock import Clock
from nurture.conditions.computed import DAY_US
from nurture.conditions.sqlvalues import Backend
from nurture.errors import NotFound, ValidationError
from nurture.store import Database
from nurture.store import tables as t
from nurture.store.bulk import insert_rows, upsert_rows
from nurture.store.types import from_microseconds, to_microseconds

if TYPE_CHECKING:
    from nurture.core import Nurture

DAYS_PER_YEAR = 365.25


@dataclass
class Customers:
    """The purchase summary: one entry per purchasing contact, in contact id order."""

    contact_id: np.ndarray
    x: np.ndarray
    t_x: np.ndarray
    T: np.ndarray
    monetary: np.ndarray  # NaN where x = 0
    calibration_end: date

    def __len__(self) -> int:
        return int(self.contact_id.size)


@dataclass
class Predictions:
    """Per-customer predictions over a horizon (arrays aligned with `Customers`)."""

    p_alive: np.ndarray
    expected_purchases: np.ndarray
    expected_spend: np.ndarray | None
    expected_value: np.ndarray | None


def predict(
    customers: Customers,
    bgnbd: BgNbd,
    spend: GammaGamma | None,
    horizon: float,
    *,
    unit_days: float = 7.0,
    discount_rate: float = 0.0,
) -> Predictions:
    """Expected purchases over `horizon` (in the unit), P(alive), expected spend per
    purchase and the expected value: expected purchases × expected spend, or with an annual
    `discount_rate`, the purchases of each month of the horizon discounted to the
    calibration end ((1 + rate)^-years at the month's end)."""
    x, t_x, T = customers.x, customers.t_x, customers.T
    purchases = bgnbd.expected_purchases(horizon, x, t_x, T)
    alive = bgnbd.p_alive(x, t_x, T)
    if spend is None:
        return Predictions(alive, purchases, None, None)
    # Customers without positive repeat revenue are valued at the population's mean spend.
    own = np.where((x > 0) & (customers.monetary > 0), customers.monetary, np.nan)
    counted = np.where(np.isnan(own), 0.0, x)
    per_purchase = spend.expected_spend(counted, np.nan_to_num(own))
    if discount_rate == 0.0:
        return Predictions(alive, purchases, per_purchase, purchases * per_purchase)
    steps = max(1, round(horizon * unit_days / (DAYS_PER_YEAR / 12)))
    discounted = np.zeros_like(purchases)
    before = np.zeros_like(purchases)
    for k in range(1, steps + 1):
        at = horizon * k / steps
        cumulative = bgnbd.expected_purchases(at, x, t_x, T)
        years = at * unit_days / DAYS_PER_YEAR
        discounted += (cumulative - before) / (1.0 + discount_rate) ** years
        before = cumulative
    return Predictions(alive, purchases, per_purchase, discounted * per_purchase)


def _day(b: Backend, ts: ColumnElement[Any]) -> ColumnElement[Any]:
    """The UTC day of a time, as whole days since 1970-01-01."""
    if b.sqlite:
        return cast(b.ts(ts), BigInteger) // DAY_US
    return cast(func.floor(extract("epoch", ts) / 86400), BigInteger)


def purchase_summary(conn: Connection, config: ClvConfig, until_us: int) -> list[Any]:
    """(contact_id, first day, last day, purchase days, repeat revenue) for every live
    contact with a purchase before `until_us`, all in one aggregate query."""
    b = Backend(conn.dialect.name)
    e, c = t.events.c, t.contacts.c
    revenue = b.json(e.properties, config.revenue).number_value()
    purchases = (
        select(e.contact_id, _day(b, e.timestamp).label("day"), revenue.label("revenue"))
        .join(t.contacts, c.id == e.contact_id)
        .where(
            e.type == "track",
            e.event == config.purchase_event,
            e.timestamp < b.at(until_us),
            c.merged_into.is_(None),
        )
        .subquery()
    )
    daily = (
        select(
            purchases.c.contact_id,
            purchases.c.day,
            b.sum(purchases.c.revenue).label("revenue"),
            func.min(purchases.c.day).over(partition_by=purchases.c.contact_id).label("first_day"),
        )
        .group_by(purchases.c.contact_id, purchases.c.day)
        .subquery()
    )
    repeat = case((daily.c.day > daily.c.first_day, daily.c.revenue), else_=0)
    query = (
        select(
            daily.c.contact_id,
            func.min(daily.c.day),
            func.max(daily.c.day),
            func.count(),
            b.sum(repeat),
        )
        .group_by(daily.c.contact_id)
        .order_by(daily.c.contact_id)
    )
    return list(conn.execute(query))


class ClvService:
    """Fits the CLV models to the purchase events and keeps their predictions."""

    def __init__(self, db: Database, clock: Clock, config: ClvConfig | Any | None) -> None:
        self.db = db
        self.clock = clock
        # Validated again: settings built with model_construct (tests) keep plain dicts.
        self.config = ClvConfig.model_validate(config or {})

    @classmethod
    def of(cls, nurture: Nurture) -> ClvService:
        """The service over a running Nurture, with its `clv` setting."""
        return cls(nurture.db, nurture.clock, nurture.settings.clv)

    def customers(self, conn: Connection) -> Customers:
        """The purchase summary as of the calibration end (setting `clv.calibration_end`,
        or now)."""
        now = self.clock.now()
        now_us = to_microseconds(now)
        today = now_us // DAY_US
        end = self.config.calibration_end
        if end is None:
            end_day, until_us = today, now_us + 1
        else:
            end_day = (end - date(1970, 1, 1)).days
            if end_day > today:
                raise ValidationError(
                    f"the calibration end {end} is after today", path="clv.calibration_end"
                )
            until_us = (end_day + 1) * DAY_US
        rows = purchase_summary(conn, self.config, until_us)
        unit = self.config.unit_days
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        first = np.array([r[1] for r in rows], dtype=np.float64)
        last = np.array([r[2] for r in rows], dtype=np.float64)
        x = np.array([r[3] for r in rows], dtype=np.float64) - 1.0
        repeat_revenue = np.array([float(r[4] or 0.0) for r in rows], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            monetary = np.where(x > 0, repeat_revenue / np.maximum(x, 1.0), np.nan)
        return Customers(
            contact_id=ids,
            x=x,
            t_x=(last - first) / unit,
            T=(end_day - first) / unit,
            monetary=monetary,
            calibration_end=from_microseconds(end_day * DAY_US).date(),
        )

    def fit(self, model: str = "default") -> dict[str, Any]:
        """Fit both models to the purchases, store the model and every purchaser's
        predictions (replacing the last fit's), and return the stored model."""
        _check_key(model)
        config = self.config
        with self.db.read() as conn:
            customers = self.customers(conn)
        bgnbd, bg_stats = fit_bgnbd(customers.x, customers.t_x, customers.T)
        eligible = (customers.x > 0) & (customers.monetary > 0)
        spend: GammaGamma | None = None
        spend_fit: dict[str, Any] = {
            "skipped": "fewer than 2 customers with repeat purchases and revenue"
        }
        if int(eligible.sum()) >= 2:
            spend, gg_stats = fit_gamma_gamma(customers.x[eligible], customers.monetary[eligible])
            spend_fit = gg_stats.to_json()
        horizon = config.horizon_units
        predicted = predict(
            customers,
            bgnbd,
            spend,
            horizon,
            unit_days=config.unit_days,
            discount_rate=config.discount_rate,
        )
        now = self.clock.now()
        record = {
            "key": model,
            "parameters": {
                "bgnbd": bgnbd.to_json(),
                "gamma_gamma": None if spend is None else spend.to_json(),
            },
            "log_likelihood": bg_stats.log_likelihood,
            "customers": len(customers),
            "fit": {
                "bgnbd": bg_stats.to_json(),
                "gamma_gamma": spend_fit,
                "calibration_end": customers.calibration_end.isoformat(),
                "horizon": horizon,
                "unit": config.unit,
                "mean_spend": None if spend is None else spend.mean_spend,
            },
            "settings": config.model_dump(mode="json"),
            "fitted_at": now,
        }
        rows = _prediction_rows(customers, predicted, model, now)
        with self.db.write() as conn:
            p = t.clv_predictions.c
            conn.execute(delete(t.clv_predictions).where(p.model == model))
            for start in range(0, len(rows), 20_000):
                insert_rows(conn, t.clv_predictions, rows[start : start + 20_000])
            upsert_rows(conn, t.clv_models, [record], ["key"])
        return self.model(model)

    def model(self, model: str = "default") -> dict[str, Any]:
        """The stored model; NotFound before its first fit."""
        m = t.clv_models.c
        with self.db.read() as conn:
            row = conn.execute(select(t.clv_models).where(m.key == model)).first()
        if row is None:
            raise NotFound(
                f"no CLV model {model!r} has been fitted yet: fit it first "
                "(POST /api/reports/clv/fit or nurture report clv --fit)",
                path="model",
            )
        return dict(row._mapping)

    def distribution(self, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(contact ids, P(alive), expected value with NaN for none) of every prediction."""
        p = t.clv_predictions.c
        with self.db.read() as conn:
            rows = conn.execute(
                select(p.contact_id, p.p_alive, p.expected_value)
                .where(p.model == model)
                .order_by(p.contact_id)
            ).all()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        alive = np.array([r[1] for r in rows], dtype=np.float64)
        value = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64)
        return ids, alive, value

    def top_customers(self, model: str, limit: int) -> list[dict[str, Any]]:
        """The `limit` predictions of highest expected value (then lowest contact id),
        with the contact's user id and email."""
        if not 0 <= limit <= 1000:
            raise ValidationError("expected a number of top customers from 0 to 1000", path="top")
        p, c = t.clv_predictions.c, t.contacts.c
        with self.db.read() as conn:
            rows = conn.execute(
                select(
                    p.contact_id,
                    c.user_id,
                    c.email,
                    p.x,
                    p.t_x,
                    p["T"],
                    p.monetary,
                    p.p_alive,
                    p.expected_purchases,
                    p.expected_spend,
                    p.expected_value,
                )
                .join(t.contacts, c.id == p.contact_id)
                .where(p.model == model, p.expected_value.is_not(None))
                .order_by(p.expected_value.desc(), p.contact_id)
                .limit(limit)
            ).all()
        return [dict(row._mapping) for row in rows]


def _check_key(model: str) -> None:
    if not (
        0 < len(model) <= 64
        and model[0].isascii()
        and model[0].isalpha()
        and all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in model)
    ):
        raise ValidationError(
            "expected a model key of letters, digits and _, starting with a letter",
            path="model",
        )


def _number(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def _prediction_rows(
    customers: Customers, predicted: Predictions, model: str, now: datetime
) -> list[dict[str, Any]]:
    n = len(customers)
    spend = predicted.expected_spend
    value = predicted.expected_value
    return [
        {
            "contact_id": int(customers.contact_id[i]),
            "model": model,
            "x": int(customers.x[i]),
            "t_x": float(customers.t_x[i]),
            "T": float(customers.T[i]),
            "monetary": _number(customers.monetary[i]),
            "p_alive": float(predicted.p_alive[i]),
            "expected_purchases": float(predicted.expected_purchases[i]),
            "expected_spend": None if spend is None else _number(spend[i]),
            "expected_value": None if value is None else _number(value[i]),
            "computed_at": now,
        }
        for i in range(n)
    ]
