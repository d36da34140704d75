"""Bad input is refused with ValueError (TypeError for a wrong type) naming the argument.

Where torch.optim refuses the same input, the test checks that it does too, so optimlab is
never more permissive than the optimizer it replaces.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import pytest
import torch
from torch import nn

import optimlab as ol
from optimlab import transforms as T

NAMES = list(ol.OPTIMIZERS)
ADAM_FAMILY = ["adam", "adamw", "nadam", "radam", "adamax"]
WITH_EPS = ["adagrad", "rmsprop", "adam", "adamw", "nadam", "radam", "adadelta", "adamax"]


def params(n: int = 2) -> list[nn.Parameter]:
    # (3, 1) matrices: every named optimizer takes them (Muon: 2-D parameters only)
    return [nn.Parameter(torch.randn(3, 1)) for _ in range(n)]


def ours(name: str) -> type[torch.optim.Optimizer]:
    return ol.OPTIMIZERS[name]


def theirs(name: str) -> type[torch.optim.Optimizer] | None:
    """torch.optim's class of the same name, or None (Lion, Schedule-Free, ... have none)."""
    return getattr(torch.optim, ours(name).__name__, None)


def takes(name: str, arg: str) -> bool:
    return arg in inspect.signature(ours(name)).parameters


def torch_also_refuses(name: str, **kw: Any) -> None:
    twin = theirs(name)
    if twin is None:
        return  # nothing to be at least as strict as
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        twin(params(), **kw)


def refused(name: str, match: str, exc: Any = ValueError, **kw: Any) -> None:
    with pytest.raises(exc, match=match):
        ours(name)(params(), **kw)


def test_every_named_optimizer_is_covered() -> None:
    # A new optimizer joins every test below by name; this list makes its arrival a
    # conscious edit (its specific refusals get tests of their own).
    assert set(NAMES) == {"sgd", "adagrad", "rmsprop", "adam", "adamw", "nadam", "radam",
                          "adadelta", "adamax", "adafactor", "muon", "lion", "rprop", "asgd",
                          "sgdhd", "adamhd", "prodigy", "schedulefreeadamw",
                          "schedulefreesgd"}


# ----- learning rate ----------------------------------------------------------------------------
@pytest.mark.parametrize("lr", [-1e-3, -1.0, math.nan, -math.inf])
@pytest.mark.parametrize("name", NAMES)
def test_negative_or_nan_lr(name: str, lr: float) -> None:
    refused(name, r"\blr\b", lr=lr)
    if lr < 0:  # torch.optim.SGD lets a NaN lr through
        torch_also_refuses(name, lr=lr)


@pytest.mark.parametrize("name", NAMES)
def test_negative_tensor_lr(name: str) -> None:
    refused(name, r"\blr\b", lr=torch.tensor(-0.1))


@pytest.mark.parametrize("name", NAMES)
def test_lr_of_wrong_type(name: str) -> None:
    refused(name, r"\blr\b", exc=(ValueError, TypeError), lr="0.1")
    refused(name, r"\blr\b", exc=(ValueError, TypeError), lr=[0.1])


def test_chain_negative_lr() -> None:
    with pytest.raises(ValueError, match=r"\blr\b"):
        ol.chain(params(), T.scale_by_adam(), lr=-0.1)


# ----- betas -------------------------------------------------------------------------------------
BAD_COMPONENT = [
    ((-0.1, 0.999), r"betas\[0\]"),
    ((1.0, 0.999), r"betas\[0\]"),
    ((1.5, 0.999), r"betas\[0\]"),
    ((0.9, -0.1), r"betas\[1\]"),
    ((0.9, 1.0), r"betas\[1\]"),
    ((0.9, math.nan), r"betas\[1\]"),
]


@pytest.mark.parametrize(("betas", "match"), BAD_COMPONENT)
@pytest.mark.parametrize("name", ADAM_FAMILY)
def test_betas_component_out_of_range(name: str, betas: tuple[float, float],
                                      match: str) -> None:
    refused(name, match, betas=betas)
    if not (betas[0] == 1.0 or betas[1] == 1.0):  # torch accepts beta == 1.0
        torch_also_refuses(name, betas=betas)


@pytest.mark.parametrize("betas", [(0.9,), (0.9, 0.99, 0.999), 0.9, None, "ab"])
@pytest.mark.parametrize("name", ADAM_FAMILY)
def test_betas_not_a_pair(name: str, betas: Any) -> None:
    refused(name, "betas", exc=(ValueError, TypeError), betas=betas)


@pytest.mark.parametrize("factory", [T.scale_by_adam, T.scale_by_nadam, T.scale_by_radam,
                                     T.scale_by_adamax])
def test_transform_betas_out_of_range(factory: Any) -> None:
    with pytest.raises(ValueError, match=r"betas\[0\]"):
        factory(b1=1.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        factory(b2=-0.5)


# ----- eps, weight decay, momentum and friends --------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, -1e-8, math.nan])
@pytest.mark.parametrize("name", WITH_EPS)
def test_eps_must_be_positive(name: str, eps: float) -> None:
    refused(name, r"\beps\b", eps=eps)
    if eps < 0:  # torch allows eps == 0
        torch_also_refuses(name, eps=eps)


@pytest.mark.parametrize("name", NAMES)
def test_negative_weight_decay(name: str) -> None:
    if not takes(name, "weight_decay"):  # Rprop has none (nor has torch.optim.Rprop)
        refused(name, "weight_decay", exc=TypeError, weight_decay=0.01)
        return
    refused(name, "weight_decay", weight_decay=-0.01)
    torch_also_refuses(name, weight_decay=-0.01)


@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_negative_momentum(name: str) -> None:
    refused(name, "momentum", momentum=-0.1)
    torch_also_refuses(name, momentum=-0.1)


@pytest.mark.parametrize("kw", [dict(nesterov=True), dict(nesterov=True, momentum=0.0),
                                dict(nesterov=True, momentum=0.9, dampening=0.1)])
def test_nesterov_needs_momentum_and_no_dampening(kw: dict[str, Any]) -> None:
    refused("sgd", "nesterov", **kw)
    torch_also_refuses("sgd", **kw)


@pytest.mark.parametrize("dampening", [-0.1, 1.5, math.nan])
def test_dampening_out_of_range(dampening: float) -> None:
    refused("sgd", "dampening", momentum=0.9, dampening=dampening)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_rmsprop_alpha_out_of_range(alpha: float) -> None:
    refused("rmsprop", "alpha", alpha=alpha)
    if alpha < 0:
        torch_also_refuses("rmsprop", alpha=alpha)


@pytest.mark.parametrize("rho", [-0.1, 1.5])
def test_adadelta_rho_out_of_range(rho: float) -> None:
    refused("adadelta", "rho", rho=rho)
    torch_also_refuses("adadelta", rho=rho)


def test_adagrad_negative_lr_decay() -> None:
    refused("adagrad", "lr_decay", lr_decay=-0.1)
    torch_also_refuses("adagrad", lr_decay=-0.1)


def test_adagrad_negative_initial_accumulator_value() -> None:
    refused("adagrad", "initial_accumulator_value", initial_accumulator_value=-0.1)
    torch_also_refuses("adagrad", initial_accumulator_value=-0.1)


def test_nadam_negative_momentum_decay() -> None:
    refused("nadam", "momentum_decay", momentum_decay=-0.1)
    torch_also_refuses("nadam", momentum_decay=-0.1)


@pytest.mark.parametrize("name", NAMES)
def test_maximize_must_be_bool(name: str) -> None:
    refused(name, "maximize", exc=(ValueError, TypeError), maximize="yes")


@pytest.mark.parametrize(("name", "key"), [("adam", "lr"), ("sgd", "lr"),
                                           ("adam", "weight_decay"), ("sgd", "momentum"),
                                           ("adagrad", "eps"), ("rmsprop", "alpha")])
def test_multi_element_tensor_hyperparameter(name: str, key: str) -> None:
    # check_range has a message for this ("must be a number or a one-element tensor")
    refused(name, rf"\b{key}\b", **{key: torch.tensor([0.1, 0.2])})


# ----- parameters and groups ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_parameter_in_two_groups(name: str) -> None:
    p, q = params()
    with pytest.raises(ValueError, match="more than one parameter group"):
        ours(name)([{"params": [p, q]}, {"params": [q]}])
    if theirs(name) is not None:
        with pytest.raises(ValueError, match="more than one parameter group"):
            theirs(name)([{"params": [p, q]}, {"params": [q]}])
    opt = ours(name)([p])
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1


def _chain_opt(ps: list[nn.Parameter]) -> torch.optim.Optimizer:
    return ol.chain(ps, T.clip_by_global_norm(1.0), T.scale_by_adam(), lr=0.01)


BAD_GROUPS = [
    ("sgd", {"momentum": -1.0}, "momentum"),
    ("sgd", {"nesterov": True, "momentum": 0.0}, "nesterov"),
    ("adagrad", {"lr_decay": -1.0}, "lr_decay"),
    ("adagrad", {"initial_accumulator_value": -1.0}, "initial_accumulator_value"),
    ("rmsprop", {"alpha": 2.0}, "alpha"),
    ("adam", {"betas": (1.0, 0.9)}, r"betas\[0\]"),
    ("adam", {"betas": (0.9,)}, "betas"),
    ("adamw", {"eps": 0.0}, "eps"),
    ("nadam", {"momentum_decay": -1.0}, "momentum_decay"),
    ("radam", {"weight_decay": -1.0}, "weight_decay"),
    ("adadelta", {"rho": 2.0}, "rho"),
    ("adamax", {"lr": -1.0}, r"\blr\b"),
    ("adam", {"weight_decay": torch.tensor([0.1, 0.2])}, "weight_decay"),
    ("sgd", {"maximize": "yes"}, "maximize"),
    ("chain", {"max_norm": 0.0}, "max_norm"),
    ("chain", {"betas": (0.9, 1.5)}, r"betas\[1\]"),
]


@pytest.mark.parametrize(("name", "group", "match"), BAD_GROUPS,
                         ids=[f"{n}-{next(iter(g))}" for n, g, _ in BAD_GROUPS])
def test_add_param_group_refuses_bad_values_and_leaves_groups_unchanged(
        name: str, group: dict[str, Any], match: str) -> None:
    ps = params(3)
    opt = _chain_opt(ps[:2]) if name == "chain" else ours(name)(ps[:2])
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(Exception) as ei:  # type and message are checked below
        opt.add_param_group({"params": [ps[2]], **group})
    assert len(opt.param_groups) == len(before) == 1
    assert isinstance(ei.value, (ValueError, TypeError)), repr(ei.value)
    assert re.search(match, str(ei.value)), str(ei.value)
    assert opt.param_groups[0].keys() == before[0].keys()
    assert opt.param_groups[0]["params"] == before[0]["params"]
    # the optimizer still works, and the refused parameter can be added with good values
    ps[0].grad = torch.ones(3, 1)
    opt.step()
    opt.add_param_group({"params": [ps[2]]})
    assert len(opt.param_groups) == 2
    # same bad values at construction
    if name != "chain":
        with pytest.raises((ValueError, TypeError), match=match):
            ours(name)([{"params": [ps[2]], **group}])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize("name", NAMES)
def test_non_float_parameters(name: str, dtype: torch.dtype) -> None:
    bad = torch.zeros(3, 1, dtype=dtype)
    with pytest.raises((ValueError, TypeError), match=r"(?i)param.*float|float.*param"):
        ours(name)([bad])
    opt = ours(name)(params())
    with pytest.raises((ValueError, TypeError), match=r"(?i)param.*float|float.*param"):
        opt.add_param_group({"params": [bad]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", NAMES)
def test_params_that_are_not_tensors(name: str) -> None:
    with pytest.raises(TypeError, match="Tensor"):
        ours(name)([1.0, 2.0])
    with pytest.raises(TypeError, match="set"):
        ours(name)([{"params": set(params())}])


# ----- optimlab options ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["bogus", "Raise", None, True])
@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_policy(name: str, value: Any) -> None:
    refused(name, "nonfinite", exc=(ValueError, TypeError), nonfinite=value)


def test_chain_nonfinite_policy() -> None:
    with pytest.raises(ValueError, match="nonfinite"):
        ol.chain(params(), T.scale_by_adam(), nonfinite="bogus")


@pytest.mark.parametrize("name", NAMES)
def test_capturable_is_refused(name: str) -> None:
    sig = inspect.signature(ours(name)).parameters
    if "capturable" in sig or any(p.kind is p.VAR_KEYWORD for p in sig.values()):
        # an argument, or one of the engine options a NamedOptimizer passes on (**options)
        refused(name, "capturable", capturable=True)
    else:  # not an argument of torch.optim's version either
        twin = theirs(name)
        assert twin is None or "capturable" not in inspect.signature(twin).parameters
        refused(name, "capturable", exc=TypeError, capturable=True)


@pytest.mark.parametrize("name", NAMES)
def test_differentiable_refusals(name: str) -> None:
    """differentiable=True is supported (tests/test_hardening.py); not with fused (as
    torch.optim: RuntimeError), nor with the low-precision storage options."""
    refused(name, "differentiable", exc=RuntimeError, differentiable=True, fused=True)
    if theirs(name) is not None and "fused" in inspect.signature(theirs(name)).parameters:
        torch_also_refuses(name, fused=True, differentiable=True)
    refused(name, "differentiable", differentiable=True, state_dtype=torch.bfloat16)
    refused(name, "differentiable", differentiable=True, master_weights=True)
    refused(name, "differentiable", exc=(ValueError, TypeError), differentiable="yes")


@pytest.mark.parametrize("name", NAMES)
def test_fused_with_foreach(name: str) -> None:
    refused(name, "fused", exc=RuntimeError, fused=True, foreach=True)  # torch's type
    if theirs(name) is not None and "fused" in inspect.signature(theirs(name)).parameters:
        torch_also_refuses(name, fused=True, foreach=True)


@pytest.mark.parametrize("name", NAMES)
def test_fused_with_foreach_false_is_accepted(name: str) -> None:
    """torch.optim accepts fused=True with foreach=False (fused wins): so do we."""
    opt = ours(name)(params(), fused=True, foreach=False)
    assert opt.defaults["fused"] is True
    opt = ol.chain(params(), T.scale_by_adam(), fused=True, foreach=False)
    assert opt.defaults["fused"] is True


# ----- chain construction ------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["adam", 1.0, None, T.scale_by_adam, T.ScaleByAdam,
                                 [T.trace(0.9)], torch.optim.Adam],
                         ids=["str", "float", "none", "uncalled-factory", "class", "list",
                              "torch-optimizer"])
def test_chain_refuses_non_transforms(bad: Any) -> None:
    with pytest.raises(TypeError, match="transform"):
        ol.chain(params(), T.clip_by_global_norm(1.0), bad, lr=0.1)


@pytest.mark.parametrize(("transforms", "key"), [
    ((T.add_l2(1e-4), T.scale_by_adam(), T.add_decayed_weights(0.01)), "weight_decay"),
    ((T.trace(0.9), T.trace(0.5)), "momentum"),
    ((T.scale_by_adam(), T.scale_by_nadam()), "betas"),
    ((T.clip_by_global_norm(1.0), T.clip_by_global_norm(2.0)), "max_norm"),
    ((T.scale_by_adam(), T.scale_by_adamax().with_keys(betas="betas2", eps="eps2")),
     "exp_avg"),
], ids=["weight_decay", "momentum", "betas", "max_norm", "state-exp_avg"])
def test_chain_refuses_shared_keys_and_suggests_with_keys(transforms: tuple[Any, ...],
                                                          key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(key)) as ei:
        ol.chain(params(), *transforms, lr=0.1)
    assert "with_keys" in str(ei.value)


def test_with_keys_fixes_a_shared_key() -> None:
    opt = ol.chain(params(), T.add_l2(1e-4).with_keys(weight_decay="l2"), T.scale_by_adam(),
                   T.add_decayed_weights(0.01), lr=0.1)
    assert opt.defaults["l2"] == 1e-4
    assert opt.defaults["weight_decay"] == 0.01


@pytest.mark.parametrize("rename", [{"bogus": "x"}, {"lr": "x"}, {"momentum_buffer2": "x"}])
def test_with_keys_unknown_key(rename: dict[str, str]) -> None:
    key = next(iter(rename))
    with pytest.raises(ValueError, match=re.escape(key)):
        T.trace(0.9).with_keys(**rename)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, math.nan])
def test_clip_by_global_norm_max_norm(max_norm: float) -> None:
    with pytest.raises(ValueError, match="max_norm"):
        T.clip_by_global_norm(max_norm)


@pytest.mark.parametrize("norm_type", [0.0, -2.0])
def test_clip_by_global_norm_norm_type(norm_type: float) -> None:
    with pytest.raises(ValueError, match="norm_type"):
        T.clip_by_global_norm(1.0, norm_type=norm_type)


@pytest.mark.parametrize("clip_value", [0.0, -1.0])
def test_clip_by_value(clip_value: float) -> None:
    with pytest.raises(ValueError, match="clip_value"):
        T.clip_by_value(clip_value)


@pytest.mark.parametrize(("factory", "kw", "match"), [
    (T.trace, dict(momentum=-0.1), "momentum"),
    (T.trace, dict(momentum=0.9, dampening=2.0), "dampening"),
    (T.trace, dict(momentum=0.0, nesterov=True), "nesterov"),
    (T.add_l2, dict(weight_decay=-1.0), "weight_decay"),
    (T.add_decayed_weights, dict(weight_decay=-1.0), "weight_decay"),
    (T.l1_proximal, dict(l1=-1.0), r"\bl1\b"),
    (T.scale_by_rms, dict(alpha=1.5), "alpha"),
    (T.scale_by_rms, dict(eps=0.0), "eps"),
    (T.scale_by_adagrad, dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (T.scale_by_adadelta, dict(rho=-0.5), "rho"),
    (T.scale_by_nadam, dict(momentum_decay=-1.0), "momentum_decay"),
    (T.scale_by_inverse_time_decay, dict(lr_decay=-1.0), "lr_decay"),
    (T.scale_by_learning_rate, dict(lr=-1.0), r"\blr\b"),
])
def test_transform_hyperparameters(factory: Any, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory(**kw)


def test_renamed_key_is_named_in_the_message() -> None:
    opt = ol.chain(params(), T.add_l2(1e-4).with_keys(weight_decay="l2"), T.scale_by_adam(),
                   lr=0.1)
    with pytest.raises(ValueError, match=r"\bl2\b"):
        opt.add_param_group({"params": params(1), "l2": -1.0})
    assert len(opt.param_groups) == 1


def test_message_states_the_allowed_range() -> None:
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\), got 1\.0"):
        ol.Adam(params(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"eps must be in \(0, inf\), got 0"):
        ol.Adam(params(), eps=0.0)
    with pytest.raises(ValueError, match=r"rho must be in \[0, 1\], got 1\.5"):
        ol.Adadelta(params(), rho=1.5)


# ----- the lab's settings -------------------------------------------------------------------------
@pytest.mark.parametrize("check,value,match", [
    ("positive_int", 0, r"^steps must be a positive integer, got 0$"),
    ("positive_int", 2.0, "steps must be a positive integer"),
    ("positive_int", True, "steps must be a positive integer"),
    ("non_negative_int", -1, "steps must be a non-negative integer"),
    ("positive_float", math.nan, "steps must be a positive finite number"),
    ("positive_float", "1", "steps must be a positive finite number"),
    ("batch_size", "half", "steps must be 'full' or a positive integer"),
    ("seeds", 1.5, "steps must be a count >= 1 or a list"),
    ("names", [], "steps is an empty list"),
    ("names", ["a", "a"], "steps has duplicate names"),
    ("boolean", "yes", "steps must be true or false"),
])
def test_lab_validators_name_the_field(check: str, value: Any, match: str) -> None:
    from optimlab.lab import validate

    with pytest.raises(validate.ValidationError, match=match) as e:
        getattr(validate, check)("steps", value)
    assert e.value.field.startswith("steps") and isinstance(e.value, ValueError)


@pytest.mark.parametrize("study,field", [
    ({"tasks": 3, "optimizers": ["sgd"]}, "tasks"),
    ({"tasks": ["quadratic"], "optimizers": "sgd,", "seeds": 2.5}, "seeds"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "hyperparams": ["lr", 1]}, "hyperparams"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "hyperparams": {"sgd": 0.1}},
     "hyperparams.sgd"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "task": ["quadratic"]}, "task"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "task": {"quadratic": 5}},
     "task.quadratic"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "name": ""}, "name"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "description": 3}, "description"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "eval_every": -2}, "eval_every"),
    ({"tasks": ["quadratic"], "optimizers": ["sgd"], "seconds": math.inf}, "seconds"),
])
def test_malformed_study_fields_name_the_field(study: dict[str, Any], field: str) -> None:
    from optimlab.lab.spec import StudyError, StudySpec

    with pytest.raises(StudyError) as e:
        StudySpec.from_mapping(study, source="my.toml")
    message = str(e.value)
    assert message.startswith(f"my.toml: {field}") and "\n" not in message, message
