"""Intervals, comparisons, effect sizes and the tie rule (:mod:`optimlab.lab.statistics`).

Oracles: scipy.stats computed directly on the same numbers (t intervals, paired / Welch /
one-sample tests, the order-statistic interval of ``quantile_test``), formulas by hand, and a
seeded Monte Carlo check of coverage.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

stats = pytest.importorskip("scipy.stats")

from optimlab.lab.statistics import (  # noqa: E402
    Comparison,
    Interval,
    cohens_dz,
    compare,
    hedges_g,
    interval,
)

INF = math.inf
# Bounds computed with the same scipy quantiles by another route (t.interval vs the t-test's own
# confidence_interval, or mean +- t*se by hand): they agree to float64 rounding of a few
# operations on values of order 1-100, so 1e-9 relative is generous and still catches any
# wrong degree of freedom or standard error (those move the bounds by >= 1e-3 relative).
REL = 1e-9


# ----------------------------------------------------------------------------- intervals


def test_t_interval_matches_scipy() -> None:
    x = [3.1, 2.7, 3.8, 3.3, 2.9]
    iv = interval(x, 0.9)
    low, high = stats.t.interval(0.9, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert iv.method == "t" and iv.n == 5 and iv.n_censored == 0
    assert iv.center == pytest.approx(np.mean(x), rel=REL)
    assert (iv.low, iv.high) == (pytest.approx(low, rel=REL), pytest.approx(high, rel=REL))
    assert float(iv) == iv.center and iv.contains(iv.center)
    assert iv.format(lambda v: f"{v:.2f}") == f"3.16 [{low:.2f}, {high:.2f}]"


def test_interval_is_clipped_to_the_support() -> None:
    # three accuracies near 1: the t interval runs past 1.0 (the spread is 0.05, t_{.975,2}
    # is 4.3); clipped to the support (0, 1), the upper bound is exactly 1 and the lower
    # bound is unchanged.
    x = [0.99, 0.94, 0.999]
    raw, clipped = interval(x), interval(x, support=(0.0, 1.0))
    assert raw.high > 1.0 and clipped.high == 1.0 and clipped.low == raw.low
    assert clipped.center == raw.center
    steps = interval([10.0, 200.0, 15.0], support=(0.0, math.inf))
    assert steps.low == 0.0 and interval([10.0, 200.0, 15.0]).low < 0.0


def test_t_interval_coverage() -> None:
    # 4000 samples of n=4 from N(10, 2): the fraction of 95% intervals that contain 10 is a
    # binomial proportion with sd sqrt(.95*.05/4000) = 0.0034; +-0.015 is over 4 sd (the seed
    # is fixed, so the test is deterministic; the margin shows it is not tuned to it).
    rng = np.random.default_rng(0)
    hits = [interval(rng.normal(10.0, 2.0, 4)).contains(10.0) for _ in range(4000)]
    assert abs(np.mean(hits) - 0.95) < 0.015


def test_points_and_missing_values() -> None:
    assert interval([]).method == "empty" and interval([]).format() == "-"
    assert interval([None, math.nan, -INF]).n == 0  # missing, not censored
    one = interval([7.0, None, math.nan])
    assert (one.center, one.low, one.high, one.n, one.method) == (7.0, 7.0, 7.0, 1, "single")
    same = interval([4.0, 4.0, 4.0])
    assert (same.low, same.high, same.n, same.method) == (4.0, 4.0, 3, "constant")
    det = interval([5.0, 5.0, 5.0], deterministic=True)
    assert (det.center, det.n, det.method, det.is_point) == (5.0, 1, "deterministic", True)
    assert det.format() == "5"


def test_censored_interval_is_the_median_with_order_statistics() -> None:
    # 10 values, the largest censored: the median and its 95% order-statistic interval; the
    # censored value sorts last, so every statistic below it equals that of the sample where
    # it is replaced by any number above the others (here 100), which quantile_test handles.
    x = [5.0, 2.0, 9.0, 4.0, 1.0, 8.0, 3.0, 7.0, 6.0, INF]
    iv = interval(x)
    finite = [100.0 if v == INF else v for v in x]
    assert iv.method == "order" and iv.n_censored == 1
    assert iv.center == np.median(finite) == 5.5
    assert (iv.low, iv.high) == (2.0, 9.0)
    if hasattr(stats, "quantile_test"):  # scipy >= 1.12
        ci = stats.quantile_test(finite, q=np.median(finite), p=0.5).confidence_interval(0.95)
        assert (iv.low, iv.high) == (ci.low, ci.high)
    # its exact coverage: P(2 <= B <= 8) for B ~ Binomial(10, 1/2)
    assert iv.confidence == pytest.approx(1 - 2 * stats.binom.cdf(1, 10, 0.5), rel=1e-12)
    assert iv.confidence >= 0.95


def test_censored_interval_with_few_seeds_states_its_coverage() -> None:
    # three seeds, one did not reach: the range, whose coverage is 1 - 2 / 2^3 = 0.75 < 0.95
    iv = interval([120.0, 100.0, INF])
    assert (iv.center, iv.low, iv.high) == (120.0, 100.0, INF)
    assert iv.confidence == 0.75
    assert iv.format(lambda v: f"{v:g}") == "120 [100, inf]"
    # most seeds did not reach: the median itself is censored
    none = interval([INF, 100.0, INF])
    assert none.center == INF and none.low == 100.0 and none.n_censored == 2


# ----------------------------------------------------------------------------- effect sizes


def test_effect_sizes_by_hand() -> None:
    d = [1.0, 2.0, 3.0]  # mean 2, sd 1
    assert cohens_dz(d) == pytest.approx(2.0, rel=1e-12)
    assert cohens_dz([2.0, 2.0]) == INF and cohens_dz([0.0, 0.0]) == 0.0
    assert math.isnan(cohens_dz([1.0]))
    a, b = [1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]
    # pooled sd = sd of each = 1.2910; d = -2 / 1.2910 = -1.5492; exact J for m = 6 is
    # Gamma(3) / (sqrt(3) Gamma(2.5)) = 0.8705, against the approximation 1 - 3/(4*6-1) =
    # 0.8696 (they differ by ~1e-3, which separates the exact correction from the usual one)
    sp = math.sqrt(np.var(a, ddof=1))
    j = math.gamma(3) / (math.sqrt(3) * math.gamma(2.5))
    assert hedges_g(a, b) == pytest.approx(j * -2 / sp, rel=1e-12)
    assert hedges_g(a, b) != pytest.approx((1 - 3 / 23) * -2 / sp, rel=1e-4)
    assert hedges_g([1.0, 1.0], [2.0, 2.0]) == -INF


# ----------------------------------------------------------------------------- comparisons


def _ci(res: object) -> tuple[float, float]:
    if not hasattr(res, "confidence_interval"):  # ttest_ind's is scipy >= 1.11
        pytest.skip("this scipy's t-test result has no confidence_interval")
    ci = res.confidence_interval(0.95)
    return float(ci.low), float(ci.high)


def test_paired_comparison_matches_ttest_rel() -> None:
    a = {0: 10.2, 1: 11.9, 2: 9.8, 3: 12.5, 4: 10.9}
    b = {0: 11.0, 1: 12.1, 2: 11.1, 3: 13.0, 4: 12.4, 9: 50.0}  # seed 9 is not shared
    c = compare(a, b)
    pa, pb = list(a.values()), [b[s] for s in a]
    ref = stats.ttest_rel(pa, pb)
    assert c.paired and c.method == "paired t" and c.n == 5
    assert c.diff == pytest.approx(np.mean(np.subtract(pa, pb)), rel=REL)
    assert c.p_value == pytest.approx(ref.pvalue, rel=REL)
    assert (c.low, c.high) == tuple(pytest.approx(v, rel=REL) for v in _ci(ref))
    assert c.effect_size == pytest.approx(cohens_dz(np.subtract(pa, pb)), rel=REL)
    assert c.ratio == pytest.approx(np.mean(pa) / np.mean(pb), rel=REL)
    assert not c.tied  # every seed of a is lower: the interval excludes 0


def test_unpaired_comparison_matches_welch() -> None:
    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 13.5}
    b = {10: 14.0, 11: 17.0, 12: 15.5}
    c = compare(a, b, confidence=0.95)
    ref = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert not c.paired and c.method == "Welch t" and c.n == 7
    assert c.p_value == pytest.approx(ref.pvalue, rel=REL)
    assert (c.low, c.high) == tuple(pytest.approx(v, rel=REL) for v in _ci(ref))
    assert c.effect_size == pytest.approx(hedges_g(list(a.values()), list(b.values())))
    # the tie rule for t intervals: "interval contains 0" is "p >= 1 - confidence"
    assert c.tied == (c.p_value >= 0.05) == (c.low <= 0 <= c.high)


def test_constant_side_uses_one_sample_t() -> None:
    det = {0: 100.0}
    other = {0: 104.0, 1: 96.0, 2: 110.0, 3: 101.0}
    c = compare(det, other, deterministic=(True, False))
    ref = stats.ttest_1samp(list(other.values()), 100.0)
    lo, hi = _ci(ref)
    assert c.method == "one-sample t"
    assert c.diff == pytest.approx(100.0 - np.mean(list(other.values())), rel=REL)
    # the CI of (constant - mean) is the negated CI of the mean minus the constant
    assert (c.low, c.high) == (pytest.approx(100.0 - hi, rel=REL),
                               pytest.approx(100.0 - lo, rel=REL))
    assert c.p_value == pytest.approx(ref.pvalue, rel=REL) and c.tied


def test_tie_rule() -> None:
    # overlapping seed distributions: tied; a clear effect: not
    noisy_a = {0: 300.0, 1: 420.0, 2: 350.0}
    noisy_b = {0: 330.0, 1: 380.0, 2: 410.0}
    assert compare(noisy_a, noisy_b).tied
    assert not compare({0: 100.0, 1: 104.0, 2: 98.0}, {0: 300.0, 1: 330.0, 2: 310.0}).tied
    # a difference below the measurement resolution is a tie even when it is consistent
    shifted = {s: v + 5 for s, v in noisy_a.items()}
    assert compare(noisy_a, shifted).method == "exact"
    assert not compare(noisy_a, shifted).tied and compare(noisy_a, shifted, resolution=10).tied
    # deterministic arms: exact comparison within the resolution
    exact = compare({0: 132.0}, {0: 96.0}, deterministic=True, resolution=4)
    assert (exact.method, exact.tied, exact.diff) == ("exact", False, 36.0)
    assert compare({0: 132.0}, {0: 130.0}, deterministic=True, resolution=4).tied
    # one non-deterministic run each: the seed noise is unknown, nothing is claimed
    one = compare({0: 100.0}, {0: 200.0})
    assert (one.method, one.tied) == ("one run each", True)
    # no values on a side: nothing to compare, and not reported as tied
    assert compare({}, {0: 1.0}).method == "no data" and not compare({}, {0: 1.0}).tied


def test_prediction_interval_for_a_single_run() -> None:
    sample = {0: 10.0, 1: 12.0, 2: 11.0, 3: 13.0}
    c = compare({7: 30.0}, sample)
    x = np.asarray(list(sample.values()))
    se = x.std(ddof=1) * math.sqrt(1 + 1 / len(x))
    half = stats.t.ppf(0.975, len(x) - 1) * se
    assert c.method == "prediction t"
    assert c.diff == pytest.approx(30.0 - x.mean(), rel=REL)
    assert c.high - c.diff == pytest.approx(half, rel=REL) and not c.tied


def test_censored_values() -> None:
    reached = {0: 100.0, 1: 110.0, 2: 105.0}
    never = {0: INF, 1: INF, 2: INF}
    # without a horizon only ranks are known: three pairs cannot reject at 5% (sign test p =
    # 2 * 1/8 = 0.25), so this is a tie, honestly
    rank = compare(reached, never)
    assert rank.method == "sign test" and rank.p_value == pytest.approx(0.25) and rank.tied
    assert compare(reached, {5: INF, 6: INF, 7: INF}).method == "Mann-Whitney U"
    # with the budget as horizon (restricted means) the never-reaching arm counts as 1000
    c = compare(reached, never, horizon=1000.0)
    assert c.method == "paired t" and not c.tied
    assert c.diff == pytest.approx(105.0 - 1000.0, rel=REL)
    # one seed of three missing on each side, differently: the data cannot separate them
    assert compare({0: 100.0, 1: 120.0, 2: INF}, {0: 500.0, 1: INF, 2: 110.0},
                   horizon=1000.0).tied


def test_comparison_is_antisymmetric() -> None:
    a = {0: 10.0, 1: 12.0, 2: 11.5}
    b = {0: 13.0, 1: 12.5, 2: 14.0}
    ab, ba = compare(a, b), compare(b, a)
    assert isinstance(ab, Comparison) and isinstance(interval([1.0, 2.0]), Interval)
    assert ab.diff == pytest.approx(-ba.diff, rel=REL)
    assert (ab.low, ab.high) == (pytest.approx(-ba.high, rel=REL),
                                 pytest.approx(-ba.low, rel=REL))
    assert ab.p_value == pytest.approx(ba.p_value, rel=REL) and ab.tied == ba.tied
