"""Study reports: a self-contained HTML page, a Markdown summary, CSV and JSON of the runs.

:func:`write_report` turns the runner's records (one dict per run, see below) into

* ``index.html`` -- a static page that opens from disk (no server, no scripts, no external
  resources; every plot is an inline SVG drawn by matplotlib inside a
  ``<figure class="plot" data-plot="...">``): an overview with the ranking across tasks and
  AlgoPerf-style performance profiles, one section per task (loss curves against steps and
  time, validation/test metrics, 2-D trajectories over contours, a table of final metrics),
  learning-rate sensitivity, the batch-size trade-off, optimizer memory, the learning-rate
  schedules, and the environment with every run's exact configuration;
* ``summary.md`` -- the ranking and per-task tables in Markdown;
* ``results.csv`` -- one row per run, final metrics flattened as ``final.<name>``;
* ``results.json`` -- ``{"title", "study", "environment", "records"}``, strict JSON (NaN and
  infinities written as ``null``).

:func:`summary_table` is the plain-text table for the terminal; :func:`aggregate`,
:func:`ranking` and :func:`performance_profile` are the statistics behind both.

A record (the runner's schema) holds ``key``, ``label`` (the arm), ``config`` (``task``,
``task_options``, ``optimizer``, ``hyperparams``, ``schedule``, ``batch_size``, ``seed``, ...),
``status`` (``ok``/``diverged``/``failed``), ``error``, ``task_info`` (``kind``, ``target``,
``target_metric``, ``n_train``, ...), ``curve``, ``evals``, ``final``, ``steps_to_target``,
``time_to_target``, ``generalization_gap``, timing and memory fields, ``trajectory`` (2-D
tasks), ``lr``, ``telemetry`` and ``extra``. Missing fields are tolerated everywhere.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .curves import SweepLine, sweeps
from .records import arm_of, config, final_of, json_safe, status_of, task_ids
from .stats import (
    ArmStats,
    MeanStd,
    RankRow,
    aggregate,
    average_ranks,
    by_task,
    mean_std,
    performance_profile,
    performance_ratios,
    ranking,
)
from .text import markdown_summary, summary_table

__all__ = [
    "ArmStats",
    "MeanStd",
    "RankRow",
    "SweepLine",
    "aggregate",
    "average_ranks",
    "by_task",
    "html_report",
    "json_safe",
    "mean_std",
    "performance_profile",
    "performance_ratios",
    "ranking",
    "results_csv_rows",
    "summary_table",
    "sweeps",
    "task_ids",
    "write_report",
]

def html_report(records: Sequence[Mapping[str, Any]], *, title: str = "optimlab report",
                study: Mapping[str, Any] | None = None,
                environment: Mapping[str, Any] | None = None,
                progress: Callable[[str], None] | None = None,
                tuning: Sequence[Mapping[str, Any]] | None = None,
                advice: Mapping[str, Any] | None = None) -> tuple[str, int]:
    """The report page as HTML text and the number of plots it holds (see
    :func:`write_report`; needs matplotlib)."""
    from .render import html_report as render

    return render(records, title=title, study=study, environment=environment,
                  progress=progress, tuning=tuning, advice=advice)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(json_safe(value), sort_keys=True)
    return value


def results_csv_rows(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``results.csv``: one row per run (final metrics as ``final.<name>``,
    extra metrics as ``extra.<name>``, hyperparameters and task options as JSON)."""
    finals: list[str] = []
    extras: list[str] = []
    for r in records:
        finals += [k for k in final_of(r) if k not in finals]
        extra = r.get("extra") if isinstance(r.get("extra"), dict) else {}
        extras += [k for k in extra if k not in extras]
    header = ["key", "task", "label", "optimizer", "seed", "batch_size", "schedule", "status",
              *(f"final.{k}" for k in finals), "steps_to_target", "time_to_target",
              "generalization_gap", "state_bytes", "n_params", "peak_memory_bytes",
              "train_seconds", "hyperparams", *(f"extra.{k}" for k in extras), "steps_done",
              "wall_seconds", "task_options", "error"]
    rows = []
    for r, tid in zip(records, task_ids(records)):
        cfg = config(r)
        extra = r.get("extra") if isinstance(r.get("extra"), dict) else {}
        row = [r.get("key"), tid, arm_of(r), cfg.get("optimizer"), cfg.get("seed"),
               cfg.get("batch_size"), cfg.get("schedule"), status_of(r),
               *(final_of(r).get(k) for k in finals), r.get("steps_to_target"),
               r.get("time_to_target"), r.get("generalization_gap"), r.get("state_bytes"),
               r.get("n_params"), r.get("peak_memory_bytes"), r.get("train_seconds"),
               json.dumps(json_safe(cfg.get("hyperparams") or {}), sort_keys=True),
               *(extra.get(k) for k in extras), r.get("steps_done"), r.get("wall_seconds"),
               json.dumps(json_safe(cfg.get("task_options") or {}), sort_keys=True),
               r.get("error")]
        rows.append([_cell(v) for v in row])
    return header, rows


def write_report(records: list[dict[str, Any]], out_dir: str | Path, *,
                 title: str = "optimlab report", study: dict[str, Any] | None = None,
                 environment: dict[str, Any] | None = None,
                 progress: Callable[[str], None] | None = None,
                 tuning: list[dict[str, Any]] | None = None,
                 advice: Mapping[str, Any] | None = None) -> Path:
    """Write ``index.html`` (self-contained), ``summary.md``, ``results.csv`` and
    ``results.json`` into ``out_dir`` (created if needed); return the ``index.html`` path.

    Args:
        records: one dict per run, as the runner writes them (see the module docstring).
        out_dir: the output folder.
        title: the page title (escaped like every user string).
        study: the study description, shown as JSON in the environment section.
        environment: versions and machine facts (``{"python": "3.12.1", ...}``), a table.
        progress: called with a short message once per section (for a CLI progress line).
        tuning: trials of a tuning (:func:`optimlab.lab.tune.tuning_history`): adds a
            "Tuning" section (history, learning-rate sensitivity, best configurations) and a
            ``"tuning"`` list to ``results.json``.
        advice: the advisor's answer as strings (``question``, ``header``, ``rows``,
            ``recommendation``, ``snippet``, ``notes``): an "Advice" section first, and an
            ``"advice"`` entry in ``results.json``.
    """
    say = progress or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    page, _ = html_report(records, title=title, study=study, environment=environment,
                          progress=say, tuning=tuning, advice=advice)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    say("summary.md, results.csv, results.json")
    stats = aggregate(records)
    (out / "summary.md").write_text(markdown_summary(stats, title) if records
                                    else f"# {title}\n\nNo runs.\n", encoding="utf-8")
    header, rows = results_csv_rows(records)
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    payload = {"title": title, "study": json_safe(study), "environment": json_safe(environment),
               "records": json_safe(list(records))}
    if tuning:
        payload["tuning"] = json_safe(list(tuning))
    if advice:
        payload["advice"] = json_safe(dict(advice))
    (out / "results.json").write_text(
        json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":")) + "\n",
        encoding="utf-8")
    say(f"report written in {time.perf_counter() - t0:.1f}s")
    return index

