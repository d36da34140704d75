"""Contract cases (``tests/test_contract.py``) for Lion, Rprop and ASGD.

Rprop and ASGD are checked against torch.optim's classes; Lion, which torch.optim lacks,
against :class:`RefLion` below, written from the paper one parameter at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from optimlab.optimizers.lion import Lion
from optimlab.optimizers.rprop_asgd import ASGD, Rprop


class RefLion(torch.optim.Optimizer):
    """Lion from Chen et al. (2023), Algorithm 2, one parameter at a time::

        c = b1 m + (1 - b1) g;  p <- p - lr (sign(c) + wd p);  m <- b2 m + (1 - b2) g
    """

    def __init__(self, params: Any, lr: float | Tensor = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0,
                 maximize: bool = False, **_: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = float(group["lr"])
            b1, b2 = (float(b) for b in group["betas"])
            wd = float(group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p)
                st["step"] += 1
                m = st["exp_avg"]
                pr, gr, mr = (torch.view_as_real(x) if x.is_complex() else x for x in (p, g, m))
                c = (b1 * mr + (1 - b1) * gr).sign()
                pr.mul_(1 - lr * wd).add_(c, alpha=-lr)
                mr.mul_(b2).add_(gr, alpha=1 - b2)
        return loss


def cases(Case: Any) -> list[Any]:
    """Lion, Rprop and ASGD contract cases."""
    return [
        Case("lion", Lion, RefLion,
             dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
             dict(lr=0.003, betas=(0.95, 0.98), weight_decay=0.0),
             [dict(lr=0.01), dict(lr=0.02, betas=(0.0, 0.5), weight_decay=1.0)],
             nan_reaches_params=False),
        Case("rprop", Rprop, torch.optim.Rprop,
             dict(lr=0.02, etas=(0.4, 1.3), step_sizes=(1e-4, 0.2)),
             dict(lr=0.05, etas=(0.6, 1.1), step_sizes=(0.0, 1.0)),
             [dict(lr=0.01)], nan_reaches_params=False, zero_lr_is_identity=False),
        # ASGD's rounding: torch.optim.ASGD rounds p twice per step (p * (1 - lambd * eta),
        # with 1 - lambd * eta itself rounded to the parameter's precision, then - eta * g),
        # optimlab once (p - eta * (g + lambd * p)): at most 2 ulp of p apart per step, 60 ulp
        # (7e-6 of |p|) after 30 steps even if every rounding fell the same way, inside
        # 1e-5 * (1 + |p|) (the argument of ``close``; the chain_full case's bound).
        # lr = 2**-5: ASGD computes its step sizes from lr's value, as torch.optim.ASGD does,
        # so a float32 tensor lr steps as the float lr only where float32 holds it exactly.
        Case("asgd", ASGD, torch.optim.ASGD,
             dict(lr=2.0**-5, lambd=0.01, alpha=0.6, t0=4, weight_decay=0.01),
             dict(lr=0.02, lambd=0.001, alpha=0.9, t0=0, weight_decay=0.0),
             [dict(lr=0.01), dict(lr=0.05, lambd=0.0, t0=2)], rtol32=1e-5),
    ]
