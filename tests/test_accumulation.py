"""GradientAccumulator: k micro-batches step like one batch k times larger (mean losses).

Runs in float64 so that the summation order (k partial sums vs one) is the only difference and
stays far below the 1e-6 tolerance, even through Adam's normalization: the gradients differ
by ~32 roundings of per-sample terms of order 1 (~4e-15), Adam turns a gradient difference
dg into an update difference of at most lr * dg / eps = 1e-2 * 4e-15 / 1e-8 = 4e-9 per step
(the worst case, a gradient entry near 0), SGD into lr * dg; 3 steps: < 2e-8 (measured 1e-16).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import optimlab as ol
from optimlab.accumulation import GradientAccumulator

K = 4
MICRO = 8
WINDOWS = 3
DT = torch.float64

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd_momentum": lambda ps: ol.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                      weight_decay=1e-3),
    "adam": lambda ps: ol.Adam(ps, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda ps: ol.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "torch_adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2)).to(DT)


def make_data(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=DT)
    y = torch.randn(n, 2, generator=g, dtype=DT)
    return x, y


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y)  # mean-reduced


def big_batch_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                   y: torch.Tensor, max_norm: float | None) -> torch.Tensor | None:
    opt.zero_grad()
    loss_fn(model, x, y).backward()
    norm = None
    if max_norm is not None:
        norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    return norm


def assert_same_params(a: nn.Module, b: nn.Module, tol: float = 1e-6) -> None:
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=tol)


@pytest.mark.parametrize("max_norm", [None, 0.05])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_k_micro_batches_match_one_big_batch(name: str, max_norm: float | None) -> None:
    ref, acc_model = make_model(), make_model()
    ref_opt, acc_opt = OPTIMIZERS[name](ref.parameters()), OPTIMIZERS[name](acc_model.parameters())
    acc = GradientAccumulator(acc_opt, steps=K, max_norm=max_norm)
    x, y = make_data(K * MICRO * WINDOWS)
    for w in range(WINDOWS):
        xb = x[w * K * MICRO:(w + 1) * K * MICRO]
        yb = y[w * K * MICRO:(w + 1) * K * MICRO]
        ref_norm = big_batch_step(ref, ref_opt, xb, yb, max_norm)
        for i in range(K):
            sl = slice(i * MICRO, (i + 1) * MICRO)
            done = acc.backward(loss_fn(acc_model, xb[sl], yb[sl]))
            assert done == (i == K - 1)
            assert acc.step_if_ready() == (i == K - 1)
        assert acc.micro_step == 0
        assert all(p.grad is None for p in acc_model.parameters())
        if max_norm is not None:
            assert acc.last_grad_norm is not None and ref_norm is not None
            assert float(ref_norm) > 5 * max_norm  # the clipping really acted (0.85 .. 0.95)
            # the same float64 norm up to the summation order: ~1e-15 relative (measured 1e-16)
            torch.testing.assert_close(acc.last_grad_norm, ref_norm, rtol=1e-9, atol=0)
        assert_same_params(ref, acc_model)
    assert acc.optimizer_steps == WINDOWS
    # the optimizer states agree too
    for pa, pb in zip(ref.parameters(), acc_model.parameters()):
        sa, sb = ref_opt.state[pa], acc_opt.state[pb]
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6)


def test_step_and_steps_one_is_plain_training() -> None:
    ref, acc_model = make_model(), make_model()
    ref_opt = ol.Adam(ref.parameters(), lr=1e-2)
    acc = GradientAccumulator(ol.Adam(acc_model.parameters(), lr=1e-2), steps=1)
    x, y = make_data(3 * MICRO)
    for w in range(3):
        sl = slice(w * MICRO, (w + 1) * MICRO)
        big_batch_step(ref, ref_opt, x[sl], y[sl], None)
        assert acc.backward(loss_fn(acc_model, x[sl], y[sl]))
        acc.step()
    assert_same_params(ref, acc_model, tol=0)  # one micro-batch: the same operations, exactly


def test_partial_window_flush_is_a_batch_of_the_pending_micro_batches() -> None:
    ref, acc_model = make_model(), make_model()
    ref_opt = ol.AdamW(ref.parameters(), lr=1e-2)
    acc = GradientAccumulator(ol.AdamW(acc_model.parameters(), lr=1e-2), steps=K, max_norm=0.05)
    n = K + 2  # one full window, then 2 pending micro-batches
    x, y = make_data(n * MICRO)
    big_batch_step(ref, ref_opt, x[:K * MICRO], y[:K * MICRO], 0.05)
    big_batch_step(ref, ref_opt, x[K * MICRO:], y[K * MICRO:], 0.05)
    for i in range(n):
        sl = slice(i * MICRO, (i + 1) * MICRO)
        acc.backward(loss_fn(acc_model, x[sl], y[sl]))
        acc.step_if_ready()
    assert acc.micro_step == 2 and acc.optimizer_steps == 1
    with pytest.raises(RuntimeError, match="flush"):
        acc.step()
    assert not acc.step_if_ready()
    assert acc.flush()
    assert acc.micro_step == 0 and acc.optimizer_steps == 2
    assert not acc.flush()  # nothing pending: no step
    assert acc.optimizer_steps == 2
    assert_same_params(ref, acc_model)


def test_zero_grad_drops_the_window_and_backward_past_the_window_is_refused() -> None:
    model = make_model()
    opt = ol.SGD(model.parameters(), lr=0.1)
    acc = GradientAccumulator(opt, steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = make_data(MICRO)
    acc.backward(loss_fn(model, x, y))
    acc.zero_grad()
    assert acc.micro_step == 0 and all(p.grad is None for p in model.parameters())
    assert not acc.flush()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    acc.backward(loss_fn(model, x, y))
    acc.backward(loss_fn(model, x, y))
    with pytest.raises(RuntimeError, match="step"):
        acc.backward(loss_fn(model, x, y))
    acc.step()
    assert acc.state_dict() == {"micro_step": 0, "optimizer_steps": 1}


def test_grad_scaler_accumulation_matches_unscaled() -> None:
    """A power-of-two loss scale is exact: scaled accumulation equals the plain one (fp32)."""
    models = [make_model().float() for _ in range(2)]
    accs = [
        GradientAccumulator(ol.AdamW(models[0].parameters(), lr=1e-2), steps=K, max_norm=0.05),
        GradientAccumulator(ol.AdamW(models[1].parameters(), lr=1e-2), steps=K, max_norm=0.05,
                            scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12)),
    ]
    x, y = make_data(2 * K * MICRO)
    x, y = x.float(), y.float()
    for m, acc in zip(models, accs):
        for i in range(2 * K):
            sl = slice(i * MICRO, (i + 1) * MICRO)
            acc.backward(loss_fn(m, x[sl], y[sl]))
            acc.step_if_ready()
    assert accs[1].optimizer_steps == 2
    assert accs[1].scaler.get_scale() == 2.0**12  # finite gradients: no back-off
    # Bit for bit (was: atol 1e-6): multiplying by a power of two commutes with every rounding
    # (no value here comes near float32's overflow or subnormal range), so the scaled
    # backward, the accumulation and the unscaling by 2**-12 give the very gradients of the
    # plain run, and the two runs then do the same operations.
    for pa, pb in zip(*(m.parameters() for m in models)):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("steps", [0, -1, 1.5, True, "4", None])
def test_bad_steps(steps: Any) -> None:
    opt = ol.SGD(make_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="steps"):
        GradientAccumulator(opt, steps=steps)


@pytest.mark.parametrize("max_norm", [0, -1.0, float("nan"), float("inf"), "1", True])
def test_bad_max_norm(max_norm: Any) -> None:
    opt = ol.SGD(make_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="max_norm"):
        GradientAccumulator(opt, steps=2, max_norm=max_norm)


def test_bad_optimizer_norm_type_and_scaler() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="optimizer"):
        GradientAccumulator(list(model.parameters()), steps=2)  # type: ignore[arg-type]
    opt = ol.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="norm_type"):
        GradientAccumulator(opt, steps=2, max_norm=1.0, norm_type=0)
    with pytest.raises(ValueError, match="scaler"):
        GradientAccumulator(opt, steps=2, scaler=object())
