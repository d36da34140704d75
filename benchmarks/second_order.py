"""Newton, Newton-CG, BFGS and L-BFGS against SciPy's minimize: iterations, evaluations, time.

Each problem is one float64 torch loss (the problems of ``tests/second_order_problems.py``:
L2-regularized logistic regression on breast cancer, least squares on diabetes, Rosenbrock from
(-1.2, 1), plus a 64-32-10 tanh MLP on digits). SciPy minimizes the very same torch function
through a wrapper (loss and gradient by autograd; Newton-CG's Hessian-vector products by double
backward, as optimlab's), so both sides pay the same price per evaluation and the times compare
the algorithms' own overhead and their evaluation counts.

Every solver stops at ``max|g| <= --gtol`` (optimlab: ``tolerance_grad``; SciPy BFGS and
L-BFGS-B: ``gtol``; SciPy Newton-CG has no gradient test: ``xtol`` = gtol) or after
``--maxiter`` iterations (the MLP runs a fixed budget of ``--mlp-iters``). The table shows each
run's final loss and ``max|g|`` so the stopping points can be compared. Times are medians of
``--repeat`` runs (dense BFGS on the MLP: one run; SciPy's takes about a minute), on one torch
thread by default (``--threads``): on a loaded 2-core machine a 31 x 31 ``eigh`` took 66 ms
with two threads against 0.09 ms with one.

    python benchmarks/second_order.py                       # all problems
    python benchmarks/second_order.py --problems rosenbrock --repeat 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import scipy.optimize
import torch

import optimlab as ol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from second_order_problems import (  # the problems the tests use
    Problem,
    least_squares,
    logistic_regression,
    rosenbrock,
)


def mlp_digits() -> Problem:
    """Mean cross-entropy of a 64-32-10 tanh MLP on all 1797 digits (float64)."""
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    xt, yt = torch.tensor(x / 16.0), torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 10)).double()
    params = list(model.parameters())

    def loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(xt), yt)

    x0 = torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy()
    return Problem("mlp-digits", params, loss, None, None, x0)  # type: ignore[arg-type]


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "logreg": lambda: logistic_regression(1e-2),
    "least-squares": least_squares,
    "rosenbrock": rosenbrock,
    "mlp-digits": mlp_digits,
}


class TorchFunction:
    """A problem's loss as SciPy's ``fun``/``hessp`` on flat numpy vectors, with counts."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def _load(self, z: np.ndarray) -> None:
        flat = torch.from_numpy(np.asarray(z, dtype=np.float64))
        offset = 0
        with torch.no_grad():
            for p in self.problem.params:
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def fun(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        self._load(z)
        loss = self.problem.loss()
        grads = torch.autograd.grad(loss, self.problem.params)
        return loss.item(), torch.cat([g.reshape(-1) for g in grads]).numpy()

    def hessp(self, z: np.ndarray, v: np.ndarray) -> np.ndarray:
        self._load(z)
        params = self.problem.params
        grads = torch.autograd.grad(self.problem.loss(), params, create_graph=True)
        vt = torch.from_numpy(np.asarray(v, dtype=np.float64))
        pieces, offset = [], 0
        for p in params:
            pieces.append(vt[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        hv = torch.autograd.grad(grads, params, grad_outputs=pieces)
        return torch.cat([h.reshape(-1) for h in hv]).numpy()


def final_state(problem: Problem) -> tuple[float, float]:
    loss = problem.loss()
    grads = torch.autograd.grad(loss, problem.params)
    return loss.item(), float(torch.cat([g.reshape(-1) for g in grads]).abs().max())


def run_optimlab(name: str, make: Callable[[], Problem], gtol: float, maxiter: int,
                 fixed_budget: bool) -> dict[str, Any]:
    problem = make()
    cls = {"Newton": ol.Newton, "NewtonCG": ol.NewtonCG, "BFGS": ol.BFGS,
           "LBFGS": ol.LBFGS}[name]
    tolerance = 0.0 if fixed_budget else gtol
    if cls in (ol.Newton, ol.NewtonCG):
        opt = cls(problem.params, max_iter=maxiter, tolerance_grad=tolerance, tolerance_change=0)
        closure: Callable[[], Any] = problem.loss
    else:
        opt = cls(problem.params, max_iter=maxiter, max_eval=10 * maxiter + 10,
                  tolerance_grad=tolerance, tolerance_change=0, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            value = problem.loss()
            value.backward()
            return value
    start = time.perf_counter()
    opt.step(closure)
    seconds = time.perf_counter() - start
    loss, gmax = final_state(problem)
    e = opt.evaluations
    return {"solver": f"optimlab {name}", "iters": opt.state[problem.params[0]]["n_iter"],
            "f": e.function, "g": e.gradient, "hvp": e.hvp, "s": seconds, "loss": loss,
            "gmax": gmax}


def run_scipy(method: str, make: Callable[[], Problem], gtol: float, maxiter: int,
              fixed_budget: bool) -> dict[str, Any]:
    problem = make()
    fn = TorchFunction(problem)
    tolerance = 0.0 if fixed_budget else gtol
    options: dict[str, Any] = {"maxiter": maxiter}
    if method == "Newton-CG":
        options["xtol"] = tolerance or 1e-300
    else:
        options["gtol"] = tolerance
    if method == "L-BFGS-B":
        options.update(ftol=0.0, maxfun=10 * maxiter + 10)
    start = time.perf_counter()
    result = scipy.optimize.minimize(fn.fun, problem.x0, jac=True, method=method,
                                     hessp=fn.hessp if method == "Newton-CG" else None,
                                     options=options)
    seconds = time.perf_counter() - start
    fn._load(result.x)
    loss, gmax = final_state(problem)
    nfev = int(result.nfev)
    return {"solver": f"scipy {method}", "iters": int(result.nit), "f": nfev,
            "g": int(getattr(result, "njev", nfev) or nfev), "hvp": int(getattr(result, "nhev", 0)),
            "s": seconds, "loss": loss, "gmax": gmax}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS),
                        help=f"comma-separated, from {', '.join(PROBLEMS)}")
    parser.add_argument("--gtol", type=float, default=1e-8)
    parser.add_argument("--maxiter", type=int, default=500)
    parser.add_argument("--mlp-iters", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as a lab worker: these problems are "
                             "small, and on a loaded machine several threads contend)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, scipy {scipy.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads, float64")
    print(f"# stop at max|g| <= {args.gtol:g} or {args.maxiter} iterations; mlp-digits: a fixed "
          f"{args.mlp_iters} iterations; time = median of {args.repeat} runs (BFGS on the MLP: "
          f"one run)")
    for name in args.problems.split(","):
        make = PROBLEMS[name]
        fixed = name == "mlp-digits"
        maxiter = args.mlp_iters if fixed else args.maxiter
        n = sum(p.numel() for p in make().params)
        print(f"\n## {name} ({n} parameters)")
        print(f"{'solver':<20}{'iters':>7}{'f evals':>9}{'g evals':>9}{'HVPs':>8}"
              f"{'time ms':>10}{'final loss':>22}{'max|g|':>10}")
        solvers: list[tuple[Callable[..., dict[str, Any]], str]] = [
            (run_optimlab, s) for s in ("Newton", "NewtonCG", "BFGS", "LBFGS")
            if not (s == "Newton" and n > 2048)]
        solvers += [(run_scipy, m) for m in ("BFGS", "L-BFGS-B", "Newton-CG")]
        for runner, solver in solvers:
            # The MLP's dense BFGS runs take seconds (optimlab) to a minute (SciPy): once.
            repeat = 1 if fixed and solver == "BFGS" else args.repeat
            rows = [runner(solver, make, args.gtol, maxiter, fixed) for _ in range(repeat)]
            row = rows[0]
            ms = 1e3 * statistics.median(r["s"] for r in rows)
            print(f"{row['solver']:<20}{row['iters']:>7}{row['f']:>9}{row['g']:>9}"
                  f"{row['hvp']:>8}{ms:>10.1f}{row['loss']:>22.15g}{row['gmax']:>10.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
