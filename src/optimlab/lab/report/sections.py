"""Report sections across tasks: learning-rate sensitivity, batch size, memory, schedules and
the environment (with every run's exact configuration)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .curves import SweepLine, sweeps
from .page import Markup, PageBuilder, esc
from .plots import LRLine, SweepSeries, bars_figure, schedule_figure, styles_for, sweep_figure
from .records import arm_of, config, json_safe, num, status_of
from .tasks import Context, arm_cell, key_note
from .text import fmt, fmt_int, fmt_mean_std

__all__ = ["batch_section", "environment_section", "lr_section", "memory_section",
           "schedules_section"]


def _series(lines: list[SweepLine], values: Any) -> list[SweepSeries]:
    styles = styles_for([ln.name for ln in lines])
    return [SweepSeries(ln.name, styles[ln.name], ln.xs, [values(a) for a in ln.arms],
                        ln.xlabels) for ln in lines]


def _sub_anchor(ctx: Context, prefix: str, task: str) -> str:
    return f"{prefix}-{ctx.anchors[task]}"


def lr_section(page: PageBuilder, ctx: Context) -> None:
    """Final target metric against the learning rate, per task with an lr sweep."""
    page.heading(2, "lr-sensitivity", "Learning-rate sensitivity")
    groups = sweeps(ctx.stats, "lr")
    if not groups:
        page.para("No task has arms of one optimizer that differ only in the learning rate.")
        return
    page.para("Per task, arms of one optimizer that differ only in hyperparams.lr: the final "
              "target metric (median over seeds; a diverged or failed seed counts as +∞) "
              "against the learning rate. × at the top: the median is infinite (at least half "
              "the seeds diverged or failed).")
    for task, lines in groups.items():
        page.heading(3, _sub_anchor(ctx, "lr", task), f"{task}")
        metric = lines[0].arms[0].target_metric
        svg = sweep_figure(_series(lines, lambda a: a.final_target_median), "learning rate",
                           f"final {metric} (median)", missing="diverged")
        page.figures([page.figure("lr-sensitivity", svg, (
            f"Final {metric} against learning rate on {task}, one line per optimizer."),
            task=task)])
        rows = [[ln.name, xl, arm_cell(ctx, a.arm), fmt(a.final_target_median),
                 f"{a.n_ok}/{a.n_runs} ok"]
                for ln in lines for xl, a in zip(ln.xlabels, ln.arms)]
        page.table(["line", "lr", "arm", f"final {metric} (median)", "runs"], rows,
                   numeric=[1, 3])


def _test_metric(lines: list[SweepLine]) -> tuple[str, Any] | None:
    arms = [a for ln in lines for a in ln.arms]
    if any(a.generalization_gap.n for a in arms):
        return "generalization gap (test − train loss)", lambda a: (
            a.generalization_gap.mean if a.generalization_gap.n else math.inf)
    for name in ("test_accuracy", "test_loss", "val_accuracy", "val_loss"):
        if any(name in a.final and a.final[name].n for a in arms):
            return f"final {name}", lambda a, n=name: (
                a.final[n].mean if n in a.final and a.final[n].n else math.inf)
    return None


def batch_section(page: PageBuilder, ctx: Context) -> None:
    """Steps and time to target and the generalization gap against the batch size."""
    page.heading(2, "batch-size", "Batch-size trade-off")
    groups = sweeps(ctx.stats, "batch_size")
    if not groups:
        page.para("No task has arms of one optimizer that differ only in the batch size.")
        return
    page.para("Per task, arms that differ only in config.batch_size (\"full\" = the task's "
              "number of training examples): median steps and time to target over seeds "
              "(× at the top: not reached by at least half the seeds) and the generalization "
              "gap (or a test metric) against the batch size. Larger batches usually need "
              "fewer steps but more computation per step.")
    for task, lines in groups.items():
        page.heading(3, _sub_anchor(ctx, "bs", task), f"{task}")
        figs = []
        for kind, fn, ylabel in (("batch-steps", lambda a: a.steps_to_target, "steps to target"),
                                 ("batch-time", lambda a: a.time_to_target,
                                  "time to target (s)")):
            svg = sweep_figure(_series(lines, fn), "batch size", ylabel,
                               missing="not reached")
            figs.append(page.figure(kind, svg, f"{ylabel} (median over seeds) against batch "
                                    f"size on {task}.", task=task))
        gap = _test_metric(lines)
        if gap is not None:
            label, fn = gap
            svg = sweep_figure(_series(lines, fn), "batch size", label,
                               missing="no ok run")
            figs.append(page.figure("batch-gap", svg, f"{label} (mean over ok seeds) against "
                                    f"batch size on {task}.", task=task))
        page.figures(figs)
        rows = []
        for ln in lines:
            for xl, a in zip(ln.xlabels, ln.arms):
                rows.append([ln.name, xl, arm_cell(ctx, a.arm),
                             fmt(a.steps_to_target) if math.isfinite(a.steps_to_target)
                             else "-", fmt(a.time_to_target, 3)
                             if math.isfinite(a.time_to_target) else "-",
                             f"{a.n_reached}/{a.n_runs}", fmt_mean_std(a.generalization_gap)])
        page.table(["line", "batch size", "arm", "steps to target", "time to target (s)",
                    "reached", "generalization gap"], rows, numeric=[1, 3, 4, 5, 6])


def memory_section(page: PageBuilder, ctx: Context) -> None:
    """Optimizer state bytes per parameter, per arm (median over its runs)."""
    page.heading(2, "memory", "Memory")
    per_arm: dict[str, list[dict[str, Any]]] = {}
    for rec in ctx.records:
        per_arm.setdefault(arm_of(rec), []).append(rec)

    def med(recs: list[dict[str, Any]], fn: Any) -> float:
        vals = [v for v in (fn(r) for r in recs) if math.isfinite(v)]
        return float(np.median(vals)) if vals else math.nan

    def ratio(r: Mapping[str, Any]) -> float:
        sb, n = num(r.get("state_bytes")), num(r.get("n_params"))
        return sb / n if math.isfinite(sb) and math.isfinite(n) and n > 0 else math.nan

    def span(recs: list[dict[str, Any]], key: str) -> str:
        vals = [v for v in (num(r.get(key)) for r in recs) if math.isfinite(v)]
        if not vals:
            return "-"
        lo, hi = fmt_int(min(vals)), fmt_int(max(vals))
        return lo if lo == hi else f"{lo} – {hi}"

    rows, names, values = [], [], []
    for arm in ctx.arms:
        recs = per_arm[arm]
        bpp = med(recs, ratio)
        names.append(arm)
        values.append(bpp)
        rows.append([arm_cell(ctx, arm), str(config(recs[0]).get("optimizer", "?")), fmt(bpp),
                     *(span(recs, key) for key in ("state_bytes", "n_params", "param_bytes",
                                                   "peak_memory_bytes")),
                     ", ".join(sorted({str(r["memory_kind"]) for r in recs
                                       if r.get("memory_kind")})) or "-"])
    if not any(math.isfinite(v) for v in values):
        page.para("No run recorded its optimizer state size.")
        return
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


def schedules_section(page: PageBuilder, ctx: Context) -> None:
    """The learning-rate schedules the runs used (one line per distinct arm and schedule)."""
    page.heading(2, "schedules", "Learning-rate schedules")
    seen: dict[tuple[str, str], LRLine] = {}
    rows = []
    for rec in ctx.records:
        lr = rec.get("lr") if isinstance(rec.get("lr"), dict) else {}
        steps, values = lr.get("step") or [], lr.get("value") or []
        n = min(len(steps), len(values))
        schedule = str(config(rec).get("schedule", "?"))
        key = (arm_of(rec), schedule)
        if n == 0 or key in seen:
            continue
        s = np.asarray([num(v) for v in steps[:n]], dtype=float)
        v = np.asarray([num(x) for x in values[:n]], dtype=float)
        if len(s) > 1000:
            idx = np.unique(np.linspace(0, len(s) - 1, 1000).round().astype(int))
            s, v = s[idx], v[idx]
        seen[key] = LRLine(f"{key[0]} ({schedule})", ctx.styles[key[0]], s, v)
        fin = v[np.isfinite(v)]
        rows.append([arm_cell(ctx, key[0]), schedule,
                     fmt(fin.max() if fin.size else math.nan),
                     fmt(fin[-1] if fin.size else math.nan), fmt(s[-1], 6)])
    if not seen:
        page.para("No run recorded its learning-rate schedule.")
        return
    svg = schedule_figure(list(seen.values()))
    page.figures([page.figure("schedules", svg, (
        "Learning rate set by the schedule against step, one line per distinct (arm, "
        "schedule), from the arm's first run." + key_note(len(seen))))])
    page.table(["arm", "schedule", "peak lr", "last lr", "last step"], rows,
               numeric=[2, 3, 4])


def environment_section(page: PageBuilder, ctx: Context, study: Mapping[str, Any] | None,
                        environment: Mapping[str, Any] | None) -> None:
    """Environment table, study JSON and every run with its exact configuration."""
    page.heading(2, "environment", "Environment and runs")
    if environment:
        page.table(["", "version / value"],
                   [[k, v if isinstance(v, str) else json.dumps(json_safe(v))]
                    for k, v in environment.items()])
    else:
        page.para("No environment information was given.")
    if study:
        page.heading(3, "study", "Study", toc=False)
        page.add("<pre>" + esc(json.dumps(json_safe(study), indent=2, sort_keys=False,
                                          ensure_ascii=False)) + "</pre>")
    page.heading(3, "runs", f"All runs ({len(ctx.records)})", toc=False)
    page.para("Every run with its exact configuration (as JSON): rerun it with the same "
              "config to reproduce it.")
    rows, classes = [], []
    for rec in ctx.records:
        cfg = config(rec)
        status = status_of(rec)
        cell = esc(status)
        if status != "ok":
            cell = f'<span class="bad">{cell}</span>'
        if rec.get("error"):
            cell += f"<br><code>{esc(rec.get('error'))}</code>"
        rows.append([str(rec.get("key", "")), str(cfg.get("task", "?")), arm_of(rec),
                     str(cfg.get("seed", "")), Markup(cell),
                     Markup("<code>" + esc(json.dumps(json_safe(cfg), sort_keys=True,
                                                      ensure_ascii=False)) + "</code>")])
        classes.append("" if status == "ok" else ("diverged" if status == "diverged"
                                                  else "failed"))
    page.table(["key", "task", "label", "seed", "status", "config"], rows, numeric=[3],
               row_classes=classes, cls="runs")
