"""Orthogonalized updates: Muon's momentum, Newton-Schulz orthogonalization and shape scaling.

Muon (Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks") replaces
the update of each weight matrix by the nearest semi-orthogonal matrix ``U V^T`` of its
momentum ``U S V^T``, computed approximately by a few Newton-Schulz iterations, so that every
direction of the matrix moves by the same amount. The three rules here are the three steps:
:class:`EmaTrace` (the momentum), :class:`Orthogonalize` (whole matrices, not elementwise) and
:class:`ScaleByShape` (the learning-rate adjustment for rectangular matrices).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import ops
from .base import Bucket, Transform, check_range, zeros_like

__all__ = [
    "EmaTrace",
    "Orthogonalize",
    "ScaleByShape",
    "ema_trace",
    "orthogonalize",
    "scale_by_shape",
]


class EmaTrace(Transform):
    """Momentum as an exponential moving average, plain or Nesterov (Muon's momentum).

    With momentum ``mu`` and incoming update ``u``::

        v <- mu * v + (1 - mu) * u           (v starts at 0)
        out = (1 - mu) * u + mu * v   if nesterov
        out = v                       otherwise

    Unlike :class:`~optimlab.transforms.momentum.Trace`, the buffer is an average (it is not
    seeded with the first update), as in Keller Jordan's reference and torch.optim.Muon; the
    scale ``1 - mu`` does not matter to a rule that normalizes next. ``momentum = 0`` passes
    ``u`` through (the buffer still follows it). Group keys: ``momentum``, ``nesterov``;
    state: ``momentum_buffer``.
    """

    elementwise = True

    state_keys = ("momentum_buffer",)

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("momentum"), self.hyperparameter(group, "momentum"),
                    low=0.0, high=1.0, high_open=False)
        if not isinstance(self.hyperparameter(group, "nesterov"), bool):
            raise ValueError(f"{self.group_key('nesterov')} must be a bool, got "
                             f"{self.hyperparameter(group, 'nesterov')!r}")

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        return {self.state_key("momentum_buffer"): zeros_like(param)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        mu = float(self.hyperparameter(group, "momentum"))
        return {"mu": mu, "one_minus_mu": 1.0 - mu,
                "nesterov": bool(self.hyperparameter(group, "nesterov"))}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        buf = b.state[self.state_key("momentum_buffer")]
        ops.lerp_(buf, u, sc["one_minus_mu"])
        if not sc["nesterov"]:
            return buf
        out = ops.clone(u)
        ops.lerp_(out, buf, sc["mu"])
        return out


def ema_trace(momentum: float = 0.95, nesterov: bool = True) -> EmaTrace:
    """Exponential-moving-average momentum (Muon's). See :class:`EmaTrace`."""
    return EmaTrace(momentum=momentum, nesterov=nesterov)


class Orthogonalize(Transform):
    """``out = NS_k(u)``: each 2-D update replaced by an approximately orthogonal matrix.

    ``k`` Newton-Schulz iterations of the quintic ``X <- a X + b (X X^T) X + c (X X^T)^2 X``
    from ``X_0 = u / max(||u||_F, eps)`` (see :func:`optimlab.ops.newton_schulz`) map each
    singular value of ``u`` into roughly ``[0.7, 1.2]`` for Muon's coefficients
    ``(a, b, c) = (3.4445, -4.775, 2.0315)``, keeping the singular vectors: ``U S' V^T``.
    The iterations run in ``dtype`` (bfloat16 by default, as Keller Jordan's reference and
    torch.optim.Muon do), the result is returned in the parameters' dtype.

    Not elementwise: it reads whole matrices, and refuses (at the first step, before
    anything changed) parameters that are not 2-D. Group keys: ``ns_coefficients``,
    ``ns_steps``, ``eps``.
    """

    def __init__(self, *, dtype: torch.dtype = torch.bfloat16, **hyperparams: Any) -> None:
        self.dtype = dtype
        super().__init__(**hyperparams)

    def validate(self, group: Mapping[str, Any]) -> None:
        key = self.group_key("ns_coefficients")
        coefficients = self.hyperparameter(group, "ns_coefficients")
        if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 3:
            raise ValueError(f"{key} must be three numbers (a, b, c), got {coefficients!r}")
        for i, c in enumerate(coefficients):
            check_range(f"{key}[{i}]", c)
        steps = self.hyperparameter(group, "ns_steps")
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"{self.group_key('ns_steps')} must be an integer in [0, 100), "
                             f"got {steps!r}")
        check_range(self.group_key("ns_steps"), steps, low=0, high=100)
        check_range(self.group_key("eps"), self.hyperparameter(group, "eps"), low=0.0,
                    high=None, low_open=True)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        _check_matrix(param)
        return {}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        for p in b.params:
            _check_matrix(p)
        # The coefficients and the step count are structural (a tuple and an int: constants of
        # a compiled step, as in eager addmm calls); eps travels as a number.
        return {"coefficients": tuple(float(c) for c in
                                      self.hyperparameter(group, "ns_coefficients")),
                "steps": int(self.hyperparameter(group, "ns_steps")),
                "eps": float(self.hyperparameter(group, "eps"))}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        return ops.newton_schulz(u, sc["coefficients"], sc["steps"], sc["eps"], self.dtype)


def _check_matrix(p: Tensor) -> None:
    """Refuse what orthogonalization cannot take, with torch.optim.Muon's exception types: a
    ValueError for a shape, a RuntimeError for a complex parameter."""
    if p.ndim != 2 or p.is_complex():
        what = "complex " if p.is_complex() else ""
        error = RuntimeError if p.is_complex() else ValueError
        raise error(
            f"Muon-style orthogonalization needs real 2-D parameters, got a {what}parameter of "
            f"shape {tuple(p.shape)}; give embeddings, heads, biases, norms and other non-2-D "
            "parameters to AdamW (optimlab.optimizers.muon.muon_param_groups splits a model)")


def orthogonalize(ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                  ns_steps: int = 5, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> Orthogonalize:
    """Newton-Schulz orthogonalization of each 2-D update. See :class:`Orthogonalize`."""
    return Orthogonalize(ns_coefficients=ns_coefficients, ns_steps=ns_steps, eps=eps,
                         dtype=dtype)


#: ``adjust_lr_fn`` -> the factor for an ``A x B`` matrix (torch.optim.Muon's names).
SHAPE_FACTORS = {
    # Keller Jordan's: the same RMS of the update per unit of lr for tall matrices
    "original": lambda rows, cols: math.sqrt(max(1.0, rows / cols)),
    # Moonshot's (Liu et al., 2025, "Muon is Scalable for LLM Training"): an update RMS of
    # 0.2, AdamW's typical one, so AdamW's lr and weight decay carry over
    "match_rms_adamw": lambda rows, cols: 0.2 * math.sqrt(max(rows, cols)),
}


class ScaleByShape(Transform):
    """``out = f(A, B) * u`` for each ``A x B`` update (Muon's learning-rate adjustment).

    ``adjust_lr_fn`` picks ``f``: ``"original"`` (or ``None``), ``sqrt(max(1, A / B))``;
    ``"match_rms_adamw"``, ``0.2 * sqrt(max(A, B))``. An orthogonal ``A x B`` matrix has RMS
    ``1 / sqrt(max(A, B))``, which these factors correct. Not elementwise (the factor depends
    on the whole tensor's shape). Group key: ``adjust_lr_fn``.
    """

    def validate(self, group: Mapping[str, Any]) -> None:
        fn = self.hyperparameter(group, "adjust_lr_fn")
        if fn is not None and fn not in SHAPE_FACTORS:
            raise ValueError(f"{self.group_key('adjust_lr_fn')} must be None, 'original' or "
                             f"'match_rms_adamw', got {fn!r}")

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        f = SHAPE_FACTORS[self.hyperparameter(group, "adjust_lr_fn") or "original"]
        # Per-parameter factors from the shapes: a tuple, structural on the compiled path
        # (shapes are constants of a compiled step anyway).
        factors = tuple(f(p.shape[0], p.shape[1]) if p.ndim == 2 else 1.0 for p in b.params)
        return {"factors": factors, "on": any(x != 1.0 for x in factors)}

    def fold_into_step(self, b: Bucket, sc: Mapping[str, Any]) -> bool:
        return not sc["on"]  # every factor 1: the identity

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        if not sc["on"]:
            return u
        return [x if f == 1.0 else ops.mul([x], f)[0] for x, f in zip(u, sc["factors"])]


def scale_by_shape(adjust_lr_fn: str | None = None) -> ScaleByShape:
    """Muon's learning-rate adjustment by matrix shape. See :class:`ScaleByShape`."""
    return ScaleByShape(adjust_lr_fn=adjust_lr_fn)
