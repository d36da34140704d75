"""The report's tuning section: per task, the tuning history and the learning-rate sensitivity
seen by the tuner, and the best configuration of each optimizer.

Its input is :func:`optimlab.lab.tune.tuning_history`'s list of trials (dicts with ``task``,
``optimizer``, ``index``, ``state``, ``status``, ``value``, ``objective``, ``params``,
``hyperparams``, ``schedule``, ``intermediate``); missing fields are tolerated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.transforms import blended_transform_factory

from .page import ArmCell, Markup, PageBuilder, esc, swatch
from .plots import MAX_LEGEND, Style, _figure, _legend, _set_log, mpl_text, styles_for, svg_of
from .records import num
from .tasks import config_text
from .text import fmt

__all__ = ["tuning_section"]


def _finite(value: Any) -> float:
    v = num(value)
    return v if math.isfinite(v) else math.nan


def _last_intermediate(trial: Mapping[str, Any]) -> float:
    inter = trial.get("intermediate") if isinstance(trial.get("intermediate"), Mapping) else {}
    values = [v for v in (_finite(x) for x in (inter.get("value") or [])) if math.isfinite(v)]
    return values[-1] if values else math.nan


def _kind(trial: Mapping[str, Any]) -> str:
    """``ok`` (a finite objective), ``pruned``, or ``bad`` (diverged or failed)."""
    state = str(trial.get("state", ""))
    if state == "pruned":
        return "pruned"
    if state == "complete" and math.isfinite(_finite(trial.get("value"))):
        return "ok"
    return "bad"


def _counted(trials: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Trials of the budget (interrupted and running ones left out), by index."""
    out = [t for t in trials if t.get("index") is not None
           and str(t.get("state")) in ("complete", "pruned", "fail")]
    return sorted(out, key=lambda t: num(t.get("index")))


def _lr(trial: Mapping[str, Any]) -> float:
    hyper = trial.get("hyperparams") if isinstance(trial.get("hyperparams"), Mapping) else {}
    params = trial.get("params") if isinstance(trial.get("params"), Mapping) else {}
    v = _finite(hyper.get("lr", params.get("lr")))
    return v if v > 0 else math.nan


def _y_axis(ax: Any, ys: list[np.ndarray]) -> float | None:
    """Log-y when every value is positive and they span more than a factor 20 (values at or
    below 0 raised to a floor then); returns the floor, or ``None`` for a linear axis."""
    finite = np.concatenate([y[np.isfinite(y)] for y in ys] or [np.zeros(0)])
    if finite.size < 2:
        return None
    positive = finite[finite > 0]
    if positive.size == 0 or finite.min() < 0:
        return None
    if positive.max() / positive.min() <= 20 and positive.size == finite.size:
        return None
    floor = float(positive.min()) / 2 if positive.size < finite.size else float(positive.min())
    _set_log(ax, "y", [np.maximum(finite, floor)])
    return floor


def _marks(ax: Any, xs: list[float], style: Style, kind: str, ys: list[float] | None = None,
           top: Any = None) -> None:
    if not xs:
        return
    if kind == "bad":
        ax.plot(xs, [0.97] * len(xs), transform=top, marker="x", markersize=6,
                markeredgewidth=1.4, color=style.color, linestyle="none", clip_on=False)
    elif kind == "pruned":
        ax.plot(xs, ys, marker="o", markersize=4.5, markerfacecolor="none",
                markeredgewidth=1.0, color=style.color, linestyle="none")
    else:
        ax.plot(xs, ys, marker="o", markersize=3.2, color=style.color, alpha=0.55,
                linestyle="none")


def _headroom(ax: Any) -> None:
    """Room above the data for the × marks drawn at 97% of the axes height."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log" and lo > 0:
        ax.set_ylim(lo, hi * (hi / lo) ** 0.12)
    else:
        ax.set_ylim(lo, hi + 0.12 * (hi - lo))


def _floor(values: list[float], floor: float | None) -> list[float]:
    return [max(v, floor) if floor is not None and math.isfinite(v) else v for v in values]


def history_figure(by_opt: Mapping[str, list[Mapping[str, Any]]], styles: Mapping[str, Style],
                   objective: str) -> str:
    """Best objective so far against the trial number, one line per optimizer; every trial
    as a dot (open: pruned, at its last reported value; × at the top: diverged or failed)."""
    fig, ax = _figure(legend=len(by_opt) <= MAX_LEGEND, top=0.35)
    top = blended_transform_factory(ax.transData, ax.transAxes)
    all_y = [np.asarray([_finite(t.get("value")) if _kind(t) == "ok" else _last_intermediate(t)
                         for t in trials], dtype=float) for trials in by_opt.values()]
    floor = _y_axis(ax, all_y)
    any_bad = False
    for opt, trials in by_opt.items():
        style = styles[opt]
        x = [num(t.get("index")) + 1 for t in trials]
        best, running = [], math.inf
        for t in trials:
            v = _finite(t.get("value")) if _kind(t) == "ok" else math.nan
            if math.isfinite(v):
                running = min(running, v)
            best.append(running if math.isfinite(running) else math.nan)
        ax.step(x, _floor(best, floor), where="post", color=style.color,
                linestyle=style.linestyle, label=mpl_text(opt))
        for kind in ("ok", "pruned", "bad"):
            sel = [t for t in trials if _kind(t) == kind]
            ys = [(_finite(t.get("value")) if kind == "ok" else _last_intermediate(t))
                  for t in sel]
            if kind == "pruned":  # a pruned trial that reported nothing counts as bad
                _marks(ax, [num(t.get("index")) + 1 for t, y in zip(sel, ys)
                            if not math.isfinite(y)], style, "bad", top=top)
                sel = [t for t, y in zip(sel, ys) if math.isfinite(y)]
                ys = [y for y in ys if math.isfinite(y)]
            any_bad |= kind == "bad" and bool(sel)
            _marks(ax, [num(t.get("index")) + 1 for t in sel], style, kind,
                   _floor(ys, floor), top)
    ax.set_xlabel("trial")
    ax.set_ylabel(mpl_text(f"{objective} (best so far)"))
    n = max((len(t) for t in by_opt.values()), default=1)
    ax.set_xlim(0.5, n + 0.5)
    any_pruned = any(_kind(t) == "pruned" for ts in by_opt.values() for t in ts)
    notes = (["× at the top: diverged or failed"] if any_bad else []) + (
        ["○ pruned (last reported value)"] if any_pruned else [])
    if any_bad:
        _headroom(ax)
    if notes:
        ax.annotate("; ".join(notes), (0.0, 1.03), xycoords="axes fraction", fontsize=7,
                    color="0.3")
    _legend(ax, len(by_opt))
    return svg_of(fig)


def lr_figure(by_opt: Mapping[str, list[Mapping[str, Any]]], styles: Mapping[str, Style],
              objective: str) -> str:
    """The objective of every trial against its learning rate (log x), one colour per
    optimizer; the best trial ringed, pruned ones open, diverged or failed ones × at the
    top."""
    fig, ax = _figure(legend=len(by_opt) <= MAX_LEGEND, top=0.35)
    top = blended_transform_factory(ax.transData, ax.transAxes)
    all_y = [np.asarray([_finite(t.get("value")) if _kind(t) == "ok" else _last_intermediate(t)
                         for t in trials if math.isfinite(_lr(t))], dtype=float)
             for trials in by_opt.values()]
    floor = _y_axis(ax, all_y)
    any_bad = False
    lrs = []
    for opt, trials in by_opt.items():
        style = styles[opt]
        with_lr = [t for t in trials if math.isfinite(_lr(t))]
        lrs += [_lr(t) for t in with_lr]
        ok = sorted((t for t in with_lr if _kind(t) == "ok"), key=_lr)
        ys = [_finite(t.get("value")) for t in ok]
        ax.plot([_lr(t) for t in ok], _floor(ys, floor), marker="o", markersize=3.5,
                color=style.color, linestyle="none", alpha=0.8, label=mpl_text(opt))
        if ok:
            best = min(ok, key=lambda t: _finite(t.get("value")))
            ax.plot([_lr(best)], _floor([_finite(best.get("value"))], floor), marker="o",
                    markersize=9, markerfacecolor="none", markeredgewidth=1.4,
                    color=style.color, linestyle="none")
        pruned = [(t, _last_intermediate(t)) for t in with_lr if _kind(t) == "pruned"]
        _marks(ax, [_lr(t) for t, y in pruned if math.isfinite(y)], style, "pruned",
               _floor([y for _, y in pruned if math.isfinite(y)], floor), top)
        bad = [t for t in with_lr if _kind(t) == "bad"] + [
            t for t, y in pruned if not math.isfinite(y)]
        any_bad |= bool(bad)
        _marks(ax, [_lr(t) for t in bad], style, "bad", top=top)
    if lrs:
        _set_log(ax, "x", [np.asarray(lrs, dtype=float)])
        ax.set_xlim(min(lrs) / 1.5, max(lrs) * 1.5)
    ax.set_xlabel("learning rate")
    ax.set_ylabel(mpl_text(f"final {objective}"))
    note = "ringed: best; ○ pruned (last reported value)"
    if any_bad:
        _headroom(ax)
        note = "× at the top: diverged or failed; " + note
    ax.annotate(note, (0.0, 1.03), xycoords="axes fraction", fontsize=7, color="0.3")
    _legend(ax, len(by_opt))
    return svg_of(fig)


def _short(value: Any) -> Any:
    """Floats to 4 significant digits, for display (results.json keeps every digit)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [_short(v) for v in value]
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    return value


def _status_cell(trials: Sequence[Mapping[str, Any]]) -> Markup:
    counts = {"complete": 0, "pruned": 0, "diverged": 0, "failed": 0}
    for t in trials:
        if str(t.get("state")) == "pruned":
            counts["pruned"] += 1
        elif str(t.get("state")) == "fail":
            counts["failed"] += 1
        elif _kind(t) == "bad":
            counts["diverged"] += 1
        else:
            counts["complete"] += 1
    parts = [f"{counts['complete']} ok"]
    if counts["pruned"]:
        parts.append(f"{counts['pruned']} pruned")
    for k in ("diverged", "failed"):
        if counts[k]:
            parts.append(f'<span class="bad">{counts[k]} {k}</span>')
    return Markup(f"{len(trials)}: " + ", ".join(parts))


def tuning_section(page: PageBuilder, trials: Sequence[Mapping[str, Any]],
                   styles: Mapping[str, Style] | None = None) -> None:
    """The "Tuning" section (figures ``tune-history`` and ``tune-lr`` per task, and a table of
    the best configurations). ``styles``: the report's arm styles, reused when every tuned
    optimizer has one (its re-run arms are labelled by the optimizer's name)."""
    rows = [t for t in trials if isinstance(t, Mapping)]
    by_task: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for t in rows:
        by_task.setdefault(str(t.get("task", "?")), {}).setdefault(
            str(t.get("optimizer", "?")), []).append(t)
    if not any(_counted(ts) for per in by_task.values() for ts in per.values()):
        return  # nothing finished: no section
    page.heading(2, "tuning", "Tuning")
    opts = list(dict.fromkeys(o for per in by_task.values() for o in per))
    # the re-run arms are labelled "<optimizer> best" (or the optimizer's name): reuse their
    # colours so that the tuning plots match the sections above
    mapped = {o: (styles or {}).get(o + " best") or (styles or {}).get(o) for o in opts}
    styles = ({o: st for o, st in mapped.items() if st is not None}
              if all(mapped.values()) and len(set(mapped.values())) == len(opts)
              else styles_for(opts))
    interrupted = sum(1 for t in rows if t.get("status") == "interrupted")
    page.para(
        "Each optimizer was tuned by Optuna (TPE sampler, median pruner) with the same number "
        "of trials of the same length; each trial is one run from the same seed. The objective "
        "is named on the y axis (minimized); a diverged run "
        "counts as the worst value, a pruned one was stopped early because it was worse than "
        "the median of earlier trials at the same step. The best configurations were re-run "
        "with held-out seeds: the sections above show those runs (with 95% intervals over "
        "seeds)."
        + (f" {interrupted} trial(s) interrupted by a killed process were re-run and are not "
           "shown." if interrupted else ""))
    for i, (task, per_opt) in enumerate(by_task.items()):
        counted = {o: _counted(ts) for o, ts in per_opt.items()}
        counted = {o: ts for o, ts in counted.items() if ts}
        if not counted:  # no finished trial on this task yet
            continue
        page.heading(3, f"tune-task-{i + 1}", task)
        objective = next((str(t.get("objective")) for ts in counted.values() for t in ts
                          if t.get("objective")), "objective")
        figs = [page.figure("tune-history", history_figure(counted, styles, objective), (
            f"Tuning history on {task}: the best final {objective} so far against the trial "
            "number, one line per optimizer; dots: each trial (open: pruned, at its last "
            "reported value; × at the top: diverged or failed)."), task=task)]
        if any(math.isfinite(_lr(t)) for ts in counted.values() for t in ts):
            figs.append(page.figure("tune-lr", lr_figure(counted, styles, objective), (
                f"Learning-rate sensitivity on {task} from the tuning trials: final "
                f"{objective} against the learning rate of each trial (other tuned "
                "hyperparameters vary too); ringed: each optimizer's best."), task=task))
        page.figures(figs)
        table, classes = [], []
        for opt, ts in counted.items():
            ok = [t for t in ts if _kind(t) == "ok"]
            best = min(ok, key=lambda t: (_finite(t.get("value")), num(t.get("index")))
                       ) if ok else None
            hyper = dict(best.get("hyperparams") or {}) if best else {}
            schedules = {t.get("schedule") for t in ts}
            if best is not None and len(schedules) > 1:
                hyper["schedule"] = best.get("schedule")
            table.append([
                ArmCell(swatch(styles.get(opt)) + esc(opt)),
                fmt(best.get("value")) if best else "-",
                str(int(num(best.get("index"))) + 1) if best else "-",
                fmt(_lr(best)) if best else "-",
                _status_cell(ts),
                config_text(_short(dict(sorted(hyper.items())))) if best else "-"])
            classes.append("" if best else "diverged")
        page.table(["optimizer", f"best {objective}", "best trial", "lr", "trials",
                    "best hyperparameters"], table, numeric=[1, 2, 3], row_classes=classes)
