"""Adaptive per-coordinate scaling: AdaGrad, RMSprop, Adam, Adamax, NAdam, RAdam, Adadelta.

Each rule turns the incoming update ``u`` (the gradient, possibly with L2 added) into a
direction; the chain's final ``scale_by_learning_rate`` multiplies it by ``-lr``. State keys
are torch.optim's, so checkpoints move between torch.optim and optimlab.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .. import ops
from .base import Bucket, Deferred, Transform, check_range, zeros_like

__all__ = [
    "ScaleByAdadelta",
    "ScaleByAdagrad",
    "ScaleByAdam",
    "ScaleByAdamax",
    "ScaleByNAdam",
    "ScaleByRAdam",
    "ScaleByRms",
    "scale_by_adadelta",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
]


def _check_betas(t: Transform, group: Mapping[str, Any]) -> None:
    betas = t.hyperparameter(group, "betas")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{t.group_key('betas')} must be a pair (beta1, beta2), got {betas!r}")
    check_range(f"{t.group_key('betas')}[0]", betas[0], low=0.0, high=1.0)
    check_range(f"{t.group_key('betas')}[1]", betas[1], low=0.0, high=1.0)
    key = t.group_key("betas")
    raw = group[key] if key in group else t.hyperparams[key]
    if isinstance(raw[0], Tensor) != isinstance(raw[1], Tensor):  # as torch.optim
        raise ValueError(f"{key} must be either both floats or both Tensors, got {raw!r}")


def _check_eps(t: Transform, group: Mapping[str, Any]) -> None:
    check_range(t.group_key("eps"), t.hyperparameter(group, "eps"), low=0.0, high=None,
                low_open=True)


def scalar_dtype() -> torch.dtype:
    """torch.optim's dtype for per-parameter scalars (``step``, NAdam's ``mu_product``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _scalar_state(value: float) -> Tensor:
    """A per-parameter scalar state, on the CPU as torch.optim keeps it (without
    ``capturable``): the step reads it on the host with no device synchronization."""
    return torch.tensor(value, dtype=scalar_dtype())


class ScaleByAdagrad(Transform):
    """AdaGrad (Duchi, Hazan & Singer, 2011)::

        G <- G + u^2
        out = u / (sqrt(G) + eps)

    ``G`` starts at ``initial_accumulator_value``. A sparse gradient (embedding rows) is
    applied to its rows only: the same formula, since a row with ``u = 0`` keeps its ``G`` and
    gets ``out = 0``. Group keys: ``eps``, ``initial_accumulator_value``; state: ``sum``.
    """

    elementwise = True

    state_keys = ("sum",)

    def validate(self, group: Mapping[str, Any]) -> None:
        _check_eps(self, group)
        check_range(self.group_key("initial_accumulator_value"),
                    self.hyperparameter(group, "initial_accumulator_value"), low=0.0, high=None)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        v = float(self.hyperparameter(group, "initial_accumulator_value"))
        # Complex parameters are stepped as (real, imag) pairs: both halves start at v.
        fill = complex(v, v) if param.is_complex() else v
        return {self.state_key("sum"): torch.full_like(param, fill,
                                                      memory_format=torch.preserve_format)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        return {"eps": float(self.hyperparameter(group, "eps"))}

    def accepts_sparse(self, sc: Mapping[str, Any]) -> bool:
        return True

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        return _materialized(self.apply_deferred(u, b, sc))

    def apply_deferred(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]
                       ) -> list[Tensor] | Deferred:
        acc = b.state[self.state_key("sum")]
        if b.sparse and u[0].is_sparse:  # one parameter per sparse bucket
            return [_sparse_adagrad(u[0], acc[0], sc["eps"])]
        ops.addcmul_(acc, u, u, 1.0)
        std = ops.sqrt(acc)
        ops.add_scalar_(std, sc["eps"])
        return Deferred([(u, 1.0)], std)


def _materialized(u: list[Tensor] | Deferred) -> list[Tensor]:
    return u.materialize() if isinstance(u, Deferred) else u


def _sparse_adagrad(u: Tensor, acc: Tensor, eps: float) -> Tensor:
    """:class:`ScaleByAdagrad` on the rows of a sparse COO update: ``G`` changes there only,
    and the result is sparse with the same indices (torch's sparse kernels, not foreach)."""
    u = u.coalesce()  # duplicate indices summed first, as the dense formula sees them
    idx, vals = u._indices(), u._values()
    # (the indices are the coalesced gradient's own: valid, no invariant check needed)
    acc.add_(torch.sparse_coo_tensor(idx, vals * vals, u.shape, check_invariants=False))
    std = acc.sparse_mask(u)._values().sqrt_().add_(eps)
    return torch.sparse_coo_tensor(idx, vals / std, u.shape, check_invariants=False)


def scale_by_adagrad(eps: float = 1e-10, initial_accumulator_value: float = 0.0
                     ) -> ScaleByAdagrad:
    """AdaGrad scaling. See :class:`ScaleByAdagrad`."""
    return ScaleByAdagrad(eps=eps, initial_accumulator_value=initial_accumulator_value)


class ScaleByRms(Transform):
    """RMSprop (Hinton, 2012), plain or centered (Graves, 2013)::

        E <- alpha * E + (1 - alpha) * u^2
        m <- alpha * m + (1 - alpha) * u                  (centered only)
        out = u / (sqrt(E - m^2) + eps)                   (centered)
        out = u / (sqrt(E) + eps)                         (plain)

    Group keys: ``alpha``, ``eps``, ``centered``; state: ``square_avg``, ``grad_avg``.
    """

    elementwise = True

    state_keys = ("square_avg", "grad_avg")

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("alpha"), self.hyperparameter(group, "alpha"), low=0.0, high=1.0,
                    high_open=False)
        _check_eps(self, group)

    def needed_state(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        names = self.state_names()
        return names if self.hyperparameter(group, "centered") else names[:1]

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        return {k: zeros_like(param) for k in self.needed_state(group)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        alpha = float(self.hyperparameter(group, "alpha"))
        return {"alpha": alpha, "one_minus_alpha": 1.0 - alpha,
                "eps": float(self.hyperparameter(group, "eps")),
                "centered": bool(self.hyperparameter(group, "centered"))}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        return self.apply_deferred(u, b, sc).materialize()

    def apply_deferred(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> Deferred:
        sq = b.state[self.state_key("square_avg")]
        ops.mul_(sq, sc["alpha"])
        ops.addcmul_(sq, u, u, sc["one_minus_alpha"])
        if sc["centered"]:
            ga = b.state[self.state_key("grad_avg")]
            ops.lerp_(ga, u, sc["one_minus_alpha"])
            avg = ops.clone(sq)
            ops.addcmul_(avg, ga, ga, -1.0)
            ops.sqrt_(avg)
        else:
            avg = ops.sqrt(sq)
        ops.add_scalar_(avg, sc["eps"])
        return Deferred([(u, 1.0)], avg)


def scale_by_rms(alpha: float = 0.99, eps: float = 1e-8, centered: bool = False) -> ScaleByRms:
    """RMSprop scaling. See :class:`ScaleByRms`."""
    return ScaleByRms(alpha=alpha, eps=eps, centered=centered)


class _Moments(Transform):
    """Shared validation and first-moment state for the Adam family."""

    elementwise = True

    def validate(self, group: Mapping[str, Any]) -> None:
        _check_betas(self, group)
        _check_eps(self, group)

    def _betas(self, group: Mapping[str, Any]) -> tuple[float, float]:
        b1, b2 = self.hyperparameter(group, "betas")
        return float(b1), float(b2)

    def _moment_scalars(self, group: Mapping[str, Any]) -> dict[str, Any]:
        b1, b2 = self._betas(group)
        return {"one_minus_b1": 1.0 - b1, "b2": b2, "one_minus_b2": 1.0 - b2,
                "eps": float(self.hyperparameter(group, "eps"))}

    def _update_first(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        """``m <- b1 * m + (1 - b1) * u``; returns ``m``."""
        m = b.state[self.state_key("exp_avg")]
        ops.lerp_(m, u, sc["one_minus_b1"])
        return m

    def _update_moments(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]
                        ) -> tuple[list[Tensor], list[Tensor]]:
        """Both moments: also ``v <- b2 * v + (1 - b2) * u^2``; returns ``(m, v)``."""
        m = self._update_first(u, b, sc)
        v = b.state[self.state_key("exp_avg_sq")]
        ops.mul_(v, sc["b2"])
        ops.addcmul_(v, u, u, sc["one_minus_b2"])
        return m, v


class ScaleByAdam(_Moments):
    """Adam (Kingma & Ba, 2015) with optional AMSGrad (Reddi, Kale & Kumar, 2018)::

        m <- b1 * m + (1 - b1) * u
        v <- b2 * v + (1 - b2) * u^2
        v_max <- max(v_max, v)                             (amsgrad; v_max replaces v below)
        out = m_hat / (sqrt(v_hat) + eps),   m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)

    Group keys: ``betas``, ``eps``, ``amsgrad``; state: ``exp_avg``, ``exp_avg_sq``,
    ``max_exp_avg_sq``.
    """

    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def needed_state(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        names = self.state_names()
        return names if self.hyperparameter(group, "amsgrad") else names[:2]

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        return {k: zeros_like(param) for k in self.needed_state(group)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        b1, b2 = self._betas(group)
        return {**self._moment_scalars(group), "inv_bc1": 1.0 / (1.0 - b1**b.step),
                "bc2_sqrt": math.sqrt(1.0 - b2**b.step),
                "amsgrad": bool(self.hyperparameter(group, "amsgrad"))}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        return self.apply_deferred(u, b, sc).materialize()

    def apply_deferred(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> Deferred:
        m, v = self._update_moments(u, b, sc)
        if sc["amsgrad"]:
            v_max = b.state[self.state_key("max_exp_avg_sq")]
            ops.maximum_(v_max, v)
            v = v_max
        denom = ops.sqrt(v)
        ops.div_(denom, sc["bc2_sqrt"])
        ops.add_scalar_(denom, sc["eps"])
        return Deferred([(m, sc["inv_bc1"])], denom)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                  amsgrad: bool = False) -> ScaleByAdam:
    """Adam scaling with bias correction (and AMSGrad). See :class:`ScaleByAdam`."""
    return ScaleByAdam(betas=(b1, b2), eps=eps, amsgrad=amsgrad)


class ScaleByAdamax(_Moments):
    """Adamax, Adam's infinity-norm variant (Kingma & Ba, 2015, sec. 7.1)::

        m <- b1 * m + (1 - b1) * u
        w <- max(b2 * w, |u| + eps)
        out = m / ((1 - b1^t) * w)

    Group keys: ``betas``, ``eps``; state: ``exp_avg``, ``exp_inf``.
    """

    state_keys = ("exp_avg", "exp_inf")

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        return {k: zeros_like(param) for k in self.state_names()}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        b1, _ = self._betas(group)
        return {**self._moment_scalars(group), "inv_bc1": 1.0 / (1.0 - b1**b.step)}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        return self.apply_deferred(u, b, sc).materialize()

    def apply_deferred(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> Deferred:
        m = self._update_first(u, b, sc)
        w = b.state[self.state_key("exp_inf")]
        ops.mul_(w, sc["b2"])
        norm = ops.abs(u)
        ops.add_scalar_(norm, sc["eps"])
        ops.maximum_(w, norm)
        return Deferred([(m, sc["inv_bc1"])], w)


def scale_by_adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> ScaleByAdamax:
    """Adamax scaling. See :class:`ScaleByAdamax`."""
    return ScaleByAdamax(betas=(b1, b2), eps=eps)


class ScaleByNAdam(_Moments):
    """NAdam, Adam with Nesterov momentum (Dozat, 2016), with momentum decay ``psi``::

        mu_t = b1 * (1 - 0.5 * 0.96^(t * psi)),   P_t = prod_{i<=t} mu_i
        m <- b1 * m + (1 - b1) * u ;  v <- b2 * v + (1 - b2) * u^2
        d = sqrt(v / (1 - b2^t)) + eps
        out = (1 - mu_t) / (1 - P_t) * u / d  +  mu_{t+1} / (1 - P_t * mu_{t+1}) * m / d

    Group keys: ``betas``, ``eps``, ``momentum_decay``; state: ``exp_avg``, ``exp_avg_sq``,
    ``mu_product`` (a scalar tensor per parameter, as in torch.optim.NAdam).
    """

    state_keys = ("exp_avg", "exp_avg_sq", "mu_product")

    def validate(self, group: Mapping[str, Any]) -> None:
        super().validate(group)
        check_range(self.group_key("momentum_decay"), self.hyperparameter(group, "momentum_decay"),
                    low=0.0, high=None)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        m, v, mu = self.state_names()
        return {m: zeros_like(param), v: zeros_like(param), mu: _scalar_state(1.0)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        b1, b2 = self._betas(group)
        psi = float(self.hyperparameter(group, "momentum_decay"))
        t = b.step
        mu = b1 * (1.0 - 0.5 * 0.96 ** (t * psi))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
        # The product is kept as a tensor in the state (torch.optim's format and rounding).
        prod = (b.state[self.state_key("mu_product")][0] * mu).item()
        return {**self._moment_scalars(group), "mu": mu, "bc2_sqrt": math.sqrt(1.0 - b2**t),
                "c_grad": (1.0 - mu) / (1.0 - prod), "c_avg": mu_next / (1.0 - prod * mu_next)}

    def host_update(self, b: Bucket, sc: Mapping[str, Any]) -> None:
        ops.mul_(b.state[self.state_key("mu_product")], sc["mu"])

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        return self.apply_deferred(u, b, sc).materialize()

    def apply_deferred(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> Deferred:
        m, v = self._update_moments(u, b, sc)
        denom = ops.sqrt(v)
        ops.div_(denom, sc["bc2_sqrt"])
        ops.add_scalar_(denom, sc["eps"])
        return Deferred([(u, sc["c_grad"]), (m, sc["c_avg"])], denom)


def scale_by_nadam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   momentum_decay: float = 4e-3) -> ScaleByNAdam:
    """NAdam scaling. See :class:`ScaleByNAdam`."""
    return ScaleByNAdam(betas=(b1, b2), eps=eps, momentum_decay=momentum_decay)


class ScaleByRAdam(_Moments):
    """RAdam, rectified Adam (Liu et al., 2020)::

        m <- b1 * m + (1 - b1) * u ;  v <- b2 * v + (1 - b2) * u^2
        rho_inf = 2 / (1 - b2) - 1 ;  rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
        if rho_t > 5:  r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                       out = r * m_hat * sqrt(1 - b2^t) / (sqrt(v) + eps)
        else:          out = m_hat                           (m_hat = m / (1 - b1^t))

    Group keys: ``betas``, ``eps``; state: ``exp_avg``, ``exp_avg_sq``.
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        return {k: zeros_like(param) for k in self.state_names()}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        b1, b2 = self._betas(group)
        t = b.step
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * b2**t / (1.0 - b2**t)
        bc1 = 1.0 - b1**t
        sc = {**self._moment_scalars(group), "rectified": rho_t > 5.0, "inv_bc1": 1.0 / bc1,
              "coef": 0.0}
        if rho_t > 5.0:
            r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                          / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            sc["coef"] = r * math.sqrt(1.0 - b2**t) / bc1
        return sc

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        return self.apply_deferred(u, b, sc).materialize()

    def apply_deferred(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> Deferred:
        m, v = self._update_moments(u, b, sc)
        if not sc["rectified"]:
            return Deferred([(m, sc["inv_bc1"])])
        denom = ops.sqrt(v)
        ops.add_scalar_(denom, sc["eps"])
        return Deferred([(m, sc["coef"])], denom)


def scale_by_radam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> ScaleByRAdam:
    """RAdam scaling. See :class:`ScaleByRAdam`."""
    return ScaleByRAdam(betas=(b1, b2), eps=eps)


class ScaleByAdadelta(Transform):
    """Adadelta (Zeiler, 2012)::

        E_g <- rho * E_g + (1 - rho) * u^2
        out = sqrt(E_d + eps) / sqrt(E_g + eps) * u
        E_d <- rho * E_d + (1 - rho) * out^2

    Group keys: ``rho``, ``eps``; state: ``square_avg``, ``acc_delta``.
    """

    elementwise = True

    state_keys = ("square_avg", "acc_delta")

    def validate(self, group: Mapping[str, Any]) -> None:
        check_range(self.group_key("rho"), self.hyperparameter(group, "rho"), low=0.0, high=1.0,
                    high_open=False)
        _check_eps(self, group)

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        return {k: zeros_like(param) for k in self.state_names()}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        rho = float(self.hyperparameter(group, "rho"))
        return {"rho": rho, "one_minus_rho": 1.0 - rho,
                "eps": float(self.hyperparameter(group, "eps"))}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        sq = b.state[self.state_key("square_avg")]
        acc = b.state[self.state_key("acc_delta")]
        ops.mul_(sq, sc["rho"])
        ops.addcmul_(sq, u, u, sc["one_minus_rho"])
        std = ops.add_scalar(sq, sc["eps"])
        ops.sqrt_(std)
        delta = ops.add_scalar(acc, sc["eps"])
        ops.sqrt_(delta)
        ops.div_(delta, std)
        ops.mul_(delta, u)
        ops.mul_(acc, sc["rho"])
        ops.addcmul_(acc, delta, delta, sc["one_minus_rho"])
        return delta


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> ScaleByAdadelta:
    """Adadelta scaling. See :class:`ScaleByAdadelta`."""
    return ScaleByAdadelta(rho=rho, eps=eps)
