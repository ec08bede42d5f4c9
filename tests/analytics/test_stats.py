"""The A/B statistics agree with independent references: statsmodels for proportions,
power and Holm, SciPy's Welch test run on the raw values the sums come from."""

from __future__ import annotations

import gc
import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats as sp
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

from nurture.analytics import stats


@st.composite
def two_arms(draw: st.DrawFn) -> tuple[int, int, int, int]:
    n_a = draw(st.integers(1, 100_000))
    n_b = draw(st.integers(1, 100_000))
    return draw(st.integers(0, n_a)), n_a, draw(st.integers(0, n_b)), n_b


CONFIDENCE = st.sampled_from([0.8, 0.9, 0.95, 0.99])


@settings(max_examples=200, deadline=None)
@given(two_arms(), CONFIDENCE)
def test_pvalue_and_intervals_match_statsmodels(
    arms: tuple[int, int, int, int], confidence: float
) -> None:
    # Given two arms of any size and any counts
    xa, na, xb, nb = arms
    alpha = 1 - confidence
    # When we compare variant b with control a
    result = stats.compare_proportions(xa, na, xb, nb, confidence)
    # Then the pooled z-test p-value is statsmodels' (where it is defined)
    pooled = (xa + xb) / (na + nb)
    if 0 < pooled < 1:
        _, p = proportions_ztest([xb, xa], [nb, na])
        assert result.p_value == pytest.approx(p, rel=1e-9, abs=1e-300)
    else:
        assert result.p_value == 1.0  # both 0 % or both 100 %: no evidence at all
    # And the difference's Newcombe interval is statsmodels' (b - a)
    low, high = confint_proportions_2indep(
        xb, nb, xa, na, method="newcomb", compare="diff", alpha=alpha
    )
    assert result.diff == pytest.approx(xb / nb - xa / na, abs=1e-12)
    assert result.diff_low == pytest.approx(low, abs=1e-9)
    assert result.diff_high == pytest.approx(high, abs=1e-9)
    # And the relative lift's log interval is statsmodels' ratio interval minus one
    if xa > 0 and xb > 0:
        r_low, r_high = confint_proportions_2indep(
            xb, nb, xa, na, method="log", compare="ratio", alpha=alpha
        )
        assert result.lift == pytest.approx((xb / nb) / (xa / na) - 1, rel=1e-9)
        assert result.lift_low == pytest.approx(r_low - 1, rel=1e-8, abs=1e-10)
        assert result.lift_high == pytest.approx(r_high - 1, rel=1e-8, abs=1e-10)


@settings(max_examples=100, deadline=None)
@given(st.floats(0.001, 0.999), st.floats(0.001, 0.999), st.sampled_from([0.01, 0.05, 0.1]))
def test_sample_size_matches_statsmodels_power(rate_a: float, rate_b: float, alpha: float) -> None:
    # Given two rates that differ enough to be worth a test, and not so much that a
    # handful of contacts tell (statsmodels' solver starts at 2 per arm)
    h = abs(proportion_effectsize(rate_b, rate_a))
    assume(0.01 < h < 1.2)
    # When we ask how many contacts per arm give 80% power
    ours = stats.sample_size_per_arm(rate_a, rate_b, alpha=alpha)
    # Then it is statsmodels' NormalIndPower solution with Cohen's h
    reference = NormalIndPower().solve_power(
        effect_size=h, alpha=alpha, power=0.8, ratio=1.0, alternative="two-sided"
    )
    # (statsmodels' solver stops at a relative tolerance near 1e-6; ours goes further)
    assert ours == pytest.approx(reference, rel=1e-5)
    # And at that size statsmodels computes a power of 80%, to 9 decimals
    power = NormalIndPower().power(h, ours, alpha, ratio=1.0, alternative="two-sided")
    assert power == pytest.approx(0.8, abs=1e-9)


def test_sample_still_needed_is_counted_from_the_smaller_arm() -> None:
    # Given 10% against 12% with 1,000 and 1,500 contacts
    result = stats.compare_proportions(100, 1000, 180, 1500)
    reference = NormalIndPower().solve_power(
        effect_size=abs(proportion_effectsize(0.12, 0.10)), alpha=0.05, power=0.8
    )
    # Then the sample per arm is statsmodels' rounded up, and what is missing is counted
    # from the smaller arm
    assert result.sample_per_arm == math.ceil(reference)
    assert result.more_needed == math.ceil(reference) - 1000


@st.composite
def samples(draw: st.DrawFn) -> list[float]:
    values = draw(st.lists(st.floats(0, 500, allow_nan=False), min_size=2, max_size=60))
    zeros = draw(st.integers(0, 40))  # most recipients spend nothing
    return [round(v, 2) for v in values] + [0.0] * zeros


@settings(max_examples=150, deadline=None)
@given(samples(), samples(), CONFIDENCE)
def test_welch_from_sums_matches_scipy_on_the_values(
    a: list[float], b: list[float], confidence: float
) -> None:
    # Given the revenue of each recipient in two arms, with some spread in each
    assume(np.var(a) > 1e-6 and np.var(b) > 1e-6)
    # When we compare the means from counts, sums and sums of squares only
    result = stats.compare_means(
        len(a), sum(a), sum(v * v for v in a), len(b), sum(b), sum(v * v for v in b), confidence
    )
    # Then the difference, interval and p-value are SciPy's Welch test on the values
    reference = sp.ttest_ind(b, a, equal_var=False)
    interval = reference.confidence_interval(confidence)
    assert result.diff == pytest.approx(np.mean(b) - np.mean(a), rel=1e-9, abs=1e-9)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-5, abs=1e-9)
    assert result.df == pytest.approx(reference.df, rel=1e-6)
    assert result.diff_low == pytest.approx(interval.low, rel=1e-6, abs=1e-6)
    assert result.diff_high == pytest.approx(interval.high, rel=1e-6, abs=1e-6)


def holm_reference(p_values: list[float]) -> list[float]:
    """statsmodels' Holm adjustment. Its multipletests runs a full gc.collect() on every
    Holm call, which the arithmetic does not need and which takes 0.1 to 0.3 s in a test
    process holding the whole suite (10 s for this test): that call does nothing here."""
    with mock.patch.object(gc, "collect", lambda generation=2: 0):
        _, reference, _, _ = multipletests(p_values, method="holm")
    return list(reference)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_holm_matches_statsmodels(p_values: list[float]) -> None:
    # Given any set of p-values, When we adjust them with Holm's method
    ours = stats.holm(p_values)
    # Then they equal statsmodels' Holm adjustment, in the same order
    assert ours == pytest.approx(holm_reference(p_values), abs=1e-12)


def test_holm_leaves_unknown_p_values_out() -> None:
    assert stats.holm([0.01, None, 0.04]) == pytest.approx([0.02, None, 0.04])


@pytest.mark.parametrize(("count", "n"), [(0, 10), (10, 10), (3, 7), (1, 100000)])
def test_wilson_matches_statsmodels(count: int, n: int) -> None:
    assert stats.wilson(count, n) == pytest.approx(
        proportion_confint(count, n, alpha=0.05, method="wilson"), abs=1e-12
    )


# -- edge cases --------------------------------------------------------------------------------
def test_an_empty_arm_gives_rates_only_with_the_reason() -> None:
    result = stats.compare_proportions(0, 0, 5, 50)
    assert result.rate_a is None and result.rate_b == 0.1
    assert result.diff is None and result.p_value is None and result.sample_per_arm is None
    assert result.reasons == ("the control has no recipients yet",)
    assert stats.compare_proportions(5, 50, 0, 0).reasons == ("the variant has no recipients yet",)


def test_zero_conversions_in_both_arms() -> None:
    # Given nobody converted in either arm
    result = stats.compare_proportions(0, 200, 0, 300)
    # Then there is no evidence of a difference, an interval around 0, and no lift
    assert result.p_value == 1.0 and result.diff == 0
    low, high = confint_proportions_2indep(0, 300, 0, 200, method="newcomb", compare="diff")
    assert (result.diff_low, result.diff_high) == pytest.approx((low, high))
    assert result.lift is None and result.lift_low is None
    assert result.sample_per_arm is None
    assert any("no conversions" in r for r in result.reasons)
    assert any("rates are equal" in r for r in result.reasons)


def test_zero_conversions_in_the_variant_only() -> None:
    result = stats.compare_proportions(10, 100, 0, 100)
    assert result.lift == -1.0 and result.lift_low is None and result.lift_high is None
    assert result.p_value == pytest.approx(proportions_ztest([0, 10], [100, 100])[1])
    assert result.sample_per_arm is not None


def test_all_converted_in_both_arms() -> None:
    result = stats.compare_proportions(50, 50, 80, 80)
    assert result.p_value == 1.0 and result.diff == 0 and result.lift == 0
    # The log interval's variance is 0: the interval is the point
    assert (result.lift_low, result.lift_high) == pytest.approx((0.0, 0.0))
    assert result.sample_per_arm is None


def test_identical_rates_need_an_infinite_sample() -> None:
    result = stats.compare_proportions(10, 100, 20, 200)
    assert result.sample_per_arm is None and result.more_needed is None
    assert "sample size: the rates are equal, no difference to detect" in result.reasons


def test_a_tiny_difference_needs_more_than_a_billion() -> None:
    result = stats.compare_proportions(100_000, 1_000_000, 100_001, 1_000_000)
    assert result.sample_per_arm is None
    assert any("more than" in r for r in result.reasons)


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="arm b"):
        stats.compare_proportions(1, 10, 11, 10)
    with pytest.raises(ValueError, match="confidence"):
        stats.compare_proportions(1, 10, 1, 10, confidence=1.0)


def test_welch_edge_cases() -> None:
    # An arm of one: no variance to estimate
    assert stats.compare_means(1, 5, 25, 10, 10, 20).reasons == ("an arm has fewer than 2",)
    # No spread anywhere: the difference is known exactly
    same = stats.compare_means(3, 0, 0, 4, 0, 0)
    assert (same.diff, same.diff_low, same.diff_high, same.p_value) == (0, 0, 0, 1.0)
    apart = stats.compare_means(3, 3, 3, 4, 8, 16)
    assert (apart.diff, apart.p_value) == (1.0, 0.0)
    # One arm without spread: Welch with the other arm's variance alone (as SciPy)
    one = stats.compare_means(3, 0, 0, 3, 6, 14)
    assert one.p_value == pytest.approx(sp.ttest_ind([1, 2, 3], [0, 0, 0], equal_var=False).pvalue)
