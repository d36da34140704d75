"""Contract cases and paper references of SGDHD, AdamHD and Prodigy (loaded by
``tests/test_contract.py``; the references are also used by ``test_hypergradient.py`` and
``test_prodigy.py``).

torch.optim has none of them: the references below are written from the papers (Baydin et
al., 2018, Algorithm 1 and its Adam form; Mishchenko & Defazio, 2023, Algorithm 4 with the
release's ``d / d0`` scaling), one parameter at a time, with the group scalars computed as
Python floats (float64) once per group and step. They keep optimlab's state names and layout
(the group scalars copied into every stepped parameter's state, the newest copy current), so
state dicts load across.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from optimlab.optimizers.hypergradient import SGDHD, AdamHD
from optimlab.optimizers.prodigy import Prodigy


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _scalar(p: Tensor, v: float) -> Tensor:
    return torch.tensor(v, dtype=p.real.dtype if p.is_complex() else p.dtype)


class _RefHD(torch.optim.Optimizer):
    """alpha_t = max(alpha_{t-1} + beta g_t . d_{t-1}, 0), kept as rho = alpha / lr."""

    def _direction(self, g: Tensor, st: dict[str, Any], group: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def _init(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {}

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            live = [p for p in group["params"] if p.grad is not None]
            if not live:
                continue
            for p in live:
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["hypergrad_prev"] = torch.zeros_like(p)
                    st["hypergrad_ratio"] = _scalar(p, 1.0)
                    st["hypergrad_steps"] = _scalar(p, 0.0)
                    st.update(self._init(p, group))
            grads = {}
            for p in live:
                g = _real(-p.grad if group["maximize"] else p.grad)
                grads[p] = g + group["weight_decay"] * _real(p)
            newest = max(live, key=lambda q: self.state[q]["hypergrad_steps"].item())
            rho = self.state[newest]["hypergrad_ratio"].item()
            k = self.state[newest]["hypergrad_steps"].item()
            lr = float(group["lr"])
            if lr > 0:
                dot = sum(float((grads[p] * _real(self.state[p]["hypergrad_prev"])).sum())
                          for p in live)
                rho = max(rho + group["hypergrad_lr"] / lr * dot, 0.0)
            for p in live:
                st = self.state[p]
                st["step"] += 1
                st["hypergrad_ratio"].fill_(rho)
                st["hypergrad_steps"].fill_(k + 1)
                d = self._direction(grads[p], st, group)
                _real(st["hypergrad_prev"]).copy_(d)
                if lr != 0:
                    _real(p).add_(d, alpha=-lr * rho)
        return loss


class RefSGDHD(_RefHD):
    """SGD-HD / SGDN-HD: ``d`` is torch.optim.SGD's direction (momentum, dampening,
    Nesterov; the buffer starts at the first gradient)."""

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 hypergrad_lr: float = 1e-3, maximize: bool = False, **_: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      hypergrad_lr=hypergrad_lr, maximize=maximize))

    def _direction(self, g: Tensor, st: dict[str, Any], group: dict[str, Any]) -> Tensor:
        mu = group["momentum"]
        if mu == 0:
            return g.clone()
        if "momentum_buffer" not in st:
            st["momentum_buffer"] = torch.zeros_like(st["hypergrad_prev"])
            _real(st["momentum_buffer"]).copy_(g)
        else:
            buf = _real(st["momentum_buffer"])
            buf.copy_(mu * buf + (1 - group["dampening"]) * g)
        buf = _real(st["momentum_buffer"])
        return g + mu * buf if group["nesterov"] else buf.clone()


class RefAdamHD(_RefHD):
    """Adam-HD: ``d = m_hat / (sqrt(v_hat) + eps)`` (AMSGrad: the running max of ``v``)."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 hypergrad_lr: float = 1e-7, maximize: bool = False, **_: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, hypergrad_lr=hypergrad_lr,
                                      maximize=maximize))

    def _init(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        st = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        if group["amsgrad"]:
            st["max_exp_avg_sq"] = torch.zeros_like(p)
        return st

    def _direction(self, g: Tensor, st: dict[str, Any], group: dict[str, Any]) -> Tensor:
        b1, b2 = group["betas"]
        t = int(st["step"].item())
        m, v = _real(st["exp_avg"]), _real(st["exp_avg_sq"])
        m.copy_(b1 * m + (1 - b1) * g)
        v.copy_(b2 * v + (1 - b2) * g * g)
        if group["amsgrad"]:
            vm = _real(st["max_exp_avg_sq"])
            vm.copy_(torch.maximum(vm, v))
            v = vm
        return (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])


def _fmax(a: float, b: float) -> float:
    """max ignoring a NaN ``b``."""
    return b if b > a else a


class RefProdigy(torch.optim.Optimizer):
    """Prodigy from the paper (Algorithm 4) with the release's defaults and ``d / d0``
    weights; the sums run over one param group."""

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 beta3: float | None = None, eps: float = 1e-8, weight_decay: float = 0.0,
                 decouple: bool = True, use_bias_correction: bool = False,
                 safeguard_warmup: bool = False, d0: float = 1e-6, d_coef: float = 1.0,
                 growth_rate: float = math.inf, maximize: bool = False, **_: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, beta3=beta3, eps=eps,
                                      weight_decay=weight_decay, decouple=decouple,
                                      use_bias_correction=use_bias_correction,
                                      safeguard_warmup=safeguard_warmup, d0=d0, d_coef=d_coef,
                                      growth_rate=growth_rate, maximize=maximize))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            live = [p for p in group["params"] if p.grad is not None]
            if live:
                self._group_step(group, live)
        return loss

    def _group_step(self, group: dict[str, Any], live: list[Tensor]) -> None:
        d0, wd = group["d0"], group["weight_decay"]
        for p in live:
            st = self.state[p]
            if not st:
                st["step"] = torch.tensor(0.0)
                for k in ("exp_avg", "exp_avg_sq", "s"):
                    st[k] = torch.zeros_like(p)
                st["displacement"] = torch.zeros_like(p)  # x0 - x
                for k, v in (("d", d0), ("d_max", d0), ("d_numerator", 0.0), ("k", 0.0)):
                    st[k] = _scalar(p, v)
            st["step"] += 1
        newest = self.state[max(live, key=lambda q: self.state[q]["k"].item())]
        d, d_max, r, k = (newest[key].item() for key in ("d", "d_max", "d_numerator", "k"))
        b1, b2 = group["betas"]
        b3 = math.sqrt(b2) if group["beta3"] is None else group["beta3"]
        lr = float(group["lr"])
        bc = (math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1))
              if group["use_bias_correction"] else 1.0)
        dlr = d * lr * bc
        if lr > 0:
            progress, l1 = 0.0, 0.0
            grads = {}
            for p in live:
                st = self.state[p]
                g = _real(-p.grad if group["maximize"] else p.grad)
                if wd and not group["decouple"]:
                    g = g + wd * _real(p)
                grads[p] = g
                progress += float((g * _real(st["displacement"])).sum())
                m, v, s = _real(st["exp_avg"]), _real(st["exp_avg_sq"]), _real(st["s"])
                m.copy_(b1 * m + (1 - b1) * d * g)
                v.copy_(b2 * v + (1 - b2) * d * d * g * g)
                s.copy_(b3 * s + (d / d0) * (d if group["safeguard_warmup"] else dlr) * g)
                l1 += float(s.abs().sum())
            if l1 != 0:  # (NaN passes: NaN gradients reach the parameters)
                r = b3 * r + (d / d0) * dlr * progress
                d_hat = group["d_coef"] * r / l1
                grown = _fmax(d, d_hat) if d <= d0 * (1 + 2.0**-20) else d
                d_max = _fmax(d_max, d_hat)
                d_new = min(d_max, grown * group["growth_rate"])
                for p in live:
                    st = self.state[p]
                    m, v = _real(st["exp_avg"]), _real(st["exp_avg_sq"])
                    x = _real(p)
                    step = -dlr * (m / (v.sqrt() + d_new * group["eps"])
                                   + (wd * x if group["decouple"] else 0.0))
                    x.add_(step)
                    _real(st["displacement"]).sub_(step)
                d, k = d_new, k + 1
        for p in live:
            for key, val in (("d", d), ("d_max", d_max), ("d_numerator", r), ("k", k)):
                self.state[p][key].fill_(val)


def cases(Case: Any) -> list[Any]:
    """The contract cases (``Case`` is ``tests/test_contract.py``'s dataclass).

    ``rtol32`` stays at the default 1e-6 argument of ``close`` (float32 against the same rule
    computed with float64 group scalars): the adapted rate or ``d`` differs from the
    reference by a few float32 roundings (~1e-7 relative), which changes a step of size
    ``lr * rho * |d| <= 0.1`` by ~1e-8, below the half-ulp rounding of ``|p| ~ 1`` that
    ``close`` budgets for.
    """
    return [
        Case("sgdhd", SGDHD, RefSGDHD,
             dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, hypergrad_lr=1e-3),
             dict(lr=0.02, momentum=0.5, dampening=0.1, nesterov=False, hypergrad_lr=1e-2),
             [dict(lr=0.05, weight_decay=0.01), dict(lr=0.05, momentum=0.5, hypergrad_lr=0.1)]),
        Case("adamhd", AdamHD, RefAdamHD,
             dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01, hypergrad_lr=1e-4),
             dict(lr=0.02, betas=(0.5, 0.9), amsgrad=True, hypergrad_lr=1e-3),
             [dict(lr=0.01, weight_decay=0.01, eps=1e-30, hypergrad_lr=1e-3)]),
        Case("prodigy", Prodigy, RefProdigy,
             dict(lr=1.0, weight_decay=0.01, d0=1e-3),
             dict(lr=0.5, betas=(0.8, 0.99), decouple=False, weight_decay=0.1,
                  use_bias_correction=True, growth_rate=1.05),
             [dict(lr=1.0, safeguard_warmup=True, beta3=0.9, d_coef=0.5, eps=1e-30),
              dict(lr=1.0, use_bias_correction=True, decouple=False, weight_decay=0.01)]),
    ]
