"""Rprop and ASGD, the torch.optim twins whose learning rate is not a multiplier.

Rprop's ``lr`` is the initial per-element step size and ASGD's the start of a decaying step
size, both kept as state: their last rule returns the displacement and the chain has no
``scale_by_learning_rate``. Arguments, defaults, group keys and state keys are torch.optim's,
so state dicts load across.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..transforms.averaged_sgd import ScaleByAveragedSgd
from ..transforms.regularization import AddWeights
from ..transforms.sign import ScaleByRprop
from .base import NamedOptimizer, Params

__all__ = ["ASGD", "Rprop"]


class Rprop(NamedOptimizer):
    """Rprop, resilient backpropagation (Riedmiller & Braun, 1993), as torch.optim.Rprop.

    Per element, with the previous gradient ``prev`` and a step size ``s`` that starts at
    ``lr``::

        q = sign(g * prev)
        s <- clamp(s * (eta_plus if q > 0 else eta_minus if q < 0 else 1), *step_sizes)
        g' = 0 if q < 0 else g
        p <- p - s * sign(g');  prev <- g'

    Only the gradient's sign is used, so Rprop suits full-batch training; with minibatches
    the signs flip with the noise and the step sizes shrink. Changing ``lr`` after the first
    step has no effect (as in torch.optim). Rules: ``scale_by_rprop`` (no learning-rate rule).

    Args:
        params: parameters or param-group dicts.
        lr: initial step size (>= 0).
        etas: ``(eta_minus, eta_plus)`` with ``0 < eta_minus < 1 < eta_plus``.
        step_sizes: ``(min, max)`` step sizes, ``0 <= min <= max``.
        maximize: ascend instead of descend.
        **options: the engine options of :class:`~optimlab.chain.ChainOptimizer`.
    """

    algorithm = "Rprop"

    fused_group_key = False

    rules = (ScaleByRprop(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)),)

    def __init__(self, params: Params, lr: float | Tensor = 1e-2,
                 etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50), *, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, etas=etas, step_sizes=step_sizes,
                                      maximize=maximize),
                         foreach=foreach, fused=fused, capturable=capturable,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)


class ASGD(NamedOptimizer):
    """Averaged SGD (Polyak & Juditsky, 1992; Xu, 2011), as torch.optim.ASGD.

    With ``eta`` and ``mu`` from the previous step (``eta = lr``, ``mu = 1`` at the first)::

        g' = g + weight_decay * p
        p <- (1 - lambd * eta) * p - eta * g'
        ax <- ax + mu * (p - ax)            (ax <- p while mu == 1)
        eta <- lr / (1 + lambd * lr * t)^alpha;   mu <- 1 / max(1, t - t0)

    The averaged iterate is ``optimizer.state[p]["ax"]``; it starts averaging after ``t0``
    steps. Rules: ``add_l2 -> scale_by_averaged_sgd`` (no learning-rate rule: ``eta`` is it).

    Args:
        params: parameters or param-group dicts.
        lr: initial step size (>= 0).
        lambd: decay term (>= 0), both of the step size and of the weights.
        alpha: power of the step-size decay (>= 0).
        t0: step at which averaging starts (>= 0; ``inf`` never averages).
        weight_decay: L2 penalty added to the gradient (>= 0).
        maximize: ascend instead of descend.
        **options: the engine options of :class:`~optimlab.chain.ChainOptimizer`.
    """

    algorithm = "ASGD"

    fused_group_key = False

    rules = (AddWeights(weight_decay=0.0),
             ScaleByAveragedSgd(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6))

    def __init__(self, params: Params, lr: float | Tensor = 1e-2, lambd: float = 1e-4,
                 alpha: float = 0.75, t0: float = 1e6, weight_decay: float = 0,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False, *,
                 fused: bool | None = None, nonfinite: str = "ignore",
                 master_weights: bool = False, stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0,
                                      weight_decay=weight_decay, maximize=maximize),
                         foreach=foreach, fused=fused, capturable=capturable,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)
