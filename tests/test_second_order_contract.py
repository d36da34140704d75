"""The torch.optim contract for the closure-driven optimizers (Newton, NewtonCG, BFGS, LBFGS):
torch's own LBFGS configurations from optim_db (numerics against torch.optim.LBFGS), state-dict
round trips and ``torch.save``/``torch.load(weights_only=True)``, ``deepcopy``, printing, step
hooks (per instance and global: once per ``step()``, however many closure calls it makes) and
state-dict hooks. (The argument names, defaults and error inputs of LBFGS are checked with the
other twins in ``test_optim_db.py``.)
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from second_order_problems import backward_closure
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import optimlab as ol

with warnings.catch_warnings():  # torch's test helpers define torch.jit.script_methods
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch.testing._internal.common_optimizers import optim_db

LBFGS_INFO = next(info for info in optim_db if info.name == "LBFGS")
CLASSES = [ol.Newton, ol.NewtonCG, ol.BFGS, ol.LBFGS]


def network(dtype: torch.dtype) -> tuple[list[Tensor], Callable[[], Tensor]]:
    """torch's comparison network (2-3-1, sigmoids) on a fixed batch, as a loss function."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(),
                                torch.nn.Linear(3, 1), torch.nn.Sigmoid()).to(dtype)
    x = torch.arange(1, 7, dtype=dtype).reshape(3, 2) / 10
    return list(model.parameters()), lambda: model(x).sum()


def closure_of(opt: Optimizer, loss: Callable[[], Tensor]) -> Callable[[], Tensor]:
    if isinstance(opt, (ol.Newton, ol.NewtonCG)):
        return loss  # they differentiate the loss themselves
    return backward_closure(opt, loss)


def flat(params: list[Tensor]) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


# ----- LBFGS: torch's configurations ------------------------------------------------------------
LBFGS_INPUTS = LBFGS_INFO.optim_inputs_func(device="cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("index", range(len(LBFGS_INPUTS)),
                         ids=[i.desc.replace(" ", "_") for i in LBFGS_INPUTS])
def test_lbfgs_matches_torch_in_optim_db_configurations(index: int, dtype: torch.dtype) -> None:
    """Same trial points and formulas; the only reordering is the two-loop recursion's
    ``q - a y`` (torch: ``q.add_(y, alpha=-a)``), a rounding per history entry per iteration.
    Over 3 steps x 20 iterations that is ~1e3 roundings, on this 13-parameter network with
    gradients 1-Lipschitz: 1e3 x 2^-24 ~ 6e-5 relative in float32, 1e3 x 2^-53 in float64."""
    tolerance = {torch.float32: 1e-4, torch.float64: 1e-12}[dtype]
    ours_params, ours_loss = network(dtype)
    theirs_params, theirs_loss = network(dtype)
    kwargs = LBFGS_INPUTS[index].kwargs
    fresh = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in kwargs.items()}
    ours = ol.LBFGS(ours_params, **fresh)
    theirs = torch.optim.LBFGS(theirs_params, **kwargs)
    for _ in range(3):
        la = ours.step(closure_of(ours, ours_loss))
        lb = theirs.step(closure_of(theirs, theirs_loss))
        assert la.item() == pytest.approx(lb.item(), rel=tolerance)
        diff = (flat(ours_params) - flat(theirs_params)).abs().max()
        assert diff <= tolerance * max(1.0, float(flat(theirs_params).abs().max()))
    assert ours.evaluations.function == theirs.state[theirs_params[0]]["func_evals"]


# ----- the object contract, all four ------------------------------------------------------------
def primed(cls: type, steps: int = 2) -> tuple[Optimizer, list[Tensor], Callable[[], Tensor]]:
    params, loss = network(torch.float64)
    opt = cls(params, max_iter=2)
    for _ in range(steps):
        opt.step(closure_of(opt, loss))
    return opt, params, loss


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_state_dict_round_trip_continues_identically(cls: type) -> None:
    opt, params, loss = primed(cls)
    sd = copy.deepcopy(opt.state_dict())
    twin_params, twin_loss = network(torch.float64)
    with torch.no_grad():
        for p, q in zip(twin_params, params):
            p.copy_(q)
    twin = cls(twin_params, max_iter=2)
    twin.load_state_dict(sd)
    assert twin.evaluations == opt.evaluations
    opt.step(closure_of(opt, loss))
    twin.step(closure_of(twin, twin_loss))
    assert torch.equal(flat(params), flat(twin_params))
    assert twin.evaluations == opt.evaluations


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_state_dict_survives_torch_save_weights_only(cls: type) -> None:
    opt, _params, _ = primed(cls)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = cls(network(torch.float64)[0], max_iter=2)
    fresh.load_state_dict(loaded)
    assert fresh.evaluations == opt.evaluations
    assert fresh.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_deepcopy_and_printing(cls: type) -> None:
    opt, _params, _loss = primed(cls)
    clone = copy.deepcopy(opt)
    assert clone.evaluations == opt.evaluations and clone.param_groups[0]["lr"] == 1
    assert cls.__name__ in repr(opt) and "max_iter: 2" in repr(opt)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_step_hooks_fire_once_per_step(cls: type) -> None:
    params, loss = network(torch.float64)
    opt = cls(params, max_iter=3)
    calls: list[str] = []
    closure = closure_of(opt, loss)

    def counted() -> Tensor:
        calls.append("closure")
        return closure()

    handles = [opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
               opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
               register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global-pre")),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append("global-post"))]
    try:
        opt.step(counted)
    finally:
        for handle in handles:
            handle.remove()
    assert calls[:2] == ["global-pre", "pre"] and calls[-2:] == ["post", "global-post"]
    assert calls.count("closure") >= 2 and calls.count("pre") == calls.count("post") == 1
    opt.step(counted)  # removed hooks stay removed
    assert calls.count("pre") == 1


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_state_dict_hooks(cls: type) -> None:
    opt, _params, loss = primed(cls)
    seen: list[str] = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("pre"))

    def post(o: Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
        seen.append("post")
        sd["extra"] = 1
        return sd

    opt.register_state_dict_post_hook(post)
    sd = opt.state_dict()
    assert sd["extra"] == 1 and seen == ["pre", "post"]

    def load_pre(o: Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = 0.5
        return sd

    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load-post"))
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.5 and seen[-1] == "load-post"
    opt.step(closure_of(opt, loss))  # a loaded optimizer steps


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_parameters_without_gradient_flow_stay_put(cls: type) -> None:
    """A parameter the loss does not use keeps its value (gradient None or zero: no move)."""
    params, loss = network(torch.float64)
    unused = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = cls([*params, unused], max_iter=2)
    before = flat(params)
    opt.step(closure_of(opt, loss))
    assert torch.equal(unused.detach(), torch.ones(3, dtype=torch.float64))
    assert not torch.equal(flat(params), before)
