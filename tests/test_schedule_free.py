"""ScheduleFreeAdamW and ScheduleFreeSGD: the paper's algorithm in float64, the average that
eval mode exposes, the train/eval switch, checkpoints, BatchNorm, and the engine options.

The contract cases (torch.optim behaviour, state dicts, schedulers, ...) are in
``tests/cases_schedule_free.py``, run by ``tests/test_contract.py``.
"""

from __future__ import annotations

import copy
import io
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from optimlab import update_bn
from optimlab.optimizers.schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD

SHAPES = [(4, 3), (5,)]


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
            for s in SHAPES]


def grad_at(y: Tensor, t: int, i: int) -> Tensor:
    """A noisy quadratic's gradient at ``y``: ``(y - 0.5) + 0.3 noise_t``."""
    gen = torch.Generator().manual_seed(100 * t + i)
    return (y - 0.5) + 0.3 * torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)


def run(opt: torch.optim.Optimizer, ps: list[Tensor], steps: int, start: int = 0) -> None:
    for t in range(start, start + steps):
        for i, p in enumerate(ps):
            p.grad = grad_at(p.detach(), t, i)
        opt.step()


# ----- the paper's algorithm, three sequences, float64 -----------------------------------------
def paper_run(kind: str, init: list[Tensor], steps: int, lr: float, beta: float, b2: float,
              eps: float, wd: float, warmup: int, r: float, power: float, maximize: bool
              ) -> tuple[list[list[Tensor]], list[Tensor]]:
    """Schedule-Free from the paper, keeping x, y and z (float64, one tensor at a time).

    Returns the ``y`` of every step (the point after it) and the final ``x``."""
    xs = [p.detach().double().clone() for p in init]
    zs = [x.clone() for x in xs]
    vs = [torch.zeros_like(x) for x in xs]
    weight_sum, lr_max, ys_all = 0.0, 0.0, []
    for t in range(1, steps + 1):
        gamma = lr * (min(1.0, t / warmup) if warmup else 1.0)
        lr_max = max(lr_max, gamma)
        w = t**r * lr_max**power
        weight_sum += w
        c = w / weight_sum if weight_sum > 0 else 0.0
        ys = []
        for i, (x, z, v) in enumerate(zip(xs, zs, vs)):
            y = (1 - beta) * z + beta * x
            g = grad_at(y, t - 1, i) * (-1.0 if maximize else 1.0)
            if kind == "adamw":
                v.mul_(b2).add_((1 - b2) * g * g)
                d = g / (torch.sqrt(v / (1 - b2**t)) + eps)
            else:
                d = g
            z -= gamma * (d + wd * y)
            x.mul_(1 - c).add_(c * z)
            ys.append((1 - beta) * z + beta * x)
        ys_all.append(ys)
    return ys_all, xs


def make(kind: str, ps: list[Tensor], lr: float, beta: float, b2: float, eps: float, wd: float,
         warmup: int, r: float, power: float, maximize: bool, **kw: Any) -> torch.optim.Optimizer:
    common = dict(lr=lr, weight_decay=wd, warmup_steps=warmup, r=r, weight_lr_power=power,
                  maximize=maximize, **kw)
    if kind == "adamw":
        return ScheduleFreeAdamW(ps, betas=(beta, b2), eps=eps, **common)
    return ScheduleFreeSGD(ps, momentum=beta, **common)


OPTIONS = dict(
    kind=st.sampled_from(["adamw", "sgd"]),
    lr=st.sampled_from([1e-3, 0.02, 0.1]),
    beta=st.sampled_from([0.5, 0.9, 0.98]),
    b2=st.sampled_from([0.9, 0.999]),
    eps=st.sampled_from([1e-8, 1e-3]),
    wd=st.sampled_from([0.0, 0.05]),
    warmup=st.sampled_from([0, 1, 5]),
    r=st.sampled_from([0.0, 1.0, 2.5]),
    power=st.sampled_from([0.0, 1.0, 2.0]),
    maximize=st.booleans(),
)


@settings(max_examples=20, deadline=None)
@given(**OPTIONS)
def test_matches_the_papers_three_sequences_in_float64(**o: Any) -> None:
    # Ours updates y directly (x eliminated), the reference keeps x, y and z: the same real
    # numbers by different roundings. Each step rounds ~10 operations on O(1) values, 2**-53
    # ~ 1.1e-16 each; the differences reach y through the gradient's Lipschitz factor 1 and
    # the normalization (<= 1/eps-bounded but here O(1/sqrt(v)) ~ O(1)), so 15 steps stay
    # ~1e-14 of |y| <= 4. 1e-10 leaves four orders of magnitude.
    ps = make_params()
    ys, x = paper_run(o["kind"], ps, 15, o["lr"], o["beta"], o["b2"], o["eps"], o["wd"],
                      o["warmup"], o["r"], o["power"], o["maximize"])
    opt = make(ps=ps, **o)
    for t in range(15):
        run(opt, ps, 1, start=t)
        for p, y in zip(ps, ys[t]):
            torch.testing.assert_close(p.detach(), y, rtol=1e-10, atol=1e-10)
    opt.eval()
    for p, xr in zip(ps, x):
        torch.testing.assert_close(p.detach(), xr, rtol=1e-10, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(**OPTIONS)
def test_matches_the_paper_in_float32(**o: Any) -> None:
    # float32 parameters against the float64 reference: each step rounds y once more than
    # the reference (half an ulp, 6e-8 relative) plus a few ulps of the step gamma * d
    # (gamma <= 0.1); the quadratic damps what came before (factor 1 - gamma (1 - beta)
    # < 1), so 15 steps accumulate below 15 * 2 ulp ~ 2e-6 of |y|; x = (y - (1 - beta) z) /
    # beta adds 1/beta <= 2 of that. Relative 1e-5 (with atol for entries near 0).
    ps = make_params(torch.float32)
    ys, x = paper_run(o["kind"], ps, 15, o["lr"], o["beta"], o["b2"], o["eps"], o["wd"],
                      o["warmup"], o["r"], o["power"], o["maximize"])
    opt = make(ps=ps, **o)
    run(opt, ps, 15)
    for p, y in zip(ps, ys[-1]):
        torch.testing.assert_close(p.detach().double(), y, rtol=1e-5, atol=1e-5)
    opt.eval()
    for p, xr in zip(ps, x):
        torch.testing.assert_close(p.detach().double(), xr, rtol=1e-5, atol=1e-5)


# ----- acceptance: eval mode holds the documented average of the iterates ----------------------
@pytest.mark.parametrize("kind", ["adamw", "sgd"])
@pytest.mark.parametrize(("warmup", "r", "power"), [(0, 0.0, 2.0), (4, 0.0, 2.0), (3, 1.5, 1.0)])
def test_eval_weights_are_the_weighted_average_of_the_z_iterates(kind: str, warmup: int,
                                                                 r: float, power: float) -> None:
    """x_T = sum_t w_t z_{t+1} / sum_t w_t with w_t = t^r (max_{i<=t} gamma_i)^power, gamma_t =
    lr_t min(1, t / warmup): the z after every step recorded, the weights computed here."""
    ps = make_params()
    opt = make(kind, ps, lr=0.05, beta=0.9, b2=0.999, eps=1e-8, wd=0.01, warmup=warmup, r=r,
               power=power, maximize=False)
    lrs = [0.05] * 6 + [0.08] * 4 + [0.02] * 6  # a rise and a fall: the weights use the max
    zs, weights, lr_max = [], [], 0.0
    for t, lr in enumerate(lrs, start=1):
        opt.param_groups[0]["lr"] = lr
        run(opt, ps, 1, start=t - 1)
        zs.append([opt.state[p]["z"].clone() for p in ps])
        lr_max = max(lr_max, lr * (min(1.0, t / warmup) if warmup else 1.0))
        weights.append(t**r * lr_max**power)
    opt.eval()
    total = math.fsum(weights)
    for i, p in enumerate(ps):
        avg = sum(w * z[i] for w, z in zip(weights, zs)) / total
        # x is recovered as y + (1 - 1/beta)(z - y), a few roundings of O(1) numbers
        # amplified by 1/beta = 1.1: ~1e-15; 1e-10 as required.
        torch.testing.assert_close(p.detach(), avg, rtol=1e-10, atol=1e-10)


# ----- train / eval ----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_train_and_eval_are_idempotent_inverses(cls: type) -> None:
    ps = make_params()
    opt = cls(ps, lr=0.05)
    assert opt.train_mode and all(g["train_mode"] for g in opt.param_groups)
    run(opt, ps, 5)
    y = [p.detach().clone() for p in ps]
    opt.eval()
    x = [p.detach().clone() for p in ps]
    assert not opt.train_mode
    opt.eval()  # idempotent
    assert all(torch.equal(p, q) for p, q in zip(ps, x))
    assert not all(torch.equal(p, q) for p, q in zip(y, x))
    opt.train()
    opt.train()
    # y -> x -> y: y + a (z - y) and back, a few roundings of O(1) numbers (~1e-15).
    for p, q in zip(ps, y):
        torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_step_in_eval_mode_raises_and_changes_nothing(cls: type) -> None:
    ps = make_params()
    opt = cls(ps, lr=0.05)
    run(opt, ps, 2)
    opt.eval()
    before = [p.detach().clone() for p in ps]
    state = copy.deepcopy(opt.state_dict())
    with pytest.raises(RuntimeError, match=r"eval mode.*optimizer\.train\(\)"):
        run(opt, ps, 1, start=2)
    assert all(torch.equal(p, q) for p, q in zip(ps, before))
    assert opt.state_dict()["state"].keys() == state["state"].keys()
    assert all(torch.equal(opt.state[p]["step"], torch.tensor(2.0)) for p in ps)


def test_eval_before_any_step_and_new_groups_follow_the_mode() -> None:
    ps = make_params()
    opt = ScheduleFreeSGD(ps[:1], lr=0.1)
    opt.eval()  # no state yet: x = y = z, nothing moves
    assert torch.equal(ps[0], make_params()[0])
    opt.add_param_group({"params": ps[1:], "train_mode": True})
    assert opt.param_groups[1]["train_mode"] is False
    opt.train()
    run(opt, ps, 3)
    assert opt.state[ps[1]]["step"].item() == 3


# ----- checkpoints -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
@pytest.mark.parametrize("saved_in", ["train", "eval"])
def test_state_dict_round_trip_in_either_mode(cls: type, saved_in: str) -> None:
    ps = make_params(torch.float32)
    opt = cls(ps, lr=0.02, warmup_steps=2)
    run(opt, ps, 4)
    if saved_in == "eval":
        opt.eval()
    buf = io.BytesIO()
    torch.save({"model": [p.detach() for p in ps], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    qs = [nn.Parameter(t.clone()) for t in ckpt["model"]]
    fresh = cls(qs, lr=0.02, warmup_steps=2)
    fresh.load_state_dict(ckpt["opt"])
    assert fresh.train_mode == (saved_in == "train")
    for p, q in zip(ps, qs):  # the averaging weights stay float64 on the CPU
        assert fresh.state[q]["weight_sum"].dtype == torch.float64
        assert torch.equal(fresh.state[q]["weight_sum"], opt.state[p]["weight_sum"])
    for o in (opt, fresh):
        o.train()
    run(opt, ps, 3, start=4)
    run(fresh, qs, 3, start=4)
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


# ----- options ---------------------------------------------------------------------------------
def test_param_groups_have_their_own_hyperparameters() -> None:
    ps, qs = make_params(), make_params()
    alt = dict(lr=0.03, betas=(0.7, 0.99), warmup_steps=2, r=1.0, weight_lr_power=1.0)
    joint = ScheduleFreeAdamW([{"params": ps[:1]}, {"params": ps[1:], **alt}], lr=0.05)
    sep = [ScheduleFreeAdamW(qs[:1], lr=0.05), ScheduleFreeAdamW(qs[1:], **alt)]
    run(joint, ps, 6)
    for t in range(6):
        for i, q in enumerate(qs):
            q.grad = grad_at(q.detach(), t, i)
        for o in sep:
            o.step()
    joint.eval()
    for o in sep:
        o.eval()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_maximize_equals_minimizing_the_negated_gradient(cls: type) -> None:
    ps, qs = make_params(), make_params()
    a, b = cls(ps, lr=0.05, maximize=True), cls(qs, lr=0.05)
    for t in range(5):
        for i, (p, q) in enumerate(zip(ps, qs)):
            g = grad_at(p.detach(), t, i)
            p.grad, q.grad = -g, g
        a.step()
        b.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_state_dtype_bfloat16_runs_close_to_float32(cls: type) -> None:
    ps, qs = make_params(torch.float32), make_params(torch.float32)
    lo, hi = cls(ps, lr=0.02, state_dtype=torch.bfloat16), cls(qs, lr=0.02)
    run(lo, ps, 20)
    run(hi, qs, 20)
    # z is the iterate the weights are read from: kept in the parameters' precision
    # (full_precision_states); only AdamW's second moment is stored in bfloat16.
    assert lo.state[ps[0]]["z"].dtype == torch.float32
    if cls is ScheduleFreeAdamW:
        assert lo.state[ps[0]]["exp_avg_sq"].dtype == torch.bfloat16
    assert lo.state[ps[0]]["weight_sum"].dtype == torch.float64
    lo.eval()
    hi.eval()
    # Only v is rounded (2**-8 relative, stochastically): the AdamW direction g/sqrt(v)
    # changes by <= 2**-9 relative per step, lr=0.02 times O(1) directions over 20 steps
    # moves z by < 0.4, so z and x by < 0.4 * 2**-9 ~ 1e-3 from it; 0.05 leaves room.
    for p, q in zip(ps, qs):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0.0, atol=0.05)


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_master_weights_switch_the_master_copy(cls: type) -> None:
    ps = [nn.Parameter(p.detach().to(torch.bfloat16)) for p in make_params(torch.float32)]
    opt = cls(ps, lr=0.02, master_weights=True)
    run(opt, ps, 3)
    y = [opt.state[p]["master_param"].clone() for p in ps]
    opt.eval()
    for p, m in zip(ps, y):
        master = opt.state[p]["master_param"]
        assert not torch.equal(master, m)
        assert torch.equal(p.detach(), master.to(torch.bfloat16))
    opt.train()
    for p, m in zip(ps, y):
        # y -> x -> y in float32: a few roundings of |y| < 4 (~1e-6)
        torch.testing.assert_close(opt.state[p]["master_param"], m, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cls", "kw", "match"), [
    (ScheduleFreeSGD, dict(momentum=0.0), "momentum"),
    (ScheduleFreeSGD, dict(momentum=1.0), "momentum"),
    (ScheduleFreeAdamW, dict(betas=(0.0, 0.999)), r"betas\[0\]"),
    (ScheduleFreeAdamW, dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    (ScheduleFreeAdamW, dict(eps=0.0), "eps"),
    (ScheduleFreeSGD, dict(warmup_steps=-1), "warmup_steps"),
    (ScheduleFreeSGD, dict(warmup_steps=2.5), "warmup_steps"),
    (ScheduleFreeAdamW, dict(r=-1.0), "r"),
    (ScheduleFreeAdamW, dict(weight_lr_power=-0.5), "weight_lr_power"),
    (ScheduleFreeSGD, dict(weight_decay=-0.1), "weight_decay"),
    (ScheduleFreeSGD, dict(lr=-1.0), "lr"),
])
def test_bad_hyperparameters_are_refused_by_name(cls: type, kw: dict[str, Any],
                                                 match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(make_params(), **kw)


def test_defaults_are_the_authors_release() -> None:
    a = ScheduleFreeAdamW(make_params()).defaults
    assert (a["lr"], a["betas"], a["eps"], a["weight_decay"], a["warmup_steps"], a["r"],
            a["weight_lr_power"]) == (0.0025, (0.9, 0.999), 1e-8, 0.0, 0, 0.0, 2.0)
    s = ScheduleFreeSGD(make_params()).defaults
    assert (s["lr"], s["momentum"], s["weight_decay"], s["warmup_steps"], s["r"],
            s["weight_lr_power"]) == (1.0, 0.9, 0.0, 0, 0.0, 2.0)


# ----- BatchNorm -------------------------------------------------------------------------------
def test_update_bn_after_eval_recomputes_statistics_at_x() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    opt = ScheduleFreeAdamW(model.parameters(), lr=0.05)
    data = [torch.randn(16, 3, dtype=torch.float64) for _ in range(4)]
    for xb in data * 3:
        model.train()
        opt.zero_grad()
        model(xb).pow(2).mean().backward()
        opt.step()
    opt.eval()
    update_bn(data, model)
    with torch.no_grad():  # the statistics of the first layer's output at x
        feats = torch.cat([model[0](xb) for xb in data])
    torch.testing.assert_close(model[1].running_mean, feats.mean(0), rtol=1e-12, atol=1e-12)


# ----- compiled step ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_fused_equals_eager(cls: type) -> None:
    ps, qs = make_params(torch.float32), make_params(torch.float32)
    kw = dict(lr=0.02, weight_decay=0.01, warmup_steps=2)
    eager, fused = cls(ps, **kw), cls(qs, fused=True, **kw)
    run(eager, ps, 4)
    run(fused, qs, 4)
    eager.eval()
    fused.eval()
    # The same operations; inductor may contract a*b+c into an FMA (one rounding instead of
    # two): at most an ulp of each O(1) result per operation, ~10 per step, 4 steps: below
    # 40 ulp = 5e-6 of |p| < 2.
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_differentiable_steps_match_finite_differences(cls: type) -> None:
    """Two recorded steps as a function of a tensor lr and the initial parameters (z starts
    as a clone of them, keeping their history), by torch's gradcheck (float64 central
    differences, its default tolerances). The averaging weights are constants of the step:
    with a constant lr, c_t = w_t / sum w_i does not depend on it."""

    def two_steps(lr: Tensor, p0: Tensor) -> Tensor:
        p = p0.clone()
        opt = cls([p], lr=lr, weight_decay=0.01, differentiable=True)
        for t in range(2):
            p.grad = 2 * (p - 0.5) + 0.1 * t
            opt.step()
        return (p**2).sum()

    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    p0 = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                     requires_grad=True)
    assert torch.autograd.gradcheck(two_steps, (lr, p0))


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_8bit_states_keep_z_exact_and_eval_sound(cls: type) -> None:
    """With 8-bit states (state_dtype=torch.uint8) z stays full precision, so eval() reads
    the average from the exact iterate; only AdamW's second moment (>= 4096 elements) is
    quantized."""
    gen = torch.Generator().manual_seed(0)
    ps = [nn.Parameter(torch.randn(64, 80, generator=gen))]
    qs = [nn.Parameter(ps[0].detach().clone())]
    lo, hi = cls(ps, lr=0.02, state_dtype=torch.uint8), cls(qs, lr=0.02)
    run(lo, ps, 10)
    run(hi, qs, 10)
    assert lo.state[ps[0]]["z"].dtype == torch.float32
    lo.eval()
    hi.eval()
    # the quantized v errs by <= half a code gap (~1/64 relative at worst in the dynamic map)
    # per step, so the direction by <= 1/128 relative: 10 steps of lr=0.02 O(1) directions
    # move the weights by < 0.2, within 0.2/128 ~ 2e-3 of the fp32 run; 0.05 leaves room.
    torch.testing.assert_close(ps[0].detach(), qs[0].detach(), rtol=0.0, atol=0.05)
