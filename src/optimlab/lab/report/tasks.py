"""Report sections: the overview (ranking, performance profiles) and one section per task
(curves, work to target with intervals, 2-D trajectories, recorded series, the arms' table)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..schema import RunRecord
from .curves import mean_band, run_series, series_of, trajectory_steps, work_series
from .page import ArmCell, Markup, PageBuilder, esc, soft, swatch, tag
from .plots import (
    MAX_LEGEND,
    Band,
    Interval,
    Panel,
    Path2D,
    Style,
    cost_figure,
    curves_figure,
    interval_figure,
    many,
    profile_figure,
    scatter_figure,
    series_figure,
    trajectories_figure,
)
from .stats import (
    ArmStats,
    RankRow,
    by_task,
    performance_profile,
    performance_ratios,
    profile_taus,
    ranked,
)
from .text import (
    NONNEG_METRICS,
    fmt,
    fmt_interval,
    fmt_mean_std,
    fmt_to_target,
    fmt_vs_best,
    task_metrics,
)

__all__ = ["Context", "arm_cell", "config_text", "curve_bands", "curve_metric", "key_note",
           "overview_section", "status_cell", "task_section", "work_is_steps"]


@dataclass
class Context:
    """What every section needs.

    Attributes:
        records: every run.
        stats: per (task, arm) statistics of the study's arms (held-out re-runs excluded),
            ranked among themselves.
        heldout: the same for the held-out re-runs of each optimizer's best configuration
            (arms ``"<optimizer> best"``), ranked among themselves; empty when there are none.
        ranks: the ranking across tasks of ``stats``.
        arms: every arm (study arms, then held-out arms), in order of appearance.
        styles: arm -> how it is drawn (the same colour in every plot and table swatch).
        anchors: task -> the id of its section.
        rank_by: ``"work"`` or ``"time"``.
        study: the study description (possibly empty).
    """

    records: list[RunRecord]
    stats: dict[tuple[str, str], ArmStats]
    heldout: dict[tuple[str, str], ArmStats]
    ranks: list[RankRow]
    arms: list[str]
    styles: dict[str, Style]
    anchors: dict[str, str]
    rank_by: str
    study: Mapping[str, Any]

    @property
    def tasks(self) -> dict[str, list[ArmStats]]:
        """Study arms per task."""
        return by_task(self.stats)


def arm_cell(ctx: Context, s: ArmStats | str, *, tags: bool = False) -> ArmCell:
    """An arm's name preceded by its line swatch; with ``tags``, ``best``/``tied`` marks."""
    arm = s if isinstance(s, str) else s.arm
    text = swatch(ctx.styles.get(arm)) + esc(arm)
    if tags and not isinstance(s, str):
        if s.is_best:
            text += " " + tag("best", "best", "the best arm on this task")
        elif s.tied_with_best:
            c = s.comparison_to_best
            text += " " + tag("tied", "tied", c.reason if c is not None else "")
    return ArmCell(text)


def status_cell(s: ArmStats) -> Markup:
    """Status counts, diverged and failed runs highlighted, deterministic arms marked."""
    parts = [f"{s.n_ok} ok"]
    if s.n_diverged:
        parts.append(f'<span class="bad">⚠ {s.n_diverged} diverged</span>')
    if s.n_failed:
        parts.append(f'<span class="bad">✖ {s.n_failed} failed</span>')
    text = ", ".join(parts)
    if s.deterministic:
        text += " " + tag("det", "deterministic", "the seed changes nothing: one seed")
    return Markup(text)


def key_note(n: int) -> str:
    """Caption suffix for figures drawn as small multiples."""
    return (" Small multiples (too many arms for one legend): one panel per optimizer or group "
            "of arms, the others in grey behind." if many(n) else "")


def row_class(s: ArmStats) -> str:
    """``diverged``/``failed`` when no run of the arm is ok."""
    if s.n_ok:
        return ""
    return "diverged" if s.n_diverged else "failed"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_text(v) for v in value) + ")"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def config_text(values: Mapping[str, Any]) -> str:
    """Settings as ``k=v`` text (never JSON): ``lr=0.01 momentum=0.9 schedule=cosine``."""
    return " ".join(f"{k}={_text(v)}" for k, v in values.items())


# ----------------------------------------------------------------------------- overview

PROFILE_TAUS = (1.0, 2.0, 4.0)


def _rank_text(ctx: Context, row: RankRow) -> Markup:
    """Per-task ranks in one wrapping cell: ``rosenbrock 1 · quadratic 2 (tied)``."""
    parts = []
    for task, rank in row.ranks.items():
        s = ctx.stats.get((task, row.arm))
        mark = ""
        if s is not None and s.is_best:
            mark = " " + tag("best", "best")
        elif s is not None and s.tied_with_best:
            mark = " " + tag("tied", "tied")
        parts.append(f"<span>{esc(task)}&nbsp;{esc(fmt(rank, 3))}{mark}</span>")
    return Markup(" · ".join(parts))


def overview_section(page: PageBuilder, ctx: Context) -> None:
    """Ranking table across tasks and the performance profiles (by work and by time)."""
    tasks = ctx.tasks
    what = "work" if ctx.rank_by == "work" else "time"
    page.heading(2, "overview", "Overview: ranking across tasks")
    page.para(
        f"{len(ctx.records)} runs, {len(tasks)} tasks, {len(ctx.ranks)} arms. "
        f"Mean rank: over the tasks the arm ran on, by {what} to target (1 = best; see the "
        "definition at the top). Best or tied: tasks on which the arm is the best or cannot be "
        "told from it. Settled: tasks on which it settled at the target on more than half its "
        "seeds. ρ(τ): fraction of all tasks on which its work to target is within a factor τ "
        "of the best arm's.")
    work = {t: {s.arm: s.work_to_target.center for s in arms} for t, arms in tasks.items()}
    times = {t: {s.arm: s.time_to_target.center for s in arms} for t, arms in tasks.items()}
    main_arms = [r.arm for r in ctx.ranks]
    rho = performance_profile(work, PROFILE_TAUS, main_arms)
    header = ["#", "arm", f"mean rank ({what})", "best or tied", "settled",
              *(f"ρ({t:g})" for t in PROFILE_TAUS), "rank per task"]
    rows = []
    for i, r in enumerate(ctx.ranks):
        rows.append([i + 1, arm_cell(ctx, r.arm), fmt(r.mean_rank, 3),
                     f"{r.n_tied_first} / {r.n_tasks}", f"{r.n_solved} / {r.n_tasks}",
                     *(fmt(v, 3) for v in rho[r.arm]), _rank_text(ctx, r)])
    page.table(header, rows, numeric=[0, 2, 3, 4, 5, 6, 7], cls="ranking")
    figs = []
    for kind, data, label, note in (
            ("profile-work", work, "work", "gradient evaluations (work) to the settled target"),
            ("profile-time", times, "training time",
             "training seconds to the settled target, warm-up excluded" + (
                 "" if ctx.rank_by == "time" else
                 " (shown for information: the ranking is by work)"))):
        ratios = performance_ratios(data, main_arms)
        taus = profile_taus(ratios)
        prof = performance_profile(data, taus, main_arms)
        none = (" No arm settled at the target on any task, so every profile is 0."
                if not any(math.isfinite(r) for row in ratios.values() for r in row.values())
                else "")
        svg = profile_figure(taus, prof, ctx.styles, f"τ (ratio to the best {label} to target)")
        figs.append(page.figure(kind, svg, (
            f"Performance profile by {note} (AlgoPerf style): ρ(τ) = fraction of the "
            f"{len(tasks)} tasks on which the arm is within a factor τ of the best arm on that "
            "task; not settled, diverged, failed or not run = never. Higher and further left "
            "is better." + none + ("" if len(main_arms) <= MAX_LEGEND else
                                   " No legend (too many arms): colours as in the tables."))))
    page.figures(figs)


# ----------------------------------------------------------------------------- task


def _ok(s: ArmStats) -> list[RunRecord]:
    return [r for r in s.records if r.ok]


def curve_metric(arms: Sequence[ArmStats]) -> str:
    """The metric the arms' curves show: the target metric when their runs evaluated it,
    else the mini-batch training loss."""
    metric = arms[0].target_metric
    for s in arms:
        for r in _ok(s):
            if run_series(r, metric) is not None:
                return metric
    return "train_loss"


def curve_bands(ctx: Context, arms: Sequence[ArmStats], metric: str, axis: int, *,
                mark_settled: bool = False) -> list[Band]:
    """Each arm's mean curve of ``metric`` with its min-max band over the ok seeds, against
    steps (``axis=0``), training time (``axis=1``) or work in gradient evaluations
    (``axis=2``, from the evaluations only); ``mark_settled``: a tick at the arm's settled
    step."""
    bands = []
    for s in arms:
        if axis == 2:
            pairs = [x for x in (work_series(r, metric) for r in _ok(s)) if x is not None]
        else:
            pairs = [(x[axis], x[2]) for x in (run_series(r, metric) for r in _ok(s))
                     if x is not None]
        if not pairs:
            continue
        res = mean_band([x for x, _ in pairs], [y for _, y in pairs])
        if res is None:
            continue
        marks = []
        if mark_settled and axis == 0 and math.isfinite(s.steps_to_target.center):
            marks = [s.steps_to_target.center]
        bands.append(Band(s.arm, ctx.styles[s.arm], *res, group=s.optimizer, marks=marks))
    return bands


def _eval_metrics(arms: Sequence[ArmStats]) -> list[str]:
    names: list[str] = []
    for s in arms:
        for r in _ok(s):
            names += [k for k in r.evals.get("metrics", {}) if k not in names
                      and str(k).startswith(("val_", "test_"))]
    return sorted(names, key=lambda n: ("accuracy" not in n, "loss" not in n, n))[:3]


def _trajectory(rec: RunRecord) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The finite prefix of a run's 2-D path (at most 2000 points) and each point's step."""
    if not rec.trajectory:
        return None
    try:
        xy = np.asarray([[math.nan if v is None else float(v) for v in p[:2]]
                         for p in rec.trajectory], dtype=float)
    except (TypeError, ValueError):
        return None
    if xy.ndim != 2 or xy.shape[1] != 2:
        return None
    steps = trajectory_steps(rec)
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        cut = int(np.argmax(bad))
        xy = xy[:cut]
        steps = steps[:cut] if steps is not None else None
    if len(xy) > 2000:
        idx = np.unique(np.linspace(0, len(xy) - 1, 2000).round().astype(int))
        marks = np.isin(steps, (1, 10, 100, 1000, 10000)) if steps is not None else None
        if marks is not None:  # keep the points the step markers sit on
            idx = np.union1d(idx, np.nonzero(marks)[0])
        xy = xy[idx]
        steps = steps[idx] if steps is not None else None
    return xy, steps


def _function_of(rec: RunRecord) -> tuple[Any, Any]:
    """The task's Function2D and start point (for contours), or ``(None, None)``.

    Only optimlab's own 2-D functions are rebuilt (from the built-in factory, with the run's
    stored options); a user task, or any other name a record holds, is never imported or
    called: the report renders records.
    """
    from ..tasks.functions2d import FUNCTION_TASKS

    factory = FUNCTION_TASKS.get(rec.config.task)
    if factory is None:
        return None, None
    try:
        task = factory(**dict(rec.config.task_options))
    except (TypeError, ValueError, ArithmeticError):  # options this factory does not take
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
        first = min(with_traj, key=lambda r: r.seed)
        xy, steps = _trajectory(first)  # type: ignore[misc]
        note = "" if first.ok else f" ({first.status})"
        paths.append(Path2D(s.arm, ctx.styles[s.arm], xy, note, steps))
    if not paths:
        return None
    rec0 = arms[0].records[0]
    function, start = _function_of(rec0) if rec0.task_info.kind == "2d" else (None, None)
    if start is None:
        start = paths[0].xy[0]
    svg = trajectories_figure(paths, function, _box(function, paths, start), start)
    contours = ("over log-spaced contours of f − f* (+ a small ε)" if function is not None
                else "(no contours: only optimlab's own 2-D functions are drawn; the report "
                     "never imports a task a record names)")
    return page.figure("trajectories", svg, (
        f"Trajectories of the first seed of each arm {contours}; white circle: start, "
        "star: known minimum, dot: last point, open circles: steps 1, 10, 100, 1000 "
        "(numbered when there are few paths). A diverged path stops at its last finite "
        "point."), task=task, wide=len(paths) > MAX_LEGEND)


#: Recorded series (``RunRecord.series``) and how their panels are titled.
SERIES = {
    "update_norm": "update norm ‖θₜ₊₁ − θₜ‖",
    "effective_lr": "effective step size ‖Δθ‖ / ‖g‖",
    "grad_norm": "gradient norm ‖g‖ (before clipping)",
    "param_norm": "parameter norm ‖θ‖",
    "loss_noise": "loss noise (std of mini-batch losses)",
}


def _series_figure(page: PageBuilder, ctx: Context, task: str,
                   arms: Sequence[ArmStats]) -> str | None:
    names = list(SERIES)
    for s in arms:
        for r in _ok(s):
            names += [k for k in r.series if k not in names]
    panels = []
    for name in names:
        bands = []
        for s in arms:
            got = [x for x in (series_of(r, name) for r in _ok(s)) if x is not None]
            # small panels: 50 to 100 points per curve are as much as a panel can show
            res = mean_band([g[0] for g in got], [g[1] for g in got], n_grid=50) if got else None
            if res is not None:
                bands.append(Band(s.arm, ctx.styles[s.arm], *res, group=s.optimizer))
        if bands:
            panels.append(Panel(SERIES.get(name, name), bands))
    if not panels:
        return None
    arm_names = [s.arm for s in arms]
    svg = series_figure(panels, "step", names=arm_names)
    return page.figure("series", svg, (
        "Recorded series at the evaluation steps, mean over the ok seeds with a min–max band: "
        + "; ".join(p.title for p in panels) + ". Log axes where values span decades."
        + ("" if len(arm_names) <= MAX_LEGEND else
           " No legend (too many arms): colours as in the table.")),
        task=task, wide=True)


def _work_figure(page: PageBuilder, ctx: Context, task: str, arms: Sequence[ArmStats],
                 work_label: str) -> str | None:
    order = ranked(arms)
    if any(math.isfinite(s.work_to_target.center) for s in order):
        rows = [Interval(s.arm, ctx.styles[s.arm], s.work_to_target.center,
                         s.work_to_target.low, s.work_to_target.high, s.tied_first)
                for s in order]
        svg = interval_figure(rows, f"{work_label} to target (settled)",
                              missing="not settled")
        what = f"{work_label} to the settled target"
    else:
        metric = order[0].target_metric
        rows = [Interval(s.arm, ctx.styles[s.arm], s.final_target.center, s.final_target.low,
                         s.final_target.high, s.tied_first) for s in order]
        svg = interval_figure(rows, f"final {metric}", missing="diverged or failed")
        what = f"the final {metric} (no arm settled at the target)"
    return page.figure("task-work", svg, (
        f"Each arm's {what}: centre and 95% interval over seeds (a point for one seed or a "
        "deterministic arm), best first; filled: the best arm and the arms tied with it."),
        task=task)


#: Scalars the task table does not show (counts that other columns or results.csv carry).
HIDDEN_SCALARS = ("closure_evals", "sharpness_hvps", "sharpness_trace_stderr",
                  "sharpness_converged")
#: The recorded sharpness measures (optimlab.lab.curvature) and how the report names them.
SHARPNESS = {"sharpness_lambda_max": "top Hessian eigenvalue",
             "sharpness_adaptive_lambda_max": "adaptive top eigenvalue",
             "sharpness_trace": "Hessian trace"}


def _sharpness_figure(page: PageBuilder, ctx: Context, task: str,
                      arms: Sequence[ArmStats]) -> str | None:
    """Final sharpness against the generalization gap, one point per run (runs recorded
    with ``sharpness``), per arm its mean and range."""
    points = {s.arm: [(float(r.scalars["sharpness_lambda_max"]),
                       float(r.generalization_gap))
                      for r in _ok(s) if "sharpness_lambda_max" in r.scalars
                      and r.generalization_gap is not None] for s in arms}
    points = {arm: [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
              for arm, pts in points.items()}
    points = {arm: pts for arm, pts in points.items() if pts}
    if not points:
        return None
    svg = scatter_figure(points, ctx.styles, "top Hessian eigenvalue at the end (sharpness)",
                         "generalization gap (test − train loss)")
    return page.figure("sharpness-gap", svg, (
        "Sharpness against generalization: each run's top Hessian eigenvalue of the task's "
        "training objective at its final parameters (Lanczos on Hessian-vector products, "
        "optimlab.lab.curvature) and its generalization gap; per arm, "
        "the mean (◆) with whiskers over the seeds' range. Flat minima are on the left; "
        "the guides' claim is that they sit lower."), task=task)


def _eval_grid(arms: Sequence[ArmStats]) -> str:
    """How often the runs were evaluated (the resolution of the settled step)."""
    gaps: list[int] = []
    for s in arms:
        for r in _ok(s)[:1]:
            steps = [int(x) for x in r.evals.get("step", []) if x == x]
            inner = steps[:-1]  # the last interval is cut short by the end of the budget
            gaps += [b - a for a, b in itertools.pairwise(inner) if b > a]
    if not gaps:
        return ""
    coarse, fine = int(np.median(gaps)), min(gaps)
    if fine < coarse:
        return (f"evaluated every {coarse} steps, every {fine} near the target (the settled "
                "step is exact to that grid)")
    return f"evaluated every {coarse} step{'s' if coarse > 1 else ''}"


def work_is_steps(arms: Sequence[ArmStats]) -> bool:
    """Whether every ok run evaluated the gradient once per step (so work == steps)."""
    return all(r.grad_evals == r.steps_done for s in arms for r in s.records if r.ok)


def _facts(page: PageBuilder, task: str, arms: Sequence[ArmStats]) -> None:
    rec0 = arms[0].records[0]
    info = rec0.task_info
    metric, target = arms[0].target_metric, arms[0].target
    facts = [f"<strong>{esc(info.description or task)}</strong>",
             f"kind: {esc(info.kind)}", f"target: {esc(metric)} ≤ {esc(fmt(target))}",
             f"training examples: {esc(info.n_train)}"]
    if rec0.config.task_options:
        facts.append("options: " + esc(config_text(rec0.config.task_options)))
    budgets = sorted({r.config.steps for s in arms for r in s.records if r.config.steps})
    if budgets:
        facts.append("budget: " + esc(" / ".join(str(b) for b in budgets)) + " steps")
    grid = _eval_grid(arms)
    if grid:
        facts.append(esc(grid))
    if all(s.deterministic for s in arms):
        seeds = sorted({r.seed for s in arms for r in s.records})
        facts.append(tag("det", "deterministic: one seed") + (
            " (the seed changes nothing: full batch, no noise)" if len(seeds) == 1 else
            f" (the seed changes nothing; the {len(seeds)} seeds run count as one)"))
    page.para(Markup(" · ".join(facts)), cls="lead")


def task_section(page: PageBuilder, ctx: Context, task: str, arms: list[ArmStats]) -> None:
    """One task: facts, curves, work to target, trajectories (2-D), recorded series, table."""
    page.heading(2, ctx.anchors[task], f"Task: {task}")
    _facts(page, task, arms)
    metric, target = arms[0].target_metric, arms[0].target
    per_step = work_is_steps(arms)
    work_label = "steps" if per_step else "gradient evaluations"

    cm = curve_metric(arms)
    evaluated = any(cm in r.evals.get("metrics", {}) for s in arms for r in _ok(s))
    what = cm if evaluated else "mini-batch training loss"
    source = "at the evaluations" if evaluated else "logged mini-batch losses"
    not_drawn = [s.arm for s in arms if not _ok(s)]
    missing = f" Not drawn (no ok run): {', '.join(not_drawn)}." if not_drawn else ""
    nonneg = cm in NONNEG_METRICS
    figs = []
    caption = (f"against {{}} ({source}): mean over the ok seeds of each arm, band = "
               "min–max over seeds; diverged and failed runs are left out.")
    floor_note = (" Values too small to show (or ≤ 0 from rounding) sit on the bottom edge, "
                  "labelled ≤." + missing)
    tick = " Tick |: the settled step (median over seeds)." if cm == metric else ""
    axes = [("step", 0), ("training time (s)", 1)]
    if not per_step:  # line searches, Hessian-vector products: "fewer, dearer iterations"
        axes.insert(1, ("gradient evaluations", 2))
    views = [(xlabel, curve_bands(ctx, arms, cm, axis, mark_settled=cm == metric))
             for xlabel, axis in axes]
    views = [(xlabel, bands) for xlabel, bands in views if bands]
    if not per_step and views and not many(len(views[0][1])):
        svg = cost_figure(views, cm, target=target if cm == metric else None, nonneg=nonneg,
                          logx=[x == "gradient evaluations" for x, _ in views])
        figs.append(page.figure("loss-cost", svg, (
            f"{what} " + caption.format(", ".join(x for x, _ in views)) + tick
            + " Gradient evaluations: closure evaluations with their gradient, each "
            "line-search trial as one, a Hessian-vector product as two (optimlab.lab.work)."
            + floor_note + key_note(len(views[0][1]))), task=task, wide=True))
        views = []
    for xlabel, bands in views:
        svg = curves_figure(bands, xlabel, cm, target=target if cm == metric else None,
                            nonneg=nonneg)
        kind = {"step": "loss-steps", "training time (s)": "loss-time"}.get(xlabel, "loss-work")
        figs.append(page.figure(kind, svg, (
            f"{what} " + caption.format(xlabel) + (tick if xlabel == "step" else "")
            + floor_note + key_note(len(bands))), task=task, wide=many(len(bands))))
    figs.append(_work_figure(page, ctx, task, arms, work_label))
    for name in _eval_metrics(arms):
        bands = curve_bands(ctx, arms, name, 0)
        if bands:
            svg = curves_figure(bands, "step", name, logy=False if "accuracy" in name else None)
            figs.append(page.figure("metric", svg, (
                f"{name} at the evaluations against step: mean over ok seeds, min–max band."
                + key_note(len(bands))), task=task, wide=many(len(bands))))
    for extra in (_trajectory_figure(page, ctx, task, arms),
                  _series_figure(page, ctx, task, arms),
                  _sharpness_figure(page, ctx, task, arms)):
        if extra:
            figs.append(extra)
    page.figures([f for f in figs if f])
    _task_table(page, ctx, arms, metric, per_step)
    _problems(page, arms)


def _task_table(page: PageBuilder, ctx: Context, arms: Sequence[ArmStats], metric: str,
                per_step: bool) -> None:
    order = ranked(arms)
    # one held-out metric beside the target (accuracy first); the rest are in results.csv
    others = sorted((n for n in task_metrics(arms) if n != metric
                     and n.startswith(("test_", "val_"))),
                    key=lambda n: ("accuracy" not in n, not n.startswith("test_"), n))[:1]
    crossing = any(r.first_crossing is not None and r.first_crossing != r.steps_to_target
                   for s in arms for r in s.records)
    gap = any(s.generalization_gap.n for s in arms)
    scalars: list[str] = []
    for s in arms:
        scalars += [k for k in s.scalars if k not in scalars and k not in HIDDEN_SCALARS]
    scalars = sorted(scalars, key=lambda k: not k.startswith("sharpness_"))[:2]
    work = "steps" if per_step else "gradient evaluations"
    header = ["arm", "runs", f"{work} to target (settled)"]
    if not per_step:
        header.append("steps to target")
    if crossing:
        header.append("first ≤ target")
    header += ["time to target", "vs best", f"final {metric}", *(f"final {n}" for n in others)]
    if gap:
        header.append("generalization gap")
    header += [*(f"final {SHARPNESS[k]}" if k in SHARPNESS else k for k in scalars), "rank"]
    rows, classes = [], []
    for s in order:
        row: list[Any] = [arm_cell(ctx, s, tags=True), status_cell(s),
                          soft(fmt_to_target(s.work_to_target, s.n_reached, s.n_runs))]
        if not per_step:
            row.append(soft(fmt_interval(s.steps_to_target, count=True)
                            if math.isfinite(s.steps_to_target.center) else "-"))
        if crossing:
            first = s.first_crossing.center
            row.append("-" if not math.isfinite(first) else
                       "same" if first == s.steps_to_target.center else
                       soft(fmt_interval(s.first_crossing, count=True)))
        row += [soft(fmt_interval(s.time_to_target, unit=" s", digits=3)
                     if math.isfinite(s.time_to_target.center) else "-"),
                fmt_vs_best(s), soft(_final(s, metric)), *(soft(_final(s, n)) for n in others)]
        if gap:
            row.append(fmt_mean_std(s.generalization_gap))
        row += [fmt_mean_std(s.scalars[k]) if k in s.scalars else "-" for k in scalars]
        row.append(fmt(s.primary_rank, 3))
        rows.append(row)
        classes.append(row_class(s))
    page.table(header, rows, numeric=list(range(2, len(header))), row_classes=classes,
               cls="task-table")
    notes = [f"{work.capitalize()} to target: to the step from which the run stayed at or below "
             "the target until the end (settled), mean with its 95% t interval over seeds, or "
             "the median with order-statistic bounds when some seeds did not settle; (k/n): "
             "runs that settled."]
    if crossing:
        notes.append("First ≤ target: the first evaluation at or below the target (same: "
                     "as the settled step); where it comes earlier, runs crossed the target "
                     "and climbed back above it (never ranked).")
    notes.append("Vs best: best; tied (cannot be told from the best: the interval of the "
                 "difference contains 0 or it is within the evaluation grid); or ×ratio of "
                 "the mean work to the best arm's with the p-value of the paired comparison. "
                 "Final metrics: mean [95% interval] over ok runs. Time: training seconds, "
                 "warm-up excluded.")
    page.para(" ".join(notes))


def _final(s: ArmStats, name: str) -> str:
    iv = s.final_ci.get(name)
    return fmt_interval(iv, metric=name) if iv is not None else "-"


def _problems(page: PageBuilder, arms: Sequence[ArmStats]) -> None:
    problems = [(s, r) for s in arms for r in s.records if not r.ok]
    if not problems:
        return
    items = []
    for s, r in problems:
        items.append(f'<li><span class="bad">{esc(r.status)}</span>: {esc(s.arm)} seed '
                     f"{esc(r.seed)}" + (f" — <code>{esc(r.error)}</code>" if r.error else "")
                     + "</li>")
    page.details(f"Diverged and failed runs ({len(problems)})",
                 f"<ul>{''.join(items)}</ul>")
