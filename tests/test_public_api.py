"""The public extension API: what a user needs to write a rule and a named optimizer.

``examples/custom_optimizer.py`` writes AdaBelief with it; these tests run that example and
check that the optimizer it declares gets every engine path with no code of its own.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

import optimlab as ol

ROOT = Path(__file__).resolve().parents[1]


def _example() -> ModuleType:
    path = ROOT / "examples" / "custom_optimizer.py"
    spec = importlib.util.spec_from_file_location("custom_optimizer_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # torch.compile looks the rules' module up by name
    spec.loader.exec_module(module)
    return module


def test_every_public_op_is_documented_and_exported() -> None:
    names = ol.ops.__all__
    assert {"sign", "sign_", "zeros_like", "lerp_", "addcdiv_", "norms", "dot"} <= set(names)
    for name in names:
        obj = getattr(ol.ops, name)
        if callable(obj) and not isinstance(obj, type):
            assert inspect.getdoc(obj), f"optimlab.ops.{name} has no docstring"


def test_rule_methods_have_self_explanatory_names() -> None:
    for name in ("validate", "init_state", "needed_state", "prepare", "apply", "group_key",
                 "state_key", "hyperparameter", "learning_rate"):
        assert inspect.getdoc(getattr(ol.transforms.Transform, name)), name
    assert issubclass(ol.NamedOptimizer, ol.ChainOptimizer)


def test_the_example_matches_its_float64_formula() -> None:
    assert _example().main() == 0


def test_a_named_optimizer_refuses_bad_hyperparameters_by_name() -> None:
    ada = _example().AdaBelief
    with pytest.raises(ValueError, match="eps"):
        ada([nn.Parameter(torch.zeros(2))], eps=-1.0)
    with pytest.raises(ValueError, match=r"\blr\b"):
        ada([nn.Parameter(torch.zeros(2))], lr=-1.0)
    with pytest.raises(TypeError, match="defaults must hold 'lr'"):
        ol.NamedOptimizer([nn.Parameter(torch.zeros(2))], {})


def _train(opt_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
           steps: int = 5) -> tuple[list[torch.Tensor], dict]:
    gen = torch.Generator().manual_seed(0)
    ps = [nn.Parameter(torch.randn(5, 3, generator=gen)),
          nn.Parameter(torch.randn(4, generator=gen))]
    opt = opt_factory(ps)
    for t in range(steps):
        g = torch.Generator().manual_seed(t)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for p in ps], opt.state_dict()


def test_the_example_gets_the_engine_options_for_free() -> None:
    ada = _example().AdaBelief
    base, sd = _train(lambda ps: ada(ps, lr=0.01))
    assert set(sd["state"][0]) >= {"exp_avg", "exp_avg_var"}
    # bf16 states: half the state bytes, the same trajectory to bf16 rounding of the moments
    # (relative 2**-8 per stored value; 5 steps of lr=0.01 updates of O(1) directions move
    # p by at most 0.05, so 1e-3 absolute holds with room).
    low, _ = _train(lambda ps: ada(ps, lr=0.01, state_dtype=torch.bfloat16))
    for a, b in zip(base, low, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3)
    # nonfinite="raise" refuses a NaN gradient and changes nothing
    p = nn.Parameter(torch.ones(3))
    opt = ada([p], lr=0.1, nonfinite="raise")
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    with pytest.raises(ol.NonFiniteGradientError):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and not opt.state


@pytest.mark.slow
def test_the_example_compiles_with_fused_true_and_equals_eager() -> None:
    ada = _example().AdaBelief
    eager, _ = _train(lambda ps: ada(ps, lr=0.01))
    fused, _ = _train(lambda ps: ada(ps, lr=0.01, fused=True))
    # The compiled kernels evaluate the same float32 formulas, possibly contracted into fused
    # multiply-adds: a few ulps of the O(lr) update per step, 5 steps, parameters O(1):
    # 1e-6 relative is > 10 ulps of |p|.
    for a, b in zip(eager, fused, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
