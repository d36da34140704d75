"""Report sections: the overview (ranking, performance profiles) and one section per task
(curves, 2-D trajectories, table of final metrics)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .curves import mean_band, run_series
from .page import ArmCell, Markup, PageBuilder, esc, swatch
from .plots import (
    MAX_LEGEND,
    Band,
    Path2D,
    Style,
    curves_figure,
    profile_figure,
    trajectories_figure,
)
from .records import config, info_of, json_safe, status_of
from .stats import (
    ArmStats,
    RankRow,
    by_task,
    performance_profile,
    performance_ratios,
    profile_taus,
)
from .text import fmt, fmt_mean_std, fmt_median, task_metrics

__all__ = ["Context", "overview_section", "task_section"]


@dataclass
class Context:
    """What every section needs: the records, their aggregates and the arms' styles."""

    records: list[dict[str, Any]]
    stats: dict[tuple[str, str], ArmStats]
    ranks: list[RankRow]
    arms: list[str]
    styles: dict[str, Style]
    anchors: dict[str, str]

    @property
    def tasks(self) -> dict[str, list[ArmStats]]:
        """Arms per task."""
        return by_task(self.stats)


def arm_cell(ctx: Context, arm: str) -> ArmCell:
    """An arm's name preceded by its line swatch."""
    return ArmCell(swatch(ctx.styles.get(arm)) + esc(arm))


def status_cell(s: ArmStats) -> Markup:
    """Status counts, diverged and failed runs highlighted."""
    parts = [f"{s.n_ok} ok"]
    if s.n_diverged:
        parts.append(f'<span class="bad">⚠ {s.n_diverged} diverged</span>')
    if s.n_failed:
        parts.append(f'<span class="bad">✖ {s.n_failed} failed</span>')
    return Markup(", ".join(parts))


def key_note(n: int) -> str:
    """Caption suffix for figures with too many lines for a legend."""
    return (" No legend (too many arms): colours and line styles as in the tables' line "
            "samples." if n > MAX_LEGEND else "")


def row_class(s: ArmStats) -> str:
    """``diverged``/``failed`` when no run of the arm is ok."""
    if s.n_ok:
        return ""
    return "diverged" if s.n_diverged else "failed"


# ----------------------------------------------------------------------------- overview

PROFILE_TAUS = (1.0, 2.0, 4.0)


def overview_section(page: PageBuilder, ctx: Context) -> None:
    """Ranking table across tasks and the two performance profiles."""
    tasks = ctx.tasks
    page.heading(2, "overview", "Overview: ranking across tasks")
    page.para(
        f"{len(ctx.records)} runs, {len(tasks)} tasks, {len(ctx.arms)} arms. Rank within a task: "
        "by median time to target over seeds (1 = best); arms that did not reach the target "
        "come last, ordered by their final target metric (diverged last). Mean rank: over the "
        "tasks the arm ran on. ρ(τ): fraction of all tasks on which the arm is within a "
        "factor τ of the best arm's time to target (ρ(1) = share of tasks won).")
    times = {t: {s.arm: s.time_to_target for s in arms} for t, arms in tasks.items()}
    steps = {t: {s.arm: s.steps_to_target for s in arms} for t, arms in tasks.items()}
    rho = performance_profile(times, PROFILE_TAUS, ctx.arms)
    show_tasks = list(tasks)[:24]
    header = ["#", "arm", "mean rank (time)", "mean rank (steps)", "solved / tasks run",
              *(f"ρ_time({t:g})" for t in PROFILE_TAUS), *(f"rank: {t}" for t in show_tasks)]
    rows = []
    for i, r in enumerate(ctx.ranks):
        rows.append([i + 1, arm_cell(ctx, r.arm), fmt(r.mean_rank, 3),
                     fmt(r.mean_rank_steps, 3), f"{r.n_solved} / {r.n_tasks}",
                     *(fmt(v, 3) for v in rho[r.arm]),
                     *(fmt(r.ranks.get(t, math.nan), 3) for t in show_tasks)])
    numeric = [0, 2, 3, 4, *range(5, len(header))]
    page.table(header, rows, numeric=numeric, cls="ranking")
    figs = []
    for kind, data, what in (("profile-time", times, "training time"),
                             ("profile-steps", steps, "steps")):
        ratios = performance_ratios(data, ctx.arms)
        taus = profile_taus(ratios)
        prof = performance_profile(data, taus, ctx.arms)
        none = (" No arm reached the target on any task, so every profile is 0."
                if not any(math.isfinite(r) for row in ratios.values() for r in row.values())
                else "")
        svg = profile_figure(taus, prof, ctx.styles, f"τ (ratio to the best {what} to target)")
        figs.append(page.figure(kind, svg, (
            f"Performance profile by {what} to target (AlgoPerf style): ρ(τ) = fraction of the "
            f"{len(tasks)} tasks on which the arm's median {what} to target is within a factor τ "
            "of the best arm's on that task; not reached, diverged, failed or not run = never. "
            "Higher and further left is better." + none + key_note(len(ctx.arms)))))
    page.figures(figs)


# ----------------------------------------------------------------------------- task


def _ok(s: ArmStats) -> list[dict[str, Any]]:
    return [r for r in s.records if status_of(r) == "ok"]


def _curve_metric(arms: Sequence[ArmStats]) -> str:
    metric = arms[0].target_metric
    for s in arms:
        for r in _ok(s):
            if run_series(r, metric) is not None:
                return metric
    return "train_loss"


def _bands(ctx: Context, arms: Sequence[ArmStats], metric: str, axis: int) -> list[Band]:
    bands = []
    for s in arms:
        series = [run_series(r, metric) for r in _ok(s)]
        series = [x for x in series if x is not None]
        if not series:
            continue
        res = mean_band([x[axis] for x in series], [x[2] for x in series])
        if res is not None:
            bands.append(Band(s.arm, ctx.styles[s.arm], *res))
    return bands


def _log_floor(bands: Sequence[Band], metric: str) -> float | None:
    if metric != "suboptimality" or not bands:
        return None
    vals = np.concatenate([np.concatenate([b.mean, b.lo, b.hi]) for b in bands])
    vals = vals[np.isfinite(vals)]
    pos = vals[vals > 0]
    if pos.size == 0 or vals.min() > 0:
        return None
    return float(pos.min()) / 2


def _eval_metrics(arms: Sequence[ArmStats]) -> list[str]:
    names: list[str] = []
    for s in arms:
        for r in _ok(s):
            metrics = ((r.get("evals") or {}).get("metrics") or {})
            if isinstance(metrics, Mapping):
                names += [k for k in metrics if k not in names
                          and str(k).startswith(("val_", "test_"))]
    return sorted(names, key=lambda n: ("accuracy" not in n, "loss" not in n, n))[:3]


def _trajectory(rec: Mapping[str, Any]) -> np.ndarray | None:
    traj = rec.get("trajectory")
    if not isinstance(traj, list) or not traj:
        return None
    try:
        xy = np.asarray([[float("nan") if v is None else float(v) for v in p[:2]]
                         for p in traj], dtype=float)
    except (TypeError, ValueError, IndexError):
        return None
    if xy.ndim != 2 or xy.shape[1] != 2:
        return None
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        xy = xy[: int(np.argmax(bad))]
    if len(xy) > 2000:
        idx = np.unique(np.linspace(0, len(xy) - 1, 2000).round().astype(int))
        xy = xy[idx]
    return xy


def _function_of(rec: Mapping[str, Any]) -> tuple[Any, Any]:
    """The task's Function2D and start point, or ``(None, None)``."""
    cfg = config(rec)
    try:
        from ..tasks import make_task

        task = make_task(str(cfg.get("task")), **(cfg.get("task_options") or {}))
    except Exception:  # unknown or user task, bad options: draw without contours
        return None, None
    function = getattr(task, "function", None)
    if function is None or not hasattr(function, "f_numpy"):
        return None, None
    return function, getattr(task, "start", function.start)


def _box(function: Any, paths: Sequence[Path2D], start: Any) -> tuple[float, ...] | None:
    """The function's box, widened (by at most its size) to show the paths of runs that did
    not diverge; diverged paths are clipped."""
    first = [np.asarray([start], dtype=float)] if start is not None else []
    if function is None:  # no reference box: show everything
        pts = [p.xy for p in paths if len(p.xy)] + first
        if not pts:
            return None
        allp = np.concatenate(pts)
        lo, hi = allp.min(axis=0), allp.max(axis=0)
        pad = np.maximum((hi - lo) * 0.08, 1e-3)
        return (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    pts = [p.xy for p in paths if len(p.xy) and not p.note] + first
    xmin, xmax, ymin, ymax = (float(v) for v in function.box)
    if pts:
        allp = np.concatenate(pts)
        w, h = xmax - xmin, ymax - ymin
        pad_x, pad_y = 0.05 * w, 0.05 * h
        xmin = max(min(xmin, allp[:, 0].min() - pad_x), xmin - w)
        xmax = min(max(xmax, allp[:, 0].max() + pad_x), xmax + w)
        ymin = max(min(ymin, allp[:, 1].min() - pad_y), ymin - h)
        ymax = min(max(ymax, allp[:, 1].max() + pad_y), ymax + h)
    return (xmin, xmax, ymin, ymax)


def _trajectory_figure(page: PageBuilder, ctx: Context, task: str,
                       arms: Sequence[ArmStats]) -> str | None:
    paths = []
    for s in arms:
        with_traj = [r for r in s.records if _trajectory(r) is not None]
        if not with_traj:
            continue
        seeds = [config(r).get("seed") for r in with_traj]
        try:
            first = with_traj[int(np.argmin([float(x) for x in seeds]))]
        except (TypeError, ValueError):
            first = with_traj[0]
        note = "" if status_of(first) == "ok" else f" ({status_of(first)})"
        paths.append(Path2D(s.arm, ctx.styles[s.arm], _trajectory(first), note))
    if not paths:
        return None
    kind = next((info_of(r).get("kind") for s in arms for r in s.records if info_of(r)), None)
    function, start = _function_of(arms[0].records[0]) if kind == "2d" else (None, None)
    if start is None:
        start = paths[0].xy[0]
    svg = trajectories_figure(paths, function, _box(function, paths, start), start)
    contours = ("over log-spaced contours of f − f* (+ a small ε)" if function is not None
                else "(no contours: the function could not be rebuilt)")
    return page.figure("trajectories", svg, (
        f"Trajectories of the first seed of each arm {contours}; white circle: start, "
        "star: known minimum, dot: last point. A diverged path stops at its last finite "
        "point." + key_note(len(paths))), task=task)


def task_section(page: PageBuilder, ctx: Context, task: str, arms: list[ArmStats]) -> None:
    """One task: description, curves, trajectories (2-D), table of final metrics."""
    page.heading(2, ctx.anchors[task], f"Task: {task}")
    rec0 = arms[0].records[0]
    info = next((info_of(r) for s in arms for r in s.records if info_of(r)), {})
    metric, target = arms[0].target_metric, arms[0].target
    facts = [f"<strong>{esc(info.get('description') or task)}</strong>",
             f"kind: {esc(info.get('kind', '?'))}",
             f"target: {esc(metric)} ≤ {esc(fmt(target))}"]
    if info.get("n_train") is not None:
        facts.append(f"training examples: {esc(info.get('n_train'))}")
    opts = config(rec0).get("task_options")
    if opts:
        facts.append("options: <code>" + esc(json.dumps(json_safe(opts), sort_keys=True))
                     + "</code>")
    page.para(Markup(" · ".join(facts)), cls="lead")

    cm = _curve_metric(arms)
    what = ("mini-batch training loss" if cm == "train_loss" else cm)
    source = "logged training curve" if cm == "train_loss" else "evaluations"
    not_drawn = [s.arm for s in arms if not _ok(s)]
    missing = (f" Not drawn (no ok run): {', '.join(not_drawn)}." if not_drawn else "")
    figs = []
    for kind, axis, xlabel in (("loss-steps", 0, "step"), ("loss-time", 1,
                                                          "training time (s)")):
        bands = _bands(ctx, arms, cm, axis)
        if not bands:
            continue
        floor = _log_floor(bands, cm)
        clip = f" Values ≤ 0 drawn at {fmt(floor, 3)}." if floor is not None else ""
        svg = curves_figure(bands, xlabel, cm, target=target if cm == metric else None,
                            log_floor=floor)
        figs.append(page.figure(kind, svg, (
            f"{what} against {xlabel} ({source}): mean over the ok seeds of each arm, band = "
            f"min–max over seeds; diverged and failed runs are left out.{missing}{clip}"
            + key_note(len(bands))),
            task=task))
    for name in _eval_metrics(arms):
        bands = _bands(ctx, arms, name, 0)
        if bands:
            svg = curves_figure(bands, "step", name, logy=False if "accuracy" in name else None)
            figs.append(page.figure("metric", svg, (
                f"{name} at the evaluations against step: mean over ok seeds, min–max band."
                + key_note(len(bands))),
                task=task))
    traj = _trajectory_figure(page, ctx, task, arms)
    if traj:
        figs.append(traj)
    page.figures(figs)

    names = task_metrics(arms)
    extras: list[str] = []
    for s in arms:
        extras += [k for k in s.extra if k not in extras]
    header = ["arm", "runs", *(f"final {n}" for n in names), "steps to target",
              "time to target", "generalization gap", *extras, "rank"]
    rows, classes = [], []
    order = sorted(arms, key=lambda s: (s.rank, s.rank_steps, arms.index(s)))
    for s in order:
        rows.append([arm_cell(ctx, s.arm), status_cell(s),
                     *(fmt_mean_std(s.final[n]) if n in s.final else "-" for n in names),
                     fmt_median(s.steps_to_target, s.n_reached, s.n_runs),
                     fmt_median(s.time_to_target, s.n_reached, s.n_runs, "s"),
                     fmt_mean_std(s.generalization_gap),
                     *(fmt_mean_std(s.extra[k]) if k in s.extra else "-" for k in extras),
                     fmt(s.rank, 3)])
        classes.append(row_class(s))
    page.table(header, rows, numeric=list(range(2, len(header))), row_classes=classes,
               cls="task-table")
    page.para("Final metrics: mean ± std over ok runs. Steps/time to target: median over all "
              "seeds with a miss (or a diverged/failed run) counted as infinity — “-” when at "
              "least half missed; (k/n): seeds that reached the target.")
    problems = [r for s in arms for r in s.records if status_of(r) != "ok"]
    if problems:
        items = []
        for r in problems:
            err = r.get("error")
            items.append(f'<li><span class="bad">{esc(status_of(r))}</span>: '
                         f"{esc(r.get('label'))} seed {esc(config(r).get('seed'))}"
                         + (f" — <code>{esc(err)}</code>" if err else "") + "</li>")
        page.add('<details><summary>Diverged and failed runs '
                 f"({len(problems)})</summary><ul>{''.join(items)}</ul></details>")
