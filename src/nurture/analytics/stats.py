"""The statistics of A/B tests and holdouts: two proportions, and two means from sums.

Every function takes counts (or sums) rather than rows, so reports aggregate in SQL and
never load a row per contact. Each result says what could not be computed and why
(`reason`) instead of raising: an empty arm or identical rates are normal states of a
young experiment, not errors. Comparisons read "variant minus control" (`b - a`).

The methods, each checked against its reference in tests/analytics/test_stats.py:

- p-value: two-proportion z-test with the pooled standard error, two-sided
  (`statsmodels.stats.proportion.proportions_ztest`);
- difference of rates: Newcombe's hybrid score interval, from the Wilson interval of each
  rate (`confint_proportions_2indep(method="newcomb", compare="diff")`);
- relative lift `b / a - 1`: the log interval of the ratio of rates
  (`confint_proportions_2indep(method="log", compare="ratio")`);
- sample size per arm to detect the observed difference: Cohen's effect size
  h = 2·asin(√b) - 2·asin(√a) with the normal power of a two-sided test
  (`NormalIndPower().solve_power` with `proportion_effectsize`);
- a difference of means (revenue per recipient): Welch's t interval and test from each
  arm's count, sum and sum of squares (`scipy.stats.ttest_ind(equal_var=False)`);
- several comparisons: Holm's step-down adjustment (`multipletests(method="holm")`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy import optimize, stats

POWER = 0.8
# Beyond this many per arm, a difference is too small to chase: "more than 10^9".
MAX_SAMPLE = 10**9


def z_value(confidence: float) -> float:
    """The two-sided normal critical value: 1.96 for 0.95."""
    check_confidence(confidence)
    return float(stats.norm.isf((1 - confidence) / 2))


def check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")


def wilson(count: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson's score interval of one rate; None for an empty arm."""
    if n <= 0:
        return None
    z = z_value(confidence)
    p = count / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Proportions:
    """Variant `b` against control `a`: what the report shows for one comparison."""

    rate_a: float | None
    rate_b: float | None
    diff: float | None  # rate_b - rate_a
    diff_low: float | None
    diff_high: float | None
    p_value: float | None
    lift: float | None  # rate_b / rate_a - 1
    lift_low: float | None
    lift_high: float | None
    sample_per_arm: int | None  # per arm, to detect `diff` with 80 % power
    more_needed: int | None  # per arm, beyond the smaller arm's count now
    reasons: tuple[str, ...] = ()  # why some figure is None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        return data


def compare_proportions(
    count_a: int, n_a: int, count_b: int, n_b: int, confidence: float = 0.95
) -> Proportions:
    """Compare rate b (count_b of n_b) with control rate a (count_a of n_a)."""
    for name, count, n in (("a", count_a, n_a), ("b", count_b, n_b)):
        if n < 0 or count < 0 or count > n:
            raise ValueError(f"arm {name}: expected 0 <= count <= n, got {count} of {n}")
    check_confidence(confidence)
    if n_a == 0 or n_b == 0:
        empty = "the control" if n_a == 0 else "the variant"
        return Proportions(
            count_a / n_a if n_a else None,
            count_b / n_b if n_b else None,
            *(None,) * 9,
            reasons=(f"{empty} has no recipients yet",),
        )
    reasons: list[str] = []
    rate_a, rate_b = count_a / n_a, count_b / n_b
    diff = rate_b - rate_a
    low, high = newcombe_interval(count_a, n_a, count_b, n_b, confidence)
    p = ztest_pvalue(count_a, n_a, count_b, n_b)
    lift = lift_low = lift_high = None
    if count_a == 0:
        reasons.append("relative lift: the control has no conversions (division by zero)")
    else:
        lift = rate_b / rate_a - 1
        if count_b == 0:
            reasons.append("relative lift interval: the variant has no conversions (log of 0)")
        else:
            lift_low, lift_high = log_ratio_interval(count_a, n_a, count_b, n_b, confidence)
    sample = sample_size_per_arm(rate_a, rate_b, alpha=1 - confidence)
    needed = more = None
    if sample is None:
        reasons.append("sample size: the rates are equal, no difference to detect")
    elif sample > MAX_SAMPLE:
        reasons.append(f"sample size: more than {MAX_SAMPLE:,} per arm")
    else:
        needed = math.ceil(sample - 1e-9)
        more = max(0, needed - min(n_a, n_b))
    return Proportions(
        rate_a, rate_b, diff, low, high, p, lift, lift_low, lift_high, needed, more,
        tuple(reasons),
    )  # fmt: skip


def ztest_pvalue(count_a: int, n_a: int, count_b: int, n_b: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test. Both rates 0 % or both
    100 %: no evidence of a difference, 1.0."""
    pooled = (count_a + count_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0:
        return 1.0
    z = (count_b / n_b - count_a / n_a) / math.sqrt(variance)
    return float(2 * stats.norm.sf(abs(z)))


def newcombe_interval(
    count_a: int, n_a: int, count_b: int, n_b: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval of rate_b - rate_a (method 10 of Newcombe 1998)."""
    wa, wb = wilson(count_a, n_a, confidence), wilson(count_b, n_b, confidence)
    assert wa is not None and wb is not None
    rate_a, rate_b = count_a / n_a, count_b / n_b
    diff = rate_b - rate_a
    low = diff - math.sqrt((rate_b - wb[0]) ** 2 + (wa[1] - rate_a) ** 2)
    high = diff + math.sqrt((wb[1] - rate_b) ** 2 + (rate_a - wa[0]) ** 2)
    return low, high


def log_ratio_interval(
    count_a: int, n_a: int, count_b: int, n_b: int, confidence: float = 0.95
) -> tuple[float, float]:
    """The interval of rate_b / rate_a - 1 by the log method (both counts above 0)."""
    ratio = (count_b / n_b) / (count_a / n_a)
    half = z_value(confidence) * math.sqrt(1 / count_a - 1 / n_a + 1 / count_b - 1 / n_b)
    return math.exp(math.log(ratio) - half) - 1, math.exp(math.log(ratio) + half) - 1


def effect_size(rate_a: float, rate_b: float) -> float:
    """Cohen's h: the difference of the arcsine-transformed rates."""
    return 2 * math.asin(math.sqrt(rate_b)) - 2 * math.asin(math.sqrt(rate_a))


def sample_size_per_arm(
    rate_a: float, rate_b: float, *, alpha: float = 0.05, power: float = POWER
) -> float | None:
    """Contacts per arm (equal arms) for a two-sided test at `alpha` to detect the
    difference between the rates with `power`; None when the rates are equal. Solves
    power(n) = Φ(h√(n/2) - z) + Φ(-h√(n/2) - z) exactly (both tails, like statsmodels)."""
    h = abs(effect_size(rate_a, rate_b))
    if h < 1e-12:
        return None
    crit = float(stats.norm.isf(alpha / 2))

    def shortfall(n: float) -> float:
        shift = h * math.sqrt(n / 2)
        return float(stats.norm.sf(crit - shift) + stats.norm.cdf(-crit - shift)) - power

    # The one-tailed closed form is a close upper bound; the root lies below it.
    upper = 2 * ((crit + float(stats.norm.ppf(power))) / h) ** 2
    return float(optimize.brentq(shortfall, 1e-9, upper * 1.01 + 1, xtol=1e-10, rtol=1e-12))


@dataclass(frozen=True, slots=True)
class Means:
    """Welch's comparison of two means (revenue per recipient): b minus a."""

    mean_a: float | None
    mean_b: float | None
    diff: float | None
    diff_low: float | None
    diff_high: float | None
    p_value: float | None
    df: float | None
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        return data


def _mean_variance(n: int, total: float, squares: float) -> tuple[float, float]:
    mean = total / n
    # sum((x - mean)^2) = sum(x^2) - n mean^2, never below 0 for real data (rounding).
    return mean, max(0.0, squares - total * mean) / (n - 1)


def compare_means(
    n_a: int,
    sum_a: float,
    squares_a: float,
    n_b: int,
    sum_b: float,
    squares_b: float,
    confidence: float = 0.95,
) -> Means:
    """Welch's t interval and two-sided test of mean_b - mean_a, from each arm's count,
    sum and sum of squares."""
    check_confidence(confidence)
    mean_a = sum_a / n_a if n_a else None
    mean_b = sum_b / n_b if n_b else None
    if n_a < 2 or n_b < 2:
        return Means(mean_a, mean_b, None, None, None, None, None, ("an arm has fewer than 2",))
    mean_a, var_a = _mean_variance(n_a, sum_a, squares_a)
    mean_b, var_b = _mean_variance(n_b, sum_b, squares_b)
    diff = mean_b - mean_a
    share_a, share_b = var_a / n_a, var_b / n_b
    se2 = share_a + share_b
    if se2 <= 0:
        # Every value equal within each arm: the difference is known exactly.
        p = 1.0 if diff == 0 else 0.0
        return Means(mean_a, mean_b, diff, diff, diff, p, None, ("no variance in either arm",))
    df = se2 * se2 / (share_a * share_a / (n_a - 1) + share_b * share_b / (n_b - 1))
    se = math.sqrt(se2)
    crit = float(stats.t.isf((1 - confidence) / 2, df))
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return Means(mean_a, mean_b, diff, diff - crit * se, diff + crit * se, p, df)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count)."""
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(known)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
