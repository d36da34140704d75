"""SAM and ASAM (optimlab.sam) against a hand-written float64 reference and their base optimizers.

The reference below is written from the formulas of Foret et al. (SAM) and Kwon et al. (ASAM),
with the base optimizers' updates (SGD with momentum, Adam) written out by hand; it shares no
code with optimlab.sam (only autograd, for the gradients of the test problem).
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import optimlab as ol
from optimlab.sam import SAM, frozen_running_stats
from optimlab.schedules import ScheduledHyperparameter, ScheduledLR, linear

F64 = torch.float64


# ----- the test problem: a small tanh network, squared error ---------------------------------
def _data(seed: int = 0, n: int = 16, dtype=F64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, generator=g, dtype=dtype),
            torch.randn(n, 2, generator=g, dtype=dtype))


def _init(seed: int = 1, dtype=F64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g, dtype=dtype), torch.randn(4, generator=g, dtype=dtype),
            torch.randn(4, 2, generator=g, dtype=dtype)]


def _loss(w: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(x @ w[0] + w[1])
    return ((h @ w[2] - y) ** 2).mean()


def _params(dtype=F64) -> list[nn.Parameter]:
    return [nn.Parameter(t) for t in _init(dtype=dtype)]


def _closure(opt, params, x, y, calls: list[int] | None = None):
    def closure():
        if calls is not None:
            calls.append(1)
        opt.zero_grad()
        loss = _loss(params, x, y)
        loss.backward()
        return loss
    return closure


def _two_step(sam, params, x, y) -> torch.Tensor:
    loss = _loss(params, x, y)
    loss.backward()
    sam.first_step(zero_grad=True)
    _loss(params, x, y).backward()
    sam.second_step(zero_grad=True)
    return loss


# ----- the reference -------------------------------------------------------------------------
def _grad(w: list[torch.Tensor], x, y) -> list[torch.Tensor]:
    w = [t.detach().clone().requires_grad_(True) for t in w]
    return list(torch.autograd.grad(_loss(w, x, y), w))


def _reference(base: str, steps: int, rho, adaptive: bool, *, eta: float = 0.01, lr: float,
               x, y, **hp) -> list[torch.Tensor]:
    """SAM/ASAM in float64 from the formulas; ``rho`` a number or a function of the step."""
    w = [t.clone() for t in _init()]
    buf: list[torch.Tensor | None] = [None] * len(w)
    m = [torch.zeros_like(t) for t in w]
    v = [torch.zeros_like(t) for t in w]
    for t in range(steps):
        r = rho(t) if callable(rho) else rho
        g = _grad(w, x, y)
        if adaptive:  # e = rho T^2 g / ||T g||, T = |w| + eta
            tw = [wi.abs() + eta for wi in w]
            norm = math.sqrt(sum(float(((ti * gi) ** 2).sum()) for ti, gi in zip(tw, g)))
            e = [r * ti * ti * gi / (norm + 1e-12) for ti, gi in zip(tw, g)]
        else:  # e = rho g / ||g||
            norm = math.sqrt(sum(float((gi ** 2).sum()) for gi in g))
            e = [r * gi / (norm + 1e-12) for gi in g]
        gp = _grad([wi + ei for wi, ei in zip(w, e)], x, y)  # gradient at w + e
        for i, gi in enumerate(gp):  # the base step, at w, with g'
            if base == "sgd":  # buf = mu buf + g; w -= lr buf
                buf[i] = gi.clone() if buf[i] is None else hp["momentum"] * buf[i] + gi
                w[i] = w[i] - lr * buf[i]
            else:  # Adam: bias-corrected moments, w -= lr m_hat / (sqrt(v_hat) + eps)
                b1, b2 = hp["betas"]
                m[i] = b1 * m[i] + (1 - b1) * gi
                v[i] = b2 * v[i] + (1 - b2) * gi * gi
                m_hat, v_hat = m[i] / (1 - b1 ** (t + 1)), v[i] / (1 - b2 ** (t + 1))
                w[i] = w[i] - lr * m_hat / (v_hat.sqrt() + hp["eps"])
    return w


BASES = {  # name -> (reference kind, class, hyperparameters)
    "ol.SGD": ("sgd", ol.SGD, {"lr": 0.05, "momentum": 0.9}),
    "torch.SGD": ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "ol.Adam": ("adam", ol.Adam, {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8}),
    "torch.Adam": ("adam", torch.optim.Adam, {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8}),
}

# Tolerance of the float64 comparisons with the reference: every quantity is O(1) and each step
# rounds a few dozen times (1.1e-16 each; the norm is summed in another order, Adam's quotient
# is formed in another order); the gradient feeds a difference back with a factor of about
# lr * |Hessian| < 0.5 per step, momentum sums at most 10 of them. Over 5 steps that bounds the
# error near 1e-13 (measured: <= 4.5e-16); 1e-10 is the acceptance bound, 1000x above it.
TOL = 1e-10


def _check_reference(name: str, rho, adaptive: bool, steps: int = 5, *, two_step: bool = False,
                     eta: float = 0.01, device: str = "cpu") -> None:
    kind, cls, hp = BASES[name]
    x, y = (t.to(device) for t in _data())
    params = [nn.Parameter(p.detach().to(device)) for p in _params()]
    sam = SAM(params, cls, rho=rho, adaptive=adaptive, eta=eta, **hp)
    for _ in range(steps):
        if two_step:
            _two_step(sam, params, x, y)
        else:
            sam.step(_closure(sam, params, x, y))
    want = _reference(kind, steps, rho, adaptive, eta=eta, x=x.cpu(), y=y.cpu(), **hp)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.detach().cpu(), w, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", sorted(BASES))
@pytest.mark.parametrize("adaptive", [False, True])
def test_matches_float64_reference(name, adaptive):
    _check_reference(name, 0.1, adaptive)


def test_asam_eta_is_used():
    _check_reference("ol.SGD", 0.3, True, eta=0.5)


def test_two_step_api_matches_reference():
    _check_reference("torch.Adam", 0.2, True, two_step=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(BASES))
@pytest.mark.parametrize("adaptive", [False, True])
def test_matches_float64_reference_cuda(name, adaptive):
    # float64 on the GPU rounds each operation as the CPU does (its tanh may differ by an ulp):
    # the same bound as on the CPU
    _check_reference(name, 0.1, adaptive, device="cuda")


@settings(max_examples=12, deadline=None, derandomize=True)
@given(rho=st.floats(0.0, 1.0), adaptive=st.booleans(), name=st.sampled_from(sorted(BASES)))
def test_reference_grid(rho, adaptive, name):
    _check_reference(name, rho, adaptive, steps=3)


# ----- rho = 0 is the base optimizer ---------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda ps: ol.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    lambda ps: ol.Adam(ps, lr=0.01),
    lambda ps: ol.AdamW(ps, lr=0.01, weight_decay=0.1),
    lambda ps: ol.RMSprop(ps, lr=0.01, momentum=0.5),
    lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    lambda ps: torch.optim.Adam(ps, lr=0.01),
])
def test_rho_zero_is_base_optimizer(make):
    x, y = _data(dtype=torch.float32)
    a, b = _params(torch.float32), _params(torch.float32)
    sam = SAM(a, make(a), rho=0.0)
    base = make(b)
    for _ in range(6):
        sam.step(_closure(sam, a, x, y))
        base.step(_closure(base, b, x, y))
    # Bit for bit: e = 0 * g = 0, the second gradient is taken at the same weights (the same
    # computation, so the same bits) and the weights are restored by copy, not by w + e - e.
    for p, q in zip(a, b):
        assert torch.equal(p, q)


# ----- the two APIs, the closure's contract --------------------------------------------------
def test_closure_and_two_step_are_identical():
    x, y = _data()
    a, b = _params(), _params()
    sa = SAM(a, ol.Adam, lr=0.01, rho=0.1, adaptive=True)
    sb = SAM(b, ol.Adam, lr=0.01, rho=0.1, adaptive=True)
    for _ in range(4):
        la = sa.step(_closure(sa, a, x, y))
        lb = _two_step(sb, b, x, y)
        assert torch.equal(la, lb)
    for p, q in zip(a, b):
        assert torch.equal(p, q)  # the same operations on the same values


def test_closure_called_twice_and_first_loss_returned():
    x, y = _data()
    params = _params()
    sam = SAM(params, ol.SGD, lr=0.05, rho=0.2)
    calls: list[int] = []
    start = _loss(params, x, y).detach()
    loss = sam.step(_closure(sam, params, x, y, calls))
    assert len(calls) == 2
    assert torch.equal(loss.detach(), start)  # the loss at w, not at w + e
    sam.step(_closure(sam, params, x, y, calls))
    assert len(calls) == 4


def test_closure_need_not_zero_gradients():
    x, y = _data()
    a, b = _params(), _params()
    sa, sb = SAM(a, ol.SGD, lr=0.05, rho=0.1), SAM(b, ol.SGD, lr=0.05, rho=0.1)

    def lazy():  # no zero_grad: SAM clears the gradients before each call
        loss = _loss(a, x, y)
        loss.backward()
        return loss
    for _ in range(3):
        sa.step(lazy)
        sb.step(_closure(sb, b, x, y))
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def test_failing_second_call_restores_weights():
    x, y = _data()
    params = _params()
    before = [p.detach().clone() for p in params]
    sam = SAM(params, ol.SGD, lr=0.05, rho=0.5)
    calls: list[int] = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        loss = _loss(params, x, y)
        loss.backward()
        return loss
    with pytest.raises(RuntimeError, match="boom"):
        sam.step(closure)
    for p, w in zip(params, before):
        assert torch.equal(p, w)
    sam.step(_closure(sam, params, x, y))  # usable afterwards


def test_maximize_perturbs_the_other_way():
    x, y = _data()
    a, b = _params(), _params()
    sa = SAM(a, ol.SGD, lr=0.05, momentum=0.9, rho=0.1, maximize=True)
    sb = SAM(b, ol.SGD, lr=0.05, momentum=0.9, rho=0.1)

    def neg():
        sb.zero_grad()
        loss = -_loss(b, x, y)
        loss.backward()
        return loss
    for _ in range(3):
        sa.step(_closure(sa, a, x, y))  # maximize L  ==  minimize -L
        sb.step(neg)
    # negation is exact, so both runs do the same arithmetic up to signs: 1 ulp would already
    # be a different operation order; 1e-14 allows the base's maximize to negate elsewhere
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=1e-14, rtol=1e-14)


# ----- gradient accumulation, mixed precision ------------------------------------------------
def test_gradient_accumulation_equals_full_batch():
    x, y = _data(n=16)
    a, b = _params(), _params()
    sa = SAM(a, ol.SGD, lr=0.05, momentum=0.9, rho=0.1)
    sb = SAM(b, ol.SGD, lr=0.05, momentum=0.9, rho=0.1)
    k = 4
    for _ in range(3):
        for xi, yi in zip(x.chunk(k), y.chunk(k)):  # first pass, accumulated
            (_loss(a, xi, yi) / k).backward()
        sa.first_step(zero_grad=True)
        for xi, yi in zip(x.chunk(k), y.chunk(k)):  # second pass, accumulated from zero
            (_loss(a, xi, yi) / k).backward()
        sa.second_step(zero_grad=True)
        sb.step(_closure(sb, b, x, y))
    # the mean of 4 micro-batch means vs one mean of 16: O(1) terms summed in another order,
    # ~1e-16 relative per gradient, carried over 3 steps with factor < 2: 1e-12 is far above
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-12)


def test_autocast_closure_and_two_step_agree():
    x, y = _data(dtype=torch.float32)
    a, b = _params(torch.float32), _params(torch.float32)
    sa = SAM(a, ol.AdamW, lr=0.01, rho=0.05)
    sb = SAM(b, ol.AdamW, lr=0.01, rho=0.05)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sa.step(_closure(sa, a, x, y))
            _two_step(sb, b, x, y)
    for p, q in zip(a, b):
        assert p.dtype == torch.float32
        assert torch.equal(p, q)
    assert all(p.grad is not None for p in a)


def _scaled_two_step(sam, scaler, params, x, y) -> None:
    scaler.scale(_loss(params, x, y)).backward()
    sam.first_step(zero_grad=True)
    scaler.scale(_loss(params, x, y)).backward()
    sam.second_step(zero_grad=True, scaler=scaler)
    scaler.update()


def test_grad_scaler_equals_unscaled():
    x, y = _data(dtype=torch.float32)
    a, b = _params(torch.float32), _params(torch.float32)
    sa = SAM(a, ol.SGD, lr=0.05, momentum=0.9, rho=0.1)
    sb = SAM(b, ol.SGD, lr=0.05, momentum=0.9, rho=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1000)
    for _ in range(3):
        _scaled_two_step(sa, scaler, a, x, y)
        _two_step(sb, b, x, y)
    # A power-of-two loss scale S scales every gradient exactly (no overflow here), so
    # ||S g|| = S ||g|| exactly, e = rho (S g) / (S ||g||) has the same bits (norm_eps = 1e-12 is
    # below half an ulp of ||g|| ~ 1 either way) and unscaling by 1/S is exact: bit for bit.
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def test_grad_scaler_skips_a_step_with_inf():
    x, y = _data(dtype=torch.float32)
    params = _params(torch.float32)
    sam = SAM(params, ol.SGD, lr=0.05, rho=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    before = [p.detach().clone() for p in params]
    scaler.scale(_loss(params, x, y)).backward()
    sam.first_step(zero_grad=True)
    scaler.scale(_loss(params, x, y) * float("inf")).backward()
    sam.second_step(scaler=scaler)
    scaler.update()
    for p, w in zip(params, before):
        assert torch.equal(p, w)  # restored, and the base step skipped
    assert scaler.get_scale() == 2.0 ** 9


# ----- batch norm: running statistics once per step ------------------------------------------
def _bn_model(momentum: float | None = 0.1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5, momentum=momentum), nn.Tanh(),
                         nn.Linear(5, 1))


def _bn_closure(sam, model, x, y):
    def closure():
        sam.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("momentum", [0.1, None])  # None: the cumulative average
def test_batchnorm_statistics_updated_once_per_step(momentum):
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    model = _bn_model(momentum)
    sam = SAM(model.parameters(), ol.SGD, lr=0.1, rho=0.5, model=model)
    for step in range(3):
        reference = copy.deepcopy(model)  # at this step's w and statistics
        reference(x)  # one forward pass at w updates the statistics once
        sam.step(_bn_closure(sam, model, x, y))
        bn, ref = model[1], reference[1]
        assert int(bn.num_batches_tracked) == step + 1
        assert torch.equal(bn.running_mean, ref.running_mean)
        assert torch.equal(bn.running_var, ref.running_var)


def test_batchnorm_updated_twice_without_model():
    # the control: without model= the second pass updates the statistics too
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    model = _bn_model()
    sam = SAM(model.parameters(), ol.SGD, lr=0.1, rho=0.5)
    sam.step(_bn_closure(sam, model, x, y))
    assert int(model[1].num_batches_tracked) == 2


def test_frozen_running_stats_with_two_step_api():
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    a, b = _bn_model(), _bn_model()
    sa = SAM(a.parameters(), ol.SGD, lr=0.1, rho=0.5, model=a)
    sb = SAM(b.parameters(), ol.SGD, lr=0.1, rho=0.5)
    sa.step(_bn_closure(sa, a, x, y))
    ((b(x) - y) ** 2).mean().backward()
    sb.first_step(zero_grad=True)
    with frozen_running_stats(b):
        ((b(x) - y) ** 2).mean().backward()
    sb.second_step(zero_grad=True)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_frozen_running_stats_restores_on_error():
    model = _bn_model()
    before = copy.deepcopy(model[1].state_dict())
    with pytest.raises(ValueError, match="inside"), frozen_running_stats(model):
        model(torch.randn(8, 3))
        raise ValueError("inside")
    for k, v in model[1].state_dict().items():
        assert torch.equal(v, before[k])


# ----- schedulers: lr of the base, rho in the groups -----------------------------------------
def test_lr_scheduler_on_wrapper_drives_base():
    x, y = _data()
    a, b = _params(), _params()
    sam = SAM(a, ol.SGD, lr=0.1, rho=0.0)
    base = ol.SGD(b, lr=0.1)
    s1 = torch.optim.lr_scheduler.StepLR(sam, step_size=1, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(base, step_size=1, gamma=0.5)
    for _ in range(3):
        sam.step(_closure(sam, a, x, y))
        base.step(_closure(base, b, x, y))
        s1.step()
        s2.step()
    assert sam.base_optimizer.param_groups[0]["lr"] == 0.1 / 8
    for p, q in zip(a, b):
        assert torch.equal(p, q)  # rho = 0: the same steps with the same learning rates


def test_scheduled_lr_on_wrapper():
    params = _params()
    sam = SAM(params, torch.optim.Adam, lr=1.0)
    sched = ScheduledLR(sam, linear(1.0, 0.0, 4))
    x, y = _data()
    for t in range(1, 4):
        sam.step(_closure(sam, params, x, y))
        sched.step()
        assert sam.base_optimizer.param_groups[0]["lr"] == pytest.approx(1.0 - t / 4)


def test_rho_schedule():
    schedule = linear(0.0, 0.4, 4)
    x, y = _data()
    params = _params()
    sam = SAM(params, ol.SGD, lr=0.05, momentum=0.9, rho=1.0)
    sched = ScheduledHyperparameter(sam, "rho", schedule)
    for t in range(5):
        assert sam.param_groups[0]["rho"] == schedule(t)
        sam.step(_closure(sam, params, x, y))
        sched.step()
    want = _reference("sgd", 5, schedule, False, lr=0.05, momentum=0.9, x=x, y=y)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.detach(), w, atol=TOL, rtol=TOL)  # TOL: see above


def test_rho_schedule_refuses_negative():
    sam = SAM(_params(), ol.SGD, lr=0.05)
    sched = ScheduledHyperparameter(sam, "rho", lambda t: 0.1 - 0.1 * t)
    sched.step()  # 0.0 is allowed
    with pytest.raises(ValueError, match="rho"):
        sched.step()
    assert sam.param_groups[0]["rho"] == 0.0


def test_per_group_rho():
    x, y = _data()
    params = _params()
    groups = [{"params": params[:2], "rho": 0.0}, {"params": params[2:]}]
    sam = SAM(groups, ol.SGD, lr=0.05, rho=0.3)
    assert [g["rho"] for g in sam.param_groups] == [0.0, 0.3]
    grads = _grad(params, x, y)
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))  # global: over both groups
    before = [p.detach().clone() for p in params]
    _loss(params, x, y).backward()
    sam.first_step()
    torch.testing.assert_close(params[0].detach(), before[0], atol=0, rtol=0)
    # one rounding of w + e, and of the norm's summation order: a few ulps of O(1)
    torch.testing.assert_close(params[2].detach(), before[2] + 0.3 * grads[2] / norm,
                               atol=1e-14, rtol=1e-14)
    sam.second_step()


# ----- state dict ----------------------------------------------------------------------------
def _train(sam, params, steps, x, y):
    for _ in range(steps):
        sam.step(_closure(sam, params, x, y))


def test_state_dict_round_trip():
    x, y = _data()
    a = _params()
    sa = SAM(a, ol.Adam, lr=0.01, rho=0.1, adaptive=True, eta=0.2)
    _train(sa, a, 3, x, y)
    buffer = io.BytesIO()
    torch.save(sa.state_dict(), buffer)
    buffer.seek(0)
    b = [nn.Parameter(p.detach().clone()) for p in a]
    sb = SAM(b, ol.Adam, lr=0.5)  # other settings: the state dict brings them back
    sb.load_state_dict(torch.load(buffer, weights_only=True))
    group = sb.param_groups[0]
    assert (group["rho"], group["adaptive"], group["eta"], group["lr"]) == (0.1, True, 0.2, 0.01)
    _train(sa, a, 3, x, y)
    _train(sb, b, 3, x, y)
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def test_loads_bare_base_state_dict():
    x, y = _data()
    a = _params()
    base = ol.SGD(a, lr=0.05, momentum=0.9)
    _train(base, a, 2, x, y)
    sam = SAM(a, ol.SGD, lr=0.05, momentum=0.9, rho=0.25)
    sam.load_state_dict(base.state_dict())
    assert sam.param_groups[0]["rho"] == 0.25
    assert "momentum_buffer" in sam.state[a[0]]
    _train(sam, a, 1, x, y)


def test_state_dict_refused_while_perturbed():
    x, y = _data()
    params = _params()
    sam = SAM(params, ol.SGD, lr=0.05)
    saved = sam.state_dict()
    _loss(params, x, y).backward()
    sam.first_step()
    with pytest.raises(RuntimeError, match="perturbed"):
        sam.state_dict()
    with pytest.raises(RuntimeError, match="perturbed"):
        sam.load_state_dict(saved)
    with pytest.raises(RuntimeError, match="perturbed"):
        copy.deepcopy(sam)
    sam.second_step()
    sam.state_dict()


def test_state_dict_with_bad_rho_refused():
    params = _params()
    sam = SAM(params, ol.SGD, lr=0.05)
    saved = sam.state_dict()
    saved["param_groups"][0]["rho"] = -1.0
    with pytest.raises(ValueError, match="rho"):
        sam.load_state_dict(saved)
    assert sam.param_groups[0]["rho"] == 0.05


def test_deepcopy_and_built_instance():
    params = _params()
    base = torch.optim.SGD(params, lr=0.05)
    sam = SAM(params, base, rho=0.1)
    assert sam.base_optimizer is base and sam.param_groups is base.param_groups
    assert sam.state is base.state
    clone = copy.deepcopy(sam)
    assert clone.param_groups[0]["rho"] == 0.1 and clone.norm_eps == sam.norm_eps
    sam.add_param_group({"params": [nn.Parameter(torch.zeros(2, dtype=F64))], "rho": 0.3})
    assert [g["rho"] for g in base.param_groups] == [0.1, 0.3]


# ----- refused input -------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "field"), [
    ({"rho": -0.1}, "rho"), ({"rho": float("inf")}, "rho"), ({"rho": float("nan")}, "rho"),
    ({"rho": "big"}, "rho"), ({"eta": -1.0}, "eta"), ({"eta": float("inf")}, "eta"),
    ({"adaptive": 1}, "adaptive"), ({"norm_eps": 0.0}, "norm_eps"),
])
def test_bad_settings_refused(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SAM(_params(), ol.SGD, lr=0.1, **kwargs)


def test_bad_group_setting_refused():
    params = _params()
    with pytest.raises(ValueError, match=r"param_groups\[1\]: .*rho"):
        SAM([{"params": params[:1]}, {"params": params[1:], "rho": -1.0}], ol.SGD, lr=0.1)
    sam = SAM(params, ol.SGD, lr=0.1)
    sam.param_groups[0]["rho"] = float("nan")
    _loss(params, *_data()).backward()
    with pytest.raises(ValueError, match="rho"):
        sam.first_step()
    assert not sam._perturbed


def test_construction_misuse_refused():
    params = _params()
    base = ol.SGD(params, lr=0.1)
    with pytest.raises(TypeError, match="base_optimizer"):
        SAM(base, rho=0.05)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="parameters first"):
        SAM(base, ol.SGD)
    with pytest.raises(TypeError, match="already built"):
        SAM(params, base, lr=0.1)
    with pytest.raises(ValueError, match="exactly the parameters"):
        SAM(params[:2], base)
    with pytest.raises(ValueError, match="exactly the parameters"):
        SAM(_params(), base)
    with pytest.raises(TypeError, match="must return"):
        SAM(params, lambda ps, **kw: None)
    with pytest.raises(TypeError, match="optimizer class"):
        SAM(params, "sgd")
    with pytest.raises(TypeError, match="model"):
        SAM(params, ol.SGD, lr=0.1, model="net")


@pytest.mark.parametrize("cls", [torch.optim.Adadelta, ol.Adadelta])
def test_base_using_rho_refused(cls):
    with pytest.raises(ValueError, match="rho"):
        SAM(_params(), cls, lr=1.0)


def test_step_order_misuse_refused():
    x, y = _data()
    params = _params()
    sam = SAM(params, ol.SGD, lr=0.1)
    with pytest.raises(TypeError, match="closure"):
        sam.step()
    with pytest.raises(RuntimeError, match="first_step"):
        sam.second_step()
    with pytest.raises(RuntimeError, match="no parameter has a gradient"):
        sam.first_step()
    _loss(params, x, y).backward()
    sam.first_step()
    with pytest.raises(RuntimeError, match="twice"):
        sam.first_step()
    sam.second_step()


# ----- complex and low-precision parameters --------------------------------------------------
def test_complex_parameter_equals_its_real_view():
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(4, 3, dtype=torch.complex128, generator=g)
    a = nn.Parameter(z0.clone())
    b = nn.Parameter(torch.view_as_real(z0).clone())  # the same numbers as (re, im) pairs
    c = torch.randn(4, 3, dtype=torch.complex128, generator=g)

    def loss(z):  # a real loss of a complex variable
        return (torch.tanh((z * c).real) ** 2).sum() + (z.abs() ** 2).sum() * 0.1
    sa = SAM([a], ol.SGD, lr=0.05, momentum=0.9, rho=0.2)
    sb = SAM([b], ol.SGD, lr=0.05, momentum=0.9, rho=0.2)
    for _ in range(3):
        sa.step(lambda: loss(a).backward())
        sb.step(lambda: loss(torch.view_as_complex(b)).backward())
    # torch's complex gradient is the real view's gradient as complex numbers, and the norm of
    # a complex tensor is that of its real view: the same arithmetic up to the summation order
    # of the norm, a few ulps of O(1) values
    torch.testing.assert_close(torch.view_as_real(a.detach()), b.detach(), atol=1e-14,
                               rtol=1e-14)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("adaptive", [False, True])
def test_low_precision_perturbation(dtype, adaptive):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(64, generator=g)
    grad = torch.randn(64, generator=g) * 100  # ||g|| ~ 800: ||g||^2 would overflow float16
    p = nn.Parameter(w.to(dtype))
    p.grad = grad.to(dtype)
    sam = SAM([p], ol.SGD, lr=0.1, rho=0.5, adaptive=adaptive)
    sam.first_step()
    gw, ww = p.grad.float(), w.to(dtype).float()  # the formula in float32, from the same inputs
    t = ww.abs() + 0.01 if adaptive else torch.ones_like(ww)
    want = ww + 0.5 * t * t * gw / torch.linalg.vector_norm(t * gw)
    # e is formed in the parameter's precision (a few roundings of 2^-8 (bf16) or 2^-11 (fp16)
    # relative each), then w + e rounds once more; |e| <= 0.5 * (|w| + 0.01)^2 < 8 here, so
    # 4 ulps of max(|w|, |e|) in that precision bounds the error
    ulp = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    tol = 4 * ulp * float(torch.maximum(want.abs(), ww.abs()).max())
    torch.testing.assert_close(p.detach().float(), want, atol=tol, rtol=0)
    assert torch.isfinite(p).all()
    sam.second_step()
    q = nn.Parameter(w.to(dtype))  # restored exactly, then the base step: that of plain SGD
    q.grad = p.grad.clone()
    ol.SGD([q], lr=0.1).step()
    assert torch.equal(p, q)


@pytest.mark.slow  # a benchmark script: seconds on a loaded 2-core machine
def test_overhead_benchmark_runs():
    # benchmarks/sam_overhead.py at a toy size: it must keep working (no timing is checked)
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sam_overhead.py"
    spec = importlib.util.spec_from_file_location("sam_overhead", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in module.BASES:
        for ratio, t_sam, t_base in (module.own_work(name, 1, 8, 2),
                                     module.training_step(name, 8, 4, 2)):
            assert ratio > 0 and t_sam > 0 and t_base > 0


def test_refused_instance_left_unchanged():
    params = _params()
    base = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "rho": -1.0}], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[1\]: .*rho"):
        SAM(params, base)
    assert "rho" not in base.param_groups[0] and "eta" not in base.param_groups[1]


@pytest.mark.parametrize(("adaptive", "invariant"), [(True, True), (False, False)])
def test_asam_is_scale_invariant(adaptive, invariant):
    # A ReLU network computes the same function when layer 1 (weight and bias) is scaled by a
    # and layer 2 by 1/a. With T = |w| (eta = 0), T g is unchanged by the rescaling, so ASAM's
    # perturbed point is the rescaled perturbed point and the perturbed loss is the same (Kwon
    # et al.); SAM's is not. a = 4 scales exactly in binary floating point, and the loss is
    # formed from the same products: 1e-12 (relative) covers reassociation, and SAM's
    # difference is of order rho.
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(32, 3, generator=g, dtype=F64), torch.randn(32, 1, generator=g, dtype=F64)
    w1, b1 = torch.randn(8, 3, generator=g, dtype=F64), torch.randn(8, generator=g, dtype=F64)
    w2 = torch.randn(1, 8, generator=g, dtype=F64)

    def perturbed_loss(a: float) -> float:
        ps = [nn.Parameter(w1 * a), nn.Parameter(b1 * a), nn.Parameter(w2 / a)]

        def loss():
            return ((torch.relu(x @ ps[0].T + ps[1]) @ ps[2].T - y) ** 2).mean()
        sam = SAM(ps, ol.SGD, lr=0.1, rho=0.5, adaptive=adaptive, eta=0.0)
        loss().backward()
        sam.first_step()
        with torch.no_grad():
            return float(loss())
    same = math.isclose(perturbed_loss(1.0), perturbed_loss(4.0), rel_tol=1e-12)
    assert same == invariant


def test_step_hooks_run_once_per_step():
    x, y = _data()
    params = _params()
    sam = SAM(params, ol.SGD, lr=0.05, rho=0.1)
    seen: list[str] = []
    sam.register_step_pre_hook(lambda opt, args, kwargs: seen.append("pre"))
    sam.register_step_post_hook(lambda opt, args, kwargs: seen.append("post"))
    sam.step(_closure(sam, params, x, y))
    assert seen == ["pre", "post"]


def test_frozen_running_stats_covers_instance_norm():
    model = nn.Sequential(nn.InstanceNorm1d(4, track_running_stats=True), nn.BatchNorm1d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with frozen_running_stats(model):
        model(torch.randn(8, 4, 5))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model(torch.randn(8, 4, 5))  # outside: updated as usual (instance norm does not count)
    assert not torch.equal(model[0].running_mean, before["0.running_mean"])
    assert int(model[1].num_batches_tracked) == 1
