"""The public base class for named optimizers: a ``torch.optim``-style class over a fixed chain
of rules.

Writing a new optimizer takes a rule (or several) from :mod:`optimlab.transforms`, or a new
:class:`~optimlab.transforms.Transform` written with :mod:`optimlab.ops`, and a subclass that
declares them and takes torch.optim-style arguments::

    class SignSGD(ol.NamedOptimizer):
        \"\"\"SignSGD (Bernstein et al., 2018): ``p <- p - lr * sign(g)``.\"\"\"

        rules = (SignRule(), T.scale_by_learning_rate(1e-3))

        def __init__(self, params, lr=1e-3, *, maximize=False, **options):
            super().__init__(params, dict(lr=lr, maximize=maximize), **options)

``options`` are the engine options every optimlab optimizer takes (``foreach``, ``fused``,
``nonfinite``, ``differentiable``, ``master_weights``, ``stochastic_rounding``,
``state_dtype``): the class gets the eager, compiled, low-precision and transactional paths of
:class:`~optimlab.chain.ChainOptimizer` with no code of its own. The group keys in ``defaults``
are the rules' hyperparameters (each rule's ``hyperparams`` names them) plus ``lr`` and
``maximize``; each param group may override them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from ..chain import ChainOptimizer
from ..transforms.base import Transform

__all__ = ["NamedOptimizer", "Params"]

#: What a named optimizer's ``params`` may be: tensors, or dicts of param groups.
Params = Iterable[Any]


class NamedOptimizer(ChainOptimizer):
    """A named optimizer: torch.optim's constructor contract over a declared chain of rules.

    Subclasses set :attr:`rules` (or override :meth:`transforms_for` where a group flag picks
    the rules, as Adam's ``decoupled_weight_decay`` does) and call ``super().__init__(params,
    defaults, **options)`` with ``defaults`` holding ``lr``, ``maximize`` and the rules' group
    keys.
    """

    #: The rules of every group, applied in order (the last is usually the learning rate).
    rules: ClassVar[tuple[Transform, ...]] = ()
    #: Whether groups carry torch.optim's ``capturable`` key (as the torch.optim twin does;
    #: ``fused_group_key`` likewise, from :class:`~optimlab.chain.ChainOptimizer`).
    capturable_group_key: ClassVar[bool] = True
    #: Whether sparse (COO) gradients are accepted (the rules must accept them too).
    supports_sparse_grads: ClassVar[bool] = False

    def transforms_for(self, group: Mapping[str, Any]) -> tuple[Transform, ...]:
        """The rules applied to ``group`` (:attr:`rules` unless overridden)."""
        return self.rules

    def __init__(self, params: Params, defaults: dict[str, Any], *,
                 foreach: bool | None = None, fused: bool | None = None,
                 capturable: bool = False, differentiable: bool = False,
                 nonfinite: str = "ignore", master_weights: bool = False,
                 stochastic_rounding: bool = False,
                 state_dtype: torch.dtype | None = None) -> None:
        name = type(self).__name__
        if "lr" not in defaults:
            raise TypeError(f"{name}: defaults must hold 'lr'")
        if capturable:
            raise ValueError(f"{name}: capturable=True (CUDA-graph capture) is not supported yet;"
                             " use fused=True for compiled kernels")
        if fused and foreach:
            # torch.optim's exception type and words for the same refusal
            raise RuntimeError("`foreach` and `fused` should not both be True.")
        if self.capturable_group_key:
            defaults = {**defaults, "capturable": capturable}
        super().__init__(params, (), lr=defaults["lr"],
                         maximize=defaults.get("maximize", False), nonfinite=nonfinite,
                         foreach=foreach, fused=fused, defaults=defaults,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype, differentiable=differentiable)
