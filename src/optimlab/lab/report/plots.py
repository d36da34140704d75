"""Matplotlib figures of the report, each returned as an inline ``<svg>`` string.

Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot, so no global figure
registry, no interactive backend and nothing to close); text stays text in the SVG
(``svg.fonttype='none'``), ids are prefixed per figure so that many SVGs can share one page.
Matplotlib escapes its own SVG text; user strings are additionally protected from mathtext
(``$``) and from the legend's ``_hidden`` convention by :func:`mpl_text`.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.colors import LogNorm, to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator
from matplotlib.transforms import blended_transform_factory

__all__ = ["RC", "Style", "mpl_text", "styles_for", "svg_of"]

#: rcParams used for every figure.
RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "optimlab-report",
    "font.size": 8.5,
    "axes.titlesize": 9,
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

#: At most this many arms get an in-plot legend; beyond, the HTML tables carry the key.
MAX_LEGEND = 12

_DASHES = {"-": "", "--": "6 3", ":": "1.5 2", "-.": "6 2 1.5 2"}


@dataclass(frozen=True)
class Style:
    """How one arm is drawn: a colour and a matplotlib line style."""

    color: str
    linestyle: str

    @property
    def dasharray(self) -> str:
        """The line style as an SVG ``stroke-dasharray`` (empty for solid)."""
        return _DASHES.get(self.linestyle, "")


def styles_for(arms: Sequence[str]) -> dict[str, Style]:
    """A distinct style per arm: ``tab10`` for up to 10 arms, else ``tab20`` colours with the
    line style changing every 20 arms (80 distinct combinations, then repeating)."""
    if len(arms) <= 10:
        colors = [to_hex(c) for c in mpl.colormaps["tab10"].colors]
        return {a: Style(colors[i], "-") for i, a in enumerate(arms)}
    colors = [to_hex(c) for c in mpl.colormaps["tab20"].colors]
    colors = colors[0::2] + colors[1::2]  # the dark shades first, then the light ones
    lines = list(_DASHES)
    return {a: Style(colors[i % 20], lines[(i // 20) % 4]) for i, a in enumerate(arms)}


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


def _short(label: str) -> str:
    return label if len(label) <= LEGEND_CHARS else label[: LEGEND_CHARS - 1] + "…"


def _legend(ax: Any, n: int) -> None:
    if 0 < n <= MAX_LEGEND:
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, [_short(lb) for lb in labels], loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), frameon=False, handlelength=2.2,
                  borderaxespad=0.0)


def _positive(values: Sequence[np.ndarray]) -> bool:
    finite = [v[np.isfinite(v)] for v in values]
    finite = [v for v in finite if v.size]
    return bool(finite) and all(v.min() > 0 for v in finite)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _log_label(value: float, _pos: Any = None) -> str:
    if not value > 0 or not math.isfinite(value):
        return ""
    e = math.log10(value)
    if abs(e - round(e)) < 1e-9:
        return "10" + str(round(e)).translate(_SUPERSCRIPT)
    return f"{value:.2g}"


def _set_log(ax: Any, which: str, values: Sequence[np.ndarray]) -> None:
    """Log scale with plain-text tick labels (``10⁻³``: no mathtext, which is slow) and labelled
    minor ticks when the data span less than about a decade and a half."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_formatter(FuncFormatter(_log_label))
    finite = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values] or [np.zeros(0)])
    short = finite.size and np.log10(finite.max() / finite.min()) < 1.5
    if short:
        def minor(v: float, _pos: Any) -> str:  # label minor ticks only on a short axis
            lo, hi = sorted(axis.get_view_interval())
            return f"{v:.2g}" if lo > 0 and np.log10(hi / lo) < 1.5 else ""

        axis.set_minor_formatter(FuncFormatter(minor))
    else:  # unlabelled minor ticks cost as much to draw as labelled ones: none
        axis.set_minor_locator(NullLocator())
        if finite.size and np.log10(finite.max() / finite.min()) > 12:
            axis.set_major_locator(LogLocator(numticks=8))


# ----------------------------------------------------------------------------- figures


@dataclass
class Band:
    """A mean curve with a min-max band, for :func:`curves_figure`."""

    arm: str
    style: Style
    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def curves_figure(bands: Sequence[Band], xlabel: str, ylabel: str, *,
                  target: float | None = None, log_floor: float | None = None,
                  logy: bool | None = None) -> str:
    """Mean curves with min-max bands; log-y (unless ``logy`` says) when every value is
    positive.

    ``log_floor``: values at or below 0 are raised to it and the y axis is logarithmic anyway
    (for suboptimality, where exact zeros happen).
    """
    fig, ax = _figure(legend=len(bands) <= MAX_LEGEND)
    arrays = [a for b in bands for a in (b.mean, b.lo, b.hi)]
    if logy is None:
        logy = log_floor is not None or _positive(arrays)
    drawn = []
    for b in bands:
        mean, lo, hi = b.mean, b.lo, b.hi
        if log_floor is not None:
            mean, lo, hi = (np.where(v <= log_floor, log_floor, v) for v in (mean, lo, hi))
        drawn += [mean, lo, hi]
        if np.any(hi > lo):
            ax.fill_between(b.x, lo, hi, color=b.style.color, alpha=0.15, linewidth=0)
        ax.plot(b.x, mean, color=b.style.color, linestyle=b.style.linestyle,
                label=mpl_text(b.arm))
    if target is not None and math.isfinite(target) and (not logy or target > 0):
        ax.axhline(target, color="0.3", linestyle=(0, (4, 3)), linewidth=0.8)
        ax.annotate("target", (1.0, target), xycoords=("axes fraction", "data"),
                    fontsize=7, color="0.3", ha="right", va="bottom")
    if logy:
        if target is not None and math.isfinite(target) and target > 0:
            drawn.append(np.asarray([target]))
        _set_log(ax, "y", drawn)
    ax.set_xlabel(mpl_text(xlabel))
    ax.set_ylabel(mpl_text(ylabel))
    _legend(ax, len(bands))
    return svg_of(fig)


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


@dataclass
class Path2D:
    """One arm's trajectory on a 2-D task."""

    arm: str
    style: Style
    xy: np.ndarray
    note: str = ""


def trajectories_figure(paths: Sequence[Path2D], function: Any | None,
                        box: Sequence[float] | None, start: Sequence[float] | None) -> str:
    """Trajectories over log-spaced contours of ``f - f* + eps`` (when ``function`` is given:
    a :class:`~optimlab.lab.tasks.functions2d.Function2D`), start and known minima marked."""
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
    for p in paths:
        if len(p.xy) == 0:
            continue
        ax.plot(p.xy[:, 0], p.xy[:, 1], color=p.style.color, linestyle=p.style.linestyle,
                linewidth=1.1, label=mpl_text(p.arm + p.note), zorder=3)
        ax.plot(p.xy[-1:, 0], p.xy[-1:, 1], marker="o", markersize=3.5, color=p.style.color,
                linestyle="none", zorder=4)
    if start is not None:
        ax.plot([start[0]], [start[1]], marker="o", markersize=7, markerfacecolor="white",
                markeredgecolor="black", linestyle="none", label="start", zorder=6)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if len(paths) <= MAX_LEGEND:
        _legend(ax, 1)
    return svg_of(fig)


@dataclass
class SweepSeries:
    """One line of a sweep figure: y (+inf = diverged / not reached) against x."""

    name: str
    style: Style
    xs: list[float]
    ys: list[float]
    xlabels: list[str]


def sweep_figure(series: Sequence[SweepSeries], xlabel: str, ylabel: str, *,
                 missing: str = "diverged") -> str:
    """Lines of y against log x (ticks at the swept values); +inf y values drawn as ``x``
    markers at the top edge."""
    fig, ax = _figure(legend=len(series) <= MAX_LEGEND, top=0.35)
    ys_all = [np.asarray(s.ys, dtype=float) for s in series]
    logy = _positive(ys_all) and any(
        (v[np.isfinite(v)].max() / v[np.isfinite(v)].min()) > 20
        for v in ys_all if np.isfinite(v).any())
    top = blended_transform_factory(ax.transData, ax.transAxes)
    any_missing = False
    ticks: dict[float, str] = {}
    for s in series:
        x = np.asarray(s.xs, dtype=float)
        y = np.asarray(s.ys, dtype=float)
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], color=s.style.color, linestyle=s.style.linestyle, marker="o",
                markersize=3.5, label=mpl_text(s.name))
        if (~ok).any():
            any_missing = True
            ax.plot(x[~ok], np.full(int((~ok).sum()), 0.97), transform=top, marker="x",
                    markersize=7, markeredgewidth=1.6, color=s.style.color, linestyle="none",
                    clip_on=False)
        ticks.update(zip(s.xs, s.xlabels))
    ax.set_xscale("log")
    xs = sorted(ticks)
    if len(xs) > 12:
        xs = xs[:: math.ceil(len(xs) / 12)]
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: mpl_text(ticks.get(v, f"{v:g}"))))
    ax.xaxis.set_minor_locator(NullLocator())
    if xs:
        ax.set_xlim(xs[0] / 1.4, xs[-1] * 1.4)
    if logy:
        _set_log(ax, "y", ys_all)
    elif not any(np.isfinite(v).any() for v in ys_all):
        ax.set_yticks([])
    ax.set_xlabel(mpl_text(xlabel))
    ax.set_ylabel(mpl_text(ylabel))
    if any_missing:
        ax.annotate(f"× at the top: {missing}", (0.0, 1.03), xycoords="axes fraction",
                    fontsize=7, color="0.3")
    _legend(ax, len(series))
    return svg_of(fig)


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
