"""Running a tuning: one Optuna study per (task, optimizer), trials through the lab's runner loop.

:func:`tune` runs one Optuna study per (task, optimizer), named ``"{name}/{task}/{optimizer}"``,
each with the same number of trials (``trials``) of the same length (``steps``), so that every
optimizer gets the same tuning budget. A trial is one run (:func:`optimlab.lab.runs.execute`).
The first :data:`~optimlab.lab.tuning.spec.MIN_TRIALS` trials of a study are a space-filling
design (a scrambled Halton sequence over the search space, seeded); the rest are drawn by a
seeded TPE sampler that models the results so far. The run's evaluations are reported to
Optuna as intermediate values and a pruner (median by default) stops hopeless trials early.

The objective
-------------

By default the **ranking objective** (:func:`optimlab.lab.objective.run_objective`): the
fraction of the run's gradient evaluations spent until it settled at the task's target (in
``[0, 1]``); a run that never settles scores above 1, by its final target metric (``1 +
log(1 + excess / |target|)``). Tuning thus selects what the report's ranking rewards (work to
target, then the final target metric). ``objective=`` names a metric whose final value is
minimized instead. A diverged run (non-finite or exploding loss) is a *complete* trial with
value ``+inf`` (``user_attrs["status"] == "diverged"``); a run that fails with an error is a
``FAIL`` trial; a pruned one is ``PRUNED``. All three count towards the budget.

Reproducibility, resumption and parallelism
-------------------------------------------

Trials of one study run one after the other (trial ``k`` sees exactly trials ``0 .. k-1``),
each with a sampler seeded from ``(seed, task, optimizer, trial index)`` (SHA-256, not Python's
salted ``hash``) and the run seed ``seed``, on a fixed number of torch threads: with the same
seed and budget, two tunings give the same trials (on CPU), and a study resumed after a kill
gives the trials an uninterrupted one would have. Studies run in parallel: each trial is an
item of :func:`optimlab.lab.execution.execute_all` whose follow-up is the study's next trial.

Studies live in the results store's SQLite database by default (Optuna's tables beside the
``optimlab_`` ones), or in any database Optuna reaches by URL (``storage=``). Running the same
tuning again resumes it: finished trials are kept and only the missing ones run; a trial left
``RUNNING`` by a killed process is marked ``FAIL`` with ``user_attrs["interrupted"]`` and does
not count, so no trial of the budget is lost. Raising ``trials`` extends a study; changing any
other setting under the same name is refused.

Any number of processes may run one tuning at once (on one results store, which holds the
claims): each trial index is claimed before it runs (:mod:`optimlab.lab.tuning.shared`), so
every index runs exactly once, the budget is exact, and since trial ``k`` still sees exactly
trials ``0 .. k-1`` the trials, and so the best configurations, are those of one process,
start and TPE trials alike (the processes speed up a tuning of several studies, not one study).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..claims import LEASE_SECONDS, execute_shared
from ..execution import Executor, InlineExecutor, ProcessExecutor, default_workers
from ..objective import excess_value, run_objective
from ..runs import RunPruned, execute
from ..schema import RunConfig, RunRecord
from ..store import DEFAULT_URL, open_store
from ..study import StudyOutcome
from ..tasks import make_task
from .space import Param, TuneError, hyperparams_for, search_space
from .spec import MIN_TRIALS, TuneSpec, derive_seed, pruner_id

__all__ = ["FINISHED", "MAX_REPORTS", "N_STARTUP_TRIALS", "StudyResult", "TuneOutcome",
           "storage_url", "tune"]

#: Space-filling (scrambled Halton) trials at the start of every study, before TPE models.
N_STARTUP_TRIALS = MIN_TRIALS
#: The median pruner's completed trials before it prunes anything.
PRUNER_STARTUP_TRIALS = 3
#: The median pruner does not prune in the first quarter of a run.
PRUNER_WARMUP_FRACTION = 0.25
#: At most about this many evaluations per trial are reported to Optuna (one database write each).
MAX_REPORTS = 50
#: Trial states (Optuna's names, lower case) that count towards the budget.
FINISHED = ("complete", "pruned", "fail")


# --------------------------------------------------------------------------- storage


def storage_url(store: str | None = None) -> str:
    """The Optuna storage URL of a results-store URL or path (the same SQLite file)."""
    url = str(store) if store is not None else DEFAULT_URL
    return url if "://" in url else f"sqlite:///{url}"


def optuna_module() -> Any:
    """Optuna, quiet (a :class:`TuneError` saying how to install it when it is missing)."""
    try:
        import optuna
    except ImportError:  # pragma: no cover - depends on the installation
        raise TuneError("tuning needs optuna: pip install 'optimlab[lab]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


#: Server databases (``postgresql://...``): each running trial records a heartbeat this often
#: (seconds), and a ``RUNNING`` trial whose heartbeat is older than :data:`HEARTBEAT_GRACE_S`
#: is failed by the next process that asks for a trial of its study (Optuna's
#: ``fail_stale_trials``) and listed as interrupted by :func:`_stale_trial` (not counted: the
#: claims run its index again). SQLite storages (one machine) rely on the claims alone.
HEARTBEAT_S = 10
HEARTBEAT_GRACE_S = 60


#: The study's user attribute listing the numbers of the trials failed for a stale heartbeat
#: (a finished trial's own attributes can no longer be set).
STALE_ATTR = "optimlab_interrupted"


def _stale_trial(study: Any, trial: Any) -> None:
    """Optuna's stale-trial callback: a trial whose process stopped beating (killed, its
    machine lost) is interrupted, so it does not count and its index runs again."""
    stale = set(study.user_attrs.get(STALE_ATTR, [])) | {trial.number}
    study.set_user_attr(STALE_ATTR, sorted(stale))


def _heartbeat_options() -> dict[str, Any]:
    """RDBStorage's heartbeat arguments (the callback's name changed in Optuna 4.9)."""
    import inspect

    optuna = optuna_module()
    names = inspect.signature(optuna.storages.RDBStorage).parameters
    callback = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names
                else "failed_trial_callback")
    return {"heartbeat_interval": HEARTBEAT_S, "grace_period": HEARTBEAT_GRACE_S,
            callback: _stale_trial}


def _sqlalchemy_url(url: str) -> str:
    """``url`` with a driver SQLAlchemy can load: ``postgresql://`` means psycopg2 to
    SQLAlchemy; where only psycopg 3 is installed (optimlab's ``distributed`` extra), it is
    named (``postgresql+psycopg://``)."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return f"postgresql+psycopg{sep}{rest}"
    return url


_STORAGES: dict[str, Any] = {}
#: Processes that open a new storage together race to create Optuna's tables: the losers'
#: attempts fail (a duplicate table or version row) and are made again, this many times.
STORAGE_ATTEMPTS = 5


def _creation_race(error: Exception) -> bool:
    """``error`` is what losing the race to create Optuna's tables raises."""
    text = str(error).lower()
    return any(s in text for s in ("already exists", "unique constraint", "locked"))


def close_storages() -> None:
    """Close the storages :func:`open_storage` opened in this process (their connections)."""
    while _STORAGES:
        _, storage = _STORAGES.popitem()
        with contextlib.suppress(Exception):
            storage.engine.dispose()


def readonly_storage_url(sqlite_uri: str) -> str:
    """The SQLAlchemy URL of a SQLite URI (``file:/path?mode=ro``, as a read-only
    :class:`~optimlab.lab.store_sqlite.SQLiteStore` opens its file): Optuna then reads a
    database in a read-only folder as the results store does."""
    return f"sqlite:///{sqlite_uri}&uri=true"


def open_storage(url: str, *, readonly: bool = False) -> Any:
    """The Optuna storage at ``url`` (one per URL and process); ``readonly``: only read it
    (no tables created: for a database opened read-only, see :func:`readonly_storage_url`)."""
    if url in _STORAGES:
        return _STORAGES[url]
    optuna = optuna_module()
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    server = {} if url.startswith("sqlite") else _heartbeat_options()
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            storage = optuna.storages.RDBStorage(_sqlalchemy_url(url), engine_kwargs=kwargs,
                                                 skip_table_creation=readonly, **server)
            break
        except Exception as e:  # a bad URL, an unreachable server, not a database, or ...
            if attempt + 1 < STORAGE_ATTEMPTS and _creation_race(e):
                time.sleep(0.1 * (attempt + 1))  # ... another process creating the tables
                continue
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, ModuleNotFoundError):
                first += "; pip install 'optimlab[distributed]'"
            from ..store_postgres import redacted
            raise TuneError(f"cannot open the tuning storage {redacted(url)!r}: {first}"
                            ) from None
    _STORAGES[url] = storage
    return storage


# --------------------------------------------------------------------------- one study


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to run a trial of one study (picklable)."""

    storage: str
    study: str
    task: str
    optimizer: str
    params: tuple[Param, ...]
    schedules: tuple[str, ...]
    trials: int
    steps: int
    batch_size: int | str
    seed: int
    eval_every: int | None
    task_options: dict[str, Any]
    objective: str | None  # None: the ranking objective
    target: float
    target_metric: str
    pruner: Any
    threads: int
    clip_norm: float | None
    clip_value: float | None

    def signature(self) -> dict[str, Any]:
        """The settings that must not change when the study resumes."""
        return {"task": self.task, "optimizer": self.optimizer,
                "params": [asdict(p) for p in self.params], "schedules": list(self.schedules),
                "steps": self.steps, "batch_size": self.batch_size, "seed": self.seed,
                "eval_every": self.eval_every, "task_options": self.task_options,
                "objective": self.objective, "pruner": pruner_id(self.pruner),
                "clip_norm": self.clip_norm, "clip_value": self.clip_value}


@dataclass(frozen=True)
class _Trial:
    """Trial ``index`` of ``job``'s study (an item of the runner loop)."""

    job: _Job
    index: int


def _pruner(job: _Job) -> Any:
    optuna = optuna_module()
    if job.pruner == "none":
        return optuna.pruners.NopPruner()
    if job.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER_STARTUP_TRIALS,
            n_warmup_steps=int(job.steps * PRUNER_WARMUP_FRACTION))
    return job.pruner


def _sampler(job: _Job, index: int) -> Any:
    optuna = optuna_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate is "experimental" in older Optuna
        return optuna.samplers.TPESampler(
            seed=derive_seed(job.seed, job.task, job.optimizer, index),
            n_startup_trials=N_STARTUP_TRIALS, multivariate=True, constant_liar=False)


def load_study(job: _Job, index: int = 0) -> Any:
    """``job``'s Optuna study with the sampler of trial ``index``."""
    optuna = optuna_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.load_study(study_name=job.study, storage=open_storage(job.storage),
                                 sampler=_sampler(job, index), pruner=_pruner(job))


def counted_trials(study: Any) -> list[Any]:
    """The study's trials that count towards the budget, by number (not those interrupted:
    killed, or failed for a stale heartbeat)."""
    stale = set(study.user_attrs.get(STALE_ATTR, ()))
    return [t for t in study.get_trials(deepcopy=False)
            if t.state.name.lower() in FINISHED and not t.user_attrs.get("interrupted")
            and t.number not in stale]


def _prepare(job: _Job) -> None:
    """Create the study, or check that the stored one has the same settings. (Trials a dead
    process left running are failed by whoever claims the study's next trial:
    :mod:`optimlab.lab.tuning.shared`.)"""
    optuna = optuna_module()
    storage = open_storage(job.storage)
    study = optuna.create_study(study_name=job.study, storage=storage, direction="minimize",
                                load_if_exists=True)
    signature = json.loads(json.dumps(job.signature()))
    stored = study.user_attrs.get("optimlab")
    if stored is None:
        study.set_user_attr("optimlab", signature)
    elif stored != signature:
        k = sorted(k for k in set(stored) | set(signature) if stored.get(k) != signature.get(k))[0]
        raise TuneError(f"tuning study {job.study!r} was run with other settings ({k}: "
                        f"{stored.get(k)!r}, now {signature.get(k)!r}); use another name or "
                        "the same settings")


def _startup_params(job: _Job, index: int) -> dict[str, Any] | None:
    """The space-filling design's point for trial ``index`` (``None`` after the start): row
    ``index`` of a scrambled Halton sequence (seeded) mapped onto each range (log-uniformly
    for log ranges), the last coordinate choosing the schedule when there are several."""
    if index >= N_STARTUP_TRIALS:
        return None
    from scipy.stats import qmc

    tuned_schedule = len(job.schedules) > 1
    dims = len(job.params) + tuned_schedule
    points = qmc.Halton(d=dims, scramble=True, seed=derive_seed(
        job.seed, job.task, job.optimizer, "start")).random(N_STARTUP_TRIALS)
    u = points[index]
    out: dict[str, Any] = {}
    for p, x in zip(job.params, u, strict=False):
        if p.log:
            value = math.exp(math.log(p.low) + float(x) * (math.log(p.high) - math.log(p.low)))
        else:
            value = p.low + float(x) * (p.high - p.low)
        out[p.key] = min(max(value, p.low), p.high)
    if tuned_schedule:
        out["schedule"] = job.schedules[min(int(u[-1] * len(job.schedules)),
                                            len(job.schedules) - 1)]
    return out


def _run_trial(item: _Trial) -> dict[str, Any]:
    """Worker entry point: run trial ``item.index`` of its study and tell Optuna the result;
    returns the trial's event (see :func:`tune`'s ``progress``)."""
    job, index = item.job, item.index
    optuna = optuna_module()
    state = optuna.trial.TrialState
    study = load_study(job, index)
    have = len(counted_trials(study))
    if have != index:
        raise TuneError(f"tuning study {job.study!r} changed while it ran (trial {index} "
                        f"expected, {have} stored): is another process tuning it?")
    # the thread study.optimize runs around a trial (Optuna's; nothing without a heartbeat)
    from optuna.storages._heartbeat import get_heartbeat_thread

    storage = open_storage(job.storage)
    with warnings.catch_warnings():  # (the stale trials' indices are claimed: see shared.py)
        warnings.simplefilter("ignore")  # heartbeats are "meant for optimize" and experimental
        optuna.storages.fail_stale_trials(study)  # (nothing without a heartbeat)
        start = _startup_params(job, index)
        if start is not None:
            study.enqueue_trial(start)
        trial = study.ask()
    beat = get_heartbeat_thread(trial._trial_id, storage)
    beat.start()
    try:
        return _one_trial(job, study, trial, index, state)
    except optuna.exceptions.UpdateFinishedTrialError:
        # another process took the trial over (this one stopped renewing its claim, e.g.
        # suspended past its lease) and failed it: the result does not count
        return {"study": job.study, "task": job.task, "optimizer": job.optimizer,
                "index": index, "number": trial.number, "state": "lost", "status": "lost",
                "value": None, "objective": job.objective or "work to target",
                "hyperparams": {}, "schedule": None}
    except BaseException:  # killed (Ctrl-C) or a bug: the trial does not count
        with contextlib.suppress(Exception):
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=state.FAIL)
        raise
    finally:
        beat.join()


class _Reporter:
    """Reports a run's evaluations to its trial (about :data:`MAX_REPORTS` of them) and asks
    the pruner. With the ranking objective the value at step ``s`` is provisional: the step
    fraction since the metric has been at or below the target, or the excess above it (the
    same scale as the final value)."""

    def __init__(self, job: _Job, trial: Any) -> None:
        self.job, self.trial = job, trial
        self.last_bucket = -1
        self.below_since: int | None = None
        self.missing = False

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        job = self.job
        name = job.objective or job.target_metric
        if name not in metrics:
            self.missing = True
            return
        m = float(metrics[name])
        if job.objective is None:
            if math.isfinite(m) and m <= job.target:
                self.below_since = step if self.below_since is None else self.below_since
                value = self.below_since / job.steps
            else:
                self.below_since = None
                value = excess_value(m, job.target)
        else:
            value = m
        bucket = step * MAX_REPORTS // job.steps  # the same steps in every trial
        if bucket == self.last_bucket:
            return
        self.last_bucket = bucket
        if math.isfinite(value):
            self.trial.report(value, step)
            if self.trial.should_prune():
                raise RunPruned(f"{name} {m:.4g}")


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(x) for k, x in metrics.items()
            if isinstance(x, (int, float)) and math.isfinite(x)}


def _one_trial(job: _Job, study: Any, trial: Any, index: int, state: Any) -> dict[str, Any]:
    drawn = {p.key: trial.suggest_float(p.key, p.low, p.high, log=p.log) for p in job.params}
    schedule = (trial.suggest_categorical("schedule", list(job.schedules))
                if len(job.schedules) > 1 else job.schedules[0])
    hyper = hyperparams_for(job.optimizer, job.params, drawn)
    trial.set_user_attr("index", index)
    trial.set_user_attr("hyperparams", hyper)
    trial.set_user_attr("schedule", schedule)
    config = RunConfig(task=job.task, optimizer=job.optimizer, hyperparams=hyper,
                       task_options=job.task_options, schedule=schedule,
                       batch_size=job.batch_size, seed=job.seed, steps=job.steps,
                       eval_every=job.eval_every, clip_norm=job.clip_norm,
                       clip_value=job.clip_value)
    reporter = _Reporter(job, trial)
    record: RunRecord = execute(config, threads=job.threads, on_eval=reporter)
    objective = job.objective or ""
    if job.objective is not None and record.final and job.objective not in record.final:
        raise TuneError(f"objective: task {job.task!r} reports no metric {job.objective!r}; "
                        f"it reports {', '.join(record.final)}")
    status = record.status
    trial.set_user_attr("objective", job.objective or "work to target")
    trial.set_user_attr("status", status)
    trial.set_user_attr("error", record.error)
    trial.set_user_attr("final", _finite(record.final))
    trial.set_user_attr("steps_done", record.steps_done)
    trial.set_user_attr("train_seconds", record.train_seconds)
    trial.set_user_attr("steps_to_target", record.steps_to_target)
    trial.set_user_attr("key", record.key)
    value: float | None = None
    if status == "pruned":
        study.tell(trial, state=state.PRUNED)
        tstate = "pruned"
    elif status == "failed":
        study.tell(trial, state=state.FAIL)
        tstate = "fail"
    else:
        value = (run_objective(record) if job.objective is None
                 else record.metric(objective))
        if status != "ok" or not math.isfinite(value):
            if status == "ok":
                trial.set_user_attr("status", "diverged")
                trial.set_user_attr("error", f"final {job.objective or job.target_metric} "
                                             "is not finite")
            value = math.inf
        study.tell(trial, value)
        tstate = "complete"
    name = job.objective or "work to target"
    if "objective" not in study.user_attrs:
        study.set_user_attr("objective", name)
    return {"study": job.study, "task": job.task, "optimizer": job.optimizer, "index": index,
            "number": trial.number, "state": tstate,
            "status": trial.user_attrs.get("status", status), "value": value,
            "objective": name, "hyperparams": hyper, "schedule": schedule}


# --------------------------------------------------------------------------- results


@dataclass
class StudyResult:
    """The outcome of one (task, optimizer) study (over its first ``trials`` counted trials).

    Attributes:
        study: the Optuna study name.
        objective: what was minimized (``"work to target"``: the ranking objective).
        best_value: the best objective (``None`` when no trial gave a finite one).
        best_params: the best trial's drawn values (Optuna's names: ``"lr"``, ``"1-beta1"``).
        best_hyperparams: the optimizer hyperparameters they give.
        best_schedule: the best trial's learning-rate schedule.
        best_index: the best trial's index in the budget (0-based).
        complete, pruned, failed, diverged: trial counts (diverged trials are complete ones).
        interrupted: trials lost to a killed process (not counted; re-run).
        ran: trials run by this call.
    """

    task: str
    optimizer: str
    study: str
    objective: str | None
    trials: int
    best_value: float | None
    best_params: dict[str, Any]
    best_hyperparams: dict[str, Any]
    best_schedule: str | None
    best_index: int | None
    complete: int
    pruned: int
    failed: int
    diverged: int
    interrupted: int
    ran: int = 0


@dataclass
class TuneOutcome:
    """What :func:`tune` did."""

    name: str
    storage: str
    results: list[StudyResult]
    rerun: StudyOutcome | None = None

    def best(self, task: str, optimizer: str) -> StudyResult:
        """The result of the (task, optimizer) study."""
        for r in self.results:
            if r.task == task and r.optimizer == optimizer:
                return r
        raise KeyError((task, optimizer))


def _result(job: _Job, study: Any, ran: int) -> StudyResult:
    counted = counted_trials(study)[: job.trials]
    lost = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("interrupted")]
    finite = [t for t in counted if t.state.name == "COMPLETE" and t.value is not None
              and math.isfinite(t.value)]
    best = min(finite, key=lambda t: (t.value, t.number)) if finite else None
    return StudyResult(
        task=job.task, optimizer=job.optimizer, study=job.study,
        objective=study.user_attrs.get("objective"), trials=job.trials,
        best_value=None if best is None else float(best.value),
        best_params={} if best is None else dict(best.params),
        best_hyperparams={} if best is None else dict(best.user_attrs.get("hyperparams", {})),
        best_schedule=None if best is None else best.user_attrs.get("schedule"),
        best_index=None if best is None else best.user_attrs.get("index"),
        complete=sum(t.state.name == "COMPLETE" for t in counted),
        pruned=sum(t.state.name == "PRUNED" for t in counted),
        failed=sum(t.state.name == "FAIL" for t in counted),
        diverged=sum(t.user_attrs.get("status") == "diverged" for t in counted),
        interrupted=len(lost), ran=ran)


def _jobs(spec: TuneSpec, storage: str, threads: int) -> list[_Job]:
    name = spec.resolved_name
    jobs = []
    for task in spec.tasks:
        options = dict(spec.task_options.get(task, {}))
        info = make_task(task, **options).info
        steps = spec.steps or info.steps
        for opt in spec.optimizers:
            jobs.append(_Job(
                storage=storage, study=f"{name}/{task}/{opt}", task=task, optimizer=opt,
                params=tuple(search_space(opt, spec.space)), schedules=tuple(spec.schedules),
                trials=spec.trials, steps=steps, batch_size=spec.batch_size, seed=spec.seed,
                eval_every=spec.eval_every, task_options=options, objective=spec.objective,
                target=float(info.target), target_metric=info.target_metric,
                pruner=spec.pruner, threads=threads, clip_norm=spec.clip_norm,
                clip_value=spec.clip_value))
    return jobs


def tune(spec: TuneSpec, store: str | None = None, *, storage: str | None = None,
         workers: int | None = None, threads: int = 1, rerun: bool = True,
         executor: Executor | None = None,
         progress: Callable[[int, int, dict[str, Any] | None], None] | None = None,
         rerun_progress: Callable[[int, int, RunRecord], None] | None = None,
         message: Callable[[str], None] | None = None, lease_s: float = LEASE_SECONDS
         ) -> TuneOutcome:
    """Tune every optimizer of ``spec`` on every task, then re-run the best configurations.

    Resumes a tuning with the same name: finished trials are kept, only the missing ones run.

    Args:
        spec: what to tune.
        store: the results-store URL or path (default ``optimlab-results/results.db``); the
            re-runs go there, and the Optuna studies too unless ``storage`` is given.
        storage: an Optuna storage URL (``postgresql://...``) for the studies.
        workers: parallel trials, each of a different study (default: one per core; 1 runs
            everything in this process). Ignored when ``executor`` is given.
        threads: torch threads per trial (keep it fixed for reproducible trials).
        rerun: re-run each best configuration with ``spec.seeds`` seeds (study
            ``"{name}-best"`` in the store, arms ``"<optimizer> best"``).
        executor: where trials and re-runs execute (default: a process pool of ``workers``).
        progress: called as ``progress(done, total, trial)`` after each trial, where ``total``
            is ``trials x tasks x optimizers`` and ``trial`` has ``task``, ``optimizer``,
            ``index``, ``state`` (complete/pruned/fail), ``status`` (ok/diverged/pruned/failed),
            ``value``, ``objective``, ``hyperparams`` and ``schedule``; called once with
            ``trial=None`` before any trial runs (``done``: trials already stored).
        rerun_progress: ``progress(done, total, record)`` after each re-run (as in
            :func:`optimlab.lab.study.run_study`; the record has its ``label``).
        message: where to say which other processes this one waits for.
        lease_s: the lease of this process's claims (:mod:`optimlab.lab.claims`).

    Any number of processes may run the same tuning on one results store at once: they share
    its trials (:mod:`optimlab.lab.tuning.shared`: every trial index runs once, and the trials
    are those of one process), then its re-runs, and each returns the same outcome.

    Raises:
        TuneError: bad settings, settings that differ from the stored study of the same name,
            an unusable storage.
        StoreError: the results store cannot be written.
    """
    from .rerun import rerun_best
    from .shared import TuningTrials

    url = storage or storage_url(store)
    workers = workers or default_workers()
    results_store = open_store(store)  # first: it creates the file in WAL mode
    own = executor is None
    try:
        results_store.check_writable()
        jobs = _jobs(spec, url, threads)
        optuna_module()
        for job in jobs:
            _prepare(job)
        work = TuningTrials(jobs, results_store, progress)
        if progress is not None:
            progress(work.done, work.total, None)
        if executor is None:
            studies_left = sum(work.seen[job.study] < job.trials for job in jobs)
            executor = (InlineExecutor() if workers <= 1 or (studies_left <= 1 and not rerun)
                        else ProcessExecutor(workers, threads))
        execute_shared(work, _run_trial, executor, results_store, lease_s=lease_s,
                       message=message, progress=work.reported)
        ran = work.ran
        results = [_result(job, load_study(job), ran[job.study]) for job in jobs]
        outcome = TuneOutcome(spec.resolved_name, url, results)
        if rerun:
            outcome.rerun = rerun_best(spec, outcome, results_store, executor=executor,
                                       progress=rerun_progress, storage=storage,
                                       message=message, lease_s=lease_s)
        return outcome
    finally:
        if own and executor is not None:
            executor.close()  # type: ignore[attr-defined]
        results_store.close()
