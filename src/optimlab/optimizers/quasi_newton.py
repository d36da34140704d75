"""Quasi-Newton methods: L-BFGS (limited memory) and BFGS (dense inverse Hessian).

Both take a closure and run up to ``max_iter`` iterations per ``step()``, with the arguments,
defaults and stopping tests of ``torch.optim.LBFGS``: an iteration is

    d = -H g                       (H: the inverse-Hessian approximation; d = -g at first)
    t = lr  (min(1, 1/||g||_1) * lr at the very first iteration)
    x <- x + t d                   (t from the strong Wolfe line search when
                                    line_search_fn="strong_wolfe"; else t as above)

and H is updated from ``s = x_new - x``, ``y = g_new - g`` when ``y's > 0`` (the curvature
condition, N&W eq. 6.7; a pair without it is skipped, which keeps H positive definite;
"> 0" is ``> 1e-10`` for L-BFGS, as torch's, and ``> 4 eps ||s|| ||y||`` for BFGS).
The step stops when
``max|g| <= tolerance_grad``, ``g'd > -tolerance_change``, ``max|t d| <= tolerance_change``,
``|f_new - f| < tolerance_change``, or after ``max_iter`` iterations or ``max_eval`` closure
evaluations.

Mini-batches: each closure call must evaluate the same (deterministic) loss within a step, since
the line search compares its values; a new batch per ``step()`` works as with torch's LBFGS, but
then the curvature pairs mix batches (the usual caveat of stochastic quasi-Newton methods): use
full batches, or large fixed ones, for the convergence these methods promise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..linesearch import strong_wolfe
from ._closure import (
    LOSS_ROUNDING_EPS,
    ClosureOptimizer,
    NonFiniteLossError,
    nonnegative,
    positive_int,
)

__all__ = ["BFGS", "LBFGS"]

#: L-BFGS skips pairs with ``y's`` at or below this (the curvature condition, as torch's LBFGS).
CURVATURE_THRESHOLD = 1e-10


class _QuasiNewton(ClosureOptimizer):
    """The iteration shared by BFGS and L-BFGS; subclasses keep the inverse-Hessian model."""

    def __init__(self, params: Iterable[Any], lr: float | Tensor, max_iter: int,
                 max_eval: int | None, tolerance_grad: float, tolerance_change: float,
                 line_search_fn: str | None, **extra: Any) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not float(lr) >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        positive_int("max_iter", max_iter)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        positive_int("max_eval", max_eval)
        nonnegative("tolerance_grad", tolerance_grad)
        nonnegative("tolerance_change", tolerance_change)
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"only 'strong_wolfe' is supported as line_search_fn, got "
                             f"{line_search_fn!r}")
        defaults = {"lr": lr, "max_iter": max_iter, "max_eval": max_eval,
                    "tolerance_grad": tolerance_grad, "tolerance_change": tolerance_change,
                    **extra, "line_search_fn": line_search_fn}
        super().__init__(params, defaults)

    # The inverse-Hessian model, kept in ``state`` (replaced, never changed in place, so that a
    # failed step can restore the state it started from).
    def _reset_model(self, state: dict[str, Any], g: Tensor) -> None:
        raise NotImplementedError

    def _loss_noise(self, loss: float, dtype: torch.dtype) -> float:
        """The rounding error allowed in the line search's sufficient-decrease test."""
        return 0.0

    def _curvature_condition(self, s: Tensor, y: Tensor) -> bool:
        """Whether the pair updates the model (``y's`` positive enough)."""
        raise NotImplementedError

    def _update_model(self, state: dict[str, Any], s: Tensor, y: Tensor) -> None:
        raise NotImplementedError

    def _direction(self, state: dict[str, Any], g: Tensor) -> Tensor:
        raise NotImplementedError

    def _evaluate(self, closure: Callable[[], Any]) -> tuple[Any, float, Tensor]:
        with torch.enable_grad():
            loss = closure()
        self._count(function=1, gradient=1)
        value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        return loss, value, self._flat_grad()

    def _step(self, closure: Callable[[], Any], state: dict[str, Any]) -> Any:
        group = self.param_groups[0]
        lr = float(group["lr"])
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]

        orig_loss, loss, g = self._evaluate(closure)
        self._check_finite(loss, "loss")
        self._check_finite(float(g.abs().max()) if g.numel() else 0.0, "gradient")
        evaluations = 1
        state.setdefault("n_iter", 0)
        if g.numel() == 0 or g.abs().max() <= tolerance_grad:
            return orig_loss

        d, t = state.get("d"), state.get("t")
        prev_g = state.get("prev_flat_grad")
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                self._reset_model(state, g)
                d = -g
            else:
                s, y = d * t, g - prev_g
                if self._curvature_condition(s, y):
                    self._update_model(state, s, y)
                d = self._direction(state, g)
            prev_g, prev_loss = g, loss
            t = min(1.0, 1.0 / float(g.abs().sum())) * lr if state["n_iter"] == 1 else lr
            slope = float(g.dot(d))
            if slope > -tolerance_change:
                break

            if group["line_search_fn"] == "strong_wolfe":
                x0 = self._flat_params()

                def phi(step: float, x0: Tensor = x0, d: Tensor = d) -> tuple[float, float, Tensor]:
                    self._move(x0, step, d)
                    _, f, grad = self._evaluate(closure)
                    return f, float(grad.dot(d)), grad

                result = strong_wolfe(phi, loss, slope, g, t0=t,
                                      tolerance_change=tolerance_change,
                                      direction_scale=float(d.abs().max()),
                                      noise=self._loss_noise(loss, g.dtype))
                t, loss, g = result.t, result.value, result.payload
                self._move(x0, t, d)
                line_evaluations = result.evaluations
            else:
                self._move(self._flat_params(), t, d)
                line_evaluations = 0
                if n_iter != max_iter:
                    _, loss, g = self._evaluate(closure)
                    line_evaluations = 1
            if not (torch.isfinite(g).all() and abs(loss) < float("inf")):
                raise NonFiniteLossError(
                    f"{type(self).__name__}: the loss or gradient became non-finite at a step of "
                    f"length {t} (lower lr, or use line_search_fn='strong_wolfe'); parameters "
                    f"and state are unchanged")
            evaluations += line_evaluations

            if n_iter == max_iter or evaluations >= max_eval:
                break
            if g.abs().max() <= tolerance_grad:
                break
            if (d * t).abs().max() <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

        state["d"], state["t"] = d, t
        state["prev_flat_grad"], state["prev_loss"] = prev_g, prev_loss
        return orig_loss


class LBFGS(_QuasiNewton):
    """L-BFGS (Nocedal & Wright 2006, Algorithms 7.4 and 7.5), ``torch.optim.LBFGS``'s twin.

    Direction: the two-loop recursion over the last ``history_size`` pairs
    ``(s_i, y_i)``, ``rho_i = 1 / y_i's_i``::

        q = -g;  for i = newest..oldest: a_i = rho_i s_i'q;  q <- q - a_i y_i
        r = gamma q  with gamma = s'y / y'y of the newest pair (N&W eq. 7.20)
        for i = oldest..newest: b = rho_i y_i'r;  r <- r + (a_i - b) s_i
        d = r

    Same arguments, defaults and iterates as ``torch.optim.LBFGS`` (the strong Wolfe search is
    :func:`optimlab.linesearch.strong_wolfe`), and the same state keys (``d``, ``t``,
    ``old_dirs`` = the y's, ``old_stps`` = the s's, ``ro``, ``H_diag``, ``prev_flat_grad``,
    ``prev_loss``, ``n_iter``, ``func_evals``), so state dicts load either way.

    Args:
        params: the parameters (one group).
        lr: step length (the line search's first trial step).
        max_iter: iterations per ``step()``.
        max_eval: closure evaluations per ``step()`` (default ``max_iter * 5 // 4``).
        tolerance_grad: stop when ``max|g| <= tolerance_grad``.
        tolerance_change: stop when the loss or the step changes less than this.
        history_size: pairs kept (m).
        line_search_fn: None (fixed step ``lr``) or ``"strong_wolfe"``.

    The closure zeroes the gradients, computes the loss, calls ``backward()`` and returns the
    loss. Evaluation counts: :attr:`step_evaluations`, :attr:`evaluations` (one function and
    one gradient per closure call).
    """

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1, max_iter: int = 20,
                 max_eval: int | None = None, tolerance_grad: float = 1e-07,
                 tolerance_change: float = 1e-09, history_size: int = 100,
                 line_search_fn: str | None = None) -> None:
        positive_int("history_size", history_size)
        super().__init__(params, lr, max_iter, max_eval, tolerance_grad, tolerance_change,
                         line_search_fn, history_size=history_size)

    def _curvature_condition(self, s: Tensor, y: Tensor) -> bool:
        return float(y.dot(s)) > CURVATURE_THRESHOLD

    def _reset_model(self, state: dict[str, Any], g: Tensor) -> None:
        state["old_dirs"], state["old_stps"], state["ro"], state["H_diag"] = [], [], [], 1

    def _update_model(self, state: dict[str, Any], s: Tensor, y: Tensor) -> None:
        keep = self.param_groups[0]["history_size"] - 1
        ys = y.dot(s)
        state["old_dirs"] = [*state["old_dirs"][-keep:], y] if keep else [y]
        state["old_stps"] = [*state["old_stps"][-keep:], s] if keep else [s]
        state["ro"] = [*state["ro"][-keep:], 1.0 / ys] if keep else [1.0 / ys]
        state["H_diag"] = ys / y.dot(y)

    def _direction(self, state: dict[str, Any], g: Tensor) -> Tensor:
        ys, ss, rhos = state["old_dirs"], state["old_stps"], state["ro"]
        q = -g
        alphas = [0.0] * len(ys)
        for i in reversed(range(len(ys))):
            alphas[i] = ss[i].dot(q) * rhos[i]
            q = q - alphas[i] * ys[i]
        r = q * state["H_diag"]
        for i in range(len(ys)):
            beta = ys[i].dot(r) * rhos[i]
            r = r + (alphas[i] - beta) * ss[i]
        return r


class BFGS(_QuasiNewton):
    """BFGS with a dense inverse-Hessian approximation (Nocedal & Wright 2006, Algorithm 6.1).

    Update (N&W eq. 6.17), with ``rho = 1 / y's``::

        H <- (I - rho s y') H (I - rho y s') + rho s s'

    starting from ``H = I`` (as SciPy's BFGS; the first step is the gradient step of length
    ``min(1, 1/||g||_1) lr``); the direction is ``d = -H g``. (N&W eq. 6.20's rescaling
    ``H = (y's / y'y) I`` before the first update measures the curvature along that first,
    gradient, direction only, the stiffest: on the breast-cancer logistic regression it made
    BFGS take half again as many iterations, so it is not used.)

    H holds ``n x n`` numbers: models above ``max_params`` parameters (default
    4096) are refused in favour of :class:`LBFGS`. Arguments, stopping tests and closure as
    :class:`LBFGS` (without ``history_size``); the line search defaults to strong Wolfe, which
    guarantees ``y's > 0`` and so a positive definite H. Unlike :class:`LBFGS` (torch's twin),
    its sufficient-decrease test allows the loss's rounding error, ``16 eps |f|``, so that it
    keeps converging where the decrease of a step falls below the loss's resolution.

    State: ``inverse_hessian`` (None until the first update), ``d``, ``t``, ``prev_flat_grad``,
    ``prev_loss``, ``n_iter`` and the counts.
    """

    def __init__(self, params: Iterable[Any], lr: float | Tensor = 1, max_iter: int = 20,
                 max_eval: int | None = None, tolerance_grad: float = 1e-07,
                 tolerance_change: float = 1e-09, line_search_fn: str | None = "strong_wolfe",
                 max_params: int = 4096) -> None:
        positive_int("max_params", max_params)
        super().__init__(params, lr, max_iter, max_eval, tolerance_grad, tolerance_change,
                         line_search_fn, max_params=max_params)
        n = self._numel()
        if n > max_params:
            raise ValueError(f"BFGS keeps a dense {n} x {n} inverse Hessian; this model has {n} "
                             f"parameters (max_params={max_params}): use ol.LBFGS, which keeps "
                             f"only the last history_size pairs")

    def _loss_noise(self, loss: float, dtype: torch.dtype) -> float:
        # Near the optimum the decrease a step brings falls below the loss's rounding error:
        # without this allowance (which L-BFGS, torch's twin, does not make) the search would
        # backtrack on rounding noise and BFGS would stall before its superlinear phase.
        return LOSS_ROUNDING_EPS * torch.finfo(dtype).eps * abs(loss)

    def _curvature_condition(self, s: Tensor, y: Tensor) -> bool:
        # Relative, not torch's absolute 1e-10: near the optimum y's ~ ||s||^2 falls below any
        # absolute threshold, and skipping those updates would stall BFGS's superlinear phase.
        # The strong Wolfe conditions give y's > 0 exactly; this only rejects pairs whose y's
        # is at the level of its rounding error (about eps ||s|| ||y||).
        eps = torch.finfo(s.dtype).eps
        return float(y.dot(s)) > 4 * eps * float(s.norm()) * float(y.norm())

    def _reset_model(self, state: dict[str, Any], g: Tensor) -> None:
        state["inverse_hessian"] = None

    def _update_model(self, state: dict[str, Any], s: Tensor, y: Tensor) -> None:
        ys = y.dot(s)
        h = state["inverse_hessian"]
        if h is None:
            h = torch.eye(s.numel(), dtype=s.dtype, device=s.device)
        rho = 1.0 / ys
        hy = h @ y
        # (I - rho s y') H (I - rho y s') + rho s s', expanded (H symmetric):
        # H - rho (s (Hy)' + (Hy) s') + (rho^2 y'Hy + rho) s s'
        h = (h - rho * (torch.outer(s, hy) + torch.outer(hy, s))
             + (rho * rho * y.dot(hy) + rho) * torch.outer(s, s))
        state["inverse_hessian"] = h

    def _direction(self, state: dict[str, Any], g: Tensor) -> Tensor:
        h = state.get("inverse_hessian")
        return -g if h is None else -(h @ g)
