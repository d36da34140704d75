"""optimlab.landscape: 1-D interpolation between solutions, 2-D filter-normalized slices, their
plots, and the parameters restored after every evaluation."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from optimlab.landscape import (
    Interpolation,
    Slice2D,
    filter_normalized_direction,
    interpolate,
    slice_2d,
)

matplotlib.use("Agg")


def _net(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(5, 2)).to(dtype)


def _data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, generator=g, dtype=dtype), torch.randint(0, 2, (16,), generator=g)


def _copy(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _load(model: nn.Module, values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(model.parameters(), values):
            p.copy_(v)


# ----------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interpolation_endpoints_are_the_losses_at_a_and_b(dtype: torch.dtype) -> None:
    model = _net(dtype)
    x, y = _data(dtype)

    def loss_fn() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    def accuracy() -> float:
        return float((model(x).argmax(1) == y).double().mean())

    a = _copy(model)
    b = [t + 0.5 * torch.randn_like(t) for t in a]
    model.eval()
    with torch.no_grad():
        _load(model, b)
        loss_b, acc_b = float(loss_fn()), accuracy()
        _load(model, a)
        loss_a, acc_a = float(loss_fn()), accuracy()
    model.train()
    # a = the live parameters themselves: they must be read before evaluation moves them
    result = interpolate(model, loss_fn, list(model.parameters()), b,
                         torch.tensor([0.0, 0.3, 1.0, 1.5], dtype=torch.float64),
                         metric=accuracy)
    # torch.lerp is exact at 0 and 1, and the same computation on the same weights is
    # deterministic on CPU: equality, not closeness
    assert result.losses[0] == loss_a and result.losses[2] == loss_b
    assert result.metrics is not None and result.metrics[0] == acc_a and result.metrics[2] == acc_b
    assert result.alphas == [0.0, 0.3, 1.0, 1.5]
    for p, v in zip(model.parameters(), a):
        assert torch.equal(p, v)
    assert all(m.training for m in model.modules())


def test_interpolation_of_quadratic_is_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a_mat = m @ m.T
    w = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    a, b = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g,
                                                                          dtype=torch.float64)
    alphas = [-0.5, 0.0, 0.2, 0.5, 0.9, 1.0, 2.0]
    result = interpolate([w], lambda: 0.5 * w @ (a_mat @ w), [a], [b], alphas)
    assert result.metrics is None
    for alpha, loss in zip(alphas, result.losses):
        point = (1 - alpha) * a + alpha * b
        # float64, 6-term sums of O(10) numbers: agreement to ~1e-14 relative; 1e-12 asserted
        assert loss == pytest.approx(float(0.5 * point @ a_mat @ point), rel=1e-12)
    assert torch.equal(w, torch.zeros(6, dtype=torch.float64))


# ----------------------------------------------------------------------------- 2-D slices


def test_slice_of_quadratic_is_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (4,)]
    n = 16
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    a_mat = m @ m.T / n
    c = torch.randn(n, generator=g, dtype=torch.float64)
    params = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]
    d1 = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    d2 = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]

    def flat(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in ts])

    def loss_fn() -> torch.Tensor:
        e = flat(params) - c
        return 0.5 * e @ (a_mat @ e)

    xs, ys = [-1.0, -0.25, 0.0, 0.5, 1.0], [-0.5, 0.0, 2.0]  # a non-square grid
    result = slice_2d(params, loss_fn, xs, ys, directions=(d1, d2))
    e, u, v = flat(params).detach() - c, flat(d1), flat(d2)
    # L(x, y) = L0 + x e'Au + y e'Av + (x^2 u'Au + 2 x y u'Av + y^2 v'Av) / 2
    l0, gu, gv = 0.5 * e @ a_mat @ e, e @ a_mat @ u, e @ a_mat @ v
    uu, uv, vv = u @ a_mat @ u, u @ a_mat @ v, v @ a_mat @ v
    assert len(result.losses) == len(ys) and all(len(row) == len(xs) for row in result.losses)
    for i, yy in enumerate(ys):
        for j, xx in enumerate(xs):
            expected = float(l0 + xx * gu + yy * gv + 0.5 * (xx * xx * uu + 2 * xx * yy * uv
                                                             + yy * yy * vv))
            # float64, terms O(10): rounding ~1e-14 relative to the largest term; 1e-10 asserted
            assert result.losses[i][j] == pytest.approx(expected, rel=1e-10, abs=1e-10), (i, j)
    assert result.losses[ys.index(0.0)][xs.index(0.0)] == float(loss_fn().detach())
    assert all(torch.equal(r, d) for r, d in zip(result.directions[0], d1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_filter_normalization(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 2 * 2, 3)).to(dtype)
    with torch.no_grad():
        model[0].weight[1].zero_()  # a dead filter
    params = list(model.parameters())
    d = filter_normalized_direction(params, generator=torch.Generator().manual_seed(0))
    assert [t.shape for t in d] == [p.shape for p in params]
    assert all(t.dtype == dtype for t in d)
    # float32: norms of <= 16-entry filters carry relative rounding ~1e-6; float64 ~1e-15
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for p, t in zip(params, d):
        if p.dim() >= 2:  # conv output channels, linear rows: ||d_i|| = ||w_i||
            torch.testing.assert_close(t.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1),
                                       rtol=rtol, atol=0)
        else:  # biases, BatchNorm scale and shift
            assert torch.equal(t, torch.zeros_like(p))
    assert torch.equal(d[0][1], torch.zeros_like(d[0][1]))  # the dead filter stays still
    with_1d = filter_normalized_direction(params, generator=torch.Generator().manual_seed(0),
                                          include_1d=True)
    for p, t in zip(params, with_1d):
        if p.dim() == 1:
            assert float(t.norm()) == pytest.approx(float(p.detach().norm()), rel=rtol)
    # reproducible from a seeded generator; independent draws differ
    again = filter_normalized_direction(params, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(s, t) for s, t in zip(d, again))
    other = filter_normalized_direction(params, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(d[0], other[0])
    # scaling a filter of the weights scales the same filter of the direction (same draw)
    with torch.no_grad():
        model[0].weight[2].mul_(7.0)
    scaled = filter_normalized_direction(params, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(scaled[0][2], 7.0 * d[0][2], rtol=rtol, atol=0)
    torch.testing.assert_close(scaled[0][0], d[0][0], rtol=rtol, atol=0)


def test_parameters_restored_after_every_evaluation() -> None:
    model = _net()
    x, y = _data()
    original = _copy(model)
    d1 = filter_normalized_direction(original, generator=torch.Generator().manual_seed(0))
    d2 = filter_normalized_direction(original, generator=torch.Generator().manual_seed(1))
    seen: list[list[torch.Tensor]] = []

    def loss_fn() -> torch.Tensor:
        # each point is set from the saved center, never from the previous point
        assert all(not m.training for m in model.modules())
        assert not torch.is_grad_enabled()
        seen.append(_copy(model))
        return nn.functional.cross_entropy(model(x), y)

    xs, ys = [0.0, 0.5, -1.0], [1.0, -0.5]
    result = slice_2d(model, loss_fn, xs, ys, directions=(d1, d2))
    assert len(seen) == 6 and isinstance(result, Slice2D)
    for k, (yy, xx) in enumerate((yy, xx) for yy in ys for xx in xs):
        for got, w, u, v in zip(seen[k], original, d1, d2):
            assert torch.equal(got, w + xx * u + yy * v)
    for p, v in zip(model.parameters(), original):
        assert torch.equal(p, v)  # bit for bit
    assert all(m.training for m in model.modules())

    # a closure that fails midway: parameters and flags restored all the same
    calls = []

    def failing() -> float:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return 0.0

    b = [t + 1.0 for t in original]
    with pytest.raises(RuntimeError, match="boom"):
        interpolate(model, failing, original, b, [0.5, 0.7, 0.9])
    with pytest.raises(RuntimeError, match="boom"):
        calls.clear()
        slice_2d(model, failing, [1.0, 2.0], [1.0], generator=torch.Generator().manual_seed(0))
    for p, v in zip(model.parameters(), original):
        assert torch.equal(p, v)
    assert all(m.training for m in model.modules())


def test_random_slice_is_reproducible_and_leaves_biases_still() -> None:
    model = _net()
    x, y = _data()

    def loss_fn() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    first = slice_2d(model, loss_fn, [-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0],
                     generator=torch.Generator().manual_seed(3))
    second = slice_2d(model, loss_fn, [-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0],
                      generator=torch.Generator().manual_seed(3))
    assert first.losses == second.losses
    for d in first.directions:
        assert all(torch.equal(t, torch.zeros_like(t)) for t, p in zip(d, model.parameters())
                   if p.dim() < 2)
    # the center (0, 0) is the model as given, evaluated in eval mode
    model.eval()
    with torch.no_grad():
        center = float(loss_fn())
    model.train()
    assert first.losses[1][1] == center


# ----------------------------------------------------------------------------- plots, data


def test_plots_return_figures_and_write_files(tmp_path: Path) -> None:
    curve = Interpolation([0.0, 0.5, 1.0], [1.0, 2.0, 0.5], [0.9, 0.5, float("nan")])
    fig = curve.plot(path=tmp_path / "line.svg", metric_label="accuracy")
    assert isinstance(fig, Figure)
    assert (tmp_path / "line.svg").read_text().lstrip().startswith("<?xml")
    assert curve.to_dict()["metrics"] == [0.9, 0.5, None]
    grid = Slice2D([-1.0, 0.0, 1.0], [-1.0, 1.0],
                   [[2.0, 1.0, 2.0], [3.0, float("inf"), 3.0]], None, ([], []))
    fig2 = grid.plot(path=tmp_path / "slice.png", levels=8, log=True)
    assert isinstance(fig2, Figure)
    assert (tmp_path / "slice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert grid.to_dict() == {"xs": [-1.0, 0.0, 1.0], "ys": [-1.0, 1.0],
                              "losses": [[2.0, 1.0, 2.0], [3.0, None, 3.0]], "metrics": None}
    # drawing on a given axes returns its figure
    host = Figure()
    ax = host.add_subplot()
    assert curve.plot(ax=ax) is host


def test_bad_input_is_refused_clearly() -> None:
    w = torch.zeros(3, requires_grad=True)

    def loss() -> torch.Tensor:
        return (w * w).sum()

    with pytest.raises(ValueError, match="params_b has 2 tensors"):
        interpolate([w], loss, [torch.ones(3)], [torch.ones(3), torch.ones(1)], [0.5])
    with pytest.raises(ValueError, match=r"params_a\[0\] has shape \(2,\)"):
        interpolate([w], loss, [torch.ones(2)], [torch.ones(3)], [0.5])
    with pytest.raises(ValueError, match="alphas must be"):
        interpolate([w], loss, [torch.ones(3)], [torch.ones(3)], [])
    with pytest.raises(ValueError, match="alphas must be"):
        interpolate([w], loss, [torch.ones(3)], [torch.ones(3)], [float("nan")])
    with pytest.raises(ValueError, match="one-element tensor"):
        interpolate([w], lambda: w * 2, [torch.ones(3)], [torch.ones(3)], [0.5])
    with pytest.raises(ValueError, match="no parameters"):
        slice_2d([], loss, [0.0], [0.0])
    with pytest.raises(ValueError, match="pair"):
        slice_2d([w], loss, [0.0], [0.0], directions=([torch.ones(3)],))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"directions\[1\]"):
        slice_2d([w], loss, [0.0], [0.0], directions=([torch.ones(3)], [torch.ones(4)]))
    assert torch.equal(w, torch.zeros(3))
