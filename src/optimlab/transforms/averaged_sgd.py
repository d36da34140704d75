"""Averaged SGD: a decaying step size and the running average of the iterates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import ops
from .adaptive import scalar_dtype
from .base import Bucket, Transform, check_range, zeros_like

__all__ = ["ScaleByAveragedSgd", "scale_by_averaged_sgd"]


class ScaleByAveragedSgd(Transform):
    """Averaged SGD (Polyak & Juditsky, 1992; the step-size schedule of Xu, 2011, "Towards
    Optimal One Pass Large Scale Learning with Averaged Stochastic Gradient Descent"), as
    torch.optim.ASGD. At step ``t``, with the step size ``eta`` and averaging weight ``mu``
    kept from the previous step (``eta = lr``, ``mu = 1`` at the first)::

        out = -eta * (u + lambd * p)                    (p <- (1 - lambd * eta) p - eta u)
        ax <- p'            if mu == 1                  (p' the parameter after the step)
        ax <- ax + mu * (p' - ax)   otherwise
        eta <- lr / (1 + lambd * lr * t)^alpha
        mu <- 1 / max(1, t - t0)

    ``ax`` is the averaged iterate (read it from the state; the parameters stay the SGD
    iterates). ``eta`` is the learning rate, so this rule takes the place of
    ``scale_by_learning_rate`` at the end of a chain and returns the displacement itself;
    torch.optim.ASGD's L2 ``weight_decay`` is an ``add_l2`` before it. ``eta`` and ``mu`` are
    scalar states in torch.optim's scalar dtype (float32 unless the default dtype is float64):
    the step uses ``eta`` as rounded there, as torch.optim does. Group keys: ``lr``,
    ``lambd``, ``alpha``, ``t0``; state: ``eta``, ``mu``, ``ax``.
    """

    elementwise = True

    state_keys = ("eta", "mu", "ax")

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("lr"), self.hyperparameter(group, "lr"), low=0.0, high=None)
        check_range(self.group_key("lambd"), self.hyperparameter(group, "lambd"), low=0.0,
                    high=None)
        check_range(self.group_key("alpha"), self.hyperparameter(group, "alpha"), low=0.0,
                    high=None)
        # t0 = inf (never average) is meaningful: mu then stays 1, ax follows p.
        check_range(self.group_key("t0"), self.hyperparameter(group, "t0"), low=0.0, high=None,
                    finite=False)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        eta, mu, ax = self.state_names()
        lr = float(self.hyperparameter(group, "lr"))
        return {eta: torch.tensor(lr, dtype=scalar_dtype()),
                mu: torch.tensor(1.0, dtype=scalar_dtype()), ax: zeros_like(param)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        etas = b.state[self.state_key("eta")]
        mus = b.state[self.state_key("mu")]
        lr = float(self.hyperparameter(group, "lr"))
        lambd = float(self.hyperparameter(group, "lambd"))
        t = b.step
        # Parameters stepped together share the step count, hence mu; eta also depends on
        # the lr of their last step, which differs only where one of them skipped a step
        # (no gradient) while the lr changed: those are stepped with their own eta.
        eta = etas[0].item()
        uniform = len(etas) == 1 or bool(torch.stack(etas).eq(etas[0]).all())
        return {
            "uniform": uniform,
            "neg_eta": -eta,
            "lambd": lambd,
            "decayed": lambd != 0,
            "mu": mus[0].item(),
            "copy": mus[0].item() == 1.0,
            "new_eta": lr / (1.0 + lambd * lr * t) ** float(self.hyperparameter(group, "alpha")),
            "new_mu": 1.0 / max(1.0, t - float(self.hyperparameter(group, "t0"))),
        }

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        neg_eta = sc["neg_eta"] if sc["uniform"] else ops.neg(b.state[self.state_key("eta")])
        if not sc["decayed"]:
            return ops.mul(u, neg_eta)
        out = ops.add(u, b.params, sc["lambd"])
        ops.mul_(out, neg_eta)
        return out

    def after_step(self, b: Bucket, sc: Mapping[str, Any]) -> None:
        ax = b.state[self.state_key("ax")]
        if sc["copy"]:
            ops.copy_(ax, b.params)
        else:
            step = ops.sub(b.params, ax)
            ops.mul_(step, sc["mu"])
            ops.add_(ax, step)

    def host_update(self, b: Bucket, sc: Mapping[str, Any]) -> None:
        for eta in b.state[self.state_key("eta")]:
            eta.fill_(sc["new_eta"])
        for mu in b.state[self.state_key("mu")]:
            mu.fill_(sc["new_mu"])


def scale_by_averaged_sgd(lr: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75,
                          t0: float = 1e6) -> ScaleByAveragedSgd:
    """Averaged SGD's decaying step and iterate average (ends a chain: it returns the
    displacement). See :class:`ScaleByAveragedSgd`."""
    return ScaleByAveragedSgd(lr=lr, lambd=lambd, alpha=alpha, t0=t0)
