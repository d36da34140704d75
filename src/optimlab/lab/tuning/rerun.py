"""The re-run of a tuning's best configurations on held-out seeds (the "best per optimizer"
view of a tuning)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..claims import LEASE_SECONDS
from ..execution import Executor, InlineExecutor, ProcessExecutor
from ..schema import RunConfig, RunRecord
from ..store import ResultStore
from ..study import PlannedRun, StudyOutcome, execute_runs, heldout_label
from .spec import TuneSpec

__all__ = ["rerun_best"]


def rerun_best(spec: TuneSpec, outcome: Any, store: ResultStore, *,
               executor: Executor | None = None,
               progress: Callable[[int, int, RunRecord], None] | None = None,
               storage: str | None = None, message: Callable[[str], None] | None = None,
               lease_s: float = LEASE_SECONDS) -> StudyOutcome:
    """Run the best configuration of every (task, optimizer) of ``outcome`` (a
    :class:`~optimlab.lab.tuning.run.TuneOutcome`) with ``spec.rerun_seeds()`` as the study
    ``"{name}-best"`` in ``store`` (runs it already holds are skipped). Arms are labelled
    :func:`optimlab.lab.study.heldout_label` (``"sgd best"``); a study with no finite trial is
    left out. The saved study records the tuning (``"tuning"``) and each best configuration
    (``"best"``).

    The study is derived from the tuning, which guards its own settings: when the best
    configurations change (a tuning extended with more trials) the study is replaced (its
    earlier runs stay stored). Processes re-running the same tuning share the runs
    (:func:`optimlab.lab.study.execute_runs`).

    ``progress(done, total, record)``, ``message`` and ``lease_s`` as in
    :func:`optimlab.lab.study.run_study`.
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
    store.save_study(name, saved, [(r.key, r.label) for r in unique.values()], replace=True)
    own = executor is None
    if executor is None:
        missing = len(unique) - len(store.finished(unique))
        executor = ProcessExecutor() if missing > 1 else InlineExecutor()
    try:
        skipped, executed = execute_runs(name, list(unique.values()), store, executor,
                                         progress, message=message, lease_s=lease_s)
        store.flush()
    finally:
        if own:
            executor.close()  # type: ignore[attr-defined]
    return StudyOutcome(name, len(unique), skipped, executed,
                        elsewhere=len(unique) - skipped - executed)
