"""The ranking objective in one place: what makes one run, or one arm, better than another.

The lab ranks arms on a task by **work to target** (``rank_by="work"``, the default): the
gradient evaluations until the run *settles* at or below the task's target (stays there at
every later evaluation; :func:`optimlab.lab.schema.settle`); equal to steps for optimizers
that evaluate the gradient once per step. A run that never settles is worse than every run
that does, and such runs are ordered by their final target metric. ``rank_by="time"`` uses
training seconds to target (warm-up excluded) instead of gradient evaluations.

Arms are ranked over seeds by :func:`optimlab.lab.report.stats.aggregate` (which a study also
uses to choose each optimizer's best arm for its held-out re-runs); this module holds the
per-run side, used by the tuner (:func:`run_objective`): the tuning objective is the ranking
objective.
"""

from __future__ import annotations

import math

from .schema import RunRecord

__all__ = ["excess_value", "run_objective", "run_work", "settled"]


def settled(record: RunRecord) -> bool:
    """The run ended normally and settled at its target (so its final value is at or below
    it): the ranking's notion of "reached"."""
    return (record.ok and record.reached and record.steps_to_target is not None
            and not record.metric(record.target_metric) > record.target)


def run_work(record: RunRecord, rank_by: str = "work") -> float:
    """The work (``"work"``: gradient evaluations; ``"time"``: training seconds) until
    ``record`` settled at its target; ``+inf`` when it never settled (or diverged, failed,
    was pruned)."""
    if not settled(record):
        return math.inf
    value = record.time_to_target if rank_by == "time" else record.grad_evals_to_target
    return math.inf if value is None else float(value)


def excess_value(value: float, target: float) -> float:
    """``1 + log(1 + (value - target) / scale)`` for a target metric ``value`` above its
    ``target`` (``scale = max(|target|, 1e-12)``): above 1, growing with the excess on a log
    scale; ``+inf`` for a non-finite value. Orders runs that never settled."""
    if not math.isfinite(value):
        return math.inf
    scale = max(abs(target), 1e-12)
    return 1.0 + math.log1p(max(value - target, 0.0) / scale)


def run_objective(record: RunRecord, rank_by: str = "work") -> float:
    """One run's ranking objective as one number to minimize (the tuner's objective):

    * settled: the fraction of the run's work spent until it settled (``grad_evals_to_target
      / grad_evals``, or the time fraction for ``"time"``), in ``[0, 1]``;
    * never settled: :func:`excess_value` of the final target metric, above 1;
    * diverged or failed: ``+inf``.

    Runs with the same budget are ordered exactly as the ranking orders them.
    """
    if record.status in ("diverged", "failed"):
        return math.inf
    if settled(record):
        work = run_work(record, rank_by)
        total = record.train_seconds if rank_by == "time" else float(record.grad_evals)
        return min(work / total, 1.0) if total > 0 else 0.0
    return excess_value(record.metric(record.target_metric), record.target)
