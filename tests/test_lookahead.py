"""Lookahead against a hand-written reference, the inner optimizer and torch's scheduler API."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import optimlab as ol
from optimlab.lookahead import Lookahead


def _params(seed: int = 0, dtype=torch.float64) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(5, 3, generator=g, dtype=dtype)),
            nn.Parameter(torch.randn(3, generator=g, dtype=dtype))]


def _grad(params, t: int):
    """A deterministic gradient that depends on the weights (loss = sum(sin(p) * c_t) + |p|^2)."""
    return [torch.cos(p.detach()) * (1 + 0.1 * t) + 2 * p.detach() for p in params]


def _run(opt, params, steps: int, t0: int = 0) -> None:
    for t in range(t0, t0 + steps):
        opt.zero_grad()
        for p, g in zip(params, _grad(params, t)):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize(("k", "alpha"), [(1, 0.5), (3, 0.5), (5, 0.8), (4, 0.0)])
def test_equals_float64_reference(k, alpha):
    lr, mu = 0.05, 0.9
    params = _params()
    opt = Lookahead(ol.SGD(params, lr=lr, momentum=mu), k=k, alpha=alpha)
    steps = 3 * k + 1
    _run(opt, params, steps)

    # reference: SGD with momentum (buf = mu buf + g; theta -= lr buf), Lookahead every k steps
    theta = [p.detach().clone() for p in _params()]
    phi = [t.clone() for t in theta]
    buf = [None] * len(theta)
    for t in range(steps):
        grads = _grad(theta, t)
        for i, g in enumerate(grads):
            buf[i] = g.clone() if buf[i] is None else mu * buf[i] + g
            theta[i] = theta[i] - lr * buf[i]
        if (t + 1) % k == 0:
            for i in range(len(theta)):
                phi[i] = phi[i] + alpha * (theta[i] - phi[i])
                theta[i] = phi[i].clone()
    # float64, <= 16 steps of O(1) values: each step rounds a few times (1.1e-16 each, also
    # lerp vs the explicit formula); the gradient cos(p) + 2p feeds a difference back with
    # factor lr * 3 = 0.15 per step, momentum 0.9 sums at most 10 of them: ~1e-14 worst case
    # (measured 2.2e-16); 1e-12 is 100x that.
    for p, want in zip(params, theta):
        torch.testing.assert_close(p.detach(), want, atol=1e-12, rtol=1e-12)
    for p, want in zip(params, phi):
        torch.testing.assert_close(opt.state[p]["slow_param"], want, atol=1e-12, rtol=1e-12)
    assert opt.lookahead_step == steps


@pytest.mark.parametrize("make", [
    lambda ps: ol.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    lambda ps: ol.AdamW(ps, lr=0.01, weight_decay=0.1),
])
def test_alpha_one_is_inner_optimizer(make):
    a, b = _params(dtype=torch.float32), _params(dtype=torch.float32)
    la = Lookahead(make(a), k=3, alpha=1.0)
    inner = make(b)
    _run(la, a, 10)
    _run(inner, b, 10)
    # Bit for bit: torch.lerp with weight >= 0.5 computes end - (end - start) * (1 - w),
    # exactly ``end`` at w = 1, so each sync leaves the fast weights untouched.
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def test_state_dict_round_trip_continues_bit_identically():
    a = _params(dtype=torch.float32)
    la = Lookahead(ol.AdamW(a, lr=0.01), k=4, alpha=0.6)
    _run(la, a, 6)
    buf = io.BytesIO()  # through torch.save/torch.load: a loaded optimizer state aliases
    torch.save(la.state_dict(), buf)  # the dict's tensors, as with any torch optimizer
    buf.seek(0)
    sd = torch.load(buf)
    b = [nn.Parameter(p.detach().clone()) for p in a]
    lb = Lookahead(ol.AdamW(b, lr=0.5), k=2, alpha=0.1)  # overwritten by load_state_dict
    lb.load_state_dict(sd)
    assert (lb.k, lb.alpha, lb.lookahead_step) == (4, 0.6, 6)
    assert lb.param_groups[0]["lr"] == 0.01
    _run(la, a, 7, t0=6)
    _run(lb, b, 7, t0=6)
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        assert torch.equal(la.state[p]["slow_param"], lb.state[q]["slow_param"])


def test_is_optimizer_and_lr_scheduler_drives_inner_lr():
    params = _params()
    inner = ol.SGD(params, lr=1.0)
    la = Lookahead(inner, k=2)
    assert isinstance(la, torch.optim.Optimizer)
    assert la.param_groups is inner.param_groups
    sched = torch.optim.lr_scheduler.StepLR(la, step_size=1, gamma=0.5)
    _run(la, params, 1)
    sched.step()
    assert inner.param_groups[0]["lr"] == 0.5
    assert sched.get_last_lr() == [0.5]


def test_closure_zero_grad_and_add_param_group():
    params = _params()
    la = Lookahead(ol.SGD(params, lr=0.1), k=2)

    def closure():
        la.zero_grad()
        loss = sum((p**2).sum() for p in params)
        loss.backward()
        return loss

    loss = la.step(closure)
    assert torch.is_tensor(loss)
    la.zero_grad()
    assert all(p.grad is None for p in params)

    extra = nn.Parameter(torch.ones(2, dtype=torch.float64))
    la.add_param_group({"params": [extra], "lr": 0.5})
    assert len(la.optimizer.param_groups) == 2
    extra.grad = torch.ones(2, dtype=torch.float64)
    la.step()  # step 2: sync; extra's slow weight was created at this step from 1.0
    # 1 - 0.5 * 1 = 0.5, then lerp(1, 0.5, 0.5) = 0.75: dyadic values, every operation exact
    torch.testing.assert_close(extra.detach(), torch.full((2,), 1.0 - 0.5 * 0.5,
                                                          dtype=torch.float64))


@pytest.mark.parametrize(("kw", "field"), [
    ({"k": 0}, "k"), ({"k": 2.0}, "k"), ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"),
])
def test_bad_input(kw, field):
    with pytest.raises(ValueError, match=field):
        Lookahead(ol.SGD(_params(), lr=0.1), **kw)
    with pytest.raises(ValueError, match="optimizer"):
        Lookahead(object())  # type: ignore[arg-type]
