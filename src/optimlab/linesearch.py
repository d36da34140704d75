"""Line searches along a direction: backtracking Armijo and strong Wolfe.

Both search a step length ``t > 0`` for ``phi(t) = f(x + t * d)`` given ``phi(0) = f0`` and the
slope ``phi'(0) = g . d < 0`` (Nocedal & Wright, *Numerical Optimization*, 2nd ed. 2006,
chapter 3). They know nothing of parameters or closures: the caller passes ``phi`` as a
function of ``t`` (and, for strong Wolfe, of its slope), so any optimizer that moves along a
direction (Newton-type methods today; a line-searched first-order rule or SAM's ascent step
later) can reuse them.

* :func:`backtracking_armijo`: N&W Algorithm 3.1. Accepts the first ``t = t0 * shrink**k`` with
  ``phi(t) <= f0 + c1 * (t * slope + t**2 / 2 * min(curvature, 0))``: the Armijo sufficient
  decrease condition (N&W eq. 3.4), with the second-order term of Moré & Sorensen (1979) when
  the direction has negative curvature ``curvature = d' H d < 0`` (so a step along a direction
  of negative curvature at a zero slope is accepted only when it decreases ``f`` by a
  curvature-proportional amount). A non-finite ``phi(t)`` counts as too long a step.
  Both searches take an optional ``noise``: the loss's rounding error, allowed in the
  sufficient-decrease test so that steps whose decrease is below the loss's resolution (near an
  optimum) are not refused on rounding alone.
* :func:`strong_wolfe`: N&W Algorithms 3.5 (bracketing) and 3.6 (zoom), with the safeguarded
  cubic interpolation of N&W eq. 3.59. Accepts ``t`` with ``phi(t) <= f0 + c1 * t * slope`` and
  ``|phi'(t)| <= c2 * |slope|`` (N&W eq. 3.7). Its trial points are the ones
  ``torch.optim.LBFGS(line_search_fn="strong_wolfe")`` evaluates, so :class:`optimlab.LBFGS`
  reproduces that optimizer's iterates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LineSearchResult", "backtracking_armijo", "cubic_minimizer", "strong_wolfe"]


@dataclass
class LineSearchResult:
    """The outcome of a line search.

    Attributes:
        t: the accepted step length (the best point seen when ``success`` is False).
        value: ``phi(t)``.
        slope: ``phi'(t)`` (None for searches that do not evaluate it).
        payload: what ``phi`` returned with the value at ``t`` (e.g. the gradient), or None.
        evaluations: calls of ``phi``.
        success: whether ``t`` satisfies the search's conditions.
    """

    t: float
    value: float
    slope: float | None
    payload: Any
    evaluations: int
    success: bool


def backtracking_armijo(phi: Callable[[float], float], f0: float, slope: float, *,
                        t0: float = 1.0, c1: float = 1e-4, shrink: float = 0.5,
                        curvature: float = 0.0, noise: float = 0.0,
                        max_evaluations: int = 40) -> LineSearchResult:
    """Backtrack from ``t0`` until the Armijo condition holds (N&W Algorithm 3.1).

    Accepts the first ``t = t0 * shrink**k`` (k = 0, 1, ...) with
    ``phi(t) <= f0 + c1 * (t * slope + t**2 / 2 * min(curvature, 0)) + noise``; ``phi(t)`` inf
    or NaN counts as a failure of the condition. ``noise`` (>= 0) is the rounding error of
    evaluating ``f``: it lets a step whose predicted decrease is below the resolution of ``f``
    through (as the approximate Wolfe conditions of Hager & Zhang 2005 do), instead of
    backtracking on rounding noise. ``slope`` must be <= 0; with ``slope == 0`` and
    ``curvature >= 0`` only a decrease can be accepted (the condition then reads
    ``phi(t) <= f0``, which a step of length zero would meet: such a search fails unless ``f``
    strictly decreases).

    Args:
        phi: ``t -> f(x + t * d)``.
        f0: ``phi(0)``.
        slope: ``phi'(0) = g . d``.
        t0: first trial step.
        c1: sufficient-decrease constant, in (0, 1).
        shrink: factor applied to ``t`` after each rejected trial, in (0, 1).
        curvature: ``d' H d`` (only its negative part is used).
        noise: the absolute error of ``phi``'s values.
        max_evaluations: calls of ``phi`` before giving up (``success`` False; ``t`` is then
            the best trial seen, or 0 when none decreased ``f``).
    """
    if slope > 0 or not math.isfinite(slope):
        raise ValueError(f"backtracking_armijo needs a descent direction (slope {slope} > 0)")
    if not 0 < c1 < 1 or not 0 < shrink < 1 or not t0 > 0 or not noise >= 0:
        raise ValueError(f"backtracking_armijo: need 0 < c1 < 1, 0 < shrink < 1, t0 > 0 "
                         f"and noise >= 0 (got c1={c1}, shrink={shrink}, t0={t0}, noise={noise})")
    negative_curvature = min(curvature, 0.0)
    strict = slope == 0 and negative_curvature == 0 and noise == 0
    best_t, best_f = 0.0, f0
    t = t0
    for k in range(1, max_evaluations + 1):
        f = phi(t)
        if math.isfinite(f):
            bound = f0 + c1 * (t * slope + 0.5 * t * t * negative_curvature) + noise
            if f < bound or (f == bound and not strict):
                return LineSearchResult(t, f, None, None, k, True)
            if f < best_f:
                best_t, best_f = t, f
        t *= shrink
    return LineSearchResult(best_t, best_f, None, None, max_evaluations, False)


def cubic_minimizer(t1: float, f1: float, s1: float, t2: float, f2: float, s2: float,
                    low: float | None = None, high: float | None = None) -> float:
    """The minimizer of the cubic through ``(t1, f1)``, ``(t2, f2)`` with slopes ``s1``, ``s2``,
    clamped to ``[low, high]`` (default: the interval between ``t1`` and ``t2``).

    N&W eq. 3.59: with ``d1 = s1 + s2 - 3 (f1 - f2) / (t1 - t2)`` and
    ``d2 = sign(t2 - t1) sqrt(d1**2 - s1 s2)``, the minimizer is
    ``t2 - (t2 - t1) (s2 + d2 - d1) / (s2 - s1 + 2 d2)``. When the cubic has no minimizer
    (``d1**2 < s1 s2``) the midpoint of ``[low, high]`` is returned.
    """
    if low is None or high is None:
        low, high = min(t1, t2), max(t1, t2)
    if t1 == t2:  # a collapsed interval: no cubic through it
        return min(max(t1, low), high)
    d1 = s1 + s2 - 3 * (f1 - f2) / (t1 - t2)
    discriminant = d1 * d1 - s1 * s2
    if not discriminant >= 0:  # also NaN
        return (low + high) / 2
    d2 = math.sqrt(discriminant)
    # Written from the left end of the interval so that the formula is the same for t1 < t2
    # and t1 > t2 (d2's sign then folds into which end is "left").
    if t1 <= t2:
        t = t2 - (t2 - t1) * ((s2 + d2 - d1) / (s2 - s1 + 2 * d2))
    else:
        t = t1 - (t1 - t2) * ((s1 + d2 - d1) / (s1 - s2 + 2 * d2))
    if not math.isfinite(t):
        return (low + high) / 2
    return min(max(t, low), high)


@dataclass
class _Point:
    """One trial of a strong Wolfe search: step, value, slope and what ``phi`` returned."""

    t: float
    f: float
    s: float
    payload: Any


def strong_wolfe(phi: Callable[[float], tuple[float, float, Any]], f0: float, slope: float,
                 payload0: Any = None, *, t0: float = 1.0, c1: float = 1e-4, c2: float = 0.9,
                 tolerance_change: float = 1e-9, direction_scale: float = 1.0,
                 noise: float = 0.0, max_iterations: int = 25) -> LineSearchResult:
    """A step satisfying the strong Wolfe conditions (N&W Algorithms 3.5 and 3.6).

    Bracketing (Algorithm 3.5): trial steps grow from ``t0`` by safeguarded cubic extrapolation
    (the cubic's minimizer through the last two trials, clamped to
    ``[t + 0.01 (t - t_prev), 10 t]``) until a trial satisfies both conditions (accepted), or
    violates sufficient decrease or does not decrease ``f`` below the previous trial, or has a
    nonnegative slope: the interval between the last two trials then contains acceptable steps.
    Zoom (Algorithm 3.6): the cubic minimizer inside the bracket (moved to 10% of the bracket
    from its nearer end when it falls too close to an end twice in a row, or outside it), which
    replaces the end it dominates, until a trial is accepted, the bracket is shorter than
    ``tolerance_change / direction_scale``, or ``max_iterations`` trials follow the first.

    Args:
        phi: ``t -> (f(x + t d), g(x + t d) . d, payload)``; the payload (e.g. the gradient) is
            returned with the accepted step.
        f0, slope, payload0: ``phi(0)``, ``phi'(0) < 0`` and the payload at ``t = 0``.
        t0: first trial step.
        c1, c2: the Wolfe constants, ``0 < c1 < c2 < 1``.
        tolerance_change: the search stops when the bracket times ``direction_scale`` (the
            direction's largest absolute entry) is below it.
        noise: the absolute error of ``phi``'s values, allowed in the sufficient-decrease test
            (``phi(t) <= f0 + c1 t slope + noise``, as :func:`backtracking_armijo`); 0 gives
            torch's search exactly.
        max_iterations: trials after the first (``phi`` is called ``max_iterations + 1`` times
            at most).

    Returns:
        the accepted step; ``success`` is False when the search stopped on ``tolerance_change``
        or ``max_iterations`` (``t`` is then the lowest point of the final bracket).
    """
    if not 0 < c1 < c2 < 1 or not noise >= 0:
        raise ValueError(f"strong_wolfe needs 0 < c1 < c2 < 1 and noise >= 0 (got c1={c1}, "
                         f"c2={c2}, noise={noise})")
    origin = _Point(0.0, f0, slope, payload0)

    def sufficient(p: _Point) -> bool:
        return p.f <= f0 + c1 * p.t * slope + noise

    def curvature(p: _Point) -> bool:
        return abs(p.s) <= -c2 * slope

    def trial(t: float) -> _Point:
        f, s, payload = phi(t)
        return _Point(t, f, s, payload)

    # Bracketing phase (N&W Algorithm 3.5). ``iterations`` counts the trials after the first.
    prev, cur = origin, trial(t0)
    iterations = 0
    bracket: list[_Point] | None = None
    while iterations < max_iterations:
        if not sufficient(cur) or (iterations > 1 and cur.f >= prev.f):
            bracket = [prev, cur]
            break
        if curvature(cur):
            return LineSearchResult(cur.t, cur.f, cur.s, cur.payload, iterations + 1, True)
        if cur.s >= 0:
            bracket = [prev, cur]
            break
        t_next = cubic_minimizer(prev.t, prev.f, prev.s, cur.t, cur.f, cur.s,
                                 low=cur.t + 0.01 * (cur.t - prev.t), high=10 * cur.t)
        prev, cur = cur, trial(t_next)
        iterations += 1
    if bracket is None:  # out of trials while still extending
        bracket = [origin, cur]

    # Zoom phase (N&W Algorithm 3.6). ``bracket[low]`` is the end with the lower value.
    low, high = (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)
    near_end_before = False
    while iterations < max_iterations:
        a, b = bracket[0].t, bracket[1].t
        if abs(b - a) * direction_scale < tolerance_change:
            break
        t = cubic_minimizer(a, bracket[0].f, bracket[0].s, b, bracket[1].f, bracket[1].s)
        left, right = min(a, b), max(a, b)
        margin = 0.1 * (right - left)
        # Safeguard: a trial too close to an end makes little progress; the second time in a
        # row (or at once when it lies outside) move it to 10% of the bracket from that end.
        if min(right - t, t - left) < margin:
            if near_end_before or t >= right or t <= left:
                t = right - margin if abs(t - right) < abs(t - left) else left + margin
                near_end_before = False
            else:
                near_end_before = True
        else:
            near_end_before = False
        new = trial(t)
        iterations += 1
        if not sufficient(new) or new.f >= bracket[low].f:
            bracket[high] = new
            low, high = (0, 1) if bracket[0].f <= bracket[1].f else (1, 0)
            continue
        if curvature(new):
            return LineSearchResult(new.t, new.f, new.s, new.payload, iterations + 1, True)
        if new.s * (bracket[high].t - bracket[low].t) >= 0:
            bracket[high] = bracket[low]
        bracket[low] = new
    best = bracket[low]
    return LineSearchResult(best.t, best.f, best.s, best.payload, iterations + 1, False)
