"""Prodigy (Mishchenko & Defazio, 2023): Adam whose step size estimates itself.

The rules are in :mod:`optimlab.transforms.prodigy`; the distance estimate ``d`` is kept per
param group (:class:`~optimlab.optimizers.hypergradient.PerGroupStatistics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..transforms.base import Transform
from ..transforms.prodigy import ProdigyProbe, ProdigyStep
from ..transforms.regularization import AddWeights
from .base import Params
from .hypergradient import PerGroupStatistics, group_dtype

__all__ = ["Prodigy"]

_BETAS = (0.9, 0.999)
_PROBE = ProdigyProbe()
_STEP = ProdigyStep(betas=_BETAS, beta3=None, eps=1e-8, weight_decay=0.0, decouple=True,
                    use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0,
                    growth_rate=float("inf"))
#: coupled L2 (``decouple=False``) joins the gradient first; decoupled decay is in the step
_CHAINS = {False: (AddWeights(weight_decay=0.0), _PROBE, _STEP), True: (_PROBE, _STEP)}


class Prodigy(PerGroupStatistics):
    """Prodigy, Mishchenko & Defazio (2023), "Prodigy: An Expeditiously Adaptive
    Parameter-Free Learner", Algorithm 4, with the defaults and scalings of the authors'
    release (``prodigyopt``)::

        m <- b1 m + (1 - b1) d g ;  v <- b2 v + (1 - b2) d^2 g^2
        r <- b3 r + (d/d0) dlr <g, p0 - p> ;  s <- b3 s + (d/d0) dlr g   (over the group)
        d <- max(d, min(d_max, ...)) from d_hat = d_coef r / |s|_1      (dlr = d lr bc)
        p <- p - dlr (m / (sqrt(v) + d eps) + weight_decay p)

    (the exact rule is in :mod:`optimlab.transforms.prodigy`). Keep ``lr = 1`` and tune
    ``d_coef`` if needed; a scheduler may drive ``lr`` (cosine annealing is the authors'
    advice). ``decouple=False`` makes ``weight_decay`` an L2 term added to ``g``.
    :meth:`current_d` gives a group's ``d``; the effective learning rate is ``d * lr``.
    State per parameter: ``exp_avg``, ``exp_avg_sq``, ``s``, ``displacement`` (``p0 - p``,
    kept as the sum of the updates: see :mod:`optimlab.transforms.prodigy`) and copies of the group
    scalars ``d``, ``d_max``, ``d_numerator``, ``k``.

    Distributed: under DDP every rank holds whole tensors and the same gradients, so ``d`` is
    the single-process one; under FSDP2 (DTensor parameters) the sums over the group (the
    progress dot product and the l1 norm of ``s``) are all-reduced across the shards
    (:func:`optimlab.ops.dot`, :func:`optimlab.ops.whole`): the global ``d`` on every rank, up
    to the order of the additions; under ``ZeroRedundancyOptimizer`` each rank's optimizer holds
    only its share of the parameters, so ``d`` is estimated from the share.
    """

    algorithm = "Prodigy"

    def __init__(self, params: Params, lr: float | Tensor = 1.0,
                 betas: tuple[float, float] = _BETAS, beta3: float | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, decouple: bool = True,
                 use_bias_correction: bool = False, safeguard_warmup: bool = False,
                 d0: float = 1e-6, d_coef: float = 1.0, growth_rate: float = float("inf"), *,
                 maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, beta3=beta3, eps=eps,
                                      weight_decay=weight_decay, decouple=decouple,
                                      use_bias_correction=use_bias_correction,
                                      safeguard_warmup=safeguard_warmup, d0=d0, d_coef=d_coef,
                                      growth_rate=growth_rate, maximize=maximize),
                         **options)

    def base_rules(self, group: Mapping[str, Any]) -> tuple[Transform, ...]:
        """Coupled L2 before the rules, or decoupled decay inside the step (``decouple``)."""
        return _CHAINS[bool(group.get("decouple", True))]

    def current_d(self, group_index: int = 0) -> Tensor:
        """The group's distance estimate ``d``, a 0-dim tensor (``d0`` before the first step).
        Picking the newest per-parameter copy reads their ``k`` on the host (a
        synchronization on a GPU): call it for logging, not per step."""
        group = self.param_groups[group_index]
        held = [self.state[p] for p in group["params"] if "d" in self.state.get(p, {})]
        if not held:
            return torch.tensor(float(group["d0"]), dtype=group_dtype(group))
        return max(held, key=lambda s: float(s["k"]))["d"].detach().clone()
