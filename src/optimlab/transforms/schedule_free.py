"""Schedule-Free learning (Defazio et al., 2024, "The Road Less Scheduled",
https://arxiv.org/abs/2405.15682): the rules of :class:`~optimlab.ScheduleFreeAdamW` and
:class:`~optimlab.ScheduleFreeSGD`.

Schedule-Free keeps three sequences: the base iterate ``z``, its weighted average ``x`` and
the point ``y`` between them where gradients are taken::

    y_t     = (1 - beta) z_t + beta x_t
    z_{t+1} = z_t - gamma_t d_t                     (d_t: the direction at y_t)
    x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}

The parameters hold ``y`` (in training) and the state holds ``z``; ``x`` is not stored:
``x = (y - (1 - beta) z) / beta``. Eliminating ``x`` gives the step on the parameters::

    y_{t+1} = y_t + c_{t+1} (z_{t+1} - y_t) - gamma_t (1 - beta) (1 - c_{t+1}) d_t

:class:`ScheduleFreeAverage` steps ``z`` and returns ``warmup_t (1 - beta) (1 - c) d_t`` (the
chain's learning-rate step adds ``-lr`` times it); :class:`ScheduleFreeInterpolate`, right
before that step, moves the parameters toward the new ``z``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import ops
from .adaptive import _check_betas, _check_eps
from .base import Bucket, Transform, check_range, zeros_like

__all__ = [
    "HOST_STATES",
    "ScaleBySecondMoment",
    "ScheduleFreeAverage",
    "ScheduleFreeInterpolate",
    "averaging_weight",
]

#: The per-parameter scalar states of :class:`ScheduleFreeAverage` (float64, on the CPU).
HOST_STATES = ("weight_sum", "lr_max")


class ScaleBySecondMoment(Transform):
    """Adam's normalization without the first moment (Schedule-Free AdamW's direction)::

        v <- b2 * v + (1 - b2) * u^2
        out = u / (sqrt(v / (1 - b2^t)) + eps)

    Only ``betas[1]`` is read (Schedule-Free uses ``betas[0]`` to interpolate, see
    :class:`ScheduleFreeAverage`). Group keys: ``betas``, ``eps``; state: ``exp_avg_sq``.
    """

    elementwise = True

    state_keys = ("exp_avg_sq",)

    def validate(self, group: Mapping[str, Any]) -> None:
        _check_betas(self, group)
        _check_eps(self, group)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        return {self.state_key("exp_avg_sq"): zeros_like(param)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        b2 = float(self.hyperparameter(group, "betas")[1])
        return {"b2": b2, "one_minus_b2": 1.0 - b2, "bc2_sqrt": math.sqrt(1.0 - b2**b.step),
                "eps": float(self.hyperparameter(group, "eps"))}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        v = b.state[self.state_key("exp_avg_sq")]
        ops.mul_(v, sc["b2"])
        ops.addcmul_(v, u, u, sc["one_minus_b2"])
        denom = ops.sqrt(v)
        ops.div_(denom, sc["bc2_sqrt"])
        ops.add_scalar_(denom, sc["eps"])
        return ops.div(u, denom)


def _as_kernel_number(v: float, dtype: torch.dtype) -> float:
    """``v`` rounded to the precision the kernels compute in for ``dtype`` (float32 unless
    float64): a float32 tensor ``lr`` and the number it was made from then step alike."""
    if dtype in (torch.float64, torch.complex128):
        return v
    return struct.unpack("f", struct.pack("f", v))[0]


def averaging_weight(t: int, gamma: float, lr_max: float, r: float, power: float
                     ) -> tuple[float, float]:
    """``(w_t, new lr_max)``: the weight of ``z_t`` in the average, ``w_t = t^r *
    max(lr_max, gamma_t)^power`` (the authors' release; the paper's ``c_{t+1} = gamma_t^2 /
    sum_i gamma_i^2`` is ``r = 0, power = 2`` with a learning rate that never decreases)."""
    top = max(lr_max, gamma)
    return float(t) ** r * top**power, top


class ScheduleFreeAverage(Transform):
    """The Schedule-Free step on ``z``, and the update of the parameters (``y``), for a
    direction ``u``::

        gamma_t = lr * min(1, t / warmup_steps)                  (1 without warmup)
        w_t     = t^r * (max_{i<=t} gamma_i)^weight_lr_power,   c_{t+1} = w_t / sum_{i<=t} w_i
        z      <- z - gamma_t u
        out     = min(1, t / warmup_steps) * (1 - beta) * (1 - c_{t+1}) * u

    The chain adds ``-lr * out`` to the parameters after :class:`ScheduleFreeInterpolate`
    moved them toward ``z``, which must come right after this rule.

    ``beta`` is the group's ``momentum`` (SGD) or, renamed with ``with_keys(momentum="betas")``,
    ``betas[0]`` (AdamW); it must lie in (0, 1) so that ``x`` can be recovered from ``y`` and
    ``z``. ``c = 0`` while every weight is zero (``lr = 0``). Group keys: ``momentum``,
    ``warmup_steps``, ``r``, ``weight_lr_power``; state: ``z`` (shaped like the parameter) and
    the scalars ``weight_sum`` and ``lr_max`` (float64 on the CPU, read on the host; the
    parameters stepped together share them: each parameter counts its own steps).
    """

    elementwise = True

    state_keys = ("z", *HOST_STATES)

    def interpolation(self, group: Mapping[str, Any]) -> float:
        """``beta``: the group's ``momentum``, or the first entry of ``betas``."""
        beta = self.hyperparameter(group, "momentum")
        return float(beta[0] if isinstance(beta, (tuple, list)) else beta)

    def validate(self, group: Mapping[str, Any]) -> None:
        key = self.group_key("momentum")
        beta = self.hyperparameter(group, "momentum")
        if isinstance(beta, (tuple, list)):
            key, beta = f"{key}[0]", beta[0] if beta else None
        check_range(key, beta, low=0.0, high=1.0, low_open=True)
        steps = self.hyperparameter(group, "warmup_steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{self.group_key('warmup_steps')} must be an integer >= 0, got "
                             f"{steps!r}")
        check_range(self.group_key("r"), self.hyperparameter(group, "r"), low=0.0, high=None)
        check_range(self.group_key("weight_lr_power"),
                    self.hyperparameter(group, "weight_lr_power"), low=0.0, high=None)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        z, ws, top = self.state_names()
        host = torch.tensor(0.0, dtype=torch.float64)
        # z_1 = y_1: a clone, not detached, so that a recorded step (differentiable=True,
        # under which the chain makes the state) keeps the parameter's history in z.
        return {z: param.clone(memory_format=torch.preserve_format), ws: host,
                top: host.clone()}

    def _host(self, b: Bucket) -> tuple[float, float]:
        _, ws, top = self.state_names()
        return b.state[ws][0].item(), b.state[top][0].item()

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        warmup = self.hyperparameter(group, "warmup_steps")
        warm = min(1.0, b.step / warmup) if warmup > 0 else 1.0
        lr = self.learning_rate(group)
        if not isinstance(lr, Tensor):
            lr = _as_kernel_number(lr, b.params[0].dtype)
        # The averaging weights are numbers: constants of a recorded step (with a constant
        # learning rate, c = w_t / sum w_i does not depend on it).
        gamma = float(lr.detach() if isinstance(lr, Tensor) else lr) * warm
        r = float(self.hyperparameter(group, "r"))
        power = float(self.hyperparameter(group, "weight_lr_power"))
        weight_sum, lr_max = self._host(b)
        w, _ = averaging_weight(b.step, gamma, lr_max, r, power)
        total = weight_sum + w
        c = w / total if total > 0 else 0.0
        return {"neg_gamma": -lr * warm,
                "scale": warm * (1.0 - self.interpolation(group)) * (1.0 - c),
                "c": c, "gamma": gamma, "r": r, "power": power}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        ops.add_(b.state[self.state_key("z")], u, sc["neg_gamma"])
        return ops.mul(u, sc["scale"])

    def host_update(self, b: Bucket, sc: Mapping[str, Any]) -> None:
        weight_sum, lr_max = self._host(b)
        w, top = averaging_weight(b.step, float(sc["gamma"]), lr_max, float(sc["r"]),
                                  float(sc["power"]))
        _, ws_key, top_key = self.state_names()
        for v in b.state[ws_key]:
            v.fill_(weight_sum + w)
        for v in b.state[top_key]:
            v.fill_(top)


class ScheduleFreeInterpolate(Transform):
    """The parameters' move toward ``z`` (after :class:`ScheduleFreeAverage` stepped it)::

        y <- y + c_{t+1} (z - y)

    with ``c_{t+1}`` as :class:`ScheduleFreeAverage` computes it (this rule reads that rule's
    hyperparameters and states). It belongs right before the learning-rate step, where it
    acts on the parameters (:meth:`fold_into_step`); its :meth:`apply` does the same and
    passes the update on unchanged. Written as ``y + c (z - y)``, not ``(1 - c) y + c z``, so
    that ``y`` stays bit for bit while ``z = y`` (a zero learning rate), and an infinite ``z``
    gives an infinite ``y`` rather than ``inf - inf``.
    """

    elementwise = True

    def __init__(self, average: ScheduleFreeAverage) -> None:
        super().__init__()
        self.average = average

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        return {"c": self.average.prepare(group, b)["c"]}

    def _move(self, b: Bucket, sc: Mapping[str, Any]) -> None:
        gap = ops.sub(b.state[self.average.state_key("z")], b.params)
        ops.add_(b.params, gap, sc["c"])

    def fold_into_step(self, b: Bucket, sc: Mapping[str, Any]) -> bool:
        self._move(b, sc)
        return True

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        self._move(b, sc)
        return u

    def __repr__(self) -> str:
        return f"ScheduleFreeInterpolate({self.average!r})"
