"""Schedule-Free AdamW and SGD (Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, 2024,
"The Road Less Scheduled", https://arxiv.org/abs/2405.15682; the core of the winning entry of
the AlgoPerf 2024 self-tuning track).

No learning-rate schedule: the iterates are averaged instead, and gradients are taken at a
point between the base iterate ``z`` and the average ``x`` (see
:mod:`optimlab.transforms.schedule_free` for the update). The parameters hold that point,
``y``, while training, and the average ``x``, the weights to evaluate, after
:meth:`~ScheduleFreeOptimizer.eval`::

    opt = ScheduleFreeAdamW(model.parameters(), lr=2.5e-3, warmup_steps=1000)
    for batch in loader:
        opt.train()           # parameters <- y (a no-op when already in training mode)
        model.train(); loss_fn(model(batch)).backward(); opt.step(); opt.zero_grad()
        ...
        opt.eval()            # parameters <- x before evaluating or saving
        model.eval(); evaluate(model)

BatchNorm: the running statistics are accumulated at ``y`` during training, not at ``x``.
Before evaluating, after ``opt.eval()``, recompute them at ``x``: ``optimlab.update_bn(loader,
model)`` (one pass), or a few forward passes in ``model.train()`` mode under
``torch.no_grad()``. Models without BatchNorm need nothing.

Checkpoints: ``state_dict()`` holds ``z`` and the other states, and each param group's
``train_mode`` (which of ``y`` or ``x`` the parameters held when it was saved). Save the
model and the optimizer in the same mode (the authors advise eval mode: the saved weights are
then the averaged ones) and load both: the loaded optimizer takes the saved mode, and
``opt.train()`` resumes training from either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import ops
from ..transforms.base import Transform
from ..transforms.regularization import AddWeights
from ..transforms.scaling import ScaleByLearningRate
from ..transforms.schedule_free import (
    HOST_STATES,
    ScaleBySecondMoment,
    ScheduleFreeAverage,
    ScheduleFreeInterpolate,
)
from .base import NamedOptimizer, Params

__all__ = ["ScheduleFreeAdamW", "ScheduleFreeOptimizer", "ScheduleFreeSGD"]

_BETAS = (0.9, 0.999)


class ScheduleFreeOptimizer(NamedOptimizer):
    """The train/eval switch shared by the Schedule-Free optimizers.

    The mode is stored in every param group (key ``train_mode``, ``True`` at construction:
    with no state yet, ``x = y = z``). :meth:`train` and :meth:`eval` are idempotent;
    :meth:`step` in eval mode raises ``RuntimeError``.
    """

    #: The rule holding ``z`` (each subclass's chain contains it).
    averaging: ClassVar[ScheduleFreeAverage]
    #: ``z`` is the iterate itself (the weights are read from it by :meth:`eval`): it stays
    #: in the parameters' precision under ``state_dtype`` (bf16 or 8-bit storage would move
    #: the evaluated weights by its rounding); the second moment may be stored low.
    full_precision_states: ClassVar[tuple[str, ...]] = ("z",)

    @property
    def train_mode(self) -> bool:
        """Whether the parameters hold ``y`` (training) rather than the average ``x``."""
        return all(g["train_mode"] for g in self.param_groups)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, in the optimizer's current mode (its parameters have no ``z`` yet, so
        they hold ``x = y`` in either mode)."""
        if getattr(self, "param_groups", None):
            param_group = {**param_group, "train_mode": self.train_mode}
        super().add_param_group(param_group)

    @torch.no_grad()
    def _switch(self, to_train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            beta = self.averaging.interpolation(group)
            # y = lerp(x, z, 1 - beta);  x = lerp(y, z, 1 - 1/beta)
            weight = 1.0 - beta if to_train else 1.0 - 1.0 / beta
            zkey = self.averaging.state_key("z")
            for p in group["params"]:
                st = self.state.get(p, {})
                if zkey not in st:
                    continue  # never stepped: x = y = z
                target = st.get("master_param", p)
                work = target if target.dtype in (torch.float32, torch.float64) or \
                    target.is_complex() else target.float()
                ops.lerp_([work], [st[zkey].to(work.dtype)], weight)
                if work is not target:
                    target.copy_(work)
                if target is not p:
                    p.copy_(target)
            group["train_mode"] = to_train

    def train(self) -> None:
        """Parameters <- ``y``, the point where training gradients are taken (idempotent)."""
        self._switch(True)

    def eval(self) -> None:
        """Parameters <- the average ``x``, the weights to evaluate (idempotent)."""
        self._switch(False)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One training step (at ``y``); refused in eval mode, before anything changes."""
        if not self.train_mode:
            raise RuntimeError(
                f"{type(self).__name__}.step() was called in eval mode: the parameters hold "
                "the averaged weights x, not the training point y. Call optimizer.train() "
                "before training steps (and optimizer.eval() before evaluation)")
        return self._step(closure)

    def _restore_storage(self, state_dict: Any) -> None:
        # torch.optim casts every floating state to its parameter's dtype: put the averaging
        # weights back as saved (float64 on the CPU), so a float32 model loses nothing.
        super()._restore_storage(state_dict)
        saved = state_dict["state"]
        for group, sg in zip(self.param_groups, state_dict["param_groups"]):
            for p, pid in zip(group["params"], sg["params"]):
                for k in HOST_STATES:
                    v = saved.get(pid, {}).get(k)
                    if isinstance(v, Tensor) and k in self.state[p]:
                        self.state[p][k] = v.detach().to("cpu", torch.float64, copy=True)


class ScheduleFreeAdamW(ScheduleFreeOptimizer):
    """Schedule-Free AdamW (Defazio et al., 2024, Algorithm 1; defaults of the authors'
    release). With ``t`` this parameter's step and ``g`` the gradient at the parameters ``y``::

        v     <- b2 v + (1 - b2) g^2
        d      = g / (sqrt(v / (1 - b2^t)) + eps) + weight_decay * y
        gamma  = lr * min(1, t / warmup_steps)
        z     <- z - gamma d
        w_t    = t^r * (max_{i<=t} gamma_i)^weight_lr_power,   c = w_t / sum_{i<=t} w_i
        x     <- (1 - c) x + c z,                          y = (1 - b1) z + b1 x

    (``x`` is not stored: ``y`` is updated directly.) Differences from the paper's Algorithm
    1, as in the authors' release: the bias correction divides ``v`` (the paper folds
    ``sqrt(1 - b2^t)`` into ``gamma_t``, also into the averaging weights), and the weights
    use the largest ``gamma`` so far (the same for a learning rate that never decreases).

    ``b1`` (``betas[0]``) interpolates between ``z`` and ``x``; there is no first moment.
    Call :meth:`train` / :meth:`eval` around training and evaluation (see
    :mod:`optimlab.optimizers.schedule_free` for BatchNorm and checkpoints). Rules:
    ``ScaleBySecondMoment -> AddWeights (at y) -> ScheduleFreeAverage ->
    ScheduleFreeInterpolate -> ScaleByLearningRate``.
    """

    algorithm = "ScheduleFreeAdamW"
    capturable_group_key = False
    fused_group_key = False

    averaging = ScheduleFreeAverage(momentum=_BETAS, warmup_steps=0, r=0.0,
                                    weight_lr_power=2.0).with_keys(momentum="betas")
    rules = (ScaleBySecondMoment(betas=_BETAS, eps=1e-8), AddWeights(weight_decay=0.0),
             averaging, ScheduleFreeInterpolate(averaging), ScaleByLearningRate(lr=0.0025))

    def __init__(self, params: Params, lr: float | Tensor = 0.0025,
                 betas: tuple[float, float] = _BETAS, eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, *, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r,
                                      weight_lr_power=weight_lr_power, maximize=maximize,
                                      train_mode=True), **options)


class ScheduleFreeSGD(ScheduleFreeOptimizer):
    """Schedule-Free SGD (Defazio et al., 2024; defaults of the authors' release). With ``t``
    this parameter's step and ``g`` the gradient at the parameters ``y``::

        d      = g + weight_decay * y
        gamma  = lr * min(1, t / warmup_steps)
        z     <- z - gamma d
        w_t    = t^r * (max_{i<=t} gamma_i)^weight_lr_power,   c = w_t / sum_{i<=t} w_i
        x     <- (1 - c) x + c z,                          y = (1 - momentum) z + momentum x

    ``momentum`` in (0, 1) interpolates between ``z`` and ``x`` (it replaces heavy-ball
    momentum; no buffer is kept). Call :meth:`train` / :meth:`eval` around training and
    evaluation (see :mod:`optimlab.optimizers.schedule_free`). Rules:
    ``AddWeights (at y) -> ScheduleFreeAverage -> ScheduleFreeInterpolate ->
    ScaleByLearningRate``.
    """

    algorithm = "ScheduleFreeSGD"
    capturable_group_key = False
    fused_group_key = False

    averaging = ScheduleFreeAverage(momentum=0.9, warmup_steps=0, r=0.0, weight_lr_power=2.0)
    rules: ClassVar[tuple[Transform, ...]] = (
        AddWeights(weight_decay=0.0), averaging, ScheduleFreeInterpolate(averaging),
        ScaleByLearningRate(lr=1.0))

    def __init__(self, params: Params, lr: float | Tensor = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, *, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r,
                                      weight_lr_power=weight_lr_power, maximize=maximize,
                                      train_mode=True), **options)
