"""The advice in words: the ranked table, the terminal text, the report section, the
Markdown file and the code snippet that builds the chosen optimizer."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..schema import ENGINE_OPTIONS
from ..statistics import Interval
from .measured import MIN_TRIALS, Advice

__all__ = ["advice_for_report", "advice_table", "advice_text", "snippet",
           "write_advice_report"]


def _class_defaults(optimizer: str) -> dict[str, Any]:
    from ..optimizers import _allowed, lookup
    return _allowed(lookup(optimizer).cls)


def snippet(optimizer: str, hyperparams: Mapping[str, Any], *, schedule: str = "constant",
            steps: int | None = None, batch_size: Any = None, task: str = "",
            budget: float | None = None) -> str:
    """Python code that builds the recommended optimizer (arguments that differ from the
    class's defaults, and the learning rate), with its schedule."""
    from ..optimizers import lookup
    cls = lookup(optimizer).cls
    defaults = _class_defaults(optimizer)
    args = []
    for key, value in sorted(hyperparams.items()):
        if key in ENGINE_OPTIONS:
            continue
        if key != "lr" and defaults.get(key) == (tuple(value) if isinstance(value, list)
                                                 else value):
            continue
        if isinstance(value, list):
            value = tuple(value)
        text = f"{value:.3g}" if isinstance(value, float) else repr(value)
        if isinstance(value, tuple):
            text = "(" + ", ".join(f"{v:.4g}" if isinstance(v, float) else repr(v)
                                   for v in value) + ")"
        args.append(f"{key}={text}")
    module = "ol" if cls.__module__.startswith("optimlab") else cls.__module__
    lines = ["import optimlab as ol" if module == "ol" else f"import {module}", "",
             f"optimizer = {module}.{cls.__name__}(model.parameters(), {', '.join(args)})"]
    lr = hyperparams.get("lr")
    total = steps or 1000
    sched = {
        "cosine": f"ol.schedules.cosine_annealing({lr:.3g}, T_max={total})",
        "warmup-cosine": f"ol.schedules.warmup_cosine({lr:.3g}, {max(total // 20, 1)}, "
                         f"{total})",
        "step": f"ol.schedules.step_decay({lr:.3g}, step_size={max(total // 3, 1)})",
        "linear": f"ol.schedules.linear({lr:.3g}, 0.0, {total})",
    }.get(schedule)
    if sched is not None and isinstance(lr, (int, float)):
        lines.append(f"scheduler = ol.ScheduledLR(optimizer, {sched})  # scheduler.step() "
                     "after each optimizer.step()")
    how = f"optimlab advise --task {task}" + (f" --budget {budget:g}" if budget else "")
    lines.append(f"# measured by `{how}`: batch size {batch_size}, {total} steps, "
                 f"{schedule} schedule")
    return "\n".join(lines)


def _g(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def _iv(i: Interval, fmt: str = ".3g") -> str:
    return i.format(lambda x: "not reached" if math.isinf(x) else format(x, fmt))


def _vs_best(row: Any) -> str:
    c = row.comparison
    if c is None:
        return "best"
    if row.tied_with_best:
        return "tied (within noise)"
    if math.isfinite(c.ratio):
        return f"{c.ratio:.2g}x the work"
    return "worse"


def advice_table(advice: Advice) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ranked table (plain strings, for the terminal, Markdown, HTML)."""
    header = ["rank", "optimizer", "work to target", "vs best", "seeds settled",
              "final metric", "time to target (s)", "test acc.", "state B/param",
              "good lr range", "tuned lr"]
    rows = []
    for r in advice.rows:
        lr_range = "-" if r.lr_good_range is None else (
            f"{r.lr_good_range[0]:.2g}..{r.lr_good_range[1]:.2g} "
            f"({_g(r.lr_good_decades, '.2f')} dec.)")
        rows.append([_g(r.rank, "g"), r.optimizer, _iv(r.work_to_target, ".4g"), _vs_best(r),
                     f"{r.reached}/{r.runs}", f"{r.metric} {_iv(r.final)}",
                     _iv(r.time_to_target), _g(r.test_accuracy, ".4f"),
                     _g(r.state_bytes_per_param), lr_range, _g(r.hyperparams.get("lr"))])
    return header, rows


def _question(advice: Advice) -> str:
    return (f"Which optimizer for {advice.task}? Every optimizer got the same tuning budget: "
            f"{advice.trials} trials (at least {MIN_TRIALS}) of {advice.steps} steps, tuned "
            "for the ranking objective (work to target); each best configuration was re-run "
            "on held-out seeds. Ranked by gradient evaluations until a run settles at the "
            "target (mean over seeds with a 95% interval; a seed that never settled counts "
            "as the budget), then by the final target metric; \"tied\": the 95% interval of "
            "the difference from the best (paired on seeds) contains 0. Good lr range: "
            "tuning trials that settled with at most 25% more work than the best one.")


def advice_text(advice: Advice) -> str:
    """The advice for the terminal: the table, the verdict and the snippet."""
    header, rows = advice_table(advice)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = [_question(advice), ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines += [""] + [f"note: {n}" for n in advice.notes]
    lines.append(advice.verdict)
    if advice.rows:
        lines += ["", *("    " + line for line in advice.snippet.splitlines())]
    return "\n".join(lines)


def advice_for_report(advice: Advice) -> dict[str, Any]:
    """The advice as strings for the report's "Advice" section (and ``results.json``)."""
    header, rows = advice_table(advice)
    cal = advice.calibration
    measured = (f"Budget {advice.budget_minutes:g} minutes"
                + (f" (raised to about {advice.minutes_planned:.1f})"
                   if advice.minutes_planned > advice.budget_minutes else "")
                + f"; one run of {cal.steps} steps took {cal.seconds_per_run:.2f} s (median "
                  f"of {len(cal.timings)} timings).")
    return {"question": _question(advice) + " " + measured, "header": header, "rows": rows,
            "notes": list(advice.notes), "recommendation": advice.verdict,
            "snippet": advice.snippet}


def write_advice_report(advice: Advice, store: str | None, out_dir: str | Path,
                        progress: Any = None) -> Path:
    """The advisor's report: the advice first, then the re-runs' report and the tuning;
    ``advice.md`` and ``advice.json`` beside it."""
    from ..environment import environment
    from ..report import write_report
    from ..store import open_store
    from ..tuning import tuning_history

    records: list[Any] = []
    spec: dict[str, Any] = {}
    if advice.rerun_study:
        with open_store(store) as st:
            records = st.study_records(advice.rerun_study)
            spec = st.study_spec(advice.rerun_study)
    history = tuning_history(advice.tune_name, store)
    out = Path(out_dir)
    index = write_report(records, out, title=f"optimlab advise: {advice.task}", study=spec,
                         environment=environment(), progress=progress, tuning=history,
                         advice=advice_for_report(advice))
    (out / "advice.md").write_text(_markdown(advice), encoding="utf-8")
    (out / "advice.json").write_text(json.dumps(advice.to_dict(), indent=1) + "\n",
                                     encoding="utf-8")
    return index


def _markdown(advice: Advice) -> str:
    d = advice_for_report(advice)
    lines = [f"# Which optimizer for {advice.task}?", "", d["question"], "",
             "| " + " | ".join(d["header"]) + " |",
             "|" + "---|" * len(d["header"])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in d["rows"]]
    lines += [""] + [f"- {n}" for n in d["notes"]] + ["", d["recommendation"], "", "```python",
                                                     advice.snippet, "```", ""]
    return "\n".join(lines)
