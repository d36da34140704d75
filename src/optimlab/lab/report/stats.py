"""Statistics over run records: arms, intervals over seeds, ranks by work, ties, profiles.

A *record* is a :class:`~optimlab.lab.schema.RunRecord`; an *arm* is a record's ``label`` (its
optimizer when unlabelled); the runs of one arm on one task differ only by seed. The numbers
(intervals, comparisons, the tie rule) come from :mod:`optimlab.lab.statistics`.

Conventions (stated in every report, see :func:`ranking_definition`):

* **work to target** is the number of gradient (closure) evaluations up to the step at which
  the run *settled* at its target (stayed at or below it at every later evaluation;
  ``== steps`` for optimizers that evaluate the gradient once per step); a run that never
  settled, diverged or failed has not reached it (``+inf``, censored);
* per arm, a quantity over seeds is an :class:`~optimlab.lab.statistics.Interval`: the mean
  with a Student-t interval when every seed has a value, the median with order-statistic
  bounds when some seeds did not reach the target; a *deterministic* arm (its records say the
  seed changes nothing, or at least two seeds gave identical results) counts as one seed;
* **ranks** within a task (1 = best; equal keys share the average of their positions):
  arms that settled on more than half their seeds come first, by their *restricted mean* work
  (a seed that did not settle counts as the task's largest budget, so that failing seeds are
  paid for); then the others, by their mean final target metric (a diverged or failed seed
  counting as the worst final value on the task). ``rank_by="time"`` ranks by training
  seconds to target (warm-up excluded) the same way. The ranking never depends on the order
  of the records;
* an arm is **tied with the best** when :func:`optimlab.lab.statistics.compare` on the ranked
  quantity (paired on shared seeds) cannot tell it from the best arm: the confidence interval
  of the difference contains 0, or the difference is within the measurement resolution (the
  evaluation-grid spacing for work, the measured timing noise for time).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..schema import RunConfig, RunRecord
from ..statistics import DEFAULT_CONFIDENCE, Comparison, Interval, compare, interval
from .records import arm_of, as_records, num, task_ids

__all__ = [
    "RANK_BY",
    "ArmStats",
    "MeanStd",
    "RankRow",
    "aggregate",
    "average_ranks",
    "by_task",
    "mean_std",
    "performance_profile",
    "performance_ratios",
    "profile_taus",
    "ranked",
    "ranking",
    "ranking_definition",
    "work_to_target",
]

INF = math.inf
NAN = math.nan

#: What a ranking can be by: gradient evaluations to target (default) or training seconds.
RANK_BY = ("work", "time")

#: Steps at the start of a run whose time is warm-up (as the runner's ``WARMUP_STEPS``): left
#: out of the within-run timing noise.
_WARMUP_STEPS = 5
#: Timing resolution = this many relative standard deviations of the measured timing noise
#: (about a 95% band for normal noise).
_TIMING_SDS = 2.0


def ranking_definition(rank_by: str = "work") -> str:
    """The sentence that says what the ranking means (report headers, README, ``--help``)."""
    _check_rank_by(rank_by)
    what = ("gradient evaluations to target (work: steps for optimizers that evaluate the "
            "gradient once per step)" if rank_by == "work"
            else "training seconds to target (warm-up excluded; tied within the measured "
                 "timing noise)")
    return (f"Ranked by {what}: the step from which a run stays at or below its target until "
            "the end (settled). Arms that settled on more than half their seeds come first, by "
            "mean over seeds, a seed that never settled counting as the task's largest budget; "
            "the others follow by their final target metric. \"tied\": the 95% confidence "
            "interval of the difference from the best arm (paired on shared seeds) contains 0, "
            "or the difference is within the measurement resolution. Deterministic arms count "
            "as one seed.")


def _check_rank_by(rank_by: str) -> None:
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")


# ----------------------------------------------------------------------------- aggregates


class MeanStd(NamedTuple):
    """Mean and sample standard deviation (ddof=1; NaN for one value) of ``n`` finite values."""

    mean: float
    std: float
    n: int


def mean_std(values: Iterable[Any]) -> MeanStd:
    """:class:`MeanStd` of the finite values among ``values`` (NaN mean when there are none)."""
    xs = [v for v in (num(x) for x in values) if math.isfinite(v)]
    if not xs:
        return MeanStd(NAN, NAN, 0)
    arr = np.asarray(xs, dtype=float)
    std = float(arr.std(ddof=1)) if len(xs) > 1 else NAN
    return MeanStd(float(arr.mean()), std, len(xs))


def _settled(rec: RunRecord) -> bool:
    """The run settled at its target, and its final value is not above it."""
    return (rec.ok and rec.reached and rec.steps_to_target is not None
            and not rec.metric(rec.target_metric) > rec.target)


def _work_per_step(rec: RunRecord) -> float:
    return rec.grad_evals / rec.steps_done if rec.steps_done > 0 and rec.grad_evals > 0 else 1.0


def work_to_target(rec: RunRecord) -> float:
    """Gradient evaluations to the settled step (``+inf`` when the run did not settle)."""
    if not _settled(rec):
        return INF
    if rec.grad_evals_to_target is not None:
        return float(rec.grad_evals_to_target)
    return float(rec.steps_to_target) * _work_per_step(rec)  # type: ignore[operator]


def _to_target(rec: RunRecord, value: float | int | None) -> float:
    return float(value) if _settled(rec) and value is not None else INF


def _final_target(rec: RunRecord) -> float:
    """The final target metric of an ok run; ``+inf`` for a non-ok run or a non-finite value."""
    v = rec.metric(rec.target_metric)
    return v if rec.ok and math.isfinite(v) else INF


def _fingerprint(rec: RunRecord) -> tuple[Any, ...]:
    """What must agree between two seeds of a deterministic arm: status, budget, settled
    step, final metrics and every evaluated metric value (``repr``: NaN equals NaN)."""
    return (rec.status, rec.steps_done, rec.steps_to_target, rec.grad_evals_to_target,
            repr(sorted(rec.final.items())), repr(sorted(rec.evals["metrics"].items())))


def _timing_noise(recs: Sequence[RunRecord]) -> float:
    """Relative timing noise of an arm: the larger of (a) the median over its runs of the
    robust coefficient of variation (``1.4826 * MAD / median``) of the seconds per step
    between consecutive curve points after the warm-up and (b) the coefficient of variation
    of ``seconds_per_step`` across its runs (two runs or more). NaN when nothing measured."""
    within = []
    for rec in recs:
        steps, times = rec.curve.get("step", []), rec.curve.get("time", [])
        rates = []
        for i in range(1, min(len(steps), len(times))):
            ds, dt = num(steps[i]) - num(steps[i - 1]), num(times[i]) - num(times[i - 1])
            if num(steps[i - 1]) >= _WARMUP_STEPS and ds > 0 and math.isfinite(dt):
                rates.append(dt / ds)
        if len(rates) >= 3:
            med = float(np.median(rates))
            if med > 0:
                within.append(1.4826 * float(np.median(np.abs(np.asarray(rates) - med))) / med)
    per_step = [r.seconds_per_step for r in recs
                if r.seconds_per_step is not None and math.isfinite(r.seconds_per_step)
                and r.seconds_per_step > 0]
    between = (float(np.std(per_step, ddof=1) / np.mean(per_step)) if len(per_step) >= 2
               else NAN)
    candidates = [v for v in (float(np.median(within)) if within else NAN, between)
                  if math.isfinite(v)]
    return max(candidates) if candidates else NAN


@dataclass
class ArmStats:
    """Statistics of one arm on one task (see the module docstring for the conventions).

    Attributes:
        task: task id (see :func:`~optimlab.lab.report.records.task_ids`).
        arm: the arm's label.
        optimizer: the optimizer of its runs.
        records: its runs, sorted by seed.
        status_counts: runs per status (``ok``, ``diverged``, ``pruned``, ``failed``).
        seeds: the seeds of its runs, sorted.
        target_metric: the task's target metric (``suboptimality``, ``train_loss``, ...).
        target: the task's target value (NaN when unknown).
        deterministic: the seed changes nothing (the records say so and agree, or at least
            two seeds gave identical results): every statistic counts it as one seed.
        final: final metric name -> :class:`MeanStd` over ok runs.
        final_ci: final metric name -> confidence :class:`Interval` over ok runs.
        final_target: the final target metric over all seeds, a non-ok run or a non-finite
            value counting as ``+inf`` (so the median when any did).
        work_to_target: gradient evaluations to the settled step over seeds (``+inf`` for a
            seed that did not settle).
        steps_to_target: the settled step over seeds.
        time_to_target: training seconds to the settled step (warm-up excluded) over seeds.
        examples_to_target: training examples to the settled step over seeds.
        first_crossing: the first evaluation at or below the target, over seeds (shown, never
            ranked: a run may cross and climb back).
        n_reached: runs that settled at the target.
        work_resolution: the evaluation-grid spacing in gradient evaluations around the
            settled steps (the largest over its runs; 0 when none settled): the true settling
            point lies within this much before the measured one.
        timing_noise: relative timing noise (see :func:`_timing_noise`; NaN when unmeasured).
        generalization_gap: :class:`MeanStd` of ``generalization_gap`` over ok runs.
        scalars: scalar measurement name -> :class:`MeanStd` over ok runs.
        state_bytes: median optimizer state bytes (NaN when unknown).
        n_params: median number of parameters (NaN when unknown).
        state_bytes_per_param: median of ``state_bytes / n_params`` (NaN when unknown).
        peak_memory_bytes: median peak memory (NaN when unknown).
        train_seconds: :class:`MeanStd` of training seconds over all runs.
        seconds_per_step: median seconds per step after the warm-up (NaN when unknown).
        rank_by: what the task's ranking is by (``"work"`` or ``"time"``).
        rank: rank by work to target among the task's arms (1 = best).
        rank_time: rank by time to target among the task's arms.
        is_best: the best arm of the task by ``rank_by`` (one per task; among arms with equal
            keys the first by label).
        tied_with_best: not the best, but not distinguishable from it (the tie rule).
        comparison_to_best: this arm against the best arm on the ranked quantity
            (``diff = this - best``); ``None`` for the best arm itself.
        compared_on: that quantity: ``"work"``, ``"time"``, or ``"final"`` (the final target
            metric, when the best arm did not settle on more than half its seeds).
    """

    task: str
    arm: str
    optimizer: str
    records: list[RunRecord] = field(repr=False)
    status_counts: dict[str, int]
    seeds: list[int]
    target_metric: str
    target: float
    deterministic: bool
    final: dict[str, MeanStd]
    final_ci: dict[str, Interval]
    final_target: Interval
    work_to_target: Interval
    steps_to_target: Interval
    time_to_target: Interval
    examples_to_target: Interval
    first_crossing: Interval
    n_reached: int
    work_resolution: float
    timing_noise: float
    generalization_gap: MeanStd
    scalars: dict[str, MeanStd]
    state_bytes: float
    n_params: float
    state_bytes_per_param: float
    peak_memory_bytes: float
    train_seconds: MeanStd
    seconds_per_step: float
    rank_by: str = "work"
    rank: float = NAN
    rank_time: float = NAN
    is_best: bool = False
    tied_with_best: bool = False
    comparison_to_best: Comparison | None = None
    compared_on: str = ""

    @property
    def n_runs(self) -> int:
        """Number of runs (all statuses)."""
        return len(self.records)

    @property
    def n_seeds(self) -> int:
        """Number of independent seeds: 1 for a deterministic arm."""
        return 1 if self.deterministic else len(set(self.seeds))

    @property
    def n_ok(self) -> int:
        """Number of runs with status ``ok``."""
        return self.status_counts.get("ok", 0)

    @property
    def n_diverged(self) -> int:
        """Number of diverged runs."""
        return self.status_counts.get("diverged", 0)

    @property
    def n_failed(self) -> int:
        """Number of runs that are neither ok nor diverged (failed, pruned)."""
        return self.n_runs - self.n_ok - self.n_diverged

    @property
    def final_target_median(self) -> float:
        """Center of :attr:`final_target` (its median when a run was not ok)."""
        return self.final_target.center

    @property
    def primary_rank(self) -> float:
        """The rank by :attr:`rank_by`."""
        return self.rank_time if self.rank_by == "time" else self.rank

    @property
    def tied_first(self) -> bool:
        """The best arm or tied with it."""
        return self.is_best or self.tied_with_best

    @property
    def config(self) -> RunConfig:
        """The configuration of the arm's first run (by seed)."""
        return self.records[0].config


#: Metrics that cannot be negative (``f - f*``, distances, norms): their intervals stop at 0.
NONNEG_METRICS = frozenset({"suboptimality", "distance_to_minimum", "grad_norm"})
_COUNTS = (0.0, math.inf)  # work, steps, examples and seconds to target


def metric_support(name: str) -> tuple[float, float]:
    """The values metric ``name`` can take, which its interval over seeds is clipped to:
    ``(0, 1)`` for accuracies, ``(0, inf)`` for :data:`NONNEG_METRICS`, unbounded otherwise
    (a user's loss may be negative)."""
    if "accuracy" in name:
        return (0.0, 1.0)
    return _COUNTS if name in NONNEG_METRICS else (-math.inf, math.inf)


def _median(values: Iterable[Any]) -> float:
    xs = [v for v in (num(x) for x in values) if math.isfinite(v)]
    return float(np.median(xs)) if xs else NAN


def _arm_stats(task: str, arm: str, recs: list[RunRecord], confidence: float) -> ArmStats:
    recs = sorted(recs, key=lambda r: (r.seed, r.key))
    counts: dict[str, int] = {}
    for rec in recs:
        counts[rec.status] = counts.get(rec.status, 0) + 1
    first = recs[0]
    prints = {_fingerprint(r) for r in recs}
    declared = all(r.deterministic for r in recs)
    det = len(prints) == 1 and (declared or len(recs) >= 2)
    ok = [r for r in recs if r.ok]
    if det:  # one seed says everything
        ok = ok[:1]

    names: list[str] = []
    scalar_names: list[str] = []
    for rec in ok:
        names += [k for k in rec.final if k not in names]
        scalar_names += [k for k in rec.scalars if k not in scalar_names]
    final = {k: mean_std(r.final.get(k) for r in ok) for k in names}
    final_ci = {k: interval([r.metric(k) for r in ok], confidence, deterministic=det,
                            support=metric_support(k))
                for k in names}

    def over_seeds(values: Iterable[float],
                   support: tuple[float, float] = _COUNTS) -> Interval:
        return interval(list(values), confidence, deterministic=det, support=support)

    resolution = max((float(r.target_resolution) * _work_per_step(r) for r in recs
                      if _settled(r) and r.target_resolution is not None), default=0.0)
    per_param = [r.state_bytes / r.n_params for r in recs if r.n_params > 0]
    return ArmStats(
        task=task, arm=arm, optimizer=first.optimizer, records=recs, status_counts=counts,
        seeds=[r.seed for r in recs], target_metric=first.target_metric,
        target=num(first.target), deterministic=det, final=final, final_ci=final_ci,
        final_target=over_seeds((_final_target(r) for r in recs),
                                metric_support(first.target_metric)),
        work_to_target=over_seeds(work_to_target(r) for r in recs),
        steps_to_target=over_seeds(_to_target(r, r.steps_to_target) for r in recs),
        time_to_target=over_seeds(_to_target(r, r.time_to_target) for r in recs),
        examples_to_target=over_seeds(_to_target(r, r.examples_to_target) for r in recs),
        first_crossing=over_seeds(INF if r.first_crossing is None else float(r.first_crossing)
                                  for r in recs),
        n_reached=sum(_settled(r) for r in recs), work_resolution=resolution,
        timing_noise=_timing_noise(recs),
        generalization_gap=mean_std(r.generalization_gap for r in ok),
        scalars={k: mean_std(r.scalars.get(k) for r in ok) for k in scalar_names},
        state_bytes=_median(r.state_bytes for r in recs),
        n_params=_median(r.n_params for r in recs),
        state_bytes_per_param=float(np.median(per_param)) if per_param else NAN,
        peak_memory_bytes=_median(r.peak_memory_bytes for r in recs),
        train_seconds=mean_std(r.train_seconds for r in recs),
        seconds_per_step=_median(r.seconds_per_step for r in recs),
    )


def _nan_inf(v: Any) -> float:
    v = num(v)
    return INF if math.isnan(v) else v


def average_ranks(values: Mapping[str, float | tuple[float, ...]]) -> dict[str, float]:
    """Rank of each key by value (tuples compare lexicographically), 1 = smallest; NaN counts
    as +inf; ties (including several +inf) share the average of the positions they occupy.
    The result does not depend on the order of ``values``."""
    items = [(k, tuple(_nan_inf(x) for x in v) if isinstance(v, tuple) else _nan_inf(v))
             for k, v in values.items()]
    items.sort(key=lambda kv: kv[1])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1][1] == items[i][1]:
            j += 1
        for k in range(i, j + 1):
            ranks[items[k][0]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


# ----------------------------------------------------------------------------- ranking


class _Measure(NamedTuple):
    """Per-seed values of one ranked quantity for every arm of a task."""

    values: dict[str, dict[int, float]]   # arm -> seed -> value (+inf: did not reach)
    horizon: float                        # censored values count as this
    resolution: dict[str, float]          # arm -> measurement resolution


def _seed_values(s: ArmStats, value: Any) -> dict[int, float]:
    """seed -> value for the arm's runs (one entry for a deterministic arm)."""
    recs = s.records[:1] if s.deterministic else s.records
    return {r.seed: float(value(r)) for r in recs}


def _restricted_mean(values: Mapping[int, float], horizon: float) -> float:
    xs = [min(v, horizon) for v in values.values()]
    return float(np.mean(xs)) if xs else INF


def _rank_task(arms: Iterable[str], measure: _Measure,
               finals: _Measure) -> tuple[dict[str, float], dict[str, tuple[int, float]]]:
    """Ranks of a task's arms by ``measure`` and each arm's sort key ``(class, value)``: class
    0 when the arm reached the target on more than half its seeds (its median is finite),
    valued by its restricted mean; otherwise class 1 (final target metric finite on more than
    half) or 2, valued by the mean final target metric with non-finite values capped."""
    keys: dict[str, tuple[int, float]] = {}
    for a in arms:
        vals = measure.values[a]
        if math.isfinite(float(np.median(list(vals.values())))):
            keys[a] = (0, _restricted_mean(vals, measure.horizon))
        else:
            fin = finals.values[a]
            cls = 1 if math.isfinite(float(np.median(list(fin.values())))) else 2
            keys[a] = (cls, _restricted_mean(fin, finals.horizon))
    return average_ranks(keys), keys


def _measures(arms: dict[str, ArmStats]) -> dict[str, _Measure]:
    """The task's work, time and final-target measures (see the module docstring)."""
    recs = [r for s in arms.values() for r in s.records]
    work = {a: _seed_values(s, work_to_target) for a, s in arms.items()}
    work_h = max([float(r.grad_evals) for r in recs]
                 + [v for vs in work.values() for v in vs.values() if math.isfinite(v)])
    time = {a: _seed_values(s, lambda r: _to_target(r, r.time_to_target))
            for a, s in arms.items()}
    time_h = max([r.train_seconds for r in recs if math.isfinite(r.train_seconds)]
                 + [v for vs in time.values() for v in vs.values() if math.isfinite(v)],
                 default=INF)
    final = {a: _seed_values(s, _final_target) for a, s in arms.items()}
    final_h = max([v for vs in final.values() for v in vs.values() if math.isfinite(v)],
                  default=INF)

    def time_res(a: str) -> float:
        s = arms[a]
        noise = s.timing_noise if math.isfinite(s.timing_noise) else 0.0
        return _TIMING_SDS * noise * _restricted_mean(time[a], time_h)

    return {"work": _Measure(work, work_h, {a: s.work_resolution for a, s in arms.items()}),
            "time": _Measure(time, time_h, {a: time_res(a) for a in arms}),
            "final": _Measure(final, final_h, {a: 0.0 for a in arms})}


def _compare_to(a: ArmStats, best: ArmStats, measure: _Measure, kind: str,
                confidence: float) -> Comparison:
    va, vb = measure.values[a.arm], measure.values[best.arm]
    if kind == "time":  # timing is never deterministic; single runs are equal within noise
        det = (len(va) == 1 and len(vb) == 1,) * 2
    else:
        det = (a.deterministic, best.deterministic)
    horizon = measure.horizon if math.isfinite(measure.horizon) else None
    return compare(va, vb, confidence=confidence, deterministic=det, horizon=horizon,
                   resolution=max(measure.resolution[a.arm], measure.resolution[best.arm]))


def aggregate(records: Sequence[RunRecord | Mapping[str, Any]], *, rank_by: str = "work",
              confidence: float = DEFAULT_CONFIDENCE) -> dict[tuple[str, str], ArmStats]:
    """Per-(task, arm) statistics of ``records``, in order of first appearance.

    Fills in each arm's rank within its task by work to target (``rank``) and by time to
    target (``rank_time``), the best arm by ``rank_by`` (``is_best``), and each other arm's
    comparison with it (``comparison_to_best``, ``tied_with_best``); see the module docstring.
    Ranks, the best arm and ties do not depend on the order of ``records``.

    Args:
        records: :class:`RunRecord` objects, or stored record dicts (read with
            :meth:`RunRecord.from_dict`).
        rank_by: ``"work"`` (gradient evaluations to target) or ``"time"``.
        confidence: level of every interval and of the tie rule.
    """
    _check_rank_by(rank_by)
    recs = as_records(records)
    ids = task_ids(recs)
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for tid, rec in zip(ids, recs):
        groups.setdefault((tid, arm_of(rec)), []).append(rec)
    stats = {key: _arm_stats(key[0], key[1], rs, confidence) for key, rs in groups.items()}
    for arms_list in by_task(stats).values():
        arms = {s.arm: s for s in arms_list}
        measures = _measures(arms)
        by_work, work_keys = _rank_task(arms, measures["work"], measures["final"])
        by_time, time_keys = _rank_task(arms, measures["time"], measures["final"])
        keys = work_keys if rank_by == "work" else time_keys
        for a, s in arms.items():
            s.rank, s.rank_time, s.rank_by = by_work[a], by_time[a], rank_by
        best = arms[min(arms, key=lambda a: (keys[a], a))]
        best.is_best = True
        kind = rank_by if keys[best.arm][0] == 0 else "final"
        for s in arms.values():
            s.compared_on = kind
            if s is not best:
                s.comparison_to_best = _compare_to(s, best, measures[kind], kind, confidence)
                s.tied_with_best = s.comparison_to_best.tied
    return stats


def by_task(stats: Mapping[tuple[str, str], ArmStats]) -> dict[str, list[ArmStats]]:
    """``aggregate``'s result grouped by task (tasks and arms in order of appearance)."""
    out: dict[str, list[ArmStats]] = {}
    for (task, _), s in stats.items():
        out.setdefault(task, []).append(s)
    return out


def ranked(arms: Sequence[ArmStats]) -> list[ArmStats]:
    """A task's arms best first (by the primary rank, then the other rank, then label)."""
    return sorted(arms, key=lambda s: (s.primary_rank, s.rank if s.rank_by == "time"
                                       else s.rank_time, s.arm))


@dataclass
class RankRow:
    """One arm's standing across tasks.

    Attributes:
        arm: the arm's label.
        mean_rank: mean over the tasks it ran on of its rank by ``rank_by``.
        mean_rank_work: mean of its rank by work to target.
        mean_rank_time: mean of its rank by time to target.
        n_tasks: tasks it ran on.
        n_solved: tasks where it settled at the target on more than half its seeds.
        n_tied_first: tasks where it is the best arm or tied with the best.
        ranks: task -> rank by ``rank_by``.
        rank_by: ``"work"`` or ``"time"``.
    """

    arm: str
    mean_rank: float
    mean_rank_work: float
    mean_rank_time: float
    n_tasks: int
    n_solved: int
    n_tied_first: int
    ranks: dict[str, float]
    rank_by: str = "work"


def ranking(stats: Mapping[tuple[str, str], ArmStats]) -> list[RankRow]:
    """Arms sorted by mean rank over tasks, then by tasks best or tied-first (more first),
    tasks solved (more first) and label; independent of the order of ``stats``."""
    rows: dict[str, RankRow] = {}
    work_ranks: dict[str, list[float]] = {}
    time_ranks: dict[str, list[float]] = {}
    for (task, arm), s in stats.items():
        row = rows.setdefault(arm, RankRow(arm, NAN, NAN, NAN, 0, 0, 0, {}, s.rank_by))
        row.ranks[task] = s.primary_rank
        row.n_tasks += 1
        row.n_solved += math.isfinite(s.work_to_target.center)
        row.n_tied_first += s.tied_first
        work_ranks.setdefault(arm, []).append(s.rank)
        time_ranks.setdefault(arm, []).append(s.rank_time)
    for arm, row in rows.items():
        row.mean_rank = float(np.mean(list(row.ranks.values())))
        row.mean_rank_work = float(np.mean(work_ranks[arm]))
        row.mean_rank_time = float(np.mean(time_ranks[arm]))
    return sorted(rows.values(),
                  key=lambda r: (r.mean_rank, -r.n_tied_first, -r.n_solved, r.arm))


# ----------------------------------------------------------------------------- profiles


def performance_ratios(times: Mapping[str, Mapping[str, float | None]],
                       arms: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per task, each arm's work (or time) to target divided by the best arm's.

    ``times[task][arm]`` is a value to target (a number or an :class:`Interval`, its center);
    ``None``, NaN, +inf or a missing arm mean *not reached* (ratio +inf). When nobody reached
    the target every ratio is +inf; when the best value is 0 the arms at 0 get ratio 1 and the
    others +inf.
    """
    arms = list(arms) if arms is not None else _arms_in(times)
    out: dict[str, dict[str, float]] = {}
    for task, row in times.items():
        vals = {a: _time(row.get(a)) for a in arms}
        best = min(vals.values(), default=INF)
        ratios = {}
        for a, v in vals.items():
            if not math.isfinite(v) or not math.isfinite(best):
                ratios[a] = INF
            elif best <= 0:
                ratios[a] = 1.0 if v <= best else INF
            else:
                ratios[a] = v / best
        out[task] = ratios
    return out


def performance_profile(times: Mapping[str, Mapping[str, float | None]],
                        taus: Sequence[float],
                        arms: Sequence[str] | None = None) -> dict[str, list[float]]:
    """Performance profiles as in AlgoPerf (Dahl et al., 2023; after Dolan & Moré, 2002).

    ``rho_arm(tau)`` is the fraction of tasks on which the arm's value to target is within a
    factor ``tau`` of the best arm's on that task (``ratio <= tau``), see
    :func:`performance_ratios` for missing / not-reached values.

    Args:
        times: ``times[task][arm]`` = work (or time) to target.
        taus: the factors at which to evaluate the profiles.
        arms: the arms (default: every arm named in ``times``, in order of appearance).

    Returns:
        arm -> list of ``rho(tau)`` for each ``tau`` in ``taus``.
    """
    arms = list(arms) if arms is not None else _arms_in(times)
    ratios = performance_ratios(times, arms)
    n = len(ratios)
    out = {}
    for a in arms:
        r = np.asarray([ratios[t][a] for t in ratios], dtype=float)
        out[a] = [float(np.sum(r <= tau * (1 + 1e-12)) / n) if n else 0.0 for tau in taus]
    return out


def profile_taus(ratios: Mapping[str, Mapping[str, float]], n: int = 256) -> np.ndarray:
    """A log-spaced grid of tau from 1 to a bit beyond the largest finite ratio (at least 10)."""
    finite = [r for row in ratios.values() for r in row.values() if math.isfinite(r)]
    top = min(max([10.0, *(1.25 * r for r in finite)]), 1e9)
    return np.unique(np.concatenate([np.geomspace(1.0, top, n), finite]))


def _time(value: Any) -> float:
    v = num(value)
    return INF if math.isnan(v) else v


def _arms_in(times: Mapping[str, Mapping[str, Any]]) -> list[str]:
    arms: list[str] = []
    for row in times.values():
        arms += [a for a in row if a not in arms]
    return arms
