"""The classic optimizers as thin compositions of transforms.

Each class takes torch.optim's arguments with torch.optim's defaults, keeps torch.optim's group
and state keys (checkpoints load across), and adds keyword-only options documented on
:class:`~optimlab.chain.ChainOptimizer`: ``nonfinite``, ``fused=True`` meaning "compile the
chain", and for bf16/fp16 parameters ``master_weights`` / ``stochastic_rounding``.
None of them writes update math: the rules live in :mod:`optimlab.transforms`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..transforms.adaptive import (
    ScaleByAdadelta,
    ScaleByAdagrad,
    ScaleByAdam,
    ScaleByAdamax,
    ScaleByNAdam,
    ScaleByRAdam,
    ScaleByRms,
)
from ..transforms.base import Transform
from ..transforms.momentum import Trace
from ..transforms.regularization import AddWeights
from ..transforms.scaling import ScaleByInverseTimeDecay, ScaleByLearningRate
from .base import NamedOptimizer, Params

__all__ = ["SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop"]

_WD = AddWeights(weight_decay=0.0)
_LR = ScaleByLearningRate(lr=1e-3)
_BETAS = (0.9, 0.999)


class SGD(NamedOptimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.

    Batch, mini-batch and single-sample (stochastic) gradient descent are this optimizer fed
    batches of different sizes. Rules: ``add_l2 -> trace -> scale_by_learning_rate``.
    """

    algorithm = "SGD"

    capturable_group_key = False
    supports_sparse_grads = True

    rules = (_WD, Trace(momentum=0.0, dampening=0.0, nesterov=False), _LR)

    def __init__(self, params: Params, lr: float | Tensor = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float | Tensor = 0, nesterov: bool = False,
                 *, maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None,
                 nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize),
                         foreach=foreach, fused=fused, capturable=False,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)


class Adagrad(NamedOptimizer):
    """AdaGrad. Rules: ``add_l2 -> scale_by_adagrad -> scale_by_inverse_time_decay -> lr``."""

    algorithm = "Adagrad"

    capturable_group_key = False
    supports_sparse_grads = True

    rules = (_WD, ScaleByAdagrad(eps=1e-10, initial_accumulator_value=0.0),
              ScaleByInverseTimeDecay(lr_decay=0.0), _LR)

    def __init__(self, params: Params, lr: float | Tensor = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize),
                         foreach=foreach, fused=fused, capturable=False,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)


class RMSprop(NamedOptimizer):
    """RMSprop, plain or centered, with momentum. Rules: ``add_l2 -> scale_by_rms -> trace ->
    lr`` (the trace has no dampening and no Nesterov term, as in torch.optim.RMSprop)."""

    algorithm = "RMSprop"

    fused_group_key = False

    rules = (_WD, ScaleByRms(alpha=0.99, eps=1e-8, centered=False),
              Trace(momentum=0.0, dampening=0.0, nesterov=False), _LR)

    def __init__(self, params: Params, lr: float | Tensor = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
                 centered: bool = False, capturable: bool = False, foreach: bool | None = None,
                 maximize: bool = False, differentiable: bool = False, *,
                 fused: bool | None = None, nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize),
                         foreach=foreach, fused=fused, capturable=capturable,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)


def _decay_placement(rule: Transform) -> dict[bool, tuple[Transform, ...]]:
    """Coupled L2 goes before the adaptive rule, decoupled weight decay after it."""
    return {False: (_WD, rule, _LR), True: (rule, _WD, _LR)}


class _DecayChoice(NamedOptimizer):
    """Optimizers whose groups choose coupled or decoupled weight decay."""

    _chains: ClassVar[dict[bool, tuple[Transform, ...]]] = {}

    def transforms_for(self, group: Mapping[str, Any]) -> tuple[Transform, ...]:
        """Coupled or decoupled weight decay, by the group's ``decoupled_weight_decay``."""
        return self._chains[bool(group.get("decoupled_weight_decay", False))]


class Adam(_DecayChoice):
    """Adam (and AMSGrad). ``decoupled_weight_decay=True`` makes it AdamW.

    Rules: ``add_l2 -> scale_by_adam -> lr``, or ``scale_by_adam -> add_decayed_weights -> lr``.
    """

    algorithm = "Adam"

    _chains = _decay_placement(ScaleByAdam(betas=_BETAS, eps=1e-8, amsgrad=False))

    def __init__(self, params: Params, lr: float | Tensor = 1e-3,
                 betas: tuple[float | Tensor, float | Tensor] = _BETAS, eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False, nonfinite: str = "ignore",
                 master_weights: bool = False, stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        if foreach:  # torch.optim.Adam's refusal (its foreach kernels take numbers only)
            for key, v in (("lr", lr), ("betas[0]", betas[0]), ("betas[1]", betas[1])):
                if isinstance(v, Tensor):
                    raise ValueError(f"{key} as a Tensor is not supported for capturable=False "
                                     "and foreach=True")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         foreach=foreach, fused=fused, capturable=capturable,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay (default 1e-2).

    Its ``algorithm`` is Adam's: Adam and AdamW load each other's state dicts (as
    torch.optim's do), and an AdamW stays decoupled whatever it loads.
    """

    def __init__(self, params: Params, lr: float | Tensor = 1e-3,
                 betas: tuple[float | Tensor, float | Tensor] = _BETAS, eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True, nonfinite=nonfinite,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)

    def transforms_for(self, group: Mapping[str, Any]) -> tuple[Transform, ...]:
        """Always the decoupled rules (AdamW's groups keep torch's key but cannot couple)."""
        return self._chains[True]

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also runs when loading a state dict: an Adam checkpoint loaded here is AdamW's from
        # now on (as torch.optim.AdamW does), so a checkpoint saved later resumes decoupled.
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


class NAdam(_DecayChoice):
    """NAdam (Dozat, 2016), with torch.optim's momentum decay and optional decoupled decay."""

    algorithm = "NAdam"

    fused_group_key = False

    _chains = _decay_placement(ScaleByNAdam(betas=_BETAS, eps=1e-8, momentum_decay=4e-3))

    def __init__(self, params: Params, lr: float | Tensor = 2e-3,
                 betas: tuple[float, float] = _BETAS, eps: float = 1e-8,
                 weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         foreach=foreach, fused=fused, capturable=capturable,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)


class RAdam(_DecayChoice):
    """RAdam (Liu et al., 2020), with optional decoupled weight decay."""

    algorithm = "RAdam"

    fused_group_key = False

    _chains = _decay_placement(ScaleByRAdam(betas=_BETAS, eps=1e-8))

    def __init__(self, params: Params, lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = _BETAS, eps: float = 1e-8,
                 weight_decay: float = 0, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         foreach=foreach, fused=fused, capturable=capturable,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)


class Adadelta(NamedOptimizer):
    """Adadelta (Zeiler, 2012). Rules: ``add_l2 -> scale_by_adadelta -> lr`` (lr=1.0)."""

    algorithm = "Adadelta"

    fused_group_key = False

    rules = (_WD, ScaleByAdadelta(rho=0.9, eps=1e-6), _LR)

    def __init__(self, params: Params, lr: float | Tensor = 1.0, rho: float = 0.9,
                 eps: float = 1e-6, weight_decay: float = 0, foreach: bool | None = None, *,
                 capturable: bool = False, maximize: bool = False, differentiable: bool = False,
                 fused: bool | None = None, nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize),
                         foreach=foreach, fused=fused, capturable=capturable,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)


class Adamax(NamedOptimizer):
    """Adamax (Kingma & Ba, 2015). Rules: ``add_l2 -> scale_by_adamax -> lr``."""

    algorithm = "Adamax"

    fused_group_key = False

    rules = (_WD, ScaleByAdamax(betas=_BETAS, eps=1e-8), _LR)

    def __init__(self, params: Params, lr: float | Tensor = 2e-3,
                 betas: tuple[float, float] = _BETAS, eps: float = 1e-8,
                 weight_decay: float = 0, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, capturable: bool = False,
                 fused: bool | None = None, nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize),
                         foreach=foreach, fused=fused, capturable=capturable,
                         differentiable=differentiable, nonfinite=nonfinite,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype)
