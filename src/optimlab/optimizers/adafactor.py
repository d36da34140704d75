"""Adafactor (Shazeer & Stern, 2018), with torch.optim.Adafactor's arguments and results."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..transforms.factored import ScaleByAdafactor
from ..transforms.regularization import AddWeights
from ..transforms.scaling import ScaleByLearningRate
from .base import NamedOptimizer, Params

__all__ = ["Adafactor"]

#: The paper's cap on the relative step, ``rho_t = min(1e-2, 1 / sqrt(t))`` (its eq. 12 setting).
PAPER_RELATIVE_STEP_CAP = 1e-2

#: The paper's options as torch.optim.Adafactor has them (the rule's own defaults).
_VARIANT_OFF: dict[str, Any] = dict(relative_step=True, scale_parameter=True, beta1=None)


class Adafactor(NamedOptimizer):
    """Adafactor: factored second moments, update clipping and relative step sizes.

    Noam Shazeer & Mitchell Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost", ICML 2018. With the defaults it is torch.optim.Adafactor (torch 2.13): the same
    arguments, group keys, state keys (``step``, ``row_var``, ``col_var``, ``variance``) and
    results. At step ``t``, with ``G`` the gradient::

        beta2_hat_t = 1 - t^beta2_decay                       (paper: 1 - t^-0.8)
        rho_t = min(lr, 1 / sqrt(t))                          (relative step, paper eq. 12)
        alpha_t = max(eps2, RMS(p_{t-1})) * rho_t             (scaled by the parameter)
        p <- (1 - lr * weight_decay) * p                      (decoupled, as torch.optim)
        R, C <- beta2_hat_t R, C + (1 - beta2_hat_t) row/col means of G^2   (>= 2 dims)
        V = R C / max(mean(R), eps1)   or   V <- beta2_hat_t V + (1 - beta2_hat_t) G^2
        U = G / max(sqrt(V), eps1);  U_hat = U / max(1, RMS(U) / d)        (paper sec. 5)
        p <- p - alpha_t * U_hat

    Tensors of two or more dimensions are factored over their last two; vectors and scalars
    keep a full ``variance``. See :class:`~optimlab.transforms.factored.ScaleByAdafactor`.

    Options of the paper's variant, off by default (torch.optim's results hold then):

    * ``lr=None``: the paper's relative step ``rho_t = min(1e-2, 1 / sqrt(t))``. It is
      ``lr=1e-2`` (the group's ``lr``, which also scales ``weight_decay`` as torch does).
    * ``relative_step=False``: ``rho_t = lr``, an absolute step (schedulers drive it).
    * ``scale_parameter=False``: ``alpha_t = rho_t`` (no ``max(eps2, RMS(p))`` factor).
    * ``beta1``: a first moment of the clipped update, ``m <- beta1 m + (1 - beta1) U_hat``,
      stepped as ``p <- p - alpha_t m`` (state ``exp_avg``; no bias correction, as in the
      paper's ``beta1 = 0.9`` runs). ``None`` (default): no first moment, the paper's
      memory-saving setting.
    * Each of ``relative_step``, ``scale_parameter`` and ``beta1`` becomes a group key when
      set (a param group may also set it); unset, the groups hold torch.optim's keys only.
    * ``d``: the paper's clipping threshold (1.0 in the paper and torch); ``d=float("inf")``
      turns clipping off.

    Args:
        params: parameters or param-group dicts.
        lr: caps the relative step (default 1e-2, the paper's cap); ``None`` as above.
        beta2_decay: exponent of the second-moment decay, ``<= 0`` (default -0.8).
        eps: ``(eps1, eps2)``: ``eps1`` floors ``sqrt(V)`` and ``mean(R)`` (``None``: the
            dtype's machine epsilon), ``eps2`` floors ``RMS(p)`` (default ``(None, 1e-3)``).
        d: clipping threshold, ``>= 1`` (default 1.0).
        weight_decay: decoupled weight decay coefficient, applied as ``lr * weight_decay``.
        foreach, maximize: as torch.optim.Adafactor.
        relative_step, scale_parameter, beta1: the paper's variant, above.
        fused, differentiable, nonfinite, master_weights, stochastic_rounding, state_dtype:
            optimlab's engine options (:class:`~optimlab.chain.ChainOptimizer`).
    """

    algorithm = "Adafactor"

    capturable_group_key = False
    fused_group_key = False

    rules = (ScaleByAdafactor(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, beta1=None,
                              relative_step=True, scale_parameter=True),
             AddWeights(weight_decay=0.0), ScaleByLearningRate(lr=1e-2))

    def __init__(self, params: Params, lr: float | Tensor | None = 1e-2,
                 beta2_decay: float = -0.8, eps: tuple[float | None, float] = (None, 1e-3),
                 d: float = 1.0, weight_decay: float = 0.0, *, foreach: bool | None = None,
                 maximize: bool = False, relative_step: bool = True,
                 scale_parameter: bool = True, beta1: float | None = None,
                 fused: bool | None = None, differentiable: bool = False,
                 nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        if lr is None:
            if relative_step is not True:
                raise ValueError("lr=None (the paper's relative step) needs relative_step=True;"
                                 " give an lr for an absolute step")
            lr = PAPER_RELATIVE_STEP_CAP
        # The variant's keys enter the groups only when set: torch.optim.Adafactor's groups,
        # and its state dicts (which then load here), keep exactly torch's keys.
        variant = {k: v for k, v in dict(relative_step=relative_step,
                                         scale_parameter=scale_parameter, beta1=beta1).items()
                   if v != _VARIANT_OFF[k]}
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                                      weight_decay=weight_decay, maximize=maximize, **variant),
                         foreach=foreach, fused=fused, capturable=False,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)
