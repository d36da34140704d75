r"""Loss landscapes: the loss along a line between two solutions and over a 2-D slice.

* :func:`interpolate`: the loss at :math:`w(\alpha) = (1 - \alpha)\,a + \alpha\,b` for the given
  :math:`\alpha` (Goodfellow et al. 2015, "Qualitatively characterizing neural network
  optimization problems"), computed with ``torch.lerp``, which is exact at :math:`\alpha = 0`
  and :math:`\alpha = 1` (the endpoints are the solutions themselves, bit for bit).
  :math:`\alpha` outside :math:`[0, 1]` extrapolates.
* :func:`slice_2d`: the loss at :math:`w + x\,d_1 + y\,d_2` over a grid of :math:`(x, y)`, with
  :math:`d_1, d_2` filter-normalized random directions (Li et al. 2018, "Visualizing the Loss
  Landscape of Neural Nets"): see :func:`filter_normalized_direction`.

Both take the loss as a closure ``loss_fn()`` over the data to measure on
(:func:`optimlab.sharpness.batch_mean` makes one from batches), evaluated under
``torch.no_grad()`` with a module in ``eval()`` mode (its modules' training flags are restored
after), optionally with a second ``metric()`` (e.g. accuracy) at each point. The parameters
(``model.parameters()`` in order, or the tensors given) are set in place for each evaluation
and restored from a saved copy right after it, bit for bit, also when the closure raises.
Buffers (BatchNorm running statistics) are left as they are: in ``eval()`` mode they are those
of the model as given. Results are plain data (lists of floats) with ``plot`` methods drawing on
a :class:`matplotlib.figure.Figure` (no pyplot state), optionally written to a file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Interpolation", "Slice2D", "filter_normalized_direction", "interpolate", "slice_2d"]

#: The loss (or metric) closure: a number or a one-element tensor.
Closure = Callable[[], Tensor | float]


@dataclass(frozen=True)
class Interpolation:
    """The outcome of :func:`interpolate`.

    Attributes:
        alphas: the interpolation coefficients, in the order given.
        losses: the loss at each ``(1 - alpha) a + alpha b``.
        metrics: the metric there, or ``None`` without a metric.
    """

    alphas: list[float]
    losses: list[float]
    metrics: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``alphas``, ``losses``, ``metrics`` (non-finite numbers as ``None``)."""
        return {"alphas": self.alphas, "losses": _json_floats(self.losses),
                "metrics": None if self.metrics is None else _json_floats(self.metrics)}

    def plot(self, ax: Axes | None = None, path: str | Path | None = None, *,
             metric_label: str = "metric") -> Figure:
        """The loss against alpha (the metric on a second y axis if recorded), with the two
        solutions marked at alpha = 0 and 1. Draws on ``ax`` if given, otherwise on a new
        figure; writes it to ``path`` if given (format from the suffix: .svg, .png, .pdf)."""
        fig, ax = _figure(ax)
        ax.plot(self.alphas, self.losses, color="tab:blue", marker=".", label="loss")
        for alpha, name in ((0.0, "a"), (1.0, "b")):
            ax.axvline(alpha, color="gray", lw=0.8, ls=":")
            ax.annotate(name, (alpha, 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom")
        ax.set_xlabel(r"$\alpha$  (weights $(1-\alpha)\,a + \alpha\,b$)")
        ax.set_ylabel("loss", color="tab:blue")
        if self.metrics is not None:
            twin = ax.twinx()
            twin.plot(self.alphas, self.metrics, color="tab:orange", marker=".", ls="--")
            twin.set_ylabel(metric_label, color="tab:orange")
        return _finish(fig, path)


@dataclass(frozen=True)
class Slice2D:
    """The outcome of :func:`slice_2d`.

    Attributes:
        xs: coefficients of the first direction (grid columns).
        ys: coefficients of the second direction (grid rows).
        losses: ``losses[i][j]`` is the loss at ``w + xs[j] d1 + ys[i] d2``.
        metrics: the metric on the same grid, or ``None`` without a metric.
        directions: the two directions ``(d1, d2)``, each shaped as the parameters.
    """

    xs: list[float]
    ys: list[float]
    losses: list[list[float]]
    metrics: list[list[float]] | None
    directions: tuple[list[Tensor], list[Tensor]]

    def to_dict(self) -> dict[str, Any]:
        """``xs``, ``ys``, ``losses``, ``metrics`` (not the directions; non-finite as None)."""
        return {"xs": self.xs, "ys": self.ys,
                "losses": [_json_floats(row) for row in self.losses],
                "metrics": None if self.metrics is None
                else [_json_floats(row) for row in self.metrics]}

    def plot(self, ax: Axes | None = None, path: str | Path | None = None, *,
             levels: int = 30, log: bool = False) -> Figure:
        """Filled contours of the loss over the slice (its logarithm if ``log``, for losses
        spanning decades; needs positive losses) with a colorbar, the center ``(0, 0)``
        marked. Non-finite losses are left blank. Draws on ``ax`` if given, otherwise on a new
        figure; writes it to ``path`` if given (format from the suffix)."""
        import numpy as np

        fig, ax = _figure(ax)
        z = np.asarray(self.losses, dtype=float)
        if log:
            z = np.log10(np.where(z > 0, z, np.nan))
        z = np.ma.masked_invalid(z)
        filled = ax.contourf(self.xs, self.ys, z, levels=levels, cmap="viridis")
        ax.contour(self.xs, self.ys, z, levels=levels, colors="k", linewidths=0.3, alpha=0.4)
        fig.colorbar(filled, ax=ax, label="log10 loss" if log else "loss")
        ax.plot([0.0], [0.0], "+", color="white", ms=10, mew=2)
        ax.set_xlabel("direction 1 (filter-normalized)")
        ax.set_ylabel("direction 2 (filter-normalized)")
        ax.set_aspect("equal", adjustable="box")
        return _finish(fig, path)


def _json_floats(values: Iterable[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def _figure(ax: Axes | None) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    return fig, fig.add_subplot()


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        fig.savefig(Path(path))
    return fig


def _parameters(model: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    params = list(model.parameters()) if isinstance(model, nn.Module) else list(model)
    if not params:
        raise ValueError("landscape: no parameters given")
    if not all(isinstance(p, Tensor) and p.dtype.is_floating_point for p in params):
        raise ValueError("landscape: the parameters must be floating-point tensors")
    return params


def _matching(params: Sequence[Tensor], other: Sequence[Tensor], name: str) -> list[Tensor]:
    """``other`` as detached tensors on the parameters' dtype and device, shapes checked."""
    other = list(other)
    if len(other) != len(params):
        raise ValueError(f"landscape: {name} has {len(other)} tensors, the model "
                         f"{len(params)} parameters")
    out = []
    for i, (p, t) in enumerate(zip(params, other)):
        t = torch.as_tensor(t)
        if t.shape != p.shape:
            raise ValueError(f"landscape: {name}[{i}] has shape {tuple(t.shape)}, the parameter "
                             f"{tuple(p.shape)}")
        # a copy: ``other`` may be the live parameters themselves, which evaluation moves
        out.append(t.detach().to(dtype=p.dtype, device=p.device, copy=True))
    return out


def _coefficients(values: Sequence[float] | Tensor, name: str) -> list[float]:
    out = [float(v) for v in (values.tolist() if isinstance(values, Tensor) else values)]
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"landscape: {name} must be a non-empty sequence of finite numbers")
    return out


def _value(result: Tensor | float, what: str) -> float:
    if isinstance(result, Tensor):
        if result.numel() != 1:
            raise ValueError(f"landscape: {what} must return a number or a one-element tensor, "
                             f"got shape {tuple(result.shape)}")
        return float(result.detach())
    return float(result)


@contextmanager
def _evaluating(model: nn.Module | Iterable[Tensor], params: list[Tensor]
                ) -> Iterator[Callable[[list[Tensor], Closure, Closure | None],
                                       tuple[float, float | None]]]:
    """Yields ``evaluate(point, loss_fn, metric)``: the parameters set to ``point``, the
    closures called under no_grad, the parameters restored from a saved copy right after."""
    saved = [p.detach().clone() for p in params]
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    flags = [m.training for m in modules]

    def evaluate(point: list[Tensor], loss_fn: Closure, metric: Closure | None
                 ) -> tuple[float, float | None]:
        try:
            with torch.no_grad():
                for p, value in zip(params, point):
                    p.copy_(value)
                loss = _value(loss_fn(), "loss_fn")
                extra = None if metric is None else _value(metric(), "metric")
        finally:
            with torch.no_grad():
                for p, value in zip(params, saved):
                    p.copy_(value)
        return loss, extra

    try:
        if isinstance(model, nn.Module):
            model.eval()
        yield evaluate
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag


def interpolate(model: nn.Module | Iterable[Tensor], loss_fn: Closure,
                params_a: Sequence[Tensor], params_b: Sequence[Tensor],
                alphas: Sequence[float] | Tensor, *,
                metric: Closure | None = None) -> Interpolation:
    """The loss along the line from solution ``a`` to solution ``b``.

    At each ``alpha`` the parameters are set to ``torch.lerp(a, b, alpha)`` = ``(1 - alpha) a +
    alpha b`` (exactly ``a`` at 0 and ``b`` at 1) and ``loss_fn()`` (and ``metric()``) evaluated.

    Args:
        model: a module (its ``parameters()`` in order) or the parameter tensors themselves.
        loss_fn: the loss on the data to measure on, a number or one-element tensor.
        params_a: the first solution, one tensor per parameter (e.g. saved copies).
        params_b: the second solution, likewise.
        alphas: the coefficients (finite; outside ``[0, 1]`` extrapolates).
        metric: an optional second quantity at each point (e.g. accuracy).

    Returns:
        alphas, losses and metrics as lists of floats; the parameters are as before the call.
    """
    params = _parameters(model)
    a = _matching(params, params_a, "params_a")
    b = _matching(params, params_b, "params_b")
    coefficients = _coefficients(alphas, "alphas")
    losses, metrics = [], []
    with _evaluating(model, params) as evaluate:
        for alpha in coefficients:
            point = [torch.lerp(x, y, alpha) for x, y in zip(a, b)]
            loss, extra = evaluate(point, loss_fn, metric)
            losses.append(loss)
            metrics.append(extra)
    return Interpolation(coefficients, losses, None if metric is None else metrics)  # type: ignore[arg-type]


def filter_normalized_direction(params: Sequence[Tensor], *,
                                generator: torch.Generator | None = None,
                                include_1d: bool = False) -> list[Tensor]:
    r"""A random direction, filter-normalized to the parameters (Li et al. 2018).

    Each entry is drawn from a standard normal (from ``generator``, on its device, then moved
    to the parameter's), then for a parameter ``w`` with two or more dimensions each *filter*
    ``i`` (``w[i]``: the output channel of a convolution, the row of a linear layer's weight,
    producing one output unit) is rescaled to the norm of the same filter of the weights:

    .. math:: d_i \leftarrow \frac{d_i}{\|d_i\|}\,\|w_i\|  \qquad (\text{so } \|d_i\| = \|w_i\|).

    This removes the scale of each filter from the picture: a network whose filters are rescaled
    (with no change to its function, e.g. before a BatchNorm or ReLU) gets a slice of the same
    shape. Parameters with fewer than two dimensions (biases, normalization scales and shifts)
    get a zero direction, so the slice moves only the filters; with ``include_1d=True`` each is
    instead normalized as a single filter (``||d|| = ||w||``). A filter of zero weights gets a
    zero direction.

    Returns:
        one tensor per parameter, shaped, typed and placed as it.
    """
    out = []
    where = generator.device if generator is not None else torch.device("cpu")
    for p in params:
        w = p.detach()
        d = torch.randn(w.shape, generator=generator, device=where, dtype=w.dtype).to(w.device)
        if w.dim() >= 2:
            w_norm = w.reshape(w.shape[0], -1).norm(dim=1)
            d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
            factor = (w_norm / d_norm.clamp_min(torch.finfo(w.dtype).tiny))
            d = d * factor.reshape((-1,) + (1,) * (w.dim() - 1))
        elif include_1d:
            d = d * (w.norm() / d.norm().clamp_min(torch.finfo(w.dtype).tiny))
        else:
            d = torch.zeros_like(w)
        out.append(d)
    return out


def slice_2d(model: nn.Module | Iterable[Tensor], loss_fn: Closure,
             xs: Sequence[float] | Tensor, ys: Sequence[float] | Tensor, *,
             directions: tuple[Sequence[Tensor], Sequence[Tensor]] | None = None,
             generator: torch.Generator | None = None, include_1d: bool = False,
             metric: Closure | None = None) -> Slice2D:
    """The loss over a 2-D slice ``w + x d1 + y d2`` around the current weights ``w``.

    Args:
        model: a module (its ``parameters()`` in order) or the parameter tensors themselves.
        loss_fn: the loss on the data to measure on, a number or one-element tensor.
        xs: the coefficients of ``d1`` (grid columns), finite.
        ys: the coefficients of ``d2`` (grid rows), finite.
        directions: ``(d1, d2)``, one tensor per parameter each; if None, two independent
            :func:`filter_normalized_direction` draws from ``generator`` (``include_1d`` passed
            on).
        generator: draws the directions (a seeded one makes the slice reproducible).
        include_1d: see :func:`filter_normalized_direction`.
        metric: an optional second quantity at each point.

    Returns:
        the grid (``losses[i][j]`` at ``(xs[j], ys[i])``) and the directions; the parameters
        are as before the call. ``len(xs) * len(ys)`` evaluations of ``loss_fn``.
    """
    params = _parameters(model)
    cols, rows = _coefficients(xs, "xs"), _coefficients(ys, "ys")
    if directions is None:
        d1 = filter_normalized_direction(params, generator=generator, include_1d=include_1d)
        d2 = filter_normalized_direction(params, generator=generator, include_1d=include_1d)
    else:
        if len(directions) != 2:
            raise ValueError(f"landscape: directions must be a pair (d1, d2), got "
                             f"{len(directions)}")
        d1 = _matching(params, directions[0], "directions[0]")
        d2 = _matching(params, directions[1], "directions[1]")
    center = [p.detach().clone() for p in params]
    losses: list[list[float]] = []
    metrics: list[list[float]] = []
    with _evaluating(model, params) as evaluate:
        for y in rows:
            loss_row, metric_row = [], []
            for x in cols:
                point = [w + x * u + y * v for w, u, v in zip(center, d1, d2)]
                loss, extra = evaluate(point, loss_fn, metric)
                loss_row.append(loss)
                metric_row.append(extra)
            losses.append(loss_row)
            metrics.append(metric_row)  # type: ignore[arg-type]
    return Slice2D(cols, rows, losses, None if metric is None else metrics, (d1, d2))
