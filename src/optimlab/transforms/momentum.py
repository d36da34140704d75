"""Momentum: the heavy-ball and Nesterov traces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .. import ops
from .base import Bucket, Transform, check_range, zeros_like

__all__ = ["Trace", "trace"]


class Trace(Transform):
    """Momentum trace with dampening, heavy-ball or Nesterov form.

    With momentum ``mu``, dampening ``tau`` and incoming update ``u``::

        v <- mu * v + (1 - tau) * u          (v <- u at the buffer's first step)
        out = u + mu * v   if nesterov       (Sutskever et al., 2013, as in torch.optim.SGD)
        out = v            otherwise         (Polyak, 1964, "heavy ball")

    ``momentum = 0`` turns the rule off (no state). Nesterov's look-ahead form
    ``v <- mu v + lr grad(p - mu v); p <- p - v`` has the same iterates as this form
    (see the test suite). Group keys: ``momentum``, ``dampening``, ``nesterov``; state:
    ``momentum_buffer``.
    """

    elementwise = True

    state_keys = ("momentum_buffer",)

    def validate(self, group: Mapping[str, Any]) -> None:
        m = self.hyperparameter(group, "momentum")
        check_range(self.group_key("momentum"), m, low=0.0, high=1.0, high_open=False)
        check_range(self.group_key("dampening"), self.hyperparameter(group, "dampening"), low=0.0,
                    high=1.0, high_open=False)
        dampening = self.hyperparameter(group, "dampening")
        if self.hyperparameter(group, "nesterov") and (m <= 0 or dampening != 0):
            raise ValueError(
                f"{self.group_key('nesterov')}=True requires {self.group_key('momentum')} > 0 and "
                f"{self.group_key('dampening')} = 0, got momentum={m}, "
                f"dampening={self.hyperparameter(group, 'dampening')}"
            )

    def needed_state(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        return self.state_names() if self.hyperparameter(group, "momentum") != 0 else ()

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        return {self.state_key("momentum_buffer"): zeros_like(param)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        mu = float(self.hyperparameter(group, "momentum"))
        return {
            "on": mu != 0,
            "mu": mu,
            "keep": 1.0 - float(self.hyperparameter(group, "dampening")),
            "damped": float(self.hyperparameter(group, "dampening")) != 0,
            "nesterov": bool(self.hyperparameter(group, "nesterov")),
            "fresh": self.state_key("momentum_buffer") in b.new_keys,
        }

    def accepts_sparse(self, sc: Mapping[str, Any]) -> bool:
        return not sc["on"]

    def fold_into_step(self, b: Bucket, sc: Mapping[str, Any]) -> bool:
        return not sc["on"]  # off, the rule is the identity: nothing to do

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        if not sc["on"]:
            return u
        buf = b.state[self.state_key("momentum_buffer")]
        if sc["fresh"]:
            ops.copy_(buf, u)
        elif sc["damped"]:
            ops.mul_(buf, sc["mu"])
            ops.add_(buf, u, sc["keep"])
        else:  # one pass over the buffer on the CPU (see ops.scale_add_)
            ops.scale_add_(buf, sc["mu"], u)
        if sc["nesterov"]:
            return ops.add(u, buf, sc["mu"])
        return buf


def trace(momentum: float = 0.9, dampening: float = 0.0, nesterov: bool = False) -> Trace:
    """Momentum trace (heavy ball, or Nesterov with ``nesterov=True``). See :class:`Trace`."""
    return Trace(momentum=momentum, dampening=dampening, nesterov=nesterov)
