"""Optimizer steps and loads are transactions (issue 13, items 7 and 9).

A step either applies completely or raises with the parameters, the state (its entries, its
tensors, the step counts) and the counters exactly as they were, compared with ``torch.equal``
on every tensor; and the optimizer then continues bit for bit like a twin that never saw the
failure (a refused step must not have advanced anything). Failures are injected the ways they
happen: a gradient replaced through ``.data`` (shape, dtype), a state tensor of the wrong
shape, a hyperparameter set to inf/NaN or to a float that overflows the parameters' dtype, and
rules that raise in ``init_state``, ``prepare`` or ``apply`` on the second parameter or
bucket. Every named optimizer, on the foreach and for-loop paths (``fused=True``: marked slow).

``load_state_dict`` checks the whole dict first: another algorithm's dict is refused naming
both classes, and so are hostile values (NaN/negative/fractional/two-element steps, unknown
parameter ids, states of the wrong shape or dtype, invalid hyperparameters); a refused load
changes nothing. Also here: non-finite hyperparameters are refused in constructors and
``add_param_group``, and only inf/NaN gradients count as non-finite (3e38 is finite in float32).
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import optimlab as ol
from optimlab import transforms as T
from optimlab.chain import ChainOptimizer, NonFiniteGradientError
from optimlab.transforms.base import Bucket, Transform

NAMED = sorted(ol.OPTIMIZERS.items())
IDS = [n for n, _ in NAMED]
#: The named optimizers that torch.optim has a class of the same name for.
TWINS = [(n, c) for n, c in NAMED if hasattr(torch.optim, c.__name__)]
TWIN_IDS = [n for n, _ in TWINS]
#: Options that give every optimizer per-element state and its widest set of states.
STATEFUL = {"sgd": {"momentum": 0.9}, "rmsprop": {"momentum": 0.9, "centered": True}}
PATHS = {"foreach": {}, "forloop": {"foreach": False}}
# All matrices, so that every named optimizer takes them (Muon steps 2-D parameters only);
# vectors and 3-D tensors are covered by tests/test_contract.py.
SHAPES = ((4, 3), (3, 1), (2, 2))


def params(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]


def set_grads(ps: list[Tensor], t: int) -> None:
    for i, p in enumerate(ps):
        g = torch.Generator().manual_seed(100 * t + i)
        p.grad = (p.detach() - 0.5) + 0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype)


def make(cls: type, ps: list[nn.Parameter], name: str, **kw: Any) -> torch.optim.Optimizer:
    return cls(ps, lr=0.01, **STATEFUL.get(name, {}), **kw)


# ----- comparing everything an optimizer holds ---------------------------------------------------
def snapshot(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Copies of the parameters, of every state entry (by parameter position, or by key for
    other entries) and of the groups' hyperparameters, and the counters."""
    position = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}

    def copied(v: Any) -> Any:
        return v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)

    state = {}
    for key, entry in opt.state.items():
        k = ("param", position[id(key)]) if isinstance(key, Tensor) else ("other", key)
        state[k] = ({n: copied(v) for n, v in entry.items()} if isinstance(entry, Mapping)
                    else copied(entry))
    return {
        "params": [copied(p) for g in opt.param_groups for p in g["params"]],
        "state": state,
        "groups": [{k: copied(v) for k, v in g.items() if k != "params"}
                   for g in opt.param_groups],
        "skipped": getattr(opt, "skipped_steps", None),
    }


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{tuple(a.shape)} "\
            f"vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), f"{where}: {set(a)} vs {set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} vs {b!r}"


def refused(opt: torch.optim.Optimizer, action: Callable[[], Any],
            exc: type[BaseException] | tuple[type[BaseException], ...] = ValueError,
            match: str | None = None) -> BaseException:
    """``action`` raises ``exc`` and leaves ``opt`` exactly as it was."""
    before = snapshot(opt)
    with pytest.raises(exc, match=match) as info:
        action()
    assert_same(snapshot(opt), before, "after the refused call")
    return info.value


def step_both(opt: torch.optim.Optimizer, twin: torch.optim.Optimizer, ps: list[Tensor],
              qs: list[Tensor], t: int) -> None:
    set_grads(ps, t)
    set_grads(qs, t)
    torch.manual_seed(t)  # the same draws for both under stochastic rounding
    opt.step()
    torch.manual_seed(t)
    twin.step()


def assert_twins(opt: torch.optim.Optimizer, twin: torch.optim.Optimizer) -> None:
    a, b = snapshot(opt), snapshot(twin)
    assert_same(a["params"], b["params"], "params")
    assert_same(a["state"], b["state"], "state")


# ----- steps: injected faults, every named optimizer ---------------------------------------------
def _bad_grad_shape(opt: Any, ps: list[Tensor]) -> Callable[[], None]:
    good = ps[1].grad.data
    ps[1].grad.data = torch.zeros(5)  # the .grad setter would refuse; .data does not
    return lambda: setattr(ps[1].grad, "data", good)


def _bad_grad_dtype(opt: Any, ps: list[Tensor]) -> Callable[[], None]:
    good = ps[1].grad.data
    ps[1].grad.data = good.double()
    return lambda: setattr(ps[1].grad, "data", good)


def _bad_state_shape(opt: Any, ps: list[Tensor]) -> Callable[[], None]:
    st = opt.state[ps[1]]
    key = next(k for k, v in st.items() if isinstance(v, Tensor) and v.dim() > 0)
    good = st[key]
    st[key] = torch.zeros(7)
    return lambda: st.__setitem__(key, good)


def _hyperparameter(key: str, value: float) -> Callable[[Any, list[Tensor]], Callable[[], None]]:
    def inject(opt: Any, ps: list[Tensor]) -> Callable[[], None]:
        good = opt.param_groups[0][key]
        opt.param_groups[0][key] = value
        return lambda: opt.param_groups[0].__setitem__(key, good)
    return inject


#: fault -> (inject, steps taken before it: 0 = the first step, whose states are new)
FAULTS: dict[str, tuple[Callable[..., Callable[[], None]], int]] = {
    "grad-shape-first-step": (_bad_grad_shape, 0),
    "grad-shape": (_bad_grad_shape, 3),
    "grad-dtype-first-step": (_bad_grad_dtype, 0),
    "grad-dtype": (_bad_grad_dtype, 3),
    "state-shape": (_bad_state_shape, 3),
    # 1e308 is a float, but -lr does not fit float32: the kernels would overflow half-way
    "lr-overflows-float32": (_hyperparameter("lr", 1e308), 3),
    "lr-nan": (_hyperparameter("lr", math.nan), 3),
    "lr-inf": (_hyperparameter("lr", math.inf), 0),
    "weight-decay-inf": (_hyperparameter("weight_decay", math.inf), 3),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize(("name", "cls"), NAMED, ids=IDS)
def test_a_refused_step_changes_nothing(name: str, cls: type, fault: str, path: str) -> None:
    if fault == "weight-decay-inf" and "weight_decay" not in inspect.signature(cls).parameters:
        pytest.skip(f"{name} has no weight_decay")
    inject, before = FAULTS[fault]
    ps, qs = params(), params()
    opt, twin = make(cls, ps, name, **PATHS[path]), make(cls, qs, name, **PATHS[path])
    for t in range(before):
        step_both(opt, twin, ps, qs, t)
    set_grads(ps, before)
    set_grads(qs, before)
    undo = inject(opt, ps)
    error = refused(opt, opt.step)
    assert "nothing changed" in str(error) or "not taken" in str(error), error
    undo()
    opt.step()
    twin.step()
    for t in range(before + 1, before + 3):
        step_both(opt, twin, ps, qs, t)
    assert_twins(opt, twin)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["grad-shape", "grad-dtype", "lr-overflows-float32"])
@pytest.mark.parametrize(("name", "cls"), NAMED, ids=IDS)
def test_a_refused_compiled_step_changes_nothing(name: str, cls: type, fault: str) -> None:
    """The same on the compiled path (``fused=True``), once its direct call is bound."""
    pytest.importorskip("torch._inductor")
    inject, before = FAULTS[fault]
    ps, qs = params(), params()
    opt, twin = make(cls, ps, name, fused=True), make(cls, qs, name, fused=True)
    for t in range(before):
        step_both(opt, twin, ps, qs, t)
    set_grads(ps, before)
    set_grads(qs, before)
    undo = inject(opt, ps)
    refused(opt, opt.step)
    undo()
    opt.step()
    twin.step()
    step_both(opt, twin, ps, qs, before + 1)
    assert_twins(opt, twin)


@pytest.mark.parametrize("options", [
    {"master_weights": True}, {"stochastic_rounding": True}, {"state_dtype": torch.bfloat16}],
    ids=["master_weights", "stochastic_rounding", "state_dtype"])
@pytest.mark.parametrize("before", [0, 2])
def test_low_precision_options_roll_back_too(options: dict[str, Any], before: int) -> None:
    """The fp32 master copies and states made at a first step are removed again."""
    dtype = torch.float32 if "state_dtype" in options else torch.bfloat16
    ps, qs = params(dtype=dtype), params(dtype=dtype)
    opt, twin = ol.AdamW(ps, lr=0.01, **options), ol.AdamW(qs, lr=0.01, **options)
    for t in range(before):
        step_both(opt, twin, ps, qs, t)
    set_grads(ps, before)
    set_grads(qs, before)
    undo = _bad_grad_shape(opt, ps)
    refused(opt, opt.step)
    undo()
    torch.manual_seed(before)  # stochastic rounding draws from the default generator
    opt.step()
    torch.manual_seed(before)
    twin.step()
    assert_twins(opt, twin)


# ----- steps: rules that raise -------------------------------------------------------------------
class RaisesOn(Transform):
    """The identity, except that it raises in ``phase`` when it meets a float64 bucket (the
    second bucket of :func:`mixed_params`) or, for ``init_state``, its second parameter."""

    state_keys = ("seen",)

    def __init__(self, phase: str) -> None:
        super().__init__()
        self.phase = phase
        self.calls = 0

    def init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Tensor]:
        self.calls += 1
        if self.phase == "init_state" and self.calls == 2:
            raise RuntimeError("injected: init_state of the second parameter")
        return {"seen": torch.zeros_like(param)}

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        if self.phase == "prepare" and b.params[0].dtype == torch.float64:
            raise RuntimeError("injected: prepare of the second bucket")
        return {}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        if self.phase == "apply" and b.params[0].dtype == torch.float64:
            raise RuntimeError("injected: apply on the second bucket")
        return u


def mixed_params(seed: int = 0) -> list[nn.Parameter]:
    """Two buckets: float32 parameters, then a float64 one."""
    ps = params(seed)
    return [*ps[:2], nn.Parameter(ps[2].detach().double())]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("phase", "before"), [  # init_state runs at the first step only
    ("init_state", 0), ("prepare", 0), ("prepare", 2), ("apply", 0), ("apply", 2)])
def test_a_rule_raising_on_the_second_parameter_changes_nothing(phase: str, before: int,
                                                                path: str) -> None:
    """Adam updates the first bucket's moments in the stage where the rule (after it) raises
    on the second bucket: ``apply`` is caught by the dry run on meta tensors, which a new step
    structure gets (here the float64 parameter's first gradient, after ``before`` steps
    without it); ``init_state`` and ``prepare`` run before anything is written, and the undo
    log removes the states they made for the first parameters."""
    ps, qs = mixed_params(), mixed_params()
    rule = RaisesOn("apply" if phase == "apply" else "none")
    opt = ol.chain(ps, T.scale_by_adam(), rule, T.trace(0.9), lr=0.01, **PATHS[path])
    twin = ol.chain(qs, T.scale_by_adam(), RaisesOn("none"), T.trace(0.9), lr=0.01,
                    **PATHS[path])
    for t in range(before):
        set_grads(ps, t)
        set_grads(qs, t)
        ps[2].grad = qs[2].grad = None  # the float64 bucket joins at step `before`
        opt.step()
        twin.step()
    set_grads(ps, before)
    set_grads(qs, before)
    rule.phase, rule.calls = phase, 0
    refused(opt, opt.step, RuntimeError, "injected")
    rule.phase = "none"
    opt.step()
    twin.step()
    step_both(opt, twin, ps, qs, before + 1)
    assert_twins(opt, twin)


class RaisesAtStep(Transform):
    """Raises in ``apply`` at one step count: a failure the dry run cannot foresee."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def prepare(self, group: Mapping[str, Any], b: Bucket) -> dict[str, Any]:
        return {"fail": b.step == self.at}

    def apply(self, u: list[Tensor], b: Bucket, sc: Mapping[str, Any]) -> list[Tensor]:
        if sc["fail"]:
            raise RuntimeError("injected: apply at step 3")
        return u


def test_a_rule_raising_on_values_restores_the_counts_and_says_what_it_could_not() -> None:
    """The documented limit: after the checks passed, a rule's tensor math that raises leaves
    the tensors it already wrote; the step counts and entries are restored and a note says so."""
    ps = params()
    opt = ol.chain(ps, T.scale_by_adam(), RaisesAtStep(3), lr=0.01)
    for t in range(2):
        set_grads(ps, t)
        opt.step()
    set_grads(ps, 2)
    with pytest.raises(RuntimeError, match="injected") as info:
        opt.step()
    assert any("may hold this step's values" in n for n in info.value.__notes__)
    assert all(float(opt.state[p]["step"]) == 2.0 for p in ps)


def test_nadam_host_state_is_untouched_by_a_refused_step() -> None:
    ps = params()
    opt = ol.NAdam(ps, lr=0.01)
    for t in range(2):
        set_grads(ps, t)
        opt.step()
    mu = [opt.state[p]["mu_product"].clone() for p in ps]
    set_grads(ps, 2)
    opt.param_groups[0]["lr"] = 1e308
    with pytest.raises(ValueError, match=r"\blr=1e\+308"):
        opt.step()
    assert all(torch.equal(opt.state[p]["mu_product"], m) for p, m in zip(ps, mu))


def test_grad_check_message_names_the_parameter() -> None:
    ps = params()
    opt = ol.Adam(ps)
    set_grads(ps, 0)
    ps[2].grad.data = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"param group 0, parameter 2 has dtype torch\.float64"):
        opt.step()


def test_a_parameter_replaced_through_data_is_refused_not_broadcast() -> None:
    """``p.data = ...`` of another shape after the state was made: the cached plan notices,
    and the step names the state that no longer fits (torch.optim would broadcast or fail
    half-way)."""
    ps = params()
    opt = ol.Adam(ps, lr=0.01)
    for t in range(3):
        set_grads(ps, t)
        opt.step()
    ps[1].data = torch.zeros(2, 3)
    ps[1].grad = torch.ones(2, 3)
    refused(opt, opt.step, ValueError, r"state 'exp_avg' of param group 0, parameter 1 has "
            r"shape \(3, 1\), the parameter \(2, 3\)")


# ----- non-finite gradients ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_huge_finite_gradients_are_not_non_finite(dtype: torch.dtype) -> None:
    """A sum (CPU) or a 2-norm (GPU) of these overflows; the entries are finite, and the
    step is taken (with lr = 0 the parameters stay put and the counts advance)."""
    big = torch.finfo(dtype).max * 0.9  # 3.06e38 in float32 and bfloat16, 1.6e308 in float64
    ps = [nn.Parameter(torch.zeros(1000, dtype=dtype))]
    opt = ol.SGD(ps, lr=0.0, nonfinite="raise")
    ps[0].grad = torch.full((1000,), big, dtype=dtype)
    opt.step()
    assert float(opt.state[ps[0]]["step"]) == 1.0
    assert torch.equal(ps[0].detach(), torch.zeros(1000, dtype=dtype))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_inf_and_nan_gradients_are_refused_or_skipped_when_asked(bad: float) -> None:
    ps = params()
    opt = ol.Adam(ps, nonfinite="raise")
    set_grads(ps, 0)
    ps[1].grad[0] = bad
    refused(opt, opt.step, NonFiniteGradientError, r"param group 0, parameter 1")
    skipping = ol.Adam(params(), nonfinite="skip")
    for p, q in zip(skipping.param_groups[0]["params"], ps):
        p.grad = q.grad.clone()
    skipping.step()
    assert skipping.skipped_steps == 1 and not skipping.state


def test_one_huge_and_one_nan_gradient() -> None:
    """The exact confirmation looks at every tensor of a kind whose screen overflowed."""
    ps = [nn.Parameter(torch.zeros(10)), nn.Parameter(torch.zeros(10))]
    opt = ol.SGD(ps, lr=0.0, nonfinite="raise")
    ps[0].grad = torch.full((10,), 3e38)
    ps[1].grad = torch.zeros(10)
    ps[1].grad[3] = math.nan
    refused(opt, opt.step, NonFiniteGradientError, "parameter 1")


# ----- hyperparameters ---------------------------------------------------------------------------
#: (optimizer, the key named in the message, the keyword): lr and weight_decay for every
#: optimizer, the others where they exist.
INF_SETTINGS = [
    *[(name, key, {key: math.inf}) for name, cls in NAMED for key in ("lr", "weight_decay")
      if key in inspect.signature(cls).parameters],  # Rprop has no weight_decay
    ("adam", "eps", {"eps": math.inf}),
    ("adam", "betas[1]", {"betas": (0.9, math.inf)}),
    ("sgd", "momentum", {"momentum": math.inf}),
    ("nadam", "momentum_decay", {"momentum_decay": math.inf}),
    ("adagrad", "lr_decay", {"lr_decay": math.inf}),
    ("adagrad", "initial_accumulator_value", {"initial_accumulator_value": math.inf}),
]


@pytest.mark.parametrize(("name", "key", "kw"), INF_SETTINGS,
                         ids=[f"{n}-{k}" for n, k, _ in INF_SETTINGS])
def test_infinite_hyperparameters_are_refused(name: str, key: str, kw: dict[str, Any]) -> None:
    cls = ol.OPTIMIZERS[name]
    with pytest.raises(ValueError, match=rf"Invalid {re.escape(key)}: inf"):
        cls(params(), **kw)
    opt = cls(params())
    refused(opt, lambda: opt.add_param_group({"params": params(1), **kw}), ValueError,
            re.escape(key))
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize(("factory", "kw", "key"), [
    (T.scale, {"factor": math.inf}, "factor"),
    (T.scale, {"factor": -math.inf}, "factor"),
    (T.clip_by_global_norm, {"max_norm": math.inf}, "max_norm"),
    (T.clip_by_value, {"clip_value": math.inf}, "clip_value"),
    (T.l1_proximal, {"l1": math.inf}, "l1"),
    (T.add_decayed_weights, {"weight_decay": math.inf}, "weight_decay"),
    (T.scale_by_learning_rate, {"lr": math.inf}, "lr"),
])
def test_rules_refuse_infinite_values(factory: Any, kw: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=rf"Invalid {key}: -?inf"):
        factory(**kw)


def test_max_norm_clipping_keeps_norm_type_inf() -> None:
    ps = params()
    opt = ol.chain(ps, T.clip_by_global_norm(1.0, norm_type=math.inf), lr=0.1)
    set_grads(ps, 0)
    opt.step()
    assert math.isclose(float(opt.info["grad_norm"]),
                        max(float(p.grad.abs().max()) for p in ps), rel_tol=1e-6)


def test_huge_lr_fits_float64_and_is_refused_for_float32() -> None:
    """The decision for a huge but finite lr: refused at the step, naming ``lr``, when ``-lr``
    does not fit the parameters' dtype; in float64 (max 1.8e308) it is a defined step."""
    p64 = [nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    sgd = ol.SGD(p64, lr=1e308)
    p64[0].grad = torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)
    sgd.step()
    assert p64[0].detach().tolist() == [-1e308, 0.5e308, 0.0]
    p32 = [nn.Parameter(torch.zeros(3))]
    sgd32 = ol.SGD(p32, lr=1e308)
    p32[0].grad = torch.ones(3)
    error = refused(sgd32, sgd32.step, ValueError, r"neg_lr = -1e\+308")
    assert "lr=1e+308" in str(error) and "float32" in str(error)


# ----- load_state_dict: another algorithm's dict -------------------------------------------------
def trained(cls: type, name: str, lib: Any = ol) -> tuple[torch.optim.Optimizer, list[Tensor]]:
    ps = params()
    opt = (getattr(lib, cls.__name__) if lib is not ol else cls)(ps, lr=0.01,
                                                                 **STATEFUL.get(name, {}))
    for t in range(2):
        set_grads(ps, t)
        opt.step()
    return opt, ps


#: Pairs of one algorithm: Adam and AdamW load each other's dicts (torch.optim's too).
SAME = {("adam", "adamw"), ("adamw", "adam")}


@pytest.mark.parametrize(("src", "src_cls"), NAMED, ids=IDS)
@pytest.mark.parametrize(("dst", "dst_cls"), NAMED, ids=IDS)
def test_a_state_dict_of_another_class_is_refused(src: str, src_cls: type, dst: str,
                                                  dst_cls: type) -> None:
    sd = trained(src_cls, src)[0].state_dict()
    opt, _ = trained(dst_cls, dst)
    if src == dst or (src, dst) in SAME:
        opt.load_state_dict(copy.deepcopy(sd))
        return
    error = refused(opt, lambda: opt.load_state_dict(copy.deepcopy(sd)))
    assert src_cls.__name__ in str(error) and dst_cls.__name__ in str(error), error


#: What the content of a dict without the "optimlab" entry cannot tell apart: torch's Adam
#: and AdamW dicts hold all of RAdam's keys (documented in optimlab._checkpoint).
UNDETECTABLE = {("adam", "radam"), ("adamw", "radam"),
                # SGD's and Muon's dicts both hold one momentum_buffer shaped like the parameter
                ("sgd", "muon")}


@pytest.mark.parametrize(("src", "src_cls"), TWINS, ids=TWIN_IDS)
@pytest.mark.parametrize(("dst", "dst_cls"), NAMED, ids=IDS)
def test_torch_optim_state_dicts_are_judged_by_content(src: str, src_cls: type, dst: str,
                                                       dst_cls: type) -> None:
    sd = trained(src_cls, src, torch.optim)[0].state_dict()
    opt, _ = trained(dst_cls, dst)
    if src == dst or (src, dst) in SAME | UNDETECTABLE:
        opt.load_state_dict(copy.deepcopy(sd))
        return
    # (or a group setting the optimizer cannot take: Adafactor's eps pair into Prodigy)
    refused(opt, lambda: opt.load_state_dict(copy.deepcopy(sd)), ValueError,
            "another optimizer|not a state dict of|lacks|must be")


def test_torch_optim_loads_an_optimlab_state_dict() -> None:
    """The "optimlab" entry keeps the dict loadable by torch.optim (which ignores it)."""
    sd = trained(ol.Adam, "adam")[0].state_dict()
    assert sd["optimlab"] == {"class": "Adam", "algorithm": "Adam"}
    theirs = torch.optim.Adam(params(), lr=0.01)
    theirs.load_state_dict(copy.deepcopy(sd))
    assert float(theirs.state_dict()["state"][0]["step"]) == 2.0


def test_chain_dicts_load_into_chains_and_not_into_named_optimizers() -> None:
    ps = params()
    chained = ol.chain(ps, T.scale_by_adam(), lr=0.01)
    set_grads(ps, 0)
    chained.step()
    sd = chained.state_dict()
    ol.chain(params(), T.clip_by_global_norm(1.0), T.scale_by_adam(), lr=0.01).load_state_dict(
        copy.deepcopy(sd))
    adam = ol.Adam(params())
    refused(adam, lambda: adam.load_state_dict(copy.deepcopy(sd)), ValueError,
            "saved by ChainOptimizer; Adam cannot load it")


# ----- load_state_dict: hostile values -----------------------------------------------------------
def _set_step(value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(sd: dict[str, Any]) -> None:
        sd["state"][1]["step"] = value
    return edit


def _edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return fn


HOSTILE: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "step-nan": (_set_step(torch.tensor(math.nan)), r"'step' .* finite integer >= 0"),
    "step-negative": (_set_step(torch.tensor(-3.0)), r"'step' .* got -3\.0"),
    "step-fractional": (_set_step(2.5), r"'step' .* got 2\.5"),
    "step-two-elements": (_set_step(torch.tensor([1.0, 2.0])), r"'step' .* a scalar count"),
    "step-string": (_set_step("2"), r"'step' .* a number or a one-element tensor"),
    "state-shape": (_edit(lambda sd: sd["state"][1].__setitem__("exp_avg", torch.zeros(5))),
                    r"'exp_avg' of parameter id 1 .* shape \(5,\), the parameter \(3, 1\)"),
    "state-int-dtype": (_edit(lambda sd: sd["state"][1].__setitem__(
        "exp_avg", torch.zeros(3, 1, dtype=torch.int64))), r"'exp_avg' .* dtype torch\.int64"),
    "state-complex": (_edit(lambda sd: sd["state"][1].__setitem__(
        "exp_avg", torch.zeros(3, 1, dtype=torch.complex64))), r"parameter is real"),
    "state-not-a-tensor": (_edit(lambda sd: sd["state"][1].__setitem__("exp_avg", [0.0] * 3)),
                           r"'exp_avg' .* must be a tensor"),
    "state-lacking": (_edit(lambda sd: sd["state"][1].pop("exp_avg_sq")), r"lacks 'exp_avg_sq'"),
    "state-foreign": (_edit(lambda sd: sd["state"][1].__setitem__("momentum_buffer",
                                                                  torch.zeros(3))),
                      r"holds 'momentum_buffer', which Adam does not keep"),
    "entry-not-a-dict": (_edit(lambda sd: sd["state"].__setitem__(1, 3.0)), r"must be a dict"),
    "unknown-param-id": (_edit(lambda sd: sd["state"].__setitem__(
        7, copy.deepcopy(sd["state"][1]))), r"parameter id 7, which no param group"),
    "duplicate-param-id": (_edit(lambda sd: sd["param_groups"][0].__setitem__(
        "params", [0, 1, 1])), r"parameter id 1 is listed twice"),
    "param-id-not-int": (_edit(lambda sd: sd["param_groups"][0].__setitem__(
        "params", [0, "one", 2])), r"parameter ids are integers"),
    "lr-inf": (_edit(lambda sd: sd["param_groups"][0].__setitem__("lr", math.inf)),
               r"param group 0 of the state dict: Invalid lr: inf"),
    "betas-out-of-range": (_edit(lambda sd: sd["param_groups"][0].__setitem__(
        "betas", (0.9, 1.5))), r"betas\[1\] must be in \[0, 1\)"),
    "group-lacks-betas": (_edit(lambda sd: sd["param_groups"][0].pop("betas")),
                          r"lacks betas"),
    "group-count": (_edit(lambda sd: sd["param_groups"].append(
        copy.deepcopy(sd["param_groups"][0]))), r"different number of parameter groups"),
    "group-size": (_edit(lambda sd: sd["param_groups"][0]["params"].pop()),
                   r"doesn't match the size"),
    "marker-malformed": (_edit(lambda sd: sd.__setitem__("optimlab", "Adam")),
                         r"'optimlab' entry must be a dict"),
    "not-a-state-dict": (_edit(lambda sd: sd.pop("state")), r"expected a dict with 'state'"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_state_dicts_are_refused_and_change_nothing(case: str) -> None:
    edit, match = HOSTILE[case]
    src, _ = trained(ol.Adam, "adam")
    sd = copy.deepcopy(src.state_dict())
    edit(sd)
    opt, ps = trained(ol.Adam, "adam")
    twin, qs = trained(ol.Adam, "adam")
    refused(opt, lambda: opt.load_state_dict(sd), ValueError, match)
    step_both(opt, twin, ps, qs, 5)
    assert_twins(opt, twin)


def test_unknown_param_id_with_bf16_states_leaves_nothing_half_loaded() -> None:
    src, _ = trained(ol.Adam, "adam")
    sd = copy.deepcopy(src.state_dict())
    sd["state"][9] = {k: v.to(torch.bfloat16) if v.dim() else v
                      for k, v in sd["state"][0].items()}
    ps = params()
    opt = ol.Adam(ps, lr=0.01, state_dtype=torch.bfloat16)
    set_grads(ps, 0)
    opt.step()
    refused(opt, lambda: opt.load_state_dict(sd), ValueError, "parameter id 9")


def test_a_load_that_fails_after_the_checks_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = trained(ol.Adam, "adam")
    sd = copy.deepcopy(src.state_dict())
    sd["param_groups"][0]["lr"] = 0.5
    opt, ps = trained(ol.Adam, "adam")
    twin, qs = trained(ol.Adam, "adam")

    def fail(self: Any, state_dict: Any) -> None:
        raise RuntimeError("injected: after torch.optim's loader")

    monkeypatch.setattr(ChainOptimizer, "_restore_storage", fail)
    refused(opt, lambda: opt.load_state_dict(sd), RuntimeError, "injected")
    assert opt.param_groups[0]["lr"] == 0.01
    monkeypatch.undo()
    step_both(opt, twin, ps, qs, 5)
    assert_twins(opt, twin)


def test_old_style_values_still_load() -> None:
    """torch < 2's ``momentum_buffer=None`` (not made yet) and an integer ``step`` tensor:
    loaded, the buffer made at the next step, the step counted in floating point."""
    src, _ = trained(ol.SGD, "sgd")
    sd = copy.deepcopy(src.state_dict())
    for st in sd["state"].values():
        st["momentum_buffer"] = None
        st["step"] = torch.tensor(2, dtype=torch.int64)
    ps = params()
    opt = ol.SGD(ps, lr=0.01, momentum=0.9)
    opt.load_state_dict(sd)
    assert all("momentum_buffer" not in opt.state[p] for p in ps)
    assert all(opt.state[p]["step"].dtype == torch.float32 for p in ps)
    set_grads(ps, 3)
    opt.step()
    assert all(float(opt.state[p]["step"]) == 3.0 and "momentum_buffer" in opt.state[p]
               for p in ps)
