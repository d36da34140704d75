"""Studies: grids of runs (optimizers x tasks x settings x seeds), executed, stored, resumable.

A study is a :class:`optimlab.lab.spec.StudySpec` (a TOML file, the command line, or Python).
:func:`plan` expands it into runs; each run's *label* (its arm) is the optimizer's name plus
the settings the study sweeps (``"sgd lr=0.1 bs=32"``); runs of one arm differ only by seed,
and the same arm on different tasks carries the same label, so the report can compare arms
across tasks.

A run that is *deterministic* (the task's result does not depend on the seed with the full
batch, the batch is full, the optimizer is one of the lab's) runs on the study's first seed
only: more seeds would repeat it exactly. :func:`plan_notes` says which.

:func:`run_study` executes the runs the store does not hold yet through
:func:`optimlab.lab.execution.execute_all`, each claimed first in the store
(:func:`optimlab.lab.claims.execute_shared`), so that several processes running one study
share its runs and none runs twice; interleaved (round-robin over arms, seed by seed,
in an order shuffled by the study's name) so that the order does not bias wall-clock times,
and stores each run the moment it finishes. When the study has held-out seeds
(:attr:`StudySpec.n_heldout`), it then chooses each optimizer's best arm on each task by the
ranking (:func:`optimlab.lab.report.stats.aggregate` with the study's ``rank_by``) and
re-runs it on the held-out
seeds as the arm ``"<optimizer> best"`` (:func:`heldout_label`); every optimizer of the study
gets such an arm, so the "best per optimizer" view is paired on the same seeds. The chosen
arms are saved with the study (``"heldout_choice"`` in :meth:`ResultStore.study_spec`).

**Populations.** With ``population="auto"`` (the default), the runs that can train as one
population (an arm's seeds: :mod:`optimlab.lab.batching`) do: such a population is one work
item, claimed member by member (members another process holds are left out of it), its records
stored when it finishes; the records equal, apart from wall-clock fields, the ones the runs
give one by one, so the study's keys and results do not depend on it. ``"off"`` runs every run
alone.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .batching import POPULATION_MODES, Grouping, PopulationRun, failed_records, run_item
from .claims import LEASE_SECONDS, execute_shared
from .execution import (
    Executor,
    InlineExecutor,
    ProcessExecutor,
    default_workers,
    interleave,
)
from .optimizers import LAB_OPTIMIZERS, build_optimizer
from .schema import RunConfig, RunRecord
from .spec import StudyError, StudySpec, default_name, load_study_file
from .store import ResultStore
from .tasks import make_task

__all__ = ["HELDOUT_SUFFIX", "POPULATION_MODES", "Executor", "InlineExecutor", "PlannedRun",
           "PopulationRun", "ProcessExecutor", "StudyError", "StudyOutcome", "StudySpec",
           "count_runs", "default_name", "default_workers", "execute_runs",
           "heldout_label", "is_heldout", "load_study_file", "plan", "plan_heldout",
           "plan_notes", "run_study"]

#: The label of a held-out arm is the optimizer's name and this suffix (``"sgd best"``).
HELDOUT_SUFFIX = " best"


def heldout_label(optimizer: str) -> str:
    """The label of ``optimizer``'s held-out "best" arm."""
    return optimizer + HELDOUT_SUFFIX


def is_heldout(label: str | None) -> bool:
    """Whether ``label`` is a held-out "best per optimizer" arm (:func:`heldout_label`)."""
    return bool(label) and str(label).endswith(HELDOUT_SUFFIX)


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: its config, key and arm label; ``deterministic`` when its result
    does not depend on its seed (it then runs on one seed)."""

    config: RunConfig
    key: str
    label: str
    deterministic: bool = False


# --------------------------------------------------------------------------- the grid


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_fmt(v) for v in value) + ")"
    return str(value)


_SHORT = {"batch_size": "bs", "schedule": "schedule"}


def _swept(spec: StudySpec, optimizer: str) -> set[str]:
    """The setting names with more than one value anywhere in the study (for labels)."""
    swept = set()
    for name in ("batch_size", "schedule"):
        values = [getattr(spec, name)] + [getattr(t, name) for t in spec.task.values()]
        if any(vals is not None and len(vals) > 1 for vals in values):
            swept.add(name)
    for task in spec.tasks:
        for key, values in spec.grid(task, optimizer).items():
            if len(values) > 1:
                swept.add(f"hp.{key}")
    return swept


def _deterministic_task(spec: StudySpec, task: str) -> bool:
    """The task's result does not depend on the seed when it runs on the full batch."""
    return bool(make_task(task, **spec.settings(task).options).info
                .deterministic_with_full_batch)


def _deterministic(task_is: bool, optimizer: str, batch_size: int | str) -> bool:
    """A run is deterministic on a deterministic task, with the full batch and a lab optimizer
    (a user's optimizer class might draw random numbers)."""
    return task_is and batch_size == "full" and optimizer in LAB_OPTIMIZERS


def _base_config(spec: StudySpec, task: str, optimizer: str, hyper: Mapping[str, Any],
                 schedule: str, batch_size: int | str) -> RunConfig:
    t = spec.settings(task)
    budget = t if t.has_budget else spec
    return RunConfig(
        task=task, optimizer=optimizer, hyperparams=dict(hyper), task_options=t.options,
        schedule=schedule, batch_size=batch_size, seed=0, steps=budget.steps,
        examples=budget.examples, epochs=budget.epochs,
        seconds=t.seconds if t.seconds is not None else spec.seconds,
        eval_every=t.eval_every if t.eval_every is not None else spec.eval_every,
        telemetry=spec.telemetry, sharpness=spec.sharpness,
        clip_norm=t.clip_norm if t.clip_norm is not None else spec.clip_norm,
        clip_value=t.clip_value if t.clip_value is not None else spec.clip_value,
        lr_scaling=spec.lr_scaling, base_batch_size=spec.base_batch_size)


def plan(spec: StudySpec) -> list[PlannedRun]:
    """Every run of the study's grid (held-out re-runs excluded: see :func:`plan_heldout`), in
    a stable order (task, optimizer, settings, seed).

    Raises:
        StudyError: a hyperparameter value the optimizer rejects (checked on a dummy
            parameter before anything runs).
    """
    runs: list[PlannedRun] = []
    checked: set[str] = set()
    for task in spec.tasks:
        t = spec.settings(task)
        task_is = _deterministic_task(spec, task)
        for opt in spec.optimizers:
            dims: dict[str, Sequence[Any]] = {
                f"hp.{k}": vals for k, vals in spec.grid(task, opt).items()}
            dims["batch_size"] = t.batch_size or spec.batch_size
            dims["schedule"] = t.schedule or spec.schedule
            swept = _swept(spec, opt)
            for values in itertools.product(*dims.values()):
                setting = dict(zip(dims, values, strict=True))
                hyper = {k[3:]: val for k, val in setting.items() if k.startswith("hp.")}
                label = " ".join([opt] + [
                    f"{_SHORT.get(k, k[3:] if k.startswith('hp.') else k)}={_fmt(val)}"
                    for k, val in setting.items() if k in swept])
                base = _base_config(spec, task, opt, hyper, setting["schedule"],
                                    setting["batch_size"])
                resolved = _resolve(base, f"task {task!r}, optimizer {opt!r}")
                sig = json.dumps(resolved.hyperparams, sort_keys=True, default=str) + opt
                if sig not in checked:
                    _check_values(resolved, f"task {task!r}")
                    checked.add(sig)
                det = _deterministic(task_is, opt, resolved.batch_size)
                for seed in spec.seeds[:1] if det else spec.seeds:
                    cfg = replace(resolved, seed=seed)
                    runs.append(PlannedRun(cfg, cfg.key(), label, det))
    return runs


def plan_notes(spec: StudySpec, runs: Sequence[PlannedRun] | None = None) -> list[str]:
    """What the plan does differently from the grid, in words (deterministic runs on one
    seed, held-out seeds)."""
    runs = plan(spec) if runs is None else runs
    notes = []
    det = sorted({r.config.task for r in runs if r.deterministic})
    if det and len(spec.seeds) > 1:
        notes.append(f"deterministic with the full batch (the seed changes nothing), run on "
                     f"one seed (seed {spec.seeds[0]}) instead of {len(spec.seeds)}: "
                     f"{', '.join(det)}")
    if spec.n_heldout:
        notes.append(f"each optimizer's best arm per task is re-run on {spec.n_heldout} "
                     f"held-out seed(s) {list(spec.heldout_seed_list)} as '<optimizer>"
                     f"{HELDOUT_SUFFIX}' (ranked by {spec.rank_by} to target)")
    return notes


def _resolve(config: RunConfig, where: str) -> RunConfig:
    try:
        return config.resolved()
    except ValueError as e:
        raise StudyError(f"{where}: {e}") from None


def _check_values(config: RunConfig, where: str) -> None:
    dummy = torch.zeros(1, requires_grad=True)
    try:
        build_optimizer(config.optimizer, [dummy], config.hyperparams)
    except ValueError as e:
        raise StudyError(f"{where}: {e}") from None


# --------------------------------------------------------------------------- held-out seeds


def plan_heldout(spec: StudySpec, runs: Sequence[PlannedRun],
                 records: Sequence[RunRecord]) -> tuple[list[PlannedRun],
                                                        dict[str, dict[str, str]]]:
    """The held-out re-runs of a study whose grid ``runs`` produced ``records``.

    For each task and optimizer, the arm the report's ranking puts first among that
    optimizer's arms (:func:`optimlab.lab.report.stats.aggregate` with ``spec.rank_by``: work
    or time to target, then the final target metric) is re-run on
    :attr:`StudySpec.heldout_seed_list` (its first seed only when deterministic) with the label
    :func:`heldout_label`.

    Returns:
        The runs, and the choice ``{task: {optimizer: chosen arm label}}``.
    """
    from .report.stats import aggregate

    if not spec.n_heldout:
        return [], {}
    by_key = {r.key: replace(r, label=None) for r in records}
    arms: dict[tuple[str, str], dict[str, list[PlannedRun]]] = {}
    for run in runs:
        arms.setdefault((run.config.task, run.config.optimizer), {}).setdefault(
            run.label, []).append(run)
    out: list[PlannedRun] = []
    choice: dict[str, dict[str, str]] = {}
    for (task, opt), by_label in arms.items():
        recs = [replace(by_key[m.key], label=label) for label, members in by_label.items()
                for m in members if m.key in by_key]
        if not recs:
            continue
        best = next(s.arm for s in aggregate(recs, rank_by=spec.rank_by).values()
                    if s.is_best)
        choice.setdefault(task, {})[opt] = best
        first = by_label[best][0]
        seeds = spec.heldout_seed_list[:1] if first.deterministic else spec.heldout_seed_list
        for seed in seeds:
            cfg = replace(first.config, seed=seed)
            out.append(PlannedRun(cfg, cfg.key(), heldout_label(opt), first.deterministic))
    return out, choice


# --------------------------------------------------------------------------- execution


@dataclass
class StudyOutcome:
    """What :func:`run_study` did: the study's runs, how many were stored before, ran here,
    and ran in other processes sharing the study meanwhile."""

    name: str
    planned: int
    skipped: int
    executed: int
    notes: tuple[str, ...] = ()
    elsewhere: int = 0


def _unique(runs: Sequence[PlannedRun]) -> dict[str, PlannedRun]:
    unique: dict[str, PlannedRun] = {}
    for r in runs:
        unique.setdefault(r.key, r)
    return unique


_Item = PlannedRun | PopulationRun
_Result = RunRecord | list[RunRecord]


def _records(result: _Result) -> list[RunRecord]:
    return result if isinstance(result, list) else [result]


class _StudyRuns:
    """A study's runs as work shared between processes (:class:`optimlab.lab.claims.
    BundledWork`): keyed by run key, started in interleaved order, stored as they finish; the
    pending runs of one group form populations (:class:`~optimlab.lab.batching.Grouping`)."""

    noun = "runs"

    def __init__(self, name: str, runs: Sequence[PlannedRun], store: ResultStore,
                 progress: Callable[[int, int, RunRecord], None] | None, done: int,
                 total: int, grouping: Grouping) -> None:
        self.order = interleave(runs, group=lambda r: (r.config.task, r.label),
                                rank=lambda r: r.config.seed, salt=name)
        self.keys = [r.key for r in self.order]
        self.labels = {r.key: r.label for r in self.order}
        self.store, self.progress, self.total = store, progress, total
        self.grouping = grouping
        self.seen = store.finished(self.keys)
        self.skipped = len(self.seen)
        self.count = done + self.skipped

    def pending(self, running: set[str]) -> list[tuple[str, _Item]]:
        stored = self.store.finished(self.keys)
        runs = [r for r in self.order if r.key not in stored and r.key not in running]
        return [(item.key, item) for item in self.grouping.items(runs)]

    def members(self, key: str, item: _Item) -> tuple[str, ...]:
        return item.keys if isinstance(item, PopulationRun) else (key,)

    def narrowed(self, key: str, item: _Item, keys: Sequence[str]) -> tuple[str, _Item]:
        assert isinstance(item, PopulationRun)
        runs = tuple(r for r in item.runs if r.key in set(keys))
        return runs[0].key, (PopulationRun(runs) if len(runs) > 1 else runs[0])

    def accept(self, key: str, item: _Item) -> bool:
        return True  # a claim is only granted for a run not stored

    def finish(self, key: str, item: _Item, result: _Result) -> bool:
        for record in _records(result):
            self.store.put_run(record)  # also ends the claim
        return True

    def failed(self, item: _Item, error: BaseException) -> _Result:
        """A run whose worker died twice (or that raised) is a failed record; a population's
        members each get one."""
        return failed_records(item, error)

    def reported(self, item: _Item, result: _Result) -> None:
        """Progress after a run (or population) of this process (and any others' that
        finished since)."""
        for record in _records(result):
            self._report(record.key, record)
        self.observe()

    def observe(self) -> None:
        if self.progress is None:
            self.seen = self.store.finished(self.keys)
            return
        new = self.store.finished(self.keys) - self.seen
        for key in (k for k in self.keys if k in new):
            record = self.store.get_run(key)
            if record is not None:
                self._report(key, record)

    def _report(self, key: str, record: RunRecord) -> None:
        if key in self.seen:
            return
        self.seen.add(key)
        self.count += 1
        if self.progress is not None:
            self.progress(self.count, self.total, replace(record, label=self.labels[key]))


def execute_runs(name: str, runs: Sequence[PlannedRun], store: ResultStore,
                 executor: Executor,
                 progress: Callable[[int, int, RunRecord], None] | None = None, *,
                 done: int = 0, total: int | None = None,
                 message: Callable[[str], None] | None = None,
                 lease_s: float = LEASE_SECONDS, population: str = "auto") -> tuple[int, int]:
    """Execute the runs of study ``name`` that ``store`` lacks, sharing them with any other
    process doing the same (:func:`optimlab.lab.claims.execute_shared`: each run is claimed
    before it starts, so no run executes twice), in interleaved order
    (:func:`optimlab.lab.execution.interleave`, salted by ``name``), each stored as it
    finishes; returns when every run is stored, by whichever process.

    Args:
        progress: ``progress(count, total, record)`` after each run finished (here or by
            another process), ``count`` counting from ``done`` plus the runs already stored.
        done: runs of the study outside ``runs`` already finished (for ``count``).
        total: the total to report (default ``done + len(runs)``).
        message: where to say which processes this one is waiting for (and, once, why runs
            that would have formed a population run one at a time).
        lease_s: the claims' lease.
        population: ``"auto"``: runs that can train as one population do
            (:mod:`optimlab.lab.batching`); ``"off"``: each run alone.

    Returns:
        ``(stored before, executed here)``.
    """
    unique = list(_unique(runs).values())
    grouping = Grouping(unique, population)
    if message is not None:
        for note in grouping.notes():
            message(f"note: {note}")
    work = _StudyRuns(name, unique, store, progress, done,
                      done + len(unique) if total is None else total, grouping)
    ran = execute_shared(work, run_item, executor, store, lease_s=lease_s,
                         message=message, progress=work.reported)
    work.observe()
    return work.skipped, ran


def count_runs(spec: StudySpec) -> int:
    """The number of distinct runs of the study, held-out re-runs included (an upper bound
    for those: a chosen arm that is deterministic runs one held-out seed)."""
    runs = plan(spec)
    arms = {(r.config.task, r.config.optimizer) for r in runs}
    det = {(r.config.task, r.config.optimizer) for r in runs if r.deterministic}
    mixed = {(r.config.task, r.config.optimizer) for r in runs if not r.deterministic}
    heldout = sum(1 if a in det and a not in mixed else spec.n_heldout for a in arms) \
        if spec.n_heldout else 0
    return len(_unique(runs)) + heldout


def _missing_items(runs: Mapping[str, PlannedRun], store: ResultStore, population: str
                   ) -> int:
    """How many work items (runs alone, populations) the runs ``store`` lacks make."""
    stored = store.finished(runs)
    missing = [r for k, r in runs.items() if k not in stored]
    return len(Grouping(missing, population).items(missing))


def run_study(spec: StudySpec, store: ResultStore, *, executor: Executor | None = None,
              progress: Callable[[int, int, RunRecord], None] | None = None,
              replace: bool = False, message: Callable[[str], None] | None = None,
              lease_s: float = LEASE_SECONDS, population: str = "auto") -> StudyOutcome:
    """Run every run of ``spec`` that ``store`` does not hold, storing each as it finishes;
    then the held-out re-runs, if the study has held-out seeds. Re-running a study resumes it.

    Any number of processes may run the same study on one store at once: they share its runs
    (:func:`execute_runs`: none runs twice), each waits for the others' runs, and all end with
    the whole study stored (the same held-out choice, from the same records).

    Args:
        spec: the study; an unnamed one is named by :func:`default_name`.
        store: where results go.
        executor: how runs are executed (default: a :class:`ProcessExecutor` on all cores
            when more than one work item, a run or a population, is pending; closed at the
            end).
        progress: called as ``progress(done, total, record)`` after each run (the record with
            its ``label``), this process's or another's; ``total`` counts the held-out
            re-runs at most (exact once they are planned).
        replace: a study of the same name saved with another spec is replaced (its list of
            runs; the runs stay stored) instead of refused.
        message: where to say which processes this one waits for.
        lease_s: the lease of this process's claims (:mod:`optimlab.lab.claims`).
        population: ``"auto"``: runs that can train as one population do (an arm's seeds;
            the records are the same); ``"off"``: each run alone. Not part of the study.

    Raises:
        StoreError: the store cannot be written, or the name is bound to another spec.
    """
    name = spec.resolved_name
    saved = {**spec.to_dict(), "name": name, "heldout_seeds": spec.n_heldout}
    runs = plan(spec)
    unique = _unique(runs)
    det = sorted({r.config.task for r in runs if r.deterministic})
    if det:
        saved["deterministic"] = {t: True for t in det}
    links = [(r.key, r.label) for r in unique.values()]
    store.save_study(name, saved, links, replace=replace)
    own = executor is None
    if executor is None:
        missing = _missing_items(unique, store, population)
        executor = ProcessExecutor() if missing > 1 else InlineExecutor()
    shared = {"message": message, "lease_s": lease_s, "population": population}
    try:
        skipped, executed = execute_runs(name, list(unique.values()), store, executor,
                                         progress, total=count_runs(spec), **shared)
        elsewhere = len(unique) - skipped - executed
        if spec.n_heldout:
            store.flush()
            extra, choice = plan_heldout(spec, runs, store.study_records(name))
            extra_unique = {k: r for k, r in _unique(extra).items() if k not in unique}
            saved["heldout_choice"] = choice
            store.save_study(name, saved, links + [(r.key, r.label)
                                                   for r in extra_unique.values()])
            missing = _missing_items(extra_unique, store, population)
            if missing > 1 and own and isinstance(executor, InlineExecutor):
                executor = ProcessExecutor()
            n = len(unique) + len(extra_unique)
            s2, e2 = execute_runs(name, list(extra_unique.values()), store, executor,
                                  progress, done=len(unique), total=n, **shared)
            skipped += s2
            executed += e2
            elsewhere += len(extra_unique) - s2 - e2
            unique.update(extra_unique)
        store.flush()
    finally:
        if own:
            executor.close()  # type: ignore[attr-defined]
    return StudyOutcome(name, len(unique), skipped, executed, tuple(plan_notes(spec, runs)),
                        elsewhere)
