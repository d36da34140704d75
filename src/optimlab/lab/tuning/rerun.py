"""The re-run of a tuning's best configurations on held-out seeds (the "best per optimizer"
view of a tuning)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..execution import Executor, InlineExecutor, ProcessExecutor
from ..schema import RunConfig, RunRecord
from ..store import ResultStore
from ..study import PlannedRun, StudyOutcome, execute_runs, heldout_label
from .spec import TuneSpec

__all__ = ["rerun_best"]


def rerun_best(spec: TuneSpec, outcome: Any, store: ResultStore, *,
               executor: Executor | None = None,
               progress: Callable[[int, int, RunRecord], None] | None = None,
               storage: str | None = None) -> StudyOutcome:
    """Run the best configuration of every (task, optimizer) of ``outcome`` (a
    :class:`~optimlab.lab.tuning.run.TuneOutcome`) with ``spec.rerun_seeds()`` as the study
    ``"{name}-best"`` in ``store`` (runs it already holds are skipped). Arms are labelled
    :func:`optimlab.lab.study.heldout_label` (``"sgd best"``); a study with no finite trial is
    left out. The saved study records the tuning (``"tuning"``) and each best configuration
    (``"best"``).

    ``progress(done, total, record)`` as in :func:`optimlab.lab.study.run_study`.
    """
    name = f"{outcome.name}-best"
    runs: list[PlannedRun] = []
    best: dict[str, dict[str, Any]] = {}
    for r in outcome.results:
        if r.best_value is None:
            continue
        options = dict(spec.task_options.get(r.task, {}))
        best.setdefault(r.task, {})[r.optimizer] = {
            "hyperparams": r.best_hyperparams, "schedule": r.best_schedule,
            "value": r.best_value, "objective": r.objective}
        for seed in spec.rerun_seeds():
            cfg = RunConfig(task=r.task, optimizer=r.optimizer, hyperparams=r.best_hyperparams,
                            task_options=options, schedule=r.best_schedule or "constant",
                            batch_size=spec.batch_size, seed=seed, steps=spec.steps,
                            eval_every=spec.eval_every, clip_norm=spec.clip_norm,
                            clip_value=spec.clip_value).resolved()
            runs.append(PlannedRun(cfg, cfg.key(), heldout_label(r.optimizer)))
    saved = {"name": name, "description": f"best configurations of tuning {outcome.name!r}, "
             f"re-run with {spec.seeds} held-out seeds",
             "tuning": {"name": outcome.name, "storage": storage, "spec": spec.to_dict(),
                        "objective": spec.objective_name},
             "tasks": list(spec.tasks), "optimizers": list(spec.optimizers),
             "seeds": spec.rerun_seeds(), "rank_by": "work", "best": best}
    unique: dict[str, PlannedRun] = {}
    for run in runs:
        unique.setdefault(run.key, run)
    store.save_study(name, saved, [(r.key, r.label) for r in unique.values()])
    done = store.finished(unique)
    pending = [r for k, r in unique.items() if k not in done]
    own = executor is None
    if executor is None:
        executor = ProcessExecutor() if len(pending) > 1 else InlineExecutor()
    try:
        execute_runs(name, pending, store, executor, progress, len(done), len(unique))
    finally:
        if own:
            executor.close()  # type: ignore[attr-defined]
    return StudyOutcome(name, len(unique), len(done), len(pending))
