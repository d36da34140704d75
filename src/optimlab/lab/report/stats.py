"""Statistics over run records: tasks, arms, aggregates, ranks, performance profiles, sweeps.

Everything here is plain Python and numpy (no plotting). A *record* is the dict the runner
writes for one run (see :mod:`optimlab.lab.report`); an *arm* is a record's ``label``; runs of
one arm on one task differ only by seed.

Conventions used throughout (and stated in the report):

* steps/time to target of an arm on a task is the **median over its seeds** where a seed that
  did not reach the target, diverged or failed counts as **infinity** (so the median is
  finite only when at least half the seeds reached the target);
* final metrics are **mean ± sample standard deviation** (ddof=1) over the runs with status
  ``"ok"`` and a finite value; diverged and failed runs are counted, not averaged;
* ranks within a task are by median time to target; an arm that did not reach the target
  ranks below every arm that did, and among themselves such arms are ordered by their median
  final target metric (diverged/failed last); exact ties share the average of their positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .records import arm_of, config, final_of, info_of, num, seed_of, status_of, task_ids

__all__ = [
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
    "ranking",
]

INF = math.inf
NAN = math.nan


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


def _median_inf(values: Sequence[float]) -> float:
    """Median where NaN counts as +inf; +inf for no values."""
    if not values:
        return INF
    arr = np.asarray([INF if math.isnan(v) else v for v in values], dtype=float)
    return float(np.median(arr))


@dataclass
class ArmStats:
    """Statistics of one arm on one task (see the module docstring for the conventions).

    Attributes:
        task: task id (see :func:`task_ids`).
        arm: the arm's label.
        optimizer: ``config.optimizer`` of its first run.
        records: its runs, in input order.
        status_counts: runs per status (``ok``, ``diverged``, ``failed``, ...).
        seeds: the seeds of its runs.
        target_metric: the task's target metric (``suboptimality`` or ``train_loss``).
        target: the task's target value (NaN when unknown).
        final: final metric name -> :class:`MeanStd` over ok runs.
        final_target_median: median over all seeds of the final target metric, a non-ok run
            or non-finite value counting as +inf.
        steps_to_target: median steps to target (+inf: not reached by at least half).
        time_to_target: median training seconds to target (+inf likewise).
        n_reached: ok runs that reached the target.
        generalization_gap: :class:`MeanStd` of ``generalization_gap`` over ok runs.
        extra: extra metric name -> :class:`MeanStd` over ok runs.
        state_bytes: median optimizer state bytes (NaN when unknown).
        n_params: median number of parameters (NaN when unknown).
        state_bytes_per_param: median of ``state_bytes / n_params`` (NaN when unknown).
        peak_memory_bytes: median peak memory (NaN when unknown).
        train_seconds: :class:`MeanStd` of training seconds over all runs.
        rank: rank by time to target among the task's arms (1 = best; see the module
            docstring for arms that did not reach the target).
        rank_steps: rank by steps to target among the task's arms.
    """

    task: str
    arm: str
    optimizer: str
    records: list[dict[str, Any]] = field(repr=False)
    status_counts: dict[str, int]
    seeds: list[Any]
    target_metric: str
    target: float
    final: dict[str, MeanStd]
    final_target_median: float
    steps_to_target: float
    time_to_target: float
    n_reached: int
    generalization_gap: MeanStd
    extra: dict[str, MeanStd]
    state_bytes: float
    n_params: float
    state_bytes_per_param: float
    peak_memory_bytes: float
    train_seconds: MeanStd
    rank: float = NAN
    rank_steps: float = NAN

    @property
    def n_runs(self) -> int:
        """Number of runs (all statuses)."""
        return len(self.records)

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
        """Number of runs that are neither ok nor diverged (failed, unknown status)."""
        return self.n_runs - self.n_ok - self.n_diverged

    @property
    def config(self) -> dict[str, Any]:
        """The configuration of the arm's first run."""
        return config(self.records[0])


def _task_meta(recs: Sequence[Mapping[str, Any]]) -> tuple[str, float]:
    metric, target = None, NAN
    for rec in recs:
        info = info_of(rec)
        if metric is None and info.get("target_metric"):
            metric = str(info["target_metric"])
        if math.isnan(target) and info.get("target") is not None:
            target = num(info.get("target"))
    return metric or "train_loss", target


def _arm_stats(task: str, arm: str, recs: list[dict[str, Any]], metric: str,
               target: float) -> ArmStats:
    counts: dict[str, int] = {}
    for rec in recs:
        counts[status_of(rec)] = counts.get(status_of(rec), 0) + 1
    ok = [r for r in recs if status_of(r) == "ok"]
    names: list[str] = []
    extra_names: list[str] = []
    for rec in ok:
        names += [k for k in final_of(rec) if k not in names]
        extra = rec.get("extra") if isinstance(rec.get("extra"), dict) else {}
        extra_names += [k for k in extra if k not in extra_names]
    final = {k: mean_std(final_of(r).get(k) for r in ok) for k in names}
    extra_stats = {k: mean_std((r.get("extra") or {}).get(k) for r in ok) for k in extra_names}

    def reached(rec: Mapping[str, Any], key: str) -> float:
        value = num(rec.get(key))
        return value if status_of(rec) == "ok" and math.isfinite(value) else INF

    def final_target(rec: Mapping[str, Any]) -> float:
        value = num(final_of(rec).get(metric))
        return value if status_of(rec) == "ok" and math.isfinite(value) else INF

    def med(key: str) -> float:
        values = [num(r.get(key)) for r in recs]
        values = [v for v in values if math.isfinite(v)]
        return float(np.median(values)) if values else NAN

    per_param = []
    for rec in recs:
        sb, npar = num(rec.get("state_bytes")), num(rec.get("n_params"))
        if math.isfinite(sb) and math.isfinite(npar) and npar > 0:
            per_param.append(sb / npar)
    return ArmStats(
        task=task, arm=arm, optimizer=str(config(recs[0]).get("optimizer", "?")),
        records=recs, status_counts=counts, seeds=[seed_of(r) for r in recs],
        target_metric=metric, target=target, final=final,
        final_target_median=_median_inf([final_target(r) for r in recs]),
        steps_to_target=_median_inf([reached(r, "steps_to_target") for r in recs]),
        time_to_target=_median_inf([reached(r, "time_to_target") for r in recs]),
        n_reached=sum(math.isfinite(reached(r, "steps_to_target")) for r in recs),
        generalization_gap=mean_std(r.get("generalization_gap") for r in ok),
        extra=extra_stats, state_bytes=med("state_bytes"), n_params=med("n_params"),
        state_bytes_per_param=float(np.median(per_param)) if per_param else NAN,
        peak_memory_bytes=med("peak_memory_bytes"),
        train_seconds=mean_std(r.get("train_seconds") for r in recs),
    )


def _rank_key(to_target: float, s: ArmStats) -> tuple[float, float]:
    """Reached: by time (or steps); not reached: after those, by the final target metric."""
    if math.isfinite(to_target):
        return (to_target, 0.0)
    return (INF, s.final_target_median)


def _nan_inf(v: Any) -> float:
    v = num(v)
    return INF if math.isnan(v) else v


def average_ranks(values: Mapping[str, float | tuple[float, ...]]) -> dict[str, float]:
    """Rank of each key by value (tuples compare lexicographically), 1 = smallest; NaN counts
    as +inf; ties (including several +inf) share the average of the positions they occupy."""
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


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], ArmStats]:
    """Per-(task, arm) statistics of ``records``, in order of first appearance.

    Also fills in each arm's rank within its task by median time to target (``rank``) and by
    median steps to target (``rank_steps``), see :func:`average_ranks`.
    """
    ids = task_ids(records)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for tid, rec in zip(ids, records):
        groups.setdefault((tid, arm_of(rec)), []).append(dict(rec))
        by_task.setdefault(tid, []).append(rec)
    meta = {tid: _task_meta(recs) for tid, recs in by_task.items()}
    stats = {key: _arm_stats(key[0], key[1], recs, *meta[key[0]])
             for key, recs in groups.items()}
    for tid in by_task:
        arms = {k[1]: s for k, s in stats.items() if k[0] == tid}
        by_time = average_ranks({a: _rank_key(s.time_to_target, s)
                                 for a, s in arms.items()})
        by_steps = average_ranks({a: _rank_key(s.steps_to_target, s)
                                  for a, s in arms.items()})
        for a, s in arms.items():
            s.rank, s.rank_steps = by_time[a], by_steps[a]
    return stats


def by_task(stats: Mapping[tuple[str, str], ArmStats]) -> dict[str, list[ArmStats]]:
    """``aggregate``'s result grouped by task (tasks and arms in order of appearance)."""
    out: dict[str, list[ArmStats]] = {}
    for (task, _), s in stats.items():
        out.setdefault(task, []).append(s)
    return out


@dataclass
class RankRow:
    """One arm's standing across tasks.

    Attributes:
        arm: the arm's label.
        mean_rank: mean over the tasks it ran on of its rank by time to target.
        mean_rank_steps: the same by steps to target.
        n_tasks: tasks it ran on.
        n_solved: tasks where its median time to target is finite.
        ranks: task -> rank by time to target.
    """

    arm: str
    mean_rank: float
    mean_rank_steps: float
    n_tasks: int
    n_solved: int
    ranks: dict[str, float]


def ranking(stats: Mapping[tuple[str, str], ArmStats]) -> list[RankRow]:
    """Arms sorted by mean rank over tasks (by time to target; ties by steps, then order)."""
    rows: dict[str, RankRow] = {}
    for (task, arm), s in stats.items():
        row = rows.setdefault(arm, RankRow(arm, NAN, NAN, 0, 0, {}))
        row.ranks[task] = s.rank
        row.n_tasks += 1
        row.n_solved += math.isfinite(s.time_to_target)
    for arm, row in rows.items():
        row.mean_rank = float(np.mean(list(row.ranks.values())))
        row.mean_rank_steps = float(np.mean([s.rank_steps for (_, a), s in stats.items()
                                             if a == arm]))
    order = list(rows)
    return sorted(rows.values(),
                  key=lambda r: (r.mean_rank, r.mean_rank_steps, order.index(r.arm)))


# ----------------------------------------------------------------------------- profiles


def performance_ratios(times: Mapping[str, Mapping[str, float | None]],
                       arms: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per task, each arm's time (or steps) to target divided by the best arm's.

    ``times[task][arm]`` is a median time to target; ``None``, NaN, +inf or a missing arm mean
    *not reached* (ratio +inf). When nobody reached the target every ratio is +inf; when the
    best time is 0 the arms at 0 get ratio 1 and the others +inf.
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

    ``rho_arm(tau)`` is the fraction of tasks on which the arm's time to target is within a
    factor ``tau`` of the best arm's on that task (``ratio <= tau``), see
    :func:`performance_ratios` for missing / not-reached values.

    Args:
        times: ``times[task][arm]`` = median time (or steps) to target.
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
