"""Number formatting shared by every output, the terminal table and the Markdown summary.

Both tables state what the ranking means (:func:`~optimlab.lab.report.stats.ranking_definition`),
show intervals over seeds as ``412 [380, 450]`` (``[380, inf)`` when seeds did not reach the
target), mark arms that cannot be told from the best as ``tied``, and count a run as having
reached its target only when it *settled* there (stayed at or below it until the end).
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from ..schema import RunRecord
from ..statistics import METHODS, Interval
from .stats import (
    NONNEG_METRICS,
    ArmStats,
    MeanStd,
    aggregate,
    by_task,
    ranked,
    ranking,
    ranking_definition,
)

__all__ = ["NONNEG_METRICS", "TINY", "fmt", "fmt_int", "fmt_interval", "fmt_mean_std",
           "fmt_median", "fmt_metric", "fmt_status", "fmt_to_target", "fmt_vs_best",
           "markdown_summary", "metric_order", "summary_table", "task_metrics"]

#: Non-negative metrics: a value below :data:`TINY` is shown as ``< 1e-16`` (float64 rounding:
#: ``f - f*`` near the minimum comes out as e.g. -1.6e-17 or 3e-18, both meaning "at the
#: minimum").
TINY = 1e-16


def fmt(value: Any, digits: int = 4) -> str:
    """A number in ``digits`` significant digits; ``-`` for missing/NaN, ``inf`` for infinity."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def fmt_metric(value: Any, name: str = "", digits: int = 4) -> str:
    """A metric value; a value of a non-negative metric (:data:`NONNEG_METRICS`) below
    :data:`TINY`, rounding negatives included, as ``< 1e-16``."""
    text = fmt(value, digits)
    if name in NONNEG_METRICS and text not in ("-", "inf", "-inf") and float(value) < TINY:
        return f"< {TINY:g}"
    return text


def fmt_mean_std(ms: MeanStd) -> str:
    """``mean ± std`` (``mean`` alone for one value, ``-`` for none)."""
    if ms.n == 0:
        return "-"
    if ms.n == 1 or math.isnan(ms.std):
        return fmt(ms.mean)
    std = 0.0 if ms.std <= 1e-9 * abs(ms.mean) else ms.std  # rounding noise of equal values
    return f"{fmt(ms.mean)} ± {fmt(std, 3)}"


def fmt_int(value: Any) -> str:
    """An integer-valued number with thousands separators (``-`` for missing)."""
    text = fmt(value)
    if text in ("-", "inf", "-inf"):
        return text
    v = float(value)
    return f"{v:,.0f}" if v.is_integer() else text


def _count(value: float) -> str:
    """A count (steps, evaluations) or a mean of counts: whole numbers from 100 on (a
    fraction of a step is below any evaluation grid), 3 significant digits below."""
    if math.isfinite(value) and (abs(value) >= 100 or float(value).is_integer()):
        return f"{value:.0f}"
    return fmt(value, 3)


def fmt_interval(iv: Interval, *, metric: str = "", unit: str = "", count: bool = False,
                 digits: int = 4) -> str:
    """``412 [380, 450]``: the center and its confidence interval (``[380, inf)`` when the
    upper bound is censored), the value alone for a point (one run, deterministic, identical
    values), ``-`` when empty. ``count``: integers as integers; ``metric``: see
    :func:`fmt_metric`; ``digits``: significant digits of the center (bounds: 3)."""
    if iv.n == 0 or math.isnan(iv.center):
        return "-"

    def bound(v: float) -> str:
        if count:
            return _count(v)
        # a t bound of a non-negative metric can fall below 0; the metric cannot
        return fmt(max(v, 0.0) if metric in NONNEG_METRICS else v, 3)

    text = (_count(iv.center) if count else fmt_metric(iv.center, metric, digits)) + unit
    if not (iv.is_point or iv.low == iv.high) and not math.isnan(iv.low):
        close = ")" if math.isinf(iv.high) else "]"
        text += f" [{bound(iv.low)}, {bound(iv.high)}{close}"
    return text


def fmt_to_target(iv: Interval | float, reached: int, n: int, unit: str = "") -> str:
    """Work, steps or time to target with ``(k/n)`` runs settled: ``412 [380, 450] (3/3)``;
    ``not settled (1/3)`` when the center is infinite (more than half did not settle)."""
    if not isinstance(iv, Interval):  # a plain median
        value = float(iv)
        iv = Interval(value, value, value, 1, "single")
    tail = f" ({reached}/{n})"
    if not math.isfinite(iv.center):
        return "not settled" + tail
    return fmt_interval(iv, unit=unit and " " + unit, count=unit == "", digits=3) + tail


fmt_median = fmt_to_target  # the name the report's modules imported before


def fmt_status(s: ArmStats) -> str:
    """``3 ok`` or ``2 ok, 1 diverged, 1 failed``; ``deterministic`` when one seed says all."""
    parts = [f"{s.n_ok} ok"]
    if s.n_diverged:
        parts.append(f"{s.n_diverged} diverged")
    if s.n_failed:
        parts.append(f"{s.n_failed} failed")
    if s.deterministic:
        parts.append("deterministic")
    return ", ".join(parts)


def fmt_vs_best(s: ArmStats) -> str:
    """The arm against the task's best arm: ``best``, ``tied``, or the difference with its
    p-value (``exact`` for deterministic arms): ``x1.35`` = the arm's mean work (or time) over
    the best arm's, a seed that did not reach counting as the task's budget; ``+0.012`` on the
    final target metric when the best arm did not settle. The ratio of an arm with seeds that
    did not settle is a lower bound (they would have needed more than the budget):
    ``≥x3.6``."""
    if s.is_best:
        return "best"
    c = s.comparison_to_best
    if c is None:
        return "-"
    if c.tied:
        return "tied"
    if s.compared_on in ("work", "time") and math.isfinite(c.ratio):
        diff = f"x{c.ratio:.3g}"
        if s.n_reached < len(s.records):
            diff = "≥" + diff
    else:
        diff = f"{c.diff:+.3g}" if math.isfinite(c.diff) else "worse"
    evidence = "exact" if c.method == "exact" else f"p={c.p_value:.2g}"
    return f"{diff} ({evidence})"


def metric_order(names: Sequence[str], target_metric: str) -> list[str]:
    """Final-metric columns: the target metric, train loss, validation, test, then the rest."""

    def key(name: str) -> tuple[int, str]:
        if name == target_metric:
            return (0, "")
        if name == "train_loss":
            return (1, "")
        for i, prefix in enumerate(("train_", "val_", "test_")):
            if name.startswith(prefix):
                return (2 + i, name)
        return (5, name)

    return sorted(dict.fromkeys(names), key=key)


def task_metrics(arms: Sequence[ArmStats]) -> list[str]:
    """The final-metric names of a task's arms, in :func:`metric_order`."""
    names: list[str] = []
    for s in arms:
        names += [k for k in s.final if k not in names]
    return metric_order(names, arms[0].target_metric) if arms else []


def _grid(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _several_evals(arms: Sequence[ArmStats]) -> bool:
    """Whether an arm's work differs from its steps (several gradient evaluations per step)."""
    return any(s.work_to_target.center != s.steps_to_target.center for s in arms
               if math.isfinite(s.work_to_target.center))


def _final_target(s: ArmStats) -> str:
    iv = s.final_ci.get(s.target_metric)
    return fmt_interval(iv, metric=s.target_metric) if iv is not None else "-"


def _task_head(arms: Sequence[ArmStats]) -> str:
    """Target, evaluation grid (the resolution of the settled step) and determinism."""
    s = arms[0]
    head = f"target {s.target_metric} <= {fmt(s.target)}"
    recs = [r for a in arms for r in a.records]
    grid = sorted({r.config.eval_every for r in recs if r.config.eval_every is not None})
    res = max((r.target_resolution for r in recs if r.target_resolution is not None),
              default=None)
    if grid and all(r.config.eval_every is not None for r in recs):
        head += f"; evaluated every {', '.join(map(str, grid))} steps"
    else:
        head += "; adaptive evaluation grid"
        if res is not None:
            head += f" (settled steps resolved to within {res} steps)"
    if all(a.deterministic for a in arms):
        head += "; deterministic: one seed per arm"
    return head


def summary_table(records: Sequence[RunRecord | Mapping[str, Any]], *,
                  rank_by: str = "work") -> str:
    """A plain-text table for the terminal: the ranking's definition, then per task, per arm
    (best first): rank, runs by status, the final target metric, work (and steps, when they
    differ) to the settled step and time to target with their intervals over seeds and
    ``(k/n)`` runs settled, and how the arm compares with the best (``best``, ``tied``, or
    the difference); then the ranking across tasks."""
    if not records:
        return "no runs"
    stats = aggregate(records, rank_by=rank_by)
    blocks = [textwrap.fill(ranking_definition(rank_by), 100)]
    tasks = by_task(stats)
    for task, arms in tasks.items():
        metric = arms[0].target_metric
        steps = _several_evals(arms)
        rows = [["#", "arm", "ok/div/fail", f"final {metric}", "work to target",
                 *(["steps settled"] if steps else []), "time to target", "vs best"]]
        for s in ranked(arms):
            rows.append([fmt(s.primary_rank, 3), s.arm,
                         f"{s.n_ok}/{s.n_diverged}/{s.n_failed}"
                         + (" det." if s.deterministic else ""),
                         _final_target(s), fmt_to_target(s.work_to_target, s.n_reached, s.n_runs),
                         *([fmt_to_target(s.steps_to_target, s.n_reached, s.n_runs)]
                           if steps else []),
                         fmt_to_target(s.time_to_target, s.n_reached, s.n_runs, "s"),
                         fmt_vs_best(s)])
        blocks.append(f"{task}  ({_task_head(arms)})\n" + _grid(rows))
    if len(tasks) > 1:
        rows = [["arm", f"mean rank ({rank_by})", "best or tied", "solved/tasks"]]
        rows += [[r.arm, fmt(r.mean_rank, 3), f"{r.n_tied_first}/{r.n_tasks}",
                  f"{r.n_solved}/{r.n_tasks}"] for r in ranking(stats)]
        blocks.append("overall ranking (mean over tasks)\n" + _grid(rows))
    return "\n\n".join(blocks)


def _md_cell(text: Any) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(_md_cell(c) for c in rows[0]) + " |",
           "|" + "|".join("---" for _ in rows[0]) + "|"]
    out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(out)


def markdown_summary(stats: Mapping[tuple[str, str], ArmStats], title: str) -> str:
    """``summary.md``: what the ranking means, the ranking across tasks and one table per task
    (intervals over seeds, ``tied`` marks, settled steps), in Markdown."""
    rank_by = next(iter(stats.values())).rank_by if stats else "work"
    parts = [f"# {_md_cell(title)}", "", _md_cell(ranking_definition(rank_by)), ""]
    parts += ["Intervals: `center [low, high]` over seeds, "
              f"{_md_cell(METHODS['t'])} (95%) when every seed has a value, "
              f"{_md_cell(METHODS['order'])} otherwise (`inf)`: too few seeds reached it); "
              "`(k/n)`: runs that settled at the target (stayed at or below it until the end "
              "of the run; a run ending above its target never counts). `vs best`: `tied` "
              "when the difference from the best arm is within noise, else `x` the ratio of the "
              "mean work (or time) to the best arm's, a seed that did not settle counting as "
              "the task's budget, or the difference of the final target metric when no arm "
              "settled, with its p-value.", ""]
    tasks = by_task(stats)
    parts += ["## Ranking across tasks", ""]
    rows: list[list[Any]] = [["#", "arm", f"mean rank ({rank_by})", "best or tied",
                              "solved/tasks", "mean rank (time)" if rank_by == "work"
                              else "mean rank (work)"]]
    for i, r in enumerate(ranking(stats)):
        other = r.mean_rank_time if rank_by == "work" else r.mean_rank_work
        rows.append([i + 1, r.arm, fmt(r.mean_rank, 3), f"{r.n_tied_first}/{r.n_tasks}",
                     f"{r.n_solved}/{r.n_tasks}", fmt(other, 3)])
    parts += [_md_table(rows), ""]
    for task, arms in tasks.items():
        metric = arms[0].target_metric
        names = task_metrics(arms)
        steps = _several_evals(arms)
        crossing = any(math.isfinite(s.first_crossing.center)
                       and s.first_crossing.center != s.steps_to_target.center for s in arms)
        parts += [f"## {_md_cell(task)}", "", _md_cell(_task_head(arms)), ""]
        rows = [["#", "arm", "runs", *(f"final {n}" for n in names), "work to target",
                 *(["steps settled"] if steps else []),
                 *(["first crossing"] if crossing else []), "time to target",
                 "generalization gap", "vs best"]]
        for s in ranked(arms):
            rows.append([fmt(s.primary_rank, 3), s.arm, fmt_status(s),
                         *(fmt_interval(s.final_ci[n], metric=n) if n in s.final_ci else "-"
                           for n in names),
                         fmt_to_target(s.work_to_target, s.n_reached, s.n_runs),
                         *([fmt_to_target(s.steps_to_target, s.n_reached, s.n_runs)]
                           if steps else []),
                         *([fmt_interval(s.first_crossing, count=True)] if crossing else []),
                         fmt_to_target(s.time_to_target, s.n_reached, s.n_runs, "s"),
                         fmt_mean_std(s.generalization_gap), fmt_vs_best(s)])
        parts += [_md_table(rows), ""]
        if metric not in names:
            parts += [f"(no final {_md_cell(metric)} recorded)", ""]
    return "\n".join(parts)
