"""The training helpers under faults (issue 13, item 9): weight averaging, gradient
accumulation, schedules and Lookahead refuse what they cannot do, say so clearly, change
nothing when they refuse, and recover the way their errors say.

* ``EMA.copy_to`` into a model of other shapes or other parameters: refused naming the first
  difference, nothing copied (it used to broadcast); ``load_state_dict`` likewise.
* ``GradientAccumulator`` after a NaN micro-batch: the step raises, the next ``backward()`` says
  to call ``zero_grad()``, and after it training goes on exactly as a run without the poisoned
  window (it used to stay stuck: its hint said "call step()", which kept raising).
* ``ScheduledLR`` refuses a negative or non-finite learning rate (at construction for a
  constant, at the step where a schedule reaches it), leaving the groups and the scheduler as
  they were; ``ScheduledHyperparameter`` refuses non-finite values and values the optimizer
  refuses; schedules refuse infinite settings.
* ``Lookahead.load_state_dict`` checks the slow weights before loading anything.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import optimlab as ol
from optimlab import schedules as S
from optimlab.accumulation import GradientAccumulator
from optimlab.averaging import EMA, SWA
from optimlab.chain import NonFiniteGradientError
from optimlab.lookahead import Lookahead


def model(seed: int = 0, hidden: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, 2))


def weights(m: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def assert_weights(m: nn.Module, expected: dict[str, Tensor]) -> None:
    now = weights(m)
    assert now.keys() == expected.keys()
    assert all(torch.equal(now[k], expected[k]) for k in now)


# ----- weight averaging --------------------------------------------------------------------------
@pytest.mark.parametrize(("other", "match"), [
    (lambda: model(1, hidden=6), r"'0\.weight' has shape \(6, 3\), the average \(5, 3\)"),
    (lambda: nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5)), r"lacks averaged entries"),
    (lambda: nn.Sequential(*model(1), nn.Linear(2, 2)), r"entries the average does not have"),
])
def test_ema_copy_to_refuses_another_model_and_copies_nothing(other: Any, match: str) -> None:
    avg = EMA(model(), decay=0.9)
    avg.update()
    target = other()
    before = weights(target)
    with pytest.raises(ValueError, match=match):
        avg.copy_to(target)
    assert_weights(target, before)


def test_ema_copy_to_casts_dtypes() -> None:
    """Only names and shapes must match: a float64 copy of the model receives the average."""
    avg = EMA(model(), decay=0.9)
    avg.update()
    target = model(1).double()
    avg.copy_to(target)
    for name, t in target.state_dict().items():
        assert torch.equal(t, avg.averages[name].to(t.dtype)), name


@pytest.mark.parametrize("edit", ["shape", "extra", "counter", "decay"])
def test_average_load_state_dict_refuses_and_changes_nothing(edit: str) -> None:
    avg = EMA(model(), decay=0.9)
    avg.update()
    sd = copy.deepcopy(avg.state_dict())
    if edit == "shape":
        sd["averages"]["2.weight"] = torch.zeros(1)  # would broadcast into (2, 5)
    elif edit == "extra":
        sd["averages"]["head.weight"] = torch.zeros(2)
    elif edit == "counter":
        sd["n_averaged"] = -1
    else:
        sd["decay"] = math.inf
    fresh = EMA(model(1), decay=0.5)
    before = {k: v.clone() for k, v in fresh.averages.items()}
    counters = (fresh.n_averaged, fresh.num_updates, fresh.decay)
    with pytest.raises(ValueError):
        fresh.load_state_dict(sd)
    assert all(torch.equal(fresh.averages[k], v) for k, v in before.items())
    assert (fresh.n_averaged, fresh.num_updates, fresh.decay) == counters


def test_swa_loads_its_own_state_dict() -> None:
    avg = SWA(model())
    avg.update()
    other = SWA(model(1))
    other.load_state_dict(avg.state_dict())
    assert all(torch.equal(other.averages[k], v) for k, v in avg.averages.items())


# ----- gradient accumulation ---------------------------------------------------------------------
def data(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)


def micro_loss(net: nn.Module, seed: int, poison: bool = False) -> Tensor:
    x, y = data(seed)
    loss = nn.functional.mse_loss(net(x), y)
    return loss * math.nan if poison else loss


def test_accumulator_recovers_after_a_nan_micro_batch_with_zero_grad() -> None:
    net, ref = model(), model()
    net.eval(), ref.eval()  # batch statistics out of the way
    acc = GradientAccumulator(ol.Adam(net.parameters(), lr=0.01, nonfinite="raise"),
                              steps=2)
    ref_acc = GradientAccumulator(ol.Adam(ref.parameters(), lr=0.01), steps=2)
    acc.backward(micro_loss(net, 0))
    acc.backward(micro_loss(net, 1, poison=True))
    with pytest.raises(NonFiniteGradientError) as info:
        acc.step_if_ready()
    assert any("zero_grad()" in n for n in info.value.__notes__)
    with pytest.raises(RuntimeError, match=r"call zero_grad\(\) to discard") as stuck:
        acc.backward(micro_loss(net, 2))
    assert "NonFiniteGradientError" in str(stuck.value)
    with pytest.raises(NonFiniteGradientError):
        acc.step()  # the window is kept: stepping it again fails again
    acc.zero_grad()  # what the message says: the poisoned window is dropped
    assert acc.micro_step == 0 and acc.last_error is None
    for seed in (2, 3, 4, 5):
        acc.backward(micro_loss(net, seed))
        acc.step_if_ready()
        ref_acc.backward(micro_loss(ref, seed))
        ref_acc.step_if_ready()
    assert acc.optimizer_steps == ref_acc.optimizer_steps == 2
    assert_weights(net, weights(ref))  # the failed window left no trace


def test_accumulator_retries_a_window_once_its_gradients_are_fixed() -> None:
    net = model()
    net.eval()
    acc = GradientAccumulator(ol.SGD(net.parameters(), lr=0.1, nonfinite="raise"), steps=2)
    acc.backward(micro_loss(net, 0))
    acc.backward(micro_loss(net, 1))
    bad = next(net.parameters()).grad
    kept = bad[0, 0].item()
    bad[0, 0] = math.inf
    with pytest.raises(NonFiniteGradientError):
        acc.step()
    bad[0, 0] = kept
    acc.step()
    assert acc.optimizer_steps == 1 and acc.micro_step == 0 and acc.last_error is None


def test_a_failed_flush_is_retried_by_step_without_rescaling_twice() -> None:
    net = model()
    net.eval()
    acc = GradientAccumulator(ol.SGD(net.parameters(), lr=0.1, nonfinite="raise"), steps=4)
    acc.backward(micro_loss(net, 0))
    p = next(net.parameters())
    expected = p.grad.clone() * 4  # one of four micro-batches: the mean of that one
    kept = p.grad[0, 0].item()
    p.grad[0, 0] = math.nan
    with pytest.raises(NonFiniteGradientError):
        acc.flush()
    p.grad[0, 0] = kept * 4
    assert torch.equal(p.grad, expected)  # rescaled once, not again by a retry
    twin = nn.Parameter(p.detach().clone())
    twin.grad = expected
    ol.SGD([twin], lr=0.1).step()  # the step the retry must take, bit for bit
    acc.step()
    assert torch.equal(p.detach(), twin.detach()) and acc.micro_step == 0


# ----- schedules ---------------------------------------------------------------------------------
def sgd() -> torch.optim.Optimizer:
    return ol.SGD([nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.5)


def test_scheduled_lr_refuses_a_negative_constant_at_construction() -> None:
    opt = sgd()
    groups = copy.deepcopy([{k: v for k, v in g.items() if k != "params"}
                            for g in opt.param_groups])
    with pytest.raises(ValueError, match=r"schedule gives lr = -1\.0 at step 0"):
        S.ScheduledLR(opt, S.constant(-1.0))
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups


def test_scheduled_lr_refuses_the_step_where_a_schedule_turns_negative() -> None:
    opt = sgd()
    sched = S.ScheduledLR(opt, S.linear(0.2, -0.2, 4))  # 0.2, 0.1, 0.0, -0.1
    for _ in range(2):
        opt.step()
        sched.step()
    assert sched.get_last_lr() == [0.0] or math.isclose(sched.get_last_lr()[0], 0.0,
                                                        abs_tol=1e-12)
    state = sched.state_dict()
    lr = opt.param_groups[0]["lr"]
    with pytest.raises(ValueError, match=r"lr = -0\.1\d* at step 3"):
        sched.step()
    assert sched.state_dict() == state and opt.param_groups[0]["lr"] == lr


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_scheduled_lr_refuses_non_finite_values(bad: float) -> None:
    with pytest.raises(ValueError, match="finite number >= 0"):
        S.ScheduledLR(sgd(), [lambda step: bad])


@pytest.mark.parametrize(("schedule", "match"), [
    (lambda step: math.inf, "must be finite"),
    (lambda step: 0.5 + step, "which the optimizer refuses: momentum must be in"),
])
def test_scheduled_hyperparameter_refuses_what_the_optimizer_refuses(schedule: Any,
                                                                     match: str) -> None:
    opt = sgd()
    if "optimizer" in match:
        sched = S.ScheduledHyperparameter(opt, "momentum", schedule)  # 0.5 at step 0
        with pytest.raises(ValueError, match=match):
            sched.step()  # 1.5 at step 1
        assert sched.last_epoch == 0 and opt.param_groups[0]["momentum"] == 0.5
    else:
        with pytest.raises(ValueError, match=match):
            S.ScheduledHyperparameter(opt, "momentum", schedule)
        assert opt.param_groups[0]["momentum"] == 0.5


@pytest.mark.parametrize("factory", [
    lambda: S.constant(math.inf), lambda: S.cosine_annealing(math.inf, 10),
    lambda: S.exponential_decay(1.0, math.nan), lambda: S.linear(0.0, -math.inf, 5),
])
def test_schedules_refuse_infinite_settings(factory: Any) -> None:
    with pytest.raises(ValueError, match=r"Invalid \w+: -?(inf|nan)"):
        factory()


# ----- Lookahead ---------------------------------------------------------------------------------
def test_lookahead_load_refuses_wrong_slow_weights_before_loading_anything() -> None:
    ps = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2, 2))]
    la = Lookahead(ol.Adam(ps, lr=0.1), k=2)
    for _ in range(3):
        for p in ps:
            p.grad = torch.ones_like(p)
        la.step()
    sd = copy.deepcopy(la.state_dict())
    sd["lookahead"]["state"][1]["slow_param"] = torch.zeros(4)
    qs = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2, 2))]
    fresh = Lookahead(ol.Adam(qs, lr=0.5), k=3)
    with pytest.raises(ValueError, match=r"slow weights of parameter 1 .* \(2, 2\), got \(4,\)"):
        fresh.load_state_dict(sd)
    assert fresh.k == 3 and fresh.optimizer.param_groups[0]["lr"] == 0.5
    assert not fresh.optimizer.state
