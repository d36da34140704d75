"""Newton, Newton-CG, BFGS and L-BFGS: convergence, SciPy's optima, torch's L-BFGS iterates,
Hessian-free Newton-CG, negative curvature, evaluation counts and bad input.

All problems are float64 and deterministic (``second_order_problems``).
"""

from __future__ import annotations

import itertools
import math
from functools import cache
from typing import Any

import numpy as np
import pytest
import scipy.optimize
import torch
from second_order_problems import (
    Problem,
    backward_closure,
    breast_cancer,
    diabetes,
    flat,
    grad_norm,
    least_squares,
    logistic_regression,
    rosenbrock,
    saddle,
)

import optimlab as ol

#: Optimizers whose closure calls backward() (torch's convention); Newton and NewtonCG's
#: closures return the loss and the optimizer differentiates it.
BACKWARD_CLOSURE = (ol.BFGS, ol.LBFGS)
ALL = [ol.Newton, ol.NewtonCG, ol.BFGS, ol.LBFGS]


def closure_for(opt: torch.optim.Optimizer, problem: Problem) -> Any:
    assert opt.closure_calls_backward == isinstance(opt, BACKWARD_CLOSURE)
    if opt.closure_calls_backward:
        return backward_closure(opt, problem.loss)
    return problem.loss


# ----- Newton: the acceptance criteria -----------------------------------------------------------
def newton_gradient_norms(problem: Problem, iterations: int) -> list[float]:
    """||g|| before each of ``iterations`` Newton iterations (and after the last)."""
    opt = ol.Newton(problem.params, tolerance_grad=0.0, tolerance_change=0.0)
    norms = [grad_norm(problem)]
    for _ in range(iterations):
        opt.step(problem.loss)
        norms.append(grad_norm(problem))
    return norms


@pytest.mark.parametrize("lam", [1e-2, 1.0])
def test_newton_logreg_reaches_gradient_norm_1e10_within_15_iterations(lam: float) -> None:
    norms = newton_gradient_norms(logistic_regression(lam), 15)
    first = next(k for k, n in enumerate(norms) if n < 1e-10)
    assert first <= 15, norms


def test_newton_converges_quadratically() -> None:
    """Near the optimum ||g_{k+1}|| <= C ||g_k||^2 (g ~ H e there, so the gradient norm shows
    the error's order). Newton's local bound is C = L_H / (2 mu) in the error (N&W Theorem
    3.5); on this problem C ~ 12 is observed. We require C <= 1000 on every pair in the
    quadratic phase (1e-14 < ||g_{k+1}||, ||g_k|| < 1e-2; below 1e-14 rounding dominates) and
    at least two such pairs: a linear rate r would give C = r / ||g_k|| >= 1e4 at
    ||g_k|| = 1e-6 for any r > 0.01."""
    norms = newton_gradient_norms(logistic_regression(1e-2), 12)
    pairs = [(a, b) for a, b in itertools.pairwise(norms) if a < 1e-2 and b > 1e-14]
    assert len(pairs) >= 2, norms
    for a, b in pairs:
        assert b <= 1e3 * a * a, (a, b, norms)


def test_newton_hessian_is_exact() -> None:
    """The batched double-backward Hessian equals torch.autograd.functional.hessian of the same
    loss (float64; both sum the same products in possibly another order: 1e-12 relative)."""
    problem = logistic_regression(1e-2)
    opt = ol.Newton(problem.params)
    _, _, grads = opt._loss_with_graph(problem.loss)
    ours = opt._hessian(grads)
    x, y = (torch.tensor(a) for a in breast_cancer())

    def loss(z: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.binary_cross_entropy_with_logits(x @ z[:-1] + z[-1], y)
                + 1e-2 / 2 * (z[:-1] @ z[:-1]))

    theirs = torch.autograd.functional.hessian(loss, flat(problem.params))
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    assert opt.step_evaluations.hvp == 31


def test_damped_newton_step_is_the_levenberg_marquardt_step() -> None:
    """On least squares (H positive definite, constant) one iteration with damping mu moves by
    -(H + mu I)^-1 g: the full step passes Armijo (f decreases by at least |g.d| / 2, since
    d'Hd <= -g.d), so t = 1. Checked against torch.linalg.solve (float64, 1e-12)."""
    problem = least_squares()
    x0 = flat(problem.params)
    g = torch.cat([v.reshape(-1) for v in torch.autograd.grad(problem.loss(), problem.params)])
    x, y = (torch.tensor(a) for a in diabetes())
    h = torch.autograd.functional.hessian(
        lambda z: 0.5 * ((x @ z[:-1] + z[-1] - y) ** 2).mean(), x0)
    mu = 0.3
    expected = x0 - torch.linalg.solve(h + mu * torch.eye(len(x0), dtype=h.dtype), g)
    ol.Newton(problem.params, damping=mu).step(problem.loss)
    assert torch.allclose(flat(problem.params), expected, rtol=1e-12, atol=1e-12)


# ----- BFGS / L-BFGS: superlinear convergence ----------------------------------------------------
def error_ratios(cls: type, problem: Problem, reference: torch.Tensor) -> list[float]:
    """e_{k+1} / e_k for e_k = ||x_k - x*||, one iteration per step, until e < 1e-7 (above the
    floor where f can no longer tell iterates apart: f - f* ~ mu e^2 / 2 < eps |f*|)."""
    opt = cls(problem.params, max_iter=1, tolerance_grad=0.0, tolerance_change=0.0,
              line_search_fn="strong_wolfe")
    closure = backward_closure(opt, problem.loss)
    errors = [float((flat(problem.params) - reference).norm())]
    for _ in range(200):
        opt.step(closure)
        errors.append(float((flat(problem.params) - reference).norm()))
        if errors[-1] < 1e-7:
            break
    assert errors[-1] < 1e-7, errors
    return [b / a for a, b in itertools.pairwise(errors)]


def newton_optimum(make: Any) -> torch.Tensor:
    problem = make()
    ol.Newton(problem.params, max_iter=50, tolerance_grad=1e-13).step(problem.loss)
    assert grad_norm(problem) < 1e-12
    return flat(problem.params)


@pytest.mark.parametrize("cls", [ol.BFGS, ol.LBFGS], ids=lambda c: c.__name__)
@pytest.mark.parametrize("make", [lambda: logistic_regression(1.0), least_squares],
                         ids=["logreg", "least-squares"])
def test_quasi_newton_converges_superlinearly(cls: type, make: Any) -> None:
    """Superlinear: e_{k+1}/e_k -> 0. We check that the contraction accelerates: the geometric
    mean of the ratios over the last third of the iterations is below 0.35 and under half that
    of the first third (observed: 0.09-0.24 against 0.78-0.95), whereas a linearly convergent
    method keeps a constant ratio near 1 - 1/cond (gradient descent here: > 0.9)."""
    ratios = error_ratios(cls, make(), newton_optimum(make))
    third = len(ratios) // 3

    def mean(v: list[float]) -> float:
        return math.exp(sum(math.log(r) for r in v) / len(v))

    first, last = mean(ratios[:third]), mean(ratios[-third:])
    assert last < 0.35 and last < first / 2, (first, last, ratios)


# ----- optima against SciPy ----------------------------------------------------------------------
PROBLEMS = {"logreg": lambda: logistic_regression(0.1), "least-squares": least_squares,
            "rosenbrock": rosenbrock}


@cache
def scipy_optima(name: str) -> dict[str, np.ndarray]:
    problem = PROBLEMS[name]()
    out = {}
    for method, options in (("BFGS", {"gtol": 1e-10, "maxiter": 2000}),
                            ("L-BFGS-B", {"gtol": 1e-12, "ftol": 1e-16, "maxiter": 2000}),
                            ("Newton-CG", {"xtol": 1e-12, "maxiter": 200})):
        hessp = problem.numpy_hessp if method == "Newton-CG" else None
        result = scipy.optimize.minimize(problem.numpy_fun, problem.x0, jac=True, hessp=hessp,
                                         method=method, options=options)
        out[method] = result.x
    return out


def converge(cls: type, problem: Problem) -> torch.Tensor:
    if cls in (ol.Newton, ol.NewtonCG):
        opt = cls(problem.params, max_iter=200, tolerance_grad=1e-12, tolerance_change=0.0)
    else:
        opt = cls(problem.params, max_iter=2000, max_eval=4000, tolerance_grad=1e-10,
                  tolerance_change=0.0, line_search_fn="strong_wolfe")
    opt.step(closure_for(opt, problem))
    return flat(problem.params)


@pytest.mark.parametrize("name", list(PROBLEMS))
@pytest.mark.parametrize("cls", [ol.Newton, ol.NewtonCG, ol.BFGS, ol.LBFGS],
                         ids=lambda c: c.__name__)
def test_optimum_matches_scipy(cls: type, name: str) -> None:
    """Each problem has a unique minimizer with Hessian eigenvalues >= mu there (logreg:
    mu >= lam = 0.1; least squares: the smallest eigenvalue of the standardized covariance,
    ~4e-3; Rosenbrock: ~0.4), so ||x - x*|| <= ||g(x)|| / mu. Ours stop at ||g|| <= 1e-10 or
    below; SciPy's at ||g|| <= ~2e-8 (Newton-CG, whose test is on the step's size, stops
    there on logreg; with lam = 1e-2 it stops at 8e-8, i.e. up to 8e-6 from x*, which is why
    lam is 0.1 here): within 2e-7 of x*, so the two agree to 1e-6."""
    ours = converge(cls, PROBLEMS[name]()).numpy()
    for method, theirs in scipy_optima(name).items():
        assert np.abs(ours - theirs).max() < 1e-6, (method, ours, theirs)


# ----- L-BFGS: torch.optim.LBFGS's twin ----------------------------------------------------------
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_matches_torch_lbfgs_iterates(line_search_fn: str | None) -> None:
    """Same formulas in the same order but for the two-loop recursion's ``q - a y`` (torch:
    ``q.add_(y, alpha=-a)``): a few roundings per iteration, 1e-16 relative, amplified at most
    by the problem's condition number (~1e3) over 30 iterations: far below 1e-6."""
    ours, theirs = logistic_regression(1e-2), logistic_regression(1e-2)
    kwargs = {"max_iter": 5, "history_size": 4, "line_search_fn": line_search_fn}
    a = ol.LBFGS(ours.params, **kwargs)
    b = torch.optim.LBFGS(theirs.params, **kwargs)
    ca, cb = backward_closure(a, ours.loss), backward_closure(b, theirs.loss)
    for _ in range(6):
        la, lb = a.step(ca), b.step(cb)
        assert abs(la.item() - lb.item()) < 1e-6
        assert (flat(ours.params) - flat(theirs.params)).abs().max() < 1e-6
        assert a.state[ours.params[0]]["func_evals"] == b.state[theirs.params[0]]["func_evals"]
        assert a.state[ours.params[0]]["n_iter"] == b.state[theirs.params[0]]["n_iter"]
    assert a.evaluations.function == b.state[theirs.params[0]]["func_evals"]


def test_lbfgs_state_dict_loads_into_torch_lbfgs_and_back() -> None:
    ours, theirs = logistic_regression(1e-2), logistic_regression(1e-2)
    kwargs = {"max_iter": 3, "line_search_fn": "strong_wolfe"}
    a = ol.LBFGS(ours.params, **kwargs)
    a.step(backward_closure(a, ours.loss))
    with torch.no_grad():
        for p, q in zip(theirs.params, ours.params):
            p.copy_(q)
    b = torch.optim.LBFGS(theirs.params, **kwargs)
    b.load_state_dict(a.state_dict())
    a.step(backward_closure(a, ours.loss))
    b.step(backward_closure(b, theirs.loss))
    assert (flat(ours.params) - flat(theirs.params)).abs().max() < 1e-12


# ----- Newton-CG: Hessian-free -------------------------------------------------------------------
def test_newton_cg_forms_no_hessian_and_counts_its_products(monkeypatch: Any) -> None:
    """Dense-Hessian entry points raise; every double-backward call is one vector product
    (no batched grad_outputs), and their number is the reported ``hvp`` count."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Newton-CG formed a dense Hessian")

    for module, name in ((torch.autograd.functional, "hessian"), (torch.func, "hessian"),
                         (torch.func, "jacrev"), (torch.func, "jacfwd"),
                         (torch.autograd.functional, "jacobian")):
        monkeypatch.setattr(module, name, forbidden)
    real_grad = torch.autograd.grad
    products = []

    def grad(outputs: Any, inputs: Any, grad_outputs: Any = None, **kwargs: Any) -> Any:
        assert not kwargs.get("is_grads_batched", False), "batched products form a Hessian"
        if grad_outputs is not None:
            products.append(1)
        return real_grad(outputs, inputs, grad_outputs=grad_outputs, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", grad)
    problem = logistic_regression(1e-2)
    opt = ol.NewtonCG(problem.params, max_iter=20, tolerance_grad=1e-10, tolerance_change=0.0)
    opt.step(problem.loss)
    assert grad_norm(problem) < 1e-9
    assert opt.step_evaluations.hvp == len(products) > 0
    assert opt.evaluations == opt.step_evaluations


@pytest.mark.slow
def test_newton_cg_trains_an_mlp_on_digits() -> None:
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 10))
    opt = ol.NewtonCG(model.parameters(), cg_max_iter=20)

    def closure() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x), y)

    first = closure().item()
    for _ in range(8):
        opt.step(closure)
    last = closure().item()
    # log(10) = 2.30 at a random start; 8 Newton-CG steps bring it well under a tenth of that.
    assert last < 0.1 * first, (first, last)
    assert opt.evaluations.hvp > 8 and opt.evaluations.gradient == 8


# ----- negative curvature ------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ol.Newton, ol.NewtonCG], ids=lambda c: c.__name__)
def test_rosenbrock_from_the_standard_start(cls: type) -> None:
    """The Hessian is indefinite on part of the path (the valley's walls): the damped and the
    truncated-CG directions stay descent directions and reach (1, 1)."""
    problem = rosenbrock()
    opt = cls(problem.params, max_iter=100, tolerance_grad=1e-12, tolerance_change=0.0)
    opt.step(problem.loss)
    assert (flat(problem.params) - torch.tensor([1.0, 1.0], dtype=torch.float64)).abs().max() < 1e-8


def test_newton_leaves_a_saddle_along_negative_curvature() -> None:
    """From (1, 0) the gradient never has a y component: pure Newton goes to the saddle (0, 0).
    The damped Newton step with its negative-curvature direction reaches a minimum (0, +-sqrt 2),
    f = -1; and started exactly at the saddle (g = 0) it still leaves."""
    for start in ((1.0, 0.0), (0.0, 0.0)):
        problem = saddle(start)
        opt = ol.Newton(problem.params, max_iter=50, tolerance_grad=1e-12, tolerance_change=0.0)
        opt.step(problem.loss)
        x, y = flat(problem.params).tolist()
        assert abs(x) < 1e-8 and abs(abs(y) - math.sqrt(2)) < 1e-8, (start, x, y)
        assert problem.loss().item() == pytest.approx(-1.0, abs=1e-12)


def test_newton_cg_takes_negative_curvature_as_descent() -> None:
    """Off the axis by 1e-3 the first CG direction (-g) has negative curvature (H = diag(2, -2)
    near y = 0): truncated CG returns -g, and the line search then finds a minimum."""
    problem = saddle((1.0, 1e-3))
    opt = ol.NewtonCG(problem.params, max_iter=100, tolerance_grad=1e-12, tolerance_change=0.0)
    opt.step(problem.loss)
    assert problem.loss().item() == pytest.approx(-1.0, abs=1e-12)


# ----- mini-batches -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_a_new_batch_per_step_with_one_batch_per_step_trains(cls: type) -> None:
    """The documented mini-batch use: each step's closure evaluates one fixed batch (its line
    search compares values of one loss), and the next step draws another. On logistic
    regression (batches of 128 of 569), 10 such steps bring the full-data loss from log 2 =
    0.693 well below 0.2 (the full-batch optimum is 0.0996)."""
    problem = logistic_regression(1e-2)
    w, b = problem.params
    xn, yn = breast_cancer()
    x, y = torch.tensor(xn), torch.tensor(yn)
    opt = cls(problem.params, max_iter=1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        rows = torch.randperm(len(y), generator=generator)[:128]

        def batch_loss(rows: torch.Tensor = rows) -> torch.Tensor:
            return (torch.nn.functional.binary_cross_entropy_with_logits(x[rows] @ w + b, y[rows])
                    + 1e-2 / 2 * (w @ w))

        closure = backward_closure(opt, batch_loss) if opt.closure_calls_backward else batch_loss
        opt.step(closure)
    assert problem.loss().item() < 0.2


# ----- evaluation counts -------------------------------------------------------------------------
def test_newton_counts_its_evaluations() -> None:
    problem = logistic_regression(1.0)
    opt = ol.Newton(problem.params)
    opt.step(problem.loss)
    n = 31
    # one loss with gradient, the Hessian as n products, and the line search's trials (t = 1 is
    # accepted at once on this convex problem).
    assert opt.step_evaluations == ol.Evaluations(function=2, gradient=1, hvp=n)
    opt.step(problem.loss)
    assert opt.evaluations == ol.Evaluations(function=4, gradient=2, hvp=2 * n)


def test_quasi_newton_counts_one_gradient_per_closure_call() -> None:
    problem = logistic_regression(1e-2)
    opt = ol.LBFGS(problem.params, line_search_fn="strong_wolfe")
    calls = []
    closure = backward_closure(opt, problem.loss)

    def counted() -> torch.Tensor:
        calls.append(1)
        return closure()

    opt.step(counted)
    assert opt.step_evaluations == ol.Evaluations(len(calls), len(calls), 0)


# ----- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_step_without_closure_is_refused(cls: type) -> None:
    problem = logistic_regression()
    opt = cls(problem.params)
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    assert flat(problem.params).abs().max() == 0


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_is_refused_and_changes_nothing(cls: type, bad: float) -> None:
    problem = logistic_regression()
    opt = cls(problem.params, max_iter=2)
    closure = closure_for(opt, problem)
    opt.step(closure)
    before, state = flat(problem.params), {k: v for k, v in opt.state[problem.params[0]].items()}

    def poisoned() -> torch.Tensor:
        return closure() * bad

    with pytest.raises(ol.NonFiniteLossError, match="non-finite"):
        opt.step(poisoned)
    assert torch.equal(flat(problem.params), before)
    assert opt.state[problem.params[0]].keys() == state.keys()
    assert all(opt.state[problem.params[0]][k] is v for k, v in state.items())


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_closure_failing_inside_the_line_search_changes_nothing(cls: type) -> None:
    problem = logistic_regression()
    opt = cls(problem.params, max_iter=3)
    closure = closure_for(opt, problem)
    calls = []

    def failing() -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("data loader broke")
        return closure()

    with pytest.raises(RuntimeError, match="data loader broke"):
        opt.step(failing)
    assert flat(problem.params).abs().max() == 0
    assert opt.evaluations == ol.Evaluations()
    assert "n_iter" not in opt.state[problem.params[0]]


def test_newton_refuses_large_models_and_suggests_newton_cg() -> None:
    with pytest.raises(ValueError, match="NewtonCG"):
        ol.Newton([torch.zeros(3000, requires_grad=True)])
    ol.Newton([torch.zeros(3000, requires_grad=True)], max_params=3000)
    with pytest.raises(ValueError, match="LBFGS"):
        ol.BFGS([torch.zeros(5000, requires_grad=True)])


@pytest.mark.parametrize("history_size", [0, -1, 2.5, True])
def test_invalid_history_size_is_refused(history_size: Any) -> None:
    with pytest.raises(ValueError, match="history_size"):
        ol.LBFGS([torch.zeros(2, requires_grad=True)], history_size=history_size)


@pytest.mark.parametrize(("cls", "kwargs", "match"), [
    (ol.LBFGS, {"max_iter": 0}, "max_iter"),
    (ol.LBFGS, {"line_search_fn": "armijo"}, "strong_wolfe"),
    (ol.LBFGS, {"lr": -1.0}, "learning rate"),
    (ol.BFGS, {"tolerance_grad": float("nan")}, "tolerance_grad"),
    (ol.Newton, {"damping": -1.0}, "damping"),
    (ol.Newton, {"lr": 0.0}, "learning rate"),
    (ol.NewtonCG, {"cg_max_iter": 0}, "cg_max_iter"),
])
def test_invalid_arguments_are_refused(cls: type, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_a_second_param_group_is_refused(cls: type) -> None:
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="parameter groups"):
        cls([{"params": [a]}, {"params": [b]}])
    opt = cls([a])
    with pytest.raises(ValueError, match="parameter groups"):
        opt.add_param_group({"params": [b]})


def test_newton_explains_a_closure_that_calls_backward() -> None:
    problem = logistic_regression()
    opt = ol.Newton(problem.params)
    with pytest.raises(RuntimeError, match="without calling backward"):
        opt.step(backward_closure(opt, problem.loss))
    assert flat(problem.params).abs().max() == 0


# ----- devices -----------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_cuda_matches_cpu(cls: type) -> None:
    """The same float64 iteration on both devices: reductions in another order (cuBLAS), a few
    roundings (1e-16 relative) per operation, amplified by the problem's condition number
    (lam = 1: ~10) over 3 iterations: far below 1e-9."""
    results = []
    for device in ("cpu", "cuda"):
        problem = logistic_regression(1.0, device=device)
        opt = cls(problem.params, max_iter=3)
        opt.step(closure_for(opt, problem))
        results.append(flat(problem.params).cpu())
    assert (results[0] - results[1]).abs().max() < 1e-9


# ----- the benchmark script ------------------------------------------------------------------
@pytest.mark.slow
def test_benchmark_script_runs() -> None:
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "second_order.py"
    r = subprocess.run([sys.executable, str(script), "--problems", "rosenbrock", "--repeat", "1"],
                       capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[1] for line in r.stdout.splitlines()
            if line.startswith(("optimlab ", "scipy "))}
    assert rows == {"Newton", "NewtonCG", "BFGS", "LBFGS", "L-BFGS-B", "Newton-CG"}
