"""What to tune (:class:`TuneSpec`), checked in one place, and the tuning budget's rules.

The budget is the same for every optimizer: ``trials`` trials of ``steps`` steps each. It may
not be smaller than :data:`MIN_TRIALS`: the first :data:`MIN_TRIALS` trials of every study are
a space-filling design (a scrambled Halton sequence over the search space), which puts one
trial in each eighth of every searched range (for the learning rate: one trial per half
decade of the default four-decade ranges, the resolution of the lab's default grid ``1e-4,
3e-4, 1e-3, ...``). With fewer trials whole regions go untried and the comparison between
optimizers is decided by which regions each one happened to sample.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import validate as v
from ..imports import AllowList, check_import
from ..tasks import check_task
from ..validate import Limits
from .space import Param, TuneError, search_space

__all__ = ["MIN_TRIALS", "RANKING_OBJECTIVE", "TuneSpec", "derive_seed"]

#: Trials per (task, optimizer) below which a tuning is refused (see the module docstring).
MIN_TRIALS = 8
#: The default objective's name: the ranking objective (:func:`optimlab.lab.objective.
#: run_objective`), so that tuning selects what the ranking rewards.
RANKING_OBJECTIVE = "work to target"


def derive_seed(*parts: Any) -> int:
    """A 32-bit seed from ``parts`` (SHA-256 of their text: stable across processes)."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def _is_pruner(obj: Any) -> bool:
    try:
        import optuna
    except ImportError:  # pragma: no cover - depends on the installation
        return False
    return isinstance(obj, optuna.pruners.BasePruner)


def pruner_id(pruner: Any) -> str:
    """The pruner's name (``"median"``, ``"none"`` or the class name of an Optuna pruner)."""
    return pruner if isinstance(pruner, str) else type(pruner).__name__


def space_json(space: Any) -> Any:
    """A JSON-able form of a search space (``"lr"``, ``"full"`` or a table)."""
    if isinstance(space, str):
        return space
    return {opt: {k: (asdict(p) if isinstance(p, Param) else p) for k, p in table.items()}
            for opt, table in space.items()}


def _check(check: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return check(*args, **kwargs)
    except v.ValidationError as e:
        raise TuneError(str(e), e.field) from None


@dataclass(frozen=True)
class TuneSpec:
    """What to tune; checked on construction (:class:`TuneError` naming the field).

    Attributes:
        tasks: task names (registry names or ``"module:factory"``; a comma-separated string
            works too).
        optimizers: lab optimizer names (or ``"module:Class"`` with a custom ``space``).
        trials: trials per (task, optimizer), the same for every optimizer; at least
            :data:`MIN_TRIALS`.
        steps: steps per trial and per re-run (``None``: each task's default budget).
        batch_size: ``"full"`` or a positive integer.
        seed: seeds the samplers and is the run seed of every trial.
        seeds: the best configurations are re-run with seeds ``seed + 1 .. seed + seeds``
            (held out from tuning, so their results are not biased by the selection).
        space: ``"lr"``, ``"full"`` or a custom table (:mod:`optimlab.lab.tuning.space`).
        schedules: learning-rate schedules; one name fixes it, two or more are tuned as a
            categorical parameter (empty: ``"constant"``).
        pruner: ``"median"``, ``"none"`` or an ``optuna.pruners.BasePruner``.
        objective: ``None`` (the default): the ranking objective, :data:`RANKING_OBJECTIVE`
            (work until the run settles at the task's target, as a fraction of the budget;
            above 1 for runs that never settle, by their final target metric); or the name of
            a metric whose final value is minimized instead.
        task_options: ``{task: {option: value}}`` for the task factories.
        eval_every: steps between evaluations (``None``: the runner's default grid); pruning
            decisions happen at evaluations.
        clip_norm, clip_value: gradient clipping of every trial and re-run (as in a study).
        name: the tuning's name (``None``: derived from the settings, so that the same command
            resumes); studies are ``"{name}/{task}/{optimizer}"``. Letters, digits, ``-``,
            ``_`` and ``.`` (see :func:`optimlab.lab.validate.study_name`).
        limits: the guards against typos (:class:`~optimlab.lab.validate.Limits`: trials,
            steps, seeds); a table of some limits is accepted.
        allow_import: the top-level packages that tasks and optimizers named by import path
            may come from (:mod:`optimlab.lab.imports`), checked before anything is imported;
            the command line passes ``--allow-import`` here. ``None`` (the default, for Python
            code naming its own tasks): import what is named.
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
    clip_norm: float | None = None
    clip_value: float | None = None
    name: str | None = None
    limits: Limits = field(default_factory=Limits, compare=False)
    allow_import: AllowList = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        from ..runs import SCHEDULES

        set_ = object.__setattr__
        limits = _check(Limits.parse, "limits", self.limits)
        set_(self, "limits", limits)
        set_(self, "tasks", _check(v.names, "tasks", self.tasks))
        set_(self, "optimizers", _check(v.names, "optimizers", self.optimizers))
        if self.allow_import is not None:
            set_(self, "allow_import", tuple(self.allow_import))
        for key in ("tasks", "optimizers"):
            for i, name in enumerate(getattr(self, key)):
                _check(check_import, name, self.allow_import, field=f"{key}[{i}]")
        trials = _check(v.positive_int, "trials", self.trials)
        if trials < MIN_TRIALS:
            raise TuneError(f"trials must be >= {MIN_TRIALS} (MIN_TRIALS: the space-filling "
                            f"start gives every optimizer one trial in each eighth of its "
                            f"search range), got {trials}", "trials")
        _check(v.at_most, "trials", trials, limits.trials, "trials")
        set_(self, "trials", trials)
        set_(self, "steps", _check(v.optional, v.positive_int, "steps", self.steps))
        set_(self, "eval_every", _check(v.optional, v.positive_int, "eval_every",
                                        self.eval_every))
        for key in ("steps", "eval_every"):
            if getattr(self, key) is not None:
                _check(v.at_most, key, getattr(self, key), limits.steps, "steps")
        set_(self, "seeds", _check(v.positive_int, "seeds", self.seeds))
        _check(v.at_most, "seeds", self.seeds, limits.seeds, "seeds")
        set_(self, "seed", _check(v.seed, "seed", self.seed))
        if self.seed + self.seeds > v.MAX_SEED:
            raise TuneError(f"seed: the re-runs use seeds seed + 1 .. seed + seeds, up to "
                            f"{self.seed + self.seeds}, beyond {v.MAX_SEED}; use a smaller "
                            "seed", "seed")
        set_(self, "batch_size", _check(v.batch_size, "batch_size", self.batch_size))
        set_(self, "clip_norm", _check(v.optional, v.positive_float, "clip_norm",
                                       self.clip_norm))
        set_(self, "clip_value", _check(v.optional, v.positive_float, "clip_value",
                                        self.clip_value))
        schedules = (_check(v.names, "schedules", self.schedules) if self.schedules
                     else ("constant",))
        for s in schedules:
            if s not in SCHEDULES:
                raise TuneError(f"schedules: unknown schedule {s!r}; allowed: "
                                f"{', '.join(SCHEDULES)}", "schedules")
        set_(self, "schedules", schedules)
        if not (self.pruner in ("median", "none") or _is_pruner(self.pruner)):
            raise TuneError(f"pruner: 'median', 'none' or an optuna pruner, got {self.pruner!r}",
                            "pruner")
        if self.objective is not None:
            _check(v.text, "objective", self.objective)
            if "accuracy" in self.objective:
                raise TuneError(f"objective: {self.objective!r} is to be maximized; tuning "
                                "minimizes, give a loss (val_loss) instead", "objective")
        if self.name is not None:
            _check(v.study_name, "name", self.name, limits.name_length)
        if not isinstance(self.task_options, Mapping):
            raise TuneError(f"task_options: a table per task, got {self.task_options!r}",
                            "task_options")
        for task in self.task_options:
            if task not in self.tasks:
                raise TuneError(f"task_options.{task}: {task!r} is not in tasks",
                                f"task_options.{task}")
        for i, task in enumerate(self.tasks):
            try:
                check_task(task, **dict(self.task_options.get(task, {})))
            except (ValueError, TypeError) as e:
                raise TuneError(f"tasks[{i}]: {e}", f"tasks[{i}]") from None
        for i, opt in enumerate(self.optimizers):
            from ..optimizers import lookup

            try:
                lookup(opt)
            except ValueError as e:
                raise TuneError(f"optimizers[{i}]: {e}", f"optimizers[{i}]") from None
            search_space(opt, self.space)
        if isinstance(self.space, Mapping):
            for opt in self.space:
                if opt not in self.optimizers:
                    raise TuneError(f"space.{opt}: {opt!r} is not in optimizers",
                                    f"space.{opt}")

    @property
    def objective_name(self) -> str:
        """What the trials minimize: ``objective`` or :data:`RANKING_OBJECTIVE`."""
        return self.objective or RANKING_OBJECTIVE

    @property
    def resolved_name(self) -> str:
        """``name``, or one derived from the settings (not from tasks, optimizers, trials
        and seeds, so that adding any of them resumes the same tuning)."""
        if self.name:
            return self.name
        body = {"steps": self.steps, "batch_size": self.batch_size, "seed": self.seed,
                "space": space_json(self.space), "schedules": list(self.schedules),
                "pruner": pruner_id(self.pruner), "objective": self.objective_name,
                "eval_every": self.eval_every, "clip_norm": self.clip_norm,
                "clip_value": self.clip_value,
                "task_options": {k: dict(t) for k, t in sorted(self.task_options.items())}}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode())
        return f"tune-{digest.hexdigest()[:8]}"

    def rerun_seeds(self) -> list[int]:
        """The seeds of the re-run of the best configurations."""
        return [self.seed + 1 + i for i in range(self.seeds)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (the pruner by name, the name resolved; ``objective``
        ``None`` for the ranking objective; ``limits`` only when not the defaults)."""
        return {"name": self.resolved_name, "tasks": list(self.tasks),
                "optimizers": list(self.optimizers), "trials": self.trials,
                "steps": self.steps, "batch_size": self.batch_size, "seed": self.seed,
                "seeds": self.seeds, "space": space_json(self.space),
                "schedules": list(self.schedules), "pruner": pruner_id(self.pruner),
                "objective": self.objective, "eval_every": self.eval_every,
                "clip_norm": self.clip_norm, "clip_value": self.clip_value,
                "task_options": {k: dict(t) for k, t in self.task_options.items()},
                **({"limits": self.limits.changed()} if self.limits.changed() else {})}
