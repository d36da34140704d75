"""Prodigy: Adam with a step size ``d`` estimated from the distance travelled.

Mishchenko & Defazio (2023), "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
Algorithm 4 (Adam form), with the authors' release's defaults and scalings. At group step
``k`` (from 0), with ``d = d_k``, ``lr`` the group's rate and ``dlr = d * lr * bc``
(``bc = sqrt(1 - b2^(k+1)) / (1 - b1^(k+1))`` with ``use_bias_correction``, else 1)::

    m <- b1 m + (1 - b1) d g ;  v <- b2 v + (1 - b2) d^2 g^2
    r <- b3 r + (d / d0) dlr sum_i <g_i, p0_i - p_i>                      (group scalar)
    s <- b3 s + (d / d0) dlr g          (``safeguard_warmup``: (d / d0) d g)
    d_hat = d_coef r / sum_i |s_i|_1
    d' = max(d, d_hat) if d == d0 else d ;  d_max <- max(d_max, d_hat)
    d_{k+1} = min(d_max, d' * growth_rate)
    p <- p - dlr (m / (sqrt(v) + d_{k+1} eps) + weight_decay p)      (``decouple``)

``b3`` defaults to ``sqrt(b2)``. The distance ``p0 - p`` is kept as such (state
``displacement``, minus the sum of the updates) rather than as ``p0``: subtracting two nearby
parameters would cancel their roundings into it (half an ulp of ``|p|`` against a distance of
``d0 = 1e-6`` after the first step: 6% in float32, all of it for bfloat16 states), and ``d``
is estimated from it. While ``sum |s|_1 = 0`` (no gradient yet) or ``lr = 0`` the
group takes no step and its scalars stay (the release returns early then). The sums run over
the parameters of one param group (the release pools every group; the same for one group).

Two rules: :class:`ProdigyProbe` (per-parameter states; hands the gradient on with what the
reduction needs) and :class:`ProdigyStep` (``needs_global``, one instance per group, last:
reduces ``r`` and ``|s|_1`` on the device, with no host synchronization, and returns the
update). The group scalars ``d``, ``d_max``, ``d_numerator`` and ``k`` live in every
parameter's state as 0-dim tensors; the newest copy (largest ``k``) is the current one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import ops
from .base import Bucket, Transform, check_range, zeros_like
from .hypergradient import common, device_scalar, group_scalar_dtype, newest

__all__ = ["ProdigyProbe", "ProdigyStep"]

_SCALARS = ("d", "d_max", "d_numerator", "k")


def _betas(t: Transform, group: Mapping[str, Any]) -> tuple[float, float, float]:
    b1, b2 = (float(b) for b in t.hyperparameter(group, "betas"))
    b3 = t.hyperparameter(group, "beta3")
    return b1, b2, math.sqrt(b2) if b3 is None else float(b3)


class ProdigyProbe(Transform):
    """Owns Prodigy's states and passes ``u + s + d + d_max + r + k + [<g, p0 - p>, lr]`` on
    (the list :class:`ProdigyStep` reduces and takes apart). States: ``exp_avg``,
    ``exp_avg_sq``, ``s``, ``displacement`` (``p0 - p``) and the group scalars ``d``,
    ``d_max``, ``d_numerator``, ``k``. Group key read: ``d0`` (the scalars' start)."""

    state_keys = ("exp_avg", "exp_avg_sq", "s", "displacement", *_SCALARS)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        d0 = float(group["d0"])
        dt, dev = group_scalar_dtype(param), param.device
        scalars = (d0, d0, 0.0, 0.0)
        return {"exp_avg": zeros_like(param), "exp_avg_sq": zeros_like(param),
                "s": zeros_like(param), "displacement": zeros_like(param),
                **{k: torch.tensor(v, dtype=dt, device=dev) for k, v in zip(_SCALARS, scalars)}}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        return {"lr": self.learning_rate(group)}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        st = b.state
        progress = ops.dot(u, st["displacement"])
        lr = device_scalar(sc["lr"], st["d"][0])
        return [*u, *st["s"], *(v for k in _SCALARS for v in st[k]), progress, lr]


class ProdigyStep(Transform):
    """Prodigy's group reduction and update (see the module docstring). Group keys:
    ``betas``, ``beta3``, ``eps``, ``weight_decay``, ``decouple``, ``use_bias_correction``,
    ``safeguard_warmup``, ``d0``, ``d_coef``, ``growth_rate``. ``optimizer.info`` holds
    ``(d, d_max, d_numerator, k, ...)`` of each group as ``prodigy[i]``."""

    needs_global = True
    info_key = "prodigy"

    def validate(self, group: Mapping[str, Any]) -> None:
        betas = self.hyperparameter(group, "betas")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        check_range("betas[0]", betas[0], low=0.0, high=1.0)
        check_range("betas[1]", betas[1], low=0.0, high=1.0)
        if self.hyperparameter(group, "beta3") is not None:
            check_range("beta3", self.hyperparameter(group, "beta3"), low=0.0, high=1.0,
                        high_open=False)
        check_range("eps", self.hyperparameter(group, "eps"), low=0.0, high=None, low_open=True)
        check_range("weight_decay", self.hyperparameter(group, "weight_decay"), low=0.0,
                    high=None)
        check_range("d0", self.hyperparameter(group, "d0"), low=0.0, high=None, low_open=True)
        check_range("d_coef", self.hyperparameter(group, "d_coef"), low=0.0, high=None,
                    low_open=True)
        check_range("growth_rate", self.hyperparameter(group, "growth_rate"), low=1.0,
                    high=None, finite=False)
        for key in ("decouple", "use_bias_correction", "safeguard_warmup"):
            if not isinstance(self.hyperparameter(group, key), bool):
                raise ValueError(f"{key} must be a bool, got {self.hyperparameter(group, key)!r}")

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        b1, b2, _ = _betas(self, group)
        wd = float(self.hyperparameter(group, "weight_decay"))
        return {"on": bool(self.learning_rate(group) != 0), "b1": b1, "b2": b2,
                "one_minus_b1": 1.0 - b1, "one_minus_b2": 1.0 - b2,
                "eps": float(self.hyperparameter(group, "eps")), "wd": wd,
                "decay": wd != 0 and bool(self.hyperparameter(group, "decouple"))}

    def global_stat(self, us: list[list[Tensor]], group: Mapping[str, Any]) -> Tensor:
        b1, b2, b3 = _betas(self, group)
        d0 = float(self.hyperparameter(group, "d0"))
        safeguard = bool(self.hyperparameter(group, "safeguard_warmup"))
        parts = []
        for carried in us:
            n = (len(carried) - 2) // 6
            parts.append((carried[:n], carried[n:2 * n],
                          [carried[(2 + j) * n:(3 + j) * n] for j in range(4)], carried[-2]))
        copies = [[c for _, _, sc, _ in parts for c in sc[j]] for j in range(4)]
        d, d_max, r, k = newest(copies, copies[3])
        lr = us[0][-1].to(d.dtype)
        bc = (torch.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1))
              if self.hyperparameter(group, "use_bias_correction") else torch.ones_like(d))
        dlr = d * lr * bc
        on = lr > 0
        # s <- b3 s + c g where the group steps (lr > 0); left as it is otherwise
        keep = 1.0 + (b3 - 1.0) * on.to(d.dtype)
        c = torch.where(on, d / d0 * (d if safeguard else dlr), 0.0)
        l1 = []
        for g, s, _, _ in parts:
            ops.mul_(s, keep.to(s[0].dtype))
            ops.add_(s, g, c.to(s[0].dtype))
            l1 += ops.norms(s, 1.0)  # whole-tensor norms (all-reduced under FSDP2)
        den = torch.stack(common(l1)).sum().to(d.dtype)
        progress = torch.stack(common([p for _, _, _, p in parts])).sum().to(d.dtype)
        r_new = b3 * r + d / d0 * dlr * progress
        live = on & (den != 0)  # NaN passes, as in the release (the update shows it)
        d_hat = float(self.hyperparameter(group, "d_coef")) * r_new / torch.where(
            den != 0, den, 1.0)
        # ``d == d0`` of the release: d never falls below d0 (a float32 copy of d0 may sit an
        # ulp below it)
        first = d <= d0 * (1 + 2.0**-20)
        # fmax / fmin: a NaN d_hat (NaN gradients) leaves d as it is, as Python's max does
        grown = torch.where(first, torch.fmax(d, d_hat), d)
        d_max_new = torch.fmax(d_max, d_hat)
        d_new = torch.fmin(d_max_new, grown * float(self.hyperparameter(group, "growth_rate")))
        return torch.stack([torch.where(live, d_new, d), torch.where(live, d_max_new, d_max),
                            torch.where(live, r_new, r), k + live.to(k.dtype), d,
                            torch.where(live, dlr, 0.0)])

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        n = len(b.params)
        st = b.state
        stat = sc["stat"].to(st["d"][0].dtype)
        for j, key in enumerate(_SCALARS):
            ops.copy_(st[key], [stat[j]] * n)
        if not sc["on"]:
            return []
        g, d = u[:n], stat[4]
        m, v = st["exp_avg"], st["exp_avg_sq"]
        ops.mul_(m, sc["b1"])
        ops.add_(m, g, d * sc["one_minus_b1"])
        ops.mul_(v, sc["b2"])
        ops.addcmul_(v, g, g, d * d * sc["one_minus_b2"])
        out = ops.sqrt(v)
        ops.add_scalar_(out, stat[0] * sc["eps"])
        ops.rdiv_(out, m)
        if sc["decay"]:
            ops.add_(out, b.params, sc["wd"])
        ops.mul_(out, -stat[5])
        ops.add_(st["displacement"], out, -1.0)  # p0 - p after the step
        return out
