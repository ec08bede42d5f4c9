# ruff: noqa: RUF002, RUF003  (the papers' notation: α, γ, ν, λ, ×)
"""Customer lifetime value: the BG/NBD model of repeat purchases and the Gamma-Gamma model
of spend, fitted by maximum likelihood.

BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way: an alternative to
the Pareto/NBD model", Marketing Science 24(2)): while alive, a customer buys at a Poisson
rate λ ~ Gamma(r, α); after each purchase they drop out with probability p ~ Beta(a, b).
A customer is summarised by x (repeat purchases), t_x (the time of the last purchase after
the first) and T (the time from the first purchase to the end of the calibration period).

Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value curves for customer
base analysis", Journal of Marketing Research 42(4)): a customer's spend per purchase is
Gamma(p, ν) with ν ~ Gamma(q, γ), independent of how often they buy. It is fitted on the
customers with repeat purchases, by x and the mean spend of those repeat purchases.

Everything here is numpy over arrays of customers; parameters are fitted on the log scale
(so they stay positive), with identical rows grouped and weighted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.special import digamma, expit, gammaln, hyp2f1

from nurture.errors import NurtureError

Array = NDArray[np.float64]
# log-parameters stay within e^±20: beyond it the data does not pin a parameter down.
_LOG_BOUND = 20.0
# Largest |d(mean log-likelihood)/d(log parameter)| accepted at an optimum.
_GRADIENT_TOLERANCE = 1e-6


class ClvFitError(NurtureError):
    """A model could not be fitted to the data (too few customers, no convergence)."""

    code = "clv_fit_failed"
    http_status = 422


@dataclass(frozen=True)
class FitStats:
    """How a maximum-likelihood fit went."""

    log_likelihood: float  # at the optimum, summed over customers
    iterations: int
    evaluations: int
    converged: bool
    message: str
    customers: int  # customers the model was fitted on
    distinct_rows: int  # distinct rows after grouping identical customers

    def to_json(self) -> dict[str, Any]:
        return {
            "log_likelihood": self.log_likelihood,
            "iterations": self.iterations,
            "evaluations": self.evaluations,
            "converged": self.converged,
            "message": self.message,
            "customers": self.customers,
            "distinct_rows": self.distinct_rows,
        }


# -- BG/NBD ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BgNbd:
    """Fitted BG/NBD parameters: purchase rate λ ~ Gamma(shape r, rate α), dropout
    probability p ~ Beta(a, b). Times are in the unit the customers were given in."""

    r: float
    alpha: float
    a: float
    b: float

    def log_likelihood(self, x: Array, t_x: Array, T: Array) -> Array:
        """Each customer's log-likelihood (eq. 6 of the paper, on the log scale)."""
        return _bgnbd_ll(np.array([self.r, self.alpha, self.a, self.b]), x, t_x, T)[0]

    def p_alive(self, x: Array, t_x: Array, T: Array) -> Array:
        """P(alive at T | x, t_x, T) (eq. 11 of the technical note): 1 without repeat
        purchases, since the model only lets a customer drop out right after a purchase."""
        x, t_x, T = _floats(x, t_x, T)
        return np.where(x > 0, expit(-self._dropout_odds(x, t_x, T)), 1.0)

    def expected_purchases(self, t: float, x: Array, t_x: Array, T: Array) -> Array:
        """E[purchases in (T, T + t] | x, t_x, T]: eq. 10 of the paper.

        The Gaussian hypergeometric term is taken through Euler's transformation,
        ((α+T)/(α+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z) = (1-z)^(a-1) 2F1(a+b-1-r, a-1;
        a+b+x-1; z) with z = t/(α+T+t), whose series stays small for any x, and the
        denominator 1 + [x>0] a/(b+x-1) ((α+T)/(α+t_x))^(r+x) as a logistic of its log.
        """
        if t < 0:
            raise ValueError("the horizon must not be negative")
        x, t_x, T = _floats(x, t_x, T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        if t == 0:
            return np.zeros_like(x)
        z = t / (alpha + T + t)
        hyp = (1.0 - z) ** (a - 1.0) * hyp2f1(a + b - 1.0 - r, a - 1.0, a + b + x - 1.0, z)
        first = (a + b + x - 1.0) / (a - 1.0) * (1.0 - hyp)
        return np.asarray(first * self.p_alive(x, t_x, T), dtype=np.float64)

    def _dropout_odds(self, x: Array, t_x: Array, T: Array) -> Array:
        """log(a/(b+x-1)) + (r+x) log((α+T)/(α+t_x)), for x > 0 (0 elsewhere)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        safe = np.maximum(x, 1.0)
        return np.where(
            x > 0,
            np.log(a) - np.log(b + safe - 1.0) + (r + safe) * np.log((alpha + T) / (alpha + t_x)),
            -np.inf,
        )

    def to_json(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}


def _floats(*arrays: Any) -> tuple[Array, ...]:
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def _bgnbd_ll(theta: Array, x: Array, t_x: Array, T: Array) -> tuple[Array, Array]:
    """Per-customer log-likelihood and its gradient (customers × 4) in (r, α, a, b)."""
    r, alpha, a, b = theta
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    safe = np.where(repeat, x, 1.0)
    a4 = np.where(
        repeat, np.log(a) - np.log(b + safe - 1.0) - (r + x) * np.log(alpha + t_x), -np.inf
    )
    both = np.logaddexp(a3, a4)
    w3 = np.exp(a3 - both)  # the share of the "still alive at T" term
    w4 = 1.0 - w3
    grad = np.empty((x.size, 4))
    grad[:, 0] = (
        digamma(r + x)
        - digamma(r)
        + np.log(alpha)
        - w3 * np.log(alpha + T)
        - w4 * np.log(alpha + t_x)
    )
    grad[:, 1] = r / alpha - w3 * (r + x) / (alpha + T) - w4 * (r + x) / (alpha + t_x)
    grad[:, 2] = digamma(a + b) - digamma(a + b + x) + w4 / a
    grad[:, 3] = (
        digamma(a + b) + digamma(b + x) - digamma(b) - digamma(a + b + x) - w4 / (b + safe - 1.0)
    )
    return a1 + a2 + both, grad


def fit_bgnbd(x: Any, t_x: Any, T: Any) -> tuple[BgNbd, FitStats]:
    """Maximum-likelihood BG/NBD parameters for customers (x, t_x, T).

    Raises ClvFitError when the data cannot identify the model (no customer, nobody
    with a repeat purchase, inconsistent rows) or the optimiser does not converge."""
    x, t_x, T = _floats(x, t_x, T)
    if x.size == 0:
        raise ClvFitError("no customers to fit: nobody made a purchase", path="customers")
    if np.any(x < 0) or np.any(x != np.round(x)):
        raise ClvFitError("x must be whole numbers of repeat purchases ≥ 0", path="x")
    if np.any(t_x < 0) or np.any(t_x > T) or np.any((x == 0) & (t_x != 0)):
        raise ClvFitError("each customer needs 0 ≤ t_x ≤ T, and t_x = 0 when x = 0", path="t_x")
    if not np.any(x > 0):
        raise ClvFitError(
            "nobody made a repeat purchase: the BG/NBD model needs some to estimate the "
            "purchase rate and the dropout",
            path="customers",
        )
    rows, weights = _group(x, t_x, T)
    gx, gtx, gT = rows
    total = weights.sum()

    def objective(u: Array) -> tuple[float, Array]:
        theta = np.exp(u)
        ll, grad = _bgnbd_ll(theta, gx, gtx, gT)
        # mean over customers: the same optimum, a better-scaled problem
        return -float(weights @ ll) / total, -(weights @ grad) * theta / total

    u, stats = _maximise(objective, 4, ("r", "alpha", "a", "b"), int(total), gx.size)
    r, alpha, a, b = (float(v) for v in np.exp(u))
    return BgNbd(r, alpha, a, b), stats


# -- Gamma-Gamma -------------------------------------------------------------------------
@dataclass(frozen=True)
class GammaGamma:
    """Fitted Gamma-Gamma parameters: spend per purchase ~ Gamma(shape p, rate ν),
    ν ~ Gamma(shape q, rate γ)."""

    p: float
    q: float
    gamma: float

    @property
    def mean_spend(self) -> float:
        """The population's expected spend per purchase, pγ/(q-1) (q > 1)."""
        return self.p * self.gamma / (self.q - 1.0)

    def expected_spend(self, x: Array, monetary: Array) -> Array:
        """E[spend per purchase | x, mean spend] (eq. 5 of the paper):
        (p(γ + x·m)) / (px + q - 1), a weighted mean of the population mean and the
        customer's own mean m. Customers with x = 0 get the population mean."""
        x, m = _floats(x, monetary)
        m = np.where(x > 0, m, 0.0)
        p, q, g = self.p, self.q, self.gamma
        return p * (g + x * m) / (p * x + q - 1.0)

    def log_likelihood(self, x: Array, monetary: Array) -> Array:
        return _gg_ll(np.array([self.p, self.q, self.gamma]), *_floats(x, monetary))[0]

    def to_json(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "gamma": self.gamma}


def _gg_ll(theta: Array, x: Array, m: Array) -> tuple[Array, Array]:
    """Per-customer log-likelihood of the mean spend m of x purchases, and its gradient."""
    p, q, g = theta
    px = p * x
    lg = np.log(g + x * m)
    ll = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(g)
        + (px - 1.0) * np.log(m)
        + px * np.log(x)
        - (px + q) * lg
    )
    grad = np.empty((x.size, 3))
    grad[:, 0] = x * (digamma(px + q) - digamma(px) + np.log(m) + np.log(x) - lg)
    grad[:, 1] = digamma(px + q) - digamma(q) + np.log(g) - lg
    grad[:, 2] = q / g - (px + q) / (g + x * m)
    return ll, grad


def fit_gamma_gamma(x: Any, monetary: Any) -> tuple[GammaGamma, FitStats]:
    """Maximum-likelihood Gamma-Gamma parameters from repeat customers: x ≥ 1 repeat
    purchases with mean spend `monetary` > 0 each. Others must be left out first."""
    x, m = _floats(x, monetary)
    if np.any(x < 1) or np.any(m <= 0):
        raise ClvFitError(
            "the spend model takes customers with repeat purchases and a positive mean spend only",
            path="monetary",
        )
    if x.size < 2:
        raise ClvFitError(
            "fewer than 2 customers with repeat purchases and revenue: cannot fit the spend model",
            path="customers",
        )
    rows, weights = _group(x, m)
    gx, gm = rows
    total = weights.sum()

    def objective(u: Array) -> tuple[float, Array]:
        theta = np.exp(u)
        ll, grad = _gg_ll(theta, gx, gm)
        return -float(weights @ ll) / total, -(weights @ grad) * theta / total

    u, stats = _maximise(objective, 3, ("p", "q", "gamma"), int(total), gx.size)
    p, q, g = (float(v) for v in np.exp(u))
    if q <= 1.0:
        raise ClvFitError(
            f"the spend model fitted q = {q:.3g} ≤ 1: the mean spend is unbounded "
            "(spend too dispersed across customers for the Gamma-Gamma model)",
            path="q",
        )
    return GammaGamma(p, q, g), stats


# -- fitting ---------------------------------------------------------------------------------
def _group(*columns: Array) -> tuple[tuple[Array, ...], Array]:
    """Distinct rows of the columns and how many customers share each."""
    stacked = np.column_stack(columns)
    distinct, counts = np.unique(stacked, axis=0, return_counts=True)
    return tuple(distinct[:, i].copy() for i in range(len(columns))), counts.astype(np.float64)


def _maximise(
    objective: Any, size: int, names: tuple[str, ...], customers: int, distinct: int
) -> tuple[Array, FitStats]:
    result = minimize(
        objective,
        np.zeros(size),
        jac=True,
        method="L-BFGS-B",
        bounds=[(-_LOG_BOUND, _LOG_BOUND)] * size,
        options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9},
    )
    u = np.asarray(result.x, dtype=np.float64)
    message = str(result.message).rstrip(": ")
    # A line search that cannot improve on the optimum's last digits ends "ABNORMAL"; a
    # gradient that vanished there is still a converged fit.
    gradient = float(np.max(np.abs(objective(u)[1])))
    converged = bool(result.success) or gradient < _GRADIENT_TOLERANCE
    if converged and not result.success:
        message = f"converged: gradient {gradient:.1e} (line search: {message})"
    stats = FitStats(
        log_likelihood=-float(result.fun) * customers,
        iterations=int(result.nit),
        evaluations=int(result.nfev),
        converged=converged,
        message=message,
        customers=customers,
        distinct_rows=distinct,
    )
    at_bound = [n for n, v in zip(names, u, strict=True) if abs(v) >= _LOG_BOUND - 1e-6]
    if at_bound:
        raise ClvFitError(
            f"the fit did not converge: {', '.join(at_bound)} ran off to "
            f"{'0 or infinity'} (the data does not pin it down; more customers or a longer "
            "calibration period help)",
            path=at_bound[0],
        )
    if not converged or not np.isfinite(result.fun):
        raise ClvFitError(
            f"the fit did not converge after {stats.iterations} iterations: {message} "
            f"(largest gradient {gradient:.1e})",
            path="fit",
        )
    return u, stats
