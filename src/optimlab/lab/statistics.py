"""Statistics over seeds: confidence intervals, comparisons, effect sizes and the tie rule.

Plain numbers in, plain numbers out: nothing here knows what a run record is (the report's
:mod:`optimlab.lab.report.stats` and the advisor feed it per-seed values). Every statistic
comes from :mod:`scipy.stats` where scipy has it; the formulas are stated where they are
used.

Conventions:

* a value of ``+inf`` is *censored*: the run did not reach the target (never settled, diverged
  or failed), so its true value is larger than anything measured;
* ``NaN`` (or ``None``, or ``-inf``) is *missing* and dropped;
* a side is *constant* when it was declared deterministic (the seed changes nothing) or when
  it holds at least two values that are all equal: its value is then known exactly, with no
  seed noise.

The tie rule (:func:`compare`): two arms are **tied** when the confidence interval of their
difference contains 0 (for a t interval this is the same as ``p >= 1 - confidence``), or when
the difference is within the measurement ``resolution`` (e.g. the spacing of the evaluation
grid for steps to target), or, for two constant sides, when they are equal within that
resolution. Without any estimate of the seed noise (one non-deterministic run per side) the
arms are tied: nothing separates them from noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import special, stats

__all__ = [
    "DEFAULT_CONFIDENCE",
    "Comparison",
    "Interval",
    "cohens_dz",
    "compare",
    "hedges_g",
    "interval",
]

DEFAULT_CONFIDENCE = 0.95
INF = math.inf
NAN = math.nan

#: ``Interval.method`` values and what each means (shown in reports).
METHODS = {
    "t": "mean, Student-t interval",
    "order": "median, order-statistic interval (some seeds did not reach)",
    "single": "one run",
    "constant": "identical values",
    "deterministic": "deterministic (one seed)",
    "empty": "no values",
}


# ----------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """A point estimate over seeds with a confidence interval ``[low, high]``.

    Attributes:
        center: the mean (``method == "t"``), the median (``"order"``) or the value.
        low: lower bound (``== center`` when there is no spread to estimate).
        high: upper bound (``+inf`` when too many values are censored).
        n: number of values used (1 for a deterministic arm, whatever its seeds).
        method: one of :data:`METHODS` (``"t"``, ``"order"``, ``"single"``, ``"constant"``,
            ``"deterministic"``, ``"empty"``).
        confidence: the coverage: nominal for ``"t"``; the exact coverage of the chosen order
            statistics for ``"order"`` (below the nominal level when there are too few values
            to reach it, e.g. 0.75 for the range of three values).
        n_censored: values that were ``+inf`` (did not reach).

    ``float(interval)`` is its center, so an interval can stand where a number did.
    """

    center: float
    low: float
    high: float
    n: int
    method: str
    confidence: float = DEFAULT_CONFIDENCE
    n_censored: int = 0

    def __float__(self) -> float:
        return float(self.center)

    @property
    def is_point(self) -> bool:
        """Whether the interval is a single value (no spread was estimated)."""
        return self.method in ("single", "constant", "deterministic")

    def contains(self, value: float) -> bool:
        """Whether ``low <= value <= high``."""
        return bool(self.low <= value <= self.high)

    def format(self, fmt: Callable[[float], str] = lambda v: f"{v:.4g}") -> str:
        """``"412 [380, 450]"``; the value alone for a point; ``"-"`` when empty."""
        if self.n == 0 or math.isnan(self.center):
            return "-"
        if self.is_point or (self.low == self.high == self.center):
            return fmt(self.center)
        return f"{fmt(self.center)} [{fmt(self.low)}, {fmt(self.high)}]"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (non-finite floats stay floats; JSON-sanitize before dumping)."""
        return asdict(self)


def _values(values: Iterable[Any]) -> np.ndarray:
    """Finite or ``+inf`` floats of ``values``; NaN, ``None``, ``-inf`` and non-numbers
    dropped."""
    out = []
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(x) and x != -INF:
            out.append(x)
    return np.asarray(out, dtype=float)


def _median_bounds(x: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Distribution-free bounds for the median from the order statistics of ``x``.

    With ``x_(1) <= ... <= x_(n)`` and ``B ~ Binomial(n, 1/2)`` the number of values below the
    population median, ``P(x_(j) <= median <= x_(n-j+1)) = 1 - 2 P(B <= j - 1)``. ``j`` is the
    largest index whose coverage is at least ``confidence``; when even ``j = 1`` (the sample
    range) falls short, the range is used with its exact, lower coverage ``1 - 2^(1-n)``.
    Returns ``(low, high, coverage)``; censored (``+inf``) values sort last.
    """
    xs = np.sort(x)
    n = len(xs)
    j = 1
    while j + 1 <= n - j and 1 - 2 * stats.binom.cdf(j, n, 0.5) >= confidence:
        j += 1
    coverage = float(1 - 2 * stats.binom.cdf(j - 1, n, 0.5))
    return float(xs[j - 1]), float(xs[n - j]), coverage


def interval(values: Iterable[Any], confidence: float = DEFAULT_CONFIDENCE, *,
             deterministic: bool = False,
             support: tuple[float, float] = (-INF, INF)) -> Interval:
    """A confidence interval over seeds for ``values`` (one per seed).

    * no values: ``method="empty"``, NaN bounds;
    * ``deterministic`` (the seed changes nothing): the median value, ``n=1``, no spread;
    * some values ``+inf`` (censored, did not reach): the **median** (``+inf`` when at least
      half are censored) with the order-statistic bounds of :func:`_median_bounds`; the high
      bound is ``+inf`` when it falls on a censored value;
    * one value, or all values equal: that value, ``low == high``;
    * otherwise the **mean** with the Student-t interval
      ``mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n)``, ``s`` the sample standard
      deviation (ddof=1), computed by :func:`scipy.stats.t.interval`, intersected with
      ``support``, the values the quantity can take (an accuracy's ``(0, 1)``, a count's
      ``(0, inf)``): the true mean lies in the support, so the intersection keeps the
      interval's coverage and never shows an impossible bound (accuracy 1.02, -3 steps).

    NaN, ``None`` and ``-inf`` are dropped (missing, not censored).
    """
    x = _values(values)
    n = len(x)
    if n == 0:
        return Interval(NAN, NAN, NAN, 0, "empty", confidence)
    censored = int(np.sum(np.isinf(x)))
    if deterministic:
        c = float(np.median(x))
        return Interval(c, c, c, 1, "deterministic", confidence, censored)
    if censored:
        center = float(np.median(x))  # +inf when a middle value is censored
        low, high, coverage = _median_bounds(x, confidence)
        return Interval(center, low, high, n, "order", coverage, censored)
    if n == 1:
        return Interval(float(x[0]), float(x[0]), float(x[0]), 1, "single", confidence)
    if np.all(x == x[0]):
        c = float(x[0])
        return Interval(c, c, c, n, "constant", confidence)
    mean = float(np.mean(x))
    sem = float(np.std(x, ddof=1)) / math.sqrt(n)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    low, high = max(float(low), support[0]), min(float(high), support[1])
    return Interval(mean, low, high, n, "t", confidence)


# ----------------------------------------------------------------------------- effect sizes


def cohens_dz(differences: Iterable[float]) -> float:
    """Cohen's ``d_z = mean(d) / sd(d)`` of paired differences ``d`` (sd with ddof=1).

    ``+-inf`` when the differences are all equal and non-zero (an exact shift), 0 when they
    are all zero, NaN for fewer than two differences.
    """
    d = _values(differences)
    if len(d) < 2 or np.any(np.isinf(d)):
        return NAN
    mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    if sd == 0:
        return 0.0 if mean == 0 else math.copysign(INF, mean)
    return mean / sd


def hedges_g(a: Iterable[float], b: Iterable[float]) -> float:
    """Hedges' ``g = J * (mean(a) - mean(b)) / s_p`` of two independent samples.

    ``s_p = sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2))`` is the pooled
    standard deviation and ``J = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2))``, ``m = n_a + n_b -
    2``, the exact small-sample bias correction (Hedges, 1981). ``+-inf`` when neither sample
    has spread but the means differ, NaN when ``m < 2`` (``J`` undefined).
    """
    xa, xb = _values(a), _values(b)
    m = len(xa) + len(xb) - 2
    if m < 2 or len(xa) == 0 or len(xb) == 0 or np.any(np.isinf(xa)) or np.any(np.isinf(xb)):
        return NAN
    ss = (len(xa) - 1) * (np.var(xa, ddof=1) if len(xa) > 1 else 0.0) + \
        (len(xb) - 1) * (np.var(xb, ddof=1) if len(xb) > 1 else 0.0)
    sp = math.sqrt(float(ss) / m)
    diff = float(np.mean(xa) - np.mean(xb))
    if sp == 0:
        return 0.0 if diff == 0 else math.copysign(INF, diff)
    j = math.exp(special.gammaln(m / 2) - special.gammaln((m - 1) / 2)) / math.sqrt(m / 2)
    return j * diff / sp


# ----------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Comparison:
    """Arm ``a`` against arm ``b`` over seeds (see :func:`compare`).

    Attributes:
        diff: estimated ``a - b``: the mean paired difference (paired), the difference of the
            means (unpaired), the difference of the medians (rank tests, censored values).
        low: lower bound of the confidence interval of ``diff`` (NaN for rank tests).
        high: upper bound (NaN for rank tests).
        p_value: two-sided p-value of "no difference" (0 or 1 for exact comparisons).
        effect_size: Cohen's ``d_z`` (paired) or Hedges' ``g`` (unpaired), or Cohen's ``d``
            of the sample against a constant; NaN when undefined (rank tests, one run).
        paired: whether the values were paired by seed.
        n: pairs (paired) or values on both sides together.
        tied: the tie rule of the module docstring.
        ratio: ``mean(a) / mean(b)`` of the values compared (for work to target: ``a`` needs
            ``ratio`` times the work of ``b``); NaN when undefined.
        method: ``"paired t"``, ``"Welch t"``, ``"one-sample t"``, ``"prediction t"``,
            ``"exact"``, ``"sign test"``, ``"Mann-Whitney U"``, ``"one run each"`` or
            ``"no data"``.
        reason: the tie rule's verdict in words.
        resolution: the measurement resolution used by the tie rule.
        confidence: the confidence level of ``[low, high]``.
    """

    diff: float
    low: float
    high: float
    p_value: float
    effect_size: float
    paired: bool
    n: int
    tied: bool
    ratio: float = NAN
    method: str = ""
    reason: str = ""
    resolution: float = 0.0
    confidence: float = DEFAULT_CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (JSON-sanitize before dumping)."""
        return asdict(self)


def _clean(side: Mapping[Hashable, Any], horizon: float | None) -> dict[Hashable, float]:
    out = {}
    for seed, v in side.items():
        x = _values([v])
        if len(x):
            out[seed] = min(float(x[0]), horizon) if horizon is not None else float(x[0])
    return out


def _ratio(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 or len(b) == 0 or np.any(np.isinf(a)) or np.any(np.isinf(b)):
        return NAN
    mb = float(np.mean(b))
    return float(np.mean(a)) / mb if mb != 0 else NAN


def _t_result(diff: float, se: float, df: float, confidence: float) -> tuple[float, float, float]:
    """CI and two-sided p of ``diff`` with standard error ``se`` and ``df`` degrees of freedom
    (Student t)."""
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return diff - half, diff + half, p


def compare(a: Mapping[Hashable, Any], b: Mapping[Hashable, Any], *,
            confidence: float = DEFAULT_CONFIDENCE, resolution: float = 0.0,
            deterministic: bool | tuple[bool, bool] = (False, False),
            horizon: float | None = None) -> Comparison:
    """Compare arm ``a`` with arm ``b`` from their per-seed values (``seed -> value``).

    Which test (first that applies):

    1. either side empty: ``"no data"``, not tied;
    2. both sides constant (see the module docstring): ``"exact"``, ``diff = a - b`` with no
       interval;
    3. values ``+inf`` left (censored, and no ``horizon``): rank tests with no interval --
       the **sign test** (:func:`scipy.stats.binomtest` on the seeds where ``a < b`` among
       the shared seeds whose values differ) when at least two seeds are shared, otherwise
       the **Mann-Whitney U** test (:func:`scipy.stats.mannwhitneyu`); ``diff`` is the
       difference of the medians;
    4. at least two shared seeds: the **paired t** test on the differences ``d_s = a_s -
       b_s`` of the shared seeds (:func:`scipy.stats.ttest_rel`): ``diff = mean(d)``, CI
       ``diff +- t_{(1+c)/2, k-1} sd(d)/sqrt(k)``, effect size :func:`cohens_dz` (an exact
       shift when ``sd(d) = 0``);
    5. one side constant, the other with at least two values: the **one-sample t** test of
       the other side against the constant (:func:`scipy.stats.ttest_1samp`), effect size
       Cohen's ``d = diff / s``;
    6. at least two values each: **Welch's t** test (:func:`scipy.stats.ttest_ind` with
       ``equal_var=False``): ``diff = mean(a) - mean(b)``, ``se = sqrt(s_a^2/n_a +
       s_b^2/n_b)``, Welch-Satterthwaite degrees of freedom, effect size :func:`hedges_g`;
    7. one run against at least two: the **prediction t** interval for one new value,
       assuming the single run has the sample's variance: ``se = s sqrt(1 + 1/n)``, ``n - 1``
       degrees of freedom;
    8. otherwise (one non-deterministic run each): ``"one run each"``, tied -- the seed noise
       is unknown.

    Args:
        a, b: per-seed values; ``+inf`` = censored (did not reach), NaN/None = missing.
        confidence: level of the interval of the difference.
        resolution: measurement resolution of the values (e.g. eval-grid spacing): a
            difference of at most this much is a tie.
        deterministic: whether each side is deterministic (one bool for both).
        horizon: when given, every value above it (``+inf`` included) counts as ``horizon``:
            the comparison is then of restricted means ``E[min(X, horizon)]``, the usual
            treatment of right-censored times (restricted mean survival time), and the t
            tests apply.

    Returns:
        a :class:`Comparison` (``diff`` is ``a - b``: negative when ``a`` is smaller).
    """
    det = (deterministic, deterministic) if isinstance(deterministic, bool) else deterministic
    va, vb = _clean(a, horizon), _clean(b, horizon)
    xa, xb = np.asarray(list(va.values())), np.asarray(list(vb.values()))
    res = abs(float(resolution)) if resolution is not None else 0.0

    def out(diff: float, low: float, high: float, p: float, es: float, paired: bool, n: int,
            method: str, ratio: float) -> Comparison:
        if method == "one run each":
            tied, why = True, "one run each: seed noise unknown"
        elif abs(diff) <= res:
            tied, why = True, f"difference within the resolution {res:g}"
        elif method in ("sign test", "Mann-Whitney U"):
            tied = not p < 1 - confidence
            why = f"{method} p={p:.3g}" + (" >= " if tied else " < ") + f"{1 - confidence:g}"
        elif low <= 0 <= high:
            tied, why = True, f"{confidence:.0%} interval of the difference contains 0"
        else:
            tied, why = False, (f"exact difference beyond the resolution {res:g}"
                                if method == "exact"
                                else f"{confidence:.0%} interval of the difference excludes 0")
        return Comparison(diff, low, high, p, es, paired, n, tied, ratio, method, why, res,
                          confidence)

    if len(xa) == 0 or len(xb) == 0:
        return Comparison(NAN, NAN, NAN, NAN, NAN, False, len(xa) + len(xb), False, NAN,
                          "no data", "no values to compare", res, confidence)
    const_a = det[0] or (len(xa) >= 2 and bool(np.all(xa == xa[0])))
    const_b = det[1] or (len(xb) >= 2 and bool(np.all(xb == xb[0])))
    shared = [s for s in va if s in vb]
    censored = bool(np.any(np.isinf(xa)) or np.any(np.isinf(xb)))

    if const_a and const_b and not censored:
        ca, cb = float(np.median(xa)), float(np.median(xb))
        diff = ca - cb
        es = 0.0 if diff == 0 else math.copysign(INF, diff)
        return out(diff, diff, diff, float(diff == 0), es, False, 2, "exact",
                   ca / cb if cb != 0 else NAN)

    if censored:
        # medians are +inf when a middle value is censored; inf - inf is NaN (no estimate)
        diff = float(np.median(xa)) - float(np.median(xb))
        if len(shared) >= 2:
            d = np.asarray([va[s] - vb[s] if va[s] != vb[s] else 0.0 for s in shared])
            below, above = int(np.sum(d < 0)), int(np.sum(d > 0))
            p = (float(stats.binomtest(below, below + above, 0.5).pvalue)
                 if below + above else 1.0)
            return out(diff, NAN, NAN, p, NAN, True, len(shared), "sign test", NAN)
        p = float(stats.mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
        return out(diff, NAN, NAN, p, NAN, False, len(xa) + len(xb), "Mann-Whitney U", NAN)

    if len(shared) >= 2:
        pa = np.asarray([va[s] for s in shared])
        pb = np.asarray([vb[s] for s in shared])
        d = pa - pb
        diff, k = float(np.mean(d)), len(d)
        sd = float(np.std(d, ddof=1))
        if sd == 0:
            return out(diff, diff, diff, float(diff == 0), cohens_dz(d), True, k, "exact",
                       _ratio(pa, pb))
        low, high, _ = _t_result(diff, sd / math.sqrt(k), k - 1, confidence)
        p = float(stats.ttest_rel(pa, pb).pvalue)
        return out(diff, low, high, p, cohens_dz(d), True, k, "paired t", _ratio(pa, pb))

    if const_a != const_b:
        const, sample = (xa, xb) if const_a else (xb, xa)
        if len(sample) >= 2:
            c = float(np.median(const))
            sign = 1.0 if const_a else -1.0  # diff = a - b
            diff = sign * (c - float(np.mean(sample)))
            s = float(np.std(sample, ddof=1))
            low, high, _ = _t_result(diff, s / math.sqrt(len(sample)), len(sample) - 1,
                                     confidence)
            p = float(stats.ttest_1samp(sample, c).pvalue)
            return out(diff, low, high, p, diff / s, False, len(sample) + 1, "one-sample t",
                       _ratio(xa, xb))

    if len(xa) >= 2 and len(xb) >= 2:
        diff = float(np.mean(xa) - np.mean(xb))
        va_, vb_ = float(np.var(xa, ddof=1)), float(np.var(xb, ddof=1))
        se = math.sqrt(va_ / len(xa) + vb_ / len(xb))
        df = se ** 4 / ((va_ / len(xa)) ** 2 / (len(xa) - 1) + (vb_ / len(xb)) ** 2
                        / (len(xb) - 1))
        low, high, _ = _t_result(diff, se, df, confidence)
        p = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
        return out(diff, low, high, p, hedges_g(xa, xb), False, len(xa) + len(xb),
                   "Welch t", _ratio(xa, xb))

    if min(len(xa), len(xb)) == 1 and max(len(xa), len(xb)) >= 2 and not (const_a or const_b):
        one, sample = (xa, xb) if len(xa) == 1 else (xb, xa)
        sign = 1.0 if len(xa) == 1 else -1.0
        diff = sign * (float(one[0]) - float(np.mean(sample)))
        s = float(np.std(sample, ddof=1))
        se = s * math.sqrt(1 + 1 / len(sample))
        low, high, p = _t_result(diff, se, len(sample) - 1, confidence)
        return out(diff, low, high, p, diff / s, False, len(sample) + 1, "prediction t",
                   _ratio(xa, xb))

    diff = float(np.mean(xa) - np.mean(xb))
    return out(diff, NAN, NAN, NAN, NAN, False, len(xa) + len(xb), "one run each",
               _ratio(xa, xb))
