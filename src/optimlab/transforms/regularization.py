"""Regularization: coupled L2, decoupled weight decay and the L1 proximal step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .. import ops
from .base import Bucket, Transform, check_range

__all__ = ["AddWeights", "L1Proximal", "add_decayed_weights", "add_l2", "l1_proximal"]


class AddWeights(Transform):
    """``out = u + weight_decay * p``.

    Where it sits in a chain decides what it means:

    * before an adaptive rule (``add_l2``): the L2 penalty's gradient joins the gradient and is
      divided by the adaptive denominator too (Adam + L2, torch.optim.Adam's ``weight_decay``);
    * after it (``add_decayed_weights``): decoupled weight decay, ``p <- p - lr * wd * p`` apart
      from the adaptive step (Loshchilov & Hutter, 2019, AdamW).

    ``weight_decay = 0`` turns the rule off. Group key: ``weight_decay``.
    """

    elementwise = True

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("weight_decay"), self.hyperparameter(group, "weight_decay"),
                    low=0.0, high=None)

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        wd = float(self.hyperparameter(group, "weight_decay"))
        return {"on": wd != 0, "wd": wd, "decay": 1.0 - self.learning_rate(group) * wd}

    def accepts_sparse(self, sc: Mapping[str, Any]) -> bool:
        return not sc["on"]

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        return ops.add(u, b.params, sc["wd"]) if sc["on"] else u

    def fold_into_step(self, b: Bucket, sc: Mapping[str, Any]) -> bool:
        # p - lr * (u + wd * p) == (1 - lr * wd) * p - lr * u: decay the weights in place
        # (one pass fewer, and the rounding of torch.optim's AdamW).
        if sc["on"]:
            ops.mul_(b.params, sc["decay"])
        return True


def add_l2(weight_decay: float = 0.0) -> AddWeights:
    """Coupled L2: add ``weight_decay * p`` to the gradient (place before adaptive rules)."""
    return AddWeights(weight_decay=weight_decay)


def add_decayed_weights(weight_decay: float = 0.01) -> AddWeights:
    """Decoupled weight decay (AdamW): add ``weight_decay * p`` after the adaptive rule."""
    return AddWeights(weight_decay=weight_decay)


class L1Proximal(Transform):
    """L1 regularization as a proximal step after the update (ISTA; Beck & Teboulle, 2009).

    After ``p <- p + out``::

        p <- sign(p) * max(|p| - lr * l1, 0)

    which sets small weights to exactly zero, unlike a subgradient of ``l1 * |p|``. The
    threshold is scaled by the group's ``lr``. Group key: ``l1``.
    """

    elementwise = True

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("l1"), self.hyperparameter(group, "l1"), low=0.0, high=None)

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        t = self.learning_rate(group) * float(self.hyperparameter(group, "l1"))
        return {"on": t != 0, "threshold": t}

    def after_step(self, b: Bucket, sc: Mapping[str, Any]) -> None:
        if sc["on"]:
            ops.soft_threshold_(b.params, sc["threshold"])


def l1_proximal(l1: float) -> L1Proximal:
    """L1 regularization by soft-thresholding (exact zeros). See :class:`L1Proximal`."""
    return L1Proximal(l1=l1)
