"""Number formatting shared by every output, the terminal table and the Markdown summary."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .stats import ArmStats, MeanStd, aggregate, by_task, ranking

__all__ = ["fmt", "fmt_int", "fmt_mean_std", "fmt_median", "fmt_status", "markdown_summary",
           "metric_order", "summary_table",
           "task_metrics"]


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


def fmt_median(value: float, reached: int, n: int, unit: str = "") -> str:
    """A median to target with ``(reached/n)``; ``-`` when the median is infinite."""
    med = "-" if not math.isfinite(value) else (
        f"{value:.0f}" if unit == "" and float(value).is_integer() else fmt(value, 3) + unit)
    return f"{med} ({reached}/{n})"


def fmt_status(s: ArmStats) -> str:
    """``3 ok`` or ``2 ok, 1 diverged, 1 failed``."""
    parts = [f"{s.n_ok} ok"]
    if s.n_diverged:
        parts.append(f"{s.n_diverged} diverged")
    if s.n_failed:
        parts.append(f"{s.n_failed} failed")
    return ", ".join(parts)


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


def _sorted_arms(arms: Sequence[ArmStats]) -> list[ArmStats]:
    return sorted(arms, key=lambda s: (s.rank, s.rank_steps, arms.index(s)))


def _grid(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(records: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table for the terminal: per task, per arm (best first): status counts, final
    target metric mean ± std over ok seeds, median steps and time to target over seeds (``-``
    when not reached by at least half; ``(k/n)`` seeds reached) and the rank by time to target.
    """
    if not records:
        return "no runs"
    stats = aggregate(records)
    blocks = []
    for task, arms in by_task(stats).items():
        metric = arms[0].target_metric
        target = arms[0].target
        head = f"{task}  (target {metric} <= {fmt(target)})"
        rows = [["arm", "ok/div/fail", f"final {metric}", "steps to target",
                 "time to target", "rank"]]
        for s in _sorted_arms(arms):
            rows.append([s.arm, f"{s.n_ok}/{s.n_diverged}/{s.n_failed}",
                         fmt_mean_std(s.final.get(metric, MeanStd(math.nan, math.nan, 0))),
                         fmt_median(s.steps_to_target, s.n_reached, s.n_runs),
                         fmt_median(s.time_to_target, s.n_reached, s.n_runs, "s"),
                         fmt(s.rank, 3)])
        blocks.append(head + "\n" + _grid(rows))
    ranks = ranking(stats)
    if len(by_task(stats)) > 1:
        rows = [["arm", "mean rank (time)", "mean rank (steps)", "solved/tasks"]]
        rows += [[r.arm, fmt(r.mean_rank, 3), fmt(r.mean_rank_steps, 3),
                  f"{r.n_solved}/{r.n_tasks}"] for r in ranks]
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
    """``summary.md``: the overall ranking and one table per task, in Markdown."""
    parts = [f"# {_md_cell(title)}", ""]
    parts += ["Medians over seeds count a seed that missed the target (or diverged/failed) as "
              "infinity; `-` = not reached by at least half the seeds, `(k/n)` = seeds that "
              "reached it. Final metrics: mean ± std over ok runs. Rank: by median time to "
              "target within the task (1 = best); arms that missed it come last, ordered by "
              "their median final target metric.", ""]
    tasks = by_task(stats)
    parts += ["## Ranking across tasks", ""]
    rows: list[list[Any]] = [["#", "arm", "mean rank (time)", "mean rank (steps)",
                              "solved/tasks"]]
    rows += [[i + 1, r.arm, fmt(r.mean_rank, 3), fmt(r.mean_rank_steps, 3),
              f"{r.n_solved}/{r.n_tasks}"] for i, r in enumerate(ranking(stats))]
    parts += [_md_table(rows), ""]
    for task, arms in tasks.items():
        metric, target = arms[0].target_metric, arms[0].target
        names = task_metrics(arms)
        parts += [f"## {_md_cell(task)}", "", f"Target: {_md_cell(metric)} <= {fmt(target)}",
                  ""]
        rows = [["arm", "runs", *(f"final {n}" for n in names), "steps to target",
                 "time to target", "generalization gap", "rank"]]
        for s in _sorted_arms(arms):
            rows.append([s.arm, fmt_status(s),
                         *(fmt_mean_std(s.final[n]) if n in s.final else "-" for n in names),
                         fmt_median(s.steps_to_target, s.n_reached, s.n_runs),
                         fmt_median(s.time_to_target, s.n_reached, s.n_runs, "s"),
                         fmt_mean_std(s.generalization_gap), fmt(s.rank, 3)])
        parts += [_md_table(rows), ""]
    return "\n".join(parts)
