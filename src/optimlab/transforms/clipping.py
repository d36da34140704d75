"""Gradient clipping by global norm and by value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import ops
from .base import Bucket, Transform, check_range

__all__ = ["ClipByGlobalNorm", "ClipByValue", "clip_by_global_norm", "clip_by_value"]


class ClipByGlobalNorm(Transform):
    """Rescale the update so that its norm over *all* parameters is at most ``max_norm``.

    ``n = ||u||_q`` over every tensor of every group (``q = norm_type``), then
    ``out = u * min(1, max_norm / (n + 1e-6))`` (Pascanu et al., 2013), exactly as
    ``torch.nn.utils.clip_grad_norm_``. The pre-clip norm ``n`` is kept, without a host sync,
    in ``optimizer.info["grad_norm"]`` for logging. Group keys: ``max_norm``, ``norm_type``.
    """

    needs_global = True
    info_key = "grad_norm"

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("max_norm"), self.hyperparameter(group, "max_norm"), low=0.0,
                    high=None, low_open=True)
        check_range(self.group_key("norm_type"), self.hyperparameter(group, "norm_type"), low=0.0,
                    high=None, low_open=True, high_open=False, finite=False)  # inf: the max-norm

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        return {"max_norm": float(self.hyperparameter(group, "max_norm"))}

    def global_stat(self, us: list[list[Tensor]], group: Mapping[str, Any]) -> Tensor:
        q = float(self.hyperparameter(group, "norm_type"))
        norms = [n for u in us if u for n in torch._foreach_norm(u, q)]
        if not norms:
            return torch.zeros(())
        dev = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(dev) for n in norms]), q)

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        if not u:
            return u
        coef = torch.clamp(sc["max_norm"] / (sc["stat"] + 1e-6), max=1.0)
        return ops.mul(u, coef.to(u[0].device))


def clip_by_global_norm(max_norm: float, norm_type: float = 2.0) -> ClipByGlobalNorm:
    """Clip the update's global norm. See :class:`ClipByGlobalNorm`."""
    return ClipByGlobalNorm(max_norm=max_norm, norm_type=norm_type)


class ClipByValue(Transform):
    """``out = clamp(u, -clip_value, clip_value)`` elementwise. Group key: ``clip_value``."""

    elementwise = True

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("clip_value"), self.hyperparameter(group, "clip_value"), low=0.0,
                    high=None, low_open=True)

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        return {"c": float(self.hyperparameter(group, "clip_value"))}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        c = sc["c"]
        return ops.clamp(u, -c, c)


def clip_by_value(clip_value: float) -> ClipByValue:
    """Clip every update element to ``[-clip_value, clip_value]``. See :class:`ClipByValue`."""
    return ClipByValue(clip_value=clip_value)
