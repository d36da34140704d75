"""Tuning: the hyperparameters of each optimizer searched with Optuna, on an equal budget.

:func:`tune` runs one Optuna study per (task, optimizer), named ``"{name}/{task}/{optimizer}"``,
each with the same number of trials (``trials``) of the same length (``steps``), so that every
optimizer gets the same tuning budget. A trial is one run (:func:`optimlab.lab.runs.execute`)
with hyperparameters drawn from the optimizer's search space by a seeded TPE sampler; the run's
evaluations are reported to Optuna as intermediate values and a pruner (median by default) stops
hopeless trials early. The best configuration of each optimizer is then re-run with ``seeds``
fresh seeds as an optimlab study named ``"{name}-best"`` (so the report shows mean ± std), and
:func:`tuning_history` gives every trial for the report's tuning section.

Search spaces
-------------

``space="lr"`` (the default) tunes the learning rate only, every other hyperparameter at the
lab's default (:data:`optimlab.lab.optimizers.LAB_OPTIMIZERS`); ``space="full"`` adds the
hyperparameters below. Learning rates are log-uniform; ``1 - x`` means that ``1 - x`` is drawn
log-uniformly (betas, momentum, alpha, rho near 1 are explored evenly on a log scale)::

    optimizer            lr (log-uniform)   space="full" adds
    -------------------  -----------------  ---------------------------------------------------
    sgd                  1e-4 .. 1          (nothing: plain SGD has only the learning rate)
    momentum, nesterov   1e-4 .. 1          1 - momentum in 1e-2 .. 0.5 (momentum 0.5 .. 0.99)
    adagrad              1e-4 .. 1          eps 1e-10 .. 1e-6
    rmsprop              1e-5 .. 1e-1       1 - alpha in 1e-3 .. 1e-1 (alpha 0.9 .. 0.999),
                                            eps 1e-10 .. 1e-6 (momentum stays 0)
    adam, nadam, radam,  1e-5 .. 1e-1       1 - beta1 in 1e-2 .. 0.5 (beta1 0.5 .. 0.99),
    adamax                                  1 - beta2 in 1e-4 .. 1e-1 (beta2 0.9 .. 0.9999),
                                            eps 1e-10 .. 1e-6
    adamw                1e-5 .. 1e-1       as adam, and weight_decay 1e-6 .. 1e-1 (decoupled)
    adadelta             1e-2 .. 10         1 - rho in 1e-2 .. 0.5 (rho 0.5 .. 0.99),
                                            eps 1e-8 .. 1e-4

Weight decay is tuned only for AdamW, where it defines the optimizer: elsewhere it changes the
objective being minimized (a convex task's suboptimality could no longer reach 0). A custom
space is a mapping ``{optimizer: {hyperparameter: Param | (low, high)}}`` (``"betas.0"`` and
``"betas.1"`` address the components of ``betas``); optimizers it does not name use the ``"lr"``
preset; a ``"module:Class"`` optimizer needs one. ``schedules=[...]`` with two or more names
adds the learning-rate schedule as a categorical parameter.

The objective
-------------

The final value of the task's target metric (``suboptimality`` on convex and 2-D tasks, the
optimization quantity itself), except where the target is the training loss (neural tasks):
there the validation loss, when the task reports one, so that tuning does not reward overfitting
the training set. ``objective=`` names another metric; it is always minimized. A diverged run
(non-finite or exploding loss) is a *complete* trial with value ``+inf`` (the worst, so the
sampler learns to avoid the region; ``user_attrs["status"] == "diverged"``); a run that fails
with an error is a ``FAIL`` trial; a pruned one is ``PRUNED``. All three count towards the
budget.

Reproducibility, resumption and parallelism
-------------------------------------------

Trials of one study run one after the other, each with its own sampler seeded from
``(seed, task, optimizer, trial index)`` (SHA-256, not Python's salted ``hash``) and the run seed
``seed``, on one torch thread: with the same seed and budget, two tuning runs give the same trials
(on CPU), and a study resumed after a kill gives the trials an uninterrupted one would have.
Parallelism is across studies: one process per (task, optimizer) study, up to ``workers``.

Studies live in the results store's SQLite database by default (Optuna's tables beside the
``optimlab_`` ones), or in any database Optuna reaches by URL (``storage=``). Running the same
tuning again resumes it: finished trials are kept and only the missing ones run; a trial left
``RUNNING`` by a killed process is marked ``FAIL`` with ``user_attrs["interrupted"]`` and does
not count, so no trial of the budget is lost. Raising ``trials`` extends a study; changing any
other setting under the same name is refused (one tuning process per study at a time).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import queue as queue_mod
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .optimizers import LAB_OPTIMIZERS, build_optimizer, lookup, resolve_hyperparams
from .runs import SCHEDULES, RunConfig, RunPruned, execute, parse_batch_size
from .store import DEFAULT_URL, ResultStore, open_store
from .study import (
    Executor,
    InlineExecutor,
    PlannedRun,
    ProcessExecutor,
    StudyError,
    StudyOutcome,
    default_workers,
)
from .tasks import make_task

__all__ = ["SEARCH_SPACES", "Param", "StudyResult", "TuneError", "TuneOutcome", "TuneSpec",
           "derive_seed", "rerun_best", "search_space", "storage_url", "tune",
           "tuning_for_study", "tuning_history"]

#: Random (startup) trials of the TPE sampler before it models the results.
N_STARTUP_TRIALS = 10
#: The median pruner's completed trials before it prunes anything.
PRUNER_STARTUP_TRIALS = 3
#: The median pruner does not prune in the first quarter of a run.
PRUNER_WARMUP_FRACTION = 0.25
#: At most about this many evaluations per trial are reported to Optuna (one database write each).
MAX_REPORTS = 50
#: Trial states (Optuna's names, lower case) that count towards the budget.
FINISHED = ("complete", "pruned", "fail")


class TuneError(StudyError):
    """An invalid tuning spec or search space; the message names the field (one line)."""


# --------------------------------------------------------------------------- search spaces


@dataclass(frozen=True)
class Param:
    """One tuned hyperparameter.

    Attributes:
        name: the hyperparameter (``"lr"``, ``"momentum"``, ``"eps"``; ``"betas.0"`` is the
            first component of ``betas``).
        low, high: the range of the *drawn* value (of ``1 - x`` for ``transform="one_minus"``).
        log: draw log-uniformly (else uniformly).
        transform: ``"identity"`` or ``"one_minus"`` (the hyperparameter is ``1 - drawn``).
    """

    name: str
    low: float
    high: float
    log: bool = True
    transform: str = "identity"

    @property
    def key(self) -> str:
        """The name of the drawn value in Optuna (``"lr"``, ``"1-beta1"``)."""
        shown = {"betas.0": "beta1", "betas.1": "beta2"}.get(self.name, self.name)
        return f"1-{shown}" if self.transform == "one_minus" else shown

    def value(self, drawn: float) -> float:
        """The hyperparameter's value for a drawn value."""
        return 1.0 - drawn if self.transform == "one_minus" else drawn


def _lr(low: float, high: float) -> Param:
    return Param("lr", low, high)


_EPS = Param("eps", 1e-10, 1e-6)
_BETAS = (Param("betas.0", 1e-2, 0.5, transform="one_minus"),
          Param("betas.1", 1e-4, 1e-1, transform="one_minus"))
_MOMENTUM = Param("momentum", 1e-2, 0.5, transform="one_minus")


def _space(*params: Param) -> dict[str, Param]:
    return {p.name: p for p in params}


#: The ``"full"`` search space of every lab optimizer (``"lr"``: its ``lr`` entry only).
SEARCH_SPACES: dict[str, dict[str, Param]] = {
    "sgd": _space(_lr(1e-4, 1.0)),
    "momentum": _space(_lr(1e-4, 1.0), _MOMENTUM),
    "nesterov": _space(_lr(1e-4, 1.0), _MOMENTUM),
    "adagrad": _space(_lr(1e-4, 1.0), _EPS),
    "rmsprop": _space(_lr(1e-5, 1e-1), Param("alpha", 1e-3, 1e-1, transform="one_minus"),
                      _EPS),
    "adam": _space(_lr(1e-5, 1e-1), *_BETAS, _EPS),
    "adamw": _space(_lr(1e-5, 1e-1), *_BETAS, _EPS, Param("weight_decay", 1e-6, 1e-1)),
    "nadam": _space(_lr(1e-5, 1e-1), *_BETAS, _EPS),
    "radam": _space(_lr(1e-5, 1e-1), *_BETAS, _EPS),
    "adamax": _space(_lr(1e-5, 1e-1), *_BETAS, _EPS),
    "adadelta": _space(_lr(1e-2, 10.0), Param("rho", 1e-2, 0.5, transform="one_minus"),
                       Param("eps", 1e-8, 1e-4)),
}
assert set(SEARCH_SPACES) == set(LAB_OPTIMIZERS)


def _param(optimizer: str, name: str, value: Any) -> Param:
    where = f"space.{optimizer}.{name}"
    if isinstance(value, Param):
        p = value
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        p = Param(name, *value)
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - {"low", "high", "log", "transform"})
        if unknown or "low" not in value or "high" not in value:
            raise TuneError(f"{where}: a table with low, high and optionally log, transform; "
                            f"got {dict(value)!r}")
        p = Param(name, value["low"], value["high"], bool(value.get("log", True)),
                  str(value.get("transform", "identity")))
    else:
        raise TuneError(f"{where}: a range (low, high) or a Param, got {value!r}")
    if p.name != name:
        raise TuneError(f"{where}: the Param is named {p.name!r}")
    for bound in (p.low, p.high):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(
                bound):
            raise TuneError(f"{where}: bounds must be finite numbers, got {bound!r}")
    if not p.low < p.high:
        raise TuneError(f"{where}: low must be < high, got {p.low!r} .. {p.high!r}")
    if p.log and p.low <= 0:
        raise TuneError(f"{where}: a log-uniform range needs low > 0, got {p.low!r}")
    if p.transform not in ("identity", "one_minus"):
        raise TuneError(f"{where}: transform is 'identity' or 'one_minus', got {p.transform!r}")
    if p.transform == "one_minus" and not (p.low >= 0 and p.high <= 1):
        raise TuneError(f"{where}: a one_minus range lies in [0, 1], got {p.low!r} .. "
                        f"{p.high!r}")
    return Param(name, float(p.low), float(p.high), p.log, p.transform)


def search_space(optimizer: str, space: str | Mapping[str, Any] = "lr") -> list[Param]:
    """The checked list of :class:`Param` that ``optimizer`` is tuned over.

    Args:
        optimizer: a lab optimizer name or ``"module:Class"``.
        space: ``"lr"``, ``"full"`` or ``{optimizer: {hyperparameter: Param | (low, high)}}``.

    Raises:
        TuneError: unknown optimizer, empty space, a hyperparameter the optimizer does not
            have, a bad range, or a value the optimizer rejects.
    """
    try:
        lookup(optimizer)
    except ValueError as e:
        raise TuneError(str(e)) from None
    if isinstance(space, str):
        if space not in ("lr", "full"):
            raise TuneError(f"space: 'lr', 'full' or a table per optimizer, got {space!r}")
        if optimizer not in SEARCH_SPACES:
            raise TuneError(f"no search space for optimizer {optimizer!r}; give one in space, "
                            "e.g. {'lr': (1e-5, 0.1)}")
        preset = SEARCH_SPACES[optimizer]
        table: Mapping[str, Any] = preset if space == "full" else {"lr": preset["lr"]}
    elif isinstance(space, Mapping):
        if optimizer in space:
            table = space[optimizer]
            if not isinstance(table, Mapping):
                raise TuneError(f"space.{optimizer}: a table of hyperparameter ranges, got "
                                f"{table!r}")
        else:
            return search_space(optimizer, "lr")
    else:
        raise TuneError(f"space: 'lr', 'full' or a table per optimizer, got {space!r}")
    if not table:
        raise TuneError(f"search space for {optimizer!r} is empty")
    params = [_param(optimizer, str(k), v) for k, v in table.items()]
    try:
        defaults = resolve_hyperparams(optimizer)
        resolve_hyperparams(optimizer, {p.name.split(".")[0]: defaults.get(p.name.split(".")[0])
                                        for p in params})
    except ValueError as e:
        raise TuneError(f"space.{optimizer}: {e}") from None
    for p in params:
        base, _, index = p.name.partition(".")
        if index and not (index in ("0", "1") and isinstance(defaults.get(base), list)):
            raise TuneError(f"space.{optimizer}.{p.name}: {base!r} has no component {index!r}")
        if not index and isinstance(defaults.get(base), list):
            raise TuneError(f"space.{optimizer}.{p.name}: tune the components "
                            f"{base}.0 and {base}.1")
    dummy = torch.zeros(1, requires_grad=True)
    for bound in ("low", "high"):
        hyper = _hyperparams(optimizer, params, {p.key: getattr(p, bound) for p in params})
        try:
            build_optimizer(optimizer, [dummy], hyper)
        except ValueError as e:
            raise TuneError(f"space.{optimizer}: the range's {bound} end is rejected: {e}"
                            ) from None
    return params


def _hyperparams(optimizer: str, params: Sequence[Param], drawn: Mapping[str, float]
                 ) -> dict[str, Any]:
    """Optimizer hyperparameters for drawn values (the others at the lab's defaults)."""
    hyper: dict[str, Any] = {}
    defaults = resolve_hyperparams(optimizer)
    for p in params:
        base, _, index = p.name.partition(".")
        value = p.value(float(drawn[p.key]))
        if index:
            current = list(hyper.get(base, defaults[base]))
            current[int(index)] = value
            hyper[base] = current
        else:
            hyper[base] = value
    return hyper


# --------------------------------------------------------------------------- the spec


def _names(field_name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise TuneError(f"{field_name}: give at least one name, got {value!r}")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v:
            raise TuneError(f"{field_name}[{i}]: expected a name, got {v!r}")
    if len(set(value)) != len(value):
        raise TuneError(f"{field_name}: duplicate names in {list(value)}")
    return tuple(value)


def _count(field_name: str, value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TuneError(f"{field_name} must be an integer >= 1 ({what}), got {value!r}")
    if value < 1:
        raise TuneError(f"{field_name} must be >= 1 ({what}), got {value!r}")
    return value


@dataclass(frozen=True)
class TuneSpec:
    """What to tune; checked on construction (:class:`TuneError` naming the field).

    Attributes:
        tasks: task names (registry names or ``"module:factory"``; a comma-separated string
            works too).
        optimizers: lab optimizer names (or ``"module:Class"`` with a custom ``space``).
        trials: trials per (task, optimizer), the same for every optimizer (>= 1).
        steps: steps per trial and per re-run (``None``: each task's default budget).
        batch_size: ``"full"`` or a positive integer.
        seed: seeds the samplers and is the run seed of every trial.
        seeds: the best configurations are re-run with seeds ``seed + 1 .. seed + seeds``
            (held out from tuning, so mean ± std is not biased by the selection).
        space: ``"lr"``, ``"full"`` or a custom table (see the module docstring).
        schedules: learning-rate schedules; one name fixes it, two or more are tuned as a
            categorical parameter (empty: ``"constant"``).
        pruner: ``"median"``, ``"none"`` or an ``optuna.pruners.BasePruner``.
        objective: the metric to minimize (``None``: see the module docstring).
        task_options: ``{task: {option: value}}`` for the task factories.
        eval_every: steps between evaluations (``None``: about 25 per run); pruning decisions
            happen at evaluations.
        name: the tuning's name (``None``: derived from the settings, so that the same command
            resumes); studies are ``"{name}/{task}/{optimizer}"``.
    """

    tasks: Sequence[str]
    optimizers: Sequence[str]
    trials: int = 20
    steps: int | None = None
    batch_size: int | str = 32
    seed: int = 0
    seeds: int = 3
    space: str | Mapping[str, Any] = "lr"
    schedules: Sequence[str] = ()
    pruner: Any = "median"
    objective: str | None = None
    task_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    eval_every: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "tasks", _names("tasks", self.tasks))
        setattr_(self, "optimizers", _names("optimizers", self.optimizers))
        setattr_(self, "trials", _count("trials", self.trials,
                                        "the same number of trials for every optimizer"))
        if self.steps is not None:
            _count("steps", self.steps, "steps per trial")
        if self.eval_every is not None:
            _count("eval_every", self.eval_every, "steps between evaluations")
        _count("seeds", self.seeds, "seeds of the re-run of the best configurations")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise TuneError(f"seed must be a non-negative integer, got {self.seed!r}")
        try:
            setattr_(self, "batch_size", parse_batch_size(self.batch_size))
        except ValueError as e:
            raise TuneError(str(e)) from None
        schedules = (_names("schedules", self.schedules) if self.schedules else ("constant",))
        for s in schedules:
            if s not in SCHEDULES:
                raise TuneError(f"schedules: unknown schedule {s!r}; allowed: "
                                f"{', '.join(SCHEDULES)}")
        setattr_(self, "schedules", schedules)
        if not (self.pruner in ("median", "none") or _is_pruner(self.pruner)):
            raise TuneError(f"pruner: 'median', 'none' or an optuna pruner, got {self.pruner!r}")
        if self.objective is not None and (not isinstance(self.objective, str)
                                           or not self.objective):
            raise TuneError(f"objective: a metric name, got {self.objective!r}")
        if self.objective is not None and "accuracy" in self.objective:
            raise TuneError(f"objective: {self.objective!r} is to be maximized; tuning "
                            "minimizes, give a loss (val_loss) instead")
        if self.name is not None and (not isinstance(self.name, str) or not self.name
                                      or "/" in self.name):
            raise TuneError(f"name: a non-empty string without '/', got {self.name!r}")
        if not isinstance(self.task_options, Mapping):
            raise TuneError(f"task_options: a table per task, got {self.task_options!r}")
        for task in self.task_options:
            if task not in self.tasks:
                raise TuneError(f"task_options.{task}: {task!r} is not in tasks")
        for i, task in enumerate(self.tasks):
            try:
                make_task(task, **dict(self.task_options.get(task, {})))
            except (ValueError, TypeError) as e:
                raise TuneError(f"tasks[{i}]: {e}") from None
        for i, opt in enumerate(self.optimizers):
            try:
                lookup(opt)
            except ValueError as e:
                raise TuneError(f"optimizers[{i}]: {e}") from None
            search_space(opt, self.space)
        if isinstance(self.space, Mapping):
            for opt in self.space:
                if opt not in self.optimizers:
                    raise TuneError(f"space.{opt}: {opt!r} is not in optimizers")

    @property
    def resolved_name(self) -> str:
        """``name``, or one derived from the settings (not from tasks, optimizers, trials
        and seeds, so that adding any of them resumes the same tuning)."""
        if self.name:
            return self.name
        body = {"steps": self.steps, "batch_size": self.batch_size, "seed": self.seed,
                "space": _space_json(self.space), "schedules": list(self.schedules),
                "pruner": _pruner_id(self.pruner), "objective": self.objective,
                "eval_every": self.eval_every,
                "task_options": {k: dict(v) for k, v in sorted(self.task_options.items())}}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode())
        return f"tune-{digest.hexdigest()[:8]}"

    def rerun_seeds(self) -> list[int]:
        """The seeds of the re-run of the best configurations."""
        return [self.seed + 1 + i for i in range(self.seeds)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (the pruner by name, the name resolved)."""
        return {"name": self.resolved_name, "tasks": list(self.tasks),
                "optimizers": list(self.optimizers), "trials": self.trials,
                "steps": self.steps, "batch_size": self.batch_size, "seed": self.seed,
                "seeds": self.seeds, "space": _space_json(self.space),
                "schedules": list(self.schedules), "pruner": _pruner_id(self.pruner),
                "objective": self.objective, "eval_every": self.eval_every,
                "task_options": {k: dict(v) for k, v in self.task_options.items()}}


def _is_pruner(obj: Any) -> bool:
    try:
        import optuna
    except ImportError:  # pragma: no cover - depends on the installation
        return False
    return isinstance(obj, optuna.pruners.BasePruner)


def _pruner_id(pruner: Any) -> str:
    return pruner if isinstance(pruner, str) else type(pruner).__name__


def _space_json(space: Any) -> Any:
    if isinstance(space, str):
        return space
    return {opt: {k: (asdict(v) if isinstance(v, Param) else v) for k, v in table.items()}
            for opt, table in space.items()}


def derive_seed(*parts: Any) -> int:
    """A 32-bit seed from ``parts`` (SHA-256 of their text: stable across processes)."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


# --------------------------------------------------------------------------- storage


def storage_url(store: str | None = None) -> str:
    """The Optuna storage URL of a results-store URL or path (the same SQLite file)."""
    url = str(store) if store is not None else DEFAULT_URL
    return url if "://" in url else f"sqlite:///{url}"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:  # pragma: no cover - depends on the installation
        raise TuneError("tuning needs optuna: pip install 'optimlab[lab]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


_STORAGES: dict[str, Any] = {}


def _storage(url: str) -> Any:
    """The Optuna storage at ``url`` (one per URL and process)."""
    if url in _STORAGES:
        return _STORAGES[url]
    optuna = _optuna()
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # a bad URL, an unreachable server, not a database
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TuneError(f"cannot open the tuning storage {url!r}: {first}") from None
    _STORAGES[url] = storage
    return storage


# --------------------------------------------------------------------------- one study


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to run the missing trials of one study (picklable)."""

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
    objectives: tuple[str, ...]  # the first one a run reports is the objective
    pruner: Any
    threads: int

    def signature(self) -> dict[str, Any]:
        """The settings that must not change when the study resumes."""
        return {"task": self.task, "optimizer": self.optimizer,
                "params": [asdict(p) for p in self.params], "schedules": list(self.schedules),
                "steps": self.steps, "batch_size": self.batch_size, "seed": self.seed,
                "eval_every": self.eval_every, "task_options": self.task_options,
                "objectives": list(self.objectives), "pruner": _pruner_id(self.pruner)}


def _pruner(job: _Job) -> Any:
    optuna = _optuna()
    if job.pruner == "none":
        return optuna.pruners.NopPruner()
    if job.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER_STARTUP_TRIALS,
            n_warmup_steps=int(job.steps * PRUNER_WARMUP_FRACTION))
    return job.pruner


def _sampler(job: _Job, index: int) -> Any:
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate is "experimental" in older Optuna
        return optuna.samplers.TPESampler(
            seed=derive_seed(job.seed, job.task, job.optimizer, index),
            n_startup_trials=N_STARTUP_TRIALS, multivariate=True, constant_liar=False)


def _load(job: _Job, index: int = 0) -> Any:
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.load_study(study_name=job.study, storage=_storage(job.storage),
                                 sampler=_sampler(job, index), pruner=_pruner(job))


def _counted(study: Any) -> list[Any]:
    """The study's trials that count towards the budget, by number."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state.name.lower() in FINISHED and not t.user_attrs.get("interrupted")]


def _prepare(job: _Job) -> int:
    """Create or check the study, fail the trials a dead process left running; returns the
    number of counted trials."""
    optuna = _optuna()
    storage = _storage(job.storage)
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
    state = optuna.trial.TrialState
    study_id = storage.get_study_id_from_name(job.study)
    for t in study.get_trials(deepcopy=False, states=(state.RUNNING, state.WAITING)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, state.FAIL)
    return len(_counted(study))


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(v)}


def _run_trials(job: _Job, emit: Callable[[dict[str, Any]], None]) -> None:
    """Run the missing trials of ``job``'s study, one after the other."""
    optuna = _optuna()
    state = optuna.trial.TrialState
    study = _load(job)
    index = len(_counted(study))
    while index < job.trials:
        study.sampler = _sampler(job, index)
        trial = study.ask()
        try:
            event = _one_trial(job, study, trial, index, state)
        except BaseException:  # killed (Ctrl-C) or a bug: the trial does not count
            with contextlib.suppress(Exception):
                trial.set_user_attr("interrupted", True)
                study.tell(trial, state=state.FAIL)
            raise
        emit(event)
        index += 1


def _one_trial(job: _Job, study: Any, trial: Any, index: int, state: Any) -> dict[str, Any]:
    drawn = {p.key: trial.suggest_float(p.key, p.low, p.high, log=p.log) for p in job.params}
    schedule = (trial.suggest_categorical("schedule", list(job.schedules))
                if len(job.schedules) > 1 else job.schedules[0])
    hyper = _hyperparams(job.optimizer, job.params, drawn)
    trial.set_user_attr("index", index)
    trial.set_user_attr("hyperparams", hyper)
    trial.set_user_attr("schedule", schedule)
    config = RunConfig(task=job.task, optimizer=job.optimizer, hyperparams=hyper,
                       task_options=job.task_options, schedule=schedule,
                       batch_size=job.batch_size, seed=job.seed, steps=job.steps,
                       eval_every=job.eval_every)
    chosen: list[str] = []
    last_bucket = [-1]

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        if not chosen:
            chosen.extend(m for m in job.objectives if m in metrics)
            if not chosen:
                return  # no such metric: reported below, after the run
        bucket = step * MAX_REPORTS // job.steps  # the same steps in every trial
        if bucket == last_bucket[0]:
            return
        last_bucket[0] = bucket
        value = metrics.get(chosen[0], math.nan)
        if math.isfinite(value):
            trial.report(value, step)
            if trial.should_prune():
                raise RunPruned(f"{chosen[0]} {value:.4g}")

    record = execute(config, threads=job.threads, on_eval=on_eval)
    final = record.get("final") or {}
    names = chosen or [m for m in job.objectives if m in final]
    if final and not names:
        raise TuneError(f"objective: task {job.task!r} reports no metric "
                        f"{job.objectives[0]!r}; it reports {', '.join(final)}")
    metric = names[0] if names else job.objectives[0]
    status = record["status"]
    trial.set_user_attr("objective", metric)
    trial.set_user_attr("status", status)
    trial.set_user_attr("error", record.get("error"))
    trial.set_user_attr("final", _finite(final))
    trial.set_user_attr("steps_done", record.get("steps_done"))
    trial.set_user_attr("train_seconds", record.get("train_seconds"))
    trial.set_user_attr("key", record.get("key"))
    value: float | None = None
    if status == "pruned":
        study.tell(trial, state=state.PRUNED)
        tstate = "pruned"
    elif status == "failed":
        study.tell(trial, state=state.FAIL)
        tstate = "fail"
    else:
        value = float(final.get(metric, math.nan))
        if status != "ok" or not math.isfinite(value):
            if status == "ok":
                trial.set_user_attr("status", "diverged")
                trial.set_user_attr("error", f"final {metric} is {value}")
            value = math.inf
        study.tell(trial, value)
        tstate = "complete"
    if "objective" not in study.user_attrs:
        study.set_user_attr("objective", metric)
    return {"study": job.study, "task": job.task, "optimizer": job.optimizer, "index": index,
            "number": trial.number, "state": tstate, "status": trial.user_attrs.get("status",
                                                                                   status),
            "value": value, "objective": metric, "hyperparams": hyper, "schedule": schedule}


_QUEUE: Any = None


def _worker_init(events: Any, threads: int) -> None:
    global _QUEUE
    _QUEUE = events
    torch.set_num_threads(threads)
    _optuna()


def _worker(job: _Job) -> str:
    _run_trials(job, _QUEUE.put)
    return job.study


# --------------------------------------------------------------------------- results


@dataclass
class StudyResult:
    """The outcome of one (task, optimizer) study (over its first ``trials`` counted trials).

    Attributes:
        study: the Optuna study name.
        objective: the metric minimized.
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
    counted = _counted(study)[: job.trials]
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


def _objectives(spec: TuneSpec, task: str) -> tuple[str, ...]:
    if spec.objective is not None:
        return (spec.objective,)
    target = make_task(task, **dict(spec.task_options.get(task, {}))).info.target_metric
    return ("val_loss", "train_loss") if target == "train_loss" else (target,)


def _jobs(spec: TuneSpec, storage: str, threads: int) -> list[_Job]:
    name = spec.resolved_name
    jobs = []
    for task in spec.tasks:
        options = dict(spec.task_options.get(task, {}))
        steps = spec.steps or make_task(task, **options).info.steps
        objectives = _objectives(spec, task)
        for opt in spec.optimizers:
            jobs.append(_Job(
                storage=storage, study=f"{name}/{task}/{opt}", task=task, optimizer=opt,
                params=tuple(search_space(opt, spec.space)), schedules=tuple(spec.schedules),
                trials=spec.trials, steps=steps, batch_size=spec.batch_size, seed=spec.seed,
                eval_every=spec.eval_every, task_options=options, objectives=objectives,
                pruner=spec.pruner, threads=threads))
    return jobs


def _execute_jobs(jobs: list[_Job], counts: Mapping[str, int], workers: int, threads: int,
                  emit: Callable[[dict[str, Any]], None]) -> None:
    """Run the missing trials of ``jobs``: in this process (one worker or one study), else one
    process per study, up to ``workers`` at a time; ``emit`` gets every trial's event here."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _run_trials(job, emit)
        return
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    expected = sum(job.trials - counts[job.study] for job in jobs)
    received = 0

    def drain(timeout: float | None = None) -> None:
        nonlocal received
        while received < expected:
            try:
                event = events.get(timeout=timeout) if timeout else events.get_nowait()
            except queue_mod.Empty:
                return
            received += 1
            emit(event)

    with cf.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx,
                                initializer=_worker_init, initargs=(events, threads)) as pool:
        futures = [pool.submit(_worker, job) for job in jobs]
        try:
            pending = set(futures)
            while pending:
                done, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                drain()
                for fut in done:
                    fut.result()  # a worker's error (a TuneError) ends the tuning
        finally:
            for fut in futures:
                fut.cancel()
    drain(timeout=5.0)  # events put just before a worker returned may still be in transit


def tune(spec: TuneSpec, store: str | None = None, *, storage: str | None = None,
         workers: int | None = None, threads: int = 1, rerun: bool = True,
         progress: Callable[[int, int, dict[str, Any]], None] | None = None,
         rerun_executor: Executor | None = None,
         rerun_progress: Callable[[int, int, dict[str, Any]], None] | None = None
         ) -> TuneOutcome:
    """Tune every optimizer of ``spec`` on every task, then re-run the best configurations.

    Resumes a tuning with the same name: finished trials are kept, only the missing ones run.

    Args:
        spec: what to tune.
        store: the results-store URL or path (default ``optimlab-results/results.db``); the
            re-runs go there, and the Optuna studies too unless ``storage`` is given.
        storage: an Optuna storage URL (``postgresql://...``) for the studies.
        workers: processes, one (task, optimizer) study each (default: one per core; 1 runs
            everything in this process).
        threads: torch threads per trial (keep it fixed for reproducible trials).
        rerun: re-run each best configuration with ``spec.seeds`` seeds (study
            ``"{name}-best"`` in the store).
        progress: called as ``progress(done, total, trial)`` after each trial, where ``total``
            is ``trials x tasks x optimizers`` and ``trial`` has ``task``, ``optimizer``,
            ``index``, ``state`` (complete/pruned/fail), ``status`` (ok/diverged/pruned/failed),
            ``value``, ``objective``, ``hyperparams`` and ``schedule``; called once with
            ``trial=None`` before any trial runs (``done``: trials already stored).
        rerun_executor: how the re-runs execute (default: a process pool of ``workers``).
        rerun_progress: ``progress(done, total, record)`` after each re-run (as in
            :func:`optimlab.lab.study.run_study`; the record has its ``label``).

    Raises:
        TuneError: bad settings, settings that differ from the stored study of the same name,
            an unusable storage.
    """
    url = storage or storage_url(store)
    workers = workers or default_workers()
    results_store = open_store(store)  # first: it creates the file in WAL mode
    try:
        jobs = _jobs(spec, url, threads)
        _optuna()
        counts = {job.study: _prepare(job) for job in jobs}
        total = spec.trials * len(jobs)
        done = sum(min(c, spec.trials) for c in counts.values())
        ran = dict.fromkeys(counts, 0)

        def emit(event: dict[str, Any]) -> None:
            nonlocal done
            done += 1
            ran[event["study"]] += 1
            if progress is not None:
                progress(done, total, event)

        if progress is not None:
            progress(done, total, None)
        todo = [job for job in jobs if counts[job.study] < job.trials]
        _execute_jobs(todo, counts, workers, threads, emit)
        results = [_result(job, _load(job), ran[job.study]) for job in jobs]
        outcome = TuneOutcome(spec.resolved_name, url, results)
        if rerun:
            outcome.rerun = rerun_best(
                spec, outcome, results_store,
                executor=rerun_executor or (InlineExecutor() if workers <= 1
                                            else ProcessExecutor(workers, threads)),
                progress=rerun_progress, storage=storage)
        return outcome
    finally:
        results_store.close()


# --------------------------------------------------------------------------- the re-run


def _rerun_one(config: dict[str, Any]) -> dict[str, Any]:
    return execute(RunConfig.from_dict(config), threads=torch.get_num_threads())


def rerun_best(spec: TuneSpec, outcome: TuneOutcome, store: ResultStore, *,
               executor: Executor | None = None,
               progress: Callable[[int, int, dict[str, Any]], None] | None = None,
               storage: str | None = None) -> StudyOutcome:
    """Run the best configuration of every (task, optimizer) with ``spec.rerun_seeds()`` as the
    study ``"{name}-best"`` in ``store`` (runs it already holds are skipped). Arms are labelled
    by the optimizer's name; a study with no finite trial is left out.

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
                            eval_every=spec.eval_every).resolved()
            runs.append(PlannedRun(cfg, cfg.key(), r.optimizer))
    saved = {"name": name, "description": f"best configurations of tuning {outcome.name!r}, "
             f"re-run with {spec.seeds} held-out seeds",
             "tuning": {"name": outcome.name, "storage": storage, "spec": spec.to_dict()},
             "tasks": list(spec.tasks), "optimizers": list(spec.optimizers),
             "seeds": spec.rerun_seeds(), "best": best}
    unique: dict[str, PlannedRun] = {}
    for run in runs:
        unique.setdefault(run.key, run)
    store.save_study(name, saved, [(r.key, r.label) for r in unique.values()])
    done = store.finished(unique)
    pending = [r for k, r in unique.items() if k not in done]
    executor = executor or (ProcessExecutor() if len(pending) > 1 else InlineExecutor())
    count, total = len(done), len(unique)
    for _, record in executor.imap_unordered(_rerun_one, [r.config.to_dict() for r in pending]):
        store.put_run(record)
        count += 1
        if progress is not None:
            progress(count, total, dict(record, label=unique[record["key"]].label))
    return StudyOutcome(name, total, len(done), len(pending))


# --------------------------------------------------------------------------- history


def tuning_history(spec_or_name: TuneSpec | str, store: str | None = None, *,
                   storage: str | None = None) -> list[dict[str, Any]]:
    """Every trial of a tuning, for the report (JSON-able apart from ``value`` ``None``).

    Args:
        spec_or_name: the spec (its tasks and optimizers only) or the tuning's name (all of
            its studies).
        store: the results-store URL or path whose database holds the studies.
        storage: an Optuna storage URL instead.

    Returns:
        One dict per trial, by task, optimizer and trial index: ``task``, ``optimizer``,
        ``study``, ``index`` (in the budget; ``None`` for an interrupted trial), ``number``
        (Optuna's), ``state`` (complete/pruned/fail/running), ``status`` (ok/diverged/pruned/
        failed/interrupted), ``value`` (the objective; ``None`` unless finite), ``objective``,
        ``params`` (drawn), ``hyperparams``, ``schedule``, ``intermediate`` (``step`` and
        ``value`` lists), ``steps_done``, ``seconds`` (training time) and ``error``.
    """
    url = storage or storage_url(store)
    st = _storage(url)
    if isinstance(spec_or_name, TuneSpec):
        name = spec_or_name.resolved_name
        wanted = {f"{name}/{t}/{o}" for t in spec_or_name.tasks for o in spec_or_name.optimizers}
    else:
        name, wanted = str(spec_or_name), None
    out = []
    for frozen in st.get_all_studies():
        study_name = frozen.study_name
        if not study_name.startswith(f"{name}/") or (wanted is not None
                                                     and study_name not in wanted):
            continue
        sig = frozen.user_attrs.get("optimlab") or {}
        task = sig.get("task") or study_name.split("/")[1]
        opt = sig.get("optimizer") or study_name.split("/")[-1]
        for t in st.get_all_trials(st.get_study_id_from_name(study_name), deepcopy=False):
            attrs = t.user_attrs
            interrupted = bool(attrs.get("interrupted"))
            state = t.state.name.lower()
            status = "interrupted" if interrupted else attrs.get("status") or (
                "pruned" if state == "pruned" else state)
            steps = sorted(t.intermediate_values)
            value = t.value if t.value is not None and math.isfinite(t.value) else None
            out.append({
                "task": task, "optimizer": opt, "study": study_name,
                "index": None if interrupted else attrs.get("index"), "number": t.number,
                "state": state, "status": status,
                "value": value if state == "complete" else None,
                "objective": attrs.get("objective") or frozen.user_attrs.get("objective"),
                "params": dict(t.params), "hyperparams": attrs.get("hyperparams", {}),
                "schedule": attrs.get("schedule"),
                "intermediate": {"step": steps,
                                 "value": [t.intermediate_values[s] for s in steps]},
                "steps_done": attrs.get("steps_done"), "seconds": attrs.get("train_seconds"),
                "error": attrs.get("error")})
    order = {(t, o): i for i, (t, o) in enumerate(dict.fromkeys(
        (r["task"], r["optimizer"]) for r in out))}
    if isinstance(spec_or_name, TuneSpec):
        order = {(t, o): i for i, (t, o) in enumerate(
            (t, o) for t in spec_or_name.tasks for o in spec_or_name.optimizers)}
    out.sort(key=lambda r: (order[(r["task"], r["optimizer"])], r["number"]))
    return out


def tuning_for_study(store: ResultStore, name: str) -> list[dict[str, Any]] | None:
    """The tuning history behind study ``name`` when it is a tuning's re-run (``None``
    otherwise): for ``optimlab report --study NAME-best``."""
    spec = store.study_spec(name)
    tuning = spec.get("tuning") if isinstance(spec, Mapping) else None
    if not isinstance(tuning, Mapping) or not tuning.get("name"):
        return None
    records = tuning_history(str(tuning["name"]), store.url, storage=tuning.get("storage"))
    tasks, opts = set(spec.get("tasks") or []), set(spec.get("optimizers") or [])
    return [r for r in records if (not tasks or r["task"] in tasks)
            and (not opts or r["optimizer"] in opts)]
