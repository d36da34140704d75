"""Schedules and schedulers: parity with torch.optim.lr_scheduler, properties, bad inputs."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler as L

import optimlab
from optimlab import schedules as S

#: Relative tolerance of the parity tests. Closed forms (ours, and torch's where it has one)
#: agree bit for bit; torch's recursive schedulers (StepLR, ExponentialLR, CosineAnnealingLR,
#: PolynomialLR, LinearLR) accumulate about 1e-16 relative rounding per step, measured below
#: 3e-15 over 1,000 steps. Values that pass through 0 are compared with an absolute floor of
#: RTOL * (the group's peak value).
RTOL = 1e-12
STEPS = 1000
HALF = 500
BASE_LRS = (0.1, 0.03)  # two param groups

PROPS = settings(max_examples=25, deadline=None)


def _close(a: float, b: float, scale: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=RTOL * scale)


def _make_opt(kind: str) -> torch.optim.Optimizer:
    p1 = torch.nn.Parameter(torch.ones(3))
    p2 = torch.nn.Parameter(torch.ones(2))
    groups = [{"params": [p1], "lr": BASE_LRS[0]}, {"params": [p2], "lr": BASE_LRS[1]}]
    if kind == "torch":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    return optimlab.SGD(groups, lr=0.1, momentum=0.9)


def _train_step(opt: torch.optim.Optimizer) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.full_like(p, 0.5)
    opt.step()


# (torch scheduler factory, schedule factory taking the group's base lr)
CASES: dict[str, tuple[Callable[..., L.LRScheduler], Callable[[float], S.Schedule]]] = {
    "StepLR": (lambda o: L.StepLR(o, step_size=7, gamma=0.9),
               lambda b: S.step_decay(b, 7, 0.9)),
    "MultiStepLR": (lambda o: L.MultiStepLR(o, milestones=[10, 200, 500, 900], gamma=0.5),
                    lambda b: S.multi_step(b, [10, 200, 500, 900], 0.5)),
    "ExponentialLR": (lambda o: L.ExponentialLR(o, gamma=0.995),
                      lambda b: S.exponential_decay(b, 0.995)),
    "CosineAnnealingLR": (lambda o: L.CosineAnnealingLR(o, T_max=300, eta_min=1e-4),
                          lambda b: S.cosine_annealing(b, 300, 1e-4)),
    "CosineAnnealingLR-eta0": (lambda o: L.CosineAnnealingLR(o, T_max=1000),
                               lambda b: S.cosine_annealing(b, 1000)),
    "CosineAnnealingWarmRestarts": (
        lambda o: L.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=1e-4),
        lambda b: S.cosine_warm_restarts(b, 10, 2, 1e-4)),
    "CosineAnnealingWarmRestarts-mult1": (
        lambda o: L.CosineAnnealingWarmRestarts(o, T_0=37),
        lambda b: S.cosine_warm_restarts(b, 37)),
    "OneCycleLR": (lambda o: L.OneCycleLR(o, max_lr=[1.0, 0.3], total_steps=STEPS,
                                          cycle_momentum=False),
                   lambda b: S.one_cycle(10 * b, STEPS)),
    # total_steps = STEPS + 1: the runs end on the schedule's last step; one step beyond it,
    # torch's linear extrapolation gives a negative lr, which ScheduledLR refuses (see
    # test_one_cycle_extrapolated_past_its_end_is_refused_when_negative).
    "OneCycleLR-3phase-linear": (
        lambda o: L.OneCycleLR(o, max_lr=[1.0, 0.3], total_steps=STEPS + 1, pct_start=0.25,
                               anneal_strategy="linear", three_phase=True,
                               cycle_momentum=False),
        lambda b: S.one_cycle(10 * b, STEPS + 1, 0.25, "linear", three_phase=True)),
    "PolynomialLR": (lambda o: L.PolynomialLR(o, total_iters=800, power=2.0),
                     lambda b: S.polynomial(b, 800, 2.0)),
    "LinearLR": (lambda o: L.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=600),
                 lambda b: S.linear(0.1 * b, 0.9 * b, 600)),
    "ConstantLR": (lambda o: L.ConstantLR(o, factor=0.25, total_iters=50),
                   lambda b: S.join([S.constant(0.25 * b), S.constant(b)], [50])),
    "SequentialLR-warmup-cosine": (
        lambda o: L.SequentialLR(o, [L.LinearLR(o, start_factor=1e-3, total_iters=100),
                                     L.CosineAnnealingLR(o, T_max=900)], milestones=[100]),
        lambda b: S.linear_warmup(S.cosine_annealing(b, 900), 100, start_factor=1e-3)),
}


def _torch_reference(name: str) -> list[list[float]]:
    """Per-step group lrs of torch's scheduler; the closed form too where torch has one."""
    opt = _make_opt("torch")
    sched = CASES[name][0](opt)
    lrs = []
    for t in range(STEPS + 1):
        lrs.append([float(g["lr"]) for g in opt.param_groups])
        if t > 0 and hasattr(sched, "_get_closed_form_lr"):
            closed = [float(v) for v in sched._get_closed_form_lr()]
            assert all(_close(a, b, 1.0) for a, b in zip(lrs[-1], closed))
        if t < STEPS:
            _train_step(opt)
            sched.step()
    return lrs


_REF_CACHE: dict[str, list[list[float]]] = {}


def _reference(name: str) -> list[list[float]]:
    if name not in _REF_CACHE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SequentialLR's deprecated step(0)
            _REF_CACHE[name] = _torch_reference(name)
    return _REF_CACHE[name]


def _ours(opt: torch.optim.Optimizer, name: str, last_epoch: int = -1) -> S.ScheduledLR:
    return S.ScheduledLR(opt, [CASES[name][1](b) for b in BASE_LRS], last_epoch=last_epoch)


def _assert_matches(opt: torch.optim.Optimizer, sched: S.ScheduledLR, ref: list[float],
                    t: int) -> None:
    got = [float(g["lr"]) for g in opt.param_groups]
    scale = max(abs(v) for v in ref) or 1.0
    assert all(_close(a, b, scale) for a, b in zip(got, ref)), (t, got, ref)
    assert [float(v) for v in sched.get_last_lr()] == got
    assert sched.last_epoch == t


@pytest.mark.parametrize("kind", ["torch", "optimlab"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_parity_with_torch(name: str, kind: str) -> None:
    ref = _reference(name)
    opt = _make_opt(kind)
    sched = _ours(opt, name)
    for t in range(STEPS + 1):
        _assert_matches(opt, sched, ref[t], t)
        # the schedule on its own gives the same numbers
        assert _close(CASES[name][1](BASE_LRS[0])(t), ref[t][0], max(r[0] for r in ref))
        if t < STEPS:
            _train_step(opt)
            sched.step()


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_round_trip(name: str) -> None:
    ref = _reference(name)
    opt = _make_opt("optimlab")
    sched = _ours(opt, name)
    for _ in range(HALF):
        _train_step(opt)
        sched.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # plain numbers only
    assert "schedules" not in saved["sched"]

    opt2 = _make_opt("optimlab")
    sched2 = _ours(opt2, name)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    _assert_matches(opt2, sched2, ref[HALF], HALF)
    for t in range(HALF + 1, STEPS + 1):
        _train_step(opt2)
        sched2.step()
        _assert_matches(opt2, sched2, ref[t], t)


@pytest.mark.parametrize("name", sorted(CASES))
def test_last_epoch_resume(name: str) -> None:
    ref = _reference(name)
    opt = _make_opt("torch")  # fresh optimizer, no "initial_lr" in its groups
    sched = _ours(opt, name, last_epoch=HALF - 1)
    _assert_matches(opt, sched, ref[HALF], HALF)
    for t in range(HALF + 1, STEPS + 1):
        _train_step(opt)
        sched.step()
        _assert_matches(opt, sched, ref[t], t)


def test_one_cycle_extrapolated_past_its_end_is_refused_when_negative() -> None:
    """torch's OneCycleLR sets step ``total_steps`` by extrapolating the last phase: linear
    and three-phase, that is below zero. The schedule gives the same number (its parity with
    torch); ScheduledLR refuses to set it as a learning rate, at that step."""
    schedule = S.one_cycle(1.0, 100, 0.25, "linear", three_phase=True)
    assert schedule(99) > 0 > schedule(100)
    opt = _make_opt("torch")
    ref = L.OneCycleLR(_make_opt("torch"), max_lr=1.0, total_steps=100, pct_start=0.25,
                       anneal_strategy="linear", three_phase=True, cycle_momentum=False)
    sched = S.ScheduledLR(opt, schedule)
    for _ in range(99):
        _train_step(opt)
        sched.step()
        ref.optimizer.step()
        ref.step()
    _train_step(opt)
    with pytest.raises(ValueError, match=r"lr = -[0-9.e-]+ at step 100: a learning rate must "
                                         r"be a finite number >= 0"):
        sched.step()
    assert sched.last_epoch == 99 and opt.param_groups[0]["lr"] == schedule(99)
    ref.optimizer.step()
    ref.step()
    assert ref.get_last_lr()[0] == schedule(100) < 0  # torch sets it


def test_single_schedule_sets_every_group() -> None:
    opt = _make_opt("torch")
    sched = S.ScheduledLR(opt, S.linear(1.0, 0.0, 10))
    for t in range(12):
        assert [g["lr"] for g in opt.param_groups] == [max(1.0 - t / 10, 0.0)] * 2
        _train_step(opt)
        sched.step()


def test_tensor_lr_is_filled_in_place() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    lr = torch.tensor(0.1)
    opt = torch.optim.SGD([p], lr=lr)
    sched = S.ScheduledLR(opt, S.exponential_decay(0.1, 0.5))
    _train_step(opt)
    sched.step()
    assert opt.param_groups[0]["lr"] is lr
    # a float32 tensor: 0.05 rounded to float32 (<= 2**-24 ~ 6e-8 relative); approx: 1e-6
    assert lr.item() == pytest.approx(0.05)


# --------------------------------------------------------------------------- properties


positive = st.floats(1e-6, 10.0)
base_schedules = st.one_of(
    positive.map(S.constant),
    st.builds(S.cosine_annealing, positive, st.integers(1, 100)),
    st.builds(S.exponential_decay, positive, st.floats(0.5, 1.0)),
)


@PROPS
@given(base_schedules, st.integers(1, 200), st.floats(0.0, 1.0))
def test_linear_warmup_reaches_base_and_is_monotone(g: S.Schedule, w: int, sf: float) -> None:
    f = S.linear_warmup(g, w, start_factor=sf)
    vals = [f(t) for t in range(w + 1)]
    # Python floats: a few float64 roundings (1.1e-16 each) on either side
    assert vals[0] == pytest.approx(sf * g(0), rel=1e-12)
    assert vals[w] == g(0)
    assert all(a <= b for a, b in pairwise(vals))
    assert all(f(w + k) == g(k) for k in range(0, 50, 7))


@PROPS
@given(base_schedules, st.integers(1, 200), st.floats(1e-6, 1.0))
def test_exponential_warmup_reaches_base_and_is_monotone(g: S.Schedule, w: int,
                                                         sf: float) -> None:
    f = S.exponential_warmup(g, w, start_factor=sf)
    vals = [f(t) for t in range(w + 1)]
    # f(t) = g(0) * sf ** (1 - t / w) in Python floats: a few float64 roundings each
    assert vals[0] == pytest.approx(sf * g(0), rel=1e-12)
    assert vals[w] == g(0)
    # Monotone up to rounding: the exponent's rounding (<= 1.1e-16 relative of |1 - t / w|)
    # moves the pow by at most 1.1e-16 |ln sf|, and pow and product round once each; for sf
    # near 1 consecutive values are equal in exact arithmetic and may differ by these ~4e-16.
    assert all(a <= b * (1 + 1e-15) for a, b in pairwise(vals))
    # The same roundings in each ratio, times |ln sf| <= 13.8 (sf >= 1e-6): <= ~5e-15.
    ratios = [b / a for a, b in pairwise(vals)]
    assert all(r == pytest.approx(ratios[0], rel=1e-9) for r in ratios)
    assert all(f(w + k) == g(k) for k in range(0, 50, 7))


@PROPS
@given(positive, st.integers(1, 30), st.integers(1, 3), st.floats(0.0, 0.5))
def test_cosine_restarts_at_expected_steps(value: float, T_0: int, T_mult: int,
                                           min_frac: float) -> None:
    eta_min = min_frac * value
    f = S.cosine_warm_restarts(value, T_0, T_mult, eta_min)
    restarts, r, period = [0], 0, T_0
    while r + period <= 3000:
        r += period
        restarts.append(r)
        period *= T_mult
    for r in restarts:
        assert f(r) == value  # the maximum, exactly
        if r and T_0 > 1:
            assert f(r - 1) < value  # just before a restart: near eta_min
    assert all(eta_min <= f(t) <= value for t in range(0, restarts[-1] + 5, 3))
    # strictly decreasing within a period: consecutive values differ by at least
    # (value - eta_min) sin(pi / (2 P))**2 ~ 2.5 (value - eta_min) / P**2 >= 1e-7 value for
    # the periods P < 3000 here, 1e9 times a float64 rounding
    for a, b in pairwise(restarts):
        seg = [f(t) for t in range(a, b)]
        assert all(x > y for x, y in pairwise(seg))


@PROPS
@given(positive, st.integers(1, 500))
def test_inverse_sqrt(value: float, w: int) -> None:
    f = S.inverse_sqrt(value, w)
    assert f(0) == 0.0
    assert f(w) == value
    assert all(f(t) < f(t + 1) for t in range(0, w, max(1, w // 20)))
    for t in (w, w + 1, 2 * w, 4 * w, 10 * w + 3, 10**6):  # a few float64 roundings each
        assert f(t) * math.sqrt(t) == pytest.approx(value * math.sqrt(w), rel=1e-12)
    assert f(4 * w) == pytest.approx(value / 2, rel=1e-12)


@PROPS
@given(positive, st.integers(1, 500), st.floats(0.1, 5.0), st.floats(0.0, 0.5))
def test_polynomial_hits_end_value(value: float, T: int, power: float, end_frac: float) -> None:
    end = end_frac * value
    f = S.polynomial(value, T, power, end)
    assert f(0) == pytest.approx(value, rel=1e-12)  # a few float64 roundings (1.1e-16 each)
    assert f(T) == end
    assert f(T + 17) == end
    vals = [f(t) for t in range(0, T + 1, max(1, T // 25))]
    assert all(a >= b for a, b in pairwise(vals))


@PROPS
@given(st.lists(st.integers(1, 50), min_size=1, max_size=4), positive)
def test_join_switches_at_boundaries(gaps: list[int], value: float) -> None:
    bounds = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    parts = [S.linear(value * (i + 1), value * (i + 1) + 1.0, 1000)
             for i in range(len(bounds) + 1)]
    f = S.join(parts, bounds)
    starts = [0, *bounds]
    for i, b in enumerate(starts):
        assert f(b) == parts[i](0)  # each part starts fresh at its boundary
        if i:
            assert f(b - 1) == parts[i - 1](b - 1 - starts[i - 1])
        assert f(b + 3) == parts[i](3) or (i + 1 < len(starts) and b + 3 >= starts[i + 1])


def test_warmup_cosine_and_step_validation() -> None:
    f = S.warmup_cosine(1.0, 10, 110, eta_min=0.1)
    # f(110) = 0.1 + 0.9 * (1 + cos(pi)) / 2: a few float64 roundings (1.1e-16 each)
    assert f(0) == 0.0 and f(10) == 1.0 and f(110) == pytest.approx(0.1, rel=1e-12)
    with pytest.raises(ValueError, match="step"):
        f(-1)
    with pytest.raises(ValueError, match="step"):
        f(1.5)  # type: ignore[arg-type]


def test_schedules_are_immutable_and_hashable() -> None:
    s = S.multi_step(1.0, [1, 2], 0.5)
    with pytest.raises(AttributeError):
        s.gamma = 0.1  # type: ignore[misc]
    assert s == S.multi_step(1.0, (1, 2), 0.5)
    assert hash(s) == hash(S.multi_step(1.0, (1, 2), 0.5))


# --------------------------------------------------------------------------- other hyperparameters


def _params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]


def _grads(ps: list[torch.Tensor], t: int) -> None:
    g = torch.Generator().manual_seed(t)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)


def test_scheduled_momentum_drives_optimlab_sgd() -> None:
    sched_fn = S.linear(0.5, 0.95, 8)
    ours_p, ref_p, const_p = _params(), _params(), _params()
    ours = optimlab.SGD(ours_p, lr=0.1, momentum=0.9)
    ref = torch.optim.SGD(ref_p, lr=0.1, momentum=0.9)
    const = optimlab.SGD(const_p, lr=0.1, momentum=0.9)
    sched = S.ScheduledHyperparameter(ours, "momentum", sched_fn)
    for t in range(12):
        assert ours.param_groups[0]["momentum"] == sched_fn(t)
        assert sched.get_last_value() == [sched_fn(t)]
        ref.param_groups[0]["momentum"] = sched_fn(t)
        for o, ps in ((ours, ours_p), (ref, ref_p), (const, const_p)):
            _grads(ps, t)
            o.step()
        sched.step()
    # Fixed random gradients, no feedback: 12 steps, each rounding p at most an ulp apart even
    # where the two order operations differently; 12 ulps fit in 1e-6 (1 + |p|) in every binade
    # below |p| = 4 (ulp 2.4e-7 in [2, 4)), even if all fell the same way (measured:
    # bit-identical). The schedule moves every entry by >= 0.03 (allclose's 1e-5 + 1e-8 is
    # 3000x smaller).
    for a, b, c in zip(ours_p, ref_p, const_p):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(a, c)  # the schedule changed the trajectory


def test_scheduled_beta1_drives_optimlab_adam() -> None:
    sched_fn = S.cosine_annealing(0.9, 10, eta_min=0.5)
    ours_p, ref_p, const_p = _params(), _params(), _params()
    ours = optimlab.Adam(ours_p, lr=0.01, betas=(0.9, 0.99))
    ref = torch.optim.Adam(ref_p, lr=0.01, betas=(0.9, 0.99))
    const = optimlab.Adam(const_p, lr=0.01, betas=(0.9, 0.99))
    sched = S.ScheduledHyperparameter(ours, "betas", sched_fn, index=0)
    for t in range(10):
        betas = ours.param_groups[0]["betas"]
        assert isinstance(betas, tuple) and betas == (sched_fn(t), 0.99)
        ref.param_groups[0]["betas"] = (sched_fn(t), 0.99)
        for o, ps in ((ours, ours_p), (ref, ref_p), (const, const_p)):
            _grads(ps, t)
            o.step()
        sched.step()
    # As above: 10 steps of fixed gradients, <= 10 ulps apart even if every rounding fell the
    # same way (measured 3e-8, one ulp); the schedule moves some entry of each tensor by
    # >= 0.016, 1000x allclose's tolerance.
    for a, b, c in zip(ours_p, ref_p, const_p):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(a, c)


def test_scheduled_hyperparameter_per_group_resume_and_state_dict() -> None:
    p1, p2 = _params()
    groups = [{"params": [p1], "weight_decay": 0.1}, {"params": [p2], "weight_decay": 0.2}]
    fns = [S.exponential_decay(0.1, 0.9), S.exponential_decay(0.2, 0.5)]
    opt = torch.optim.SGD(groups, lr=0.1)
    sched = S.ScheduledHyperparameter(opt, "weight_decay", fns)
    for _ in range(5):
        _grads([p1, p2], 0)
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state["last_epoch"] == 5
    opt2 = torch.optim.SGD([{"params": [p1], "weight_decay": 0.0},
                            {"params": [p2], "weight_decay": 0.0}], lr=0.1)
    sched2 = S.ScheduledHyperparameter(opt2, "weight_decay", fns)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    sched.step()
    sched2.step()
    assert [g["weight_decay"] for g in opt2.param_groups] == [f(6) for f in fns]
    assert sched2.get_last_value() == sched.get_last_value()
    opt3 = torch.optim.SGD([{"params": [p1]}, {"params": [p2]}], lr=0.1)
    sched3 = S.ScheduledHyperparameter(opt3, "weight_decay", fns, last_epoch=5)
    assert sched3.last_epoch == 6
    assert [g["weight_decay"] for g in opt3.param_groups] == [f(6) for f in fns]
    with pytest.raises(ValueError, match="key"):
        S.ScheduledHyperparameter(opt3, "momentum", fns).load_state_dict(state)


def test_reduce_on_plateau_matches_torch_for_lr() -> None:
    metrics = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85] * 4
    kw = dict(mode="min", factor=0.5, patience=2, threshold=1e-3, cooldown=1)
    o1, o2 = _make_opt("torch"), _make_opt("torch")
    ref = L.ReduceLROnPlateau(o1, min_lr=[0.01, 0.0], **kw)
    ours = S.ReduceOnPlateau(o2, min_value=[0.01, 0.0], **kw)
    for m in metrics:
        ref.step(m)
        ours.step(torch.tensor(m))
        assert [g["lr"] for g in o2.param_groups] == [g["lr"] for g in o1.param_groups]
        assert ours.get_last_value() == [float(v) for v in ref.get_last_lr()]
    assert o2.param_groups[0]["lr"] < BASE_LRS[0]
    fresh = S.ReduceOnPlateau(_make_opt("torch"), **kw)
    fresh.load_state_dict(ours.state_dict())
    assert fresh.best == ours.best and fresh.num_bad_epochs == ours.num_bad_epochs


def test_reduce_on_plateau_drives_beta1() -> None:
    opt = optimlab.Adam(_params(), lr=0.01, betas=(0.9, 0.999))
    sched = S.ReduceOnPlateau(opt, "betas", index=0, mode="max", factor=0.5, patience=0)
    sched.step(1.0)
    sched.step(0.5)
    assert opt.param_groups[0]["betas"] == (0.45, 0.999)


# --------------------------------------------------------------------------- bad inputs

_ONE = S.constant(1.0)


def _sgd(**kw: object) -> torch.optim.Optimizer:
    return optimlab.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, **kw)


BAD: list[tuple[str, Callable[[], object], str]] = [
    ("value-nan", lambda: S.constant(float("nan")), "value"),
    ("value-str", lambda: S.constant("1"), "value"),
    ("step_size-0", lambda: S.step_decay(1.0, 0, 0.5), "step_size"),
    ("gamma-0", lambda: S.step_decay(1.0, 3, 0.0), "gamma"),
    ("gamma-gt1", lambda: S.exponential_decay(1.0, 1.5), "gamma"),
    ("gamma-neg", lambda: S.multi_step(1.0, [1], -0.1), "gamma"),
    ("milestones-empty", lambda: S.multi_step(1.0, [], 0.5), "milestones"),
    ("milestones-unsorted", lambda: S.multi_step(1.0, [5, 3], 0.5), "milestones"),
    ("milestones-repeated", lambda: S.multi_step(1.0, [3, 3], 0.5), "milestones"),
    ("milestones-negative", lambda: S.multi_step(1.0, [-1, 3], 0.5), "milestones"),
    ("T_max-0", lambda: S.cosine_annealing(1.0, 0), "T_max"),
    ("T_0-neg", lambda: S.cosine_warm_restarts(1.0, -5), "T_0"),
    ("T_0-0", lambda: S.cosine_warm_restarts(1.0, 0), "T_0"),
    ("T_mult-0", lambda: S.cosine_warm_restarts(1.0, 5, T_mult=0), "T_mult"),
    ("T_mult-float", lambda: S.cosine_warm_restarts(1.0, 5, T_mult=1.5), "T_mult"),
    ("warmup-neg", lambda: S.linear_warmup(_ONE, -1), "warmup_steps"),
    ("start_factor-gt1", lambda: S.linear_warmup(_ONE, 5, start_factor=2.0), "start_factor"),
    ("exp-start_factor-0", lambda: S.exponential_warmup(_ONE, 5, start_factor=0.0),
     "start_factor"),
    ("schedule_after", lambda: S.linear_warmup(1.0, 5), "schedule_after"),
    ("warmup-gt-total", lambda: S.warmup_cosine(1.0, 200, 100), "warmup_steps"),
    ("warmup-eq-total", lambda: S.warmup_cosine(1.0, 100, 100), "warmup_steps"),
    ("total_steps-neg", lambda: S.warmup_cosine(1.0, 1, -3), "total_steps"),
    ("one_cycle-total", lambda: S.one_cycle(1.0, 0), "total_steps"),
    ("one_cycle-pct-1", lambda: S.one_cycle(1.0, 100, pct_start=1.0), "pct_start"),
    ("one_cycle-warmup-gt-total", lambda: S.one_cycle(1.0, 100, pct_start=0.6,
                                                      three_phase=True), "pct_start"),
    ("one_cycle-phase-empty", lambda: S.one_cycle(1.0, 5, pct_start=0.1), "pct_start"),
    ("one_cycle-anneal", lambda: S.one_cycle(1.0, 100, anneal_strategy="exp"),
     "anneal_strategy"),
    ("one_cycle-div", lambda: S.one_cycle(1.0, 100, div_factor=0), "div_factor"),
    ("poly-total", lambda: S.polynomial(1.0, 0), "total_steps"),
    ("poly-power", lambda: S.polynomial(1.0, 10, power=-1.0), "power"),
    ("inverse_sqrt-warmup", lambda: S.inverse_sqrt(1.0, 0), "warmup_steps"),
    ("linear-steps", lambda: S.linear(1.0, 0.0, -2), "steps"),
    ("join-empty", lambda: S.join([], []), "schedules"),
    ("join-count", lambda: S.join([_ONE, _ONE], [1, 2]), "boundaries"),
    ("join-order", lambda: S.join([_ONE, _ONE, _ONE], [5, 5]), "boundaries"),
    ("join-zero", lambda: S.join([_ONE, _ONE], [0]), "boundaries"),
    ("join-not-schedule", lambda: S.join([_ONE, 3.0], [2]), r"schedules\[1\]"),
    ("step-neg", lambda: _ONE(-1), "step"),
    ("lr-schedule-count", lambda: S.ScheduledLR(_sgd(), [_ONE, _ONE]), "schedule"),
    ("lr-schedule-type", lambda: S.ScheduledLR(_sgd(), 0.1), "schedule"),
    ("lr-last_epoch", lambda: S.ScheduledLR(_sgd(), _ONE, last_epoch=-2), "last_epoch"),
    ("hp-unknown-key", lambda: S.ScheduledHyperparameter(_sgd(), "rho", _ONE),
     r"'rho'.*available keys: .*momentum"),
    ("hp-params", lambda: S.ScheduledHyperparameter(_sgd(), "params", _ONE), "key"),
    ("hp-tuple-needs-index",
     lambda: S.ScheduledHyperparameter(optimlab.Adam(_params()), "betas", _ONE), "index"),
    ("hp-index-range",
     lambda: S.ScheduledHyperparameter(optimlab.Adam(_params()), "betas", _ONE, index=2),
     "index"),
    ("hp-index-scalar", lambda: S.ScheduledHyperparameter(_sgd(), "momentum", _ONE, index=0),
     "index"),
    ("hp-non-number", lambda: S.ScheduledHyperparameter(_sgd(), "nesterov", _ONE),
     "nesterov"),
    ("hp-last_epoch",
     lambda: S.ScheduledHyperparameter(_sgd(), "momentum", _ONE, last_epoch=-3), "last_epoch"),
    ("plateau-key", lambda: S.ReduceOnPlateau(_sgd(), "rho"), "rho"),
    ("plateau-factor", lambda: S.ReduceOnPlateau(_sgd(), factor=1.0), "factor"),
    ("plateau-mode", lambda: S.ReduceOnPlateau(_sgd(), mode="up"), "mode"),
    ("plateau-threshold_mode", lambda: S.ReduceOnPlateau(_sgd(), threshold_mode="x"),
     "threshold_mode"),
    ("plateau-patience", lambda: S.ReduceOnPlateau(_sgd(), patience=-1), "patience"),
    ("plateau-min_value", lambda: S.ReduceOnPlateau(_sgd(), min_value=[0.0, 0.0]),
     "min_value"),
]


@pytest.mark.parametrize(("make", "match"), [(m, f) for _, m, f in BAD],
                         ids=[i for i, _, _ in BAD])
def test_bad_input_raises_value_error(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()
