"""The torch.optim contract, checked for every named optimizer and for ``optimlab.chain``.

Every case pairs an optimlab optimizer with a torch reference built from torch.optim (the two
chain cases use torch.optim.AdamW, plus global-norm clipping and an L1 soft-threshold for the
full chain), so most properties are checked both on their own and against torch.

Gradients are synthetic and deterministic (``set_grads``): ``g = p - 0.5 + 0.5 * noise_t``, with
the noise seeded by step and parameter index, so two optimizers fed the same parameters see
the same gradients and a small rounding difference does not get amplified by a loss landscape.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim import lr_scheduler
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.optim.swa_utils import SWALR, AveragedModel

import optimlab as ol
from optimlab import transforms as T

SHAPES = [(4, 3), (3,), (2, 2, 2)]


# ----- parameters and gradients -----------------------------------------------------------------
def make_params(dtype: torch.dtype = torch.float32, seed: int = 0,
                shapes: Iterable[tuple[int, ...]] | None = None) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = SHAPES if shapes is None else shapes  # the case's own (see _case_shapes)
    out = []
    for s in shapes:
        if dtype.is_complex:
            x = torch.randn(s, generator=gen, dtype=torch.complex64)
        else:
            x = torch.randn(s, generator=gen)
        out.append(nn.Parameter(x.to(dtype)))
    return out


def clone_params(ps: Iterable[Tensor], dtype: torch.dtype | None = None) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone().to(dtype or p.dtype)) for p in ps]


def grad_for(p: Tensor, t: int, i: int) -> Tensor:
    gen = torch.Generator().manual_seed(1000 * t + i)
    if p.is_complex():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.complex64)
    else:
        noise = torch.randn(p.shape, generator=gen)
    return (p.detach() - 0.5) + 0.5 * noise.to(p.dtype)


def set_grads(params: list[Tensor], t: int, skip: Iterable[int] = (), sign: float = 1.0) -> None:
    skip = set(skip)
    for i, p in enumerate(params):
        p.grad = None if i in skip else sign * grad_for(p, t, i)


def run(opt: torch.optim.Optimizer, params: list[Tensor], steps: int, start: int = 0,
        sched: Any = None, **kw: Any) -> None:
    for t in range(start, start + steps):
        set_grads(params, t, **kw)
        opt.step()
        if sched is not None:
            sched.step()


def snapshot(opt: torch.optim.Optimizer, params: list[Tensor]) -> tuple[list[Tensor], Any]:
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"])


def assert_same_state(a: Any, b: Any) -> None:
    """Bitwise equality of two nested state structures (NaN == NaN)."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.view(-1).view(torch.uint8) if a.numel() else a,
                           b.view(-1).view(torch.uint8) if b.numel() else b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    else:
        assert a == b


def bit_equal(xs: list[Tensor], ys: list[Tensor]) -> None:
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert_same_state(x.detach(), y.detach())


def close(xs: list[Tensor], ys: list[Tensor], rtol: float = 1e-6, atol: float | None = None,
          case: Case | None = None, **kw: Any) -> None:
    """Relative agreement (parameters are O(1), so ``atol`` defaults to ``rtol``).

    Why 1e-6 in float32: optimlab and torch.optim evaluate the same formulas with a few
    operations reordered or folded; what differs per step is how ``p`` is rounded (torch's
    NAdam adds its two terms and its decoupled decay to ``p`` one after the other), each
    rounding at most half an ulp, ``2**-24 |p|``. The other reorderings cost a few ulps of the
    update, which is ``lr`` (<= 0.05) times an O(1) direction: over 30x below an ulp of
    ``p``. The synthetic gradients feed a difference back only through
    ``g = p - 0.5 + noise``, which every rule damps, so over ``n <= 30`` steps the differences
    add up without amplification: ~sqrt(n) half-ulps for unbiased roundings, a systematic
    ~n/4 ulp for NAdam's double rounding (measured 8 ulp of |p| ~ 1.9 after 30 steps, the worst
    case, a third of the bound; within 10% of that under AVX-512, AVX2 and scalar kernels: the
    operations are IEEE-exact element by element, only FMA contraction differs).
    ``1e-6 * (1 + |p|)`` is >= 12 ulp of any ``|p| < 4`` (24 ulp at 1.9); only all 30 steps
    rounding the same way (15-30 ulp) could exceed it.
    """
    if case is not None:
        rtol = max(rtol, case.rtol32)
    atol = rtol if atol is None else atol
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=rtol, atol=atol, **kw)


def state_tensors(opt: torch.optim.Optimizer) -> list[tuple[Any, str, Tensor]]:
    return [(pid, k, v) for pid, st in opt.state_dict()["state"].items()
            for k, v in st.items() if isinstance(v, Tensor)]


@pytest.fixture(autouse=True)
def _case_shapes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a case that declares its own parameter shapes on those shapes."""
    callspec = getattr(request.node, "callspec", None)
    case = callspec.params.get("case") if callspec is not None else None
    if isinstance(case, Case) and case.shapes is not None:
        monkeypatch.setattr(sys.modules[__name__], "SHAPES", case.shapes)


def matrices_only(case: Case) -> None:
    """Skip a test whose parameters are not the case's shapes (vectors, 3-D tensors)."""
    if case.shapes is not None:
        pytest.skip(f"{case.name} takes parameters of shapes {case.shapes} only")


# ----- the cases ---------------------------------------------------------------------------------
def chain_adamw(params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                maximize: bool = False, nonfinite: str = "ignore",
                foreach: bool | None = None) -> ol.ChainOptimizer:
    """AdamW written as a chain."""
    return ol.chain(params, T.scale_by_adam(*betas, eps=eps, amsgrad=amsgrad),
                    T.add_decayed_weights(weight_decay), lr=lr, maximize=maximize,
                    nonfinite=nonfinite, foreach=foreach)


def chain_full(params: Any, lr: float = 1e-3, max_norm: float = 1.0,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 1e-2, l1: float = 1e-3, maximize: bool = False,
               nonfinite: str = "ignore", foreach: bool | None = None) -> ol.ChainOptimizer:
    """Global-norm clipping, Adam, decoupled decay and the L1 proximal step."""
    return ol.chain(params, T.clip_by_global_norm(max_norm), T.scale_by_adam(*betas, eps=eps),
                    T.add_decayed_weights(weight_decay), T.l1_proximal(l1), lr=lr,
                    maximize=maximize, nonfinite=nonfinite, foreach=foreach)


class RefClipAdamWL1(torch.optim.AdamW):
    """torch reference of ``chain_full``: clip_grad_norm_ over every group (each group's own
    ``max_norm``), torch.optim.AdamW, then ``p <- sign(p) max(|p| - lr * l1, 0)``."""

    def __init__(self, params: Any, max_norm: float = 1.0, l1: float = 1e-3,
                 **kw: Any) -> None:
        super().__init__(params, **kw)
        self.defaults.update(max_norm=max_norm, l1=l1)
        for g in self.param_groups:
            g.setdefault("max_norm", max_norm)
            g.setdefault("l1", l1)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grad = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        total = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in with_grad]))
        saved = []
        for g in self.param_groups:
            coef = torch.clamp(g["max_norm"] / (total + 1e-6), max=1.0)
            for p in g["params"]:
                if p.grad is not None:
                    saved.append((p, p.grad))
                    p.grad = p.grad * coef
        super().step()
        for p, grad in saved:
            p.grad = grad
        for g in self.param_groups:
            t = g["lr"] * g["l1"]
            for p in g["params"]:
                if p.grad is not None:
                    p.sub_(p.clamp(-t, t))
        return loss


@dataclass
class Case:
    name: str
    ours: Callable[..., torch.optim.Optimizer]
    ref: Callable[..., torch.optim.Optimizer]
    kwargs: dict[str, Any]
    alt: dict[str, Any]  # overrides for a second param group
    #: other option sets checked by the lr=0 / zero-gradient / .grad-untouched tests
    variants: list[dict[str, Any]] = field(default_factory=list)
    global_coupling: bool = False  # a rule sees all groups at once (global-norm clipping)
    #: float32 agreement with the reference (see ``close``). The chain with global-norm
    #: clipping rounds differently from clip_grad_norm_ + AdamW + the L1 step, which round ``p``
    #: three times per step (decay, update, soft threshold): at most 2 ulp of ``p`` apart per
    #: step, 60 ulp (7e-6 for |p| < 2) after 30 steps even if every rounding fell the same way,
    #: inside 1e-5 * (1 + |p|); measured 1.2e-6, and float64 agrees to 1e-14 (checked below).
    rtol32: float = 1e-6
    #: Whether a NaN gradient reaches the parameter under ``nonfinite="ignore"``: not for
    #: sign-based rules (``sign(nan) = 0`` in torch: Lion and Rprop leave that element, as
    #: torch.optim.Rprop does).
    nan_reaches_params: bool = True
    #: Parameter shapes for the case's runs, where the optimizer takes only some (Muon:
    #: matrices); ``None``: :data:`SHAPES`. Tests that need other shapes skip such cases.
    shapes: list[tuple[int, ...]] | None = None
    #: Whether ``lr=0`` leaves the parameters unchanged: not for Rprop, whose step size is
    #: clamped up to ``step_sizes[0]`` (as in torch.optim.Rprop).
    zero_lr_is_identity: bool = True

    def make(self, params: Any, **kw: Any) -> torch.optim.Optimizer:
        return self.ours(params, **{**self.kwargs, **kw})

    def make_ref(self, params: Any, **kw: Any) -> torch.optim.Optimizer:
        kw = {**self.kwargs, **kw}
        kw.pop("nonfinite", None)
        return self.ref(params, **kw)

    def all_option_sets(self) -> list[dict[str, Any]]:
        return [self.kwargs, *self.variants]


CASES = [
    Case("sgd", ol.SGD, torch.optim.SGD,
         dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
         dict(lr=0.02, momentum=0.5, dampening=0.1, nesterov=False, weight_decay=0.0),
         [dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
          dict(lr=0.05, weight_decay=0.01)]),
    Case("adagrad", ol.Adagrad, torch.optim.Adagrad,
         dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
         dict(lr=0.1, lr_decay=0.0, eps=1e-6, initial_accumulator_value=0.0),
         [dict(lr=0.05, weight_decay=0.01, eps=1e-30)]),
    Case("rmsprop", ol.RMSprop, torch.optim.RMSprop,
         dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01),
         dict(lr=0.02, alpha=0.99, momentum=0.0, centered=False),
         [dict(lr=0.01, weight_decay=0.01, eps=1e-30),
          dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01, eps=1e-30)]),
    Case("adam", ol.Adam, torch.optim.Adam,
         dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01, amsgrad=True),
         dict(betas=(0.5, 0.9), amsgrad=False, decoupled_weight_decay=True, weight_decay=0.1),
         [dict(lr=0.01, weight_decay=0.01, amsgrad=True, decoupled_weight_decay=True),
          dict(lr=0.01, weight_decay=0.01, eps=1e-30)]),
    Case("adamw", ol.AdamW, torch.optim.AdamW,
         dict(lr=0.01, weight_decay=0.05),
         dict(lr=0.02, weight_decay=0.2, amsgrad=True),
         [dict(lr=0.01, weight_decay=0.05, amsgrad=True, eps=1e-30)]),
    Case("nadam", ol.NAdam, torch.optim.NAdam,
         dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True, momentum_decay=0.01),
         dict(betas=(0.5, 0.9), momentum_decay=0.004, decoupled_weight_decay=False),
         [dict(lr=0.01, weight_decay=0.01, eps=1e-30)]),
    Case("radam", ol.RAdam, torch.optim.RAdam,
         dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True),
         dict(lr=0.03, betas=(0.8, 0.9), decoupled_weight_decay=False),
         [dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.01, eps=1e-30)]),
    Case("adadelta", ol.Adadelta, torch.optim.Adadelta,
         dict(lr=0.5, rho=0.8, weight_decay=0.01),
         dict(lr=1.0, rho=0.95, eps=1e-4),
         [dict(lr=1.0, weight_decay=0.01, eps=1e-30)]),
    Case("adamax", ol.Adamax, torch.optim.Adamax,
         dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01),
         dict(betas=(0.5, 0.9), eps=1e-4),
         [dict(lr=0.01, weight_decay=0.01, eps=1e-30)]),
    Case("chain_adamw", chain_adamw, torch.optim.AdamW,
         dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05),
         dict(lr=0.03, betas=(0.5, 0.9), weight_decay=0.1),
         [dict(lr=0.01, weight_decay=0.05, amsgrad=True, eps=1e-30)]),
    Case("chain_full", chain_full, RefClipAdamWL1,
         dict(lr=0.01, max_norm=1.0, weight_decay=0.05, l1=0.01),
         dict(lr=0.02, max_norm=0.5, l1=0.05),
         [dict(lr=0.01, max_norm=0.1, weight_decay=0.05, l1=0.5, eps=1e-30)],
         global_coupling=True, rtol32=1e-5),
]


def _more_cases() -> list[Case]:
    """The cases of the optimizers whose contract cases live beside their own tests: each
    ``tests/cases_*.py`` defines ``cases(Case) -> list[Case]`` (taking the class, so that it
    need not import this module)."""
    out: list[Case] = []
    for path in sorted(Path(__file__).parent.glob("cases_*.py")):
        spec = importlib.util.spec_from_file_location(f"_contract_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out.extend(module.cases(Case))
    return out


CASES += _more_cases()
NAMED = [c for c in CASES if c.ours in ol.OPTIMIZERS.values()]
BY_NAME = {c.name: c for c in CASES}
ids = [c.name for c in CASES]
named_ids = [c.name for c in NAMED]


def option_sets() -> list[Any]:
    return [pytest.param(c, kw, id=f"{c.name}-{i}")
            for c in CASES for i, kw in enumerate(c.all_option_sets())]


def test_cases_cover_every_named_optimizer() -> None:
    assert {type(c.make(make_params(shapes=c.shapes))).__name__.lower()
            for c in NAMED} == set(ol.OPTIMIZERS)
    for name, cls in ol.OPTIMIZERS.items():
        assert issubclass(cls, torch.optim.Optimizer)
        assert issubclass(cls, ol.ChainOptimizer)
        assert cls.__name__.lower() == name


# ----- reference agreement -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_matches_torch_reference(case: Case, dtype: torch.dtype) -> None:
    ps = make_params(dtype)
    qs = clone_params(ps)
    opt, ref = case.make(ps), case.make_ref(qs)
    run(opt, ps, 30)
    run(ref, qs, 30)
    if dtype == torch.float64:
        # The float32 argument of ``close`` with 2**-53 ~ 1.1e-16 per rounding: even 60
        # aligned half-ulps over 30 steps are 7e-15 of |p| < 4; 1e-12 leaves 100x (measured
        # 2.7e-15).
        close(ps, qs, rtol=1e-12)
    else:
        close(ps, qs, case=case)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_tensor_learning_rate_equals_float(case: Case) -> None:
    ps, qs = make_params(), make_params()
    a = case.make(ps)
    b = case.make(qs, lr=torch.tensor(case.kwargs["lr"]))
    run(a, ps, 5)
    run(b, qs, 5)
    bit_equal(ps, qs)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_mixed_dtypes_in_one_group(case: Case) -> None:
    dtypes = [torch.float32, torch.float64, torch.float32]
    ps = [p.to(dt) for p, dt in zip(make_params(), dtypes)]
    ps = clone_params(ps)
    qs = clone_params(ps)
    opt, ref = case.make(ps), case.make_ref(qs)
    run(opt, ps, 6)
    run(ref, qs, 6)
    assert [p.dtype for p in ps] == dtypes
    close(ps, qs, case=case)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_intermittent_gradients_keep_per_parameter_step_counts(case: Case) -> None:
    ps = make_params()
    qs = clone_params(ps)
    opt, ref = case.make(ps), case.make_ref(qs)
    for t, skip in enumerate([[1], [1, 2], [], [0], [], [2], []]):
        set_grads(ps, t, skip=skip)
        set_grads(qs, t, skip=skip)
        opt.step()
        ref.step()
    assert [opt.state[p]["step"].item() for p in ps] == [6, 5, 5]
    close(ps, qs, case=case)


# ----- param groups ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_param_groups_have_their_own_hyperparameters(case: Case) -> None:
    ps = make_params()
    a, b = ps[:2], ps[2:]
    joint = case.make([{"params": a}, {"params": b, **case.alt}])
    for k, v in case.alt.items():
        assert joint.param_groups[1][k] == v
        assert joint.param_groups[0][k] == case.kwargs.get(k, joint.defaults[k])

    qs = clone_params(ps)
    ref = case.make_ref([{"params": qs[:2]}, {"params": qs[2:], **case.alt}])
    run(joint, ps, 12)
    run(ref, qs, 12)
    # torch.optim.Adagrad fills every group's ``sum`` from the constructor's
    # initial_accumulator_value and ignores the group's own value; optimlab honours the group
    # (checked against separate optimizers below), so torch is no reference here.
    if case.name != "adagrad":
        close(ps, qs, case=case)

    if case.global_coupling:
        return  # global-norm clipping sees every group: groups are not independent here
    rs = make_params()
    sep_a, sep_b = case.make(rs[:2]), case.make(rs[2:], **case.alt)
    for t in range(12):
        set_grads(rs, t)
        sep_a.step()
        sep_b.step()
    bit_equal(ps, rs)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_add_param_group_after_steps(case: Case) -> None:
    ps = make_params()
    opt = case.make(ps[:2])
    run(opt, ps, 3, skip=[2])
    opt.add_param_group({"params": [ps[2]], **case.alt})
    assert len(opt.param_groups) == 2
    assert opt.param_groups[1].keys() == opt.param_groups[0].keys()
    run(opt, ps, 4, start=3)
    assert opt.state[ps[0]]["step"].item() == 7
    assert opt.state[ps[2]]["step"].item() == 4

    # Same as a separate optimizer for the new group, started when the group was added.
    rs = make_params()
    first = case.make(rs[:2])
    run(first, rs, 3, skip=[2])
    second = case.make([rs[2]], **case.alt)
    if case.global_coupling:
        qs = clone_params(make_params())
        ref = case.make_ref(qs[:2])
        run(ref, qs, 3, skip=[2])
        ref.add_param_group({"params": [qs[2]], **case.alt})
        run(ref, qs, 4, start=3)
        close(ps, qs, case=case)
        return
    for t in range(3, 7):
        set_grads(rs, t)
        first.step()
        second.step()
    bit_equal(ps, rs)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_unknown_group_keys_are_kept(case: Case) -> None:
    ps = make_params()
    extra = {"initial_lr": 0.123, "lr_scale": 2.0, "my_key": "anything"}
    opt = case.make([{"params": ps[:2], **extra}])
    opt.add_param_group({"params": [ps[2]], "my_key": [1, 2], "lr_scale": 0.5})
    run(opt, ps, 2)
    assert {k: opt.param_groups[0][k] for k in extra} == extra
    assert opt.param_groups[1]["my_key"] == [1, 2]
    assert opt.param_groups[1]["lr_scale"] == 0.5

    fresh = case.make([{"params": clone_params(ps[:2])}])
    fresh.add_param_group({"params": clone_params(ps[2:])})
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert fresh.param_groups[0]["my_key"] == "anything"
    assert fresh.param_groups[1]["my_key"] == [1, 2]


# ----- LR schedulers ---------------------------------------------------------------------------
def _steplr(opt: Any) -> Any:
    return lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)


def _lambdalr(opt: Any) -> Any:
    return lr_scheduler.LambdaLR(opt, lambda e: 1.0 / (1.0 + 0.2 * e))


def _onecycle(opt: Any) -> Any:
    cyc = "momentum" in opt.defaults or "betas" in opt.defaults
    return lr_scheduler.OneCycleLR(opt, max_lr=2 * opt.param_groups[0]["lr"], total_steps=30,
                                   cycle_momentum=cyc)


SCHEDULERS = {"steplr": _steplr, "lambdalr": _lambdalr, "onecycle": _onecycle}


@pytest.mark.parametrize("sched_name", list(SCHEDULERS))
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_scheduler_drives_optimizer_like_torch(case: Case, sched_name: str) -> None:
    make_sched = SCHEDULERS[sched_name]
    ps = make_params()
    qs = clone_params(ps)
    opt, ref = case.make(ps), case.make_ref(qs)
    sched, ref_sched = make_sched(opt), make_sched(ref)
    lrs, momenta = [], []
    for t in range(30):
        set_grads(ps, t)
        set_grads(qs, t)
        opt.step()
        ref.step()
        lrs.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0].get("momentum", opt.param_groups[0].get("betas")))
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
        for key in ("momentum", "betas"):
            if key in ref.param_groups[0]:
                assert opt.param_groups[0][key] == ref.param_groups[0][key]
        sched.step()
        ref_sched.step()
    assert len(set(lrs)) > 1  # the schedule really changed the learning rate
    if sched_name == "onecycle" and ("momentum" in opt.defaults or "betas" in opt.defaults):
        assert len({str(m) for m in momenta}) > 1  # ... and the momentum
    close(ps, qs, case=case)


# ----- state_dict -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_state_dict_round_trip_continues_identically(case: Case) -> None:
    ps = make_params()
    opt = case.make(ps)
    run(opt, ps, 5)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)

    qs = clone_params(ps)
    fresh = case.make(qs)
    fresh.load_state_dict(sd)
    assert_same_state(fresh.state_dict()["state"], opt.state_dict()["state"])
    for g_new, g_old in zip(fresh.state_dict()["param_groups"],
                            opt.state_dict()["param_groups"]):
        # torch's __setstate__ may add keys (``differentiable``); none may change
        assert {k: g_new[k] for k in g_old} == g_old
    run(opt, ps, 5, start=5)
    run(fresh, qs, 5, start=5)
    bit_equal(ps, qs)
    assert_same_state(fresh.state_dict()["state"], opt.state_dict()["state"])


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_state_dict_loads_across_dtypes(case: Case) -> None:
    p32 = make_params()
    opt32 = case.make(p32)
    run(opt32, p32, 4)
    p64 = clone_params(p32, torch.float64)
    opt64 = case.make(p64)
    opt64.load_state_dict(copy.deepcopy(opt32.state_dict()))
    src = opt32.state_dict()["state"]
    for pid, st in opt64.state_dict()["state"].items():
        for k, v in st.items():
            if not isinstance(v, Tensor):
                continue
            if k == "step":
                assert v.dtype == src[pid][k].dtype  # step is never cast
            else:
                assert v.dtype == torch.float64, k
                # float32 -> float64 is exact: bit for bit
                torch.testing.assert_close(v, src[pid][k].double(), rtol=0, atol=0)

    # torch.optim does the same cast; the float64 continuations agree.
    q32 = clone_params(make_params())
    ref32 = case.make_ref(q32)
    run(ref32, q32, 4)
    q64 = clone_params(q32, torch.float64)
    ref64 = case.make_ref(q64)
    ref64.load_state_dict(copy.deepcopy(ref32.state_dict()))
    for pid, st in ref64.state_dict()["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                assert v.dtype == opt64.state_dict()["state"][pid][k].dtype, k
    run(opt64, p64, 4, start=4)
    run(ref64, q64, 4, start=4)
    # The two float64 runs start from float32 points 4 steps apart in rounding (<= 4 ulp, a
    # few 1e-7 of |p|; see ``close``); their float64 steps add ~1e-16 each. 1e-6 as in float32.
    close(p64, q64)


@pytest.mark.parametrize("direction", ["torch_to_optimlab", "optimlab_to_torch"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_state_dict_interchange_with_torch(case: Case, direction: str) -> None:
    ps = make_params()
    from_torch = direction == "torch_to_optimlab"
    src = case.make_ref(ps) if from_torch else case.make(ps)
    run(src, ps, 6)
    qs = clone_params(ps)
    dst = case.make(qs) if from_torch else case.make_ref(qs)
    dst.load_state_dict(copy.deepcopy(src.state_dict()))

    src_state, dst_state = src.state_dict()["state"], dst.state_dict()["state"]
    assert src_state.keys() == dst_state.keys()
    for pid in src_state:
        # torch.optim.SGD keeps no step count; optimlab keeps one for every optimizer.
        extra = {"step"} if case.name == "sgd" else set()
        assert set(src_state[pid]) - extra == set(dst_state[pid]) - extra

    run(src, ps, 6, start=6)
    run(dst, qs, 6, start=6)
    close(qs, ps, case=case)


def test_state_dict_with_legacy_python_number_step_loads_like_torch() -> None:
    # Checkpoints written before torch 1.12 hold ``step`` as a Python number;
    # torch.optim.Adam.__setstate__ converts it to a tensor.
    ps = make_params()
    ref = torch.optim.Adam(ps, lr=0.01)
    run(ref, ps, 3)
    sd = copy.deepcopy(ref.state_dict())
    for st in sd["state"].values():
        st["step"] = int(st["step"].item())
    qs, rs = clone_params(ps), clone_params(ps)
    ours, theirs = ol.Adam(qs, lr=0.01), torch.optim.Adam(rs, lr=0.01)
    ours.load_state_dict(copy.deepcopy(sd))
    theirs.load_state_dict(copy.deepcopy(sd))
    run(ours, qs, 3, start=3)
    run(theirs, rs, 3, start=3)
    close(qs, rs)


# ----- step(closure), zero_grad, hooks -------------------------------------------------------
def quad_loss(ps: list[Tensor]) -> Tensor:
    return sum(((p - 0.5) ** 2).sum() + torch.sin(p).sum() for p in ps)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_step_with_closure(case: Case) -> None:
    ps = make_params()
    qs = clone_params(ps)
    opt, ref = case.make(ps), case.make_ref(qs)
    seen = []

    def closure_for(o: Any, params: list[Tensor]) -> Callable[[], Tensor]:
        def closure() -> Tensor:
            seen.append(torch.is_grad_enabled())
            o.zero_grad()
            loss = quad_loss(params)
            loss.backward()
            return loss
        return closure

    for _ in range(3):
        c = closure_for(opt, ps)
        with torch.no_grad():
            out = opt.step(c)
        assert isinstance(out, Tensor) and out.requires_grad
        ref.step(closure_for(ref, qs))
    assert seen == [True] * 6
    close(ps, qs, case=case)
    assert opt.step() is None  # no closure: returns None (grads left from the last closure)


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_zero_grad(case: Case, set_to_none: bool) -> None:
    ps = make_params()
    opt = case.make(ps)
    set_grads(ps, 0)
    grads = [p.grad for p in ps]
    opt.step()
    opt.zero_grad(set_to_none=set_to_none)
    for p, g in zip(ps, grads):
        if set_to_none:
            assert p.grad is None
        else:
            assert p.grad is g
            assert torch.count_nonzero(p.grad) == 0
    if set_to_none:
        opt.zero_grad()  # default: set_to_none=True
        assert all(p.grad is None for p in ps)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_step_hooks_fire_once_per_step(case: Case) -> None:
    ps = make_params()
    opt = case.make(ps)
    calls: list[str] = []

    def pre(o: Any, args: Any, kwargs: Any) -> None:
        assert o is opt
        calls.append("pre")

    def post(o: Any, args: Any, kwargs: Any) -> None:
        assert o is opt
        calls.append("post")

    h1 = opt.register_step_pre_hook(pre)
    h2 = opt.register_step_post_hook(post)
    run(opt, ps, 3)
    assert calls == ["pre", "post"] * 3
    h1.remove()
    h2.remove()
    run(opt, ps, 1, start=3)
    assert len(calls) == 6

    # the global hooks of torch.optim see optimlab optimizers too
    g = register_optimizer_step_pre_hook(lambda o, a, k: calls.append("g"))
    try:
        run(opt, ps, 2, start=4)
    finally:
        g.remove()
    assert calls[6:] == ["g", "g"]


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_state_dict_hooks(case: Case) -> None:
    ps = make_params()
    opt = case.make(ps)
    run(opt, ps, 2)
    log: list[str] = []
    opt.register_state_dict_pre_hook(lambda o: log.append("sd_pre"))

    def sd_post(o: Any, sd: dict[str, Any]) -> dict[str, Any]:
        log.append("sd_post")
        sd["extra"] = 42
        return sd

    opt.register_state_dict_post_hook(sd_post)
    sd = opt.state_dict()
    assert sd["extra"] == 42
    assert log == ["sd_pre", "sd_post"]

    fresh = case.make(clone_params(ps))

    def load_pre(o: Any, sd: dict[str, Any]) -> dict[str, Any]:
        log.append("load_pre")
        sd = dict(sd)
        sd.pop("extra")
        sd["param_groups"] = copy.deepcopy(sd["param_groups"])
        sd["param_groups"][0]["lr"] = 0.5
        return sd

    fresh.register_load_state_dict_pre_hook(load_pre)
    fresh.register_load_state_dict_post_hook(lambda o: log.append("load_post"))
    fresh.load_state_dict(copy.deepcopy(sd))
    assert log[2:] == ["load_pre", "load_post"]
    assert fresh.param_groups[0]["lr"] == 0.5


# ----- gradients: None, untouched, sparse, maximize ------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_params_without_grad_are_skipped(case: Case) -> None:
    ps = make_params()
    before = ps[1].detach().clone()
    qs = clone_params(ps)
    opt, ref = case.make(ps), case.make_ref(qs)
    run(opt, ps, 4, skip=[1])
    run(ref, qs, 4, skip=[1])
    bit_equal([ps[1]], [before])
    assert ps[1] not in opt.state or not opt.state[ps[1]]
    assert len(opt.state_dict()["state"]) == 2
    close(ps, qs, case=case)
    assert not torch.equal(ps[0], make_params()[0])

    # a whole group without gradients
    rs = make_params()
    opt2 = case.make([{"params": rs[:2]}, {"params": rs[2:]}])
    init = [r.detach().clone() for r in rs]
    run(opt2, rs, 2, skip=[0, 1])
    bit_equal(rs[:2], init[:2])
    assert not torch.equal(rs[2], init[2])


@pytest.mark.parametrize(("case", "kw"), option_sets())
def test_step_never_modifies_or_deletes_grad(case: Case, kw: dict[str, Any]) -> None:
    for foreach in (None, False):
        ps = make_params()
        opt = case.ours(ps, **{**kw, "maximize": True, "foreach": foreach})
        for t in range(4):
            set_grads(ps, t)
            grads = [p.grad for p in ps]
            clones = [g.clone() for g in grads]
            opt.step()
            assert all(p.grad is g for p, g in zip(ps, grads))
            bit_equal(grads, clones)


DENSE_ONLY = [c for c in NAMED if not c.ours.supports_sparse_grads]  # as in torch.optim


@pytest.mark.parametrize("case", DENSE_ONLY, ids=[c.name for c in DENSE_ONLY])
def test_sparse_gradients_raise_clearly(case: Case) -> None:
    """Named optimizers refuse sparse gradients where torch.optim does (tests/test_sparse.py
    covers SGD, Adagrad and chains, which step them)."""
    emb = nn.Embedding(10, 3, sparse=True)
    dense = nn.Parameter(torch.randn(3, 2))  # a matrix: every named optimizer takes it
    opt = case.make([dense, emb.weight])
    before = emb.weight.detach().clone()
    (emb(torch.tensor([1, 2, 2])).sum() * dense.sum()).backward()
    assert emb.weight.grad.is_sparse
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    bit_equal([emb.weight], [before])


@pytest.mark.parametrize(("case", "kw"), option_sets())
def test_maximize_equals_minimizing_the_negated_loss(case: Case, kw: dict[str, Any]) -> None:
    ps, qs = make_params(), make_params()
    up = case.ours(ps, **{**kw, "maximize": True})
    down = case.ours(qs, **{**kw, "maximize": False})
    for t in range(6):
        set_grads(ps, t, sign=-1.0)  # gradient of the loss -f
        set_grads(qs, t)             # gradient of f
        up.step()
        down.step()
    bit_equal(ps, qs)


# ----- lr = 0, zero gradients ------------------------------------------------------------------
@pytest.mark.parametrize(("case", "kw"), option_sets())
def test_zero_learning_rate_leaves_params_bit_identical(case: Case, kw: dict[str, Any]) -> None:
    if not case.zero_lr_is_identity:
        kw = {**kw, "step_sizes": (0.0, 1.0)}  # Rprop: no minimum step, so lr=0 is no step
    for maximize in (False, True):
        ps = make_params()
        init = [p.detach().clone() for p in ps]
        opt = case.ours(ps, **{**kw, "lr": 0.0, "maximize": maximize})
        run(opt, ps, 3)
        bit_equal(ps, init)


def _all_finite(opt: torch.optim.Optimizer, ps: list[Tensor]) -> None:
    for p in ps:
        assert torch.isfinite(p).all()
    for pid, k, v in state_tensors(opt):
        assert torch.isfinite(v).all(), (pid, k, v)


@pytest.mark.parametrize(("case", "kw"), option_sets())
def test_distributed_checkpoint_init_step(case: Case, kw: dict[str, Any]) -> None:
    dcp = pytest.importorskip("torch.distributed.checkpoint.state_dict")
    ps = make_params()
    init = [p.detach().clone() for p in ps]
    opt = case.ours(ps, **kw)
    dcp._init_optim_state(opt)  # zero grads, lr=0, one step()
    bit_equal(ps, init)
    assert len(opt.state) == len(ps)
    _all_finite(opt, ps)
    assert all(p.grad is None for p in ps)
    assert opt.param_groups[0]["lr"] == kw["lr"]
    run(opt, ps, 3)
    _all_finite(opt, ps)


@pytest.mark.parametrize(("case", "kw"), option_sets())
def test_all_zero_gradients_stay_finite(case: Case, kw: dict[str, Any]) -> None:
    ps = make_params()
    opt = case.ours(ps, **kw)
    for _ in range(8):
        for p in ps:
            p.grad = torch.zeros_like(p)
        opt.step()
        _all_finite(opt, ps)
    # and after real gradients
    run(opt, ps, 3)
    for p in ps:
        p.grad = torch.zeros_like(p)
    opt.step()
    _all_finite(opt, ps)


# ----- state ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_state_is_lazy_and_plain(case: Case) -> None:
    ps = make_params()
    opt = case.make(ps)
    assert len(opt.state) == 0
    assert opt.state_dict()["state"] == {}
    assert opt.state_bytes() == 0
    run(opt, ps, 2)
    sd = opt.state_dict()["state"]
    assert set(sd) == {0, 1, 2}

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        else:
            assert isinstance(x, Tensor) or (
                isinstance(x, (int, float)) and not isinstance(x, bool)), type(x)

    walk(sd)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_state_bytes_is_the_sum_of_state_tensors(case: Case) -> None:
    ps = make_params()
    opt = case.make(ps)
    run(opt, ps, 2)
    expected = sum(v.numel() * v.element_size() for _, _, v in state_tensors(opt))
    assert opt.state_bytes() == expected > 0


@pytest.mark.parametrize(("cls", "kw", "copies"), [
    (ol.Adam, {}, 2),
    (ol.Adam, {"amsgrad": True}, 3),
    (ol.AdamW, {}, 2),
    (ol.SGD, {}, 0),
    (ol.SGD, {"momentum": 0.9}, 1),
    (ol.Adagrad, {}, 1),
    (ol.RMSprop, {"centered": True, "momentum": 0.9}, 3),
    (ol.Adadelta, {}, 2),
    (ol.Adamax, {}, 2),
    (ol.RAdam, {}, 2),
])
def test_state_bytes_per_optimizer(cls: type, kw: dict[str, Any], copies: int) -> None:
    ps = make_params()
    opt = cls(ps, **kw)
    run(opt, ps, 1)
    param_bytes = sum(p.numel() * p.element_size() for p in ps)
    scalars = 4 * len(ps)  # one float32 ``step`` per parameter
    assert opt.state_bytes() == copies * param_bytes + scalars


def test_state_bytes_nadam_counts_mu_product() -> None:
    ps = make_params()
    opt = ol.NAdam(ps)
    run(opt, ps, 1)
    param_bytes = sum(p.numel() * p.element_size() for p in ps)
    assert opt.state_bytes() == 2 * param_bytes + 2 * 4 * len(ps)


# ----- non-finite gradients ---------------------------------------------------------------------
def _groups(case: Case, ps: list[Tensor], **kw: Any) -> torch.optim.Optimizer:
    return case.make([{"params": ps[:2]}, {"params": ps[2:]}], **kw)


SHAPES5 = [(3,), (2, 2), (4,), (2, 3), (5,)]
#: Five matrices in their place, for cases that take matrices only (index 3 is still (2, 3)).
MATRICES5 = [(3, 2), (2, 2), (4, 3), (2, 3), (5, 2)]


def shapes5(case: Case) -> list[tuple[int, ...]]:
    return SHAPES5 if case.shapes is None else MATRICES5


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_nonfinite_raise_names_group_and_index_and_changes_nothing(case: Case,
                                                                     bad: float) -> None:
    ps = make_params(shapes=shapes5(case))
    opt = _groups(case, ps, nonfinite="raise")  # opt-in (the default checks nothing)
    # first step: nothing may be created
    set_grads(ps, 0)
    ps[3].grad[1, 2] = bad
    with pytest.raises(ol.NonFiniteGradientError, match=r"param group 1, parameter 1\b"):
        opt.step()
    assert len(opt.state) == 0

    run(opt, ps, 3)
    params_before, state_before = snapshot(opt, ps)
    set_grads(ps, 3)
    ps[3].grad[0, 0] = bad
    with pytest.raises(ol.NonFiniteGradientError, match=r"param group 1, parameter 1\b") as ei:
        opt.step()
    assert isinstance(ei.value, FloatingPointError)
    bit_equal(ps, params_before)
    assert_same_state(opt.state_dict()["state"], state_before)

    # group 0, parameter 0 too
    set_grads(ps, 3)
    ps[0].grad[0] = bad
    with pytest.raises(ol.NonFiniteGradientError, match=r"param group 0, parameter 0\b"):
        opt.step()
    assert_same_state(opt.state_dict()["state"], state_before)

    # the optimizer is still usable and continues as if the bad steps never happened
    qs = clone_params(make_params(shapes=shapes5(case)))
    ref = _groups(case, qs)
    run(ref, qs, 4)
    run(opt, ps, 1, start=3)
    bit_equal(ps, qs)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_nonfinite_skip_skips_and_counts(case: Case) -> None:
    ps = make_params(shapes=shapes5(case))
    qs = clone_params(ps)
    opt = _groups(case, ps, nonfinite="skip")
    ref = _groups(case, qs)
    assert opt.skipped_steps == 0
    run(opt, ps, 2)
    run(ref, qs, 2)
    params_before, state_before = snapshot(opt, ps)
    for i, bad in enumerate([math.nan, math.inf]):
        set_grads(ps, 2)
        ps[4].grad[i] = bad
        assert opt.step() is None
        assert opt.skipped_steps == i + 1
    bit_equal(ps, params_before)
    assert_same_state(opt.state_dict()["state"], state_before)
    run(opt, ps, 3, start=2)
    run(ref, qs, 3, start=2)
    bit_equal(ps, qs)
    assert opt.skipped_steps == 2


@pytest.mark.parametrize("explicit", [False, True], ids=["default", "ignore"])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_nonfinite_ignore_behaves_like_torch(case: Case, explicit: bool) -> None:
    """The default (``nonfinite="ignore"``) checks nothing: inf/NaN gradients flow into the
    update exactly as with torch.optim."""
    ps = make_params()
    qs = clone_params(ps)
    opt = case.make(ps, nonfinite="ignore") if explicit else case.make(ps)
    ref = case.make_ref(qs)
    assert opt.nonfinite == "ignore"
    run(opt, ps, 2)
    run(ref, qs, 2)
    for params in (ps, qs):
        set_grads(params, 2)
        params[0].grad[1, 1] = math.nan
        params[2].grad.view(-1)[0] = math.inf
    opt.step()
    ref.step()
    if case.nan_reaches_params:
        assert not torch.isfinite(ps[0]).all()  # NaN propagated, as in torch
    close(ps, qs, equal_nan=True, case=case)
    run(opt, ps, 2, start=3)
    run(ref, qs, 2, start=3)
    close(ps, qs, equal_nan=True, case=case)


# ----- complex parameters -----------------------------------------------------------------------
@pytest.mark.parametrize("case", NAMED, ids=named_ids)
def test_complex_parameters_match_torch(case: Case) -> None:
    ps = make_params(torch.complex64)
    qs = clone_params(ps)
    try:
        ref = case.make_ref(qs)
        run(ref, qs, 1)
    except (RuntimeError, ValueError):  # torch refuses complex parameters (Adafactor, Muon)
        with pytest.raises((RuntimeError, ValueError), match=r"(?i)complex|real"):
            run(case.make(ps), ps, 1)
        return
    qs = clone_params(ps)
    opt, ref = case.make(ps), case.make_ref(qs)
    run(opt, ps, 10)
    run(ref, qs, 10)
    assert all(p.dtype == torch.complex64 for p in ps)
    close(ps, qs, case=case)
    for _, k, v in state_tensors(opt):
        if v.dim() > 0:  # per-element states; 0-dim ones are counts and host scalars
            assert v.dtype == torch.complex64, k


# ----- execution paths ----------------------------------------------------------------------
@pytest.mark.parametrize(("case", "kw"), option_sets())
def test_foreach_false_equals_default(case: Case, kw: dict[str, Any]) -> None:
    ps = make_params()
    qs = clone_params(ps)
    a = case.ours([{"params": ps[:2]}, {"params": ps[2:]}], **kw)
    b = case.ours([{"params": qs[:2]}, {"params": qs[2:]}], **{**kw, "foreach": False})
    run(a, ps, 8)
    run(b, qs, 8)
    # Bit for bit (was: rtol 1e-7, about one ulp, which no arithmetic explains): on the CPU
    # torch's _foreach_* kernels loop over the per-tensor kernels, so one-tensor lists run the
    # very same operations in the same order (as tests/test_parity.py (c) checks for the named
    # optimizers over 50 steps).
    bit_equal(ps, qs)
    for (_, _, x), (_, _, y) in zip(state_tensors(a), state_tensors(b)):
        assert_same_state(x, y)


# ----- torch utilities ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_swa_averaged_model_and_swalr(case: Case) -> None:
    def train(make: Callable[..., torch.optim.Optimizer]) -> tuple[nn.Module, AveragedModel]:
        torch.manual_seed(0)
        bias = case.shapes is None  # matrices only: no bias vectors
        model = nn.Sequential(nn.Linear(3, 4, bias=bias), nn.Tanh(), nn.Linear(4, 1, bias=bias))
        opt = make(model.parameters())
        swa = AveragedModel(model)
        sched = SWALR(opt, swa_lr=0.005, anneal_epochs=3, anneal_strategy="linear")
        params = list(model.parameters())
        for t in range(8):
            set_grads(params, t)
            opt.step()
            if t >= 3:
                swa.update_parameters(model)
            sched.step()
        # SWALR's linear anneal in Python floats: ~1e-17 off 0.005, approx allows 5e-9
        assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
        assert opt.param_groups[0]["swa_lr"] == 0.005
        return model, swa

    model, swa = train(case.make)
    ref_model, ref_swa = train(case.make_ref)
    # Synthetic gradients and 8 steps (see ``close``); the averages add one rounding per
    # update to the same few ulps.
    close(list(model.parameters()), list(ref_model.parameters()), case=case)
    close(list(swa.parameters()), list(ref_swa.parameters()), case=case)
    assert swa.n_averaged.item() == 5


def _amp_backward(model: nn.Module, scaler: torch.amp.GradScaler, t: int) -> None:
    gen = torch.Generator().manual_seed(t)
    x = torch.randn(8, 3, generator=gen)
    with torch.autocast("cpu", dtype=torch.float16, enabled=scaler.is_enabled()):
        loss = (model(x).float() - 0.5).pow(2).mean()
    scaler.scale(loss).backward()


def _amp_step(opt: torch.optim.Optimizer, model: nn.Module, scaler: torch.amp.GradScaler,
              t: int, inject_inf: bool = False) -> None:
    opt.zero_grad()
    _amp_backward(model, scaler, t)
    if inject_inf:
        model[0].weight.grad[0, 0] = math.inf
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_grad_scaler(case: Case, enabled: bool) -> None:
    def build(make: Callable[..., torch.optim.Optimizer]) -> tuple[nn.Module, Any, Any]:
        torch.manual_seed(0)
        bias = case.shapes is None  # matrices only: no bias vectors
        model = nn.Sequential(nn.Linear(3, 4, bias=bias), nn.Tanh(), nn.Linear(4, 1, bias=bias))
        return model, make(model.parameters()), torch.amp.GradScaler(
            "cpu", init_scale=2.0**8, enabled=enabled)

    model, opt, scaler = build(case.make)
    ref_model, ref_opt, ref_scaler = build(case.make_ref)
    # Both optimizers step on the same scaled gradients, taken on ``model``. Fed their own, the
    # models' ulp-level differences after the first step would flip roundings of the fp16
    # forward pass (an fp16 ulp is 2**13 fp32 ulps) where the CPU's kernels happen to land,
    # and the flips would reach the parameters through the loss. With equal gradients only
    # the optimizers' own rounding differs: ``close`` over 3 steps.
    for t in range(3):
        opt.zero_grad()
        ref_opt.zero_grad()
        _amp_backward(model, scaler, t)
        ref_scaler.scale(torch.ones(()))  # creates its scale, which equals ``scaler``'s
        assert ref_scaler.get_scale() == scaler.get_scale()
        for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
            q.grad = p.grad.clone()
        for o, s in ((opt, scaler), (ref_opt, ref_scaler)):
            s.step(o)
            s.update()
    close(list(model.parameters()), list(ref_model.parameters()), case=case)
    if not enabled:
        return
    params = list(model.parameters())
    params_before, state_before = snapshot(opt, params)
    scale = scaler.get_scale()
    _amp_step(opt, model, scaler, 3, inject_inf=True)  # skipped by the scaler, not raised
    assert scaler.get_scale() == scale / 2
    bit_equal(params, params_before)
    assert_same_state(opt.state_dict()["state"], state_before)
    _amp_step(opt, model, scaler, 4)
    assert not torch.equal(params[0], params_before[0])
