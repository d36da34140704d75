"""Factored second moments: Adafactor (Shazeer & Stern, 2018).

The rule keeps, for a tensor of two or more dimensions, only the row and column means of the
squared gradient over its last two dimensions (``m + n`` numbers per ``m x n`` matrix instead
of ``m n``), and rebuilds the second-moment estimate as their normalized outer product. It
reads whole tensors (row means, RMS norms), so it is not elementwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import ops
from .base import Bucket, Transform, check_range, zeros_like

__all__ = ["ScaleByAdafactor", "scale_by_adafactor"]


class ScaleByAdafactor(Transform):
    """Adafactor's scaled and clipped update (Shazeer & Stern, 2018, Algorithms 4 and 5).

    With ``G`` the update, ``t`` the step, ``w_t = t^beta2_decay`` (the paper's
    ``1 - beta2_hat_t`` with ``beta2_hat_t = 1 - t^-0.8``) and ``eps = (eps1, eps2)``:

    - a tensor ``G`` of two or more dimensions (factored over its last two, ``n x m``)::

          R <- (1 - w_t) R + w_t mean_cols(G^2)          (row_var,  shape [..., n, 1])
          C <- (1 - w_t) C + w_t mean_rows(G^2)          (col_var,  shape [..., 1, m])
          V = R C / max(mean(R), eps1)                   (the paper's R C / (1^T R), in means)

    - a vector or a scalar::

          V <- (1 - w_t) V + w_t G^2                     (variance)

    then, with ``RMS(x) = ||x||_2 / sqrt(numel(x))`` per tensor::

        U = G / max(sqrt(V), eps1)                       (torch.optim's eps1 placement)
        U_hat = U / max(1, RMS(U) / d)                   (update clipping, paper sec. 5)
        m <- beta1 m + (1 - beta1) U_hat                 (optional first moment, exp_avg)
        out = max(eps2, RMS(p)) * rho_t / lr * (m if beta1 else U_hat)

    The chain's learning-rate step multiplies ``out`` by ``-lr``, so the parameter moves by
    ``-max(eps2, RMS(p)) rho_t U_hat``: the paper's ``alpha_t`` (eq. 12 "relative step size"
    ``rho_t`` scaled by the parameter's scale). ``rho_t = min(lr, 1 / sqrt(t))`` when
    ``relative_step`` (torch.optim.Adafactor; ``lr = 1e-2`` is the paper's schedule), and
    ``rho_t = lr`` otherwise (an absolute step that schedulers drive). ``scale_parameter=False``
    drops the ``max(eps2, RMS(p))`` factor. ``eps1 = None`` means the machine epsilon of the
    parameter's dtype. ``d = inf`` turns clipping off. The first moment is kept without bias
    correction (the paper's Algorithm with ``beta1 > 0``, Table 2).

    Group keys: ``lr``, ``beta2_decay``, ``eps``, ``d``, ``beta1``, ``relative_step``,
    ``scale_parameter``; state: ``row_var``, ``col_var`` (factored), ``variance`` (vectors),
    ``exp_avg`` (``beta1`` set), as torch.optim.Adafactor names them.

    Under FSDP2 (DTensor parameters sharded on their first dimension) ``variance`` and
    ``exp_avg`` are sharded like the parameter, and ``row_var`` and ``col_var`` are replicated
    DTensors (each rank keeps the ``m + n`` numbers); DTensor reduces the row and column means
    across the shards, and :func:`optimlab.ops.norms` all-reduces the RMS norms, so every rank
    steps with the whole tensor's statistics (equal to one process up to the order of the
    additions; ``tests/test_fsdp.py``, ``tests/test_dcp.py``). Each rank builds only its own
    rows of ``V = R C``.
    """

    state_keys = ("row_var", "col_var", "variance", "exp_avg")

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("beta2_decay"), self.hyperparameter(group, "beta2_decay"),
                    low=None, high=0.0, high_open=False)
        eps = self.hyperparameter(group, "eps")
        key = self.group_key("eps")
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"{key} must be a pair (eps1, eps2), got {eps!r}")
        if eps[0] is not None:
            check_range(f"{key}[0]", eps[0], low=0.0, high=None)
        check_range(f"{key}[1]", eps[1], low=0.0, high=None)
        check_range(self.group_key("d"), self.hyperparameter(group, "d"), low=1.0, high=None,
                    finite=False)
        beta1 = self.hyperparameter(group, "beta1")
        if beta1 is not None:
            check_range(self.group_key("beta1"), beta1, low=0.0, high=1.0)
        for flag in ("relative_step", "scale_parameter"):
            if not isinstance(self.hyperparameter(group, flag), bool):
                raise ValueError(f"{self.group_key(flag)} must be a bool, got "
                                 f"{self.hyperparameter(group, flag)!r}")

    def needed_state(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        names = self.state_names()
        return names if self.hyperparameter(group, "beta1") is not None else names[:3]

    def state_shapes(self, group: Mapping[str, Any], param: Tensor) -> dict[str, torch.Size]:
        row, col, var, avg = self.state_names()
        shape = param.shape
        if param.dim() >= 2:
            out = {row: torch.Size((*shape[:-1], 1)), col: torch.Size((*shape[:-2], 1, shape[-1]))}
        else:
            out = {var: shape}
        if self.hyperparameter(group, "beta1") is not None:
            out[avg] = shape
        return out

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        if param.is_complex():  # torch.optim.Adafactor's refusal, type and words
            raise RuntimeError("Adafactor does not support complex parameters")
        return {k: param.new_zeros(s) if s != param.shape else zeros_like(param)
                for k, s in self.state_shapes(group, param).items()}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        lr = float(self.hyperparameter(group, "lr"))
        eps1, eps2 = self.hyperparameter(group, "eps")
        if eps1 is None:
            eps1 = torch.finfo(b.params[0].dtype).eps
        d = float(self.hyperparameter(group, "d"))
        beta1 = self.hyperparameter(group, "beta1")
        t = b.step
        # rho_t / lr, written so that lr = 0 (the chain's step is then zero) divides nothing.
        rel = 1.0
        if self.hyperparameter(group, "relative_step") and lr * math.sqrt(t) > 1.0:
            rel = 1.0 / (lr * math.sqrt(t))
        return {"w": float(t) ** float(self.hyperparameter(group, "beta2_decay")),
                "eps1": float(eps1), "eps1_sq": float(eps1) ** 2, "eps2": float(eps2),
                "inv_d": 1.0 / d, "clip": d != math.inf, "rel": rel,
                "scale_parameter": bool(self.hyperparameter(group, "scale_parameter")),
                "momentum": beta1 is not None,
                "one_minus_beta1": 1.0 - float(beta1 if beta1 is not None else 0.0)}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        row, col, var, avg = self.state_names()
        if row in b.state:  # a bucket holds factored tensors only, or unfactored ones only
            r, c = b.state[row], b.state[col]
            sq = ops.mul(u, u)
            ops.lerp_(r, ops.mean(sq, -1), sc["w"])
            ops.lerp_(c, ops.mean(sq, -2), sc["w"])
            v = ops.mul(_rows_like(r, u), c)
            r_mean = ops.mean(r, -2)
            ops.clamp_(r_mean, sc["eps1"], None)
            ops.div_(v, r_mean)
        else:
            v = b.state[var]
            ops.lerp_(v, ops.mul(u, u), sc["w"])
            v = ops.clone(v)
        ops.clamp_(v, sc["eps1_sq"], None)  # max(sqrt(V), eps1) = sqrt(max(V, eps1^2))
        ops.sqrt_(v)
        upd = ops.div(u, v)
        inv_sqrt_n = [1.0 / math.sqrt(max(x.numel(), 1)) for x in upd]
        if sc["clip"]:  # U_hat = U / max(1, RMS(U) / d)
            shrink = ops.norms(upd)
            ops.mul_(shrink, inv_sqrt_n)
            ops.mul_(shrink, sc["inv_d"])
            ops.fmax_(shrink, 1.0)  # NaN RMS: no clipping (torch's max(1.0, nan))
            ops.div_(upd, shrink)
        if sc["scale_parameter"]:  # alpha_t / lr = max(eps2, RMS(p)) * rho_t / lr
            scale = ops.norms(b.params)
            ops.mul_(scale, inv_sqrt_n)
            ops.fmax_(scale, sc["eps2"])  # NaN RMS(p): eps2 (torch's max(eps2, nan))
            ops.mul_(scale, sc["rel"])
        factor = scale if sc["scale_parameter"] else sc["rel"]
        if sc["momentum"]:
            m = b.state[avg]
            ops.lerp_(m, upd, sc["one_minus_beta1"])
            return ops.mul(m, factor)
        ops.mul_(upd, factor)
        return upd


def _rows_like(rs: list[Tensor], us: list[Tensor]) -> list[Tensor]:
    """The row factors ``R`` laid out like the updates ``U`` where those are FSDP2 shards split
    along a leading dimension (which ``R``, shaped ``[..., n, 1]``, shares): each rank then
    builds only its rows of ``R C`` (a local slice of the replicated ``R``, no communication),
    not the whole matrix. Anything else as it is."""
    if not (us and ops.is_dtensor(us[0])):
        return rs
    out = []
    for r, u in zip(rs, us):
        leading = all(not p.is_shard() or p.dim < u.ndim - 1 for p in u.placements)
        out.append(r.redistribute(u.device_mesh, u.placements) if leading else r)
    return out


def scale_by_adafactor(beta2_decay: float = -0.8, eps: tuple[float | None, float] = (None, 1e-3),
                       d: float = 1.0, *, lr: float = 1e-2, relative_step: bool = True,
                       scale_parameter: bool = True, beta1: float | None = None
                       ) -> ScaleByAdafactor:
    """Adafactor scaling, clipping and relative step. See :class:`ScaleByAdafactor`."""
    return ScaleByAdafactor(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, beta1=beta1,
                            relative_step=relative_step, scale_parameter=scale_parameter)
