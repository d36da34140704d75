"""Adafactor: a float64 reference written from the paper, torch.optim.Adafactor parity, the
compiled path, state dicts, param groups, maximize and low-precision states."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from optimlab.optimizers.adafactor import Adafactor

SHAPES = [(4, 3), (3,), (2, 3, 5), (), (1, 6)]


def make(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
            for s in SHAPES]


def clone(ps: list[Tensor], dtype: torch.dtype | None = None) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone().to(dtype or p.dtype)) for p in ps]


def grads(ps: list[Tensor], t: int, first: int = 0) -> list[Tensor]:
    """Deterministic gradients ``p - 0.5 + 0.5 noise`` (seeded by step and index, counted from
    ``first``), computed in float64 from the parameter, so that every optimizer compared sees
    the same function."""
    out = []
    for i, p in enumerate(ps, start=first):
        gen = torch.Generator().manual_seed(1000 * t + i)
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        out.append((p.detach().double() - 0.5 + 0.5 * noise).to(p.dtype))
    return out


def run(opt: torch.optim.Optimizer, ps: list[Tensor], steps: int, start: int = 0) -> None:
    for t in range(start, start + steps):
        for p, g in zip(ps, grads(ps, t)):
            p.grad = g
        opt.step()


def rms(x: Tensor) -> float:
    return float(x.norm() / math.sqrt(max(x.numel(), 1)))


def reference(ps: list[Tensor], steps: int, lr: float = 1e-2, beta2_decay: float = -0.8,
              eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
              weight_decay: float = 0.0, maximize: bool = False, relative_step: bool = True,
              scale_parameter: bool = True, beta1: float | None = None,
              eps1_dtype: torch.dtype = torch.float64, first: int = 0) -> list[Tensor]:
    """Shazeer & Stern (2018), Algorithms 4/5 with update clipping (sec. 5), relative step
    (sec. 8) and an optional first moment, one tensor at a time in float64, with
    torch.optim's placement of eps1 (a floor on sqrt(V) and on the row-factor mean) and
    decoupled weight decay ``p <- (1 - lr wd) p`` after alpha_t was read from ``p``."""
    xs = [p.detach().double().clone() for p in ps]
    eps1 = torch.finfo(eps1_dtype).eps if eps[0] is None else eps[0]
    state: list[dict[str, Tensor]] = [{} for _ in xs]
    for t in range(1, steps + 1):
        for x, g, s in zip(xs, grads(xs, t - 1, first), state):
            g = -g if maximize else g
            rho = min(lr, 1 / math.sqrt(t)) if relative_step else lr
            alpha = (max(eps[1], rms(x)) if scale_parameter else 1.0) * rho
            x.mul_(1 - lr * weight_decay)
            keep = 1 - t ** beta2_decay  # beta2_hat_t
            if x.dim() >= 2:
                r = (g * g).mean(-1, keepdim=True)
                c = (g * g).mean(-2, keepdim=True)
                s["R"] = keep * s.get("R", torch.zeros_like(r)) + (1 - keep) * r
                s["C"] = keep * s.get("C", torch.zeros_like(c)) + (1 - keep) * c
                v = s["R"] * s["C"] / s["R"].mean(-2, keepdim=True).clamp(min=eps1)
            else:
                s["V"] = keep * s.get("V", torch.zeros_like(g)) + (1 - keep) * g * g
                v = s["V"]
            u = g / v.sqrt().clamp(min=eps1)
            u = u / max(1.0, rms(u) / d)
            if beta1 is not None:
                s["m"] = beta1 * s.get("m", torch.zeros_like(u)) + (1 - beta1) * u
                u = s["m"]
            x.sub_(alpha * u)
    return xs


OPTIONS = st.fixed_dictionaries({
    "lr": st.sampled_from([1e-3, 1e-2, 0.05, 0.3]),
    "beta2_decay": st.sampled_from([-0.8, -0.5, -1.0]),
    "eps": st.sampled_from([(None, 1e-3), (1e-6, 1e-2), (1e-3, 0.0)]),
    "d": st.sampled_from([1.0, 2.0, math.inf]),
    "weight_decay": st.sampled_from([0.0, 0.1]),
    "maximize": st.booleans(),
    "relative_step": st.booleans(),
    "scale_parameter": st.booleans(),
    "beta1": st.sampled_from([None, 0.0, 0.9]),
})


@settings(max_examples=20, deadline=None)
@given(kw=OPTIONS)
def test_matches_float64_paper_reference(kw: dict[str, Any]) -> None:
    steps = 12
    ps64 = make(torch.float64)
    want = reference(ps64, steps, **kw)
    opt = Adafactor(ps64, **kw)
    run(opt, ps64, steps)
    # float64: each step rounds p once and the update (a dozen operations, each <= 2**-53
    # relative, on an update no larger than |p|) a few times: 12 steps of ~20 * 1.1e-16
    # relative are < 3e-14 of |p| ~ 1-3; 1e-10 leaves 3000x for reassociated sums and means.
    for x, y in zip(ps64, want):
        torch.testing.assert_close(x.detach(), y, rtol=1e-10, atol=1e-10)
    ps32 = make(torch.float32)
    want32 = reference(ps32, steps, eps1_dtype=torch.float32, **kw)
    opt = Adafactor(ps32, **kw)
    run(opt, ps32, steps)
    # float32: per step p is rounded once (2**-24 |p|) and the update carries a few ulps of
    # its own size, at most rho_t * max(eps2, RMS(p)) * |U_hat| <= 0.3 |p| * sqrt(30) per
    # element (RMS(U_hat) <= d, numel <= 30): ~ 5 ulp of |p| per step in the worst element.
    # The gradient feeds p back only through g = p - 0.5 + noise, damped by the step, so
    # 12 steps accumulate ~sqrt(12) * 5 ulp ~ 17 ulp of |p| < 4 (1e-6 * 4); 1e-6 * (1 + |p|)
    # is >= 12 ulp of any |p| < 4 with the worst case rounding up from the max; take 2e-6.
    for x, y in zip(ps32, want32):
        torch.testing.assert_close(x.detach().double(), y, rtol=2e-6, atol=2e-6)


TORCH_OPTIONS = st.fixed_dictionaries({
    "lr": st.sampled_from([1e-3, 1e-2, 0.05, 0.3]),
    "beta2_decay": st.sampled_from([-0.8, -0.5, -1.0]),
    "eps": st.sampled_from([(None, 1e-3), (1e-6, 1e-2), (1e-3, 0.0)]),
    "d": st.sampled_from([1.0, 2.0, math.inf]),
    "weight_decay": st.sampled_from([0.0, 0.1]),
    "maximize": st.booleans(),
    "foreach": st.sampled_from([None, True, False]),
})


@settings(max_examples=20, deadline=None)
@given(kw=TORCH_OPTIONS)
def test_matches_torch_adafactor(kw: dict[str, Any]) -> None:
    for dtype in (torch.float32, torch.float64):
        ps = make(dtype)
        qs = clone(ps)
        run(Adafactor(ps, **kw), ps, 15)
        run(torch.optim.Adafactor(qs, **kw), qs, 15)
        # The same formulas in another order (rsqrt vs sqrt and divide; alpha folded with
        # lr in float vs double): float64 as in the reference test; float32 as there with
        # torch's own rounding on the other side (two roundings per operation, not one).
        tol = 1e-10 if dtype == torch.float64 else 2e-6
        for x, y in zip(ps, qs):
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def test_state_keys_and_shapes_are_torchs() -> None:
    ps, qs = make(), make()
    a, b = Adafactor(ps), torch.optim.Adafactor(qs)
    run(a, ps, 2)
    run(b, qs, 2)
    for p, q in zip(ps, qs):
        assert {k: (v.shape, v.dtype) for k, v in a.state[p].items()} == {
            k: (v.shape, v.dtype) for k, v in b.state[q].items()}
    # the factored (2, 3, 5) tensor keeps 2*3 + 2*5 numbers, not 30
    assert a.state[ps[2]]["row_var"].numel() + a.state[ps[2]]["col_var"].numel() == 16


@pytest.mark.parametrize("direction", ["torch_to_optimlab", "optimlab_to_torch"])
def test_state_dict_interchange_with_torch(direction: str) -> None:
    kw = dict(lr=0.05, weight_decay=0.01)
    ps = make()
    src = torch.optim.Adafactor(ps, **kw) if direction == "torch_to_optimlab" else Adafactor(
        ps, **kw)
    run(src, ps, 5)
    qs = clone(ps)
    dst = Adafactor(qs, **kw) if direction == "torch_to_optimlab" else torch.optim.Adafactor(
        qs, **kw)
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    run(src, ps, 5, start=5)
    run(dst, qs, 5, start=5)
    for x, y in zip(ps, qs):  # as test_matches_torch_adafactor
        torch.testing.assert_close(x, y, rtol=2e-6, atol=2e-6)


def test_state_dict_round_trip_continues_bit_identically() -> None:
    kw = dict(lr=0.05, beta1=0.9, relative_step=False, weight_decay=0.1)
    ps = make()
    a = Adafactor(ps, **kw)
    run(a, ps, 4)
    qs = clone(ps)
    b = Adafactor(qs, **kw)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    run(a, ps, 4, start=4)
    run(b, qs, 4, start=4)
    for x, y in zip(ps, qs):
        assert torch.equal(x, y)
    assert set(a.state[ps[0]]) == {"step", "row_var", "col_var", "exp_avg"}


def test_param_groups_have_their_own_hyperparameters() -> None:
    ps = make(torch.float64)
    groups = [dict(params=ps[:2], lr=0.05, beta1=0.9, d=2.0),
              dict(params=ps[2:], relative_step=False, scale_parameter=False, lr=1e-3)]
    run(Adafactor(groups, weight_decay=0.1), ps, 6)
    want = (reference(make(torch.float64)[:2], 6, lr=0.05, beta1=0.9, d=2.0, weight_decay=0.1)
            + reference(make(torch.float64)[2:], 6, relative_step=False,
                        scale_parameter=False, lr=1e-3, weight_decay=0.1, first=2))
    for x, y in zip(ps, want):  # float64, as in the reference test
        torch.testing.assert_close(x.detach(), y, rtol=1e-10, atol=1e-10)


def test_maximize_equals_minimizing_the_negation() -> None:
    ps, qs = make(), make()
    a, b = Adafactor(ps, maximize=True, beta1=0.5), Adafactor(qs, beta1=0.5)
    for t in range(5):
        for p, q, g in zip(ps, qs, grads(ps, t)):
            p.grad, q.grad = -g, g.clone()
        a.step()
        b.step()
    for x, y in zip(ps, qs):
        assert torch.equal(x, y)


def test_lr_none_is_the_papers_relative_step() -> None:
    ps, qs = make(), make()
    run(Adafactor(ps, lr=None), ps, 3)
    run(Adafactor(qs, lr=1e-2), qs, 3)
    assert all(torch.equal(x, y) for x, y in zip(ps, qs))
    with pytest.raises(ValueError, match="relative_step"):
        Adafactor(make(), lr=None, relative_step=False)


def test_zero_lr_and_zero_grads() -> None:
    ps = make()
    before = [p.detach().clone() for p in ps]
    run(Adafactor(ps, lr=0.0, relative_step=False), ps, 2)
    assert all(torch.equal(x, y) for x, y in zip(ps, before))
    opt = Adafactor(ps, beta1=0.9)
    for p in ps:
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(x, y) for x, y in zip(ps, before))


def test_state_dtype_bfloat16_runs() -> None:
    ps, qs = make(), make()
    run(Adafactor(ps, beta1=0.9, state_dtype=torch.bfloat16), ps, 8)
    run(Adafactor(qs, beta1=0.9), qs, 8)
    opt = Adafactor(make(), beta1=0.9, state_dtype=torch.bfloat16)
    run(opt, list(opt.param_groups[0]["params"]), 1)
    p = opt.param_groups[0]["params"][1]
    assert opt.state[p]["variance"].dtype == torch.bfloat16  # a vector's full-size state
    for x, y in zip(ps, qs):
        # bf16 states (8 bits of mantissa, 2**-9 relative per rounding) move the update by
        # under 1%: 8 steps of <= rho * |p| * sqrt(30) * 0.01 stay inside 0.05 * (1 + |p|).
        torch.testing.assert_close(x, y, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(("kw", "key"), [
    (dict(lr=-1.0), "lr"), (dict(beta2_decay=0.1), "beta2_decay"),
    (dict(eps=(-1.0, 1e-3)), r"eps\[0\]"), (dict(eps=(None, -1.0)), r"eps\[1\]"),
    (dict(eps=1e-3), "eps"), (dict(d=0.5), "d"), (dict(weight_decay=-1.0), "weight_decay"),
    (dict(beta1=1.0), "beta1"), (dict(relative_step="yes"), "relative_step"),
])
def test_bad_hyperparameters_raise_naming_the_argument(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Adafactor(make(), **kw)


def test_complex_parameters_are_refused_like_torch() -> None:
    p = nn.Parameter(torch.randn(3, dtype=torch.complex64))
    p.grad = torch.randn_like(p)
    with pytest.raises(RuntimeError, match="complex"):
        Adafactor([p]).step()


@pytest.mark.slow
def test_fused_equals_eager() -> None:
    kw = dict(lr=0.05, beta1=0.9, weight_decay=0.1, d=2.0)
    ps, qs = make(), make()
    run(Adafactor(ps, **kw), ps, 4)
    run(Adafactor(qs, fused=True, **kw), qs, 4)
    # inductor fuses and reorders the same float32 operations (means, norms): a few ulps
    # of the update per step, as in the torch comparison.
    for x, y in zip(ps, qs):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=2e-6)
