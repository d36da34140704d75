"""A tuning's trials as work that several processes share (:mod:`optimlab.lab.claims`).

Trial ``k`` of a study must see exactly trials ``0 .. k-1`` (its sampler models them, the
pruner compares with them), so a study's trials stay a chain: the next piece of work of a study
is its trial ``k`` = the number of trials it counts, claimed as ``"trial:<study>#<k>"`` in the
results store. At most one process holds a study's next trial, so any number of processes
tuning together run every trial index exactly once and give the trials one process gives
(different studies run in parallel, as they do in one process).

The claim also makes a dead process's leftovers safe to clean: whoever claims trial ``k``
marks the study's ``RUNNING`` and ``WAITING`` trials ``FAIL`` with
``user_attrs["interrupted"]`` (not counted) before it asks for trial ``k``. They can only be
a process's that lost its claim: it died (its pid is gone on this machine) or stopped renewing
its lease; one that was merely suspended finds its trial finished when it wakes (Optuna's
``UpdateFinishedTrialError``) and drops it (the event's state is ``"lost"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..store import ResultStore
from .run import (
    FINISHED,
    _Job,
    _Trial,
    counted_trials,
    load_study,
    open_storage,
    optuna_module,
)

__all__ = ["TuningTrials", "trial_event", "trial_key"]


def trial_key(job: _Job, index: int) -> str:
    """The claim key of trial ``index`` of ``job``'s study."""
    return f"trial:{job.study}#{index}"


def trial_event(job: _Job, trial: Any) -> dict[str, Any]:
    """The progress event of a finished trial read back from the storage (the same fields as
    the event of a trial run here: see :func:`~optimlab.lab.tuning.run.tune`)."""
    value = trial.value if trial.state.name == "COMPLETE" else None
    return {"study": job.study, "task": job.task, "optimizer": job.optimizer,
            "index": trial.user_attrs.get("index"), "number": trial.number,
            "state": trial.state.name.lower(),
            "status": trial.user_attrs.get("status") or trial.state.name.lower(),
            "value": value, "objective": trial.user_attrs.get("objective"),
            "hyperparams": trial.user_attrs.get("hyperparams", {}),
            "schedule": trial.user_attrs.get("schedule")}


def _trial_id(job: _Job, trial: Any) -> int:
    storage = open_storage(job.storage)
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(job.study), trial.number)


def _abandon(job: _Job, keep: int | None = None) -> None:
    """Mark the study's ``RUNNING``/``WAITING`` trials (but trial number ``keep``) ``FAIL``
    and interrupted: called by the holder of the study's next trial, they are a process's
    that lost its claim."""
    optuna = optuna_module()
    state = optuna.trial.TrialState
    storage = open_storage(job.storage)
    for t in load_study(job).get_trials(deepcopy=False, states=(state.RUNNING, state.WAITING)):
        if t.number != keep:
            trial_id = _trial_id(job, t)
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_state_values(trial_id, state.FAIL)


class TuningTrials:
    """The trials of a tuning's studies as :class:`optimlab.lab.claims.SharedWork`.

    Args:
        jobs: one per (task, optimizer) study.
        store: the results store (holds the claims).
        progress: ``progress(done, total, event)`` after each trial, here or elsewhere.
    """

    noun = "trials"

    def __init__(self, jobs: Sequence[_Job], store: ResultStore,
                 progress: Callable[[int, int, dict[str, Any] | None], None] | None) -> None:
        self.jobs = list(jobs)
        self.store, self.progress = store, progress
        self.total = sum(job.trials for job in self.jobs)
        self.seen = {job.study: self._count(job) for job in self.jobs}
        self.ran = dict.fromkeys(self.seen, 0)

    @staticmethod
    def _count(job: _Job) -> int:
        return min(len(counted_trials(load_study(job))), job.trials)

    @property
    def done(self) -> int:
        """Trials counted so far (as far as this process has seen)."""
        return sum(self.seen.values())

    def pending(self, running: set[str]) -> list[tuple[str, _Trial]]:
        out = []
        for job in self.jobs:
            if any(k.startswith(f"trial:{job.study}#") for k in running):
                continue  # one trial of a study at a time
            n = len(counted_trials(load_study(job)))
            if n < job.trials:
                out.append((trial_key(job, n), _Trial(job, n)))
        return out

    def accept(self, key: str, item: _Trial) -> bool:
        if len(counted_trials(load_study(item.job))) != item.index:
            return False  # finished meanwhile (by a process that died before releasing it)
        _abandon(item.job)
        return True

    def finish(self, key: str, item: _Trial, event: dict[str, Any]) -> bool:
        if event.get("state") == "lost":
            return False
        self.ran[item.job.study] += 1
        return True

    def failed(self, item: _Trial, error: BaseException) -> dict[str, Any]:
        """A trial whose worker process died twice counts as a failed trial; any other error
        (a :class:`TuneError`, the storage's) stops the tuning."""
        from ..pool import WorkerDied

        if not isinstance(error, WorkerDied):
            raise error
        optuna = optuna_module()
        state = optuna.trial.TrialState
        study = load_study(item.job)
        left = study.get_trials(deepcopy=False, states=(state.RUNNING,))
        attrs = {"index": item.index, "status": "failed", "error": str(error)}
        if left:
            _abandon(item.job, keep=left[-1].number)
            storage, trial_id = open_storage(item.job.storage), _trial_id(item.job, left[-1])
            for k, v in attrs.items():
                storage.set_trial_user_attr(trial_id, k, v)
            storage.set_trial_state_values(trial_id, state.FAIL)
        else:
            study.add_trial(optuna.trial.create_trial(state=state.FAIL, user_attrs=attrs))
        trial = counted_trials(load_study(item.job))[item.index]
        return trial_event(item.job, trial)

    def reported(self, item: _Trial, event: dict[str, Any]) -> None:
        """Progress after a trial of this process (and any others' finished since)."""
        if event.get("state") in FINISHED:
            self.seen[item.job.study] = max(self.seen[item.job.study], item.index + 1)
            if self.progress is not None:
                self.progress(self.done, self.total, event)
        self.observe()

    def observe(self) -> None:
        for job in self.jobs:
            seen = self.seen[job.study]
            if seen >= job.trials:
                continue
            counted = counted_trials(load_study(job))[: job.trials]
            for trial in counted[seen:]:
                self.seen[job.study] += 1
                if self.progress is not None:
                    self.progress(self.done, self.total, trial_event(job, trial))

