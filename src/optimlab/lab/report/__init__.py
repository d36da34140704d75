"""Study reports: a self-contained HTML page, a Markdown summary, CSV and JSON of the runs.

:func:`write_report` turns a study's run records (:class:`~optimlab.lab.schema.RunRecord`, or
their stored dicts, read with :meth:`RunRecord.from_dict`) into

* ``index.html`` -- a static page that opens from disk (no server, no scripts, no external
  resources; every plot is an inline SVG drawn by matplotlib inside a
  ``<figure class="plot" data-plot="...">``). At the top, what the ranking means (work to the
  settled target, ties, intervals over seeds); then the ranking across tasks with performance
  profiles; each optimizer at its best configuration (held-out re-runs when the study made
  them); one section per task (curves on log axes where values span decades, work to target
  with intervals and ``tied`` marks, first crossings beside settled steps, 2-D trajectories
  with step markers, the recorded series, a table that fits a laptop screen); sensitivity to
  every swept setting with grid-edge warnings; the batch-size trade-off; optimizer memory;
  learning-rate schedules; the environment, with the study's settings and every run's
  settings collapsed. A section with nothing to show is left out;
* ``summary.md`` -- the ranking and per-task tables in Markdown;
* ``results.csv`` -- one row per run, final metrics flattened as ``final.<name>``;
* ``results.json`` -- ``{"title", "study", "environment", "records", "arms"}``, strict JSON
  (NaN and infinities written as ``null``): every record's exact configuration and
  measurements, and each arm's statistics per task.

:func:`summary_table` is the plain-text table for the terminal; :func:`aggregate`,
:func:`ranking` and :func:`performance_profile` are the statistics behind both.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..schema import RunRecord, json_safe
from .curves import SweepLine, sweeps, swept_settings
from .records import arm_of, as_records, task_ids
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
    ranking_definition,
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
    "ranking_definition",
    "results_csv_rows",
    "summary_table",
    "sweeps",
    "swept_settings",
    "task_ids",
    "write_report",
]


def html_report(records: Sequence[RunRecord | Mapping[str, Any]], *,
                title: str = "optimlab report", study: Mapping[str, Any] | None = None,
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


def results_csv_rows(records: Sequence[RunRecord | Mapping[str, Any]]
                     ) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``results.csv``: one row per run (final metrics as ``final.<name>``,
    scalar measurements as ``scalar.<name>``, hyperparameters and task options as JSON)."""
    recs = as_records(records)
    finals: list[str] = []
    scalars: list[str] = []
    for r in recs:
        finals += [k for k in r.final if k not in finals]
        scalars += [k for k in r.scalars if k not in scalars]
    header = ["key", "task", "label", "optimizer", "seed", "batch_size", "schedule", "status",
              *(f"final.{k}" for k in finals), "steps_to_target", "first_crossing",
              "grad_evals_to_target", "examples_to_target", "time_to_target",
              "generalization_gap", "state_bytes", "n_params", "peak_memory_bytes",
              "train_seconds", "warmup_seconds", "seconds_per_step", "hyperparams",
              *(f"scalar.{k}" for k in scalars), "steps_done", "grad_evals", "wall_seconds",
              "task_options", "clip_norm", "clip_value", "error"]
    rows = []
    for r, tid in zip(recs, task_ids(recs)):
        cfg = r.config
        row = [r.key, tid, arm_of(r), cfg.optimizer, cfg.seed, cfg.batch_size, cfg.schedule,
               r.status, *(r.final.get(k) for k in finals), r.steps_to_target,
               r.first_crossing, r.grad_evals_to_target, r.examples_to_target,
               r.time_to_target, r.generalization_gap, r.state_bytes, r.n_params,
               r.peak_memory_bytes, r.train_seconds, r.warmup_seconds, r.seconds_per_step,
               json.dumps(json_safe(dict(cfg.hyperparams)), sort_keys=True),
               *(r.scalars.get(k) for k in scalars), r.steps_done, r.grad_evals,
               r.wall_seconds, json.dumps(json_safe(dict(cfg.task_options)), sort_keys=True),
               cfg.clip_norm, cfg.clip_value, r.error]
        rows.append([_cell(v) for v in row])
    return header, rows


def _arm_summary(s: ArmStats, heldout: bool) -> dict[str, Any]:
    """One arm's statistics on one task, for ``results.json``."""
    c = s.comparison_to_best
    return {"task": s.task, "arm": s.arm, "optimizer": s.optimizer, "heldout": heldout,
            "seeds": list(s.seeds), "deterministic": s.deterministic, "rank": s.rank,
            "rank_time": s.rank_time, "rank_by": s.rank_by, "is_best": s.is_best,
            "tied_with_best": s.tied_with_best,
            "comparison_to_best": c.to_dict() if c is not None else None,
            "work_to_target": s.work_to_target.to_dict(),
            "steps_to_target": s.steps_to_target.to_dict(),
            "first_crossing": s.first_crossing.to_dict(),
            "time_to_target": s.time_to_target.to_dict(),
            "examples_to_target": s.examples_to_target.to_dict(),
            "final": {k: v.to_dict() for k, v in s.final_ci.items()},
            "n_reached": s.n_reached, "n_runs": s.n_runs}


def write_report(records: Sequence[RunRecord | Mapping[str, Any]], out_dir: str | Path, *,
                 title: str = "optimlab report", study: Mapping[str, Any] | None = None,
                 environment: Mapping[str, Any] | None = None,
                 progress: Callable[[str], None] | None = None,
                 tuning: Sequence[Mapping[str, Any]] | None = None,
                 advice: Mapping[str, Any] | None = None) -> Path:
    """Write ``index.html`` (self-contained), ``summary.md``, ``results.csv`` and
    ``results.json`` into ``out_dir`` (created if needed); return the ``index.html`` path.

    Args:
        records: the runs (:class:`RunRecord`, or stored dicts of any schema version).
        out_dir: the output folder.
        title: the page title (escaped like every user string).
        study: the study description (``StudySpec.to_dict()`` as stored): its ``name``,
            ``rank_by`` (``"work"`` or ``"time"``) and ``heldout_choice`` are used; the whole
            of it is written to ``results.json`` and shown as a collapsed table.
        environment: versions and machine facts (``{"python": "3.12.1", ...}``), a table.
        progress: called with a short message once per section (for a CLI progress line).
        tuning: trials of a tuning (:func:`optimlab.lab.tune.tuning_history`): adds a
            "Tuning" section (history, learning-rate sensitivity, best configurations) and a
            ``"tuning"`` list to ``results.json``.
        advice: the advisor's answer as strings (``question``, ``header``, ``rows``,
            ``recommendation``, ``snippet``, ``notes``): an "Advice" section first, and an
            ``"advice"`` entry in ``results.json``.

    Runs labelled ``"<optimizer> best"`` are held-out re-runs of that optimizer's best
    configuration: ranked among themselves in the "best per optimizer" view, not in the
    study's ranking (unless the study has no other arms).
    """
    from .render import build_context, render_page

    say = progress or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    recs = as_records(records)
    ctx = build_context(recs, study)
    page, _ = render_page(ctx, title=title, environment=environment, progress=say,
                          tuning=tuning, advice=advice)
    index = out / "index.html"
    _write_whole(index, page)
    say("summary.md, results.csv, results.json")
    summary = markdown_summary(ctx.stats, title) if ctx.stats else f"# {title}\n\nNo runs.\n"
    if ctx.heldout:  # the best-per-optimizer view, one heading level down
        held = markdown_summary(ctx.heldout, "Best configuration per optimizer, re-run on "
                                "held-out seeds (ranked among themselves)")
        summary += "\n" + "\n".join("#" + ln if ln.startswith("#") else ln
                                     for ln in held.splitlines()) + "\n"
    _write_whole(out / "summary.md", summary)
    header, rows = results_csv_rows(recs)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(header)
    writer.writerows(rows)
    _write_whole(out / "results.csv", table.getvalue())
    payload: dict[str, Any] = {
        "title": title, "study": json_safe(study), "environment": json_safe(environment),
        "ranking_definition": ranking_definition(ctx.rank_by),
        "records": [r.to_dict() for r in recs],
        "arms": json_safe([_arm_summary(s, False) for s in ctx.stats.values()]
                          + [_arm_summary(s, True) for s in ctx.heldout.values()])}
    if tuning:
        payload["tuning"] = json_safe(list(tuning))
    if advice:
        payload["advice"] = json_safe(dict(advice))
    _write_whole(out / "results.json", json.dumps(
        payload, allow_nan=False, ensure_ascii=False, separators=(",", ":")) + "\n")
    say(f"report written in {time.perf_counter() - t0:.1f}s")
    return index


def _write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so that a reader, or
    another process writing the same report (processes sharing a study each write it), never
    sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
