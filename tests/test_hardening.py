"""Regression tests for defects found by outside test suites (torch's own optimizer tests,
training frameworks): copies and pickles, load-state-dict hooks, Adam/AdamW checkpoints, a
replaced ``optimizer.state``, one constructor contract, the group-key layout, meta tensors,
``torch.compile`` over a training step, ``differentiable=True`` and sparse gradients.

Each test failed before its fix (checked against the commit before it).
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
from collections import defaultdict
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import optimlab as ol
from optimlab import transforms as T
from optimlab.chain import ChainOptimizer

NAMED = sorted(ol.OPTIMIZERS.items())
IDS = [n for n, _ in NAMED]
#: The named optimizers that torch.optim has a class of the same name for.
TWINS = [(n, c) for n, c in NAMED if hasattr(torch.optim, c.__name__)]
TWIN_IDS = [n for n, _ in TWINS]
#: ... and whose torch.optim twin has a differentiable path (Adafactor's and Muon's have none).
DIFF_TWINS = [(n, c) for n, c in TWINS
              if "differentiable" in inspect.signature(getattr(torch.optim, c.__name__)).parameters]
#: Options that give every optimizer per-element state (SGD has none without momentum).
STATEFUL = {"sgd": {"momentum": 0.9}}


def params(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    # matrices, which every named optimizer takes (Muon: 2-D parameters only)
    return [nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in ((4, 3), (3, 1))]


def set_grads(ps: list[Tensor], t: int) -> None:
    for i, p in enumerate(ps):
        g = torch.Generator().manual_seed(100 * t + i)
        p.grad = (p.detach() - 0.5) + 0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype)


def public(obj: object) -> set[str]:
    return {k for k in obj.__dict__ if not k.startswith("_")}


def theirs(cls: type) -> type[torch.optim.Optimizer]:
    return getattr(torch.optim, cls.__name__)


# ----- 2. copies and pickles -------------------------------------------------------------------
def _roundtrip(how: str, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    if how == "deepcopy":
        return copy.deepcopy(opt)
    if how == "pickle":
        return pickle.loads(pickle.dumps(opt))
    buf = io.BytesIO()
    torch.save(opt, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize(("name", "cls"), NAMED, ids=IDS)
def test_copied_optimizer_keeps_its_options_and_steps_alike(how: str, name: str,
                                                           cls: type) -> None:
    ps = params()
    opt = cls(ps, nonfinite="skip", state_dtype=torch.bfloat16, **STATEFUL.get(name, {}))
    set_grads(ps, 0)
    opt.step()
    twin = _roundtrip(how, opt)
    assert public(twin) == public(opt)  # torch's test_deepcopy_copies_all_public_attrs
    assert (twin.nonfinite, twin.state_dtype, twin.skipped_steps) == ("skip", torch.bfloat16, 0)
    qs = twin.param_groups[0]["params"]
    for t in (1, 2):  # same gradients, same code path, same order: bit-equal
        set_grads(ps, t)
        set_grads(qs, t)
        opt.step()
        twin.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
    for p, q in zip(ps, qs):
        for k, v in opt.state[p].items():
            assert torch.equal(v, twin.state[q][k]) and v.dtype == twin.state[q][k].dtype


def test_copied_chain_keeps_its_rules_and_master_weights() -> None:
    ps = params(dtype=torch.bfloat16)
    opt = ol.chain(ps, T.clip_by_global_norm(1.0), T.scale_by_adam(), lr=1e-2,
                   master_weights=True)
    set_grads(ps, 0)
    opt.step()
    twin = copy.deepcopy(opt)
    assert twin.master_weights and twin.transforms_for(twin.param_groups[0])[0].hyperparams == {
        "max_norm": 1.0, "norm_type": 2.0}
    qs = twin.param_groups[0]["params"]
    set_grads(ps, 1)
    set_grads(qs, 1)
    opt.step()
    twin.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


# ----- 3. load_state_dict hooks -----------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls"), NAMED, ids=IDS)
def test_load_state_dict_post_hook_may_write_state_and_sees_it_fully_loaded(
        name: str, cls: type) -> None:
    ps = params()
    src = cls(ps, state_dtype=torch.bfloat16, **STATEFUL.get(name, {}))
    set_grads(ps, 0)
    src.step()
    dst = cls(params(1), state_dtype=torch.bfloat16, **STATEFUL.get(name, {}))
    seen: list[Any] = []

    def pre(opt: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
        sd = dict(sd)
        sd["param_groups"] = [{**g, "lr": 0.5} for g in sd["param_groups"]]
        return sd

    def post(opt: torch.optim.Optimizer) -> None:
        seen.extend(v.dtype for st in opt.state.values() if isinstance(st, dict)
                    for v in st.values() if v.dim() > 0)
        opt.state["ran_post_hook"] = True  # torch's test writes a non-dict value

    dst.register_load_state_dict_pre_hook(pre)
    dst.register_load_state_dict_post_hook(post)
    dst.load_state_dict(src.state_dict())
    assert dst.state["ran_post_hook"] is True
    assert dst.param_groups[0]["lr"] == 0.5
    # as saved, not the fp32 copies torch.optim casts to: bf16 where state_dtype stores low
    # (states shaped like the parameter, except full_precision_states such as
    # Schedule-Free's z; Adafactor's factors are not shaped like the parameter)
    saved = [v.dtype for st in src.state.values() for v in st.values()
             if isinstance(v, Tensor) and v.dim() > 0]
    assert seen and sorted(map(str, seen)) == sorted(map(str, saved))
    assert torch.bfloat16 in seen or name in ("schedulefreesgd",)
    assert dst.state_bytes() > 0
    qs = dst.param_groups[0]["params"]
    set_grads(qs, 1)
    dst.step()  # a non-dict state entry does not disturb the step


# ----- 4. Adam and AdamW checkpoints ------------------------------------------------------------
def test_adamw_loading_an_adam_checkpoint_stays_decoupled() -> None:
    def run(lib: Any) -> list[Tensor]:
        ps = params()
        adam = lib.Adam(ps, lr=0.01, weight_decay=0.1)
        set_grads(ps, 0)
        adam.step()
        adamw = lib.AdamW(ps, lr=0.01, weight_decay=0.1)
        adamw.load_state_dict(adam.state_dict())
        assert adamw.param_groups[0]["decoupled_weight_decay"] is True
        resumed = torch.optim.Adam(ps, lr=0.01)  # a checkpoint saved now resumes decoupled
        resumed.load_state_dict(adamw.state_dict())
        assert resumed.param_groups[0]["decoupled_weight_decay"] is True
        for t in (1, 2):
            set_grads(ps, t)
            adamw.step()
        return [p.detach().clone() for p in ps]

    # the same algorithm: agreement to a few fp32 ulp per step (|p| < 4: ulp <= 4.8e-7)
    for a, b in zip(run(ol), run(torch.optim)):
        torch.testing.assert_close(a, b, rtol=0, atol=3 * 4.8e-7)


# ----- 5. a replaced optimizer.state ------------------------------------------------------------
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_reset_state_then_replaced_buffer_is_seen(fused: bool) -> None:
    if fused:
        pytest.importorskip("torch._inductor")

    def run(cls: Any, **kw: Any) -> list[Tensor]:
        ps = params()
        opt = cls(ps, lr=0.1, momentum=0.9, **kw)
        for t in range(3):
            set_grads(ps, t)
            opt.step()
        opt.state = defaultdict(dict)  # how some training code resets an optimizer
        for t in range(3, 5):
            set_grads(ps, t)
            opt.step()
        for p in ps:
            opt.state[p]["momentum_buffer"] = torch.full_like(p, 0.25)
        for t in range(5, 7):
            set_grads(ps, t)
            opt.step()
        return [p.detach().clone() for p in ps]

    ours = run(ol.SGD, fused=True) if fused else run(ol.SGD)
    # same algorithm as torch.optim.SGD, different rounding order: a few ulp over 7 steps
    for a, b in zip(ours, run(torch.optim.SGD)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_state_is_always_tracked() -> None:
    from optimlab._state import TrackedState

    opt = ol.Adam(params())
    opt.state = defaultdict(dict)
    assert isinstance(opt.state, TrackedState)
    opt.load_state_dict(opt.state_dict())
    assert isinstance(opt.state, TrackedState)
    assert isinstance(copy.deepcopy(opt).state, TrackedState)


# ----- 8. one constructor contract --------------------------------------------------------------
def test_chain_optimizer_refuses_shared_group_keys_as_chain_does() -> None:
    rules = (T.add_l2(1e-4), T.scale_by_adam(), T.add_decayed_weights(0.5))
    for build in (lambda: ChainOptimizer(params(), rules), lambda: ol.chain(params(), *rules)):
        with pytest.raises(ValueError, match="weight_decay"):
            build()
    ChainOptimizer(params(), (T.add_l2(1e-4).with_keys(weight_decay="l2"), *rules[1:]))


def test_chain_takes_every_chain_optimizer_option() -> None:
    opt = ol.chain(params(dtype=torch.bfloat16), T.scale_by_adam(), lr=1e-2,
                   stochastic_rounding=True, nonfinite="skip")
    assert opt.stochastic_rounding and opt.nonfinite == "skip"
    opt = ol.chain(params(), T.scale_by_adam(), state_dtype=torch.bfloat16, differentiable=False)
    assert opt.state_dtype == torch.bfloat16
    with pytest.raises(TypeError, match="unexpected keyword"):
        ol.chain(params(), T.scale_by_adam(), stochastic_rouding=True)


# ----- 10. the state-dict layout ----------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls"), TWINS, ids=TWIN_IDS)
def test_state_dict_keys_are_torch_optims(name: str, cls: type) -> None:
    """The same group keys and state keys as torch.optim's class of the same name; SGD keeps
    a ``step`` count torch.optim.SGD does not (README, "state-dict layout")."""
    ps, qs = params(), params()
    ours, ref = cls(ps), theirs(cls)(qs)
    set_grads(ps, 0)
    set_grads(qs, 0)
    ours.step()
    ref.step()
    a, b = ours.state_dict(), ref.state_dict()
    # torch's keys all there; beyond them only engine options that torch's newer classes
    # (Adafactor, Muon) do not store in their groups
    extra_keys = set(a["param_groups"][0]) - set(b["param_groups"][0])
    assert set(b["param_groups"][0]) <= set(a["param_groups"][0])
    assert extra_keys <= {"differentiable", "foreach", "fused", "maximize"}, extra_keys
    if name not in ("adafactor", "muon"):
        assert not extra_keys
    extra = {"step"} if cls in (ol.SGD, ol.Muon) else set()  # a per-parameter step count
    assert set(a["state"][0]) == set(b["state"].get(0, {})) | extra


# ----- meta tensors -----------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"fused": True}, {"state_dtype": torch.bfloat16}],
                         ids=["eager", "fused", "bf16-states"])
@pytest.mark.parametrize(("name", "cls"), NAMED, ids=IDS)
def test_meta_parameters_step_as_in_torch_optim(name: str, cls: type,
                                                kw: dict[str, Any]) -> None:
    """torch.optim steps parameters on the meta device (shapes only), except fused ones, which
    it refuses until the model is materialized; so do we."""
    m = nn.Linear(3, 2, bias=cls is not ol.Muon, device="meta")  # Muon: matrices only
    opt = cls(m.parameters(), **kw)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    if kw.get("fused"):
        with pytest.raises(RuntimeError, match="meta"):
            opt.step()
        assert not opt.state  # refused before any state was made
        opt.zero_grad(set_to_none=True)
        m.to_empty(device="cpu")  # new parameters: the optimizer's own have no gradient now
        for p in m.parameters():
            p.grad = torch.ones_like(p)
        opt.step()  # a no-op, as in torch's test_fused_error_on_params_on_meta
        return
    opt.step()
    opt.step()
    assert all(v.device.type in ("meta", "cpu") for st in opt.state.values() for v in st.values())


# ----- 7. torch.compile over a training step ----------------------------------------------------
def _graphs(make: Any, steps: int = 5) -> tuple[int, list[Tensor]]:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = make(model.parameters())
    counter = CompileCounter()
    x = torch.randn(32, 8)

    @torch.compile(backend=counter)
    def train_step(x: Tensor) -> Tensor:
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    for _ in range(steps):
        train_step(x)
    torch._dynamo.reset()
    return counter.frame_count, [p.detach().clone() for p in model.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_compiled_training_step_compiles_no_more_graphs_than_torch_optim(name: str) -> None:
    """The step opts out of the outer trace (torch.compiler.disable): one graph for the
    forward pass, where tracing it recompiled at every step (per-step Python scalars)."""
    kw = {"lr": 1e-2, "momentum": 0.9} if name in ("SGD", "RMSprop") else {"lr": 1e-2}
    n_ours, ours = _graphs(lambda ps: getattr(ol, name)(ps, **kw))
    n_torch, ref = _graphs(lambda ps: getattr(torch.optim, name)(ps, **kw))
    assert n_ours <= n_torch
    # same algorithm, different rounding order, 5 steps of |update| <= lr on |p| < 1
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_compiled_training_step_with_fused_optimizer() -> None:
    n_fused, fused = _graphs(lambda ps: ol.Adam(ps, lr=1e-2, fused=True))
    n_torch, ref = _graphs(lambda ps: torch.optim.Adam(ps, lr=1e-2))
    assert n_fused <= n_torch
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# ----- 9. differentiable=True -------------------------------------------------------------------
#: Options that exercise every branch the rules have (momentum, Nesterov, centered, AMSGrad,
#: both weight-decay placements).
DIFF_OPTIONS = {
    "sgd": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    "adagrad": {"lr_decay": 0.1, "weight_decay": 0.1},
    "rmsprop": {"momentum": 0.5, "centered": True, "weight_decay": 0.1},
    "adam": {"amsgrad": True, "weight_decay": 0.1},
    "adamw": {"weight_decay": 0.1},
    "nadam": {"decoupled_weight_decay": True, "weight_decay": 0.1},
    "radam": {"weight_decay": 0.1},
    # eps sets the scale of Adadelta's acc_delta (~eps after a few steps): gradcheck's finite
    # differences (step 1e-6) need it well above 1e-6
    "adadelta": {"weight_decay": 0.1, "eps": 0.1},
    "adamax": {"weight_decay": 0.1},
    "adafactor": {"weight_decay": 0.1},
    "muon": {"weight_decay": 0.1},
    "sgdhd": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "hypergrad_lr": 1e-2},
    "adamhd": {"amsgrad": True, "weight_decay": 0.1, "hypergrad_lr": 1e-3},
    # d0 well above gradcheck's finite-difference step: a small d0 lets the perturbation push
    # exp_avg_sq below 0 (NaN)
    "prodigy": {"weight_decay": 0.1, "d0": 1.0, "use_bias_correction": True},
    "lion": {"weight_decay": 0.1, "betas": (0.8, 0.9)},
    "rprop": {"etas": (0.4, 1.3), "step_sizes": (1e-4, 0.2)},
    "asgd": {"lambd": 0.1, "t0": 1, "weight_decay": 0.1},
    "schedulefreeadamw": {"weight_decay": 0.1},
    "schedulefreesgd": {"weight_decay": 0.1},
}


#: Inputs of a recorded step that it treats as constants (no gradient reaches them): ASGD's
#: step size ``eta`` is computed from ``lr`` on the host; Rprop's ``prev`` is exactly 0 after
#: a sign change, a discontinuity a finite difference would straddle.
NOT_DIFFERENTIATED = {"asgd": {"lr"}, "rprop": {"prev"}}


@pytest.mark.parametrize(("name", "cls"), NAMED, ids=IDS)
def test_differentiable_steps_gradients_match_finite_differences(name: str, cls: type) -> None:
    """Two differentiable steps from a mid-training state, as a function of the parameter, its
    gradient, its per-element states and a tensor lr, checked by torch's gradcheck (central
    finite differences in float64, its default tolerances: atol 1e-5, rtol 1e-3; the step is
    smooth at these points, away from AMSGrad's max ties and Adamax's |g| = u ties)."""
    if name == "muon":
        pytest.skip("Muon orthogonalizes in bfloat16 (as torch.optim.Muon): its step is "
                    "piecewise constant at finite-difference scales")
    kw = {"lr": 0.05, **DIFF_OPTIONS[name]}
    g = torch.Generator().manual_seed(3)
    w = nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))
    warm = cls([w], **kw)
    for _ in range(3):  # a mid-training state (RAdam rectified from step 6 on: not here)
        w.grad = torch.randn(5, generator=g, dtype=torch.float64)
        warm.step()
    keys = sorted(k for k, v in warm.state[w].items() if v.dim() > 0)
    constant = NOT_DIFFERENTIATED.get(name, set())
    scalars = {k: v for k, v in warm.state[w].items() if v.dim() == 0}
    start = [w.detach().clone().requires_grad_(),
             torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True),
             # Schedule-Free's averaging weights use the largest lr so far, a kink at the lr
             # of the warm steps: the recorded steps run at a smaller one, where the weights
             # do not depend on lr (they are constants of the recorded step).
             torch.tensor(kw["lr"] * (0.8 if name.startswith("schedulefree") else 1.0),
                          dtype=torch.float64, requires_grad=True),
             *[warm.state[w][k].detach().clone().requires_grad_(k not in constant)
               for k in keys]]
    if "lr" in constant:
        start[2].requires_grad_(False)

    def steps(p0: Tensor, grad: Tensor, lr: Tensor, *states: Tensor,
              two: bool = True) -> tuple[Tensor, ...]:
        p = p0.clone()
        p.grad = grad
        opt = cls([p], **{**kw, "lr": lr}, differentiable=True)
        opt.state[p].update({k: v.clone() for k, v in scalars.items()})
        opt.state[p].update({k: v.clone() for k, v in zip(keys, states)})
        opt.step()
        assert p.grad is grad  # .grad untouched
        if two:  # a second step on the states the first one recorded
            p.grad = grad.flip(0) * 0.5
            opt.step()
        return (p, *[opt.state[p][k] for k in keys])

    assert torch.autograd.gradcheck(steps, tuple(start))
    # the recorded step computes the same values as an ordinary one (float64, one step: the
    # out-of-place forms round like the in-place ones up to an ulp or two: 1e-14 relative)
    with torch.no_grad():
        p = start[0].detach().clone()
        p.grad = start[1].detach()
        plain = cls([p], **{**kw, "lr": float(start[2])})
        plain.state[p].update({k: v.clone() for k, v in scalars.items()})
        plain.state[p].update({k: v.detach().clone() for k, v in zip(keys, start[3:])})
        plain.step()
    recorded = steps(*start, two=False)
    torch.testing.assert_close(recorded[0].detach(), p, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize(("name", "cls"), DIFF_TWINS, ids=[n for n, _ in DIFF_TWINS])
def test_differentiable_agrees_with_torch_optim(name: str, cls: type) -> None:
    """Gradients of a loss after a differentiable step with respect to the initial
    parameters, against torch.optim's differentiable path, in float64 (one step: torch.optim
    updates its states in place, so a second recorded step fails there for most optimizers,
    while optimlab's recorded steps chain, as the gradcheck test above checks). torch.optim computes
    the bias corrections of Adam, NAdam and Adamax from a float32 step count on this path
    (relative error ~1e-5 in 1 - 0.999**t), hence the tolerance 1e-4 there; elsewhere
    the two agree to float64 rounding (1e-12). torch.optim.SGD detaches a new momentum
    buffer from the gradient's history; with no momentum the two coincide."""
    kw = {k: v for k, v in DIFF_OPTIONS[name].items() if k not in ("momentum", "nesterov")}
    tol = 1e-4 if name in ("adam", "adamw", "nadam", "adamax") else 1e-12
    results = []
    for impl in (cls, theirs(cls)):
        g = torch.Generator().manual_seed(5)
        p0 = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
        x = torch.randn(6, generator=g, dtype=torch.float64)
        p = p0.clone()
        opt = impl([p], lr=0.05, differentiable=True, **kw)
        # cosh saves its input p - x, not p (which the step overwrites in place)
        loss = torch.cosh(p - x).sum()
        (p.grad,) = torch.autograd.grad(loss, p, create_graph=True)
        opt.step()
        final = ((p - x) ** 2).sum()
        results.append(torch.autograd.grad(final, p0)[0])
    torch.testing.assert_close(results[0], results[1], rtol=tol, atol=tol)


def test_differentiable_refuses_hyperparameters_gradients_cannot_reach() -> None:
    p = torch.randn(3, requires_grad=True).clone()
    p.grad = torch.randn(3)
    beta1 = torch.tensor(0.9, requires_grad=True)
    opt = ol.Adam([p], betas=(beta1, torch.tensor(0.999)), differentiable=True)
    with pytest.raises(ValueError, match="betas"):
        opt.step()


# ----- 9. sparse gradients ----------------------------------------------------------------------
def _embedding_run(lib: Any, name: str, **kw: Any) -> Tensor:
    torch.manual_seed(0)
    emb = nn.Embedding(12, 3, sparse=True)
    opt = getattr(lib, name)(emb.parameters(), **kw)
    batches = [[1, 2, 1], [4, 1, 7, 7], [11, 0]]  # repeated rows: uncoalesced gradients
    for t in range(6):
        opt.zero_grad()
        emb(torch.tensor(batches[t % 3])).pow(2).sum().backward()
        assert emb.weight.grad.is_sparse
        opt.step()
    return emb.weight.detach()


@pytest.mark.parametrize(("name", "kw"), [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "maximize": True}),
    ("Adagrad", {"lr": 0.1}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.1, "initial_accumulator_value": 0.1}),
])
def test_sparse_gradients_match_torch_optim(name: str, kw: dict[str, Any]) -> None:
    # 6 steps of updates |u| <= lr * 2 |p| on |p| < 4: a few fp32 ulp of 4 (4.8e-7) per step
    torch.testing.assert_close(_embedding_run(ol, name, **kw),
                               _embedding_run(torch.optim, name, **kw), rtol=0, atol=1e-5)


def test_sparse_adagrad_touches_only_the_gradient_rows() -> None:
    emb = nn.Embedding(6, 2, sparse=True)
    opt = ol.Adagrad(emb.parameters(), lr=0.1, initial_accumulator_value=0.5)
    before = emb.weight.detach().clone()
    emb(torch.tensor([1, 3])).sum().backward()
    opt.step()
    changed = (emb.weight != before).any(dim=1)
    assert changed.tolist() == [False, True, False, True, False, False]
    acc = opt.state[emb.weight]["sum"]
    assert (acc[[0, 2, 4, 5]] == 0.5).all() and (acc[[1, 3]] == 1.5).all()


def test_sparse_gradients_through_a_chain_are_densified_where_needed() -> None:
    """A chain with rules that have no sparse formula steps a sparse gradient as the dense
    gradient with zeros elsewhere: the same operations on the same values (bit-equal)."""
    rules = (T.clip_by_global_norm(0.5), T.scale_by_adam(), T.add_decayed_weights(0.1))
    out = []
    for sparse in (True, False):
        torch.manual_seed(0)
        emb = nn.Embedding(8, 3, sparse=sparse)
        opt = ol.chain(emb.parameters(), *rules, lr=0.01)
        for t in range(3):
            opt.zero_grad()
            emb(torch.tensor([t, 5, 5])).pow(2).sum().backward()
            if sparse:  # coalesced and densified: exactly the dense gradient's values
                emb.weight.grad = emb.weight.grad.coalesce()
            opt.step()
        out.append(emb.weight.detach())
    assert torch.equal(out[0], out[1])


def test_sparse_gradients_refused_with_fused() -> None:
    emb = nn.Embedding(4, 2, sparse=True)
    opt = ol.SGD(emb.parameters(), lr=0.1, fused=True)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


# ----- error inputs: hyperparameters before params ----------------------------------------------
@pytest.mark.parametrize(("name", "cls"), NAMED, ids=IDS)
def test_bad_hyperparameters_are_named_before_params_are_read(name: str, cls: type) -> None:
    """torch.optim checks hyperparameters before it reads ``params`` (its error inputs pass
    ``params=None``): the ValueError names the hyperparameter, not a TypeError from None."""
    if "weight_decay" in inspect.signature(cls).parameters:  # Rprop has none
        with pytest.raises(ValueError, match="weight_decay"):
            cls(None, weight_decay=-1.0)
    with pytest.raises(ValueError, match="lr"):
        cls(None, lr=-1.0)
