"""Hypergradient descent: the learning rate learned online from ``g_t . u_{t-1}``.

Baydin, Cornish, Martinez Rubio, Schmidt & Wood (2018), "Online Learning Rate Adaptation with
Hypergradient Descent" (ICLR). With ``d_t`` the update direction of the base method (the
gradient for SGD, the momentum or Nesterov direction, Adam's ``m_hat / (sqrt(v_hat) + eps)``)
and the step ``u_t = -alpha_t d_t``, the derivative of the loss at step ``t`` with respect to
the previous rate is ``h_t = g_t . du_{t-1}/dalpha = -g_t . d_{t-1}``, so::

    alpha_t = max(alpha_{t-1} + beta * g_t . d_{t-1}, 0)       (beta: ``hypergrad_lr``)
    p_t     = p_{t-1} - alpha_t * d_t

with the dot product over every parameter of the group. The rate is kept as a ratio to the
group's ``lr``, ``rho = alpha / lr`` (``rho_0 = 1``, ``rho <- max(rho + beta/lr * g.d, 0)``):
with a constant ``lr`` this is the paper's rule exactly; a scheduler that changes ``lr``
scales the adapted rate, and ``lr = 0`` freezes the group (no step, ``rho`` unchanged).

Three rules work together (the named optimizers ``SGDHD`` and ``AdamHD`` place them):

* :class:`HypergradientProbe` (first, on the gradient) owns the states and hands the gradient
  on together with the previous direction and the group scalars;
* :class:`HypergradientRate` (``needs_global``; one instance per param group) reduces the
  group's dot product in :meth:`~HypergradientRate.global_stat`, on the device, with no host
  synchronization, and writes the new ratio;
* the base method's rules, then :class:`ScaleByHypergradientRate` (last) keeps ``d_t`` for the
  next step and returns ``-lr * rho_t * d_t``.

The group scalars live in every parameter's state as 0-dim tensors (``hypergrad_ratio`` and
``hypergrad_steps``, the number of the group's steps the copy has seen): a parameter that gets
no gradient at a step keeps an older copy, and the next step reads the newest one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import ops
from .base import Bucket, Transform, check_range, zeros_like

__all__ = ["HypergradientProbe", "HypergradientRate", "ScaleByHypergradientRate",
           "common", "device_scalar", "group_scalar_dtype", "newest"]

PREV, RATIO, STEPS = "hypergrad_prev", "hypergrad_ratio", "hypergrad_steps"


def group_scalar_dtype(p: Tensor) -> torch.dtype:
    """The dtype of a group scalar kept in ``p``'s state (the real dtype of ``p``)."""
    return p.real.dtype if p.is_complex() else p.dtype


def common(ts: list[Tensor]) -> list[Tensor]:
    """0-dim tensors in one dtype (float64 if any is, else float32) on the first's device."""
    dt = torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32
    return [t.to(dtype=dt, device=ts[0].device) for t in ts]


def device_scalar(value: float | Tensor, like: Tensor) -> Tensor:
    """``value`` as a 0-dim tensor of ``like``'s dtype and device: a number is filled in by a
    kernel (no host-to-device copy, which would wait for the device), a tensor (the compiled
    path's scalars) converted."""
    if isinstance(value, Tensor):
        return value.to(dtype=like.dtype, device=like.device)
    return torch.full((), value, dtype=like.dtype, device=like.device)


def newest(copies: list[list[Tensor]], steps: list[Tensor]) -> list[Tensor]:
    """Of each group scalar's per-parameter copies (``copies[j]`` aligned with ``steps``), the
    one with the most group steps: the current value (stale copies have fewer)."""
    k = torch.argmax(torch.stack(common(steps))).reshape(1)  # gathered: no host read
    return [torch.stack(common(c)).gather(0, k).reshape(()) for c in copies]


class HypergradientProbe(Transform):
    """Owns the hypergradient states and passes ``u + d_prev + rho + steps + [lr]`` on (the
    list that :class:`HypergradientRate` reduces and takes apart). State: ``hypergrad_prev``
    (``d_{t-1}``), ``hypergrad_ratio`` (``rho``), ``hypergrad_steps``."""

    state_keys = (PREV, RATIO, STEPS)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        dt = group_scalar_dtype(param)
        return {PREV: zeros_like(param),
                RATIO: torch.ones((), dtype=dt, device=param.device),
                STEPS: torch.zeros((), dtype=dt, device=param.device)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        return {"lr": self.learning_rate(group)}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        ratio = b.state[RATIO]
        lr = device_scalar(sc["lr"], ratio[0])
        return [*u, *b.state[PREV], *ratio, *b.state[STEPS], lr]


class HypergradientRate(Transform):
    """``rho <- max(rho + hypergrad_lr / lr * sum_i <g_i, d_prev_i>, 0)`` over the group (see
    the module docstring); returns the gradient unchanged. ``optimizer.info`` holds the new
    ``(rho, steps)`` under ``hypergrad_ratio`` (per group: ``hypergrad_ratio[i]``).
    Group key: ``hypergrad_lr``. Follows :class:`HypergradientProbe`.
    """

    needs_global = True
    info_key = "hypergrad_ratio"

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("hypergrad_lr"), self.hyperparameter(group, "hypergrad_lr"),
                    low=0.0, high=None)

    def global_stat(self, us: list[list[Tensor]], group: Mapping[str, Any]) -> Tensor:
        beta = float(self.hyperparameter(group, "hypergrad_lr"))
        dots, ratios, steps = [], [], []
        for carried in us:
            n = (len(carried) - 1) // 4
            if n:  # ops.dot: under FSDP2 the shards' sums all-reduced, once per bucket
                dots.append(ops.dot(carried[:n], carried[n:2 * n]))
            ratios += carried[2 * n:3 * n]
            steps += carried[3 * n:4 * n]
        rho, k = newest([ratios, steps], steps)
        lr = us[0][-1].to(rho.dtype)
        live = lr > 0
        dot = torch.stack(common(dots)).sum().to(rho.dtype)
        moved = torch.clamp(rho + beta * dot / torch.where(live, lr, 1.0), min=0.0)
        return torch.stack([torch.where(live, moved, rho), k + 1])

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        n = len(b.params)
        stat = sc["stat"].to(b.state[RATIO][0].dtype)
        ops.copy_(b.state[RATIO], [stat[0]] * n)
        ops.copy_(b.state[STEPS], [stat[1]] * n)
        return list(u[:n])


class ScaleByHypergradientRate(Transform):
    """``out = -lr * rho * d`` for the direction ``d``, kept as ``hypergrad_prev`` for the next
    step's hypergradient. Last rule of a hypergradient chain; ``lr = 0``: no step."""

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        lr = self.learning_rate(group)
        return {"neg_lr": -lr, "on": bool(lr != 0)}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        ops.copy_(b.state[PREV], u)
        if not sc["on"]:
            return []
        return ops.mul(u, b.state[RATIO][0] * sc["neg_lr"])
