"""Rprop and ASGD: float64 references written from the papers, torch.optim parity, the
compiled path, state dicts, param groups, maximize and bfloat16 states.

Gradients are fixed sequences drawn in float32 (``grad_seq``), fed exactly (upcast) to the
float64 runs, so two runs differ only by their own arithmetic: no feedback through a loss.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from optimlab.optimizers.rprop_asgd import ASGD, Rprop

SHAPES = [(4, 3), (5,), (2, 2, 2)]
GRID = settings(max_examples=20, deadline=None)


def make_params(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]


def clone(ps: list[Tensor], dtype: torch.dtype | None = None) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone().to(dtype or p.dtype)) for p in ps]


def grad_seq(steps: int, seed: int = 1) -> list[list[Tensor]]:
    """float32 gradients; a few exact zeros, so that Rprop's ``sign(g * prev) = 0`` occurs."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        gs = [torch.randn(s, generator=gen) for s in SHAPES]
        gs[0][0, 0] = 0.0
        out.append(gs)
    return out


def run(opt: torch.optim.Optimizer, ps: list[Tensor], grads: list[list[Tensor]],
        sign: float = 1.0) -> None:
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = sign * g.to(p.dtype)
        opt.step()


def bit_equal(xs: list[Tensor], ys: list[Tensor]) -> None:
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=0, atol=0, equal_nan=True)


# ----- float64 references, from the papers -------------------------------------------------------
def ref_rprop(ps: list[Tensor], grads: list[list[Tensor]], lr: float,
              etas: tuple[float, float], step_sizes: tuple[float, float],
              maximize: bool = False) -> list[Tensor]:
    """Riedmiller & Braun (1993), without weight-backtracking: a sign change shrinks the step
    size and skips the step and the next comparison."""
    ps = [p.detach().double().clone() for p in ps]
    prev = [torch.zeros_like(p) for p in ps]
    size = [torch.full_like(p, lr) for p in ps]
    for gs in grads:
        for i, (p, g) in enumerate(zip(ps, gs)):
            g = -g.double() if maximize else g.double()
            agree = g * prev[i]
            factor = torch.ones_like(g)
            factor[agree > 0] = etas[1]
            factor[agree < 0] = etas[0]
            size[i] = (size[i] * factor).clamp(*step_sizes)
            g = g.masked_fill(agree < 0, 0.0)
            p -= size[i] * ((g > 0).double() - (g < 0).double())
            prev[i] = g
    return ps


def ref_asgd(ps: list[Tensor], grads: list[list[Tensor]], lr: float, lambd: float,
             alpha: float, t0: float, weight_decay: float, maximize: bool = False
             ) -> tuple[list[Tensor], list[Tensor]]:
    """Averaged SGD (Polyak & Juditsky, 1992) with the step sizes of Xu (2011),
    eta_t = lr / (1 + lambd lr t)^alpha, the weights shrunk by (1 - lambd eta) and averaging
    from step t0 on (mu_t = 1 / max(1, t - t0)). eta and mu are stored as float32 numbers
    (torch.optim.ASGD's state format): rounded here as they are kept."""
    ps = [p.detach().double().clone() for p in ps]
    ax = [torch.zeros_like(p) for p in ps]
    eta, mu = lr, 1.0
    f32 = lambda x: float(torch.tensor(x, dtype=torch.float32))  # noqa: E731
    eta = f32(eta)
    for t, gs in enumerate(grads, start=1):
        for i, (p, g) in enumerate(zip(ps, gs)):
            g = (-g if maximize else g).double() + weight_decay * p
            p.copy_(p - eta * (g + lambd * p))
            ax[i] = p.clone() if mu == 1 else ax[i] + mu * (p - ax[i])
        eta = f32(lr / (1 + lambd * lr * t) ** alpha)
        mu = f32(1 / max(1, t - t0))
    return ps, ax


def close_rel(xs: list[Tensor], ys: list[Tensor], rtol: float) -> None:
    for x, y in zip(xs, ys):
        x, y = (torch.view_as_real(v.detach()) if v.is_complex() else v.detach() for v in (x, y))
        torch.testing.assert_close(x.double(), y.double(), rtol=rtol, atol=rtol)


rprop_options = st.fixed_dictionaries({
    "lr": st.floats(1e-3, 0.05),
    "etas": st.tuples(st.floats(0.1, 0.9), st.floats(1.05, 2.0)),
    "step_sizes": st.tuples(st.floats(0.0, 1e-3), st.floats(0.01, 0.05)),
    "maximize": st.booleans(),
})
asgd_options = st.fixed_dictionaries({
    "lr": st.floats(1e-3, 0.05),
    "lambd": st.sampled_from([0.0, 1e-4, 0.01, 0.5]),
    "alpha": st.floats(0.0, 1.0),
    "t0": st.sampled_from([0.0, 3.0, 1e6]),
    "weight_decay": st.sampled_from([0.0, 0.01, 0.3]),
    "maximize": st.booleans(),
})


@GRID
@given(kw=rprop_options)
def test_rprop_matches_float64_reference(kw: dict) -> None:
    grads = grad_seq(10)
    ps = make_params()
    want = ref_rprop(ps, grads, **kw)
    p64 = clone(ps, torch.float64)
    run(Rprop(p64, **kw), p64, grads)
    # float64: the same decisions (identical gradients), ~10 roundings of 2**-53: 1e-10 is far
    close_rel(p64, want, 1e-10)
    p32 = clone(ps)
    run(Rprop(p32, **kw), p32, grads)
    # float32: identical gradients give identical sign decisions; p is rounded once per step
    # (10 steps: <= 10 * 2**-24 |p| = 6e-7 |p|) and each step size twice per step (its factor
    # eta as a float32, the product): after k steps <= 2k * 2**-24 relative, times s <= 0.05,
    # summed over 10 steps: <= 0.05 * 110 * 6e-8 = 3.3e-7. Both: < 1e-6 (1 + |p|).
    close_rel(p32, want, 1e-6)


@GRID
@given(kw=asgd_options)
def test_asgd_matches_float64_reference(kw: dict) -> None:
    grads = grad_seq(10)
    ps = make_params()
    want, want_ax = ref_asgd(ps, grads, **kw)
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-6)):
        # float64: ~30 roundings of 2**-53: 1e-10 is far. float32: eta and mu are the same
        # float32 numbers in both; p is rounded once per step (<= 2**-24 |p|) and the update
        # eta (g + lambd p) (|.| <= 0.05 * 4) carries ~3 roundings of 2**-24: over 10 steps
        # <= 6e-7 |p| + 1.2e-7, and ax, a convex combination of the iterates, no more plus
        # its own 2 roundings per step: < 1e-6 (1 + |p|).
        qs = clone(ps, dtype)
        opt = ASGD(qs, **kw)
        run(opt, qs, grads)
        close_rel(qs, want, rtol)
        close_rel([opt.state[q]["ax"] for q in qs], want_ax, rtol)


# ----- torch.optim parity -----------------------------------------------------------------------
@GRID
@given(kw=rprop_options, dtype=st.sampled_from([torch.float32, torch.float64]),
       foreach=st.sampled_from([None, False]))
def test_rprop_is_bitwise_torch_optim(kw: dict, dtype: torch.dtype, foreach: bool | None
                                      ) -> None:
    # Bit for bit: the same operations element by element, the step-size factor built as a
    # sum with one exact non-zero term (so exactly eta_minus, eta_plus or 1 in the dtype), and
    # a multiplication by sign(.) in {-1, 0, 1} is exact.
    ps = make_params(dtype)
    qs = clone(ps)
    a, b = Rprop(ps, foreach=foreach, **kw), torch.optim.Rprop(qs, foreach=foreach, **kw)
    grads = grad_seq(25)
    run(a, ps, grads)
    run(b, qs, grads)
    bit_equal(ps, qs)
    for p, q in zip(ps, qs):
        bit_equal([a.state[p]["step_size"], a.state[p]["prev"], a.state[p]["step"]],
                  [b.state[q]["step_size"], b.state[q]["prev"], b.state[q]["step"]])


@GRID
@given(kw=asgd_options, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_asgd_matches_torch_optim(kw: dict, dtype: torch.dtype) -> None:
    ps = make_params(dtype)
    qs = clone(ps)
    a, b = ASGD(ps, **kw), torch.optim.ASGD(qs, **kw)
    grads = grad_seq(30)
    run(a, ps, grads)
    run(b, qs, grads)
    # torch rounds p twice per step (by 1 - lambd eta, itself rounded to the dtype, then
    # - eta g), optimlab once (p - eta (g + lambd p)): <= 2 ulp of p apart per step, 60 ulp
    # after 30 steps if all fell the same way: 7e-6 |p| in float32 (1e-5 (1 + |p|) below),
    # 1.3e-14 in float64 (1e-12). eta and mu are the same float32 numbers in both.
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    close_rel(ps, qs, rtol)
    for p, q in zip(ps, qs):
        close_rel([a.state[p]["ax"]], [b.state[q]["ax"]], rtol)
        assert a.state[p]["eta"].item() == b.state[q]["eta"].item()
        assert a.state[p]["mu"].item() == b.state[q]["mu"].item()
        assert a.state[p]["eta"].dtype == b.state[q]["eta"].dtype


def test_asgd_parameters_with_their_own_step_sizes_match_torch() -> None:
    """A parameter that skips a step while a scheduler changes lr keeps an eta of its own; it
    may share a bucket (same step count) with one whose eta differs: each keeps its own."""
    ps = make_params(torch.float64)
    qs = clone(ps)
    kw = dict(lr=0.05, lambd=0.05, alpha=0.8)
    a, b = ASGD(ps, **kw), torch.optim.ASGD(qs, **kw)
    sa = torch.optim.lr_scheduler.LambdaLR(a, lambda e: 1.0 / (1.0 + e))
    sb = torch.optim.lr_scheduler.LambdaLR(b, lambda e: 1.0 / (1.0 + e))
    grads = grad_seq(8)
    skips = [[], [0], [1], [], [], [2], [], []]  # 0 and 1 then share step counts, not etas
    differed = False
    for gs, skip in zip(grads, skips):
        st0, st1 = a.state[ps[0]], a.state[ps[1]]
        differed |= bool(st0 and st0["step"] == st1["step"] and st0["eta"] != st1["eta"])
        for xs in (ps, qs):
            for i, (x, g) in enumerate(zip(xs, gs)):
                x.grad = None if i in skip else g.double()
        a.step()
        b.step()
        sa.step()
        sb.step()
    assert differed  # one bucket held two etas
    close_rel(ps, qs, 1e-12)  # float64, see test_asgd_matches_torch_optim


def test_rprop_nonfinite_gradients_as_torch() -> None:
    ps = make_params()
    qs = clone(ps)
    a, b = Rprop(ps, lr=0.05), torch.optim.Rprop(qs, lr=0.05)
    grads = grad_seq(6)
    grads[2][0][1, 1] = math.nan
    grads[2][2][0, 0, 0] = math.inf
    grads[3][2][0, 0, 0] = -math.inf  # a sign change on an infinite gradient: u' = 0
    run(a, ps, grads)
    run(b, qs, grads)
    bit_equal(ps, qs)
    for p, q in zip(ps, qs):
        bit_equal([a.state[p]["prev"], a.state[p]["step_size"]],
                  [b.state[q]["prev"], b.state[q]["step_size"]])


@pytest.mark.parametrize("cls", [Rprop, ASGD])
def test_complex_parameters_match_torch(cls: type) -> None:
    gen = torch.Generator().manual_seed(0)
    ps = [nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.complex64))]
    qs = clone(ps)
    a, b = cls(ps, lr=0.03), getattr(torch.optim, cls.__name__)(qs, lr=0.03)
    for t in range(10):
        g = torch.randn(4, 3, generator=torch.Generator().manual_seed(t), dtype=torch.complex64)
        ps[0].grad, qs[0].grad = g, g.clone()
        a.step()
        b.step()
    close_rel(ps, qs, 1e-6)  # 10 steps, see test_asgd_matches_torch_optim (Rprop: bitwise)


# ----- compiled path ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("cls", "kw"), [
    (Rprop, dict(lr=0.02, etas=(0.4, 1.3), step_sizes=(1e-4, 0.2))),
    (ASGD, dict(lr=0.05, lambd=0.01, t0=3, weight_decay=0.01)),
])
def test_fused_equals_eager(cls: type, kw: dict) -> None:
    ps = make_params()
    qs = clone(ps)
    a, b = cls(ps, **kw), cls(qs, fused=True, **kw)
    grads = grad_seq(8)
    run(a, ps, grads)
    run(b, qs, grads)
    # Rprop: bitwise. Its factor is an exact sum, the step size one rounded product and a
    # clamp, and p - s * sign(.) one rounding of an exact product, FMA or not. ASGD: the
    # compiler may contract eta * (g + lambd p) + p into FMAs, 1 ulp of p per step: 8
    # steps, 8 * 2**-23 ~ 1e-6 of |p|.
    close_rel(ps, qs, 0.0 if cls is Rprop else 2e-6)
    for p, q in zip(ps, qs):
        for k, v in a.state[p].items():
            close_rel([v], [b.state[q][k]], 0.0 if cls is Rprop else 2e-6)


# ----- state dicts, groups, maximize, bfloat16 states, bad input --------------------------------
@pytest.mark.parametrize("cls", [Rprop, ASGD])
def test_state_dict_round_trip_continues_bitwise(cls: type) -> None:
    """Saved mid-run and loaded into a fresh optimizer, the run continues bit for bit."""
    grads = grad_seq(10)
    ps = make_params()
    a = cls(ps, lr=0.03)
    run(a, ps, grads[:5])
    sd = copy.deepcopy(a.state_dict())
    qs = clone(ps)
    b = cls(qs, lr=0.03)
    b.load_state_dict(sd)
    run(a, ps, grads[5:])
    run(b, qs, grads[5:])
    bit_equal(ps, qs)
    keys = {"step", "prev", "step_size"} if cls is Rprop else {"step", "eta", "mu", "ax"}
    assert set(sd["state"][0]) == keys  # torch.optim's state keys


@pytest.mark.parametrize(("cls", "alt"), [
    (Rprop, dict(lr=0.1, etas=(0.3, 1.5), step_sizes=(0.0, 0.5))),
    (ASGD, dict(lr=0.02, lambd=0.1, alpha=0.5, t0=2, weight_decay=0.1)),
])
def test_param_groups_step_like_separate_optimizers(cls: type, alt: dict) -> None:
    grads = grad_seq(8)
    ps = make_params()
    joint = cls([{"params": ps[:2]}, {"params": ps[2:], **alt}], lr=0.03)
    qs = clone(ps)
    one, two = cls(qs[:2], lr=0.03), cls(qs[2:], **alt)
    run(joint, ps, grads)
    for gs in grads:
        for q, g in zip(qs, gs):
            q.grad = g
        one.step()
        two.step()
    bit_equal(ps, qs)


@pytest.mark.parametrize("cls", [Rprop, ASGD])
def test_maximize_ascends_the_negated_gradient_bitwise(cls: type) -> None:
    grads = grad_seq(6)
    ps, qs = make_params(), make_params()
    run(cls(ps, lr=0.03, maximize=True), ps, grads, sign=-1.0)
    run(cls(qs, lr=0.03), qs, grads)
    bit_equal(ps, qs)


@pytest.mark.parametrize("cls", [Rprop, ASGD])
def test_bfloat16_states_run(cls: type) -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(64))
    target = torch.randn(64)
    opt = cls([w], lr=0.02, state_dtype=torch.bfloat16)
    first = ((w - target) ** 2).sum().item()
    for _ in range(40):
        w.grad = 2 * (w.detach() - target)
        opt.step()
    big = [k for k, v in opt.state[w].items() if v.dim() > 0]
    assert big and all(opt.state[w][k].dtype == torch.bfloat16 for k in big)
    assert math.isfinite(w.sum().item())
    assert ((w - target) ** 2).sum().item() < 0.5 * first


@pytest.mark.parametrize(("cls", "kw", "name"), [
    (Rprop, dict(lr=-1.0), "lr"),
    (Rprop, dict(etas=(1.0, 1.2)), r"etas\[0\]"),
    (Rprop, dict(etas=(0.5, 1.0)), r"etas\[1\]"),
    (Rprop, dict(etas=(0.5,)), "etas"),
    (Rprop, dict(step_sizes=(-1e-6, 50)), r"step_sizes\[0\]"),
    (Rprop, dict(step_sizes=(1.0, 0.5)), r"step_sizes\[1\]"),
    (ASGD, dict(lr=math.nan), "lr"),
    (ASGD, dict(lambd=-1.0), "lambd"),
    (ASGD, dict(alpha=-0.5), "alpha"),
    (ASGD, dict(t0=-1.0), "t0"),
    (ASGD, dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters_are_named(cls: type, kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        cls(make_params(), **kw)


def test_rprop_learning_rate_is_the_initial_step_size() -> None:
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = Rprop([w], lr=0.25, step_sizes=(0.0, 50.0))
    w.grad = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
    opt.step()  # first step: prev = 0, so the step sizes stay lr
    assert w.tolist() == [-0.25, 0.25, 0.0]
