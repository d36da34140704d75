"""What the closure-driven optimizers (Newton, Newton-CG, BFGS, L-BFGS) share.

They see all parameters as one flat vector ``x`` (complex parameters as their real and imaginary
parts, as ``torch.optim.LBFGS`` does), evaluate the closure several times per step, count those
evaluations, and apply a step as a transaction: any error during a step (a closure that raises,
a non-finite loss at the starting point, a line search that cannot proceed) restores the
parameters and the optimizer state they had before it, then propagates.

Evaluation counts (:class:`Evaluations`): ``function`` counts closure calls, ``gradient`` the
gradients taken (for BFGS/L-BFGS, whose closure calls ``backward()``, every closure call is one
of each), ``hvp`` the Hessian-vector products (Newton's dense Hessian counts as ``n`` of them,
``n`` the number of parameters, as it is computed as ``n`` batched products).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["ClosureOptimizer", "Evaluations", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The closure returned an inf or NaN loss (or gradient) at the step's starting point; the
    parameters and the optimizer state were left untouched."""


@dataclass(frozen=True)
class Evaluations:
    """Work done by a closure-driven optimizer.

    Attributes:
        function: closure evaluations (loss values).
        gradient: gradients computed.
        hvp: Hessian-vector products computed.
    """

    function: int = 0
    gradient: int = 0
    hvp: int = 0

    def __add__(self, other: Evaluations) -> Evaluations:
        return Evaluations(self.function + other.function, self.gradient + other.gradient,
                           self.hvp + other.hvp)


#: The loss's rounding error that line searches allow, in machine epsilons of |f|: a loss
#: reduced over N terms carries an error of order sqrt(N) eps |f| for random roundings; 16
#: covers sums of a few hundred terms without letting a step that really increases f through.
LOSS_ROUNDING_EPS = 16

#: State keys of the cumulative counts, in the first parameter's state (as torch's LBFGS keeps
#: ``func_evals`` and ``n_iter`` there), so they survive a state-dict round trip.
_COUNT_KEYS = {"function": "func_evals", "gradient": "grad_evals", "hvp": "hvp_evals"}


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (expected an integer >= 1)")
    return value


def nonnegative(name: str, value: Any) -> float:
    """``value`` as a finite float >= 0, or a ValueError naming ``name``."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite number >= 0)")
    return float(value)


class ClosureOptimizer(Optimizer):
    """Base of the optimizers that take a closure and move all parameters as one vector.

    One parameter group only (the line search moves every parameter along one direction, as
    ``torch.optim.LBFGS``); a second group is refused. Subclasses implement :meth:`_step`.

    Attributes:
        step_evaluations: the :class:`Evaluations` of the last ``step()`` (zero before the first).
        evaluations: the :class:`Evaluations` of all steps so far (kept in the state, so a
            state-dict round trip carries it).
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.step_evaluations = Evaluations()
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} doesn't support per-parameter options "
                             f"(parameter groups)")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # torch's checks of the group first
        if len(self.param_groups) > 1:
            self.param_groups.pop()
            raise ValueError(f"{type(self).__name__} doesn't support per-parameter options "
                             f"(parameter groups)")

    # ----- the flat vector ---------------------------------------------------------------------
    @property
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    @staticmethod
    def _real(t: Tensor) -> Tensor:
        return torch.view_as_real(t) if t.is_complex() else t

    def _numel(self) -> int:
        return sum(self._real(p).numel() for p in self._params)

    def _flat_params(self) -> Tensor:
        return torch.cat([self._real(p.detach()).reshape(-1) for p in self._params])

    def _flat_grad(self) -> Tensor:
        views = []
        for p in self._params:
            if p.grad is None:
                views.append(self._real(p.detach()).new_zeros(self._real(p).numel()))
            else:
                g = p.grad.to_dense() if p.grad.is_sparse else p.grad
                views.append(self._real(g).reshape(-1))
        return torch.cat(views)

    def _flatten(self, tensors: Iterable[Tensor | None]) -> Tensor:
        """Per-parameter tensors (None: zero) as one flat vector."""
        return torch.cat([self._real(p.detach()).new_zeros(self._real(p).numel()) if t is None
                          else self._real(t).reshape(-1) for p, t in zip(self._params, tensors)])

    def _unflatten(self, flat: Tensor) -> list[Tensor]:
        out, offset = [], 0
        for p in self._params:
            n = self._real(p).numel()
            piece = flat[offset:offset + n].view(self._real(p).shape)
            out.append(torch.view_as_complex(piece) if p.is_complex() else piece)
            offset += n
        return out

    @torch.no_grad()
    def _set_params(self, flat: Tensor) -> None:
        for p, value in zip(self._params, self._unflatten(flat)):
            p.copy_(value)

    @torch.no_grad()
    def _move(self, x: Tensor, t: float, d: Tensor) -> None:
        """Set the parameters to ``x + t * d``."""
        for p, xi, di in zip(self._params, self._unflatten(x), self._unflatten(d)):
            p.copy_(xi).add_(di, alpha=t)

    # ----- counting ----------------------------------------------------------------------------
    def _first_state(self) -> dict[str, Any]:
        return self.state[self._params[0]]

    @property
    def evaluations(self) -> Evaluations:
        state = self.state.get(self._params[0], {})
        return Evaluations(**{field: int(state.get(key, 0))
                              for field, key in _COUNT_KEYS.items()})

    def _count(self, function: int = 0, gradient: int = 0, hvp: int = 0) -> None:
        self.step_evaluations += Evaluations(function, gradient, hvp)

    # ----- the step ----------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run one step (see the class docstring); returns the loss at the starting point.

        The step is a transaction: if it raises, the parameters, the state and the counts are
        as before (``step_evaluations`` then holds the work of the failed attempt).
        """
        if closure is None or not callable(closure):
            raise TypeError(f"{type(self).__name__}.step() needs a closure that re-evaluates the "
                            f"model and returns the loss ({self._closure_contract})")
        self.step_evaluations = Evaluations()
        x0 = self._flat_params()
        state = self._first_state()
        saved = dict(state)
        try:
            loss = self._step(closure, state)
        except BaseException:
            self._set_params(x0)
            state.clear()
            state.update(saved)
            raise
        total = self.evaluations + self.step_evaluations
        for field, key in _COUNT_KEYS.items():
            state[key] = getattr(total, field)
        return loss

    #: Whether the closure calls ``backward()`` (torch's convention: BFGS, LBFGS) or only
    #: returns the loss, which the optimizer differentiates itself (Newton, NewtonCG). A runner
    #: that builds closures for any optimizer reads it.
    closure_calls_backward: bool = True
    #: How the closure must behave, quoted by the error for a missing closure.
    _closure_contract = "zero the gradients, compute the loss, call backward() and return it"

    def _step(self, closure: Callable[[], Any], state: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _check_finite(self, value: float, what: str) -> None:
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"{type(self).__name__}: the closure returned a non-finite {what} ({value}) at "
                f"the step's starting point; parameters and state are unchanged")
