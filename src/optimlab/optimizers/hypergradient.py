"""Hypergradient descent: SGD-HD and Adam-HD (Baydin et al., 2018).

The rules are in :mod:`optimlab.transforms.hypergradient`. The learning rate is adapted per
param group from a dot product over the group's parameters, so every group gets its own
instance of the rule that reduces it (:class:`PerGroupStatistics`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..transforms.adaptive import ScaleByAdam
from ..transforms.base import Transform
from ..transforms.hypergradient import (
    RATIO,
    STEPS,
    HypergradientProbe,
    HypergradientRate,
    ScaleByHypergradientRate,
    group_scalar_dtype,
)
from ..transforms.momentum import Trace
from ..transforms.regularization import AddWeights
from .base import NamedOptimizer, Params

__all__ = ["SGDHD", "AdamHD", "PerGroupStatistics", "group_dtype"]

_BETAS = (0.9, 0.999)


class PerGroupStatistics(NamedOptimizer):
    """Named optimizers whose ``needs_global`` rules reduce over one param group, not over all
    of them: the chain shares such a rule's statistic among the buckets that use the *same*
    instance, so each group (by its position) gets a copy of its own, made once and kept
    (rules hold no tensors: a copy is a few attributes). ``optimizer.info`` keys get the
    group's index (``hypergrad_ratio[0]``)."""

    #: The rules of a group before the per-group copies (override :meth:`base_rules` to pick).
    rules: ClassVar[tuple[Transform, ...]] = ()

    def base_rules(self, group: Mapping[str, Any]) -> tuple[Transform, ...]:
        """The rules shared by every group (:attr:`rules` unless overridden)."""
        return self.rules

    def transforms_for(self, group: Mapping[str, Any]) -> tuple[Transform, ...]:
        """:meth:`base_rules` with a copy of each ``needs_global`` rule for this group."""
        base = self.base_rules(group)
        groups = self.__dict__.get("param_groups", ())
        index = next((i for i, g in enumerate(groups) if g is group), None)
        if index is None:  # a group being validated before it is added
            return base
        cache: dict[tuple[Any, ...], tuple[Transform, ...]] = self.__dict__.setdefault(
            "_group_rules", {})
        key = (index, base)
        if key not in cache:
            own = []
            for t in base:
                if t.needs_global:
                    t = copy.copy(t)
                    t.info_key = f"{getattr(t, 'info_key', type(t).__name__)}[{index}]"
                own.append(t)
            cache[key] = tuple(own)
        return cache[key]


def group_dtype(group: Mapping[str, Any]) -> torch.dtype:
    """The dtype of a group's scalars before they exist (its first parameter's real dtype)."""
    ps = group["params"]
    return group_scalar_dtype(ps[0]) if ps else torch.get_default_dtype()


class _Hypergradient(PerGroupStatistics):
    """What SGD-HD and Adam-HD share: the current learning rate of a group.

    Distributed: under DDP every rank holds whole tensors and the same gradients, so the rate
    is the single-process one; under FSDP2 (DTensor parameters) each rank sums its shards'
    products and one all-reduce per bucket adds them (:func:`optimlab.ops.dot`): the global
    rate on every rank, up to the order of the additions; under ``ZeroRedundancyOptimizer``
    each rank's optimizer holds only its share of the parameters, so the dot product, and the
    rate, are the share's."""

    def current_lr(self, group_index: int = 0) -> Tensor:
        """The group's adapted learning rate ``alpha_t = lr * rho_t``, a 0-dim tensor (``lr``
        before the first step). Picking the newest per-parameter copy reads the copies' step
        counts on the host (a synchronization on a GPU): call it for logging, not per step."""
        group = self.param_groups[group_index]
        held = [self.state[p] for p in group["params"] if RATIO in self.state.get(p, {})]
        if not held:
            return torch.tensor(float(group["lr"]), dtype=group_dtype(group))
        st = max(held, key=lambda s: float(s[STEPS]))
        return st[RATIO].detach() * group["lr"]


_PROBE = HypergradientProbe()
_LAST = ScaleByHypergradientRate()


class SGDHD(_Hypergradient):
    """SGD with hypergradient descent on the learning rate (SGD-HD, and SGDN-HD with
    ``nesterov=True``), Baydin et al. (2018), Algorithm 1 and its momentum forms::

        d_t     = g_t (+ momentum / Nesterov as torch.optim.SGD, L2 ``weight_decay`` in g_t)
        alpha_t = max(alpha_{t-1} + hypergrad_lr * g_t . d_{t-1}, 0)   (over the group)
        p_t     = p_{t-1} - alpha_t * d_t

    ``lr`` is ``alpha_0`` (a scheduler scales the adapted rate; see
    :mod:`optimlab.transforms.hypergradient`). ``hypergrad_lr`` defaults to the paper's
    ``beta = 1e-3``. :meth:`current_lr` gives ``alpha_t``.
    Rules: ``add_l2 -> probe -> rate -> trace -> scale_by_hypergradient_rate``.
    """

    algorithm = "SGDHD"
    capturable_group_key = False

    rules = (AddWeights(weight_decay=0.0), _PROBE, HypergradientRate(hypergrad_lr=1e-3),
             Trace(momentum=0.0, dampening=0.0, nesterov=False), _LAST)

    def __init__(self, params: Params, lr: float | Tensor = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float = 0, nesterov: bool = False,
                 hypergrad_lr: float = 1e-3, *, maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      hypergrad_lr=hypergrad_lr, maximize=maximize),
                         **options)


class AdamHD(_Hypergradient):
    """Adam with hypergradient descent on the learning rate (Adam-HD), Baydin et al. (2018)::

        d_t     = m_hat_t / (sqrt(v_hat_t) + eps)        (Adam, as torch.optim.Adam)
        alpha_t = max(alpha_{t-1} + hypergrad_lr * g_t . d_{t-1}, 0)   (over the group)
        p_t     = p_{t-1} - alpha_t * d_t

    ``weight_decay`` is L2 added to ``g_t`` (as torch.optim.Adam); ``amsgrad`` as there.
    ``hypergrad_lr`` defaults to the paper's ``beta = 1e-7``. :meth:`current_lr` gives
    ``alpha_t``. Rules: ``add_l2 -> probe -> rate -> scale_by_adam ->
    scale_by_hypergradient_rate``.
    """

    algorithm = "AdamHD"

    rules = (AddWeights(weight_decay=0.0), _PROBE, HypergradientRate(hypergrad_lr=1e-7),
             ScaleByAdam(betas=_BETAS, eps=1e-8, amsgrad=False), _LAST)

    def __init__(self, params: Params, lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = _BETAS, eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, hypergrad_lr: float = 1e-7,
                 *, maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, hypergrad_lr=hypergrad_lr,
                                      maximize=maximize),
                         **options)
