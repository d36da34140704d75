"""Newton's method with the exact Hessian, and Hessian-free Newton-CG.

Both differentiate the closure's loss themselves (twice), so their closure **returns the loss
without calling** ``backward()``: ``closure = lambda: loss_fn(model(x), y)``. An iteration is

    g = grad f(x)
    d = Newton direction (below)
    t from backtracking Armijo from t = lr (optimlab.linesearch.backtracking_armijo)
    x <- x + t d

and a ``step()`` runs up to ``max_iter`` iterations (default 1), stopping early when
``max|g| <= tolerance_grad``, ``max|t d| <= tolerance_change`` or the loss changes less than
``tolerance_change``. The line search evaluates the loss only, under ``torch.no_grad()``. Its
sufficient-decrease test allows the rounding error of the loss (``16 eps |f|``, eps the
parameters' machine epsilon), so that full Newton steps are still taken where the decrease they
bring is below the loss's resolution (near the optimum, where convergence is quadratic); a
search that finds no acceptable step ends the step without moving.

Mini-batches: every closure call within a step must evaluate the same loss (one fixed batch:
the curvature and the line search are on that batch); drawing a new batch per ``step()`` is
fine, as nothing but counts is carried between steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..krylov import truncated_cg
from ..linesearch import backtracking_armijo
from ._closure import LOSS_ROUNDING_EPS, ClosureOptimizer, nonnegative, positive_int

__all__ = ["Newton", "NewtonCG"]


class _NewtonBase(ClosureOptimizer):
    """The iteration shared by Newton and Newton-CG; subclasses compute the direction."""

    closure_calls_backward = False
    _closure_contract = "compute the loss and return it, without calling backward()"

    def __init__(self, params: Iterable[Any], lr: float, max_iter: int,
                 tolerance_grad: float, tolerance_change: float, **extra: Any) -> None:
        lr = nonnegative("lr", lr)
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr} (must be > 0)")
        positive_int("max_iter", max_iter)
        nonnegative("tolerance_grad", tolerance_grad)
        nonnegative("tolerance_change", tolerance_change)
        super().__init__(params, {"lr": lr, "max_iter": max_iter,
                                  "tolerance_grad": tolerance_grad,
                                  "tolerance_change": tolerance_change, **extra})
        if any(p.is_complex() for p in self._params):
            raise ValueError(f"{type(self).__name__} supports real parameters only")

    def _direction(self, grads: list[Tensor], g: Tensor) -> tuple[Tensor, float]:
        """The direction ``d`` and its curvature ``d'Hd`` if known (else 0)."""
        raise NotImplementedError

    def _escape(self, grads: list[Tensor], g: Tensor) -> tuple[Tensor, float] | None:
        """At a point with ``max|g| <= tolerance_grad``: a direction of negative curvature and
        its curvature if one is known (a saddle point), else None (converged)."""
        return None

    def _loss_with_graph(self, closure: Callable[[], Any]) -> tuple[Any, float, list[Tensor]]:
        """The loss and its gradients with their graph (for Hessian-vector products)."""
        with torch.enable_grad():
            loss = closure()
            self._count(function=1)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise TypeError(f"{type(self).__name__}: the closure must return the loss as a "
                                f"one-element tensor, got {type(loss).__name__}")
            value = float(loss.detach())
            self._check_finite(value, "loss")
            if not loss.requires_grad:
                raise ValueError(f"{type(self).__name__}: the closure's loss does not depend on "
                                 f"the parameters through autograd")
            try:
                grads = torch.autograd.grad(loss, self._params, create_graph=True,
                                            allow_unused=True)
            except RuntimeError as e:
                if "backward through the graph a second time" not in str(e):
                    raise
                raise RuntimeError(f"{type(self).__name__}: the closure called backward(); it "
                                   f"must {self._closure_contract} (the optimizer differentiates "
                                   f"the loss twice)") from e
        self._count(gradient=1)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self._params, grads)]
        return loss, value, grads

    def _hvp(self, grads: list[Tensor], v: Tensor) -> Tensor:
        """``H v`` by differentiating ``g . v`` (one Hessian-vector product)."""
        self._count(hvp=1)
        live = [i for i, g in enumerate(grads) if g.requires_grad]
        if not live:  # the loss is linear in the parameters
            return torch.zeros_like(v)
        pieces = self._unflatten(v)
        hv = torch.autograd.grad([grads[i] for i in live], self._params,
                                 grad_outputs=[pieces[i] for i in live], retain_graph=True,
                                 allow_unused=True)
        return self._flatten(hv)

    def _step(self, closure: Callable[[], Any], state: dict[str, Any]) -> Any:
        group = self.param_groups[0]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        state.setdefault("n_iter", 0)
        orig_loss = None
        for _ in range(group["max_iter"]):
            loss, f, grads = self._loss_with_graph(closure)
            orig_loss = loss.detach() if orig_loss is None else orig_loss
            g = self._flatten([gr.detach() for gr in grads])
            self._check_finite(float(g.abs().max()) if g.numel() else 0.0, "gradient")
            if g.numel() == 0:
                break
            if g.abs().max() <= tolerance_grad:
                escape = self._escape(grads, g)
                if escape is None:
                    break
                d, curvature = escape
            else:
                d, curvature = self._direction(grads, g)
            del grads, loss  # free the graph before the line search
            slope = float(g.dot(d))
            if not d.abs().max() > 0 or slope > 0:
                break
            x0 = self._flat_params()

            def phi(t: float, x0: Tensor = x0, d: Tensor = d) -> float:
                self._move(x0, t, d)
                with torch.no_grad():
                    value = closure()
                self._count(function=1)
                return float(value)

            eps = torch.finfo(g.dtype).eps
            result = backtracking_armijo(phi, f, slope, t0=group["lr"], curvature=curvature,
                                         noise=LOSS_ROUNDING_EPS * eps * abs(f))
            state["n_iter"] += 1
            if not result.success:
                self._set_params(x0)
                break
            self._move(x0, result.t, d)
            if (result.t * d).abs().max() <= tolerance_change:
                break
            if abs(result.value - f) < tolerance_change:
                break
        return orig_loss


class Newton(_NewtonBase):
    """Damped Newton's method with the exact Hessian (Levenberg 1944, Marquardt 1963; Nocedal &
    Wright 2006, section 3.4), for models with few parameters.

    With the Hessian ``H = V diag(lambda) V'`` (computed exactly by differentiating the gradient
    against all ``n`` unit vectors at once, ``torch.autograd.grad(..., is_grads_batched=True)``,
    i.e. vmap) the direction is the Levenberg-Marquardt step::

        d = -(H + mu I)^-1 g,   mu = damping + (0 if H > 0 else delta - lambda_min)

    where ``H > 0`` means ``lambda_min > sqrt(eps) max|lambda|`` and ``delta = 1e-3 max|lambda|``
    (N&W section 3.4, Algorithm 3.3: make the model convex by a multiple of the identity, just
    enough). Where ``H`` has a negative eigenvalue, the unit eigenvector ``v``
    of ``lambda_min`` (signed so that ``g'v <= 0``) is added, scaled by ``max(||d||, 1)``: a
    direction of negative curvature, which takes the iterates off saddle points (even where
    ``g = 0``). The Armijo test includes the curvature term ``t^2/2 min(d'Hd, 0)`` (Moré &
    Sorensen 1979). With ``damping = 0`` and ``H`` positive definite near a minimizer this is
    Newton's method and converges quadratically. Where ``max|g| <= tolerance_grad`` the Hessian
    is still checked for negative curvature (one more Hessian) before the step stops: a saddle
    point is left along it.

    Args:
        params: the parameters (one group), at most ``max_params`` numbers in all (default
            2048: the Hessian holds ``n^2`` numbers and its eigendecomposition costs ``n^3``);
            larger models are refused in favour of :class:`NewtonCG`.
        lr: the line search's first trial step.
        max_iter: Newton iterations per ``step()``.
        tolerance_grad, tolerance_change: stopping tests (see the module docstring).
        damping: the Levenberg-Marquardt ``mu`` added to every Hessian (>= 0).

    Evaluations per iteration: one loss with gradient, ``n`` Hessian-vector products, and one
    loss per line-search trial (:attr:`step_evaluations`, :attr:`evaluations`).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1.0, max_iter: int = 1,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
                 damping: float = 0.0, max_params: int = 2048) -> None:
        nonnegative("damping", damping)
        positive_int("max_params", max_params)
        super().__init__(params, lr, max_iter, tolerance_grad, tolerance_change,
                         damping=damping, max_params=max_params)
        n = self._numel()
        if n > max_params:
            raise ValueError(f"Newton forms the dense {n} x {n} Hessian; this model has {n} "
                             f"parameters (max_params={max_params}): use ol.NewtonCG, which "
                             f"needs only Hessian-vector products")

    def _hessian(self, grads: list[Tensor]) -> Tensor:
        """The dense Hessian, from gradients with their graph (``n`` batched products)."""
        flat = torch.cat([g.reshape(-1) for g in grads])
        n = flat.numel()
        self._count(hvp=n)
        if not flat.requires_grad:
            return flat.new_zeros(n, n)
        eye = torch.eye(n, dtype=flat.dtype, device=flat.device)
        try:
            rows = torch.autograd.grad(flat, self._params, grad_outputs=eye, retain_graph=True,
                                       allow_unused=True, is_grads_batched=True)
            h = torch.cat([flat.new_zeros(n, p.numel()) if r is None else r.reshape(n, -1)
                           for p, r in zip(self._params, rows)], dim=1)
        except RuntimeError:  # an operation without a batching rule: one product at a time
            h = torch.stack([self._flatten(torch.autograd.grad(
                flat, self._params, grad_outputs=e, retain_graph=True, allow_unused=True))
                for e in eye])
        return (h + h.T) / 2

    @staticmethod
    def _negative_curvature(lam: Tensor, vecs: Tensor, g: Tensor) -> Tensor | None:
        """The unit eigenvector of the smallest eigenvalue, signed so that ``g'v <= 0``, if that
        eigenvalue is negative beyond the eigendecomposition's rounding (``sqrt(eps)`` relative
        to ``max|lambda|``: a zero eigenvalue computed as -1e-18 is no negative curvature)."""
        tiny = math.sqrt(torch.finfo(lam.dtype).eps) * float(lam.abs().max())
        if not float(lam[0]) < -tiny:
            return None
        v = vecs[:, 0]
        return -v if float(g.dot(v)) > 0 else v

    def _escape(self, grads: list[Tensor], g: Tensor) -> tuple[Tensor, float] | None:
        # A (near) stationary point: a saddle if H has negative curvature; move along it.
        lam, vecs = torch.linalg.eigh(self._hessian(grads))
        v = self._negative_curvature(lam, vecs, g)
        return None if v is None else (v, float(lam[0]))

    def _direction(self, grads: list[Tensor], g: Tensor) -> tuple[Tensor, float]:
        h = self._hessian(grads)
        lam, vecs = torch.linalg.eigh(h)
        lam_min, scale = float(lam[0]), float(lam.abs().max())
        # Positive definite beyond the eigendecomposition's rounding (sqrt(eps) relative): the
        # Newton step as is (ill-conditioned H included: shifting it would cost the quadratic
        # rate). Otherwise shift the spectrum up to delta = 1e-3 max|lambda| (N&W Alg. 3.3).
        positive_definite = lam_min > math.sqrt(torch.finfo(h.dtype).eps) * scale
        delta = 1e-3 * scale
        mu = self.param_groups[0]["damping"] + (0.0 if positive_definite else delta - lam_min)
        shifted = lam + mu
        # H == 0 without damping leaves no curvature to scale by: a gradient step.
        d = -(vecs @ ((vecs.T @ g) / shifted)) if float(shifted.min()) > 0 else -g
        v = self._negative_curvature(lam, vecs, g)
        if v is not None:
            d = d + max(float(d.norm()), 1.0) * v
        return d, float(d.dot(h @ d))


class NewtonCG(_NewtonBase):
    """Hessian-free line-search Newton-CG (Nocedal & Wright 2006, Algorithm 7.1; Dembo &
    Steihaug 1983).

    The direction solves ``H d = -g`` approximately by truncated conjugate gradient
    (:func:`optimlab.krylov.truncated_cg`) on Hessian-vector products, never forming ``H``: CG
    stops at the residual ``||H d + g|| <= min(0.5, sqrt(||g||)) ||g||`` (N&W eq. 7.3, which
    gives superlinear convergence), after ``cg_max_iter`` products, or at the first direction of
    nonpositive curvature (then returning the current iterate, or ``-g`` at the first CG
    iteration: always a descent direction). Each product differentiates ``g . v`` through the
    gradient's graph (double backward), so it costs about two gradients.

    Args:
        params: the parameters (one group).
        lr: the line search's first trial step.
        max_iter: Newton iterations per ``step()``.
        tolerance_grad, tolerance_change: stopping tests (see the module docstring).
        cg_max_iter: Hessian-vector products per iteration at most (default 250, or ``n`` when
            smaller).

    Evaluations per iteration: one loss with gradient, the CG iterations' Hessian-vector
    products and one loss per line-search trial (:attr:`step_evaluations`,
    :attr:`evaluations`).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1.0, max_iter: int = 1,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
                 cg_max_iter: int = 250) -> None:
        positive_int("cg_max_iter", cg_max_iter)
        super().__init__(params, lr, max_iter, tolerance_grad, tolerance_change,
                         cg_max_iter=cg_max_iter)

    def _direction(self, grads: list[Tensor], g: Tensor) -> tuple[Tensor, float]:
        norm = float(g.norm())
        result = truncated_cg(lambda v: self._hvp(grads, v), g,
                              tolerance=min(0.5, math.sqrt(norm)) * norm,
                              max_iterations=min(self.param_groups[0]["cg_max_iter"],
                                                 max(g.numel(), 1)))
        return result.direction, 0.0
