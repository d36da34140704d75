"""The cached bucket plan and the direct call of the compiled step stay correct when what they
cached changes between steps.

Steady-state steps reuse the previous step's bucket structure (``ChainOptimizer._plan``) and,
with ``fused=True``, call the compiled graph without dynamo (``optimlab._compiled``). Each
scenario below changes something mid-training that the cached structures depend on, and checks
optimlab's eager and fused paths against torch.optim over the same steps.

Tolerance: ``1e-5`` relative (torch.optim's foreach kernels, optimlab's eager kernels and the
compiled kernels round differently; 20 float32 steps). The gradients are fixed random draws,
so nothing feeds a difference back: per step the paths round ``p`` at most a couple of ulps
apart (Adam with L2: decay folded into the gradient, one addcdiv), 2 * 2**-23 relative, so
20 steps stay below 4.8e-6 even if every rounding fell the same way (measured 4.7e-8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from reference import max_relative_error

import optimlab as ol

RTOL = 1e-5
SHAPES = [(6, 5), (5,), (3, 2, 4)]

Scenario = Callable[[int, list[torch.Tensor], torch.optim.Optimizer, torch.Generator], None]


def grads_new_each_step(t: int, ps: list[torch.Tensor], opt: torch.optim.Optimizer,
                        gen: torch.Generator) -> None:
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen)


def grads_updated_in_place(t: int, ps: list[torch.Tensor], opt: torch.optim.Optimizer,
                           gen: torch.Generator) -> None:
    for p in ps:
        g = torch.randn(p.shape, generator=gen)
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)  # the same gradient tensors every step


def some_grads_missing(t: int, ps: list[torch.Tensor], opt: torch.optim.Optimizer,
                       gen: torch.Generator) -> None:
    grads_new_each_step(t, ps, opt, gen)
    if t % 5 in (3, 4):
        ps[1].grad = None  # this parameter skips two steps in five (its step count lags)


def param_data_replaced(t: int, ps: list[torch.Tensor], opt: torch.optim.Optimizer,
                        gen: torch.Generator) -> None:
    grads_new_each_step(t, ps, opt, gen)
    if t == 8:
        with torch.no_grad():
            ps[0].data = ps[0].data.clone()  # same Parameter object, new memory


def hyperparameter_changed(t: int, ps: list[torch.Tensor], opt: torch.optim.Optimizer,
                           gen: torch.Generator) -> None:
    grads_new_each_step(t, ps, opt, gen)
    if t == 8:
        for g in opt.param_groups:
            g["lr"] *= 0.5
            g["betas"] = (0.8, 0.99)
            g["weight_decay"] = 0.1


def strided_grad(t: int, ps: list[torch.Tensor], opt: torch.optim.Optimizer,
                 gen: torch.Generator) -> None:
    grads_new_each_step(t, ps, opt, gen)
    if t >= 8:  # a transposed (non-contiguous) gradient for the matrix
        ps[0].grad = torch.randn(tuple(reversed(ps[0].shape)), generator=gen).t()


def state_reloaded(t: int, ps: list[torch.Tensor], opt: torch.optim.Optimizer,
                   gen: torch.Generator) -> None:
    grads_new_each_step(t, ps, opt, gen)
    if t == 8:
        opt.load_state_dict(opt.state_dict())  # new state tensors, same values


def state_entry_replaced(t: int, ps: list[torch.Tensor], opt: torch.optim.Optimizer,
                         gen: torch.Generator) -> None:
    grads_new_each_step(t, ps, opt, gen)
    if t == 8:
        for p in ps:  # a new tensor in place of the first moment (a momentum reset)
            opt.state[p]["exp_avg"] = torch.zeros_like(p)


def state_of_one_parameter_cleared(t: int, ps: list[torch.Tensor], opt: torch.optim.Optimizer,
                                   gen: torch.Generator) -> None:
    grads_new_each_step(t, ps, opt, gen)
    if t == 8:
        opt.state[ps[2]] = {}  # starts over (step 0) for this parameter


SCENARIOS = [grads_new_each_step, grads_updated_in_place, some_grads_missing,
             param_data_replaced, hyperparameter_changed, strided_grad, state_reloaded,
             state_entry_replaced, state_of_one_parameter_cleared]


def run(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], scenario: Scenario,
        steps: int = 20) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen).requires_grad_(True) for s in SHAPES]
    opt = make(ps)
    out = []
    for t in range(steps):
        scenario(t, ps, opt, gen)
        opt.step()
        out.append([p.detach().clone() for p in ps])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_eager_and_fused_follow_torch_optim(scenario: Scenario) -> None:
    kwargs: dict[str, Any] = dict(lr=1e-2, weight_decay=1e-2)
    ref = run(lambda ps: torch.optim.Adam(ps, foreach=True, **kwargs), scenario)
    for fused in (False, True):
        ours = run(lambda ps, fused=fused: ol.Adam(ps, fused=fused, nonfinite="ignore", **kwargs),
                   scenario)
        for t, (a, b) in enumerate(zip(ours, ref, strict=True), start=1):
            err = max_relative_error(a, b)
            assert err <= RTOL, f"fused={fused}, step {t}: relative error {err:.3g}"


def test_steady_state_steps_reuse_the_plan_and_changes_rebuild_it() -> None:
    ps = [torch.randn(s).requires_grad_(True) for s in SHAPES]
    opt = ol.SGD(ps, lr=0.1, momentum=0.9)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()  # creates the momentum buffers: nothing to cache yet
    assert opt._plan is None
    opt.step()
    plan = opt._plan
    assert plan is not None
    opt.step()
    assert opt._plan is plan  # reused
    ps[1].grad = None
    opt.step()
    assert opt._plan is not plan  # another structure: rebuilt
    assert int(opt.state[ps[0]]["step"]) == 4 and int(opt.state[ps[1]]["step"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True])
def test_a_state_needed_from_mid_training_on(fused: bool) -> None:
    """SGD without momentum for 8 steps, then with: the momentum buffers appear mid-run."""

    def momentum_on(t: int, ps: list[torch.Tensor], opt: torch.optim.Optimizer,
                    gen: torch.Generator) -> None:
        grads_new_each_step(t, ps, opt, gen)
        if t == 8:
            for g in opt.param_groups:
                g["momentum"] = 0.9

    ref = run(lambda ps: torch.optim.SGD(ps, lr=0.05, foreach=True), momentum_on)
    ours = run(lambda ps: ol.SGD(ps, lr=0.05, fused=fused), momentum_on)
    for t, (a, b) in enumerate(zip(ours, ref, strict=True), start=1):
        assert max_relative_error(a, b) <= RTOL, f"step {t}"


def test_state_dict_holds_plain_dicts_and_loads_with_weights_only(tmp_path: Any) -> None:
    ps = [torch.randn(s).requires_grad_(True) for s in SHAPES]
    opt = ol.Adam(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    assert all(type(v) is dict for v in sd["state"].values())
    again = ol.Adam([p.detach().clone().requires_grad_(True) for p in ps])
    again.load_state_dict(sd)
    assert torch.equal(again.state[again.param_groups[0]["params"][0]]["exp_avg"],
                       opt.state[ps[0]]["exp_avg"])


@pytest.mark.slow
def test_the_compiled_step_keeps_no_gradient_alive() -> None:
    """After zero_grad() (set_to_none), the last step's gradients are freed: the direct call
    of the compiled step remembers their layout, not the tensors."""
    import gc
    import weakref

    ps = [torch.randn(s).requires_grad_(True) for s in SHAPES]
    opt = ol.AdamW(ps, fused=True, nonfinite="ignore")
    refs = []
    for _ in range(5):
        for p in ps:
            p.grad = torch.randn_like(p)
        refs = [weakref.ref(p.grad) for p in ps]
        opt.step()
        opt.zero_grad()
    gc.collect()
    assert opt._compiled is not None and opt._compiled._direct is not None
    assert opt._compiled._direct.token is not None  # the direct call was in use
    assert all(r() is None for r in refs)
