"""Scaling rules: the learning rate, constant factors and Adagrad's inverse-time decay."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .. import ops
from .base import Bucket, Transform, check_range

__all__ = [
    "Scale",
    "ScaleByInverseTimeDecay",
    "ScaleByLearningRate",
    "scale",
    "scale_by_inverse_time_decay",
    "scale_by_learning_rate",
]


class ScaleByLearningRate(Transform):
    """``out = -lr * u``, with ``lr`` read from the param group at every step.

    Any ``torch.optim.lr_scheduler`` therefore drives it. A chain ends with this rule (it is
    appended when missing) and fuses it into the final ``p <- p + out``. Group key: ``lr``.
    """

    elementwise = True

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("lr"), self.hyperparameter(group, "lr"), low=0.0, high=None)

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        return {"neg_lr": -self.learning_rate(group)}

    def accepts_sparse(self, sc: Mapping[str, Any]) -> bool:
        return True

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        return ops.mul(u, sc["neg_lr"])


def scale_by_learning_rate(lr: float = 1e-3) -> ScaleByLearningRate:
    """Multiply the update by ``-lr`` (group key ``lr``). See :class:`ScaleByLearningRate`."""
    return ScaleByLearningRate(lr=lr)


class Scale(Transform):
    """``out = factor * u`` for a constant ``factor`` (group key ``factor``)."""

    elementwise = True

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("factor"), self.hyperparameter(group, "factor"))

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        return {"factor": float(self.hyperparameter(group, "factor"))}

    def accepts_sparse(self, sc: Mapping[str, Any]) -> bool:
        return True

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        return ops.mul(u, sc["factor"])


def scale(factor: float) -> Scale:
    """Multiply the update by a constant. See :class:`Scale`."""
    return Scale(factor=factor)


class ScaleByInverseTimeDecay(Transform):
    """``out = u / (1 + (t - 1) * lr_decay)`` at step ``t`` (Adagrad's ``lr_decay``).

    Duchi et al. (2011) as implemented by torch.optim.Adagrad. Group key: ``lr_decay``.
    """

    elementwise = True

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("lr_decay"), self.hyperparameter(group, "lr_decay"), low=0.0,
                    high=None)

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        decay = float(self.hyperparameter(group, "lr_decay"))
        return {"on": decay != 0, "factor": 1.0 / (1.0 + (b.step - 1) * decay)}

    def accepts_sparse(self, sc: Mapping[str, Any]) -> bool:
        return True

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        return ops.mul(u, sc["factor"]) if sc["on"] else u

    def fold_into_step(self, b: Bucket, sc: Mapping[str, Any]) -> bool:
        return not sc["on"]  # off, the rule is the identity: nothing to do


def scale_by_inverse_time_decay(lr_decay: float = 0.0) -> ScaleByInverseTimeDecay:
    """Adagrad's learning-rate decay. See :class:`ScaleByInverseTimeDecay`."""
    return ScaleByInverseTimeDecay(lr_decay=lr_decay)
