"""Deterministic float64 problems for the second-order and quasi-Newton tests.

Each problem returns fresh leaf parameters and a loss closure (returning the loss, without
``backward()``); :func:`backward_closure` wraps it for BFGS/L-BFGS and torch.optim.LBFGS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import Tensor


@dataclass
class Problem:
    name: str
    params: list[Tensor]
    loss: Callable[[], Tensor]
    #: The same loss and gradient on a flat numpy vector, for SciPy.
    numpy_fun: Callable[[np.ndarray], tuple[float, np.ndarray]]
    #: The Hessian-vector product ``(x, v) -> H(x) v`` on numpy vectors (SciPy's ``hessp``).
    numpy_hessp: Callable[[np.ndarray, np.ndarray], np.ndarray]
    x0: np.ndarray


def flat(params: list[Tensor]) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def grad_norm(problem: Problem) -> float:
    g = torch.autograd.grad(problem.loss(), problem.params)
    return float(torch.cat([x.reshape(-1) for x in g]).norm())


def backward_closure(opt: torch.optim.Optimizer, loss: Callable[[], Tensor]
                     ) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value
    return closure


@cache
def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """Standardized features and 0/1 labels."""
    from sklearn.datasets import load_breast_cancer
    x, y = load_breast_cancer(return_X_y=True)
    return (x - x.mean(0)) / x.std(0), y.astype(np.float64)


@cache
def diabetes() -> tuple[np.ndarray, np.ndarray]:
    """Standardized features and standardized target."""
    from sklearn.datasets import load_diabetes
    x, y = load_diabetes(return_X_y=True)
    return (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()


def logistic_regression(lam: float = 1e-2, device: str = "cpu") -> Problem:
    """Mean logistic loss on breast cancer (standardized) + lam/2 ||w||^2 (bias free)."""
    xn, yn = breast_cancer()
    x, y = torch.tensor(xn, device=device), torch.tensor(yn, device=device)
    w = torch.zeros(x.shape[1], dtype=torch.float64, device=device, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, device=device, requires_grad=True)

    def loss() -> Tensor:
        return (torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
                + lam / 2 * (w @ w))

    def numpy_fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        m = xn @ z[:-1] + z[-1]
        r = (1 / (1 + np.exp(-m)) - yn) / len(yn)
        value = np.mean(np.logaddexp(0, m) - yn * m) + lam / 2 * z[:-1] @ z[:-1]
        return float(value), np.r_[xn.T @ r + lam * z[:-1], r.sum()]

    def numpy_hessp(z: np.ndarray, v: np.ndarray) -> np.ndarray:
        p = 1 / (1 + np.exp(-(xn @ z[:-1] + z[-1])))
        u = p * (1 - p) * (xn @ v[:-1] + v[-1]) / len(yn)
        return np.r_[xn.T @ u + lam * v[:-1], u.sum()]

    return Problem(f"logreg(lam={lam})", [w, b], loss, numpy_fun, numpy_hessp,
                   np.zeros(x.shape[1] + 1))


def least_squares() -> Problem:
    """Half the mean squared error of a linear model on diabetes (standardized)."""
    xn, yn = diabetes()
    x, y = torch.tensor(xn), torch.tensor(yn)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)

    def loss() -> Tensor:
        return 0.5 * ((x @ w + b - y) ** 2).mean()

    def numpy_fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        r = (xn @ z[:-1] + z[-1] - yn) / len(yn)
        return float(0.5 * len(yn) * r @ r), np.r_[xn.T @ r, r.sum()]

    def numpy_hessp(z: np.ndarray, v: np.ndarray) -> np.ndarray:
        u = (xn @ v[:-1] + v[-1]) / len(yn)
        return np.r_[xn.T @ u, u.sum()]

    return Problem("least-squares", [w, b], loss, numpy_fun, numpy_hessp,
                   np.zeros(x.shape[1] + 1))


def rosenbrock(start: tuple[float, float] = (-1.2, 1.0)) -> Problem:
    """(1 - x)^2 + 100 (y - x^2)^2 from the standard start; minimum 0 at (1, 1)."""
    z = torch.tensor(start, dtype=torch.float64, requires_grad=True)

    def loss() -> Tensor:
        return (1 - z[0]) ** 2 + 100 * (z[1] - z[0] ** 2) ** 2

    def numpy_fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = v
        return (float((1 - a) ** 2 + 100 * (b - a * a) ** 2),
                np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)]))

    def numpy_hessp(v: np.ndarray, u: np.ndarray) -> np.ndarray:
        a, b = v
        h = np.array([[2 - 400 * (b - a * a) + 800 * a * a, -400 * a], [-400 * a, 200.0]])
        return h @ u

    return Problem("rosenbrock", [z], loss, numpy_fun, numpy_hessp, np.array(start))


def saddle(start: tuple[float, float] = (1.0, 0.0)) -> Problem:
    """x^2 - y^2 + y^4 / 4: a saddle at the origin, minima -1 at (0, +-sqrt(2)). From (1, 0)
    the gradient has no y component, so only negative curvature leads off y = 0."""
    z = torch.tensor(start, dtype=torch.float64, requires_grad=True)

    def loss() -> Tensor:
        return z[0] ** 2 - z[1] ** 2 + z[1] ** 4 / 4

    def numpy_fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = v
        return float(a * a - b * b + b ** 4 / 4), np.array([2 * a, -2 * b + b ** 3])

    def numpy_hessp(v: np.ndarray, u: np.ndarray) -> np.ndarray:
        return np.array([2.0, -2 + 3 * v[1] ** 2]) * u

    return Problem("saddle", [z], loss, numpy_fun, numpy_hessp, np.array(start))
