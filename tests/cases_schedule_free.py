"""Contract cases of ScheduleFreeAdamW and ScheduleFreeSGD (loaded by ``tests/test_contract.py``).

torch.optim has no Schedule-Free optimizer: the references below are written from the paper
(Defazio et al., 2024, "The Road Less Scheduled", Algorithm 1, with the authors' release's
bias correction and weights), one parameter at a time in plain tensor math. Like optimlab's
optimizers they keep the parameters at ``y`` (the gradient point) during training and store
``z`` only (with optimlab's state names, so state dicts load across); unlike optimlab's, they
recover ``x = (y - (1 - beta) z) / beta`` explicitly each step and step the paper's three
sequences one after the other instead of the eliminated one-line update.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from optimlab.optimizers.schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD


class _RefScheduleFree(torch.optim.Optimizer):
    """The common per-parameter loop; subclasses give the direction ``d`` and ``beta``."""

    def _beta(self, group: dict[str, Any]) -> float:
        raise NotImplementedError

    def _direction(self, g: Tensor, y: Tensor, st: dict[str, Any], t: int,
                   group: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta = self._beta(group)
            lr = float(group["lr"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["z"] = p.detach().clone()
                    st.update(self._extra_state(p))
                    st["weight_sum"] = torch.tensor(0.0, dtype=torch.float64)
                    st["lr_max"] = torch.tensor(0.0, dtype=torch.float64)
                st["step"] += 1
                t = int(st["step"].item())
                real = torch.view_as_real if p.is_complex() else (lambda v: v)
                g = real(-p.grad if group["maximize"] else p.grad)
                y, z = real(p), real(st["z"])
                x = (y - (1 - beta) * z) / beta
                warmup = group["warmup_steps"]
                gamma = lr * (min(1.0, t / warmup) if warmup > 0 else 1.0)
                lr_max = max(st["lr_max"].item(), gamma)
                w = t ** group["r"] * lr_max ** group["weight_lr_power"]
                total = st["weight_sum"].item() + w
                c = w / total if total > 0 else 0.0
                d = self._direction(g, y, st, t, group) + group["weight_decay"] * y
                z_new = z - gamma * d
                x_new = (1 - c) * x + c * z_new
                y.copy_((1 - beta) * z_new + beta * x_new)
                z.copy_(z_new)
                st["weight_sum"].fill_(total)
                st["lr_max"].fill_(lr_max)
        return loss

    def _extra_state(self, p: Tensor) -> dict[str, Tensor]:
        return {}


class RefScheduleFreeAdamW(_RefScheduleFree):
    """Schedule-Free AdamW from the paper: ``d = g / (sqrt(v / (1 - b2^t)) + eps) + wd * y``."""

    def __init__(self, params: Any, lr: float = 0.0025,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, maximize: bool = False, **_: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r,
                                      weight_lr_power=weight_lr_power, maximize=maximize))

    def _beta(self, group: dict[str, Any]) -> float:
        return float(group["betas"][0])

    def _extra_state(self, p: Tensor) -> dict[str, Tensor]:
        return {"exp_avg_sq": torch.zeros_like(p)}

    def _direction(self, g: Tensor, y: Tensor, st: dict[str, Any], t: int,
                   group: dict[str, Any]) -> Tensor:
        b2 = float(group["betas"][1])
        v = st["exp_avg_sq"]
        v = torch.view_as_real(v) if v.is_complex() else v
        v.mul_(b2).add_((1 - b2) * g * g)
        return g / ((v / (1 - b2**t)).sqrt() + group["eps"])


class RefScheduleFreeSGD(_RefScheduleFree):
    """Schedule-Free SGD from the paper: ``d = g + wd * y``."""

    def __init__(self, params: Any, lr: float = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, maximize: bool = False, **_: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r,
                                      weight_lr_power=weight_lr_power, maximize=maximize))

    def _beta(self, group: dict[str, Any]) -> float:
        return float(group["momentum"])

    def _direction(self, g: Tensor, y: Tensor, st: dict[str, Any], t: int,
                   group: dict[str, Any]) -> Tensor:
        return g.clone()


def cases(Case: Any) -> list[Any]:
    """The contract cases (``Case`` is ``tests/test_contract.py``'s dataclass).

    Parameters hold ``y`` in training, in ours and in the references alike. ``rtol32``: the
    reference recovers ``x = (y - (1 - beta) z) / beta`` each step, which rounds ``y`` and
    ``z`` (|.| < 4) and divides by ``beta >= 0.5``: up to ~3 ulp of |p| per step more than
    the direct update, and 30 steps that all round the same way would be ~90 ulp (1e-5 at
    |p| ~ 2); unbiased roundings grow like sqrt(30) * 3 ulp ~ 16 ulp, 2e-6 at |p| ~ 2.
    2e-6 relative plus absolute ``(1 + |p|)`` scaling covers that with margin.
    """
    return [
        Case("schedulefreeadamw", ScheduleFreeAdamW, RefScheduleFreeAdamW,
             dict(lr=0.01, weight_decay=0.05, warmup_steps=3),
             dict(lr=0.02, betas=(0.8, 0.99), r=1.0, weight_lr_power=1.0),
             [dict(lr=0.01, eps=1e-30), dict(lr=0.01, weight_decay=0.05, r=0.5)],
             rtol32=2e-6),
        Case("schedulefreesgd", ScheduleFreeSGD, RefScheduleFreeSGD,
             dict(lr=0.05, momentum=0.9, weight_decay=0.01, warmup_steps=3),
             dict(lr=0.02, momentum=0.5, r=1.0),
             [dict(lr=0.05, weight_lr_power=0.0), dict(lr=0.05, momentum=0.6, warmup_steps=0)],
             rtol32=2e-6),
    ]
