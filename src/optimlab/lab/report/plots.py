"""Matplotlib figures of the report, each returned as an inline ``<svg>`` string.

Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot, so no global figure
registry, no interactive backend and nothing to close); text stays text in the SVG
(``svg.fonttype='none'``), ids are prefixed per figure so that many SVGs can share one page.
Matplotlib escapes its own SVG text; user strings are additionally protected from mathtext
(``$``) and from the legend's ``_hidden`` convention by :func:`mpl_text`.

Axes conventions shared by every figure:

* **log axes where values span decades**: a y axis is logarithmic when its positive values span
  more than a factor :data:`LOG_SPAN` (or the metric is non-negative by definition and has
  values at or below 0);
* **clamping**: a log axis shows at most :data:`MAX_DECADES` decades below its largest value;
  smaller values, and values ``<= 0`` of non-negative metrics (suboptimality computed as
  ``f - f*`` rounds to ``-1e-17`` near the minimum), are drawn on the bottom edge, whose tick
  reads ``≤ 10⁻ⁿ``;
* **many arms**: up to :data:`MAX_LEGEND` lines get a legend; beyond, curves are drawn as small
  multiples (one panel per group of arms, every other arm in light grey behind).
"""

from __future__ import annotations

import io
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.colors import LogNorm, to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
from matplotlib.transforms import blended_transform_factory

__all__ = [
    "LOG_SPAN",
    "MAX_DECADES",
    "MAX_LEGEND",
    "RC",
    "Band",
    "Interval",
    "LRLine",
    "Panel",
    "Path2D",
    "Style",
    "SweepSeries",
    "bars_figure",
    "cost_figure",
    "curves_figure",
    "interval_figure",
    "log_floor",
    "mpl_text",
    "profile_figure",
    "scatter_figure",
    "schedule_figure",
    "series_figure",
    "styles_for",
    "svg_of",
    "sweep_figure",
    "trajectories_figure",
]

#: rcParams used for every figure.
RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "optimlab-report",
    "font.size": 8.5,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8.5,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.3,
    "path.simplify": True,
    "axes.formatter.useoffset": False,
}

#: At most this many lines get a legend; beyond, curves become small multiples.
MAX_LEGEND = 12
#: A y axis becomes logarithmic when its positive values span more than this factor.
LOG_SPAN = 20.0
#: A log axis shows at most this many decades below its largest value: float64 carries about
#: 16 significant digits, so a value 1e-16 times the largest one is rounding noise of any
#: quantity computed from it (e.g. f - f* near the minimum).
MAX_DECADES = 16

_LINESTYLES = ("-", "--", ":", "-.")
_PATTERN = {"--": "lines.dashed_pattern", ":": "lines.dotted_pattern",
            "-.": "lines.dashdot_pattern"}


@dataclass(frozen=True)
class Style:
    """How one line is drawn: a colour (``#rrggbb``) and a matplotlib line style."""

    color: str
    linestyle: str

    @property
    def dasharray(self) -> str:
        """The line style as an SVG ``stroke-dasharray``, the plot's own pattern: matplotlib's
        rcParams pattern scaled by the line width (empty for solid)."""
        key = _PATTERN.get(self.linestyle)
        if key is None:
            return ""
        width = float(RC["lines.linewidth"])
        return " ".join(f"{v * width:.2f}" for v in mpl.rcParams[key])


def styles_for(names: Sequence[str]) -> dict[str, Style]:
    """A distinct style per name: ``tab10`` for up to 10 names, else ``tab20`` colours with the
    line style changing every 20 names (80 distinct combinations, then repeating)."""
    if len(names) <= 10:
        colors = [to_hex(c) for c in mpl.colormaps["tab10"].colors]
        return {a: Style(colors[i], "-") for i, a in enumerate(names)}
    colors = [to_hex(c) for c in mpl.colormaps["tab20"].colors]
    colors = colors[0::2] + colors[1::2]  # the dark shades first, then the light ones
    return {a: Style(colors[i % 20], _LINESTYLES[(i // 20) % 4]) for i, a in enumerate(names)}


def mpl_text(text: Any) -> str:
    """``text`` safe to hand to matplotlib: ``$`` escaped (no mathtext), and a leading ``_``
    (which would hide a legend entry) preceded by a space."""
    s = str(text).replace("$", r"\$")
    return " " + s if s.startswith("_") else s


_ID = re.compile(r'\bid="([^"]+)"')
_URL = re.compile(r"url\(#([^)]+)\)")
_HREF = re.compile(r'href="#([^"]+)"')
_TAG = re.compile(r"<[^>]+>")
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_PATH_D = re.compile(r'\bd="([^"]*)"')
_FLOAT = re.compile(r"(-?\d+\.\d\d)\d+")
_counter = itertools.count()


def _compact_path(match: re.Match[str]) -> str:
    d = _FLOAT.sub(r"\1", match.group(1))  # 1/100 pt is far below a pixel
    return 'd="' + " ".join(d.split()) + '"'


def svg_of(fig: Figure) -> str:
    """The figure as an ``<svg>`` element: no XML prolog or metadata, path coordinates cut to
    1/100 pt, ids made unique to this figure (so that many SVGs can share one page)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = _METADATA.sub("", text[text.index("<svg"):])
    prefix = f"f{next(_counter)}-"

    def fix(match: re.Match[str]) -> str:
        tag = match.group(0)
        tag = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', tag)
        tag = _URL.sub(lambda m: f"url(#{prefix}{m.group(1)})", tag)
        tag = _HREF.sub(lambda m: f'href="#{prefix}{m.group(1)}"', tag)
        return _PATH_D.sub(_compact_path, tag) if tag.startswith("<path") else tag

    return _TAG.sub(fix, text).strip()


#: Figure width and the room kept right of the axes for a legend (inches).
WIDTH, LEGEND_WIDTH = 7.0, 2.25
#: Longest legend entry (characters); the tables name every arm in full.
LEGEND_CHARS = 34


def _figure(height: float = 3.3, *, legend: bool = False, width: float = WIDTH,
            left: float = 0.72, bottom: float = 0.5, top: float = 0.22) -> tuple[Figure, Any]:
    """A figure with one axes at fixed margins (in inches; no tight-bbox second draw), leaving
    ``LEGEND_WIDTH`` on the right when ``legend``."""
    fig = Figure(figsize=(width, height))
    right = LEGEND_WIDTH if legend else 0.25
    ax = fig.add_axes((left / width, bottom / height, (width - left - right) / width,
                       (height - bottom - top) / height))
    return fig, ax


def _grid(n: int, *, ncols: int = 3, panel: tuple[float, float] = (3.2, 2.3),
          legend: bool = False) -> tuple[Figure, list[Any]]:
    """A figure of ``n`` panels in rows of ``ncols`` with shared axes (fixed margins)."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    width = ncols * panel[0] + (LEGEND_WIDTH if legend else 0.0)
    height = nrows * panel[1] + 0.25
    fig = Figure(figsize=(width, height))
    axes = []
    for i in range(n):
        r, c = divmod(i, ncols)
        left = c * panel[0] + 0.62
        bottom = height - (r + 1) * panel[1] + 0.42
        ax = fig.add_axes((left / width, bottom / height, (panel[0] - 0.75) / width,
                           (panel[1] - 0.72) / height),
                          sharex=axes[0] if axes else None, sharey=axes[0] if axes else None)
        axes.append(ax)
    return fig, axes


def _short(label: str) -> str:
    return label if len(label) <= LEGEND_CHARS else label[: LEGEND_CHARS - 1] + "…"


def _legend(ax: Any, n: int) -> None:
    if 0 < n <= MAX_LEGEND:
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, [_short(lb) for lb in labels], loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), frameon=False, handlelength=2.2,
                  borderaxespad=0.0)


# ----------------------------------------------------------------------------- log axes

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _pow10(e: int) -> str:
    return "10" + str(e).translate(_SUPERSCRIPT)


def _log_label(value: float, _pos: Any = None) -> str:
    if not value > 0 or not math.isfinite(value):
        return ""
    e = math.log10(value)
    if abs(e - round(e)) < 1e-9:
        return _pow10(round(e))
    return f"{value:.2g}"


def _finite(arrays: Sequence[Any]) -> np.ndarray:
    parts = [np.asarray(a, dtype=float).ravel() for a in arrays]
    parts = [p[np.isfinite(p)] for p in parts]
    return np.concatenate(parts) if parts else np.zeros(0)


def wants_log(arrays: Sequence[Any], *, nonneg: bool = False) -> bool:
    """Whether values want a log axis: all finite values positive and spanning more than
    :data:`LOG_SPAN`, or (``nonneg``: a metric that cannot be negative) some positive values
    next to values at or below 0 (rounding noise of a quantity at its minimum)."""
    v = _finite(arrays)
    pos = v[v > 0]
    if pos.size == 0:
        return False
    if pos.size < v.size:
        return nonneg
    return bool(pos.max() / pos.min() > LOG_SPAN)


def log_floor(arrays: Sequence[Any], *, nonneg: bool = False) -> float | None:
    """The bottom of a log axis for ``arrays``, or ``None`` when no value needs clamping.

    A power of ten: at most :data:`MAX_DECADES` decades below the largest value, and below the
    smallest positive value when some values are ``<= 0`` (``nonneg``), so that clamped points
    sit on an edge of their own, labelled ``≤ floor``.
    """
    v = _finite(arrays)
    pos = v[v > 0]
    if pos.size == 0:
        return None
    lowest = pos.max() * 10.0 ** -MAX_DECADES
    has_nonpos = nonneg and pos.size < v.size
    if pos.min() >= lowest and not has_nonpos:
        return None
    e = math.floor(math.log10(max(pos.min(), lowest)))
    if has_nonpos and 10.0 ** e >= pos.min():
        e -= 1
    return 10.0 ** e


def clamp(values: Any, floor: float | None) -> np.ndarray:
    """``values`` with everything below ``floor`` (``<= 0`` included) raised to it; NaN kept."""
    v = np.asarray(values, dtype=float)
    if floor is None:
        return v
    return np.where(np.isfinite(v) & (v < floor), floor, v)


def _set_log(ax: Any, which: str, values: Sequence[Any], floor: float | None = None) -> None:
    """Log scale with plain-text tick labels (``10⁻³``: no mathtext, which is slow), labelled
    minor ticks when the data span less than about a decade and a half, and the bottom at
    ``floor`` (its tick ``≤ 10⁻ⁿ``) when given."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    v = _finite(values)
    v = v[v > 0]
    if floor is not None:
        v = np.append(v, floor)
    if v.size == 0:
        return
    lo_e, hi_e = math.floor(math.log10(v.min())), math.ceil(math.log10(v.max()))
    if hi_e - lo_e < 1.5 and floor is None:
        axis.set_major_formatter(FuncFormatter(_log_label))

        def minor(value: float, _pos: Any) -> str:  # label minor ticks only on a short axis
            lo, hi = sorted(axis.get_view_interval())
            return f"{value:.2g}" if lo > 0 and np.log10(hi / lo) < 1.5 else ""

        axis.set_minor_formatter(FuncFormatter(minor))
        return
    # unlabelled minor ticks cost as much to draw as labelled ones: none
    axis.set_minor_locator(NullLocator())
    stride = max(1, math.ceil((hi_e - lo_e) / 8))
    start = lo_e if floor is not None else lo_e - (lo_e % stride)
    axis.set_major_locator(FixedLocator([10.0 ** e for e in range(start, hi_e + 1, stride)]))

    def label(value: float, _pos: Any) -> str:
        text = _log_label(value)
        return "≤" + text if floor is not None and text and value <= floor * (1 + 1e-9) else text

    axis.set_major_formatter(FuncFormatter(label))
    if floor is not None:
        top = float(v.max())
        (ax.set_ylim if which == "y" else ax.set_xlim)(floor, top * (top / floor) ** 0.04)


def _value_axis(arrays: Sequence[Any], *, nonneg: bool = False,
                logy: bool | None = None) -> tuple[bool, float | None]:
    """Decide a y axis (see the module docstring): returns ``(log, floor)``; the caller clamps
    its values with :func:`clamp` and calls :func:`_finish_value_axis` after plotting."""
    log = wants_log(arrays, nonneg=nonneg) if logy is None else logy
    if log and not (_finite(arrays) > 0).any():
        log = False
    return log, (log_floor(arrays, nonneg=nonneg) if log else None)


def _finish_value_axis(ax: Any, log: bool, floor: float | None, drawn: Sequence[Any]) -> None:
    if log:
        _set_log(ax, "y", drawn, floor)


# ----------------------------------------------------------------------------- curves


@dataclass
class Band:
    """A mean curve with a band (min-max over seeds), for :func:`curves_figure`.

    ``group`` names the small-multiple panel the band goes to when there are many arms (e.g.
    the optimizer); ``marks`` are x positions to mark on the curve (e.g. the settled step)."""

    arm: str
    style: Style
    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    group: str = ""
    marks: list[float] = field(default_factory=list)


def many(n: int) -> bool:
    """Whether ``n`` lines are drawn as small multiples (a wide figure) rather than one axes."""
    return n > MAX_LEGEND


def _panels(bands: Sequence[Band]) -> list[tuple[str, list[int]]]:
    """Small-multiple panels: by ``group`` when the groups are small enough, else chunks."""
    groups: dict[str, list[int]] = {}
    for i, b in enumerate(bands):
        groups.setdefault(b.group, []).append(i)
    if 1 < len(groups) <= 12 and all(len(v) <= MAX_LEGEND for v in groups.values()):
        return list(groups.items())
    size = 8
    return [(f"{bands[i].arm} …", list(range(i, min(i + size, len(bands)))))
            for i in range(0, len(bands), size)]


def _draw_band(ax: Any, b: Band, floor: float | None, *, label: bool = True) -> list[Any]:
    mean, lo, hi = (clamp(v, floor) for v in (b.mean, b.lo, b.hi))
    if np.any(hi > lo):
        ax.fill_between(b.x, lo, hi, color=b.style.color, alpha=0.15, linewidth=0)
    ax.plot(b.x, mean, color=b.style.color, linestyle=b.style.linestyle,
            label=mpl_text(b.arm) if label else None)
    if b.marks:
        ys = np.interp(b.marks, b.x, mean) if len(b.x) else []
        ax.plot(b.marks, ys, marker="|", markersize=9, markeredgewidth=1.6,
                color=b.style.color, linestyle="none")
    return [mean, lo, hi]


def _target_line(ax: Any, target: float | None, log: bool) -> None:
    if target is not None and math.isfinite(target) and (not log or target > 0):
        ax.axhline(target, color="0.3", linestyle=(0, (4, 3)), linewidth=0.8)
        ax.annotate("target", (1.0, target), xycoords=("axes fraction", "data"),
                    fontsize=7, color="0.3", ha="right", va="bottom")


def curves_figure(bands: Sequence[Band], xlabel: str, ylabel: str, *,
                  target: float | None = None, nonneg: bool = False,
                  logy: bool | None = None) -> str:
    """Mean curves with min-max bands against ``xlabel``; a log y axis where values span
    decades, values clamped (see the module docstring; ``nonneg``: the metric cannot be
    negative, so values ``<= 0`` are rounding noise). Small multiples beyond
    :data:`MAX_LEGEND` bands (see :func:`many`), one panel per ``group``."""
    arrays = [a for b in bands for a in (b.mean, b.lo, b.hi)]
    extra = [np.asarray([target])] if target is not None and math.isfinite(target) else []
    log, floor = _value_axis(arrays + extra, nonneg=nonneg, logy=logy)
    if not many(len(bands)):
        fig, ax = _figure(legend=bool(bands))
        drawn = [a for b in bands for a in _draw_band(ax, b, floor)]
        _target_line(ax, target, log)
        _finish_value_axis(ax, log, floor, drawn + extra)
        ax.set_xlabel(mpl_text(xlabel))
        ax.set_ylabel(mpl_text(ylabel))
        _legend(ax, len(bands))
        return svg_of(fig)
    panels = _panels(bands)
    fig, axes = _grid(len(panels))
    drawn = []
    for ax, (title, idx) in zip(axes, panels):
        mine = set(idx)
        for i, b in enumerate(bands):  # context: every other arm in light grey
            if i not in mine:
                ax.plot(b.x, clamp(b.mean, floor), color="0.86", linewidth=0.7, zorder=1)
        for i in idx:
            drawn += _draw_band(ax, bands[i], floor)
        _target_line(ax, target, log)
        ax.set_title(mpl_text(_short(title)), loc="left")
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, [_short(lb) for lb in labels], loc="upper right", frameon=True,
                  framealpha=0.8, fontsize=6, handlelength=1.8, borderaxespad=0.2)
    _finish_value_axis(axes[0], log, floor, drawn + extra)
    ncols = min(3, len(panels))
    for i, ax in enumerate(axes):
        if i >= len(axes) - ncols:
            ax.set_xlabel(mpl_text(xlabel))
        if i % ncols == 0:
            ax.set_ylabel(mpl_text(ylabel))
    return svg_of(fig)


def cost_figure(views: Sequence[tuple[str, Sequence[Band]]], ylabel: str, *,
                target: float | None = None, nonneg: bool = False,
                logx: Sequence[bool] = ()) -> str:
    """The same curves against several x axes, one panel each in a row with a shared y axis
    (e.g. iterations, gradient evaluations, seconds: what an iteration costs, at a glance);
    one legend right of the last panel. At most :data:`MAX_LEGEND` bands per view.
    ``logx[i]``: view ``i`` gets a log x axis when its positive x values span more than
    :data:`LOG_SPAN` squared (x = 0 is then not drawn)."""
    arrays = [a for _, bands in views for b in bands for a in (b.mean, b.lo, b.hi)]
    extra = [np.asarray([target])] if target is not None and math.isfinite(target) else []
    log, floor = _value_axis(arrays + extra, nonneg=nonneg)
    panel_w, height, left = 3.0, 2.9, 0.62
    width = len(views) * panel_w + LEGEND_WIDTH
    fig = Figure(figsize=(width, height))
    axes: list[Any] = []
    drawn = []
    for i, (xlabel, bands) in enumerate(views):
        ax = fig.add_axes(((i * panel_w + left) / width, 0.5 / height,
                           (panel_w - left - 0.12) / width, (height - 0.72) / height),
                          sharey=axes[0] if axes else None)
        axes.append(ax)
        for b in bands:
            drawn += _draw_band(ax, b, floor, label=i == len(views) - 1)
        _target_line(ax, target, log)
        xs = _finite([b.x for b in bands])
        xs = xs[xs > 0]
        if i < len(logx) and logx[i] and xs.size and xs.max() > LOG_SPAN ** 2 * xs.min():
            ax.set_xscale("log")
            xlabel += " (log)"
        ax.set_xlabel(mpl_text(xlabel))
    axes[0].set_ylabel(mpl_text(ylabel))
    _finish_value_axis(axes[0], log, floor, drawn + extra)
    _legend(axes[-1], len(views[-1][1]))
    return svg_of(fig)


@dataclass
class Panel:
    """One panel of :func:`series_figure`: a title, its bands and whether the quantity is
    non-negative (norms, step sizes, noise levels are)."""

    title: str
    bands: list[Band]
    nonneg: bool = True


def series_figure(panels: Sequence[Panel], xlabel: str, *, names: Sequence[str] = ()) -> str:
    """Small multiples of recorded series (one panel per quantity, one line per arm, each panel
    with its own y axis, log where values span decades); a legend of ``names`` right of the
    panels when there are at most :data:`MAX_LEGEND`."""
    legend = 0 < len(names) <= MAX_LEGEND
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    pw, ph = 2.9, 2.3
    width = ncols * pw + (LEGEND_WIDTH if legend else 0.0)
    height = nrows * ph + 0.2
    fig = Figure(figsize=(width, height))
    first = None
    for i, p in enumerate(panels):
        r, c = divmod(i, ncols)
        ax = fig.add_axes(((c * pw + 0.58) / width, (height - (r + 1) * ph + 0.42) / height,
                           (pw - 0.72) / width, (ph - 0.7) / height),
                          sharex=first)
        first = first or ax
        arrays = [a for b in p.bands for a in (b.mean, b.lo, b.hi)]
        log, floor = _value_axis(arrays, nonneg=p.nonneg)
        drawn = [a for b in p.bands for a in _draw_band(ax, b, floor, label=False)]
        _finish_value_axis(ax, log, floor, drawn)
        ax.set_title(mpl_text(p.title), loc="left")
        if r == nrows - 1 or i + ncols >= len(panels):
            ax.set_xlabel(mpl_text(xlabel))
    if legend:
        styles: dict[str, Style] = {}
        for p in panels:
            for b in p.bands:
                styles.setdefault(b.arm, b.style)
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=styles[n].color, linestyle=styles[n].linestyle)
                   for n in names if n in styles]
        labels = [mpl_text(_short(n)) for n in names if n in styles]
        fig.legend(handles, labels, loc="upper left",
                   bbox_to_anchor=((ncols * pw + 0.1) / width, 0.98), frameon=False,
                   handlelength=2.2)
    return svg_of(fig)


# ----------------------------------------------------------------------------- profiles

_NICE = (1, 1.5, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 100, 200, 500, 1000, 1e4, 1e5, 1e6, 1e7,
         1e8, 1e9)


def profile_figure(taus: np.ndarray, profiles: dict[str, list[float]],
                   styles: dict[str, Style], xlabel: str) -> str:
    """Performance profiles rho(tau) as step functions against log tau."""
    fig, ax = _figure(legend=len(profiles) <= MAX_LEGEND)
    for arm, rho in profiles.items():
        ax.step(taus, rho, where="post", color=styles[arm].color,
                linestyle=styles[arm].linestyle, label=mpl_text(arm))
    top = float(taus[-1])
    ax.set_xscale("log")
    ticks = [t for t in _NICE if t <= top]
    ticks = ticks if len(ticks) <= 9 else ticks[:: math.ceil(len(ticks) / 9)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(1.0, top)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(mpl_text(xlabel))
    ax.set_ylabel("fraction of tasks within τ of the best")
    _legend(ax, len(profiles))
    return svg_of(fig)


# ----------------------------------------------------------------------------- 2-D paths


@dataclass
class Path2D:
    """One arm's trajectory on a 2-D task; ``steps[i]`` is the step after which ``xy[i]`` was
    recorded (``None``: unknown, no step markers)."""

    arm: str
    style: Style
    xy: np.ndarray
    note: str = ""
    steps: np.ndarray | None = None


#: Step markers are drawn on trajectories at these steps (decades: iterations spread over
#: orders of magnitude, and the early steps are where optimizers differ most visibly).
STEP_MARKS = (1, 10, 100, 1000, 10000, 100000)
#: Step numbers are written beside the markers of at most this many paths.
LABELLED_PATHS = 4


def trajectories_figure(paths: Sequence[Path2D], function: Any | None,
                        box: Sequence[float] | None, start: Sequence[float] | None) -> str:
    """Trajectories over log-spaced contours of ``f - f* + eps`` (when ``function`` is given:
    a :class:`~optimlab.lab.tasks.functions2d.Function2D`), start and known minima marked,
    and step markers (open circles at steps 1, 10, 100, ...; numbered for up to
    :data:`LABELLED_PATHS` paths)."""
    fig, ax = _figure(4.6, legend=len(paths) <= MAX_LEGEND)
    ax.grid(False)
    if function is not None and box is not None:
        xmin, xmax, ymin, ymax = box
        gx, gy = np.meshgrid(np.linspace(xmin, xmax, 150), np.linspace(ymin, ymax, 150))
        with np.errstate(all="ignore"):
            z = np.asarray(function.f_numpy(gx, gy), dtype=float) - float(function.f_star)
        z = np.where(np.isfinite(z), np.maximum(z, 0.0), np.nan)
        span = float(np.nanmax(z)) if np.isfinite(z).any() else 0.0
        if span > 0:
            eps = max(span * 1e-6, 1e-12)
            z = z + eps
            levels = np.geomspace(max(float(np.nanmin(z)), eps), float(np.nanmax(z)), 22)
            ax.contour(gx, gy, z, levels=levels, norm=LogNorm(levels[0], levels[-1]),
                       cmap="Greys_r", linewidths=0.5, alpha=0.6)
        for i, (mx, my) in enumerate(function.minima):
            ax.plot([mx], [my], marker="*", markersize=11, color="gold",
                    markeredgecolor="black", markeredgewidth=0.6, linestyle="none",
                    label="known minimum" if i == 0 else None, zorder=5)
    if box is not None:
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
    label_steps = len(paths) <= LABELLED_PATHS
    for p in paths:
        if len(p.xy) == 0:
            continue
        ax.plot(p.xy[:, 0], p.xy[:, 1], color=p.style.color, linestyle=p.style.linestyle,
                linewidth=1.1, label=mpl_text(p.arm + p.note), zorder=3)
        ax.plot(p.xy[-1:, 0], p.xy[-1:, 1], marker="o", markersize=3.5, color=p.style.color,
                linestyle="none", zorder=4)
        if p.steps is None or len(p.steps) != len(p.xy):
            continue
        for s in STEP_MARKS:
            hit = np.nonzero(p.steps == s)[0]
            if not hit.size:
                continue
            x, y = p.xy[hit[0]]
            ax.plot([x], [y], marker="o", markersize=4.5, markerfacecolor="white",
                    markeredgecolor=p.style.color, markeredgewidth=1.1, linestyle="none",
                    zorder=4, clip_on=True)
            if label_steps and box is not None and box[0] <= x <= box[1] \
                    and box[2] <= y <= box[3]:
                ax.annotate(f"{s:g}", (x, y), xytext=(3, 3), textcoords="offset points",
                            fontsize=6.5, color=p.style.color, zorder=6)
    if start is not None:
        ax.plot([start[0]], [start[1]], marker="o", markersize=7, markerfacecolor="white",
                markeredgecolor="black", linestyle="none", label="start", zorder=6)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if len(paths) <= MAX_LEGEND:
        _legend(ax, 1)
    return svg_of(fig)


# ----------------------------------------------------------------------------- sweeps


@dataclass
class SweepSeries:
    """One line of a sweep figure: y (+inf = diverged / not reached) against x, with an
    optional interval ``[lo, hi]`` per point (``hi`` may be +inf: censored) and the index of
    the line's best point (ringed)."""

    name: str
    style: Style
    xs: list[float]
    ys: list[float]
    xlabels: list[str]
    lo: list[float] | None = None
    hi: list[float] | None = None
    best: int | None = None


def sweep_figure(series: Sequence[SweepSeries], xlabel: str, ylabel: str, *,
                 xscale: str = "log", missing: str = "diverged", nonneg: bool = False) -> str:
    """Lines of y against x (``xscale``: ``"log"``, ``"linear"`` or ``"category"``: ``xs``
    are positions, ``xlabels`` their names), ticks at the swept values, intervals as vertical
    bars, each line's best point ringed; +inf y values drawn as ``×`` at the top edge."""
    fig, ax = _figure(legend=len(series) <= MAX_LEGEND, top=0.35)
    ys_all = [np.asarray(s.ys, dtype=float) for s in series]
    highs = [np.asarray(s.hi, dtype=float) for s in series if s.hi is not None]
    # the axis follows the centres and upper bounds; lower bounds (a t interval of a small
    # positive quantity can reach below 0) are cut at the bottom edge
    log, floor = _value_axis(ys_all + highs, nonneg=nonneg)
    top = blended_transform_factory(ax.transData, ax.transAxes)
    any_missing = False
    ticks: dict[float, str] = {}
    drawn = []
    bars: list[tuple[np.ndarray, np.ndarray, np.ndarray, Style]] = []
    for s in series:
        x = np.asarray(s.xs, dtype=float)
        y = clamp(s.ys, floor)
        ok = np.isfinite(y)
        drawn.append(y)
        ax.plot(x[ok], y[ok], color=s.style.color, linestyle=s.style.linestyle, marker="o",
                markersize=3.5, label=mpl_text(s.name))
        if s.lo is not None and s.hi is not None:
            lo, hi = np.asarray(s.lo, dtype=float), clamp(s.hi, floor)
            has = ok & ~np.isnan(lo)
            fin = has & np.isfinite(hi)
            ax.plot(x[fin], hi[fin], linestyle="none")  # the upper bounds set the y range
            drawn.append(hi[fin])
            bars.append((x[has], lo[has], hi[has], s.style))
        if s.best is not None and 0 <= s.best < len(y) and ok[s.best]:
            ax.plot([x[s.best]], [y[s.best]], marker="o", markersize=9,
                    markerfacecolor="none", markeredgewidth=1.3, color=s.style.color,
                    linestyle="none")
        if (~ok).any():
            any_missing = True
            ax.plot(x[~ok], np.full(int((~ok).sum()), 0.97), transform=top, marker="x",
                    markersize=7, markeredgewidth=1.6, color=s.style.color, linestyle="none",
                    clip_on=False)
        ticks.update(zip(s.xs, s.xlabels))
    xs = sorted(ticks)
    if xscale == "log":
        ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    shown = xs if len(xs) <= 12 else xs[:: math.ceil(len(xs) / 12)]
    ax.xaxis.set_major_locator(FixedLocator(shown))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: mpl_text(ticks.get(v, f"{v:g}"))))
    if xs:
        if xscale == "log":
            ax.set_xlim(xs[0] / 1.4, xs[-1] * 1.4)
        else:
            pad = 0.08 * (xs[-1] - xs[0]) if xs[-1] > xs[0] else 0.5
            ax.set_xlim(xs[0] - pad, xs[-1] + pad)
    _finish_value_axis(ax, log, floor, drawn)
    if not any(np.isfinite(v).any() for v in ys_all):
        ax.set_yticks([])
    bottom, upper = ax.get_ylim()
    for x, lo, hi, st in bars:  # intervals; open upwards (censored): dotted to the top edge
        lo = np.where(np.isfinite(lo) & (lo > bottom), lo, bottom)
        fin = np.isfinite(hi)
        if fin.any():
            ax.vlines(x[fin], lo[fin], hi[fin], color=st.color, linewidth=1.0, alpha=0.7)
        if (~fin).any():
            ax.vlines(x[~fin], lo[~fin], upper, color=st.color, linewidth=1.0, alpha=0.7,
                      linestyles="dotted")
    ax.set_ylim(bottom, upper)
    ax.set_xlabel(mpl_text(xlabel))
    ax.set_ylabel(mpl_text(ylabel))
    notes = (["ringed: best"] if any(s.best is not None for s in series) else []) + (
        [f"× at the top: {missing}"] if any_missing else [])
    if notes:
        ax.annotate("; ".join(notes), (0.0, 1.03), xycoords="axes fraction", fontsize=7,
                    color="0.3")
    _legend(ax, len(series))
    return svg_of(fig)


# ----------------------------------------------------------------------------- intervals


@dataclass
class Interval:
    """One row of :func:`interval_figure`: a centre with its interval (``hi`` may be +inf:
    censored; ``center`` +inf: not reached), and whether the row is the best or tied with
    it."""

    name: str
    style: Style
    center: float
    lo: float
    hi: float
    best: bool = False


def interval_figure(rows: Sequence[Interval], xlabel: str, *, missing: str = "not reached",
                    nonneg: bool = True) -> str:
    """A forest plot: one row per name (top first), the centre as a dot (filled: best or tied
    with the best; open: worse), the interval as a bar; log x where values span decades;
    rows whose centre is +inf drawn as ``×`` at the right edge. ``nonneg``: the quantity
    cannot be negative (counts, times), so interval bounds below 0 are cut at 0."""
    if nonneg:
        rows = [replace(r, lo=max(r.lo, 0.0)) if math.isfinite(r.lo) else r for r in rows]
    n = len(rows)
    longest = max((len(_short(r.name)) for r in rows), default=4)
    fig, ax = _figure(min(0.85 + 0.24 * n, 30.0), left=0.3 + 0.062 * longest, bottom=0.45,
                      top=0.3)
    ax.grid(axis="y", visible=False)
    values = [v for r in rows for v in (r.center, r.lo, r.hi) if math.isfinite(v)]
    log = wants_log([np.asarray([r.center for r in rows if math.isfinite(r.center)])])
    if log:  # bounds at or below 0 are cut at the axis' left edge
        values = [v for v in values if v > 0]
    right = blended_transform_factory(ax.transAxes, ax.transData)
    any_missing = False
    for i, r in enumerate(rows):
        if not math.isfinite(r.center):
            any_missing = True
            ax.plot([0.98], [i], transform=right, marker="x", markersize=7, markeredgewidth=1.6,
                    color=r.style.color, linestyle="none", clip_on=False)
            continue
        lo = r.lo if math.isfinite(r.lo) else r.center
        if log and lo <= 0:  # cut at the left edge of the log axis
            lo = min(values) / 1.3
        if math.isfinite(r.hi):
            ax.plot([lo, r.hi], [i, i], color=r.style.color, linewidth=2.0, alpha=0.6,
                    solid_capstyle="butt")
        else:
            ax.plot([lo, lo], [i, i], color=r.style.color)
            ax.annotate("", (1.0, i), xytext=(lo, i), xycoords=right, textcoords="data",
                        arrowprops={"arrowstyle": "->", "color": r.style.color, "lw": 1.2,
                                    "linestyle": ":"})
        ax.plot([r.center], [i], marker="o", markersize=5.5, color=r.style.color,
                markerfacecolor=r.style.color if r.best else "white", markeredgewidth=1.3,
                linestyle="none", zorder=3)
    ax.set_yticks(range(n), [mpl_text(_short(r.name)) for r in rows])
    ax.set_ylim(n - 0.5, -0.5)
    if values:
        if log:
            _set_log(ax, "x", [np.asarray(values)])
            ax.set_xlim(min(values) / 1.3, max(values) * 1.3)
        else:
            span = max(values) - min(values)
            pad = 0.08 * span if span > 0 else max(abs(max(values)) * 0.1, 1.0)
            ax.set_xlim(min(0.0, min(values) - pad) if min(values) >= 0 else min(values) - pad,
                        max(values) + pad)
    else:
        ax.set_xticks([])
    ax.set_xlabel(mpl_text(xlabel))
    note = "filled: best or tied with the best; bar: interval"
    if any_missing:
        note += f"; × at the right: {missing}"
    ax.annotate(note, (0.0, 1.02), xycoords="axes fraction", fontsize=7, color="0.3")
    return svg_of(fig)


# ----------------------------------------------------------------------------- bars, lr


def bars_figure(names: Sequence[str], values: Sequence[float], styles: dict[str, Style],
                xlabel: str) -> str:
    """Horizontal bars, one per name (NaN bars are left out, the name kept)."""
    n = len(names)
    longest = max((len(_short(a)) for a in names), default=4)
    fig, ax = _figure(min(0.8 + 0.19 * n, 40.0), left=0.3 + 0.062 * longest, bottom=0.45,
                      top=0.1)
    ax.grid(axis="y", visible=False)
    y = np.arange(n)
    vals = np.asarray([v if math.isfinite(v) else 0.0 for v in values], dtype=float)
    ax.barh(y, vals, color=[styles[a].color for a in names], height=0.7)
    for yi, v in zip(y, values):
        ax.annotate(f"{v:.3g}" if math.isfinite(v) else "n/a", (v if math.isfinite(v) else 0, yi),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(y, [mpl_text(_short(a)) for a in names])
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel(mpl_text(xlabel))
    ax.set_xlim(0, max(1.0, float(vals.max(initial=0)) * 1.15))
    return svg_of(fig)


def scatter_figure(points: Mapping[str, Sequence[tuple[float, float]]],
                   styles: Mapping[str, Style], xlabel: str, ylabel: str) -> str:
    """One point per run (``points[arm]``: its runs' ``(x, y)``), and per arm its mean with
    min-max whiskers in both directions; log x where the values span decades."""
    fig, ax = _figure(legend=bool(points))
    xs_all = []
    for arm, pts in points.items():
        good = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        if not good:
            continue
        x, y = np.asarray(good, dtype=float).T
        xs_all.append(x)
        color = styles[arm].color
        ax.plot(x, y, marker="o", markersize=3.5, linestyle="none", color=color, alpha=0.55)
        mx, my = float(x.mean()), float(y.mean())
        ax.errorbar([mx], [my], xerr=[[mx - x.min()], [x.max() - mx]],
                    yerr=[[my - y.min()], [y.max() - my]], marker="D", markersize=6,
                    color=color, linewidth=1.0, capsize=2.5, label=mpl_text(arm))
    if xs_all and wants_log(xs_all, nonneg=True) and (_finite(xs_all) > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(mpl_text(xlabel))
    ax.set_ylabel(mpl_text(ylabel))
    _legend(ax, len(points))
    return svg_of(fig)


@dataclass
class LRLine:
    """One learning-rate schedule for :func:`schedule_figure`."""

    name: str
    style: Style
    steps: np.ndarray
    values: np.ndarray


def schedule_figure(lines: Sequence[LRLine]) -> str:
    """Learning rate against step; log-y when the peak rates span more than a decade."""
    fig, ax = _figure(legend=len(lines) <= MAX_LEGEND)
    peaks = [float(np.nanmax(ln.values)) for ln in lines if np.isfinite(ln.values).any()]
    peaks = [p for p in peaks if p > 0]
    logy = bool(peaks) and max(peaks) / min(peaks) > 10
    drawn = []
    for ln in lines:
        v = ln.values
        if logy:
            v = np.where(v > 0, v, np.nan)
        drawn.append(v)
        ax.plot(ln.steps, v, color=ln.style.color, linestyle=ln.style.linestyle,
                label=mpl_text(ln.name))
    if logy:
        _set_log(ax, "y", drawn)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    _legend(ax, len(lines))
    return svg_of(fig)
