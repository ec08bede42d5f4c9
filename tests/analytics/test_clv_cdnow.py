# ruff: noqa: RUF002, RUF003  (the papers' notation: α, γ, ν, λ, ×)
"""The CLV models reproduce the published CDNOW results (Fader, Hardie & Lee 2005).

BG/NBD ("Counting your customers the easy way", Marketing Science 2005, table 1 and
section 5): r = 0.243, α = 4.414, a = 0.793, b = 2.426, log-likelihood -9582.4, and the
customer with x = 2, t_x = 30.43, T = 38.86 expects 1.226 purchases in the next 39 weeks.
Gamma-Gamma ("RFM and CLV", JMR 2005, and Fader & Hardie's note on it): p = 6.25,
q = 3.74, γ = 15.44 on the 946 repeat customers. The published summary is rebuilt from the
raw transactions through Nurture's events, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime

import numpy as np
import pytest
from tests.analytics.clv_data import noon, store_purchases, summary, transactions

from nurture.analytics.clv import fit_bgnbd, fit_gamma_gamma
from nurture.analytics.clv_store import ClvService
from nurture.clock import SimulatedClock
from nurture.store import Database

PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_GG = {"p": 6.25, "q": 3.74, "gamma": 15.44}


def close_to_two_decimals(fitted: dict[str, float], published: dict[str, float]) -> None:
    for name, value in published.items():
        assert abs(fitted[name] - value) < 0.01, (name, fitted[name], value)


def test_bgnbd_fit_reproduces_the_published_parameters() -> None:
    # Given the 2,357 CDNOW customers' (x, t_x, T) in weeks
    data = summary()
    # When fitting BG/NBD
    model, stats = fit_bgnbd(data["x"], data["t_x"], data["T"])
    # Then the parameters and the log-likelihood are the published ones
    close_to_two_decimals(model.to_json(), PUBLISHED_BGNBD)
    assert stats.log_likelihood == pytest.approx(-9582.4, abs=0.05)
    assert stats.converged and stats.customers == 2357
    # And the model's log-likelihood at the optimum is what the fit reports
    assert model.log_likelihood(data["x"], data["t_x"], data["T"]).sum() == pytest.approx(
        stats.log_likelihood, rel=1e-12
    )


def test_gamma_gamma_fit_reproduces_the_published_parameters() -> None:
    # Given the 946 repeat customers and the mean value of their repeat transactions
    data = summary()
    repeat = data["x"] > 0
    assert int(repeat.sum()) == 946
    # When fitting Gamma-Gamma
    model, stats = fit_gamma_gamma(data["x"][repeat], data["zbar"][repeat])
    # Then p, q and γ are the published ones, to two decimals
    close_to_two_decimals(model.to_json(), PUBLISHED_GG)
    assert stats.converged and stats.customers == 946
    # And the population's mean spend per transaction is pγ/(q-1) (about $35)
    assert model.mean_spend == pytest.approx(model.p * model.gamma / (model.q - 1))


def test_the_papers_customer_expects_1_226_purchases_in_39_weeks() -> None:
    # Given the fitted CDNOW model
    data = summary()
    model, _ = fit_bgnbd(data["x"], data["t_x"], data["T"])
    # When predicting for the paper's customer (x = 2, t_x = 30.43, T = 38.86)
    x, t_x, T = np.array([2.0]), np.array([30.43]), np.array([38.86])
    expected = model.expected_purchases(39.0, x, t_x, T)[0]
    # Then it is the paper's 1.226
    assert round(expected, 3) == 1.226


def test_the_summary_built_from_raw_transactions_is_the_published_one(
    db: Database,
) -> None:
    # Given the raw CDNOW transactions stored as Order Completed events (noon UTC; several
    # on one day are one purchase), and a calibration period ending 1997-09-30
    raw = transactions()
    store_purchases(db, [(cid, noon(day), dollars) for cid, day, dollars in raw], now=_NOW)
    service = ClvService(
        db,
        SimulatedClock(_NOW),
        {"calibration_end": "1997-09-30", "unit": "weeks", "horizon": "39w"},
    )
    # When summarising the purchases per contact
    with db.read() as conn:
        customers = service.customers(conn)
    # Then every customer is there with the published x, t_x, T (weeks, 2 decimals)
    published = summary()
    assert customers.contact_id.tolist() == published["ID"].astype(int).tolist()
    assert customers.x.tolist() == published["x"].tolist()
    assert np.abs(customers.t_x - published["t_x"]).max() < 0.005 + 1e-9
    assert np.abs(customers.T - published["T"]).max() < 0.005 + 1e-9
    # And the mean repeat spend is the published zbar (same-day values added up first)
    repeat = customers.x > 0
    assert np.abs(customers.monetary[repeat] - published["zbar"][repeat]).max() < 0.005 + 1e-9
    assert np.isnan(customers.monetary[~repeat]).all()
    # And an independent tally of the raw file agrees on a few customers (x = distinct
    # days after the first within the calibration period)
    days: dict[int, set[date]] = defaultdict(set)
    for cid, day, _ in raw:
        if day <= date(1997, 9, 30):
            days[cid].add(day)
    for index in (0, 1, 100, 2000):
        cid = int(customers.contact_id[index])
        assert customers.x[index] == len(days[cid]) - 1


def test_fitting_from_events_reproduces_the_published_parameters(db: Database) -> None:
    # Given the raw CDNOW transactions as events
    store_purchases(
        db, [(cid, noon(day), dollars) for cid, day, dollars in transactions()], now=_NOW
    )
    service = ClvService(
        db,
        SimulatedClock(_NOW),
        {"calibration_end": "1997-09-30", "unit": "weeks", "horizon": "39w"},
    )
    # When fitting the stored model from the events
    stored = service.fit()
    # Then both models have the published parameters, and every purchaser a prediction
    close_to_two_decimals(stored["parameters"]["bgnbd"], PUBLISHED_BGNBD)
    close_to_two_decimals(stored["parameters"]["gamma_gamma"], PUBLISHED_GG)
    assert stored["customers"] == 2357
    assert stored["log_likelihood"] == pytest.approx(-9582.4, abs=0.05)
    assert stored["fit"]["calibration_end"] == "1997-09-30"


_NOW = datetime(1998, 7, 1, tzinfo=UTC)
