"""SGDHD and AdamHD (hypergradient descent, Baydin et al., 2018).

Oracles: the float64 references of ``tests/cases_hd_prodigy.py`` (written from the paper, one
parameter at a time, the rate in Python floats), torch.optim.SGD / Adam (``hypergrad_lr=0``
leaves the rate at ``lr``) and the eager path for the compiled one.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from cases_hd_prodigy import RefAdamHD, RefSGDHD
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from optimlab.optimizers.hypergradient import SGDHD, AdamHD

SHAPES = [(4, 3), (5,), (2, 2, 2)]


def make(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
            for s in SHAPES]


def like(ps: list[Tensor], dtype: torch.dtype | None = None) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone().to(dtype or p.dtype)) for p in ps]


def grads(ps: list[Tensor], t: int, sign: float = 1.0) -> None:
    """``g = p - 0.5 + 0.3 noise_t`` (noise seeded by step and index, drawn in float64)."""
    for i, p in enumerate(ps):
        gen = torch.Generator().manual_seed(100 * t + i)
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        p.grad = sign * ((p.detach().double() - 0.5) + 0.3 * noise).to(p.dtype)


def run(opt: torch.optim.Optimizer, ps: list[Tensor], steps: int, start: int = 0,
        sign: float = 1.0) -> None:
    for t in range(start, start + steps):
        grads(ps, t, sign)
        opt.step()


def close(xs: list[Tensor], ys: list[Tensor], rtol: float) -> None:
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x.detach().double(), y.detach().double(), rtol=rtol,
                                   atol=rtol)


SGD_OPTIONS = st.fixed_dictionaries({
    "lr": st.sampled_from([0.01, 0.05]),
    "momentum": st.sampled_from([0.0, 0.5, 0.9]),
    "dampening": st.sampled_from([0.0, 0.3]),
    "nesterov": st.booleans(),
    "weight_decay": st.sampled_from([0.0, 0.01]),
    "hypergrad_lr": st.sampled_from([0.0, 1e-4, 1e-3, 3e-3]),  # beta * |g|^2 (~20) < lr
    "maximize": st.booleans(),
})
ADAM_OPTIONS = st.fixed_dictionaries({
    "lr": st.sampled_from([0.001, 0.01]),
    "betas": st.sampled_from([(0.9, 0.999), (0.5, 0.9)]),
    "eps": st.sampled_from([1e-8, 1e-3]),
    "weight_decay": st.sampled_from([0.0, 0.01]),
    "amsgrad": st.booleans(),
    "hypergrad_lr": st.sampled_from([0.0, 1e-5, 1e-3]),
    "maximize": st.booleans(),
})


def _sgd_valid(kw: dict[str, Any]) -> dict[str, Any]:
    if kw["nesterov"] and (kw["momentum"] == 0 or kw["dampening"] != 0):
        kw = {**kw, "nesterov": False}
    return kw


def _check_reference(ours: type, ref: type, kw: dict[str, Any], steps: int = 10) -> None:
    sign = -1.0 if kw["maximize"] else 1.0
    init = make(torch.float64)
    # float64: the same arithmetic up to ordering (the dot product summed per tensor then
    # over tensors; the rate as a tensor, not a Python float): ~10 roundings of 2**-53 per
    # step, over 10 steps ~1e-14 of |p| < 4, and the rate's feedback through g . d_prev is
    # damped (each step's dot uses the gradient at the new point); 1e-10 leaves 10^4 margin.
    ps, qs = like(init), like(init)
    run(ours(ps, **kw), ps, steps, sign=sign)
    run(ref(qs, **kw), qs, steps, sign=sign)
    close(ps, qs, 1e-10)
    # float32 against the float64 reference from the same (float32-representable) start:
    # each step rounds p (half an ulp, 6e-8 |p|) and the update (a few ulps of lr*rho*|d|
    # <= 0.1 * O(1)); over 10 steps ~10 half-ulps of |p| < 4 if all fell the same way,
    # 6e-7 (1 + |p|) at most; the rate's float32 rounding (6e-8 relative) moves a step by
    # < 1e-8. 1e-6 relative plus 1e-6 absolute covers it.
    ps32 = like(init, torch.float32)
    qs64 = like(ps32, torch.float64)
    run(ours(ps32, **kw), ps32, steps, sign=sign)
    run(ref(qs64, **kw), qs64, steps, sign=sign)
    close(ps32, qs64, 1e-6)


@settings(max_examples=20, deadline=None)
@given(SGD_OPTIONS)
def test_sgdhd_matches_the_paper_reference(kw: dict[str, Any]) -> None:
    _check_reference(SGDHD, RefSGDHD, _sgd_valid(kw))


@settings(max_examples=20, deadline=None)
@given(ADAM_OPTIONS)
def test_adamhd_matches_the_paper_reference(kw: dict[str, Any]) -> None:
    _check_reference(AdamHD, RefAdamHD, kw)


@settings(max_examples=15, deadline=None)
@given(SGD_OPTIONS, st.sampled_from([torch.float32, torch.float64]))
def test_sgdhd_without_hypergradient_is_torch_sgd(kw: dict[str, Any], dtype: torch.dtype
                                                   ) -> None:
    kw = {**_sgd_valid(kw), "hypergrad_lr": 0.0}
    ps = make(dtype)
    qs = like(ps)
    run(SGDHD(ps, **kw), ps, 10)
    kw.pop("hypergrad_lr")
    run(torch.optim.SGD(qs, **kw), qs, 10)
    # rho stays exactly 1 (0 added), so the step is -lr * 1 * d: torch's formula with the
    # product lr * 1 formed first (exact). What differs is the order of the foreach ops: a
    # few ulps of the update per step, far below half an ulp of |p| in float32 (see
    # test_contract.close: 1e-6); float64 ~1e-15 over 10 steps.
    close(ps, qs, 1e-6 if dtype == torch.float32 else 1e-12)


@settings(max_examples=15, deadline=None)
@given(ADAM_OPTIONS, st.sampled_from([torch.float32, torch.float64]))
def test_adamhd_without_hypergradient_is_torch_adam(kw: dict[str, Any], dtype: torch.dtype
                                                     ) -> None:
    kw = {**kw, "hypergrad_lr": 0.0}
    ps = make(dtype)
    qs = like(ps)
    run(AdamHD(ps, **kw), ps, 10)
    kw.pop("hypergrad_lr")
    run(torch.optim.Adam(qs, **kw), qs, 10)
    # as for SGD: the same formula, operations ordered differently (see above).
    close(ps, qs, 1e-6 if dtype == torch.float32 else 1e-12)


def test_rate_starts_at_lr_and_moves_with_the_dot_product() -> None:
    ps = make(torch.float64)
    opt = SGDHD(ps, lr=0.05, hypergrad_lr=0.01)
    assert opt.current_lr().item() == 0.05
    grads(ps, 0)
    opt.step()
    assert opt.current_lr().item() == 0.05  # d_0 = 0: no hypergradient at the first step
    prev = [p.grad.clone() for p in ps]
    grads(ps, 1)
    dot = sum(float((p.grad * g).sum()) for p, g in zip(ps, prev))
    opt.step()
    assert opt.current_lr().item() == pytest.approx(0.05 + 0.01 * dot, rel=1e-12)
    assert opt.info["hypergrad_ratio[0]"][1].item() == 2  # the group's step count


def test_rate_is_clamped_at_zero_and_recovers() -> None:
    """Gradients that flip sign make ``g_t . g_{t-1} < 0``: the raw rate would go negative,
    and is held at 0 (no step), until aligned gradients raise it again."""
    p = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = SGDHD([p], lr=0.1, hypergrad_lr=1.0)
    p.grad = torch.ones(3, dtype=torch.float64)
    opt.step()  # alpha = 0.1, p = 0.9
    p.grad = -torch.ones(3, dtype=torch.float64)  # raw alpha: 0.1 + 1.0 * (-3) < 0
    before = p.detach().clone()
    opt.step()
    assert opt.current_lr().item() == 0.0
    torch.testing.assert_close(p.detach(), before, rtol=0, atol=0)
    p.grad = -torch.ones(3, dtype=torch.float64)  # aligned with d_prev = -1: 0 + 3
    opt.step()
    assert opt.current_lr().item() == pytest.approx(3.0)
    torch.testing.assert_close(p.detach(), before + 3.0)


def test_groups_adapt_their_own_rates() -> None:
    ps = make()
    opt = SGDHD([{"params": ps[:2]}, {"params": ps[2:], "hypergrad_lr": 0.0}], lr=0.05,
                hypergrad_lr=0.01)
    run(opt, ps, 4)
    assert opt.current_lr(1).item() == pytest.approx(0.05)
    assert opt.current_lr(0).item() != pytest.approx(0.05)
    assert set(opt.info) == {"hypergrad_ratio[0]", "hypergrad_ratio[1]"}


def test_state_dict_round_trip_keeps_the_rate() -> None:
    ps = make()
    opt = AdamHD(ps, lr=0.01, hypergrad_lr=1e-3)
    run(opt, ps, 5)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    qs = like(ps)
    fresh = AdamHD(qs, lr=0.01, hypergrad_lr=1e-3)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.current_lr().item() == opt.current_lr().item() != 0.01
    run(opt, ps, 5, start=5)
    run(fresh, qs, 5, start=5)
    for x, y in zip(ps, qs):
        assert torch.equal(x, y)


def test_deepcopy_steps_like_the_original() -> None:
    ps = make()
    opt = SGDHD(ps, lr=0.05, momentum=0.9, hypergrad_lr=1e-2)
    run(opt, ps, 3)
    qs = like(ps)
    twin = copy.deepcopy(opt)
    twin.param_groups[0]["params"] = qs
    twin.state = {q: twin.state[p] for p, q in zip(twin.state, qs)}
    run(opt, ps, 3, start=3)
    run(twin, qs, 3, start=3)
    for x, y in zip(ps, qs):
        assert torch.equal(x, y)


@pytest.mark.parametrize("cls", [SGDHD, AdamHD])
def test_bfloat16_states_run(cls: type) -> None:
    ps, qs = make(), make()
    kw = dict(lr=0.01, hypergrad_lr=1e-4)
    low = cls(ps, state_dtype=torch.bfloat16, **kw)
    run(low, ps, 8)
    run(cls(qs, **kw), qs, 8)
    st0 = low.state[ps[0]]
    assert st0["hypergrad_prev"].dtype == torch.bfloat16
    assert st0["hypergrad_ratio"].dtype == torch.float32  # 0-dim group scalars stay float32
    # bf16 keeps 8 bits of d_prev (and of Adam's moments): the rate and steps differ by
    # ~2**-8 relative; 8 steps of size <= 0.01 * O(1) stay within 0.01 of the float32 run.
    close(ps, qs, 1e-2)


@pytest.mark.parametrize("bad", [dict(hypergrad_lr=-1.0), dict(lr=-0.1),
                                 dict(hypergrad_lr=float("nan"))])
def test_bad_hyperparameters_are_refused(bad: dict[str, Any]) -> None:
    key = next(iter(bad))
    for cls in (SGDHD, AdamHD):
        with pytest.raises(ValueError, match=key):
            cls(make(), **bad)


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "kw"), [
    (SGDHD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, hypergrad_lr=1e-2)),
    (AdamHD, dict(lr=0.01, amsgrad=True, hypergrad_lr=1e-3)),
])
def test_fused_equals_eager(cls: type, kw: dict[str, Any]) -> None:
    ps = make()
    qs = like(ps)
    eager, fused = cls(ps, **kw), cls(qs, fused=True, **kw)
    run(eager, ps, 5)
    run(fused, qs, 5)
    # inductor fuses the same float32 operations (the dot product's sums may be reordered):
    # a few ulps of the update per step, below half an ulp of |p|; the rate agrees to a few
    # float32 roundings. 2e-6 (as the other compiled-path tests).
    close(ps, qs, 2e-6)
    torch.testing.assert_close(eager.current_lr(), fused.current_lr(), rtol=1e-6, atol=0)
