# ruff: noqa: RUF002, RUF003  (the papers' notation: α, γ, ν, λ, ×)
"""The BG/NBD and Gamma-Gamma models against references written differently: the
likelihood, the conditional expectation and P(alive) by numerical integration over each
customer's (λ, p), the expected spend by integration over ν, and the fit and predictions
against customers simulated from the model's own story (exponential inter-purchase times,
a coin for dropping out after each purchase)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from nurture.analytics.clv import BgNbd, ClvFitError, GammaGamma, fit_bgnbd, fit_gamma_gamma
from nurture.analytics.clv_store import Customers, predict

CDNOW = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)
CUSTOMERS = [  # (x, t_x, T): the paper's customer, nobody, a loyal one, a lapsed one
    (2, 30.43, 38.86),
    (0, 0.0, 38.86),
    (0, 0.0, 3.0),
    (7, 35.0, 38.0),
    (5, 2.0, 38.0),
    (1, 0.5, 10.0),
]


def posterior_integrals(model: BgNbd, x: int, t_x: float, T: float, t: float) -> dict[str, float]:
    """∫∫ g(λ, p) f(λ) f(p) dλ dp by the trapezoid rule on a fine grid of log λ and logit p
    (smooth there, with the priors' singularities at 0 gone), for g the customer's
    likelihood (both terms), the alive-at-T term alone, and the alive-at-T term times
    E[purchases in t | λ, p, alive] = (1 - e^{-λpt}) / p."""
    s = np.linspace(-160.0, 8.0, 4000)[:, None]  # log λ
    v = np.linspace(-40.0, 40.0, 1600)[None, :]  # logit p
    lam = np.exp(s)
    log_p, log_q = -np.logaddexp(0.0, -v), -np.logaddexp(0.0, v)  # log p, log(1 - p)
    log_prior = (
        model.r * np.log(model.alpha)
        + model.r * s  # λ^(r-1) dλ = λ^r ds
        - model.alpha * lam
        - special.gammaln(model.r)
        + model.a * log_p  # p^(a-1) (1-p)^(b-1) dp = p^a (1-p)^b dv
        + model.b * log_q
        - special.betaln(model.a, model.b)
    )
    alive = np.exp(x * log_q + x * s - lam * T + log_prior)
    if x > 0:
        dropped = np.exp(log_p + (x - 1) * log_q + x * s - lam * t_x + log_prior)
    else:
        dropped = np.zeros_like(alive)
    p = np.exp(log_p)
    future = alive * -np.expm1(-lam * p * t) / p

    def total(values: np.ndarray) -> float:
        return float(np.trapezoid(np.trapezoid(values, v[0], axis=1), s[:, 0]))

    return {
        "likelihood": total(alive + dropped),
        "alive": total(alive),
        "future": total(future),
    }


@pytest.mark.parametrize(("x", "t_x", "T"), CUSTOMERS)
def test_likelihood_is_the_integral_over_lambda_and_p(x: int, t_x: float, T: float) -> None:
    # Given a customer, When computing their likelihood in closed form
    closed = CDNOW.log_likelihood(np.array([x]), np.array([t_x]), np.array([T]))[0]
    # Then it is the log of the likelihood integrated over the priors numerically
    numeric = posterior_integrals(CDNOW, x, t_x, T, 39.0)["likelihood"]
    assert closed == pytest.approx(math.log(numeric), abs=1e-7)


@pytest.mark.parametrize(("x", "t_x", "T"), CUSTOMERS)
def test_p_alive_and_expected_purchases_are_the_posterior_integrals(
    x: int, t_x: float, T: float
) -> None:
    # Given a customer and the posterior over (λ, p) computed by quadrature
    integrals = posterior_integrals(CDNOW, x, t_x, T, 39.0)
    alive = integrals["alive"] / integrals["likelihood"]
    future = integrals["future"] / integrals["likelihood"]
    args = np.array([x], dtype=float), np.array([t_x]), np.array([T])
    # Then P(alive) and E[purchases in the next 39 weeks] are the integrals
    assert CDNOW.p_alive(*args)[0] == pytest.approx(alive, rel=1e-6)
    assert CDNOW.expected_purchases(39.0, *args)[0] == pytest.approx(future, rel=1e-6)


def test_expected_purchases_stay_finite_for_heavy_buyers_and_long_horizons() -> None:
    # Given heavy buyers over a long horizon (where the plain 2F1 term overflows)
    x = np.array([0.0, 50.0, 300.0, 300.0])
    t_x = np.array([0.0, 38.0, 38.0, 1.0])
    T = np.array([38.86, 38.86, 38.86, 38.86])
    for horizon in (1.0, 52.0, 520.0, 5200.0):
        values = CDNOW.expected_purchases(horizon, x, t_x, T)
        # Then the values are finite, positive and grow with the horizon
        assert np.all(np.isfinite(values)) and np.all(values >= 0)
    short, long = (CDNOW.expected_purchases(h, x, t_x, T) for h in (52.0, 520.0))
    assert np.all(long > short)
    # And a buyer who stopped long ago (x = 300, last at week 1) is almost surely gone
    assert CDNOW.p_alive(x, t_x, T)[3] < 1e-100


def test_expected_spend_is_the_posterior_mean_over_nu() -> None:
    # Given a Gamma-Gamma model and a customer with 4 purchases averaging 30
    model = GammaGamma(p=6.25, q=3.74, gamma=15.44)
    x, m = 4, 30.0

    # When integrating E[spend | ν] = p/ν against ν's posterior numerically
    def density(nu: float) -> float:
        prior = stats.gamma(model.q, scale=1 / model.gamma).pdf(nu)
        return float(prior * stats.gamma(model.p * x, scale=1 / (nu * x)).pdf(m))

    top = integrate.quad(lambda nu: model.p / nu * density(nu), 0, np.inf, limit=200)[0]
    bottom = integrate.quad(density, 0, np.inf, limit=200)[0]
    # Then the closed form agrees, and x = 0 gives the population mean pγ/(q-1)
    got = model.expected_spend(np.array([x, 0.0]), np.array([m, 0.0]))
    assert got[0] == pytest.approx(top / bottom, rel=1e-7)
    assert got[1] == pytest.approx(model.mean_spend)
    # And its log-likelihood is that of the mean of x Gamma(p, ν) spends, ν integrated out
    closed = model.log_likelihood(np.array([x]), np.array([m]))[0]
    assert closed == pytest.approx(math.log(bottom), abs=1e-7)


def simulate(
    rng: np.random.Generator, model: BgNbd, T: np.ndarray, horizon: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD customers told as a story: a first purchase at 0, then purchases at rate λ,
    each followed by dropping out with probability p. Returns (x, t_x) in (0, T] and the
    purchases in (T, T + horizon]."""
    n = T.size
    lam = rng.gamma(model.r, 1 / model.alpha, n)
    p = rng.beta(model.a, model.b, n)
    now = np.zeros(n)
    x, t_x, later = np.zeros(n), np.zeros(n), np.zeros(n)
    active = np.ones(n, dtype=bool)
    while active.any():
        now[active] += rng.exponential(1 / lam[active])
        active &= now <= T + horizon
        inside = active & (now <= T)
        x[inside] += 1
        t_x[inside] = now[inside]
        later[active & (now > T)] += 1
        active &= rng.random(n) >= p
    return x, t_x, later


def test_the_fit_recovers_simulated_parameters_and_predicts_the_holdout() -> None:
    # Given 30,000 customers simulated from known parameters, observed for 20 to 52 weeks
    # (whole days, so that those without repeat purchases share rows)
    rng = np.random.default_rng(7)
    truth = BgNbd(r=0.5, alpha=6.0, a=0.7, b=3.0)
    T = rng.integers(140, 365, 30_000) / 7.0
    x, t_x, later = simulate(rng, truth, T, horizon=26.0)
    # When fitting BG/NBD to their calibration summaries
    fitted, stats_ = fit_bgnbd(x, t_x, T)
    # Then the parameters come back (within sampling error)
    for name, value in truth.to_json().items():
        assert fitted.to_json()[name] == pytest.approx(value, rel=0.15), name
    assert stats_.converged and stats_.distinct_rows < 30_000
    # And the purchases expected in the next 26 weeks match what the customers then did,
    # in total and for the heavy and the silent ones
    expected = fitted.expected_purchases(26.0, x, t_x, T)
    assert expected.sum() == pytest.approx(later.sum(), rel=0.05)
    for group in (x == 0, x >= 3):
        assert expected[group].sum() == pytest.approx(later[group].sum(), rel=0.1)


def test_gamma_gamma_recovers_simulated_parameters() -> None:
    # Given 20,000 repeat customers with spends drawn from known p, q, γ
    rng = np.random.default_rng(3)
    p, q, g = 4.0, 5.0, 30.0
    x = rng.integers(1, 8, 20_000).astype(float)
    nu = rng.gamma(q, 1 / g, x.size)
    means = np.array([rng.gamma(p, 1 / v, int(k)).mean() for v, k in zip(nu, x, strict=True)])
    # When fitting, Then they come back
    fitted, _ = fit_gamma_gamma(x, means)
    assert fitted.p == pytest.approx(p, rel=0.1)
    assert fitted.q == pytest.approx(q, rel=0.1)
    assert fitted.gamma == pytest.approx(g, rel=0.15)


def test_unfittable_data_is_an_error_naming_why() -> None:
    # Given customers who never came back
    with pytest.raises(ClvFitError, match="nobody made a repeat purchase") as caught:
        fit_bgnbd([0, 0, 0], [0, 0, 0], [10, 20, 30])
    assert caught.value.path == "customers"
    # Given a last purchase after the end of the period
    with pytest.raises(ClvFitError, match="t_x ≤ T") as caught:
        fit_bgnbd([1, 2], [5, 40], [10, 30])
    assert caught.value.path == "t_x"
    # Given no customer at all
    with pytest.raises(ClvFitError, match="no customers"):
        fit_bgnbd([], [], [])
    # Given spends of zero, or a single repeat customer
    with pytest.raises(ClvFitError, match="positive mean spend"):
        fit_gamma_gamma([1, 2], [10.0, 0.0])
    with pytest.raises(ClvFitError, match="fewer than 2"):
        fit_gamma_gamma([1], [10.0])


def test_spends_too_dispersed_for_a_finite_mean_are_an_error() -> None:
    # Given repeat customers whose mean spends span eight orders of magnitude
    x = np.ones(200)
    spends = np.exp(np.random.default_rng(1).normal(0, 6, 200))
    # When fitting Gamma-Gamma, Then q ≤ 1 (an unbounded mean) is refused, naming q
    with pytest.raises(ClvFitError) as caught:
        fit_gamma_gamma(x, spends)
    assert caught.value.path in ("q", "p", "gamma")


def test_expected_value_is_purchases_times_spend_and_discounting_lowers_it() -> None:
    # Given three customers and both models
    customers = Customers(
        contact_id=np.array([1, 2, 3]),
        x=np.array([2.0, 0.0, 4.0]),
        t_x=np.array([30.43, 0.0, 20.0]),
        T=np.array([38.86, 38.86, 38.86]),
        monetary=np.array([22.35, np.nan, 0.0]),
        calibration_end=np.datetime64("1997-09-30").astype(object),
    )
    spend = GammaGamma(p=6.25, q=3.74, gamma=15.44)
    plain = predict(customers, CDNOW, spend, 52.0)
    # Then the value is expected purchases × expected spend; customers without positive
    # repeat revenue are valued at the population mean spend
    assert plain.expected_value is not None and plain.expected_spend is not None
    assert np.allclose(plain.expected_value, plain.expected_purchases * plain.expected_spend)
    assert plain.expected_spend[0] == pytest.approx(6.25 * (15.44 + 2 * 22.35) / (6.25 * 2 + 2.74))
    assert plain.expected_spend[1] == pytest.approx(spend.mean_spend)
    assert plain.expected_spend[2] == pytest.approx(spend.mean_spend)
    # And a 10 % annual rate discounts each month's purchases at (1.1)^-years
    discounted = predict(customers, CDNOW, spend, 52.0, unit_days=7.0, discount_rate=0.1)
    assert discounted.expected_value is not None
    months = 12  # 52 weeks ≈ 12 months of 30.44 days
    ends = [52.0 * k / months for k in range(months + 1)]
    cumulative = [
        CDNOW.expected_purchases(e, customers.x, customers.t_x, customers.T) for e in ends
    ]
    by_hand = sum(
        (cumulative[k] - cumulative[k - 1]) / 1.1 ** (ends[k] * 7 / 365.25)
        for k in range(1, months + 1)
    )
    assert np.allclose(discounted.expected_value, by_hand * plain.expected_spend)
    assert np.all(discounted.expected_value < plain.expected_value)
