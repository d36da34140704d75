"""Lion: a float64 reference written from the paper, the compiled path, state dicts, param
groups, maximize, bfloat16 states and bad input.

Gradients are fixed float32 sequences (``grad_seq``), fed exactly (upcast) to float64 runs,
so two runs differ only by their own arithmetic.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from optimlab.optimizers.classic import Adam
from optimlab.optimizers.lion import Lion

SHAPES = [(4, 3), (5,), (2, 2, 2)]


def make_params(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]


def clone(ps: list[Tensor], dtype: torch.dtype | None = None) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone().to(dtype or p.dtype)) for p in ps]


def grad_seq(steps: int, seed: int = 1) -> list[list[Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(steps)]


def run(opt: torch.optim.Optimizer, ps: list[Tensor], grads: list[list[Tensor]],
        sign: float = 1.0) -> None:
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = sign * g.to(p.dtype)
        opt.step()


def bit_equal(xs: list[Tensor], ys: list[Tensor]) -> None:
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=0, atol=0)


def close_rel(xs: list[Tensor], ys: list[Tensor], rtol: float) -> None:
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x.detach().double(), y.detach().double(), rtol=rtol,
                                   atol=rtol)


def ref_lion(ps: list[Tensor], grads: list[list[Tensor]], lr: float,
             betas: tuple[float, float], weight_decay: float, maximize: bool = False
             ) -> tuple[list[Tensor], list[Tensor]]:
    """Chen et al. (2023), Algorithm 2, element by element in float64 (Python floats)."""
    b1, b2 = betas
    ps = [p.detach().double().flatten().tolist() for p in ps]
    ms = [[0.0] * len(p) for p in ps]
    for gs in grads:
        for p, m, g in zip(ps, ms, gs):
            for j, gj in enumerate(g.double().flatten().tolist()):
                gj = -gj if maximize else gj
                c = b1 * m[j] + (1 - b1) * gj
                p[j] -= lr * ((c > 0) - (c < 0) + weight_decay * p[j])
                m[j] = b2 * m[j] + (1 - b2) * gj
    out = [torch.tensor(p, dtype=torch.float64).view(s) for p, s in zip(ps, SHAPES)]
    return out, [torch.tensor(m, dtype=torch.float64).view(s) for m, s in zip(ms, SHAPES)]


lion_options = st.fixed_dictionaries({
    "lr": st.floats(1e-4, 0.05),
    "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.999)),
    "weight_decay": st.sampled_from([0.0, 0.01, 1.0]),
    "maximize": st.booleans(),
})


@settings(max_examples=20, deadline=None)
@given(kw=lion_options)
def test_lion_matches_float64_reference(kw: dict) -> None:
    grads = grad_seq(6)
    ps = make_params()
    want, want_m = ref_lion(ps, grads, **kw)
    # float64: ~20 roundings of 2**-53 per element: 1e-10 is far. float32, 6 steps: the
    # signs agree (c would have to be within ~1e-7 |m| of 0 to flip); per step p is rounded
    # by the decay (1 - lr wd, itself rounded, then the product: <= 1.5 * 2**-24 |p|) and by
    # the step (2**-24 |p|), and lr as a float32 is off by 2**-24 lr: 6 steps, 9e-7 |p| +
    # 3e-9, and m, a convex combination of the gradients, a few 2**-24: < 1e-6 (1 + |x|).
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-6)):
        qs = clone(ps, dtype)
        opt = Lion(qs, **kw)
        run(opt, qs, grads)
        close_rel(qs, want, rtol)
        close_rel([opt.state[q]["exp_avg"] for q in qs], want_m, rtol)


def test_every_coordinate_moves_by_lr() -> None:
    """Without weight decay, |delta p| = lr wherever the interpolated momentum is not zero:
    Lion's update is a sign (float64: p - lr rounds by at most half an ulp of |p| < 8)."""
    ps = make_params(torch.float64)
    before = [p.detach().clone() for p in ps]
    run(Lion(ps, lr=1e-3), ps, grad_seq(1))
    for p, b in zip(ps, before):
        torch.testing.assert_close((p - b).abs(), torch.full_like(p, 1e-3), rtol=0,
                                   atol=8 * 2.0**-53)


def test_lion_keeps_one_state_per_parameter() -> None:
    ps, qs = make_params(), make_params()
    lion, adam = Lion(ps), Adam(qs)
    run(lion, ps, grad_seq(1))
    run(adam, qs, grad_seq(1))
    n = sum(p.numel() * 4 for p in ps)
    assert lion.state_bytes() - len(ps) * 4 == n  # exp_avg, plus a float32 step each
    assert adam.state_bytes() - len(qs) * 4 == 2 * n


@pytest.mark.slow
def test_fused_equals_eager() -> None:
    kw = dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)
    ps = make_params()
    qs = clone(ps)
    a, b = Lion(ps, **kw), Lion(qs, fused=True, **kw)
    grads = grad_seq(8)
    run(a, ps, grads)
    run(b, qs, grads)
    # The signs agree unless the compiled c = b1 m + (1 - b1) g (which may use an FMA)
    # crosses 0, not with these gradients; the decay and the step may contract into one FMA:
    # 1 ulp of p per step, 8 steps: 8 * 2**-23 ~ 1e-6 of |p|.
    close_rel(ps, qs, 2e-6)
    close_rel([a.state[p]["exp_avg"] for p in ps], [b.state[q]["exp_avg"] for q in qs], 2e-6)


def test_state_dict_round_trip_continues_bitwise() -> None:
    grads = grad_seq(10)
    ps = make_params()
    a = Lion(ps, lr=0.01, weight_decay=0.1)
    run(a, ps, grads[:5])
    sd = copy.deepcopy(a.state_dict())
    assert set(sd["state"][0]) == {"step", "exp_avg"}
    qs = clone(ps)
    b = Lion(qs, lr=0.5)
    b.load_state_dict(sd)
    assert b.param_groups[0]["lr"] == 0.01
    run(a, ps, grads[5:])
    run(b, qs, grads[5:])
    bit_equal(ps, qs)


def test_param_groups_step_like_separate_optimizers() -> None:
    alt = dict(lr=0.003, betas=(0.95, 0.98), weight_decay=0.5)
    grads = grad_seq(8)
    ps = make_params()
    joint = Lion([{"params": ps[:2]}, {"params": ps[2:], **alt}], lr=0.01)
    qs = clone(ps)
    one, two = Lion(qs[:2], lr=0.01), Lion(qs[2:], **alt)
    run(joint, ps, grads)
    for gs in grads:
        for q, g in zip(qs, gs):
            q.grad = g
        one.step()
        two.step()
    bit_equal(ps, qs)


def test_maximize_ascends_the_negated_gradient_bitwise() -> None:
    grads = grad_seq(6)
    ps, qs = make_params(), make_params()
    run(Lion(ps, lr=0.01, weight_decay=0.1, maximize=True), ps, grads, sign=-1.0)
    run(Lion(qs, lr=0.01, weight_decay=0.1), qs, grads)
    bit_equal(ps, qs)


def test_bfloat16_states_run() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(64))
    target = torch.randn(64)
    opt = Lion([w], lr=0.05, state_dtype=torch.bfloat16)  # moves <= 3 in 60 steps
    first = ((w - target) ** 2).sum().item()
    for _ in range(60):
        w.grad = 2 * (w.detach() - target)
        opt.step()
    assert opt.state[w]["exp_avg"].dtype == torch.bfloat16
    assert math.isfinite(w.sum().item())
    assert ((w - target) ** 2).sum().item() < 0.5 * first


def test_differentiable_step_equals_the_plain_step() -> None:
    # the recorded step's out-of-place operations round as the in-place ones: bitwise
    ps = make_params(torch.float64)
    qs = [p.detach().clone().requires_grad_(False) for p in ps]
    rs = [p.detach().clone() for p in ps]
    g = grad_seq(1)[0]
    for x, gx in zip(qs, g):
        x.grad = gx.double()
    for x, gx in zip(rs, g):
        x.grad = gx.double()
    Lion(qs, lr=0.01, weight_decay=0.1, differentiable=True).step()
    Lion(rs, lr=0.01, weight_decay=0.1).step()
    bit_equal(qs, rs)


@pytest.mark.parametrize(("kw", "name"), [
    (dict(lr=-1e-4), "lr"),
    (dict(lr=math.inf), "lr"),
    (dict(betas=(1.0, 0.99)), r"betas\[0\]"),
    (dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    (dict(betas=(0.9,)), "betas"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters_are_named(kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Lion(make_params(), **kw)
