"""Sign-based rules: Lion's interpolated sign and Rprop's per-element step sizes.

Both keep only the sign of a gradient-like quantity, so the size of a step is set by a
learning rate or a step size alone, never by the gradient's magnitude.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import ops
from .adaptive import _check_betas
from .base import Bucket, Transform, check_range, zeros_like

__all__ = ["ScaleByLion", "ScaleByRprop", "scale_by_lion", "scale_by_rprop"]


class ScaleByLion(Transform):
    """Lion's update direction (Chen et al., 2023, "Symbolic Discovery of Optimization
    Algorithms", Algorithm 2)::

        c = b1 * m + (1 - b1) * u
        out = sign(c)
        m <- b2 * m + (1 - b2) * u

    Every element of ``out`` is -1, 0 or 1, so the chain's learning-rate step moves each
    coordinate by exactly ``lr``; Lion's decoupled weight decay is a separate
    :class:`~optimlab.transforms.regularization.AddWeights` placed after this rule. Group key:
    ``betas``; state: ``exp_avg``.
    """

    elementwise = True

    state_keys = ("exp_avg",)

    def validate(self, group: Mapping[str, Any]) -> None:
        _check_betas(self, group)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        return {self.state_key("exp_avg"): zeros_like(param)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        b1, b2 = (float(x) for x in self.hyperparameter(group, "betas"))
        return {"b1": b1, "one_minus_b1": 1.0 - b1, "b2": b2, "one_minus_b2": 1.0 - b2}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        m = b.state[self.state_key("exp_avg")]
        c = ops.mul(m, sc["b1"])
        ops.add_(c, u, sc["one_minus_b1"])
        ops.sign_(c)
        # b2 m + (1 - b2) u, as the paper writes it (not lerp's m + (1 - b2)(u - m), which
        # turns an infinite m into NaN where the formula keeps it infinite)
        ops.mul_(m, sc["b2"])
        ops.add_(m, u, sc["one_minus_b2"])
        return c


def scale_by_lion(b1: float = 0.9, b2: float = 0.99) -> ScaleByLion:
    """Lion's sign of interpolated momentum. See :class:`ScaleByLion`."""
    return ScaleByLion(betas=(b1, b2))


def _check_pair(t: Transform, group: Mapping[str, Any], name: str) -> tuple[float, float]:
    pair = t.hyperparameter(group, name)
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"{t.group_key(name)} must be a pair, got {pair!r}")
    return float(pair[0]), float(pair[1])


class ScaleByRprop(Transform):
    """Resilient backpropagation (Riedmiller & Braun, 1993) without weight-backtracking, in
    the form Igel & Husken (2000) call iRprop- (a sign change also zeroes the stored
    gradient), as torch.optim.Rprop. Per element, with the previous gradient ``prev`` and the
    step size ``s`` (which starts at the group's ``lr``)::

        q = sign(u * prev)
        s <- clamp(s * (eta_plus if q > 0 else eta_minus if q < 0 else 1), s_min, s_max)
        u' = 0 if q < 0 else u            (a sign change: no step, and no change next time)
        out = -s * sign(u')
        prev <- u'

    ``lr`` is the initial step size, not a multiplier: the step sizes are the learning rates.
    This rule therefore takes the place of ``scale_by_learning_rate`` at the end of a chain
    and returns the displacement itself (what the chain adds to ``p``). Group keys: ``lr``,
    ``etas`` (``(eta_minus, eta_plus)``, ``0 < eta_minus < 1 < eta_plus``), ``step_sizes``
    (``(s_min, s_max)``); state: ``prev``, ``step_size``.
    """

    elementwise = True

    state_keys = ("prev", "step_size")

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("lr"), self.hyperparameter(group, "lr"), low=0.0, high=None)
        minus, plus = _check_pair(self, group, "etas")
        key = self.group_key("etas")
        check_range(f"{key}[0]", minus, low=0.0, high=1.0, low_open=True)
        check_range(f"{key}[1]", plus, low=1.0, high=None, low_open=True)
        lo, hi = _check_pair(self, group, "step_sizes")
        key = self.group_key("step_sizes")
        check_range(f"{key}[0]", lo, low=0.0, high=None)
        check_range(f"{key}[1]", hi, low=lo, high=None)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        lr = float(self.hyperparameter(group, "lr"))
        # Complex parameters are stepped as (real, imag) pairs: both halves start at lr.
        fill = complex(lr, lr) if param.is_complex() else lr
        return {self.state_key("prev"): zeros_like(param),
                self.state_key("step_size"): torch.full_like(
                    param, fill, memory_format=torch.preserve_format)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        minus, plus = _check_pair(self, group, "etas")
        lo, hi = _check_pair(self, group, "step_sizes")
        # lr is read only by init_state (the first step size of a new parameter); it is among
        # the scalars so that the step refuses an lr that is not finite in the parameters'
        # dtype (a NaN or inf set into the group after construction) before any change.
        return {"eta_minus": minus, "eta_plus": plus, "lo": lo, "hi": hi,
                "initial_step": float(self.hyperparameter(group, "lr"))}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        prev = b.state[self.state_key("prev")]
        size = b.state[self.state_key("step_size")]
        q = ops.mul(u, prev)
        ops.sign_(q)
        up = ops.clamp(q, 0.0, 1.0)     # 1 where q > 0, else 0
        down = ops.clamp(q, -1.0, 0.0)  # -1 where q < 0, else 0
        keep = ops.add_scalar(down, 1.0)  # 0 where q < 0, else 1
        # The factor as a sum of exact products with exactly one non-zero term, so that it is
        # eta_plus, eta_minus or 1 exactly (as rounded to the parameter's dtype).
        factor = ops.sub(keep, up)      # 1 where q == 0, else 0
        ops.add_(factor, up, sc["eta_plus"])
        ops.add_(factor, down, -sc["eta_minus"])
        ops.mul_(size, factor)
        ops.clamp_(size, sc["lo"], sc["hi"])
        # u' = u where keep == 1, 0 where keep == 0, also for an infinite u (inf * 0 would be
        # NaN): clamp u to [-bound, bound] with bound = keep / (1 - keep), +inf or 0.
        bound = ops.mul(keep, -1.0)
        ops.add_scalar_(bound, 1.0)
        bound = ops.div(keep, bound)
        ops.copy_(prev, u)
        ops.minimum_(prev, bound)
        ops.maximum_(prev, ops.neg(bound))
        out = ops.sign(prev)
        ops.mul_(out, size)
        ops.mul_(out, -1.0)
        return out


def scale_by_rprop(lr: float = 1e-2, eta_minus: float = 0.5, eta_plus: float = 1.2,
                   min_step: float = 1e-6, max_step: float = 50.0) -> ScaleByRprop:
    """Rprop's sign steps with adaptive per-element step sizes (ends a chain: it returns the
    displacement). See :class:`ScaleByRprop`."""
    return ScaleByRprop(lr=lr, etas=(eta_minus, eta_plus), step_sizes=(min_step, max_step))
