"""Truncated conjugate gradient on Hessian-vector products (Hessian-free Newton directions).

:func:`truncated_cg` approximately solves the Newton system ``H p = -g`` using only products
``v -> H v``: it never forms ``H``. It is the inner solver of Newton-CG, written once for any
optimizer that needs a Newton-like direction from Hessian-vector products.

* Without a radius, it is the inner loop of line-search Newton-CG (Nocedal & Wright 2006,
  Algorithm 7.1; Dembo & Steihaug 1983): CG from ``p = 0`` stops when the residual
  ``r = H p + g`` satisfies ``||r|| <= tolerance``, or at the first direction ``d`` of
  nonpositive curvature ``d' H d <= 0``, returning the current ``p`` (or ``-g`` if that happens
  at the first iteration), so the result is always a descent direction.
* With a radius ``Delta`` it is Steihaug's method (Steihaug 1983; N&W Algorithm 7.2): the same
  iteration, stopped where it leaves the ball ``||p|| <= Delta`` or meets nonpositive curvature,
  returning the point on the boundary along the current direction.

CG iteration (N&W Algorithm 5.2): ``alpha = r'r / d'Hd``, ``p <- p + alpha d``,
``r <- r + alpha H d``, ``beta = r'r_new / r'r_old``, ``d <- -r + beta d``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TruncatedCGResult", "truncated_cg"]


@dataclass
class TruncatedCGResult:
    """The outcome of :func:`truncated_cg`.

    Attributes:
        direction: the approximate solution ``p`` of ``H p = -g``.
        iterations: CG iterations run.
        hvps: Hessian-vector products computed (one per iteration).
        negative_curvature: whether a direction with ``d' H d <= 0`` stopped the iteration.
        on_boundary: whether the result lies on the trust-region boundary (radius given).
        residual_norm: ``||H p + g||`` when the iteration stopped (the last residual CG
            computed; for a boundary or negative-curvature stop, that of the previous iterate).
    """

    direction: Tensor
    iterations: int
    hvps: int
    negative_curvature: bool
    on_boundary: bool
    residual_norm: float


def _to_boundary(p: Tensor, d: Tensor, radius: float) -> Tensor:
    """``p + tau d`` with ``tau >= 0`` and ``||p + tau d|| = radius`` (``||p|| <= radius``)."""
    dd, pd, pp = float(d.dot(d)), float(p.dot(d)), float(p.dot(p))
    tau = (-pd + math.sqrt(max(pd * pd + dd * (radius * radius - pp), 0.0))) / dd
    return p + tau * d


def truncated_cg(hvp: Callable[[Tensor], Tensor], g: Tensor, *, tolerance: float,
                 max_iterations: int, radius: float | None = None) -> TruncatedCGResult:
    """Approximately solve ``H p = -g`` by conjugate gradient on Hessian-vector products.

    Args:
        hvp: ``v -> H v`` for a flat vector ``v`` shaped as ``g``.
        g: the gradient, a flat vector.
        tolerance: stop when ``||H p + g|| <= tolerance`` (Newton-CG uses
            ``min(0.5, sqrt(||g||)) * ||g||``, N&W eq. 7.3, for superlinear convergence).
        max_iterations: CG iterations (and Hessian-vector products) at most.
        radius: the trust-region radius for Steihaug's method; None for the line-search
            variant.

    Returns:
        the direction (a descent direction: ``g' p < 0`` whenever ``g != 0``) and counts.
    """
    if max_iterations < 1:
        raise ValueError(f"truncated_cg needs max_iterations >= 1, got {max_iterations}")
    p = torch.zeros_like(g)
    r = g.clone()
    rr = float(r.dot(r))
    if math.sqrt(rr) <= tolerance:
        return TruncatedCGResult(p, 0, 0, False, False, math.sqrt(rr))
    d = -r
    for j in range(max_iterations):
        hd = hvp(d)
        curvature = float(d.dot(hd))
        if not curvature > 0:  # nonpositive (or NaN) curvature along d
            if radius is not None:
                return TruncatedCGResult(_to_boundary(p, d, radius), j + 1, j + 1, True, True,
                                         math.sqrt(rr))
            direction = -g.clone() if j == 0 else p
            return TruncatedCGResult(direction, j + 1, j + 1, True, False, math.sqrt(rr))
        alpha = rr / curvature
        p_next = p + alpha * d
        if radius is not None and float(p_next.norm()) >= radius:
            return TruncatedCGResult(_to_boundary(p, d, radius), j + 1, j + 1, False, True,
                                     math.sqrt(rr))
        p = p_next
        r = r + alpha * hd
        rr_next = float(r.dot(r))
        if math.sqrt(rr_next) <= tolerance:
            return TruncatedCGResult(p, j + 1, j + 1, False, False, math.sqrt(rr_next))
        d = -r + (rr_next / rr) * d
        rr = rr_next
    return TruncatedCGResult(p, max_iterations, max_iterations, False, False, math.sqrt(rr))
