"""The shared pieces of the second-order methods: line searches and truncated CG."""

from __future__ import annotations

import math

import pytest
import torch

from optimlab.krylov import truncated_cg
from optimlab.linesearch import backtracking_armijo, cubic_minimizer, strong_wolfe


# ----- cubic interpolation -----------------------------------------------------------------------
@pytest.mark.parametrize(("t1", "t2"), [(0.0, 3.0), (3.0, 0.0), (-1.0, 0.5)])
def test_cubic_minimizer_is_exact_on_a_cubic(t1: float, t2: float) -> None:
    """c(t) = (t - 1)^3 / 3 - (t - 1) + 2 has its local minimizer at t = 2; two points and
    slopes determine the cubic, so eq. 3.59 returns 2 (clamped to the interval)."""
    def c(t: float) -> float:
        return (t - 1) ** 3 / 3 - (t - 1) + 2

    def dc(t: float) -> float:
        return (t - 1) ** 2 - 1

    got = cubic_minimizer(t1, c(t1), dc(t1), t2, c(t2), dc(t2))
    assert got == pytest.approx(min(max(2.0, min(t1, t2)), max(t1, t2)), abs=1e-12)


def test_cubic_minimizer_without_a_minimum_or_interval_returns_the_midpoint() -> None:
    # c(t) = t^3 through (0, 0) and (1, 1), slopes 0 and 3: the inflection point 0 is the
    # cubic's only stationary point (d1^2 - s1 s2 = 0), returned as the minimizer.
    assert cubic_minimizer(0.0, 0.0, 0.0, 1.0, 1.0, 3.0) == pytest.approx(0.0)
    # Slopes 1 and 1 with f rising by 2/3: d1 = 2 - 3 (2/3) = 0 < s1 s2, no real stationary
    # point: the midpoint of the bounds.
    assert cubic_minimizer(0.0, 0.0, 1.0, 1.0, 2 / 3, 1.0, low=0.0, high=4.0) == 2.0
    assert cubic_minimizer(1.0, 0.0, -1.0, 1.0, 0.0, -1.0) == 1.0


# ----- backtracking Armijo -----------------------------------------------------------------------
def test_armijo_accepts_the_first_sufficient_decrease() -> None:
    """phi(t) = (t - 0.1)^2 from slope -0.2: t = 1 and 0.5 fail the test (c1 = 1e-4),
    t = 0.25 gives 0.0225 <= 0.01 - 1e-4 * 0.25 * 0.2? no; 0.125 gives 0.000625: accepted."""
    trials = []

    def phi(t: float) -> float:
        trials.append(t)
        return (t - 0.1) ** 2

    result = backtracking_armijo(phi, 0.01, -0.2)
    assert result.success and trials == [1.0, 0.5, 0.25, 0.125] and result.t == 0.125
    assert result.evaluations == 4 and result.value == pytest.approx(0.000625)


def test_armijo_treats_non_finite_values_as_too_long() -> None:
    result = backtracking_armijo(lambda t: math.inf if t > 0.3 else -t, 0.0, -1.0)
    assert result.success and result.t == 0.25


def test_armijo_with_negative_curvature_at_zero_slope_needs_a_real_decrease() -> None:
    """At a saddle (slope 0, d'Hd = -2) the test asks f(t) <= f0 - c1 t^2 (with c1 = 1e-4):
    a flat phi never passes, a decreasing one does."""
    assert not backtracking_armijo(lambda t: 0.0, 0.0, 0.0, curvature=-2.0).success
    result = backtracking_armijo(lambda t: -t * t, 0.0, 0.0, curvature=-2.0)
    assert result.success and result.t == 1.0


def test_armijo_noise_allows_rounding_level_increases_only() -> None:
    assert backtracking_armijo(lambda t: 1e-17, 0.0, -1e-20, noise=2e-17).t == 1.0
    result = backtracking_armijo(lambda t: 1e-3, 0.0, -1e-20, noise=2e-17, max_evaluations=5)
    assert not result.success and result.t == 0.0 and result.evaluations == 5


@pytest.mark.parametrize("kwargs", [{"c1": 0.0}, {"shrink": 1.0}, {"t0": 0.0},
                                    {"noise": -1.0}])
def test_armijo_refuses_bad_constants(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        backtracking_armijo(lambda t: 0.0, 0.0, -1.0, **kwargs)
    with pytest.raises(ValueError, match="descent"):
        backtracking_armijo(lambda t: 0.0, 0.0, 1.0)


# ----- strong Wolfe ------------------------------------------------------------------------------
@pytest.mark.parametrize("t0", [1e-4, 0.3, 1.0, 50.0])
def test_strong_wolfe_result_satisfies_both_conditions(t0: float) -> None:
    """phi(t) = -t e^{-t/2} + t^2 / 20: phi'(0) = -1; trials from far too short (extrapolation)
    and far too long (zoom) both end on a step satisfying N&W eq. 3.7."""
    def phi(t: float) -> tuple[float, float, None]:
        return (-t * math.exp(-t / 2) + t * t / 20,
                -math.exp(-t / 2) + t / 2 * math.exp(-t / 2) + t / 10, None)

    c1, c2 = 1e-4, 0.9
    result = strong_wolfe(phi, 0.0, -1.0, t0=t0, c1=c1, c2=c2)
    f, s, _ = phi(result.t)
    assert result.success
    assert f <= c1 * result.t * -1.0 and abs(s) <= c2
    assert result.value == f and result.slope == s


def test_strong_wolfe_returns_the_payload_of_the_accepted_step() -> None:
    def phi(t: float) -> tuple[float, float, str]:
        return (t - 1) ** 2, 2 * (t - 1), f"at {t}"

    result = strong_wolfe(phi, 1.0, -2.0, "start", t0=1.0)
    assert result.success and result.t == 1.0 and result.payload == "at 1.0"
    assert result.evaluations == 1


def test_strong_wolfe_stops_on_a_bracket_below_tolerance_change() -> None:
    """The first trial t = 1 rises (f = 1 > f0): the bracket is [0, 1], of width 1; times
    ``direction_scale`` 3 it is under tolerance_change 4, so the search stops at once on the
    bracket's lower end, t = 0, unsuccessful."""
    def phi(t: float) -> tuple[float, float, None]:
        return (-t, -1.0, None) if t < 1e-3 else (1.0, 1.0, None)

    result = strong_wolfe(phi, 0.0, -1.0, t0=1.0, tolerance_change=4.0, direction_scale=3.0)
    assert not result.success and result.t == 0.0 and result.evaluations == 1
    zoomed = strong_wolfe(phi, 0.0, -1.0, t0=1.0, tolerance_change=1e-6)
    assert not zoomed.success and 0 < zoomed.t < 1e-3 and zoomed.evaluations == 26


# ----- truncated CG ------------------------------------------------------------------------------
def spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T + n * torch.eye(n, dtype=torch.float64)


def test_cg_solves_a_positive_definite_system_in_n_products() -> None:
    """CG terminates in at most n iterations in exact arithmetic (N&W Theorem 5.2); with a
    well-conditioned H (eigenvalues in [n, ~5n]) float64 roundoff leaves a residual far below
    1e-10 ||g||."""
    h = spd(8)
    g = torch.arange(1.0, 9.0, dtype=torch.float64)
    result = truncated_cg(lambda v: h @ v, g, tolerance=1e-10 * float(g.norm()),
                          max_iterations=8)
    assert torch.allclose(h @ result.direction, -g, atol=1e-9)
    assert result.hvps == result.iterations <= 8 and not result.negative_curvature


def test_cg_returns_minus_g_on_immediate_negative_curvature() -> None:
    h = torch.diag(torch.tensor([-1.0, 2.0], dtype=torch.float64))
    g = torch.tensor([1.0, 0.0], dtype=torch.float64)
    result = truncated_cg(lambda v: h @ v, g, tolerance=1e-12, max_iterations=5)
    assert result.negative_curvature and torch.equal(result.direction, -g)
    assert result.hvps == 1


def test_cg_keeps_its_iterate_when_later_curvature_is_negative() -> None:
    """H = diag(1, -1), g = (1, 1): d0 = -g has d'Hd = 0 -> nonpositive at once; with
    g = (1, 0.1): d0'Hd0 = 0.99 > 0, then the next direction has negative curvature and the
    first iterate (a descent direction) is returned."""
    h = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    g = torch.tensor([1.0, 0.1], dtype=torch.float64)
    result = truncated_cg(lambda v: h @ v, g, tolerance=1e-12, max_iterations=5)
    assert result.negative_curvature and result.iterations == 2
    assert float(g.dot(result.direction)) < 0


def test_steihaug_stops_on_the_trust_region_boundary() -> None:
    h = spd(5)
    g = torch.ones(5, dtype=torch.float64) * 100
    result = truncated_cg(lambda v: h @ v, g, tolerance=1e-12, max_iterations=5, radius=0.1)
    assert result.on_boundary and float(result.direction.norm()) == pytest.approx(0.1)
    assert float(g.dot(result.direction)) < 0
    neg = truncated_cg(lambda v: -v, g, tolerance=1e-12, max_iterations=5, radius=2.0)
    assert neg.on_boundary and neg.negative_curvature
    assert float(neg.direction.norm()) == pytest.approx(2.0)
