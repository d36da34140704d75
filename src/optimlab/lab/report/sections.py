"""Report sections across tasks: each optimizer at its best configuration, sensitivity to every
swept setting (with grid-edge warnings), the batch-size trade-off, memory, schedules and the
environment (configurations collapsed; the exact ones are in ``results.json``).

Every builder first decides whether it has anything to show and starts no section otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..schema import RunRecord
from .curves import SweepLine, sweeps, swept_settings
from .page import Markup, PageBuilder, esc, soft
from .plots import (
    MAX_LEGEND,
    Interval,
    LRLine,
    SweepSeries,
    bars_figure,
    curves_figure,
    interval_figure,
    many,
    schedule_figure,
    styles_for,
    sweep_figure,
)
from .stats import ArmStats, by_task, ranked
from .tasks import (
    Context,
    arm_cell,
    config_text,
    curve_bands,
    curve_metric,
    key_note,
    status_cell,
    work_is_steps,
)
from .text import NONNEG_METRICS, fmt, fmt_int, fmt_interval, fmt_to_target, fmt_vs_best

__all__ = ["EdgeWarning", "batch_section", "best_section", "environment_section",
           "grid_edges", "memory_section", "schedules_section", "sensitivity_section"]

#: Settings whose best value at a grid edge is expected rather than suspicious (a larger
#: batch always takes fewer steps) or that have no order.
_NO_EDGE = frozenset({"batch_size", "base_batch_size", "lr_scaling", "schedule"})


def _sub_anchor(ctx: Context, prefix: str, task: str) -> str:
    return f"{prefix}-{ctx.anchors[task]}"


def _line_best(line: SweepLine) -> int:
    return min(range(len(line.arms)), key=lambda i: (line.arms[i].primary_rank,
                                                     line.arms[i].arm))


# ----------------------------------------------------------------------------- grid edges


@dataclass
class EdgeWarning:
    """The best value of a swept setting sits at an edge of the swept grid."""

    task: str
    line: SweepLine
    index: int

    @property
    def arm(self) -> str:
        """The best arm of the line."""
        return self.line.arms[self.index].arm

    @property
    def text(self) -> str:
        """The warning in words."""
        ln = self.line
        side = "smallest" if self.index == 0 else "largest"
        if "1 −" in ln.axis:  # the axis is 1 - value: its order is reversed
            side = "largest" if self.index == 0 else "smallest"
        swept = ln.xlabels if "1 −" not in ln.axis else ln.xlabels[::-1]
        return (f"{self.task}: {ln.name}: the best {ln.setting} = {ln.xlabels[self.index]} "
                f"is the {side} value swept ({', '.join(swept)}); the optimum may lie "
                "beyond the grid: widen it.")


def grid_edges(ctx: Context) -> list[EdgeWarning]:
    """Every sweep line (of a numeric setting) whose best arm, by the ranking objective, is at
    the first or last swept value, unless that value is 0 (a natural bound, e.g. no weight
    decay) or an inner value ranks as well."""
    out = []
    for task, settings in swept_settings(ctx.stats).items():
        for setting in settings:
            if setting in _NO_EDGE:
                continue
            for line in sweeps(ctx.stats, setting).get(task, []):
                if not line.numeric:
                    continue
                i = _line_best(line)
                if 0 < i < len(line.arms) - 1:
                    continue
                value = line.values[i]
                if isinstance(value, (int, float)) and value == 0:
                    continue
                best = line.arms[i].primary_rank
                if any(a.primary_rank == best for a in line.arms[1:-1]):
                    continue
                out.append(EdgeWarning(task, line, i))
    return out


# ----------------------------------------------------------------------------- best per optimizer


def _heldout_seeds(arms: Sequence[ArmStats]) -> str:
    seeds = sorted({r.seed for s in arms for r in s.records})
    return ", ".join(str(s) for s in seeds)


def best_section(page: PageBuilder, ctx: Context, edges: Sequence[EdgeWarning]) -> None:
    """Each optimizer at its best configuration per task (by the ranking objective): the
    held-out re-runs when the study made them, else the best swept arm on the same seeds.
    Shown when some optimizer ran several configurations on a task or held-out runs exist."""
    held = by_task(ctx.heldout)
    tasks = {}
    for task, arms in ctx.tasks.items():
        per_opt: dict[str, list[ArmStats]] = {}
        for s in arms:
            per_opt.setdefault(s.optimizer, []).append(s)
        if task in held or any(len(v) > 1 for v in per_opt.values()):
            tasks[task] = per_opt
    if not tasks:
        return
    page.heading(2, "best", "Best configuration per optimizer")
    choice = ctx.study.get("heldout_choice") if isinstance(ctx.study, Mapping) else None
    choice = choice if isinstance(choice, Mapping) else {}
    page.para(
        "Each optimizer at its best configuration on each task, chosen by the ranking "
        "objective (the same as the ranking's: work to the settled target, then the final "
        "target metric). Where the study re-ran each choice on held-out seeds (fresh seeds, "
        "not used to choose), the numbers are those runs', ranked among themselves; otherwise "
        "selection and evaluation share seeds, which favours optimizers with more "
        "configurations tried (set heldout_seeds in the study for unbiased numbers).")
    edge_arms = {(w.task, w.arm) for w in edges}
    for task, per_opt in tasks.items():
        page.heading(3, _sub_anchor(ctx, "best", task), task)
        if task in held:
            shown = ranked(held[task])
            chosen = {s.optimizer: str((choice.get(task) or {}).get(s.optimizer) or
                                       _best_of(per_opt.get(s.optimizer, [])) or s.arm)
                      for s in shown}
            page.para(f"Held-out evaluation: each choice re-run on seeds "
                      f"{_heldout_seeds(shown)} (not used to choose it).")
        else:
            shown = ranked([min(v, key=lambda s: (s.primary_rank, s.arm))
                            for v in per_opt.values()])
            chosen = {s.optimizer: s.arm for s in shown}
            page.para("Selection and evaluation share seeds: no held-out runs for this task.",
                      cls="note warn")
        metric = shown[0].target_metric
        work = "steps" if work_is_steps(shown) else "gradient evaluations"
        rows, flags = [], []
        for s in shown:
            edge = (task, chosen[s.optimizer]) in edge_arms
            flags.append(edge)
            rows.append([arm_cell(ctx, s, tags=True),
                         *([chosen[s.optimizer]] if task in held else []), status_cell(s),
                         soft(fmt_to_target(s.work_to_target, s.n_reached, s.n_runs)),
                         fmt_vs_best(s),
                         soft(fmt_interval(s.final_ci[metric], metric=metric)
                              if metric in s.final_ci else "-"),
                         Markup('<span class="warn">⚠ at the grid edge</span>') if edge
                         else "-"])
        header = ["optimizer (arm)", *(["chosen configuration"] if task in held else []),
                  "runs", f"{work} to target", "vs best", f"final {metric}", "grid"]
        first = 3 if task in held else 2
        page.table(header, rows, numeric=[first, first + 2], cls="best-table")
        rows_iv = [Interval(s.arm, ctx.styles[s.arm], s.work_to_target.center,
                            s.work_to_target.low, s.work_to_target.high, s.tied_first)
                   for s in shown]
        figs = []
        if any(math.isfinite(r.center) for r in rows_iv):
            figs.append(page.figure("best-work", interval_figure(
                rows_iv, f"{work} to target (settled)", missing="not settled"), (
                f"Best configuration of each optimizer on {task}: {work} to the settled target, "
                "centre and 95% interval over seeds; filled: best or tied with the best."),
                task=task))
        cm = curve_metric(shown)
        bands = curve_bands(ctx, shown, cm, 0, mark_settled=cm == metric)
        if bands:
            figs.append(page.figure("best-curves", curves_figure(
                bands, "step", cm, target=shown[0].target if cm == metric else None,
                nonneg=cm in NONNEG_METRICS), (
                f"{cm} of each optimizer's best configuration on {task}: mean over the ok "
                "seeds, min–max band; tick |: the settled step." + key_note(len(bands))),
                task=task, wide=many(len(bands))))
        page.figures(figs)


def _best_of(arms: Sequence[ArmStats]) -> str | None:
    return min(arms, key=lambda s: (s.primary_rank, s.arm)).arm if arms else None


# ----------------------------------------------------------------------------- sensitivity


def _y(a: ArmStats, use_work: bool) -> tuple[float, float, float]:
    iv = a.work_to_target if use_work else a.final_target
    return iv.center, iv.low, iv.high


def _series(ctx: Context, lines: Sequence[SweepLine], use_work: bool) -> list[SweepSeries]:
    styles = _line_styles(ctx, lines)
    out = []
    for ln in lines:
        ys = [_y(a, use_work) for a in ln.arms]
        out.append(SweepSeries(ln.name, styles[ln.name], ln.xs, [y[0] for y in ys], ln.xlabels,
                               [y[1] for y in ys], [y[2] for y in ys], _line_best(ln)))
    return out


def _line_styles(ctx: Context, lines: Sequence[SweepLine]) -> dict[str, Any]:
    """A line takes the colour of its best arm when the lines' best arms differ in colour
    (so the line matches that arm's swatch in every table), else a colour of its own."""
    best = {ln.name: ln.arms[_line_best(ln)].arm for ln in lines}
    styles = {name: ctx.styles[arm] for name, arm in best.items()}
    if len(set(styles.values())) == len(styles):
        return styles
    return styles_for([ln.name for ln in lines])


def sensitivity_section(page: PageBuilder, ctx: Context, edges: Sequence[EdgeWarning]) -> None:
    """Per task and swept setting (any hyperparameter, the schedule, clipping; the batch size
    has its own section): work to the settled target (or, when no arm settled, the final
    target metric) against the swept value, one line per optimizer, with grid-edge
    warnings."""
    found = {t: [s for s in settings if s not in ("batch_size", "base_batch_size")]
             for t, settings in swept_settings(ctx.stats).items()}
    found = {t: s for t, s in found.items() if s}
    if not found:
        return
    page.heading(2, "sensitivity", "Sensitivity to the swept settings")
    page.para(
        "Per task, arms of one optimizer that differ only in one setting: work to the settled "
        "target (centre and 95% interval over seeds; × at the top: not settled on more than "
        "half the seeds) against the swept value, each line's best ringed. When no arm of a "
        "figure settled, its y axis is the final target metric instead. Momentum-like values "
        "near 1 are spaced by 1 − value.")
    if edges:
        page.items([w.text for w in edges], cls="warnings")
    for task, settings in found.items():
        page.heading(3, _sub_anchor(ctx, "sens", task), task)
        figs, tables = [], []
        for setting in settings:
            lines = sweeps(ctx.stats, setting)[task]  # one shared x axis per setting
            figs.append(_sensitivity_figure(page, ctx, task, setting, lines))
            tables += _sensitivity_rows(ctx, setting, lines)
        page.figures(figs)
        page.details(f"Numbers behind the sensitivity plots on {task}", page.table_html(
            ["setting", "line", "value", "arm", "work to target", "final target metric"],
            tables, numeric=[4, 5]))


def _sensitivity_figure(page: PageBuilder, ctx: Context, task: str, setting: str,
                        lines: Sequence[SweepLine]) -> str:
    arms = [a for ln in lines for a in ln.arms]
    use_work = any(math.isfinite(a.work_to_target.center) for a in arms)
    metric = arms[0].target_metric
    work = "steps" if work_is_steps(arms) else "gradient evaluations"
    ylabel = f"{work} to target" if use_work else f"final {metric}"
    svg = sweep_figure(_series(ctx, lines, use_work), lines[0].axis, ylabel,
                       xscale="linear" if lines[0].scale == "category" else lines[0].scale,
                       missing="not settled" if use_work else "diverged",
                       nonneg=not use_work and metric in NONNEG_METRICS)
    return page.figure("sensitivity", svg, (
        f"{ylabel} against {lines[0].axis} on {task}, one line per optimizer (and other "
        "settings); bars: 95% intervals over seeds; ringed: each line's best."
        + ("" if use_work else " No arm settled at the target, so the final target metric "
           "is shown.")), task=task)


def _sensitivity_rows(ctx: Context, setting: str, lines: Sequence[SweepLine]
                      ) -> list[list[Any]]:
    rows = []
    for ln in lines:
        for xl, a in zip(ln.xlabels, ln.arms):
            rows.append([setting, ln.name, xl, arm_cell(ctx, a),
                         soft(fmt_to_target(a.work_to_target, a.n_reached, a.n_runs)),
                         soft(fmt_interval(a.final_target, metric=a.target_metric))])
    return rows


# ----------------------------------------------------------------------------- batch size


def batch_section(page: PageBuilder, ctx: Context) -> None:
    """Steps, examples and time to target and the generalization gap against the batch size
    (shown only when some arms differ in the batch size alone)."""
    groups = sweeps(ctx.stats, "batch_size")
    if not groups:
        return
    page.heading(2, "batch-size", "Batch-size trade-off")
    page.para("Per task, arms that differ only in the batch size (\"full\" = the task's "
              "number of training examples): steps, training examples and time to the settled "
              "target (centre and 95% interval over seeds; × at the top: not settled on more "
              "than half the seeds) and the generalization gap (or a test metric). Larger "
              "batches usually need fewer steps but more examples.")
    for task, lines in groups.items():
        page.heading(3, _sub_anchor(ctx, "bs", task), task)
        figs = []
        measures: list[tuple[str, Callable[[ArmStats], Any], str]] = [
            ("batch-steps", lambda a: a.steps_to_target, "steps to target"),
            ("batch-examples", lambda a: a.examples_to_target, "examples to target"),
            ("batch-time", lambda a: a.time_to_target, "time to target (s)")]
        styles = _line_styles(ctx, lines)
        for kind, fn, ylabel in measures:
            series = [SweepSeries(ln.name, styles[ln.name], ln.xs,
                                  [fn(a).center for a in ln.arms], ln.xlabels,
                                  [fn(a).low for a in ln.arms], [fn(a).high for a in ln.arms])
                      for ln in lines]
            if not any(math.isfinite(y) for s in series for y in s.ys) and kind != "batch-steps":
                continue
            svg = sweep_figure(series, "batch size", ylabel, missing="not settled")
            figs.append(page.figure(kind, svg, f"{ylabel} against batch size on {task}: "
                                    "centre and 95% interval over seeds.", task=task))
        gap = _test_metric(lines)
        if gap is not None:
            label, fn2 = gap
            series = [SweepSeries(ln.name, styles[ln.name], ln.xs, [fn2(a) for a in ln.arms],
                                  ln.xlabels) for ln in lines]
            svg = sweep_figure(series, "batch size", label, missing="no ok run")
            figs.append(page.figure("batch-gap", svg, f"{label} (mean over ok seeds) against "
                                    f"batch size on {task}.", task=task))
        page.figures(figs)
        rows = []
        for ln in lines:
            for xl, a in zip(ln.xlabels, ln.arms):
                rows.append([ln.name, xl, arm_cell(ctx, a),
                             soft(fmt_to_target(a.steps_to_target, a.n_reached, a.n_runs)),
                             soft(fmt_interval(a.examples_to_target, count=True)
                                  if math.isfinite(a.examples_to_target.center) else "-"),
                             soft(fmt_interval(a.time_to_target, unit=" s", digits=3)
                                  if math.isfinite(a.time_to_target.center) else "-"),
                             fmt(a.generalization_gap.mean)])
        page.table(["line", "batch size", "arm", "steps to target", "examples to target",
                    "time to target", "generalization gap"], rows, numeric=[1, 3, 4, 5, 6])


def _test_metric(lines: Sequence[SweepLine]) -> tuple[str, Callable[[ArmStats], float]] | None:
    arms = [a for ln in lines for a in ln.arms]
    if any(a.generalization_gap.n for a in arms):
        return "generalization gap (test − train loss)", lambda a: (
            a.generalization_gap.mean if a.generalization_gap.n else math.inf)
    for name in ("test_accuracy", "test_loss", "val_accuracy", "val_loss"):
        if any(name in a.final and a.final[name].n for a in arms):
            return f"final {name}", lambda a, n=name: (
                a.final[n].mean if n in a.final and a.final[n].n else math.inf)
    return None


# ----------------------------------------------------------------------------- memory


def memory_section(page: PageBuilder, ctx: Context) -> None:
    """Optimizer state bytes per parameter, per arm (median over its runs); shown when some
    run recorded its optimizer state size."""
    per_arm: dict[str, list[RunRecord]] = {}
    for rec in ctx.records:
        per_arm.setdefault(rec.label or rec.optimizer, []).append(rec)

    def ratio(r: RunRecord) -> float:
        return r.state_bytes / r.n_params if r.n_params > 0 else math.nan

    def span(recs: list[RunRecord], key: str) -> str:
        vals = [float(v) for v in (getattr(r, key) for r in recs)
                if v is not None and math.isfinite(v)]
        if not vals:
            return "-"
        lo, hi = fmt_int(min(vals)), fmt_int(max(vals))
        return lo if lo == hi else f"{lo} – {hi}"

    rows, names, values = [], [], []
    for arm in ctx.arms:
        recs = [r for r in per_arm.get(arm, []) if r.ok or r.n_params > 0]
        if not recs:
            continue
        bpp = [v for v in (ratio(r) for r in recs) if math.isfinite(v)]
        value = float(np.median(bpp)) if bpp else math.nan
        names.append(arm)
        values.append(value)
        rows.append([arm_cell(ctx, arm), recs[0].optimizer, fmt(value),
                     *(span(recs, key) for key in ("state_bytes", "n_params", "param_bytes",
                                                   "peak_memory_bytes")),
                     ", ".join(sorted({r.memory_kind for r in recs if r.memory_kind})) or "-"])
    if not any(math.isfinite(v) for v in values):
        return
    page.heading(2, "memory", "Memory")
    page.para("Optimizer state bytes per parameter = state_bytes / n_params (median over the "
              "arm's runs on all tasks); e.g. 8 for two float32 buffers per parameter.")
    svg = bars_figure(names, values, ctx.styles, "optimizer state bytes per parameter")
    page.figures([page.figure("memory", svg, "Optimizer state bytes per parameter per arm.",
                              wide=len(names) > 20)])
    page.table(["arm", "optimizer", "state bytes / param", "state bytes", "params",
                "param bytes", "peak memory bytes", "memory kind"], rows,
               numeric=[2, 3, 4, 5, 6])
    page.para("Bytes and parameter counts: range over the arm's runs (tasks differ in size). "
              "Peak memory is what the runner measured (memory kind), e.g. the largest CUDA "
              "allocation or the worker's peak resident set on CPU.")


# ----------------------------------------------------------------------------- schedules


def schedules_section(page: PageBuilder, ctx: Context) -> None:
    """The learning rates the runs used over time (one line per distinct arm and schedule);
    shown only when some learning rate changed during a run."""
    seen: dict[tuple[str, str], LRLine] = {}
    for rec in ctx.records:
        steps, values = rec.lr.get("step") or [], rec.lr.get("value") or []
        n = min(len(steps), len(values))
        arm = rec.label or rec.optimizer
        key = (arm, rec.config.schedule)
        if n == 0 or key in seen:
            continue
        s = np.asarray([math.nan if v is None else float(v) for v in steps[:n]], dtype=float)
        v = np.asarray([math.nan if x is None else float(x) for x in values[:n]], dtype=float)
        if len(s) > 1000:
            idx = np.unique(np.linspace(0, len(s) - 1, 1000).round().astype(int))
            s, v = s[idx], v[idx]
        seen[key] = LRLine(f"{arm} ({key[1]})", ctx.styles[arm], s, v)
    varying = {k: ln for k, ln in seen.items() if np.isfinite(ln.values).any()
               and np.nanmax(ln.values) > np.nanmin(ln.values)}
    if not varying:
        return
    page.heading(2, "schedules", "Learning-rate schedules")
    svg = schedule_figure(list(varying.values()))
    constant = len(seen) - len(varying)
    page.figures([page.figure("schedules", svg, (
        "Learning rate set by the schedule against step, one line per distinct (arm, "
        "schedule) whose learning rate changes during the run, from the arm's first run."
        + (f" {constant} arm(s) with a constant learning rate are not drawn." if constant
           else "")
        + ("" if len(varying) <= MAX_LEGEND else
           " No legend (too many lines): colours as in the table.")))])
    rows = []
    for (arm, schedule), ln in varying.items():
        fin = ln.values[np.isfinite(ln.values)]
        rows.append([arm_cell(ctx, arm), schedule, fmt(fin.max()), fmt(fin[-1]),
                     fmt(ln.steps[-1], 6)])
    page.table(["arm", "schedule", "peak lr", "last lr", "last step"], rows,
               numeric=[2, 3, 4])


# ----------------------------------------------------------------------------- environment


def _setting_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_setting_text(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting_text(v) for v in value) or "-"
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _run_settings(rec: RunRecord) -> str:
    cfg = rec.config
    parts: dict[str, Any] = {"optimizer": cfg.optimizer, **dict(cfg.hyperparams),
                             "schedule": cfg.schedule, "batch_size": cfg.batch_size,
                             "steps": cfg.steps}
    for name in ("examples", "epochs", "seconds", "clip_norm", "clip_value"):
        if getattr(cfg, name) is not None:
            parts[name] = getattr(cfg, name)
    if cfg.lr_scaling != "none":
        parts["lr_scaling"] = f"{cfg.lr_scaling} (base batch {cfg.base_batch_size})"
    if cfg.task_options:
        parts["task_options"] = config_text(cfg.task_options)
    return config_text(parts)


def environment_section(page: PageBuilder, ctx: Context, study: Mapping[str, Any] | None,
                        environment: Mapping[str, Any] | None) -> None:
    """The environment, the study's settings and every run's settings (both collapsed; the
    exact configurations are in ``results.json``)."""
    if not environment and not study and not ctx.records:
        return
    page.heading(2, "environment", "Environment and runs")
    if environment:
        page.table(["", "version / value"],
                   [[k, _setting_text(v)] for k, v in environment.items()])
    if study:
        page.details("Study settings", page.table_html(
            ["setting", "value"], [[k, _setting_text(v)] for k, v in study.items()]))
    if ctx.records:
        rows, classes = [], []
        for rec in ctx.records:
            cell = esc(rec.status)
            if not rec.ok:
                cell = f'<span class="bad">{cell}</span>'
            if rec.error:
                cell += f"<br><code>{esc(rec.error)}</code>"
            rows.append([rec.key[:12], rec.config.task, rec.label or rec.optimizer, rec.seed,
                         Markup(cell), rec.steps_done,
                         rec.steps_to_target if rec.steps_to_target is not None else "-",
                         _run_settings(rec)])
            classes.append("" if rec.ok else ("diverged" if rec.status == "diverged"
                                              else "failed"))
        page.details(f"All runs ({len(ctx.records)}) with their settings", page.table_html(
            ["key", "task", "arm", "seed", "status", "steps done", "settled at", "settings"],
            rows, numeric=[3, 5, 6], row_classes=classes, cls="runs"))
    page.para("Every run's exact configuration (rerun it to reproduce the run) is in "
              "results.json; results.csv has one row per run.")

