"""Writing a new optimizer with optimlab's public rule API: AdaBelief in about 60 lines.

A rule (:class:`optimlab.transforms.Transform`) turns the incoming update into a new one with
the tensor-list operations of :mod:`optimlab.ops`; a named optimizer
(:class:`optimlab.NamedOptimizer`) declares its rules and takes torch.optim-style arguments.
Nothing else is needed for the eager step, ``fused=True`` (the same rules compiled),
``state_dtype=torch.bfloat16``, ``nonfinite=...``, state dicts, param groups and the
transactional step. This file is both the example and a runnable check::

    python examples/custom_optimizer.py

AdaBelief (Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
Observed Gradients") scales by the spread of the gradient around its running mean instead of
its raw second moment::

    m <- b1 m + (1 - b1) g
    s <- b2 s + (1 - b2) (g - m)^2 + eps
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

import optimlab as ol
from optimlab import ops
from optimlab import transforms as T
from optimlab.transforms import Bucket, Transform, check_range


class ScaleByBelief(Transform):
    """AdaBelief's direction (see the module docstring). Group keys: ``betas``, ``eps``;
    state: ``exp_avg``, ``exp_avg_var``."""

    state_keys = ("exp_avg", "exp_avg_var")
    elementwise = True  # each output element depends on the same element of the inputs only

    def validate(self, group: Mapping[str, Any]) -> None:
        b1, b2 = self.hyperparameter(group, "betas")
        check_range("betas[0]", b1, low=0.0, high=1.0)
        check_range("betas[1]", b2, low=0.0, high=1.0)
        check_range(self.group_key("eps"), self.hyperparameter(group, "eps"), low=0.0,
                    low_open=True)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        return {self.state_key(k): torch.zeros_like(param) for k in type(self).state_keys}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        # Plain Python, once per step: bias corrections from the bucket's step count.
        b1, b2 = (float(x) for x in self.hyperparameter(group, "betas"))
        return {"b1": b1, "b2": b2, "eps": float(self.hyperparameter(group, "eps")),
                "inv_bc1": 1.0 / (1.0 - b1**b.step), "bc2_sqrt": math.sqrt(1.0 - b2**b.step)}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        # Tensor math only, through optimlab.ops (never modify ``u``: it may be the .grad).
        m, s = b.state[self.state_key("exp_avg")], b.state[self.state_key("exp_avg_var")]
        ops.lerp_(m, u, 1.0 - sc["b1"])
        diff = ops.sub(u, m)
        ops.mul_(s, sc["b2"])
        ops.addcmul_(s, diff, diff, 1.0 - sc["b2"])
        ops.add_scalar_(s, sc["eps"])
        denom = ops.sqrt(s)
        ops.div_(denom, sc["bc2_sqrt"])
        ops.add_scalar_(denom, sc["eps"])
        out = ops.div(m, denom)
        ops.mul_(out, sc["inv_bc1"])
        return out


class AdaBelief(ol.NamedOptimizer):
    """AdaBelief with decoupled weight decay: ``scale_by_belief -> add_decayed_weights -> lr``."""

    rules = (ScaleByBelief(betas=(0.9, 0.999), eps=1e-16),
             T.add_decayed_weights(0.0), T.scale_by_learning_rate(1e-3))

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0.0, *, maximize: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), **options)


def reference(p: Tensor, grads: list[Tensor], lr: float, b1: float, b2: float, eps: float,
              wd: float) -> Tensor:
    """The formula in float64, step by step (AdamW-style decay: ``p <- p - lr * wd * p``)."""
    p, m, s = p.double().clone(), torch.zeros_like(p, dtype=torch.float64), None
    s = torch.zeros_like(m)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
        update = (m / (1 - b1**t)) / ((s / (1 - b2**t)).sqrt() + eps)
        p = p - lr * (update + wd * p)
    return p


def main() -> int:
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(20, generator=gen, dtype=torch.float64)
    grads = [torch.randn(20, generator=gen, dtype=torch.float64) for _ in range(10)]
    param = torch.nn.Parameter(p0.clone())
    opt = AdaBelief([param], lr=0.01, weight_decay=0.1, eps=1e-8)
    for g in grads:
        param.grad = g
        opt.step()
    want = reference(p0, grads, 0.01, 0.9, 0.999, 1e-8, 0.1)
    err = float((param.detach() - want).abs().max())
    # float64, 10 steps of O(1) updates scaled by lr: a few ulps each, far below 1e-12.
    print(f"AdaBelief vs its float64 formula after 10 steps: max error {err:.1e}")
    return 0 if err < 1e-12 else 1


if __name__ == "__main__":
    raise SystemExit(main())
