"""Prodigy (Mishchenko & Defazio, 2023).

Oracles: the float64 reference of ``tests/cases_hd_prodigy.py`` (written from the paper's
Algorithm 4 with the release's scalings, one parameter at a time, the group scalars in Python
floats), properties of ``d`` stated by the paper, and the eager path for the compiled one.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from cases_hd_prodigy import RefProdigy
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hypergradient import close, grads, like, make, run

from optimlab.optimizers.prodigy import Prodigy

OPTIONS = st.fixed_dictionaries({
    "lr": st.sampled_from([1.0, 0.5]),
    "betas": st.sampled_from([(0.9, 0.999), (0.5, 0.9)]),
    "beta3": st.sampled_from([None, 0.9]),
    "weight_decay": st.sampled_from([0.0, 0.01]),
    "decouple": st.booleans(),
    "use_bias_correction": st.booleans(),
    "safeguard_warmup": st.booleans(),
    "d0": st.sampled_from([1e-6, 1e-3]),
    "d_coef": st.sampled_from([1.0, 0.5]),
    "growth_rate": st.sampled_from([math.inf, 1.05]),
    "maximize": st.booleans(),
})


@settings(max_examples=25, deadline=None)
@given(OPTIONS)
def test_matches_the_paper_reference(kw: dict[str, Any]) -> None:
    sign = -1.0 if kw["maximize"] else 1.0
    init = make(torch.float64)
    # float64: the same arithmetic in another order (sums per tensor then over tensors, the
    # group scalars as tensors rather than Python floats): ~1e-16 relative per operation; d
    # enters the step linearly and d_hat = r / |s|_1 is a ratio of sums of like-signed
    # weights over 15 steps, so no cancellation amplifies it beyond ~1e-14 of |p| < 4.
    ps, qs = like(init), like(init)
    run(Prodigy(ps, **kw), ps, 15, sign=sign)
    run(RefProdigy(qs, **kw), qs, 15, sign=sign)
    close(ps, qs, 1e-10)
    # float32 against the float64 reference from the same start: the distance p0 - p is
    # kept as the sum of the updates, so it carries ~1e-7 relative roundings (not those of
    # |p|), and so do r, |s|_1 and d (a few float32 roundings per step). A step of size
    # dlr * |m / sqrt(v)| <= ~0.5 * O(1) then differs by ~1e-7 of itself, and p rounds by
    # half an ulp (6e-8 |p|) per step: 15 steps stay within 1e-6 (1 + |p|) unless every
    # rounding aligned.
    ps32 = like(init, torch.float32)
    qs64 = like(ps32, torch.float64)
    run(Prodigy(ps32, **kw), ps32, 15, sign=sign)
    run(RefProdigy(qs64, **kw), qs64, 15, sign=sign)
    close(ps32, qs64, 1e-6)


def test_d_grows_from_d0_and_never_decreases() -> None:
    ps = make(torch.float64)
    opt = Prodigy(ps, d0=1e-6)
    assert opt.current_d().item() == 1e-6
    ds = []
    for t in range(30):
        run(opt, ps, 1, start=t)
        ds.append(opt.current_d().item())
    assert all(b >= a for a, b in itertools.pairwise(ds))
    assert ds[-1] > 1e3 * 1e-6  # the estimate left d0 far behind


def test_growth_rate_bounds_each_increase() -> None:
    ps = make(torch.float64)
    opt = Prodigy(ps, d0=1e-4, growth_rate=1.1)
    prev = 1e-4
    for t in range(20):
        run(opt, ps, 1, start=t)
        d = opt.current_d().item()
        # the first move (from d0) is to d_hat itself, as in the release; then <= 1.1x
        assert d >= prev and (prev == 1e-4 or d <= prev * 1.1 * (1 + 1e-12))
        prev = d


def test_lr_zero_changes_nothing() -> None:
    ps = make()
    opt = Prodigy(ps)
    run(opt, ps, 3)
    before = {k: v.clone() for k, v in opt.state[ps[0]].items() if k != "step"}
    p_before = [p.detach().clone() for p in ps]
    opt.param_groups[0]["lr"] = 0.0
    run(opt, ps, 2, start=3)
    for k, v in before.items():
        assert torch.equal(opt.state[ps[0]][k], v), k
    for p, q in zip(ps, p_before):
        assert torch.equal(p, q)


def test_zero_gradients_take_no_step() -> None:
    ps = make()
    opt = Prodigy(ps, weight_decay=0.1)  # even decoupled decay waits for a gradient
    init = [p.detach().clone() for p in ps]
    for _ in range(3):
        for p in ps:
            p.grad = torch.zeros_like(p)
        opt.step()
    for p, q in zip(ps, init):
        assert torch.equal(p, q)
    assert opt.current_d().item() == pytest.approx(1e-6)
    assert opt.state[ps[0]]["k"].item() == 0


def test_groups_estimate_their_own_d() -> None:
    ps = make()
    sep = [like(ps[:2]), like(ps[2:])]
    opt = Prodigy([{"params": ps[:2]}, {"params": ps[2:], "d_coef": 0.1}])
    run(opt, ps, 10)
    assert set(opt.info) == {"prodigy[0]", "prodigy[1]"}
    a, b = Prodigy(sep[0]), Prodigy(sep[1], d_coef=0.1)
    rs = sep[0] + sep[1]
    for t in range(10):
        grads(rs, t)
        a.step()
        b.step()
    assert opt.current_d(0).item() == a.current_d().item()
    assert opt.current_d(1).item() == b.current_d().item()


def test_bfloat16_states_run() -> None:
    ps, qs = make(), make()
    low, high = Prodigy(ps, state_dtype=torch.bfloat16), Prodigy(qs)
    run(low, ps, 8)
    run(high, qs, 8)
    st0 = low.state[ps[0]]
    assert st0["displacement"].dtype == st0["s"].dtype == torch.bfloat16
    assert st0["d"].dtype == torch.float32  # 0-dim group scalars stay float32
    # bf16 keeps 8 bits of s and of p0 - p (of the distance itself: nothing cancels), so d
    # follows the float32 run to a few 2**-8 (0.4%) per step; 8 steps: within 10%.
    assert low.current_d().item() == pytest.approx(high.current_d().item(), rel=0.1)
    assert high.current_d().item() > 100 * 1e-6  # d really moved (x470 here)
    for p in ps:
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("bad", [dict(d0=0.0), dict(d_coef=-1.0), dict(growth_rate=0.5),
                                 dict(betas=(1.0, 0.9)), dict(eps=0.0), dict(beta3=1.5),
                                 dict(weight_decay=-0.1), dict(decouple=1)])
def test_bad_hyperparameters_are_refused(bad: dict[str, Any]) -> None:
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        Prodigy(make(), **bad)


@pytest.mark.slow
def test_fused_equals_eager() -> None:
    kw = dict(weight_decay=0.01, use_bias_correction=True, growth_rate=1.5)
    ps = make()
    qs = like(ps)
    eager, fused = Prodigy(ps, **kw), Prodigy(qs, fused=True, **kw)
    run(eager, ps, 6)
    run(fused, qs, 6)
    # the same float32 operations, fused and reordered by inductor (the sums of r and |s|_1
    # among them): a few float32 roundings of d (~1e-7 relative) and of each update; 2e-6
    # as the other compiled-path tests.
    close(ps, qs, 2e-6)
    torch.testing.assert_close(eager.current_d(), fused.current_d(), rtol=1e-5, atol=0)
