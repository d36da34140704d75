"""What an optimizer step costs, in gradient evaluations, and the closure a run hands it.

A run charges every optimizer its work in one unit, **gradient evaluations** (the forward and
backward pass of one batch), so that first-order, quasi-Newton and second-order methods rank on
the same axis (:attr:`RunRecord.grad_evals`, ``evals["grad_evals"]``):

- a closure that calls ``backward()`` (first-order optimizers, BFGS, L-BFGS): 1 per call it
  computes;
- a loss-only closure (Newton, Newton-CG differentiate the loss themselves, see
  :attr:`optimlab.optimizers.ClosureOptimizer.closure_calls_backward`): 1 per closure call (the
  call that also yields the gradient, and every line-search trial, charged as a whole
  evaluation although a trial runs the forward pass only: an upper bound), plus
  :data:`HVP_COST` per Hessian-vector product, read from the optimizer's own count
  (:attr:`~optimlab.optimizers.ClosureOptimizer.step_evaluations`). Newton's dense Hessian of
  ``n`` parameters is ``n`` products, so it is charged ``2 n`` per iteration.

The runs also record the counts by kind (scalars ``function_evals``, ``gradient_evals``,
``hvp_evals``) for optimizers that report them.

**The last evaluation is remembered** (:class:`Memo`) on the full batch, when the loss is a
function of the parameters and the batch only and evaluating it changes nothing else (no
dropout, no batch-norm running statistics: :func:`replayable`): a quasi-Newton step
(``torch.optim.LBFGS``'s convention, which ``ol.LBFGS`` keeps) starts by evaluating the closure
at the point where the previous step's line search already evaluated it. When the parameters
equal (bit for bit) those of the last evaluation and the batch is the same tensors, the closure
returns the remembered loss and restores the remembered gradients instead of computing them
again, and nothing is charged, as SciPy's ``minimize`` caches ``f`` and ``g`` at the last
point. With mini-batches every step draws a new batch, so nothing is reused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..optimizers import Evaluations

__all__ = ["HVP_COST", "Memo", "clipping_refusal", "counts_evaluations", "loss_only",
           "replayable"]

#: Gradient evaluations charged for one Hessian-vector product: a forward-over-reverse or
#: double-backward product costs about twice a gradient (Pearlmutter 1994; Griewank & Walther,
#: "Evaluating Derivatives", the cheap-gradient principle bounds it by a small constant).
HVP_COST = 2


def loss_only(optimizer: Optimizer) -> bool:
    """Whether ``optimizer``'s closure returns the loss without calling ``backward()``."""
    return not getattr(optimizer, "closure_calls_backward", True)


def counts_evaluations(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` reports its evaluations per step (``step_evaluations``)."""
    return isinstance(getattr(optimizer, "step_evaluations", None), Evaluations)


def clipping_refusal(optimizer: Optimizer, name: str) -> str | None:
    """Why gradient clipping cannot apply to ``optimizer`` (lab name ``name``), or None.

    A line search compares losses along a direction with the slope from the gradient: a clipped
    gradient no longer matches the loss (the Wolfe and Armijo tests would be decided on a
    slope that is not the function's), and a loss-only closure has no gradient to clip.
    """
    if not counts_evaluations(optimizer):
        return None
    return (f"clip_norm/clip_value: gradient clipping does not apply to {name!r}, whose line "
            "search needs the loss's true gradient (control its steps with lr, or damping for "
            "newton)")


def replayable(model: torch.nn.Module | None) -> bool:
    """Whether an evaluation of ``model``'s training loss can be replayed instead of
    recomputed: it draws no random numbers (no dropout layer with ``p > 0``) and updates no
    state (no normalization layer tracking running statistics), so two evaluations at the same
    parameters on the same batch give the same result and leave the same model."""
    if model is None:
        return True
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return False
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats:
            return False
    return True


def _identity(batch: Any) -> Any:
    """The batch's identity: the same tensors (object and in-place version) in the same
    structure."""
    if isinstance(batch, Tensor):
        return (id(batch), batch._version)
    if isinstance(batch, (tuple, list)):
        return tuple(_identity(b) for b in batch)
    return id(batch) if batch is not None else None


class Memo:
    """The loss and gradients of the last closure evaluation, and where they were taken.

    Args:
        params: the parameters the closure differentiates.
    """

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self._at: Tensor | None = None
        self._batch: Any = None
        self._keep: Any = None
        self._loss: Tensor | None = None
        self._grads: list[Tensor | None] = []
        self.hits = 0

    def _flat(self) -> Tensor:
        """The parameters' bits (so that -0.0 and 0.0, or two NaNs, are told apart)."""
        return torch.cat([p.detach().reshape(-1).view(torch.uint8) for p in self.params])

    def lookup(self, batch: Any) -> Tensor | None:
        """The remembered loss if the parameters and the batch are those of the last
        evaluation (the gradients are restored into ``.grad``); else None."""
        if self._at is None or self._batch != _identity(batch):
            return None
        if not torch.equal(self._flat(), self._at):
            return None
        for p, g in zip(self.params, self._grads):
            if g is None:
                p.grad = None
            elif p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        self.hits += 1
        return self._loss

    def store(self, batch: Any, loss: Tensor) -> None:
        """Remember ``loss`` and the current gradients at the current parameters."""
        self._at = self._flat()
        self._batch = _identity(batch)
        self._keep = batch  # holds the batch's tensors, so that their ids are not reused
        self._loss = loss.detach()
        self._grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
