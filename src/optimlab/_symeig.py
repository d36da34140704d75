"""The largest eigenvalues of a symmetric operator known only through products ``v -> A v``.

:func:`lanczos` (full reorthogonalization, restarts at breakdowns) and :func:`power_iteration`
(with a shift for a negative dominant eigenvalue, deflation for ``k > 1``) find the ``k``
algebraically largest eigenpairs of ``A``, stopping when every pair's residual
``||A v - lambda v|| <= tol * |lambda|``. :mod:`optimlab.sharpness` applies them to Hessians and
documents the algorithms and the stopping rule; they know nothing of Hessians themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["EigenPairs", "lanczos", "orthogonalize", "power_iteration"]


@dataclass(frozen=True)
class EigenPairs:
    """``k`` eigenpair estimates: ``values`` ``(k,)`` float64 descending, unit ``vectors``
    ``(k, n)`` in the operator's dtype, ``residuals`` ``(k,)`` float64, whether all met the
    tolerance, and the iterations (one product each)."""

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    converged: bool
    iterations: int


def orthogonalize(w: Tensor, basis: Tensor) -> Tensor:
    """``w`` minus its projection on the rows of ``basis`` (orthonormal), done twice."""
    if basis.shape[0]:
        for _ in range(2):  # "twice is enough" (Parlett; Giraud et al. 2005)
            w = w - basis.T @ (basis @ w)
    return w


def _unit(v: Tensor) -> Tensor:
    return v / v.norm()


def lanczos(matvec: Callable[[Tensor], Tensor], random: Callable[[], Tensor], k: int, *,
            max_iter: int, tol: float) -> EigenPairs:
    """Lanczos with full reorthogonalization from the start vector ``random()``.

    Args:
        matvec: ``v -> A v`` for ``A`` symmetric, on flat vectors.
        random: draws a Gaussian vector (its size, dtype and device are the operator's).
        k: how many of the largest eigenvalues, ``1 <= k <= min(max_iter, n)``.
        max_iter: steps (products, and basis vectors stored) at most.
        tol: the relative residual at which a pair has converged; 0: no early stop (run
            until the space is exhausted, exact, or ``max_iter``).
    """
    q = _unit(random())
    n, dtype, device = q.numel(), q.dtype, q.device
    steps = min(max_iter, n)
    eps = torch.finfo(dtype).eps
    basis = torch.empty(min(steps, 2 * k + 16), n, dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []  # betas[j] couples basis rows j and j + 1
    converged = False
    for j in range(steps):
        if j == basis.shape[0]:  # grow the basis storage geometrically
            grown = torch.empty(min(steps, 2 * j), n, dtype=dtype, device=device)
            grown[:j] = basis
            basis = grown
        basis[j] = q
        w = matvec(q)
        alphas.append(float(q @ w))
        w = orthogonalize(w, basis[: j + 1])  # removes alpha_j q_j and beta_{j-1} q_{j-1} too
        beta = float(w.norm())
        # Ritz pairs of the tridiagonal T_j, descending (numpy: a small dense eigenproblem)
        theta, s = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        norm_estimate = float(np.abs(theta).max())  # of ||A|| (Ritz values lie in its spectrum)
        top = min(k, j + 1)
        theta, s = theta[::-1][:top], s[:, ::-1][:, :top]
        # beta at round-off level: the basis spans an invariant subspace (breakdown)
        invariant = beta <= 8 * eps * math.sqrt(j + 1) * norm_estimate
        residuals = (0.0 if invariant else beta) * np.abs(s[-1])
        # At a breakdown the pairs are exact but the rest of the space is unseen (it may hold
        # larger eigenvalues, or more copies of these): never stop there, restart instead.
        if j + 1 == n or (tol > 0 and j + 1 >= k and not invariant
                          and bool((residuals <= tol * np.abs(theta)).all())):
            converged = True
            break
        if j + 1 == steps:
            break
        if invariant:  # restart from a random vector orthogonal to the basis
            q, beta = _unit(orthogonalize(random(), basis[: j + 1])), 0.0
        else:
            q = _unit(orthogonalize(w / beta, basis[: j + 1]))
        betas.append(beta)
    m = len(alphas)
    ritz = torch.from_numpy(s.T.copy()).to(dtype=dtype, device=device)
    return EigenPairs(values=torch.from_numpy(theta.copy()), vectors=ritz @ basis[:m],
                      residuals=torch.from_numpy(np.asarray(residuals, dtype=np.float64)),
                      converged=converged, iterations=m)


def _power_phase(apply: Callable[[Tensor], Tensor], v: Tensor, shift: float, max_iter: int,
                 tol: float) -> tuple[float, Tensor, float, int, bool]:
    """Power iteration on ``apply - shift I`` from unit ``v``: the Rayleigh quotient of
    ``apply``, the vector, its residual, the iterations, and whether it converged."""
    lam, residual = 0.0, math.inf
    for it in range(1, max_iter + 1):
        av = apply(v)
        lam = float(v @ av)
        residual = float((av - lam * v).norm())
        if residual <= tol * abs(lam):
            return lam, v, residual, it, True
        w = av - shift * v
        norm = float(w.norm())
        if norm == 0.0:  # v lies in the null space of apply - shift I: an exact eigenvector
            return lam, v, residual, it, residual == 0.0
        v = w / norm
    return lam, v, residual, max_iter, False


def power_iteration(matvec: Callable[[Tensor], Tensor], random: Callable[[], Tensor], k: int,
                    *, max_iter: int, tol: float) -> EigenPairs:
    """Power iteration for the ``k`` largest eigenpairs, one after another by deflation.

    Each pair: power iteration on ``P A P`` (``P`` projects out the pairs found), from
    ``random()``; if the dominant eigenvalue ``mu`` it finds is negative, a second one on
    ``P A P - mu I`` (positive semidefinite on the remaining space) from a fresh vector finds
    the largest. ``max_iter`` products per power iteration at most.
    """
    first = random()
    found = torch.empty(0, first.numel(), dtype=first.dtype, device=first.device)
    values: list[float] = []
    residuals: list[float] = []
    iterations, converged = 0, True

    def deflated(v: Tensor) -> Tensor:
        return orthogonalize(matvec(v), found)

    for i in range(k):
        v = _unit(orthogonalize(first if i == 0 else random(), found))
        lam, v, res, its, ok = _power_phase(deflated, v, 0.0, max_iter, tol)
        iterations += its
        if lam < 0:  # the dominant eigenvalue is negative: the largest is that of A - lam I
            v = _unit(orthogonalize(random(), found))  # not the eigenvector just found, which
            lam, v, res, its, ok = _power_phase(deflated, v, lam, max_iter, tol)  # it maps to 0
            iterations += its
        found = torch.cat([found, _unit(orthogonalize(v, found))[None]])
        values.append(lam)
        residuals.append(res)
        converged = converged and ok
    order = sorted(range(k), key=lambda i: -values[i])
    return EigenPairs(values=torch.tensor([values[i] for i in order], dtype=torch.float64),
                      vectors=found[order],
                      residuals=torch.tensor([residuals[i] for i in order], dtype=torch.float64),
                      converged=converged, iterations=iterations)
