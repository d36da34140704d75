"""Lion (EvoLved Sign Momentum)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..transforms.regularization import AddWeights
from ..transforms.scaling import ScaleByLearningRate
from ..transforms.sign import ScaleByLion
from .base import NamedOptimizer, Params

__all__ = ["Lion"]


class Lion(NamedOptimizer):
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2)::

        c = b1 * m + (1 - b1) * g
        p <- p - lr * (sign(c) + weight_decay * p)
        m <- b2 * m + (1 - b2) * g

    Every coordinate moves by ``lr`` (plus the decay), so Lion wants a learning rate about
    3-10x smaller than AdamW's and a weight decay 3-10x larger (the paper's advice), and keeps
    one state per parameter (``exp_avg``) instead of Adam's two. The weight decay is decoupled,
    as in the paper and AdamW. Rules: ``scale_by_lion -> add_decayed_weights -> lr``.

    Args:
        params: parameters or param-group dicts.
        lr: learning rate (>= 0).
        betas: ``(b1, b2)``, each in [0, 1): ``b1`` interpolates the update, ``b2`` the
            momentum.
        weight_decay: decoupled weight decay (>= 0).
        maximize: ascend instead of descend.
        **options: the engine options of :class:`~optimlab.chain.ChainOptimizer`
            (``foreach``, ``fused``, ``differentiable``, ``nonfinite``, ``master_weights``,
            ``stochastic_rounding``, ``state_dtype``).
    """

    algorithm = "Lion"

    capturable_group_key = False

    rules = (ScaleByLion(betas=(0.9, 0.99)), AddWeights(weight_decay=0.0),
             ScaleByLearningRate(lr=1e-4))

    def __init__(self, params: Params, lr: float | Tensor = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None,
                 nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize),
                         foreach=foreach, fused=fused, differentiable=differentiable,
                         nonfinite=nonfinite, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, state_dtype=state_dtype)
