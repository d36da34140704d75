"""Measured advice: "which optimizer for this task?" answered by an equal-budget tuning study.

:func:`advise` times the task (:func:`calibrate`: the median of several short runs), turns the
budget in minutes into the same number of tuning trials for every candidate
(:func:`plan_trials`: never fewer than :data:`~optimlab.lab.tuning.spec.MIN_TRIALS`; when the
budget is too small for that, the budget is raised and the advice says so loudly), tunes every
candidate for the ranking objective (work to target, :mod:`optimlab.lab.tuning.run`), re-runs
each best configuration on held-out seeds, and ranks the re-runs as the report does
(:func:`optimlab.lab.report.stats.aggregate`, by work to target). When the best candidate
cannot be told apart from others within seed noise, the advice says "no clear winner" and
names them all.

Two advisings of the same task on the same machine recommend the same optimizer (or say "no
clear winner" alike): the trials are seeded and deterministic on CPU, the ranking is by work,
not by time, and the trial count is read off a coarse ladder (:data:`TRIAL_LADDER`) from a
median of several timings, so timing noise rarely changes it; a larger count only adds
trials to the same sequence.
"""

from __future__ import annotations

import math
import statistics as pystats
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .. import validate as v
from ..imports import AllowList
from ..schema import RunConfig, json_safe
from ..statistics import Comparison, Interval
from ..tuning.spec import MIN_TRIALS
from ..validate import Limits

__all__ = ["CALIBRATION_RUNS", "MAX_TRIALS", "MIN_TRIALS", "TRIAL_LADDER", "Advice",
           "AdviceRow", "Calibration", "TrialPlan", "advise", "calibrate", "plan_trials"]

#: Trials per optimizer never exceed this: beyond it a learning-rate search gains little.
MAX_TRIALS = 40
#: The trial counts the advisor chooses from (the largest that fits the budget): a coarse
#: ladder, so that two timings a few percent apart give the same count.
TRIAL_LADDER = (MIN_TRIALS, 12, 16, 24, 32, MAX_TRIALS)
#: Timed runs of the calibration; the median of their estimates is used.
CALIBRATION_RUNS = 3
#: Seconds a process pool needs to start, and the report to render (budget bookkeeping).
POOL_SECONDS, REPORT_SECONDS = 8.0, 6.0
#: Estimated trial time over calibrated run time (Optuna's bookkeeping, process scheduling).
TRIAL_OVERHEAD = 1.15
#: Share of the budget planned (the rest is a margin for the estimate's error).
BUDGET_SHARE = 0.9


@dataclass(frozen=True)
class Calibration:
    """How long one run of the task takes here: ``seconds_per_run`` is the median over
    ``timings`` (one estimate per calibration run, each scaled from its ``steps_timed`` steps
    to ``steps``); ``spent`` is the wall-clock seconds the calibration took."""

    seconds_per_run: float
    timings: tuple[float, ...]
    steps: int
    steps_timed: int
    spent: float


def calibrate(task: str, optimizer: str, *, steps: int | None = None,
              task_options: Mapping[str, Any] | None = None, batch_size: Any = 32,
              seed: int = 0, runs: int = CALIBRATION_RUNS) -> Calibration:
    """Time ``runs`` short runs of ``optimizer`` (at its defaults) on ``task`` (each a quarter
    of the budget, at least 20 steps) and estimate the seconds of a whole run as the median of
    ``wall_seconds / steps_done * steps`` (a run that diverges early still gives its rate).

    Raises:
        ValueError: a calibration run failed (its error is in the message)."""
    import time

    from ..runs import execute

    full = RunConfig(task, optimizer, task_options=dict(task_options or {}),
                     batch_size=batch_size, steps=steps, seed=seed).resolved()
    total = int(full.steps or 1)
    timed = min(total, max(20, total // 4))
    estimates = []
    t0 = time.perf_counter()
    for _ in range(runs):
        record = execute(replace(full, steps=timed), threads=1)
        if record.status == "failed":  # no timing to plan on: the task or optimizer is broken
            raise ValueError(f"calibration run of {optimizer} on {task} failed: {record.error}")
        estimates.append(record.wall_seconds / max(record.steps_done, 1) * total)
    return Calibration(float(pystats.median(estimates)), tuple(estimates), total, timed,
                       time.perf_counter() - t0)


@dataclass(frozen=True)
class TrialPlan:
    """Trials per optimizer for a budget (:func:`plan_trials`).

    Attributes:
        trials: trials per optimizer (a :data:`TRIAL_LADDER` value, at least
            :data:`MIN_TRIALS`).
        fits: the budget allowed :data:`MIN_TRIALS` or more; ``False``: it was raised.
        minutes: the minutes the plan is expected to take (about the budget when it fits,
            more when it was raised).
    """

    trials: int
    fits: bool
    minutes: float


def plan_trials(seconds_per_run: float, n_optimizers: int, workers: int, seeds: int,
                budget_minutes: float, spent_seconds: float = 0.0) -> TrialPlan:
    """Trials per optimizer that fit the budget: studies run in parallel (one per worker),
    trials of a study one after the other, then every best configuration on ``seeds`` seeds.
    The largest :data:`TRIAL_LADDER` count that fits; :data:`MIN_TRIALS` (and ``fits=False``)
    when even that does not fit.

    Raises:
        ValueError: a budget that is not a positive number of minutes.
    """
    budget_minutes = v.positive_float("budget", budget_minutes, "number of minutes")
    rounds = math.ceil(n_optimizers / workers)
    rerun = math.ceil(n_optimizers * seeds / workers) * seconds_per_run
    per_trial = TRIAL_OVERHEAD * seconds_per_run * rounds
    fixed = rerun + POOL_SECONDS + REPORT_SECONDS + spent_seconds
    available = 60.0 * budget_minutes * BUDGET_SHARE - fixed
    fit = int(available // per_trial) if available > 0 else 0
    fitting = [t for t in TRIAL_LADDER if t <= fit]
    trials = fitting[-1] if fitting else MIN_TRIALS
    minutes = (trials * per_trial + fixed) / (60.0 * BUDGET_SHARE)
    return TrialPlan(trials, bool(fitting), minutes)


@dataclass
class AdviceRow:
    """One optimizer's evidence in the advisor's ranked table (from its held-out re-runs).

    Attributes:
        rank: by work to target (1 = best; the report's ranking).
        optimizer, hyperparams, schedule: the tuned configuration.
        work_to_target: gradient evaluations to the settled step, over seeds.
        time_to_target: training seconds to it (warm-up excluded), over seeds (shown only).
        reached, runs: seeds that settled, and runs.
        metric, final: the target metric and its final value over seeds.
        tied_with_best: within seed noise of the best (the tie rule).
        comparison: this optimizer against the best (``None`` for the best).
        test_accuracy, generalization_gap, state_bytes_per_param: as in the report.
        lr_good_range, lr_good_decades: the learning rates whose tuning trials did nearly as
            well as the best (see :func:`lr_robustness`), and the range's width in decades.
        tuning_best: the best tuning objective.
    """

    rank: float
    optimizer: str
    hyperparams: dict[str, Any]
    schedule: str
    work_to_target: Interval
    time_to_target: Interval
    reached: int
    runs: int
    metric: str
    final: Interval
    tied_with_best: bool
    comparison: Comparison | None
    test_accuracy: float | None
    generalization_gap: float | None
    state_bytes_per_param: float | None
    lr_good_decades: float | None
    lr_good_range: tuple[float, float] | None
    tuning_best: float | None


@dataclass
class Advice:
    """The advisor's answer: the ranked table, the verdict and how it was measured.

    Attributes:
        task: the task.
        budget_minutes: the budget asked for; ``minutes_planned``: what the plan needs (more
            when the budget was too small for :data:`MIN_TRIALS` trials per optimizer).
        trials: tuning trials per optimizer; ``steps``: steps per run.
        calibration: the timing the plan rests on.
        rows: the ranked table (best first).
        winners: the best optimizer and those tied with it (one name: a clear winner).
        snippet: code that builds the best configuration.
        tune_name, rerun_study: where the tuning and the re-runs are stored.
        notes: warnings (a raised budget, a best learning rate at the edge of its range,
            optimizers whose every trial diverged).
    """

    task: str
    budget_minutes: float
    minutes_planned: float
    trials: int
    steps: int
    calibration: Calibration
    rows: list[AdviceRow]
    winners: list[str]
    snippet: str
    tune_name: str
    rerun_study: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def recommended(self) -> AdviceRow | None:
        """The best optimizer when it is a clear winner; ``None`` when others are tied with
        it (or every optimizer diverged)."""
        return self.rows[0] if self.rows and len(self.winners) == 1 else None

    @property
    def clear(self) -> bool:
        """Whether one optimizer is better than every other beyond seed noise."""
        return len(self.winners) == 1

    @property
    def verdict(self) -> str:
        """The answer in one sentence."""
        if not self.rows:
            return "No optimizer gave a finite result."
        if self.clear:
            return f"Recommended: {self.winners[0]}."
        return (f"No clear winner: {', '.join(self.winners)} are within seed noise of each "
                f"other on work to target; choose among them by memory or robustness "
                f"(the snippet is for {self.winners[0]}, the first by the ranking).")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (``advice.json``)."""
        return json_safe({**asdict(self), "verdict": self.verdict, "clear": self.clear})


def lr_robustness(trials: Sequence[Mapping[str, Any]]
                  ) -> tuple[float | None, tuple[float, float] | None]:
    """The good learning-rate range among a study's complete trials, and its width in
    decades: with the ranking objective, a trial is good when it settled with at most 25% more
    work than the best trial (when the best settled), or when its excess over the target is
    within 10% of the best one's (when none settled). ``None`` with fewer than 3 trials."""
    pts = [(t["hyperparams"].get("lr"), t["value"]) for t in trials
           if t.get("value") is not None and t.get("state") == "complete"
           and isinstance(t.get("hyperparams", {}).get("lr"), (int, float))]
    pts = [(lr, val) for lr, val in pts if lr > 0 and math.isfinite(val)]
    if len(pts) < 3:
        return None, None
    best = min(val for _, val in pts)
    threshold = min(1.0, 1.25 * best) if best <= 1.0 else 1.0 + 1.1 * (best - 1.0)
    good = [lr for lr, val in pts if val <= threshold]
    lo, hi = min(good), max(good)
    return math.log10(hi / lo), (lo, hi)


def _edge_notes(outcome: Any, space: Any) -> list[str]:
    """A note per optimizer whose best learning rate lies in the outer eighth (on the log
    scale) of its searched range: the optimum may lie outside it."""
    from ..tuning.space import search_space

    notes = []
    for r in outcome.results:
        lr = r.best_hyperparams.get("lr")
        param = next((p for p in search_space(r.optimizer, space) if p.name == "lr"), None)
        if param is None or not isinstance(lr, (int, float)) or lr <= 0:
            continue
        u = (math.log(lr) - math.log(param.low)) / (math.log(param.high) - math.log(param.low))
        if u < 1 / 8 or u > 7 / 8:
            side = "lower" if u < 1 / 8 else "upper"
            notes.append(f"{r.optimizer}: the best learning rate {lr:.3g} is at the {side} "
                         f"edge of the searched range {param.low:g}..{param.high:g}; the "
                         "optimum may lie outside it (give a wider space)")
    return notes


def _rows(records: Sequence[Any], history: Sequence[Mapping[str, Any]], outcome: Any
          ) -> list[AdviceRow]:
    from ..report.stats import aggregate

    stats = aggregate(records, rank_by="work")
    rows = []
    for s in stats.values():
        first = s.records[0]
        opt = first.config.optimizer
        width, good = lr_robustness([t for t in history if t.get("optimizer") == opt])
        acc = s.final.get("test_accuracy")
        best = next((r.best_value for r in outcome.results if r.optimizer == opt), None)
        rows.append(AdviceRow(
            rank=float(s.rank), optimizer=opt, hyperparams=dict(first.config.hyperparams),
            schedule=first.config.schedule, work_to_target=s.work_to_target,
            time_to_target=s.time_to_target, reached=s.n_reached, runs=len(s.records),
            metric=s.target_metric, final=s.final_target,
            tied_with_best=s.tied_with_best, comparison=s.comparison_to_best,
            test_accuracy=v.finite_or_none(acc.mean) if acc else None,
            generalization_gap=v.finite_or_none(s.generalization_gap.mean),
            state_bytes_per_param=v.finite_or_none(s.state_bytes_per_param),
            lr_good_decades=width, lr_good_range=good, tuning_best=v.finite_or_none(best)))
    rows.sort(key=lambda r: (r.rank, r.optimizer))
    return rows


def advise(task: str, *, optimizers: Sequence[str] | None = None, budget_minutes: float = 5.0,
           store: str | None = None, workers: int | None = None, batch_size: Any = 32,
           seeds: int = 3, steps: int | None = None,
           task_options: Mapping[str, Any] | None = None, space: str = "lr", seed: int = 0,
           clip_norm: float | None = None,
           progress: Callable[..., None] | None = None,
           rerun_progress: Callable[..., None] | None = None,
           message: Callable[[str], None] | None = None,
           allow_import: AllowList = None, limits: Limits | None = None) -> Advice:
    """Answer "which optimizer for this task?" by an equal-budget study.

    1. :func:`calibrate` measures the seconds per run (median of :data:`CALIBRATION_RUNS`).
    2. :func:`plan_trials` turns ``budget_minutes`` into the same number of tuning trials for
       every optimizer, never fewer than :data:`MIN_TRIALS`: a budget too small for that is
       raised, and the advice says so (``message`` and ``notes``).
    3. :func:`optimlab.lab.tuning.run.tune` searches each optimizer's space (``space="lr"``:
       the learning rate; ``"full"``: all documented hyperparameters) for the ranking
       objective, prunes hopeless trials and re-runs every best configuration on ``seeds``
       held-out seeds.
    4. The re-runs are ranked by work to target (the report's ranking), with intervals over
       seeds and each optimizer's comparison with the best; ties with the best are reported
       as "no clear winner".

    ``optimizers=None`` means the seven classics; an empty list is refused. ``allow_import``
    and ``limits`` are :class:`~optimlab.lab.tuning.TuneSpec`'s: the packages that names by
    import path may come from (``None``: import what is named, for Python code naming its own
    task; the command line passes ``--allow-import``), and the guards against typos.

    Raises:
        ValueError: unknown task or optimizer, an invalid setting, an import path that is
            not allowed (nothing is imported or run then).
    """
    from ..execution import default_workers
    from ..optimizers import CLASSIC
    from ..store import open_store
    from ..tuning import TuneSpec, tune, tuning_history
    from .text import snippet

    say = message or (lambda text: None)
    optimizers = list(CLASSIC if optimizers is None else v.names("optimizers", optimizers))
    seeds = v.positive_int("seeds", seeds)
    budget_minutes = v.positive_float("budget", budget_minutes, "number of minutes")
    workers = workers or default_workers()
    # checks every setting before the calibration spends any time
    spec = TuneSpec(tasks=[task], optimizers=optimizers, trials=MIN_TRIALS, steps=steps,
                    batch_size=batch_size, seed=seed, seeds=seeds, space=space,
                    task_options={task: dict(task_options or {})} if task_options else {},
                    clip_norm=clip_norm, allow_import=allow_import,
                    limits=limits or Limits())
    say(f"calibrating: {CALIBRATION_RUNS} timed runs of {optimizers[0]} on {task}")
    cal = calibrate(task, optimizers[0], steps=steps, task_options=task_options,
                    batch_size=batch_size, seed=seed)
    plan = plan_trials(cal.seconds_per_run, len(optimizers), min(workers, len(optimizers)),
                       seeds, budget_minutes, spent_seconds=cal.spent)
    notes = []
    if not plan.fits:
        warning = (f"BUDGET RAISED: {budget_minutes:g} minutes cannot give every optimizer "
                   f"the minimum of {MIN_TRIALS} tuning trials (one run takes about "
                   f"{cal.seconds_per_run:.2f} s); running {MIN_TRIALS} trials each, about "
                   f"{plan.minutes:.1f} minutes. Fewer trials would leave parts of the search "
                   "range untried and the comparison unequal.")
        say("WARNING: " + warning)
        notes.append(warning)
    spec = replace(spec, trials=plan.trials)
    say(f"budget {budget_minutes:g} min: {plan.trials} trials per optimizer (median "
        f"{cal.seconds_per_run:.2f} s per run of {cal.steps} steps over {len(cal.timings)} "
        f"timings, {workers} worker(s)), then {seeds} held-out seeds each")
    outcome = tune(spec, store, workers=workers, progress=progress,
                   rerun_progress=rerun_progress)
    history = tuning_history(spec, store)
    records = []
    if outcome.rerun is not None:
        with open_store(store) as st:
            records = st.study_records(outcome.rerun.name)
    rows = _rows(records, history, outcome)
    notes += _edge_notes(outcome, space)
    notes += [f"{r.optimizer}: every trial diverged or failed; not re-run"
              for r in outcome.results if r.best_value is None]
    winners = [r.optimizer for r in rows if r is rows[0] or r.tied_with_best]
    top = rows[0] if rows else None
    code = (snippet(top.optimizer, top.hyperparams, schedule=top.schedule, steps=cal.steps,
                    batch_size=spec.batch_size, task=task, budget=budget_minutes)
            if top else "# no optimizer converged")
    return Advice(task=task, budget_minutes=budget_minutes, minutes_planned=plan.minutes,
                  trials=plan.trials, steps=cal.steps, calibration=cal, rows=rows,
                  winners=winners, snippet=code, tune_name=outcome.name,
                  rerun_study=outcome.rerun.name if outcome.rerun else None, notes=notes)
