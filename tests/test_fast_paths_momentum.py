"""The momentum buffer's one-pass update (``optimlab.ops.scale_add_``) against its two-pass
form, and the SGD step that uses it against torch.optim.

On the CPU ``v <- mu * v + u`` is one call of torch's ``add`` with ``alpha`` (one read of ``v``
and ``u``, one write) instead of ``mul_`` then ``add_`` (two passes over ``v``); elsewhere, and
on the compiled path, it is the two passes. Where the CPU's kernels have a fused multiply-add
the one-pass form rounds once, the two-pass form rounds the product first: the tests bound the
difference by that one extra rounding, and ask for exact equality wherever the same kernel runs
(the documented ``torch.add`` call; a 0-dim tensor ``mu``, as on the compiled path).
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import optimlab as ol
from optimlab import ops

momentum_module = importlib.import_module("optimlab.transforms.momentum")


def operands(dtype: torch.dtype, n: int = 4099, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    u = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    return v, u


def two_pass(v: Tensor, mu: float, u: Tensor) -> Tensor:
    out = v.clone()
    out.mul_(mu)
    out.add_(u)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mu", [0.9, 0.99, 1 / 3, 0.0, 1.0])
def test_one_pass_update_is_torch_add_and_within_one_rounding_of_two_passes(
        dtype: torch.dtype, mu: float) -> None:
    v, u = operands(dtype)
    # one tensor cut in pieces of odd lengths: vector loops and scalar tails alike
    pieces = [v[:1], v[1:8], v[8:1000], v[1000:]]
    upieces = [u[:1], u[1:8], u[8:1000], u[1000:]]
    ops.scale_add_(pieces, mu, upieces)  # writes into v through the views
    assert torch.equal(v, torch.add(u, operands(dtype)[0], alpha=mu))
    ref = two_pass(operands(dtype)[0], mu, u)
    # one = rnd(mu v + u); two = rnd(rnd(mu v) + u). With unit roundoff e (2**-24 in float32,
    # 2**-53 in float64): |rnd(mu v) - mu v| <= e |mu v|, and each final rounding moves its
    # result by at most e times itself, so |one - two| <= e |mu v| + e (|one| + |two|).
    e = torch.finfo(dtype).eps / 2
    v0 = operands(dtype)[0]
    bound = e * (mu * v0).abs() + e * (v.abs() + ref.abs())
    assert bool(((v - ref).abs() <= bound).all())


def test_a_tensor_scalar_takes_the_two_pass_form_bit_for_bit() -> None:
    """The compiled path passes 0-dim tensors: the product is rounded first, as before."""
    v, u = operands(torch.float32)
    mu = torch.tensor(0.9)
    ref = v.clone()
    ref.mul_(mu)
    ref.add_(u)
    ops.scale_add_([v], mu, [u])
    assert torch.equal(v, ref)


def test_meta_tensors_are_checked_not_computed() -> None:
    v, u = torch.empty(3, 4, device="meta"), torch.empty(3, 4, device="meta")
    ops.scale_add_([v], 0.9, [u])  # the preflight mirrors a step on meta tensors
    with pytest.raises(RuntimeError):
        ops.scale_add_([v], 0.9, [torch.empty(5, device="meta")])


class _Calls:
    def __init__(self, real: Any) -> None:
        self.real, self.n = real, 0

    def __call__(self, xs: list[Tensor], *args: Any) -> None:
        self.n += xs[0].device.type == "cpu"  # not the dry run on meta tensors
        self.real(xs, *args)


@pytest.mark.parametrize(("kw", "one_pass"), [
    ({"momentum": 0.9}, True),
    ({"momentum": 0.9, "nesterov": True}, True),
    ({"momentum": 0.9, "dampening": 0.1}, False),  # (1 - tau) * u: the two-pass form
    ({"momentum": 0.0}, False),  # no buffer
])
def test_sgd_uses_the_one_pass_update_without_dampening(
        kw: dict[str, Any], one_pass: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Calls(ops.scale_add_)
    monkeypatch.setattr(momentum_module.ops, "scale_add_", spy)
    ps = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(7))]
    opt = ol.SGD(ps, lr=0.1, **kw)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn(p.shape)
        opt.step()
    assert (spy.n == 2) is one_pass  # steps 2 and 3 (step 1 copies u into the fresh buffer)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sgd_momentum_follows_torch_optim(nesterov: bool, dtype: torch.dtype) -> None:
    """SGD with momentum against torch.optim.SGD (whose buffer update is the two-pass form)
    over 30 steps from the same gradients (not fed back through the parameters).

    With unit roundoff e: per step the buffers differ by at most one rounding of ``mu v``
    plus the two final roundings (3 e |v|), and an old difference shrinks by ``mu`` per step,
    so |dv| <= 3 e max|v| / (1 - mu) = 30 e max|v|, with max|v| <= 10 max|g| <= 60 for these
    standard normal gradients (below 6 sigma): |dv| <= 1800 e. The parameters move by
    ``lr v`` per step: after n = 30 steps they differ by at most n lr 1800 e = 540 e, plus one
    rounding of p per step where the two sums round differently (e max|p| <= 6 e each: 180 e).
    Bounds: 1000 e for parameters (6e-5 in float32) and 2000 e for buffers; a wrong formula
    (a missing ``mu``, dampening applied) moves them by ~1e-2."""
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in [(33, 17), (17,), (4, 5)]]
    grads = [[torch.randn(p.shape, generator=gen, dtype=dtype) for p in init]
             for _ in range(30)]
    ours = [nn.Parameter(p.clone()) for p in init]
    theirs = [nn.Parameter(p.clone()) for p in init]
    o1 = ol.SGD(ours, lr=0.01, momentum=0.9, nesterov=nesterov)
    o2 = torch.optim.SGD(theirs, lr=0.01, momentum=0.9, nesterov=nesterov)
    for gs in grads:
        for a, b, g in zip(ours, theirs, gs):
            a.grad, b.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    e = torch.finfo(dtype).eps / 2
    for a, b in zip(ours, theirs):
        assert float((a - b).detach().abs().max()) <= 1000 * e
        assert float((o1.state[a]["momentum_buffer"] - o2.state[b]["momentum_buffer"])
                     .abs().max()) <= 2000 * e
