"""The optimizer advisor: "which optimizer for this project?", answered with evidence.

Two modes:

* **Measured** (:func:`advise`): an equal-budget tuning study of candidate optimizers on the
  user's task (:mod:`optimlab.lab.tune`), the best configuration of each re-run on several
  seeds, and a ranked table: time to target, final metric, generalization gap, optimizer
  memory per parameter, robustness across seeds and across learning rates (the width of the
  good learning-rate range), plus a recommended configuration with a code snippet.
* **No compute** (:func:`rules`): rules distilled from results the lab has recorded (the user's
  results store, or the evidence shipped with optimlab from its default study), each rule
  labelled with the evidence behind it: which study, tasks, runs and seeds.

:func:`distill` turns stored runs into the compact *evidence* the rules are read from; the
shipped ``studies/evidence.json`` is ``distill`` of the default study's runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report.stats import aggregate

__all__ = ["PACKAGED_EVIDENCE", "Rule", "distill", "load_evidence", "rules"]

#: Evidence distilled from the default study, shipped with optimlab.
PACKAGED_EVIDENCE = Path(__file__).parent / "studies" / "evidence.json"

ADAPTIVE = ("adagrad", "rmsprop", "adam", "adamw", "nadam", "radam", "adamax", "adadelta")
SGD_FAMILY = ("sgd", "momentum", "nesterov")


@dataclass(frozen=True)
class Rule:
    """A piece of advice and the evidence behind it."""

    text: str
    evidence: str


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def distill(records: Sequence[Mapping[str, Any]], *, study: str, source: str = ""
            ) -> dict[str, Any]:
    """Compact, JSON-able evidence from a study's runs: per task and arm, the statistics
    the rules need (rank, time and steps to target, seeds that reached it, final target
    metric, test accuracy, generalization gap, state bytes per parameter, divergences)."""
    stats = aggregate(records)
    tasks: dict[str, Any] = {}
    for (task, arm), s in stats.items():
        first = s.records[0]
        info = first.get("task_info", {})
        t = tasks.setdefault(task, {
            "kind": info.get("kind", "?"), "target": _finite(info.get("target")),
            "target_metric": info.get("target_metric", "train_loss"),
            "steps": first.get("config", {}).get("steps"),
            "n_params": _finite(s.n_params), "arms": {}})
        acc = s.final.get("test_accuracy")
        t["arms"][arm] = {
            "optimizer": s.optimizer,
            "hyperparams": first.get("config", {}).get("hyperparams", {}),
            "runs": len(s.records),
            "diverged": s.status_counts.get("diverged", 0),
            "failed": s.status_counts.get("failed", 0),
            "reached": s.n_reached,
            "rank": _finite(s.rank),
            "time_to_target": _finite(s.time_to_target),
            "steps_to_target": _finite(s.steps_to_target),
            "final_target_median": _finite(s.final_target_median),
            "test_accuracy": _finite(acc.mean) if acc else None,
            "generalization_gap": _finite(s.generalization_gap.mean),
            "state_bytes_per_param": _finite(s.state_bytes_per_param),
        }
    seeds = sorted({r.get("config", {}).get("seed") for r in records
                    if r.get("config", {}).get("seed") is not None})
    return {"study": study, "source": source, "runs": len(records), "seeds": seeds,
            "tasks": tasks}


def load_evidence(store: Any | None = None) -> list[dict[str, Any]]:
    """Evidence from every study in ``store`` that has finished runs; the packaged evidence
    when there is none (or no store)."""
    out: list[dict[str, Any]] = []
    if store is not None:
        for s in store.studies():
            if s["finished"]:
                out.append(distill(store.study_records(s["name"]), study=s["name"],
                                   source=store.url))
    if not out:
        out.append(json.loads(PACKAGED_EVIDENCE.read_text(encoding="utf-8")))
    return out


def _label(ev: Mapping[str, Any], tasks: Iterable[str]) -> str:
    tasks = list(tasks)
    seeds = ev.get("seeds", [])
    where = f"study {ev['study']!r}" + (f" ({ev['source']})" if ev.get("source") else "")
    return (f"{where}: {', '.join(tasks)}; {len(seeds)} seed{'s' * (len(seeds) != 1)} per "
            f"arm; {ev.get('runs', '?')} runs")


def _winner(arms: Mapping[str, Mapping[str, Any]]) -> str | None:
    ranked = [(a["rank"], name) for name, a in arms.items() if a.get("rank") is not None]
    return min(ranked)[1] if ranked else None


def rules(evidence: Sequence[Mapping[str, Any]]) -> list[Rule]:
    """Advice distilled from ``evidence`` (see :func:`distill`), each rule with its evidence."""
    out: list[Rule] = []
    for ev in evidence:
        tasks = ev["tasks"]
        if not tasks:
            continue
        # 1. fastest to target, per kind of task
        by_kind: dict[str, list[str]] = {}
        for name, t in tasks.items():
            by_kind.setdefault(t["kind"], []).append(name)
        for kind, names in by_kind.items():
            wins: dict[str, list[str]] = {}
            for name in names:
                w = _winner(tasks[name]["arms"])
                if w is not None and tasks[name]["arms"][w]["time_to_target"] is not None:
                    wins.setdefault(w, []).append(name)
            for arm, won in sorted(wins.items(), key=lambda kv: -len(kv[1])):
                out.append(Rule(
                    f"On {kind} tasks, {arm} reached the target fastest on {len(won)} of "
                    f"{len(names)} ({', '.join(won)}).", _label(ev, names)))
        # 2. adaptive vs the SGD family, task by task
        faster: list[str] = []
        slower: list[str] = []
        for name, t in tasks.items():
            def best(family: Sequence[str], t: Mapping[str, Any] = t) -> float:
                times = [a["time_to_target"] for a in t["arms"].values()
                         if a["optimizer"] in family and a["time_to_target"] is not None]
                return min(times) if times else math.inf
            a, s = best(ADAPTIVE), best(SGD_FAMILY)
            if math.isfinite(a) or math.isfinite(s):
                (faster if a < s else slower).append(name)
        if faster or slower:
            out.append(Rule(
                f"The best adaptive method (AdaGrad/RMSprop/Adam family) beat the best of SGD, "
                f"momentum and Nesterov to the target on {len(faster)} of "
                f"{len(faster) + len(slower)} tasks"
                + (f" ({', '.join(faster)})" if faster else "")
                + (f"; the SGD family won on {', '.join(slower)}." if slower else "."),
                _label(ev, faster + slower)))
        # 3. divergence
        for name, t in tasks.items():
            for arm, a in t["arms"].items():
                if a["diverged"]:
                    lr = a["hyperparams"].get("lr")
                    out.append(Rule(
                        f"{arm} diverged on {name} in {a['diverged']} of {a['runs']} runs"
                        + (f" at lr={lr:g}" if isinstance(lr, (int, float)) else "")
                        + ": lower the learning rate, or add warm-up or gradient clipping.",
                        _label(ev, [name])))
        # 4. never reached the target
        for name, t in tasks.items():
            missed = [arm for arm, a in t["arms"].items()
                      if a["reached"] == 0 and a["diverged"] < a["runs"]]
            if missed:
                out.append(Rule(
                    f"On {name}, {', '.join(missed)} did not reach {t['target_metric']} <= "
                    f"{t['target']:g} within {t['steps']} steps: budget more steps or tune "
                    "their learning rates.", _label(ev, [name])))
        # 5. generalization on tasks with a test set
        for name, t in tasks.items():
            accs = {arm: a["test_accuracy"] for arm, a in t["arms"].items()
                    if a["test_accuracy"] is not None}
            gaps = {arm: a["generalization_gap"] for arm, a in t["arms"].items()
                    if a["generalization_gap"] is not None}
            if len(accs) >= 2:
                best_acc = max(accs, key=lambda k: accs[k])
                worst = min(accs, key=lambda k: accs[k])
                if accs[best_acc] - accs[worst] < 1e-9:
                    text = (f"On {name}, every optimizer ended at the same test accuracy "
                            f"({accs[best_acc]:.4f}): they found the same solution")
                else:
                    text = (f"On {name}, the best test accuracy was {best_acc}'s "
                            f"({accs[best_acc]:.4f}; lowest: {worst}, {accs[worst]:.4f})")
                if len(gaps) >= 2 and accs[best_acc] - accs[worst] >= 1e-9:
                    small = min(gaps, key=lambda k: gaps[k])
                    text += f"; the smallest generalization gap was {small}'s ({gaps[small]:.3g})"
                out.append(Rule(text + ".", _label(ev, [name])))
        # 6. memory
        # on the task with the most parameters, where fixed-size state (step counters)
        # no longer counts
        sized = [(t.get("n_params") or 0, n) for n, t in tasks.items()]
        biggest = max(sized)[1]
        mem = {arm: a["state_bytes_per_param"] for arm, a in tasks[biggest]["arms"].items()
               if a["state_bytes_per_param"] is not None}
        if len(mem) >= 2:
            order = sorted(mem.items(), key=lambda kv: kv[1])
            out.append(Rule(
                "Optimizer state per parameter: "
                + ", ".join(f"{arm} {b:.3g} B" for arm, b in order)
                + f" (on {biggest}). When memory is the constraint, prefer the left end.",
                _label(ev, [biggest])))
    return out


# --------------------------------------------------------------------------- measured advice

#: Trials per optimizer never exceed this: beyond it a learning-rate search gains little.
MAX_TRIALS = 40
#: Fewer trials than this cannot separate optimizers: the budget is refused as too small.
MIN_TRIALS = 4
#: Seconds a process pool needs to start, and the report to render (budget bookkeeping).
POOL_SECONDS, REPORT_SECONDS = 8.0, 6.0


@dataclass
class AdviceRow:
    """One optimizer's evidence in the advisor's ranked table."""

    rank: float
    optimizer: str
    hyperparams: dict[str, Any]
    schedule: str
    time_to_target: float | None
    steps_to_target: float | None
    reached: int
    runs: int
    metric: str
    final_mean: float | None
    final_std: float | None
    test_accuracy: float | None
    generalization_gap: float | None
    state_bytes_per_param: float | None
    lr_good_decades: float | None
    lr_good_range: tuple[float, float] | None
    tuning_best: float | None


@dataclass
class Advice:
    """The advisor's answer: the ranked table, the recommendation and how it was measured."""

    task: str
    budget_minutes: float
    trials: int
    steps: int
    seconds_per_run: float
    rows: list[AdviceRow]
    snippet: str
    tune_name: str
    rerun_study: str | None
    notes: list[str]

    @property
    def recommended(self) -> AdviceRow | None:
        """The top-ranked optimizer (``None`` when every one diverged)."""
        return self.rows[0] if self.rows else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (for the report and ``advice.json``)."""
        from dataclasses import asdict
        return json.loads(json.dumps(asdict(self), default=str))


def _lr_robustness(trials: Sequence[Mapping[str, Any]], slack: float = 0.0
                   ) -> tuple[float | None, tuple[float, float] | None]:
    """Width (in decades) of the good learning-rate range among a study's complete trials:
    a trial is good when its objective is within 10% of the best one's (plus ``slack``: the
    task's target when the objective is the target metric, so that every learning rate that
    solves the task counts)."""
    pts = [(t["hyperparams"].get("lr"), t["value"]) for t in trials
           if t.get("value") is not None and t.get("state") == "complete"
           and isinstance(t.get("hyperparams", {}).get("lr"), (int, float))]
    pts = [(lr, v) for lr, v in pts if lr > 0 and math.isfinite(v)]
    if len(pts) < 3:
        return None, None
    best = min(v for _, v in pts)
    threshold = best + 0.1 * abs(best) + slack
    good = [lr for lr, v in pts if v <= threshold]
    lo, hi = min(good), max(good)
    return math.log10(hi / lo), (lo, hi)


def _class_defaults(optimizer: str) -> dict[str, Any]:
    from .optimizers import _allowed, lookup
    return _allowed(lookup(optimizer).cls)


def snippet(optimizer: str, hyperparams: Mapping[str, Any], *, schedule: str = "constant",
            steps: int | None = None, batch_size: Any = None, task: str = "",
            budget: float | None = None) -> str:
    """Python code that builds the recommended optimizer (arguments that differ from the
    class's defaults, and the learning rate), with its schedule."""
    from .optimizers import lookup
    cls = lookup(optimizer).cls
    defaults = _class_defaults(optimizer)
    args = []
    for key, value in sorted(hyperparams.items()):
        if key in ("master_weights", "stochastic_rounding", "nonfinite"):
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


def plan_trials(seconds_per_run: float, n_optimizers: int, workers: int, seeds: int,
                budget_minutes: float, spent_seconds: float = 0.0) -> int:
    """Trials per optimizer that fit the budget: studies run in parallel (one per worker),
    trials of a study one after the other, then every best configuration on ``seeds`` seeds.

    Raises:
        ValueError: the budget cannot give :data:`MIN_TRIALS` trials per optimizer.
    """
    if not (isinstance(budget_minutes, (int, float)) and math.isfinite(budget_minutes)
            and budget_minutes > 0):
        raise ValueError(f"budget must be a positive number of minutes, got {budget_minutes!r}")
    total = 60.0 * budget_minutes * 0.9 - POOL_SECONDS - REPORT_SECONDS - spent_seconds
    rounds = math.ceil(n_optimizers / workers)
    rerun = math.ceil(n_optimizers * seeds / workers) * seconds_per_run
    per_trial = 1.15 * seconds_per_run * rounds
    trials = int((total - rerun) // per_trial) if total > rerun else 0
    if trials < MIN_TRIALS:
        need = (MIN_TRIALS * per_trial + rerun + POOL_SECONDS + REPORT_SECONDS
                + spent_seconds) / 54.0
        raise ValueError(
            f"budget of {budget_minutes:g} minutes is too small: one run takes about "
            f"{seconds_per_run:.2f} s, so {n_optimizers} optimizers x {MIN_TRIALS} trials on "
            f"{workers} worker(s) need at least {need:.1f} minutes")
    return min(trials, MAX_TRIALS)


def advise(task: str, *, optimizers: Sequence[str] | None = None, budget_minutes: float = 5.0,
           store: str | None = None, workers: int | None = None, batch_size: Any = 32,
           seeds: int = 3, steps: int | None = None,
           task_options: Mapping[str, Any] | None = None, space: str = "lr", seed: int = 0,
           progress: Any = None, rerun_progress: Any = None,
           message: Any = None) -> Advice:
    """Answer "which optimizer for this task?" by an equal-budget study.

    1. One calibration run (the first optimizer at its defaults) measures the seconds per run.
    2. :func:`plan_trials` turns ``budget_minutes`` into the same number of tuning trials for
       every optimizer (capped at :data:`MAX_TRIALS`).
    3. :func:`optimlab.lab.tune.tune` searches each optimizer's space (``space="lr"``: the
       learning rate; ``"full"``: all documented hyperparameters), prunes hopeless trials and
       re-runs every best configuration on ``seeds`` held-out seeds.
    4. The re-runs are ranked by median time to target (then final target metric), with the
       final metric (mean ± std), test accuracy, generalization gap, state bytes per parameter,
       seeds that reached the target and the width of the good learning-rate range.

    Raises:
        ValueError: unknown task or optimizer, an invalid setting, or a budget too small.
    """
    import time as _time

    from .optimizers import CLASSIC
    from .report.stats import aggregate
    from .runs import RunConfig, execute
    from .study import default_workers
    from .tune import TuneSpec, tune, tuning_history

    say = message or (lambda text: None)
    optimizers = list(optimizers or CLASSIC)
    if not (isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1):
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    if not (isinstance(budget_minutes, (int, float)) and math.isfinite(budget_minutes)
            and budget_minutes > 0):
        raise ValueError(f"budget must be a positive number of minutes, got {budget_minutes!r}")
    workers = workers or default_workers()
    spec = TuneSpec(tasks=[task], optimizers=optimizers, trials=MIN_TRIALS, steps=steps,
                    batch_size=batch_size, seed=seed, seeds=seeds, space=space,
                    task_options=dict(task_options or {}))
    calib = RunConfig(task, optimizers[0], task_options=dict(task_options or {}),
                      batch_size=batch_size, steps=steps, seed=seed)
    say(f"calibrating: one run of {optimizers[0]} on {task}")
    t0 = _time.perf_counter()
    execute(calib, threads=1)
    seconds = _time.perf_counter() - t0
    trials = plan_trials(seconds, len(optimizers), min(workers, len(optimizers)), seeds,
                         budget_minutes, spent_seconds=seconds)
    spec = TuneSpec(**{**spec.to_dict(), "trials": trials})
    say(f"budget {budget_minutes:g} min: {trials} trials per optimizer "
        f"(about {seconds:.2f} s per run, {workers} worker(s)), then {seeds} seeds each")
    outcome = tune(spec, store, workers=workers, progress=progress,
                   rerun_progress=rerun_progress)
    history = tuning_history(spec, store)
    records: list[dict[str, Any]] = []
    if outcome.rerun is not None:
        from .store import open_store
        with open_store(store) as st:
            records = st.study_records(outcome.rerun.name)
    rows = _rows(records, history, outcome, aggregate)
    notes = [f"{r.optimizer}: every trial diverged or failed; not re-run"
             for r in outcome.results if r.best_value is None]
    resolved_steps = RunConfig(**{**calib.to_dict()}).resolved().steps or 0
    top = rows[0] if rows else None
    code = (snippet(top.optimizer, top.hyperparams, schedule=top.schedule,
                    steps=resolved_steps, batch_size=batch_size, task=task,
                    budget=budget_minutes) if top else "# no optimizer converged")
    return Advice(task=task, budget_minutes=float(budget_minutes), trials=trials,
                  steps=int(resolved_steps), seconds_per_run=seconds, rows=rows, snippet=code,
                  tune_name=outcome.name,
                  rerun_study=outcome.rerun.name if outcome.rerun else None, notes=notes)


def _rows(records: Sequence[Mapping[str, Any]], history: Sequence[Mapping[str, Any]],
          outcome: Any, aggregate: Any) -> list[AdviceRow]:
    stats = aggregate(records)
    rows = []
    for (_, _arm), s in stats.items():
        first = s.records[0]
        cfg = first.get("config", {})
        opt = cfg.get("optimizer", s.optimizer)
        mine = [t for t in history if t.get("optimizer") == opt]
        objective = mine[0].get("objective") if mine else None
        slack = s.target if objective == s.target_metric and math.isfinite(s.target) else 0.0
        width, good = _lr_robustness(mine, slack)
        acc = s.final.get("test_accuracy")
        metric = s.final.get(s.target_metric)
        best = next((r.best_value for r in outcome.results if r.optimizer == opt), None)
        rows.append(AdviceRow(
            rank=float(s.rank), optimizer=opt, hyperparams=dict(cfg.get("hyperparams", {})),
            schedule=str(cfg.get("schedule", "constant")),
            time_to_target=_finite(s.time_to_target), steps_to_target=_finite(s.steps_to_target),
            reached=s.n_reached, runs=len(s.records), metric=s.target_metric,
            final_mean=_finite(metric.mean) if metric else None,
            final_std=_finite(metric.std) if metric else None,
            test_accuracy=_finite(acc.mean) if acc else None,
            generalization_gap=_finite(s.generalization_gap.mean),
            state_bytes_per_param=_finite(s.state_bytes_per_param),
            lr_good_decades=width, lr_good_range=good, tuning_best=_finite(best)))
    rows.sort(key=lambda r: (r.rank, r.optimizer))
    return rows


def _g(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def advice_table(advice: Advice) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ranked table (plain strings, for the terminal, Markdown, HTML)."""
    header = ["rank", "optimizer", "time to target (s)", "steps to target", "seeds reached",
              "final metric", "test acc.", "gen. gap", "state B/param", "good lr range",
              "tuned lr"]
    rows = []
    for r in advice.rows:
        final = "-" if r.final_mean is None else (
            f"{r.final_mean:.3g}" + ("" if r.final_std is None else f" ± {r.final_std:.2g}"))
        lr_range = "-" if r.lr_good_range is None else (
            f"{r.lr_good_range[0]:.2g}..{r.lr_good_range[1]:.2g} "
            f"({_g(r.lr_good_decades, '.2f')} dec.)")
        rows.append([_g(r.rank, "g"), r.optimizer, _g(r.time_to_target),
                     _g(r.steps_to_target, "g"), f"{r.reached}/{r.runs}",
                     f"{r.metric} {final}", _g(r.test_accuracy, ".4f"),
                     _g(r.generalization_gap), _g(r.state_bytes_per_param, ".3g"), lr_range,
                     _g(r.hyperparams.get("lr"))])
    return header, rows


def advice_text(advice: Advice) -> str:
    """The advice for the terminal: the table, the recommendation and the snippet."""
    header, rows = advice_table(advice)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = [f"Which optimizer for {advice.task}? {len(advice.rows)} optimizers, "
             f"{advice.trials} tuning trials each ({advice.steps} steps per run), best "
             f"configuration re-run on held-out seeds; ranked by median time to target.", ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines += [""] + [f"note: {n}" for n in advice.notes]
    top = advice.recommended
    if top is not None:
        lines.append(f"Recommended: {top.optimizer} (rank {top.rank:g}); paste:")
        lines += ["", *("    " + line for line in advice.snippet.splitlines())]
    return "\n".join(lines)


def advice_for_report(advice: Advice) -> dict[str, Any]:
    """The advice as strings for the report's "Advice" section (and ``results.json``)."""
    header, rows = advice_table(advice)
    top = advice.recommended
    return {
        "question": (f"Which optimizer for {advice.task}? Every optimizer got the same tuning "
                     f"budget: {advice.trials} trials of {advice.steps} steps "
                     f"({advice.budget_minutes:g} minutes in all); each best configuration was "
                     "re-run on held-out seeds. Ranked by median time to target, then final "
                     "target metric. Good lr range: tuning trials within 10% of the best "
                     "objective (or solving the task)."),
        "header": header, "rows": rows, "notes": list(advice.notes),
        "recommendation": (f"Recommended: {top.optimizer}." if top else
                           "No optimizer gave a finite result."),
        "snippet": advice.snippet,
    }


def write_advice_report(advice: Advice, store: str | None, out_dir: str | Path,
                        progress: Any = None) -> Path:
    """The advisor's report: the advice first, then the re-runs' report and the tuning."""
    from .environment import environment
    from .report import write_report
    from .store import open_store
    from .tune import tuning_history

    records: list[dict[str, Any]] = []
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
    (out / "advice.md").write_text(_advice_markdown(advice), encoding="utf-8")
    return index


def _advice_markdown(advice: Advice) -> str:
    d = advice_for_report(advice)
    lines = [f"# Which optimizer for {advice.task}?", "", d["question"], "",
             "| " + " | ".join(d["header"]) + " |",
             "|" + "---|" * len(d["header"])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in d["rows"]]
    lines += [""] + [f"- {n}" for n in d["notes"]] + ["", d["recommendation"], "", "```python",
                                                     advice.snippet, "```", ""]
    return "\n".join(lines)
