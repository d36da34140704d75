"""The learning-rate range test: optimlab.lr_finder and its lab glue (optimlab.lab.lrfind)."""

from __future__ import annotations

import json
import math
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import optimlab
from optimlab.lab.lrfind import find_lr, write_lr_find_report
from optimlab.lab.runs import RunConfig, execute
from optimlab.lab.schema import RunRecord
from optimlab.lr_finder import RULES, LRFinderResult, lr_range_test, suggest_lrs

matplotlib.use("Agg")


# ----------------------------------------------------------------------------- helpers


def _regression_batches(n_batches: int = 4, batch: int = 16, seed: int = 0
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 1, generator=g)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, 4, generator=g)
        out.append((x, x @ w + 0.1 * torch.randn(batch, 1, generator=g)))
    return out


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, 1))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """Recursive bit-for-bit equality of (nested) state dicts."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _deep_clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _deep_clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_deep_clone(v) for v in obj)
    return obj


# ----------------------------------------------------------------------------- acceptance


def _stable(lr: float, steps: int = 100) -> tuple[bool, RunRecord]:
    rec = execute(RunConfig("logreg-breast-cancer", "sgd", {"lr": lr}, batch_size="full",
                            steps=steps), threads=1)
    losses = rec.evals["metrics"]["train_loss"]
    ok = rec.status == "ok" and math.isfinite(losses[-1]) and losses[-1] < losses[0]
    return ok, rec


def test_acceptance_suggestion_in_the_stable_range_of_convex_task() -> None:
    """The issue's acceptance test: on logreg-breast-cancer (full batch, plain SGD), the
    suggested lr trains (the loss decreases), lies below the divergence point a grid of lrs
    finds, and training at 10x that point diverges."""
    res = find_lr("logreg-breast-cancer", "sgd", batch_size="full", start_lr=1e-4, end_lr=1e4,
                  num_steps=100)
    assert res.suggestion is not None and res.rule == "valley"
    assert res.diverged_at is not None  # the sweep reaches the unstable range and stops there

    # Divergence point: the first lr of a half-decade grid at which 100 steps of plain SGD do
    # not decrease the training loss (or the run is marked diverged).
    grid = [10.0 ** (k / 2) for k in range(-2, 9)]
    lr_div = None
    for lr in grid:
        ok, _ = _stable(lr)
        if not ok:
            lr_div = lr
            break
    assert lr_div is not None
    _, rec10 = _stable(10 * lr_div)
    assert rec10.status == "diverged", rec10.error

    # Full-batch float64 runs: every number here is the same under AVX-512 and AVX2 kernels,
    # one or two threads (measured). The suggestions are points of the sweep's grid (factor
    # 1e8 ** (1 / 99) = 1.2 apart) and lr_div a point of the half-decade grid: measured 0.25,
    # 1.5 and 11.5 against lr_div = 100, and 1.5 against lr_div / 100 = 1.0 (two sweep steps; an
    # argmin over smoothed losses, which rounding would have to reorder).
    for name, lr in res.suggestions.items():
        assert lr is not None, name
        assert lr < lr_div, (name, lr, lr_div)
    ok, rec = _stable(res.suggestion)
    assert ok, rec.error
    # ... and it is a useful lr, not a timid one: within two decades of the divergence point.
    assert res.suggestion > lr_div / 100
    print(f"\nlogreg-breast-cancer/sgd/full: {res.summary()}; grid divergence point "
          f"{lr_div:.3g} (x10 = {10 * lr_div:.3g}: {rec10.status}); at the suggestion "
          f"train_loss {rec.evals['metrics']['train_loss'][0]:.4f} -> "
          f"{rec.final['train_loss']:.4f}")


# ----------------------------------------------------------------------------- restoring


@pytest.mark.parametrize("raise_at", [None, 7])
def test_restores_model_optimizer_rng_modes_and_grads(raise_at: int | None) -> None:
    model = _net()
    batches = _regression_batches()
    opt = torch.optim.Adam([{"params": model[0].parameters(), "lr": 1e-3},
                            {"params": list(model[1].parameters()) + list(model[4].parameters()),
                             "lr": 1e-2}])
    # Non-trivial optimizer state and BatchNorm statistics before the test.
    model.train()
    for b in batches[:2]:
        opt.zero_grad()
        _mse(model, b).backward()
        opt.step()
    model.eval()
    model[3].train()  # mixed modes must come back as they were
    model[4].weight.grad = torch.full_like(model[4].weight, 0.5)
    model[0].weight.grad = None
    before = _snapshot(model)
    opt_before = _deep_clone(opt.state_dict())
    grads_before = {n: None if p.grad is None else p.grad.clone()
                    for n, p in model.named_parameters()}
    modes_before = [m.training for m in model.modules()]
    rng_before = torch.get_rng_state()
    calls = {"n": 0, "changed": False}

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        if raise_at is not None and calls["n"] == raise_at:
            calls["changed"] = not torch.equal(m[0].weight, before["0.weight"])
            raise RuntimeError("boom")
        return _mse(m, batch)

    if raise_at is None:
        res = lr_range_test(model, opt, loss_fn, batches, start_lr=1e-5, end_lr=1.0,
                            num_steps=20)
        assert len(res.lrs) == 20
    else:
        with pytest.raises(RuntimeError, match="boom"):
            lr_range_test(model, opt, loss_fn, batches, start_lr=1e-5, end_lr=1.0,
                          num_steps=20)
        assert calls["changed"]  # the test did train before it failed
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert "1.running_mean" in before and "1.num_batches_tracked" in before
    _assert_same(opt_before, opt.state_dict())
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]
    for n, p in model.named_parameters():
        g0 = grads_before[n]
        assert (p.grad is None) == (g0 is None), n
        if g0 is not None:
            assert torch.equal(p.grad, g0), n
    assert [m.training for m in model.modules()] == modes_before
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_restore_false_leaves_the_trained_state() -> None:
    model = _net()
    before = _snapshot(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lr_range_test(model, opt, _mse, _regression_batches(), start_lr=1e-4, end_lr=1.0,
                  num_steps=10, restore=False)
    assert not torch.equal(model.state_dict()["0.weight"], before["0.weight"])
    assert opt.param_groups[0]["lr"] != 0.1


def test_groups_keep_their_lr_ratio() -> None:
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.1},
                           {"params": [model.bias], "lr": 0.5}])
    seen: list[tuple[float, float]] = []

    def loss_fn(batch: Any) -> torch.Tensor:
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        return F.mse_loss(model(batch[0]), batch[1])

    res = lr_range_test(model, opt, loss_fn, _regression_batches(), start_lr=1e-4, end_lr=1e-1,
                        num_steps=12)
    # the recorded floats themselves, and 5x them up to a float64 rounding (approx: 1e-6)
    assert [a for a, _ in seen] == pytest.approx(res.lrs)
    assert all(b == pytest.approx(5 * a) for a, b in seen)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]


# ----------------------------------------------------------------------------- quadratic


class _Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -0.5], dtype=torch.float64))


def test_exponential_lrs_and_early_stop_on_quadratic() -> None:
    """f(w) = a/2 ||w||^2: SGD is stable for lr < 2/a and diverges above."""
    a = 10.0
    model = _Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    res = lr_range_test(model, opt, lambda _: 0.5 * a * (model.w ** 2).sum(), [None],
                        start_lr=1e-4, end_lr=1e2, num_steps=100)
    lrs = np.asarray(res.lrs)
    assert lrs[0] == pytest.approx(1e-4)
    # each lr start * r ** k in float64: a ratio of two is off by a few ulps (~1e-15, the pow's
    # exponent k ln r <= 14 adds ~14 eps), 1e5x inside rtol
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, 1e6 ** (1 / 99), rtol=1e-10)  # exponentially spaced
    assert len(res.lrs) == len(res.losses) == len(res.smoothed) < 100  # stopped early
    assert res.diverged_at is not None and res.diverged_at == res.lrs[-1]
    # float64 on a quadratic, exact in effect: measured diverged_at 1.52 (7.6x above 2 / a),
    # the last smoothed loss 92 (33x its minimum), suggestions 0.015, 0.064, 0.115 (>= 1.7x,
    # four sweep steps of 1.15, below 2 / a)
    assert res.diverged_at > 2 / a
    assert res.smoothed[-1] > 4.0 * min(res.smoothed)
    for name in ("steepest", "valley", "min_loss_div10"):
        lr = res.suggestions[name]
        assert lr is not None and 1e-4 <= lr < 2 / a, (name, lr)
    assert res.suggestion == res.suggestions["valley"]
    assert torch.equal(model.w, torch.tensor([1.0, -0.5], dtype=torch.float64))


def test_no_divergence_within_range() -> None:
    model = _Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    res = lr_range_test(model, opt, lambda _: 0.5 * (model.w ** 2).sum(), [None],
                        start_lr=1e-3, end_lr=1.0, num_steps=30, rule="min_loss_div10")
    assert res.diverged_at is None and len(res.lrs) == 30
    assert res.lrs[-1] == pytest.approx(1.0)  # 1e-3 * 1e3 ** (29 / 29): a few ulps off
    assert res.suggestion == res.suggestions["min_loss_div10"]


def test_non_finite_loss_stops() -> None:
    model = _Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    calls = {"n": 0}

    def loss_fn(_: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = (model.w ** 2).sum()
        return loss * math.nan if calls["n"] == 15 else loss

    res = lr_range_test(model, opt, loss_fn, [None], num_steps=50)
    assert len(res.lrs) == 15 and res.diverged_at == res.lrs[-1]
    assert math.isnan(res.losses[-1])
    assert res.to_dict()["losses"][-1] is None  # JSON-safe


def test_suggestion_rules_on_a_known_curve() -> None:
    lrs = np.logspace(-6, 0, 100)
    i = np.arange(100)
    curve = np.where(i <= 30, 1.0, 0.55 + 0.45 * np.cos(np.pi * (i - 30) / 50))
    curve = np.where(i > 80, 0.1 + 0.05 * (i - 80), curve)
    s = suggest_lrs(lrs, curve)
    # numpy float64 on an analytic curve: the rules pick grid points; a few ulps (approx: 1e-6)
    assert s["valley"] == pytest.approx(lrs[30] ** (1 / 3) * lrs[80] ** (2 / 3))
    assert s["steepest"] == pytest.approx(lrs[55])
    assert s["min_loss_div10"] == pytest.approx(lrs[80] / 10)
    # A spike after the minimum that falls back steeply (a diverging net's cross-entropy does
    # that) must not move the suggestions past the minimum.
    spiky = np.where(i > 80, np.where(i <= 85, 0.1 + 0.58 * (i - 80), 3.0 - 0.17 * (i - 85)),
                     curve)
    assert suggest_lrs(lrs, spiky) == s
    assert suggest_lrs(lrs, np.linspace(0, 1, 100)) == {
        "steepest": None, "valley": None, "min_loss_div10": pytest.approx(1e-7)}


# ----------------------------------------------------------------------------- any optimizer


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    lambda p: torch.optim.AdamW(p, lr=1e-3),
    lambda p: optimlab.Adam(p, lr=1e-3),
    lambda p: optimlab.AdamW(p, lr=1e-3, weight_decay=0.01),
], ids=["torch-sgd", "torch-adamw", "optimlab-adam", "optimlab-adamw"])
def test_works_with_torch_and_optimlab_optimizers(make_opt: Any) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    before = _snapshot(model)
    opt = make_opt(model.parameters())
    batches = _regression_batches()  # 4 batches, cycled over 40 steps
    res = lr_range_test(model, opt, _mse, batches, start_lr=1e-5, end_lr=10.0, num_steps=40)
    assert isinstance(res, LRFinderResult)
    assert 10 <= len(res.lrs) <= 40  # measured 35-40 (a sanity range)
    assert res.suggestion is not None and 1e-5 <= res.suggestion <= 10.0
    assert set(res.suggestions) == set(RULES)
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_closure_based_optimizer() -> None:
    """L-BFGS evaluates the closure several times per step; the first value is recorded."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    before = _snapshot(model)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=3)
    data = [tuple(t.double() for t in _regression_batches(1, 64)[0])]
    calls = {"n": 0}

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        return _mse(m, batch)

    res = lr_range_test(model, opt, loss_fn, data, start_lr=1e-4, end_lr=10.0, num_steps=30)
    assert calls["n"] > len(res.lrs) >= 10
    with torch.no_grad():
        # the same float64 loss at the same (restored) point: equal
        assert res.losses[0] == pytest.approx(float(_mse(model, data[0])))
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_one_shot_generator_is_cycled_and_empty_batches_rejected() -> None:
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = _regression_batches(3)
    seen: list[int] = []

    def loss_fn(batch: Any) -> torch.Tensor:
        seen.append(next(i for i, b in enumerate(data) if b is batch))
        return F.mse_loss(model(batch[0]), batch[1])

    lr_range_test(model, opt, loss_fn, (b for b in data), start_lr=1e-4, end_lr=1e-2,
                  num_steps=10)
    assert seen == [0, 1, 2] * 3 + [0]
    with pytest.raises(ValueError, match="batches"):
        lr_range_test(model, opt, loss_fn, [], num_steps=10)
    with pytest.raises(ValueError, match="batches"):
        lr_range_test(model, opt, loss_fn, iter([]), num_steps=10)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"start_lr": 0.0}, "start_lr"),
    ({"start_lr": -1e-3}, "start_lr"),
    ({"start_lr": math.nan}, "start_lr"),
    ({"end_lr": math.inf}, "end_lr"),
    ({"end_lr": "10"}, "end_lr"),
    ({"start_lr": 1.0, "end_lr": 0.1}, "start_lr"),
    ({"start_lr": 1.0, "end_lr": 1.0}, "start_lr"),
    ({"num_steps": 9}, "num_steps"),
    ({"num_steps": 20.0}, "num_steps"),
    ({"num_steps": True}, "num_steps"),
    ({"smoothing": 0.0}, "smoothing"),
    ({"smoothing": 1.5}, "smoothing"),
    ({"diverge_factor": 1.0}, "diverge_factor"),
    ({"rule": "steep"}, "rule"),
])
def test_invalid_arguments_raise_value_error_naming_them(kwargs: dict[str, Any],
                                                         name: str) -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=name):
        lr_range_test(model, opt, lambda b: model(b).sum(), [torch.ones(1, 2)], **kwargs)
    with pytest.raises(ValueError, match=name):
        find_lr("logreg-breast-cancer", **kwargs)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_find_lr_rejects_bad_lab_settings() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        find_lr("logreg-breast-cancer", batch_size="half")
    with pytest.raises(ValueError, match="nope"):
        find_lr("logreg-breast-cancer", "nope")
    with pytest.raises(ValueError, match="seed"):
        find_lr("logreg-breast-cancer", seed=-1)


# ----------------------------------------------------------------------------- lab glue, report


def test_find_lr_minibatch_is_deterministic_and_keeps_global_rng() -> None:
    rng = torch.get_rng_state()
    a = find_lr("logreg-breast-cancer", "momentum", batch_size=32, start_lr=1e-4, end_lr=1e3,
                num_steps=40)
    b = find_lr("logreg-breast-cancer", "momentum", batch_size=32, start_lr=1e-4, end_lr=1e3,
                num_steps=40)
    assert torch.equal(torch.get_rng_state(), rng)
    assert a.losses == b.losses and a.suggestion == b.suggestion
    assert a.suggestion is not None


def test_plot_and_report(tmp_path: Any) -> None:
    model = _Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    res = lr_range_test(model, opt, lambda _: 5.0 * (model.w ** 2).sum(), [None],
                        start_lr=1e-4, end_lr=1e2, num_steps=60)
    from matplotlib.figure import Figure

    fig = res.plot()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    fig2 = Figure()
    ax2 = fig2.add_subplot()
    assert res.plot(ax2) is fig2

    png = write_lr_find_report(res, tmp_path / "out", "quadratic", meta={"task": "toy"})
    assert png == tmp_path / "out" / "lr_find.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "out" / "lr_find.json").read_text())
    assert data["title"] == "quadratic" and data["meta"] == {"task": "toy"}
    assert data["suggestion"] == pytest.approx(res.suggestion)  # JSON round trip: exact
    assert set(data["suggestions"]) == set(RULES)
    assert data["diverged_at"] == pytest.approx(res.diverged_at)
    assert len(data["lrs"]) == len(data["losses"]) == len(data["smoothed"]) == len(res.lrs)
    assert "suggested lr" in res.summary()
