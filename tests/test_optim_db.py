"""The named optimizers with a torch.optim twin, through torch's own optimizer test database.

torch's wheel ships the database its optimizer suite (``test/test_optim.py``,
``TestOptimRenewed``) runs on: ``torch.testing._internal.common_optimizers.optim_db``, one
``OptimizerInfo`` per torch.optim class, with the configurations that class is tested in
(``optim_inputs_func``) and the inputs it must refuse (``optim_error_inputs_func``, which
includes the ``get_error_inputs_for_all_optims`` shared by every optimizer). This file imports
that database (nothing of torch's is copied) and holds each optimlab optimizer to the properties
torch's suite checks of its twin of the same name:

* errors: the same exception type as torch (the message must name the argument);
* numerics: optimlab equals torch.optim (float32, float64; complex64 against its
  ``view_as_real`` twin and against torch), ``foreach=True`` equals ``foreach=False`` bit for
  bit, a tensor ``lr`` equals the float it holds, and param groups with their own lr / weight
  decay behave as torch's;
* steps that must change nothing: all gradients ``None``; all gradients zero with no decay;
* the object: printing, ``deepcopy`` (every public attribute), step hooks (per instance and
  global), state-dict hooks (including a load post-hook that writes into ``optimizer.state``);
* state dicts: deterministic round trips, ``torch.save``/``torch.load(weights_only=True)``,
  older checkpoints (no ``foreach``/``maximize``/... keys, a Python-number ``step``), and
  Adam <-> AdamW (an AdamW loading an Adam state dict stays decoupled, as torch's does);
* ``differentiable=True`` (the gradient through a step equals torch's) and sparse gradients
  (SGD and Adagrad, the two whose torch twins take them).

As torch's suite does, an entry's ``supported_impls`` says which of the ``foreach`` and
``differentiable`` variants it runs (torch's Adafactor has no ``differentiable``, its Muon
neither), and ``supports_complex`` whether the complex test runs (not for Adafactor, Muon).
The shared problems give each optimizer the parameters its torch twin takes (:func:`takes`):
Muon only matrices, Adafactor no zero-element tensors.

Configurations run on the CPU, for-loop (``foreach=False``) and multi-tensor
(``foreach=True``); torch's ``fused`` variants are left to one smoke test marked ``slow``
(optimlab's ``fused`` compiles with ``torch.compile``). optim_db lists ``capturable=True``
configurations for CUDA only; on the CPU torch.optim refuses them as optimlab does (checked).
optim_db entries without an optimlab twin (SparseAdam) are reported as skipped. LBFGS, whose
step needs a closure, is held here to torch's arguments and error inputs and in
``test_second_order_contract.py`` to torch's numerics and object properties.

Test ids are ``<optimizer>-<dtype>-<torch's configuration name>``; ``+foreach`` /
``+differentiable`` name the variants (torch's suite names them ``& foreach``, ...).
"""

from __future__ import annotations

import copy
import inspect
import io
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from reference import max_relative_error
from torch import Tensor
from torch.nn import Parameter
from torch.optim import Optimizer
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import optimlab as ol

# torch.testing._internal.common_utils imports expecttest (torch's test-only dependency, in our
# dev extra): a missing one fails here rather than skipping the whole matrix.
with warnings.catch_warnings():  # torch's test helpers define torch.jit.script_methods
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

# ----- tolerances ------------------------------------------------------------------------------
#: Unit roundoff (half an ulp, relative) of each parameter dtype.
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
#: Rounded operations per element per step in the longest chain (RAdam's rectified step, NAdam's
#: two momentum terms: about a dozen). optimlab and torch run the same formulas with some
#: operations in another order (e.g. Adam divides by ``bc1 * denom`` where torch scales the step
#: by ``lr / bc1``), so each step's update may differ by up to this many roundoffs, relative.
OPS_PER_STEP = 16
#: Steps of the comparison scenario (as torch's: RAdam's rectified branch starts at step 6).
STEPS = 7
#: Growth of a difference through the gradients of the next steps. The scenario's network has
#: gradients 1-Lipschitz in the parameters at most (sigmoids, weights ~U(-0.7, 0.7)) and every
#: configuration has lr <= 0.1 (Adadelta's lr=1 multiplies a step ~sqrt(eps) = 1e-3), so a step
#: grows a difference by at most 1 + lr: 1.1**7 < 2. On the convex quadratic of
#: ``linear_problem`` gradient steps do not expand differences (|1 - lr * lambda| <= 1).
GROWTH = 2.0
#: A float32 tensor lr (``torch.tensor(1e-3)``) makes the step's scalar arithmetic float32 in
#: torch (and may in optimlab): a float64 update then carries float32 roundoff in its coefficient,
#: relative to the update, which is at most lr x O(1) of an O(1) parameter. (``step`` and NAdam's
#: ``mu_product`` are float32 in both libraries too, but hold integers or are updated by the same
#: float32 multiplication, so they add nothing.)
SCALAR_ROUNDOFF = 2.0**-24
MAX_LR = 0.1
#: Muon orthogonalizes its update O in bfloat16, in both libraries (Newton-Schulz, as Keller
#: Jordan's reference). Where gradients depend on the parameters (the scenario, the
#: regression), parameters a few roundoffs apart give gradients a few roundoffs apart, and a
#: bf16 result is a discontinuous function of its input: an element of O may round the other way,
#: one bf16 ulp (2**-8 relative). Per step that moves the weight by at most
#: ``lr * shape factor * ||dO||`` with ``||dO|| <= 2**-8 ||O||``: optim_db's Muon configurations
#: have lr <= 0.01; the shape factor ``sqrt(max(1, rows / cols))`` is at most sqrt(3/2) for the
#: 3x2 and 1x3 weights here, and ``||O||_F / ||W||_F <= 2`` (O's singular values are near 1, at
#: most sqrt(2) of them; ``||W||_F`` is about 1 for the 3x2 weight, 0.6 for the 1x3 with one
#: singular value). Observed differences are far smaller (a flip is rare); this is the bound.
MUON_PER_STEP = 2.0**-8 * 0.01 * 1.5**0.5 * 2
BF16_UPDATES = ("Muon",)


def tolerance(dtype: torch.dtype, steps: int = STEPS, *, f32_scalars: bool = False,
              name: str = "") -> float:
    """Bound on the per-tensor relative error (``max_relative_error``) between two
    implementations of one formula after ``steps`` steps of optimizer ``name``, from the
    arithmetic above."""
    per_step = OPS_PER_STEP * UNIT_ROUNDOFF[dtype]
    if f32_scalars and dtype == torch.float64:
        per_step += OPS_PER_STEP * SCALAR_ROUNDOFF * MAX_LR
    if name in BF16_UPDATES:
        per_step += MUON_PER_STEP
    return steps * per_step * GROWTH


# ----- the database -----------------------------------------------------------------------------
NAMES = ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "NAdam", "RAdam", "Adadelta", "Adamax",
         "Adafactor", "ASGD", "Rprop", "Muon")
#: Twins whose step takes a closure (checked here for arguments and errors only).
CLOSURE_NAMES = ("LBFGS",)
INFOS = {info.name: info for info in optim_db if info.name in (*NAMES, *CLOSURE_NAMES)}
DTYPES = (torch.float32, torch.float64)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def slug(desc: str) -> str:
    """A test-id form of torch's configuration name."""
    return desc.replace(", ", ",").replace(" ", "_")


@dataclass(frozen=True)
class Config:
    """One configuration of optim_db for one optimizer: torch's name and an implementation."""

    name: str
    index: int  # position in ``optim_inputs_func``'s list (names may repeat in later torch)
    desc: str
    impl: str  # "forloop", "foreach" or "differentiable"

    @property
    def id(self) -> str:
        return slug(self.desc) + ("" if self.impl == "forloop" else f"+{self.impl}")

    def kwargs(self, **updates: Any) -> dict[str, Any]:
        """Fresh keyword arguments (a tensor ``lr`` is a new tensor at every call)."""
        info = INFOS[self.name]
        kwargs = dict(info.optim_inputs_func(device="cpu")[self.index].kwargs)
        if "foreach" in info.supported_impls:
            kwargs["foreach"] = self.impl == "foreach"
        else:  # torch's Muon has no foreach argument: its for-loop is its only path
            updates = {k: v for k, v in updates.items() if k != "foreach"}
        if self.impl == "differentiable":
            kwargs["differentiable"] = True
        kwargs.update(updates)
        return kwargs


def configs(name: str, impls: tuple[str, ...]) -> list[Config]:
    """The configurations of ``name`` in each of ``impls`` its optim_db entry supports (the
    for-loop always)."""
    info = INFOS[name]
    inputs = info.optim_inputs_func(device="cpu")
    supported = [i for i in impls if i == "forloop" or i in info.supported_impls]
    return [Config(name, i, inp.desc, impl) for i, inp in enumerate(inputs) for impl in supported]


def cases(impls: tuple[str, ...] = ("forloop",), dtypes: tuple[torch.dtype, ...] = DTYPES,
          keep: Callable[[Config], bool] = lambda c: True) -> list[Any]:
    """``(config, dtype)`` parameters with ids ``<optimizer>-<dtype>-<configuration>``."""
    return [pytest.param(c, dtype, id=f"{name}-{dtype_name(dtype)}-{c.id}")
            for name in NAMES for dtype in dtypes for c in configs(name, impls) if keep(c)]


ALL_IMPLS = ("forloop", "foreach", "differentiable")  # what torch runs its object tests on
NUMERIC_IMPLS = ("forloop", "foreach")  # torch skips differentiable in its numeric tests


#: torch.optim.Muon takes matrices only ("Muon only supports 2D parameters"; biases and norms
#: belong to AdamW); torch.optim.Adafactor divides by a parameter's number of elements, so a
#: zero-element parameter fails its step (ZeroDivisionError).
MATRIX_ONLY = ("Muon",)
NONEMPTY_ONLY = ("Adafactor",)


def takes(name: str, p: Tensor) -> bool:
    """Whether torch's twin of ``name`` takes the parameter ``p``."""
    if name in MATRIX_ONLY and p.ndim != 2:
        return False
    return not (name in NONEMPTY_ONLY and p.numel() == 0)


def make(library: str, config: Config, params: Any, **updates: Any) -> Optimizer:
    """The optimizer ``config.name`` of ``library`` ("ol" or "torch") with the config's
    arguments, over the parameters (or ``(name, parameter)`` pairs) of ``params`` its torch
    twin takes (:func:`takes`); the others stay as they are in both libraries."""
    cls = getattr(ol, config.name) if library == "ol" else INFOS[config.name].optim_cls
    kept = [p for p in params if takes(config.name, p[1] if isinstance(p, tuple) else p)]
    return cls(kept, **config.kwargs(**updates))


# ----- problems ---------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """Parameters and per-parameter states after one step."""

    params: list[Tensor]
    states: list[dict[str, Tensor]]


def snapshot(opt: Optimizer, params: list[Tensor]) -> Snapshot:
    return Snapshot([p.detach().clone() for p in params],
                    [{k: v.detach().clone() for k, v in opt.state[p].items()} for p in params])


def scenario(build: Callable[[list[Tensor]], Optimizer], dtype: torch.dtype,
             steps: int = STEPS) -> list[Snapshot]:
    """torch's comparison scenario: a 2-3-1 sigmoid network, a step with every gradient
    ``None`` (step 2), a layer frozen for two steps (3, 4: its gradients stay ``None``), plus a
    0-dim and a zero-element parameter with gradients at the first step only."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(),
                                torch.nn.Linear(3, 1), torch.nn.Sigmoid()).to(dtype)
    scalar = torch.rand((), dtype=dtype, requires_grad=True)
    empty = torch.zeros(0, dtype=dtype, requires_grad=True)
    scalar.grad, empty.grad = torch.rand_like(scalar), torch.zeros_like(empty)
    params = [*model.parameters(), scalar, empty]
    opt = build(params)
    x = torch.arange(1, 7, dtype=dtype).reshape(3, 2) / 10
    out = []
    for i in range(steps):
        model[2].requires_grad_(i not in (3, 4))
        if i != 2:
            model(x).sum().backward()
        opt.step()
        out.append(snapshot(opt, params))
        opt.zero_grad()
    return out


def linear_problem(dtype: torch.dtype, name: str = ""
                   ) -> tuple[list[Parameter], Callable[[], Tensor]]:
    """torch's small regression: ``|W x + b|^2`` with W 10x5, b 10 (a 10x1 column for the
    optimizer ``name`` if it takes matrices only); returns the parameters and a function that
    sets their gradients and returns the loss."""
    weight = Parameter(torch.randn(10, 5, dtype=dtype))
    bias = Parameter(torch.randn(10, dtype=dtype))
    if name in MATRIX_ONLY:
        bias = Parameter(bias.detach().unsqueeze(1))
    x = torch.randn(5, dtype=dtype)

    def loss_and_grads() -> Tensor:
        weight.grad = bias.grad = None
        loss = (weight.mv(x) + bias.view(-1)).pow(2).sum()
        loss.backward()
        return loss

    return [weight, bias], loss_and_grads


def compare(actual: list[Snapshot], expected: list[Snapshot], rtol: float, what: str) -> None:
    """Every step's parameters and states: equal (``rtol == 0``, bit for bit, same dtypes) or
    within ``rtol`` (per-tensor relative error); the same state keys and state dtypes."""
    assert len(actual) == len(expected)
    layout = []  # checked last, so that a state-layout difference does not hide the numbers
    for i, (a, e) in enumerate(zip(actual, expected)):
        pairs = [(f"parameter {j}", pa, pe) for j, (pa, pe) in enumerate(zip(a.params, e.params))]
        for j, (sa, se) in enumerate(zip(a.states, e.states)):
            if sorted(sa) != sorted(se):
                layout.append(f"step {i}, parameter {j}: state keys {sorted(sa)} vs {sorted(se)}")
            pairs += [(f"state {k!r} of parameter {j}", sa[k], se[k]) for k in se if k in sa]
        for where, ta, te in pairs:
            assert ta.dtype == te.dtype and ta.shape == te.shape, (
                f"{what}: step {i}, {where}: {ta.dtype}{tuple(ta.shape)} against "
                f"{te.dtype}{tuple(te.shape)}")
            if rtol == 0:
                assert torch.equal(ta, te), f"{what}: step {i}, {where}: not bit-identical"
            else:
                err = max_relative_error([ta], [te])
                assert err <= rtol, (f"{what}: step {i}, {where}: relative error {err:.2e} > "
                                     f"{rtol:.1e}")
    assert not layout, f"{what}: {layout[0]}"


def steps_like(opts: list[Optimizer], groups: list[list[Tensor]], n: int) -> None:
    """``n`` steps of each optimizer with the same random gradients."""
    for _ in range(n):
        for ps in zip(*groups):
            g = torch.randn_like(ps[0])
            for p in ps:
                p.grad = g.clone()
        for opt in opts:
            opt.step()


# ----- the database itself ---------------------------------------------------------------------
@pytest.mark.parametrize("info", optim_db, ids=lambda info: info.name)
def test_optim_db_entry_has_a_twin(info: Any) -> None:
    """Each optim_db entry with an optimlab twin takes torch's argument names and defaults."""
    if info.name not in (*NAMES, *CLOSURE_NAMES):
        pytest.skip(f"optimlab has no {info.name}")
    theirs = inspect.signature(info.optim_cls.__init__).parameters
    ours = inspect.signature(getattr(ol, info.name).__init__).parameters
    for arg, p in theirs.items():
        assert arg in ours, f"{info.name} lacks torch's argument {arg!r}"
        assert ours[arg].kind == p.kind and repr(ours[arg].default) == repr(p.default), (
            f"{info.name}({arg}): {ours[arg]} where torch has {p}")


# ----- errors -----------------------------------------------------------------------------------
def numbered(descs: list[str]) -> list[str]:
    """Test ids from torch's names, ``#2``, ``#3``... on a name's repeats."""
    seen: dict[str, int] = {}
    out = []
    for desc in map(slug, descs):
        seen[desc] = seen.get(desc, 0) + 1
        out.append(desc if seen[desc] == 1 else f"{desc}#{seen[desc]}")
    return out


def error_cases() -> list[Any]:
    out = []
    for name in (*NAMES, *CLOSURE_NAMES):
        errs = INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32)
        ids = numbered([e.optimizer_error_input.desc for e in errs])
        out += [pytest.param(name, torch.float32, i, id=f"{name}-float32-{desc}")
                for i, desc in enumerate(ids)]
    return out


#: Arguments torch's messages spell out in words rather than by name.
SPELLED = {"adjust_lr_fn": "adjust learning rate function"}


def argument_patterns(kwargs: dict[str, Any], torch_regex: str) -> list[str]:
    """Words that name the offending argument: the keyword arguments torch's message names
    (``betas`` also as ``beta``, a tuple's ``eps`` also as ``epsilon1``, ``SPELLED`` names in
    words), else ``param`` (the inputs about the parameters)."""
    text = torch_regex.replace("\\", "")
    words = [w for k in kwargs
             if any(re.search(rf"\b{w}", text, re.IGNORECASE)
                    for w in (k, k.rstrip("s"), SPELLED.get(k, k)))
             for w in {k, k.rstrip("s"), SPELLED.get(k, k)}]
    return [rf"\b{w}" for w in words] or ["param"]


def torch_implementation_limit(kwargs: dict[str, Any]) -> bool:
    """Inputs torch refuses because its multi-tensor kernels cannot take tensor hyperparameters
    without capturable: a limit of torch's implementation, not an invalid input."""
    def holds_tensor(value: Any) -> bool:
        return isinstance(value, Tensor) or (isinstance(value, (tuple, list))
                                             and any(isinstance(v, Tensor) for v in value))

    return kwargs.get("foreach") is True and any(holds_tensor(v) for v in kwargs.values())


def assert_steps_as_torch_forloop(name: str, kwargs: dict[str, Any]) -> None:
    ps, set_grads = linear_problem(torch.float32, name)
    qs = [Parameter(p.detach().clone()) for p in ps]
    ours = getattr(ol, name)(ps, **kwargs)
    theirs = INFOS[name].optim_cls(qs, **{**kwargs, "foreach": False})
    for _ in range(5):
        set_grads()
        for p, q in zip(ps, qs):
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    err = max_relative_error([p.detach() for p in ps], [q.detach() for q in qs])
    assert err <= tolerance(torch.float32, 5, name=name), f"vs torch.optim's for-loop: {err:.2e}"


@pytest.mark.parametrize(("name", "dtype", "index"), error_cases())
def test_error_inputs(name: str, dtype: torch.dtype, index: int) -> None:
    err = INFOS[name].optim_error_inputs_func(device="cpu", dtype=dtype)[index]
    inp = err.optimizer_error_input
    # torch checks its arguments before it reads ``params`` (None in these inputs); any
    # parameters will do, and torch itself is checked to fail the same way with them.
    params = inp.params if inp.params is not None else [Parameter(torch.randn(2, 3))]
    kwargs = inp.kwargs
    expected = err.error_type
    patterns = argument_patterns(kwargs, err.error_regex)

    def attempt(cls: type[Optimizer]) -> Any:
        opt = cls(params, **kwargs)
        if err.error_on == OptimizerErrorEnum.STEP_ERROR:
            opt.step()
        return opt

    def check(cls: type[Optimizer]) -> None:
        if issubclass(expected, Warning):
            with pytest.warns(expected) as record:
                attempt(cls)
            message = " ".join(str(w.message) for w in record if w.category is expected)
        else:
            with pytest.raises(expected) as info:
                attempt(cls)
            message = str(info.value)
        assert any(re.search(p, message, re.IGNORECASE) for p in patterns), (
            f"{cls.__module__}.{cls.__name__}: {message!r} names none of {patterns}")

    check(INFOS[name].optim_cls)  # the oracle, with the parameters used here
    ours = getattr(ol, name)
    if not torch_implementation_limit(kwargs):
        check(ours)
        return
    try:  # optimlab may refuse as torch does, or accept and step as torch's for-loop does
        attempt(ours)
    except expected:
        check(ours)
    else:
        assert_steps_as_torch_forloop(name, kwargs)


def capturable_cases() -> list[Any]:
    """optim_db's capturable configurations (it lists them for CUDA only), run on the CPU."""
    out = []
    for name in NAMES:
        inputs = INFOS[name].optim_inputs_func(device="cuda")
        ids = numbered([inp.desc for inp in inputs])
        out += [pytest.param(name, i, id=f"{name}-float32-{ids[i]}")
                for i, inp in enumerate(inputs) if inp.kwargs.get("capturable")]
    return out


@pytest.mark.parametrize(("name", "index"), capturable_cases())
def test_capturable_is_refused(name: str, index: int) -> None:
    """optimlab refuses capturable=True (documented) at construction, naming it; on the CPU
    torch.optim refuses these configurations too (at the first step), so the refusal is
    torch's. (On CUDA it would be optimlab's own: this file runs on the CPU.)"""
    kwargs = INFOS[name].optim_inputs_func(device="cuda")[index].kwargs
    p = Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    with pytest.raises((AssertionError, RuntimeError, ValueError)):
        INFOS[name].optim_cls([p], **kwargs).step()
    with pytest.raises(ValueError, match="capturable"):
        getattr(ol, name)([p], **kwargs)


# ----- numerics ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("config", "dtype"), cases())
def test_matches_torch(config: Config, dtype: torch.dtype) -> None:
    """optimlab equals torch.optim's for-loop (torch's ground truth), states included."""
    ours = scenario(lambda ps: make("ol", config, ps), dtype)
    theirs = scenario(lambda ps: make("torch", config, ps), dtype)
    if config.name in ("SGD", "Muon"):
        # optimlab's SGD and Muon keep a per-parameter ``step`` count that torch's do not
        # (README, "Optimizers"); every other state key and value is compared
        for snap in ours:
            for st in snap.states:
                st.pop("step", None)
    compare(ours, theirs, tolerance(dtype, name=config.name), "optimlab vs torch.optim")


@pytest.mark.parametrize(("config", "dtype"), cases())
def test_foreach_matches_forloop(config: Config, dtype: torch.dtype) -> None:
    """Bit for bit: both paths run the same rules, on lists of one tensor or of all of them
    (torch's CPU foreach kernels loop over the same per-tensor kernels)."""
    forloop = scenario(lambda ps: make("ol", config, ps, foreach=False), dtype)
    foreach = scenario(lambda ps: make("ol", config, ps, foreach=True), dtype)
    compare(foreach, forloop, 0.0, "foreach=True vs foreach=False")


@pytest.mark.parametrize(("config", "dtype"), cases(NUMERIC_IMPLS))
def test_tensor_lr(config: Config, dtype: torch.dtype) -> None:
    """A tensor lr steps as the float it holds (torch.tensor(1e-3) is float32), and as
    torch.optim's for-loop with the same tensor lr (both within float32 scalar roundoff)."""
    lr = torch.tensor(1e-3)
    p1 = linear_problem(dtype, config.name)[0]
    p2, p3 = ([Parameter(p.detach().clone()) for p in p1] for _ in range(2))
    try:
        tensor_lr = make("ol", config, p2, lr=lr.clone())
    except ValueError as e:  # Adam/AdamW with foreach=True refuse, as torch.optim does
        assert config.name in ("Adam", "AdamW") and config.impl == "foreach"
        assert "lr as a Tensor is not supported" in str(e)
        with pytest.raises(ValueError, match="lr as a Tensor"):
            make("torch", config, p3, lr=lr.clone())
        return
    opts = [make("ol", config, p1, lr=lr.item()), tensor_lr,
            make("torch", config, p3, lr=lr.clone(), foreach=False)]
    steps_like(opts, [p1, p2, p3], 5)
    # The float lr and the tensor's value are the same number; the tensor's arithmetic with
    # the step's other scalars may round in float32 (torch's too).
    rtol = tolerance(dtype, 5, f32_scalars=True)
    for label, ps in (("float lr", p1), ("torch.optim, tensor lr", p3)):
        err = max_relative_error([p.detach() for p in p2], [p.detach() for p in ps])
        assert err <= rtol, f"tensor lr vs {label}: {err:.2e} > {rtol:.1e}"


def supports_complex(c: Config) -> bool:
    return INFOS[c.name].supports_complex


@pytest.mark.parametrize(("config", "dtype"),
                         cases(NUMERIC_IMPLS, (torch.complex64,), supports_complex))
def test_complex(config: Config, dtype: torch.dtype) -> None:
    """Complex parameters step as their ``view_as_real`` twins (bit for bit: optimlab steps
    the real view), mixed with a real parameter, and as torch.optim's complex step."""
    torch.manual_seed(0)
    cplx = [torch.randn(10, 5, dtype=dtype, requires_grad=True),
            torch.randn(10, dtype=dtype, requires_grad=True),
            torch.randn(10, 5, requires_grad=True)]
    real = [(torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_()
            for p in cplx]
    twin = [p.detach().clone().requires_grad_() for p in cplx]
    opts = [make("ol", config, cplx), make("ol", config, real),
            make("torch", config, twin, foreach=False)]
    for _ in range(3):
        for c, r, t in zip(cplx, real, twin):
            r.grad = torch.randn_like(r)
            c.grad = torch.view_as_complex(r.grad) if c.is_complex() else r.grad.clone()
            t.grad = c.grad.clone()
        for opt in opts:
            opt.step()
        as_real = [torch.view_as_real(p.detach()) if p.is_complex() else p.detach()
                   for p in cplx]
        for j, (a, b) in enumerate(zip(as_real, real)):
            assert torch.equal(a, b), f"complex vs view_as_real: parameter {j}"
    for j, (a, b) in enumerate(zip(cplx, twin)):
        err = max_relative_error([torch.view_as_real(a.detach()) if a.is_complex() else a.detach()],
                                 [torch.view_as_real(b.detach()) if b.is_complex() else b.detach()])
        assert err <= tolerance(torch.float32, 3), f"vs torch.optim: parameter {j}: {err:.2e}"


@pytest.fixture
def float64_default() -> Iterator[None]:
    """float64 as the default dtype: both libraries then keep ``step`` in float64 (else
    float32, whose roundoff torch's differentiable Adam amplifies by 1 / (1 - beta2^t))."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.usefixtures("float64_default")
@pytest.mark.parametrize(("config", "dtype"), cases(("differentiable",), (torch.float64,)))
def test_differentiable_step_matches_torch(config: Config, dtype: torch.dtype) -> None:
    """With differentiable=True a step is part of the graph: the gradient of the stepped
    parameter and states with respect to the parameter, the gradient and the incoming states
    equals the one through torch.optim's differentiable step. As in torch's own differentiable
    tests, the incoming state is an input (made by a torch.optim step, given to both as copies
    of leaves): torch detaches SGD's first momentum buffer, so a first step is not compared."""
    torch.manual_seed(0)
    w0, g0, weights, g_first = (torch.randn(3, 2, dtype=dtype) for _ in range(4))
    w0.requires_grad_()
    g0.requires_grad_()
    seed = w0.detach().clone()
    maker = make("torch", config, [seed])
    seed.grad = g_first
    maker.step()
    start = dict(maker.state[seed])
    leaves = {k: v.detach().clone().requires_grad_() for k, v in start.items() if v.dim() > 0}

    def through(library: str) -> dict[str, Tensor | None]:
        p = w0.clone()
        opt = make(library, config, [p])
        for k, v in start.items():
            opt.state[p][k] = leaves[k].clone() if k in leaves else v.clone()
        p.grad = g0
        opt.step()
        state = opt.state[p]
        out = (p * weights).sum() + sum((state[k] * weights).sum() for k in leaves)
        grads = torch.autograd.grad(out, (w0, g0, *leaves.values()), allow_unused=True)
        return dict(zip(["param", "grad", *(f"state {k!r}" for k in leaves)], grads))

    theirs, ours = through("torch"), through("ol")
    for what, b in theirs.items():
        a = ours[what]
        assert (a is None) == (b is None), f"d/d{what}: {a} vs {b}"
        if b is not None:
            err = max_relative_error([a], [b])
            assert err <= tolerance(dtype, 1), f"d/d{what}: {err:.2e}"


def sparse_cases() -> list[Any]:
    """torch's sparse configurations: its configs without the keys of ``metadata_for_sparse``
    (which then sets them, e.g. lr), duplicates dropped."""
    out = []
    for name in NAMES:
        info = INFOS[name]
        if not info.supports_sparse:
            continue
        updates, _schedulers = info.metadata_for_sparse
        seen = set()
        for c in configs(name, NUMERIC_IMPLS):
            kept = {k: v for k, v in c.kwargs().items() if k not in updates}
            key = repr(sorted(kept.items()))
            if key not in seen:
                seen.add(key)
                out.append(pytest.param(c, {**kept, **updates},
                                        id=f"{name}-float64-{c.id}"))
    return out


@pytest.mark.parametrize(("config", "kwargs"), sparse_cases())
def test_sparse_gradients(config: Config, kwargs: dict[str, Any]) -> None:
    """Uncoalesced sparse gradients (each row's entry split in two halves, g/2 + g/2 = g
    exactly) step as the dense gradient does and as torch.optim's sparse step, on an
    embedding-like least-squares problem (rows drawn at each step)."""
    dtype, steps = torch.float64, STEPS
    torch.manual_seed(0)
    target = torch.randn(6, 3, dtype=dtype)
    start = torch.randn(6, 3, dtype=dtype)
    ps = [Parameter(start.clone()) for _ in range(3)]
    cls_ol, cls_torch = getattr(ol, config.name), INFOS[config.name].optim_cls
    opts = [cls_ol([ps[0]], **kwargs), cls_ol([ps[1]], **kwargs), cls_torch([ps[2]], **kwargs)]
    for step in range(steps):
        rows = torch.tensor([step % 6, (step + 3) % 6, (step + 1) % 6])
        for i, p in enumerate(ps):
            g = (p.detach() - target)[rows]
            idx = torch.cat([rows, rows]).unsqueeze(0)
            sparse = torch.sparse_coo_tensor(idx, torch.cat([g / 2, g / 2]), p.shape,
                                             check_invariants=True)
            p.grad = sparse.to_dense() if i == 1 else sparse
        for opt in opts:
            opt.step()
    # Per step a few roundoffs of the parameter apart (torch adds the two halves to it one after
    # the other); the loss has Hessian I and lr <= 0.1, so a difference grows by at most 1.1 a
    # step, within GROWTH over STEPS.
    rtol = tolerance(dtype, steps)
    for label, other in (("dense gradient", ps[1]), ("torch.optim", ps[2])):
        err = max_relative_error([ps[0].detach()], [other.detach()])
        assert err <= rtol, f"sparse vs {label}: {err:.2e} > {rtol:.1e}"


@pytest.mark.parametrize(("config", "dtype"), cases(dtypes=(torch.float32,)))
def test_param_groups_weight_decay(config: Config, dtype: torch.dtype) -> None:
    """The config for the weight, no weight decay for the bias: the loss goes the right way,
    and as torch.optim's."""
    runs = []
    maximize = config.kwargs().get("maximize", False)
    for library in ("ol", "torch"):
        torch.manual_seed(0)
        (weight, bias), loss_fn = linear_problem(dtype, config.name)
        cls = getattr(ol, config.name) if library == "ol" else INFOS[config.name].optim_cls
        # The config is also given as the defaults: torch.optim.Adagrad fills ``sum`` from
        # its constructor's initial_accumulator_value, not from the group's.
        opt = cls([dict(params=[weight], **config.kwargs()),
                   dict(params=[bias], **config.kwargs(weight_decay=0.0))], **config.kwargs())
        assert opt.param_groups[1]["weight_decay"] == 0.0
        first = loss_fn().item()
        for _ in range(20):
            loss_fn()
            opt.step()
        last = loss_fn().item()
        assert (last > first) if maximize else (last < first), (library, first, last)
        runs.append((weight.detach(), bias.detach()))
    err = max_relative_error(runs[0], runs[1])
    assert err <= tolerance(dtype, 20, name=config.name), f"vs torch.optim: {err:.2e}"


@pytest.mark.parametrize(("config", "dtype"), cases(dtypes=(torch.float32,)))
def test_param_groups_lr(config: Config, dtype: torch.dtype) -> None:
    """A group at lr=1e-28 stays put (each update is below half an ulp of its O(1) entries)
    while the config's group (lr >= 1e-3) lowers the loss."""
    kwargs = config.kwargs()
    if "lr" not in kwargs or kwargs["lr"] == 0:
        kwargs["lr"] = 1e-3
    torch.manual_seed(0)
    (weight, bias), loss_fn = linear_problem(dtype, config.name)
    idle = Parameter(torch.randn(2, 1, dtype=dtype) if config.name in MATRIX_ONLY
                     else torch.randn(2, dtype=dtype))
    before = idle.detach().clone()
    # Rprop's step size is clamped to at least step_sizes[0] (1e-6 by default): the idle group
    # lets it shrink to 0 so that lr decides (1e-28 * 1.2**20 is still far below an ulp).
    idle_group = {"step_sizes": (0.0, 50.0)} if config.name == "Rprop" else {}
    opt = getattr(ol, config.name)([dict(params=[weight, bias], **kwargs),
                                    dict(params=[idle], **idle_group)], lr=1e-28)
    first = loss_fn().item()
    for _ in range(20):
        loss_fn()
        idle.grad = torch.rand_like(idle)
        opt.step()
    last = loss_fn().item()
    assert (last > first) if kwargs.get("maximize", False) else (last < first), (first, last)
    assert torch.equal(idle.detach(), before)


# ----- steps that change nothing ---------------------------------------------------------------
@pytest.mark.parametrize(("config", "dtype"), cases(ALL_IMPLS, (torch.float32,)))
def test_step_without_grads_is_a_noop(config: Config, dtype: torch.dtype) -> None:
    params = [torch.randn(2, 3, dtype=dtype) for _ in range(2)]
    before = [p.clone() for p in params]
    opt = make("ol", config, params)
    assert opt.step(lambda: torch.tensor([1.0])).item() == 1.0
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(len(opt.state.get(p, {})) == 0 for p in params)


def without_decay(c: Config) -> bool:
    return c.kwargs().get("weight_decay", 0) == 0


def no_decay(name: str) -> dict[str, Any]:
    """Arguments that switch off every decay of the parameter ``name`` has: weight decay, and
    ASGD's ``lambd`` (it scales the parameter by ``1 - lambd * eta`` at every step)."""
    args = inspect.signature(getattr(ol, name).__init__).parameters
    out: dict[str, Any] = {"weight_decay": 0.0} if "weight_decay" in args else {}
    if name == "ASGD":
        out["lambd"] = 0.0
    return out


@pytest.mark.parametrize(("config", "dtype"), cases(ALL_IMPLS, (torch.float32,), without_decay))
def test_step_with_zero_grads_is_a_noop(config: Config, dtype: torch.dtype) -> None:
    """Zero gradients and no decay (AdamW's default 1e-2 set to 0, ASGD's lambd too): every
    rule's update is exactly 0 (0 / (sqrt(0) + eps), momentum of 0, Rprop's sign(0), ...), so the
    parameter keeps its bits."""
    param = torch.randn(5, 1, dtype=dtype, requires_grad=True)
    before = param.detach().clone()
    p = param.clone() if config.impl == "differentiable" else param  # not a leaf: as torch's
    opt = make("ol", config, [p], **no_decay(config.name))
    p.grad = torch.zeros_like(p)
    for _ in range(3):
        opt.step()
    assert torch.equal(p.detach(), before)


# ----- the object ------------------------------------------------------------------------------
@pytest.mark.parametrize(("config", "dtype"), cases(ALL_IMPLS, (torch.float32,)))
def test_printing(config: Config, dtype: torch.dtype) -> None:
    params = [Parameter(torch.randn(2, 3, dtype=dtype)) for _ in range(2)]
    text = repr(make("ol", config, params))
    assert text.startswith(config.name) and "Parameter Group 0" in text
    for key in config.kwargs():
        assert f"    {key}: " in text, f"{key} missing from {text}"


@pytest.mark.parametrize(("config", "dtype"), cases(NUMERIC_IMPLS, (torch.float32,)))
def test_deepcopy(config: Config, dtype: torch.dtype) -> None:
    """A deep copy has every public attribute and steps as the original."""
    params = [Parameter(torch.randn(2, 3, dtype=dtype)) for _ in range(2)]
    opt = make("ol", config, params)
    steps_like([opt], [params], 3)
    clone = copy.deepcopy(opt)

    def public(obj: object) -> set[str]:
        return {k for k in vars(obj) if not k.startswith("_")}

    assert public(clone) == public(opt)
    for k in public(opt) - {"state", "param_groups"}:
        assert repr(getattr(clone, k)) == repr(getattr(opt, k)), k
    copies = clone.param_groups[0]["params"]
    steps_like([opt, clone], [params, copies], 2)
    compare([snapshot(clone, copies)], [snapshot(opt, params)], 0.0, "deepcopy")


class HookChecks:
    """Sub-checks of one test, each on a fresh optimizer; failures are collected and reported
    together so that one broken hook does not hide the others."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def run(self, label: str, check: Callable[[], None]) -> None:
        try:
            check()
        except Exception as e:  # reported below, with the name of the check
            self.failures.append(f"{label}: {type(e).__name__}: {e}")

    def done(self) -> None:
        assert not self.failures, "\n".join(self.failures)


def sd_pre_hook(opt: Optimizer) -> None:
    opt.state["marker"] = 1


def sd_post_hook(opt: Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
    sd["saw_marker"] = sd["state"].pop("marker", None) == 1
    return sd


def load_pre_hook_in_place(opt: Optimizer, sd: dict[str, Any]) -> None:
    sd["param_groups"][0]["lr"] = 0.002


def load_pre_hook_returning(opt: Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(sd)
    new["param_groups"][0]["lr"] = 0.003
    return new


def load_post_hook_writing_state(opt: Optimizer) -> None:
    opt.state["lr_was_0.003"] = bool(opt.param_groups[0]["lr"] == 0.003)
    opt.state["post_hook_ran"] = True


@pytest.mark.parametrize(("config", "dtype"), cases(ALL_IMPLS, (torch.float32,)))
def test_state_dict_hooks(config: Config, dtype: torch.dtype) -> None:
    checks = HookChecks()

    def fresh() -> tuple[Optimizer, Tensor]:
        p = torch.rand(2, 3, dtype=dtype, requires_grad=True)
        if config.impl == "differentiable":
            p = p.clone()  # a differentiable step updates a non-leaf, as in torch's tests
        return make("ol", config, [p]), p

    def pre() -> None:
        opt, _ = fresh()
        opt.register_state_dict_pre_hook(sd_pre_hook)
        assert opt.state_dict()["state"]["marker"] == 1

    def post() -> None:
        opt, _ = fresh()
        opt.register_state_dict_post_hook(sd_post_hook)
        assert opt.state_dict()["saw_marker"] is False

    def pre_post() -> None:
        opt, _ = fresh()
        opt.register_state_dict_pre_hook(sd_pre_hook)
        opt.register_state_dict_post_hook(sd_post_hook)
        sd = opt.state_dict()
        assert "marker" not in sd["state"] and sd["saw_marker"] is True

    def load_pre_and_prepend() -> None:
        opt, _ = fresh()
        sd = opt.state_dict()
        opt.register_load_state_dict_pre_hook(load_pre_hook_in_place)
        opt.load_state_dict(sd)
        assert opt.param_groups[0]["lr"] == 0.002
        opt.register_load_state_dict_pre_hook(load_pre_hook_returning, prepend=True)
        opt.load_state_dict(sd)
        assert opt.param_groups[0]["lr"] == 0.002  # the in-place hook runs last

    def load_post_writes_state() -> None:
        opt, p = fresh()
        p.grad = torch.rand_like(p)
        opt.step()  # a real state beside the hook's entries
        opt.register_load_state_dict_post_hook(load_post_hook_writing_state)
        opt.load_state_dict(opt.state_dict())
        assert opt.state["lr_was_0.003"] is False and opt.state["post_hook_ran"] is True
        opt.step()  # the entries the hook wrote do not disturb the step

    def load_pre_post() -> None:
        opt, _ = fresh()
        opt.register_load_state_dict_pre_hook(load_pre_hook_returning)
        opt.register_load_state_dict_post_hook(load_post_hook_writing_state)
        opt.load_state_dict(opt.state_dict())
        assert opt.state["lr_was_0.003"] is True and opt.state["post_hook_ran"] is True

    for check in (pre, post, pre_post, load_pre_and_prepend, load_post_writes_state,
                  load_pre_post):
        checks.run(check.__name__, check)
    checks.done()


@pytest.mark.parametrize(("config", "dtype"), cases(ALL_IMPLS, (torch.float32,)))
def test_step_hooks(config: Config, dtype: torch.dtype) -> None:
    checks = HookChecks()
    params = [torch.tensor([[1.0, 1.0]], dtype=dtype)]

    def per_instance(kind: str) -> Callable[[], None]:
        def check() -> None:
            opt = make("ol", config, params)
            calls = []
            register = getattr(opt, f"register_step_{kind}_hook")
            handle = register(lambda o, args, kwargs: calls.append(o))
            opt.step()
            opt.step()
            handle.remove()
            opt.step()
            assert calls == [opt, opt]
        return check

    def global_and_local() -> None:
        opt, other = make("ol", config, params), torch.optim.SGD(params)
        order: list[str] = []
        handles = [register_optimizer_step_pre_hook(lambda *a: order.append("global pre")),
                   register_optimizer_step_post_hook(lambda *a: order.append("global post"))]
        try:
            for o in (opt, other):
                handles.append(o.register_step_pre_hook(lambda *a: order.append("pre")))
                handles.append(o.register_step_post_hook(lambda *a: order.append("post")))
            one = ["global pre", "pre", "post", "global post"]
            opt.step()
            other.step()
            opt.step()
            assert order == one * 3, order
        finally:
            for h in handles:
                h.remove()
        opt.step()
        other.step()
        assert order == one * 3, "hooks still called after removal"

    checks.run("pre", per_instance("pre"))
    checks.run("post", per_instance("post"))
    checks.run("global and per-instance", global_and_local)
    checks.done()


@pytest.mark.parametrize(("config", "dtype"), cases(dtypes=(torch.float32,)))
def test_non_empty_state(config: Config, dtype: torch.dtype) -> None:
    model = torch.nn.Linear(5, 5).to(dtype)
    opt = make("ol", config, model.parameters())
    model(torch.rand(2, 5, dtype=dtype)).sum().backward()
    opt.step()
    assert all(len(st) > 0 for st in opt.state.values())


# ----- state dicts -----------------------------------------------------------------------------
def assert_tree_equal(a: Any, b: Any, where: str = "state_dict") -> None:
    """Equal nested dicts/lists with bit-identical tensors (same dtype)."""
    if isinstance(b, Tensor):
        assert isinstance(a, Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(b, dict):
        assert isinstance(a, dict) and sorted(map(str, a)) == sorted(map(str, b)), (
            f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}")
        for k in b:
            assert_tree_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(b, (list, tuple)):
        assert isinstance(a, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tree_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def without_names(sd: dict[str, Any]) -> dict[str, Any]:
    sd = copy.deepcopy(sd)
    for g in sd["param_groups"]:
        g.pop("param_names", None)
    return sd


@pytest.mark.parametrize(("config", "dtype"), cases(NUMERIC_IMPLS, (torch.float32,)))
def test_state_dict_round_trip_is_deterministic(config: Config, dtype: torch.dtype) -> None:
    """A copy loaded from a state dict steps as the original, bit for bit, and ends with an
    equal state dict; the loaded dict is left as it was; repeated groups look the same."""
    torch.manual_seed(0)
    params, loss_fn = linear_problem(dtype, config.name)
    opt = make("ol", config, params)
    for _ in range(10):
        loss_fn()
        opt.step()
    copies = [Parameter(p.detach().clone()) for p in params]
    named = [(f"p{i}", p) for i, p in enumerate(copies)]  # names are optional in a state dict
    clone = make("ol", config, named)
    sd = copy.deepcopy(opt.state_dict())
    kept = copy.deepcopy(sd)
    clone.load_state_dict(sd)
    assert_tree_equal(sd, kept, "the loaded state dict")
    for _ in range(10):
        loss_fn()
        for p, q in zip(params, copies):
            q.grad = p.grad.clone()
        opt.step()
        clone.step()
        for p, q in zip(params, copies):
            assert torch.equal(p, q)
    assert_tree_equal(without_names(clone.state_dict()), without_names(opt.state_dict()))
    clone.param_groups.extend(clone.param_groups)
    assert_tree_equal(without_names(clone.state_dict())["param_groups"][-1],
                      without_names(opt.state_dict())["param_groups"][-1])


@pytest.mark.parametrize(("config", "dtype"), cases(NUMERIC_IMPLS, (torch.float32,)))
def test_save_load_weights_only(config: Config, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    params, loss_fn = linear_problem(dtype, config.name)
    opt = make("ol", config, params)
    for _ in range(3):
        opt.step(loss_fn)
    sd = opt.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    for weights_only in (False, True):
        buf.seek(0)
        assert_tree_equal(torch.load(buf, weights_only=weights_only), sd,
                          f"torch.load(weights_only={weights_only})")


def primed(config: Config, dtype: torch.dtype) -> tuple[Optimizer, Callable[[], Any]]:
    """An optimizer three steps into the linear problem, and its step function."""
    torch.manual_seed(1)
    params, loss_fn = linear_problem(dtype, config.name)
    opt = make("ol", config, params)

    def step() -> None:
        loss_fn()
        opt.step()

    for _ in range(3):
        step()
    return opt, step


@pytest.mark.parametrize(("config", "dtype"), cases(NUMERIC_IMPLS, (torch.float32,)))
def test_load_older_state_dict(config: Config, dtype: torch.dtype) -> None:
    """A checkpoint from before the flags torch added later (foreach, maximize, ...) loads;
    its groups get the optimizer's defaults back, and it steps."""
    opt, step = primed(config, dtype)
    old = copy.deepcopy(opt.state_dict())
    flags = INFOS[config.name].not_og_supported_flags
    for g in old["param_groups"]:
        for flag in flags:
            g.pop(flag, None)
    opt.load_state_dict(old)
    for g in opt.param_groups:
        for flag in flags:
            if flag in opt.defaults:
                assert g[flag] == opt.defaults[flag], flag
    step()
    assert all(torch.isfinite(p).all() for g in opt.param_groups for p in g["params"])


@pytest.mark.parametrize(("config", "dtype"), cases(NUMERIC_IMPLS, (torch.float32,)))
def test_load_nontensor_step(config: Config, dtype: torch.dtype) -> None:
    """``step`` saved as a Python number (torch < 1.12) loads as a tensor and the next step
    is the one the original optimizer takes."""
    opt, _ = primed(config, dtype)
    twin = copy.deepcopy(opt.state_dict())
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():
        if "step" in st:
            st["step"] = st["step"].item()
    params = [p for g in opt.param_groups for p in g["params"]]
    copies = [Parameter(p.detach().clone()) for p in params]
    reference = make("ol", config, copies)
    reference.load_state_dict(twin)
    opt.load_state_dict(sd)
    assert all(isinstance(st.get("step", torch.zeros(())), Tensor) for st in opt.state.values())
    steps_like([opt, reference], [params, copies], 1)
    compare([snapshot(opt, params)], [snapshot(reference, copies)], 0.0, "after the load")


ADAMW = [c for c in cases(dtypes=(torch.float32,)) if c.values[0].name == "AdamW"]


@pytest.mark.parametrize(("config", "dtype"), ADAMW)
def test_adamw_loads_adam_state_dict(config: Config, dtype: torch.dtype) -> None:
    """An AdamW stays decoupled whatever it loads (an Adam state dict, an AdamW checkpoint
    without the key, a deep copy of a group switched off), as torch.optim.AdamW; and it steps as
    torch's AdamW after loading torch's Adam state dict."""
    kwargs = config.kwargs()
    torch.manual_seed(0)
    params = linear_problem(dtype)[0]
    twins = [Parameter(p.detach().clone()) for p in params]
    adam_ol, adam_torch = ol.Adam(params, **kwargs), torch.optim.Adam(twins, **kwargs)
    steps_like([adam_ol, adam_torch], [params, twins], 2)
    for source in (adam_ol, adam_torch):
        assert source.state_dict()["param_groups"][0]["decoupled_weight_decay"] is False
    adamw_ol, adamw_torch = ol.AdamW(params, **kwargs), torch.optim.AdamW(twins, **kwargs)
    # Loading keeps the dict's tensors when their dtype and device fit (torch's too): a copy
    # for each, so the two do not step one state.
    adamw_ol.load_state_dict(copy.deepcopy(adam_torch.state_dict()))
    adamw_torch.load_state_dict(copy.deepcopy(adam_torch.state_dict()))
    assert [g["decoupled_weight_decay"] for g in adamw_ol.param_groups] == [True]
    steps_like([adamw_ol, adamw_torch], [params, twins], 3)
    err = max_relative_error([p.detach() for p in params], [p.detach() for p in twins])
    assert err <= tolerance(dtype, 5), f"vs torch.optim.AdamW: {err:.2e}"

    other = ol.AdamW([Parameter(p.detach().clone()) for p in params], **kwargs)
    other.load_state_dict(copy.deepcopy(adam_ol.state_dict()))
    assert other.param_groups[0]["decoupled_weight_decay"] is True
    old = copy.deepcopy(adamw_ol.state_dict())
    del old["param_groups"][0]["decoupled_weight_decay"]
    other.load_state_dict(old)
    assert other.param_groups[0]["decoupled_weight_decay"] is True
    other.param_groups[0]["decoupled_weight_decay"] = False
    assert copy.deepcopy(other).param_groups[0]["decoupled_weight_decay"] is True


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Adam"])
def test_fused_smoke(name: str) -> None:
    """optimlab's fused=True (torch.compile of the same rules) in torch's scenario: equal to
    the eager path up to the reassociation a compiler may do (float32 bound, as vs torch)."""
    config = configs(name, ("forloop",))[0]
    eager = scenario(lambda ps: make("ol", config, ps), torch.float32)
    fused = scenario(lambda ps: make("ol", config, ps, foreach=None, fused=True), torch.float32)
    compare(fused, eager, tolerance(torch.float32), "fused=True vs eager")
