"""Study specs: what a study runs, as one typed, checked value (:class:`StudySpec`).

A study is written by hand in a TOML file, built from the command line, or built in Python;
all three go through :meth:`StudySpec.from_mapping`, the one parser, whose errors name the
field (``tasks[1]``, ``hyperparams.adam.lr``, ``task.mlp-digits.steps``)::

    name = "batch-sizes"
    tasks = ["mlp-digits", "logreg-breast-cancer"]
    optimizers = ["sgd", "adam"]
    seeds = 3                      # or a list: [0, 1, 2]
    batch_size = ["full", 1, 32]   # a list sweeps; "full" = batch gradient descent
    schedule = "constant"          # or a list of schedule names (sweeps)
    steps = 500                    # budget: at most one of steps, examples, epochs
    # examples = 64000             # ... in training examples
    # epochs = 2.5                 # ... in passes over the training set
    # seconds = 30                 # optional wall-clock budget per run (machine-dependent)
    # clip_norm = 1.0              # clip the global gradient norm before each step
    # clip_value = 0.5             # clip each gradient element to [-0.5, 0.5]
    # lr_scaling = "linear"        # lr * (batch / base_batch_size): "none", "linear", "sqrt"
    # base_batch_size = 32         # the batch size the given lr refers to
    # rank_by = "work"             # "work" (default) or "time": see below
    # heldout_seeds = 3            # best arm of each optimizer re-run on fresh seeds

    [limits]                       # optional: raise a guard against typos (see below)
    steps = 200000000

    [hyperparams.sgd]              # per optimizer; a list sweeps
    lr = [0.01, 0.1]

    [task.mlp-digits]              # per task: options, settings, hyperparameters
    options = { depth = 3, batchnorm = true }
    steps = 800
    [task.mlp-digits.hyperparams.sgd]
    lr = 0.05

**The ranking** (``rank_by``): arms are ranked on each task by the *work* to reach the task's
target and stay there (gradient evaluations until the run settles at or below the target;
equal to steps for optimizers that evaluate the gradient once per step), median over seeds;
arms that never settle rank below, by their final target metric. Differences within seed
noise are ties. ``rank_by = "time"`` ranks by training seconds to target instead (warm-up
excluded), and counts differences within measured timing noise as ties; wall-clock depends on
the machine and its load, work does not.

**Held-out seeds** (``heldout_seeds``): when a study sweeps a hyperparameter, the best arm of
each optimizer on each task (by the ranking above) is chosen on the study's seeds, which
biases its result upwards (the winner's curse); it is then re-run on ``heldout_seeds`` fresh
seeds as the arm ``"<optimizer> best"``, and every other optimizer is re-run on the same
seeds, so that the "best per optimizer" comparison is fair and paired. Default (unset): as
many held-out seeds as study seeds when some hyperparameter is swept, none otherwise; ``0``
turns it off.

**Imports**: a task or optimizer named by import path (``"mypkg.tasks:make"``) in a study file
or on the command line is imported only when its top-level package is allowed
(``allow_import``, ``--allow-import``, ``OPTIMLAB_ALLOW_IMPORT``; see
:mod:`optimlab.lab.imports`): :meth:`StudySpec.from_mapping`, :meth:`StudySpec.load` and
:meth:`StudySpec.merged_with` check every name before anything is imported. A spec built in
Python (``StudySpec(...)``) imports what it names: its code is the trust boundary.

**Limits** (``[limits]``, :class:`~optimlab.lab.validate.Limits`): steps, examples, epochs,
seeds, planned runs and the name's length are bounded, against typos; a study that needs more
raises the limit in its ``[limits]`` table. Seeds are ``0 .. 2**32 - 1``.

Per-task tables (:class:`TaskSettings`) override the study's settings for one task; a budget
given there (steps, examples or epochs) replaces the study's budget as a whole.
:meth:`StudySpec.merged_with` applies overrides (the command line's) to a spec.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import validate as v
from .imports import AllowList, check_import
from .schema import LR_SCALING
from .validate import Limits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["BUDGETS", "DEFAULT_STUDY", "PACKAGED_STUDIES", "RANK_BY", "StudyError", "StudySpec",
           "TaskSettings", "default_name", "load_study_file", "study_path"]

#: The default comparison (``optimlab compare`` with no options).
DEFAULT_STUDY = Path(__file__).parent / "studies" / "default.toml"
#: Where the packaged studies live (``optimlab compare --study NAME`` finds ``NAME.toml`` here).
PACKAGED_STUDIES = DEFAULT_STUDY.parent


def study_path(name: str | Path) -> Path:
    """The study file ``name``: the path as given when it exists or names a ``.toml`` file,
    else the packaged study of that name (``default``, ``sharpness``), else the path as given
    (whose loading then says it cannot be read)."""
    path = Path(name)
    if path.exists() or path.suffix == ".toml":
        return path
    packaged = PACKAGED_STUDIES / f"{path.name}.toml"
    return packaged if str(name) == path.name and packaged.is_file() else path
#: The ways a run's budget can be given (at most one per table).
BUDGETS = ("steps", "examples", "epochs")
#: What the ranking orders arms by (see the module docstring).
RANK_BY = ("work", "time")


class StudyError(v.ValidationError):
    """An invalid study spec; the message (one line) names the field and what is allowed."""

    def __init__(self, message: str, field: str = "") -> None:
        ValueError.__init__(self, message)
        self.field = field


def _study_error(e: v.ValidationError, prefix: str = "") -> StudyError:
    return StudyError(f"{prefix}{e}", getattr(e, "field", ""))


# --------------------------------------------------------------------------- field parsers


def _optimizer_check(field_name: str, name: str) -> dict[str, Any]:
    """The constructor arguments of optimizer ``name`` (raises naming the field)."""
    from .optimizers import _allowed, lookup

    try:
        return _allowed(lookup(name).cls)
    except ValueError as e:
        raise v.ValidationError(field_name, f": {e}") from None


def _hyper_grid(field_name: str, optimizer: str, table: Any) -> dict[str, tuple[Any, ...]]:
    """``{key: (values...)}``; a list sweeps, except for tuple-valued keys (betas), where a
    list of numbers is one value and a list of lists sweeps."""
    if not isinstance(table, Mapping):
        raise v.ValidationError(field_name, f"must be a table of hyperparameters, got {table!r}")
    allowed = _optimizer_check(field_name, optimizer)
    grid = {}
    for key, value in table.items():
        if key not in allowed:
            raise v.ValidationError(
                f"{field_name}.{key}", f": optimizer {optimizer!r} has no hyperparameter "
                f"{key!r}; allowed: {', '.join(sorted(allowed))}")
        tuple_valued = isinstance(allowed[key], tuple)
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, list) and (not tuple_valued or (value and isinstance(
                value[0], (list, tuple)))):
            values = v.as_list(f"{field_name}.{key}", value)
            grid[str(key)] = tuple(list(x) if isinstance(x, tuple) else x for x in values)
        else:
            grid[str(key)] = (value,)
    return dict(sorted(grid.items()))


def _hyper_tables(field_name: str, value: Any, optimizers: tuple[str, ...]
                  ) -> dict[str, dict[str, tuple[Any, ...]]]:
    if not isinstance(value, Mapping):
        raise v.ValidationError(field_name, f"must be a table per optimizer, got {value!r}")
    out = {}
    for opt, table in value.items():
        if opt not in optimizers:
            raise v.ValidationError(f"{field_name}.{opt}", f": {opt!r} is not in optimizers "
                                                           f"({', '.join(optimizers)})")
        out[str(opt)] = _hyper_grid(f"{field_name}.{opt}", opt, table)
    return out


def _batch_sizes(field_name: str, value: Any) -> tuple[int | str, ...]:
    return tuple(v.batch_size(field_name, x) for x in v.as_list(field_name, value))


def _schedules(field_name: str, value: Any) -> tuple[str, ...]:
    from .runs import SCHEDULES

    items = v.names(field_name, value)
    for s in items:
        if s not in SCHEDULES:
            raise v.ValidationError(field_name, f": unknown schedule {s!r}; allowed: "
                                                f"{', '.join(SCHEDULES)}")
    return items


def _budget(prefix: str, steps: Any, examples: Any, epochs: Any, limits: Limits
            ) -> dict[str, Any]:
    """steps / examples / epochs of a table (at most one given), checked against ``limits``;
    ``prefix`` is the table's field path (``"task.quadratic."``)."""
    out = {"steps": v.optional(v.positive_int, f"{prefix}steps", steps),
           "examples": v.optional(v.positive_int, f"{prefix}examples", examples),
           "epochs": v.optional(v.positive_float, f"{prefix}epochs", epochs)}
    for k in BUDGETS:
        if out[k] is not None:
            v.at_most(f"{prefix}{k}", out[k], getattr(limits, k), k)
    given = [k for k in BUDGETS if out[k] is not None]
    if len(given) > 1:
        raise v.ValidationError(f"{prefix}{given[1]}",
                                f"cannot be combined with {prefix}{given[0]}: give the "
                                "budget in one of steps, examples or epochs")
    return out


def _options(field_name: str, task: str, options: Any) -> dict[str, Any]:
    from .tasks import check_task

    if not isinstance(options, Mapping):
        raise v.ValidationError(field_name, f"must be a table of task options, got {options!r}")
    try:
        check_task(task, **options)
    except (ValueError, TypeError) as e:
        raise v.ValidationError(field_name, f": {e}") from None
    return dict(options)


# --------------------------------------------------------------------------- per task


@dataclass(frozen=True)
class TaskSettings:
    """One task's table in a study: settings that override the study's for that task.

    ``None`` (and an empty table) means "the study's". A budget (``steps``, ``examples`` or
    ``epochs``, at most one) replaces the study's budget as a whole.

    Attributes:
        options: options of the task factory.
        batch_size, schedule: values to sweep (tuples).
        steps, examples, epochs, seconds, eval_every, clip_norm, clip_value: as in
            :class:`StudySpec`.
        hyperparams: ``{optimizer: {hyperparameter: (values...)}}``, merged over the study's.
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    batch_size: tuple[int | str, ...] | None = None
    schedule: tuple[str, ...] | None = None
    steps: int | None = None
    examples: int | None = None
    epochs: float | None = None
    seconds: float | None = None
    eval_every: int | None = None
    clip_norm: float | None = None
    clip_value: float | None = None
    hyperparams: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)

    @property
    def has_budget(self) -> bool:
        """The table gives its own budget (steps, examples or epochs)."""
        return any(getattr(self, k) is not None for k in BUDGETS)

    def to_dict(self) -> dict[str, Any]:
        """The table as TOML would write it (only what is set; lists for tuples)."""
        out: dict[str, Any] = {}
        if self.options:
            out["options"] = dict(self.options)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("options", "hyperparams") or value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if self.hyperparams:
            out["hyperparams"] = _hyper_dict(self.hyperparams)
        return out


_TASK_KEYS = {f.name for f in fields(TaskSettings)}


def _hyper_dict(hyper: Mapping[str, Mapping[str, tuple[Any, ...]]]) -> dict[str, Any]:
    return {opt: {k: list(vals) for k, vals in table.items()} for opt, table in hyper.items()}


def _eval_every(field_name: str, value: Any, limits: Limits) -> int | None:
    out = v.optional(v.positive_int, field_name, value)
    if out is not None:
        v.at_most(field_name, out, limits.steps, "steps")
    return out


def _task_settings(name: str, table: Any, tasks: tuple[str, ...],
                   optimizers: tuple[str, ...], limits: Limits) -> TaskSettings:
    f = f"task.{name}"
    if name not in tasks:
        raise v.ValidationError(f, f": {name!r} is not in tasks ({', '.join(tasks)})")
    if isinstance(table, TaskSettings):
        table = table.to_dict()
    if not isinstance(table, Mapping):
        raise v.ValidationError(f, f"must be a table, got {table!r}")
    unknown = sorted(set(table) - _TASK_KEYS)
    if unknown:
        raise v.ValidationError(f"{f}.{unknown[0]}", f"is not a task setting; allowed: "
                                                     f"{', '.join(sorted(_TASK_KEYS))}")
    get = table.get
    return TaskSettings(
        options=_options(f"{f}.options", name, get("options", {})),
        batch_size=v.optional(_batch_sizes, f"{f}.batch_size", get("batch_size")),
        schedule=v.optional(_schedules, f"{f}.schedule", get("schedule")),
        **_budget(f"{f}.", get("steps"), get("examples"), get("epochs"), limits),
        seconds=v.optional(v.positive_float, f"{f}.seconds", get("seconds"),
                           "number of seconds"),
        eval_every=_eval_every(f"{f}.eval_every", get("eval_every"), limits),
        clip_norm=v.optional(v.positive_float, f"{f}.clip_norm", get("clip_norm")),
        clip_value=v.optional(v.positive_float, f"{f}.clip_value", get("clip_value")),
        hyperparams=_hyper_tables(f"{f}.hyperparams", table.get("hyperparams", {}),
                                  optimizers))


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class StudySpec:
    """A study: tasks x optimizers x swept settings x seeds. Checked on construction (raises
    :class:`StudyError` naming the field); see the module docstring for the file format.

    Attributes:
        tasks: task names (registry names or ``"module:factory"``).
        optimizers: optimizer names (lab names or ``"module:Class"``).
        name: the study's name in the store (``None``: derived from the content, see
            :func:`default_name`).
        description: free text.
        seeds: the seeds each arm runs with (a count ``n`` means ``0 .. n-1``). A run that is
            deterministic (a task whose result does not depend on the seed, with the full
            batch, and a lab optimizer) runs on the first seed only.
        batch_size: batch sizes to sweep (``"full"`` or positive integers).
        schedule: learning-rate schedules to sweep.
        steps, examples, epochs: the budget of every run, at most one (``None``: each task's
            default number of steps).
        seconds: a wall-clock budget per run (whichever ends first).
        eval_every: steps between evaluations (``None``: the runner's default grid).
        telemetry: record gradient telemetry.
        sharpness: measure every run's final sharpness (top Hessian eigenvalue and trace,
            :mod:`optimlab.lab.curvature`); the report plots it against the generalization
            gap.
        clip_norm: clip the global L2 norm of the gradients before each step.
        clip_value: clip each gradient element to ``[-clip_value, clip_value]``.
        lr_scaling: ``"none"``, ``"linear"`` or ``"sqrt"``: the lr of a run is
            ``lr * (batch / base_batch_size) ** p`` (p = 0, 1, 1/2).
        base_batch_size: the batch size the given learning rates refer to.
        rank_by: ``"work"`` (gradient evaluations to target) or ``"time"``.
        heldout_seeds: fresh seeds for the "best per optimizer" re-runs (``None``: as many as
            ``seeds`` when a hyperparameter is swept, else none; 0: none).
        hyperparams: ``{optimizer: {hyperparameter: (values...)}}``; more than one value
            sweeps.
        task: per-task settings, ``{task: TaskSettings}``.
        limits: the guards against typos (:class:`~optimlab.lab.validate.Limits`; a table of
            some limits is accepted); not part of the study's identity (its default name).
    """

    tasks: tuple[str, ...]
    optimizers: tuple[str, ...]
    name: str | None = None
    description: str = ""
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: tuple[int | str, ...] = (32,)
    schedule: tuple[str, ...] = ("constant",)
    steps: int | None = None
    examples: int | None = None
    epochs: float | None = None
    seconds: float | None = None
    eval_every: int | None = None
    telemetry: bool = False
    sharpness: bool = False
    clip_norm: float | None = None
    clip_value: float | None = None
    lr_scaling: str = "none"
    base_batch_size: int = 32
    rank_by: str = "work"
    heldout_seeds: int | None = None
    hyperparams: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)
    task: Mapping[str, TaskSettings] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        try:
            self._check()
        except StudyError:
            raise
        except v.ValidationError as e:
            raise _study_error(e) from None

    def _check(self) -> None:
        from .tasks import check_task

        set_ = object.__setattr__
        set_(self, "limits", Limits.parse("limits", self.limits))
        limits = self.limits
        set_(self, "tasks", v.names("tasks", self.tasks))
        set_(self, "optimizers", v.names("optimizers", self.optimizers))
        if self.name is not None:
            set_(self, "name", v.study_name("name", self.name, limits.name_length))
        if not isinstance(self.description, str):
            raise v.ValidationError("description", f"must be a string, got {self.description!r}")
        set_(self, "seeds", v.seeds("seeds", self.seeds, limits.seeds))
        set_(self, "batch_size", _batch_sizes("batch_size", self.batch_size))
        set_(self, "schedule", _schedules("schedule", self.schedule))
        for k, value in _budget("", self.steps, self.examples, self.epochs, limits).items():
            set_(self, k, value)
        set_(self, "seconds", v.optional(v.positive_float, "seconds", self.seconds,
                                         "number of seconds"))
        set_(self, "eval_every", _eval_every("eval_every", self.eval_every, limits))
        set_(self, "telemetry", v.boolean("telemetry", self.telemetry))
        set_(self, "sharpness", v.boolean("sharpness", self.sharpness))
        set_(self, "clip_norm", v.optional(v.positive_float, "clip_norm", self.clip_norm))
        set_(self, "clip_value", v.optional(v.positive_float, "clip_value", self.clip_value))
        set_(self, "lr_scaling", v.choice("lr_scaling", self.lr_scaling, LR_SCALING))
        set_(self, "base_batch_size", v.positive_int("base_batch_size", self.base_batch_size))
        set_(self, "rank_by", v.choice("rank_by", self.rank_by, RANK_BY))
        set_(self, "heldout_seeds", v.optional(v.non_negative_int, "heldout_seeds",
                                               self.heldout_seeds))
        if self.heldout_seeds is not None:
            v.at_most("heldout_seeds", self.heldout_seeds, limits.seeds, "seeds")
        for i, name in enumerate(self.optimizers):
            _optimizer_check(f"optimizers[{i}]", name)
        tables = self.task
        if not isinstance(tables, Mapping):
            raise v.ValidationError("task", f"must be a table per task, got {tables!r}")
        for i, name in enumerate(self.tasks):
            if name in tables:
                continue  # checked with its options below
            try:
                check_task(name)
            except (ValueError, TypeError) as e:
                raise v.ValidationError(f"tasks[{i}]", f": {e}") from None
        set_(self, "hyperparams", _hyper_tables("hyperparams", self.hyperparams,
                                                self.optimizers))
        set_(self, "task", {str(name): _task_settings(str(name), table, self.tasks,
                                                      self.optimizers, limits)
                            for name, table in tables.items()})
        self._check_clipping()
        last = max(self.heldout_seed_list, default=0)
        if last > v.MAX_SEED:
            raise v.ValidationError("heldout_seeds", f"would use seeds up to {last}, beyond "
                                                     f"{v.MAX_SEED} (held-out seeds follow the "
                                                     "largest study seed); use smaller seeds")
        runs = self.max_runs()
        if runs > limits.runs:
            raise v.ValidationError("limits.runs", f": the study plans up to {runs:,} runs "
                                    "(tasks x optimizers x swept settings x seeds, held-out "
                                    f"re-runs included), more than the limit {limits.runs:,} "
                                    "(a guard against typos; raise it with a [limits] table "
                                    "in a study file or limits=Limits(runs=...) in Python)")

    def max_runs(self) -> int:
        """An upper bound on the runs the study plans: every arm on every seed, plus each
        optimizer's best arm per task on the held-out seeds (deterministic arms run fewer)."""
        total = 0
        for task in self.tasks:
            t = self.settings(task)
            settings = len(t.batch_size or self.batch_size) * len(t.schedule or self.schedule)
            for opt in self.optimizers:
                arms = math.prod(len(values) for values in self.grid(task, opt).values())
                total += settings * arms * len(self.seeds) + self.n_heldout
        return total

    # ------------------------------------------------------------------ parsing

    @classmethod
    def from_mapping(cls, m: Any, *, source: str = "study", allow_import: AllowList = ()
                     ) -> StudySpec:
        """The spec of a mapping (a parsed TOML file, the command line's settings): the one
        parser of studies. Errors are :class:`StudyError` naming ``source`` and the field.

        Every task and optimizer named by import path must come from a package in
        ``allow_import`` (or ``OPTIMLAB_ALLOW_IMPORT``), checked before anything is imported
        (:func:`optimlab.lab.imports.check_import`); ``None`` imports whatever is named (for
        mappings written by the calling Python code).
        """
        if isinstance(m, Mapping):
            try:
                for key in ("tasks", "optimizers"):
                    if key in m:
                        _check_imports(key, v.names(key, m[key]), allow_import)
            except v.ValidationError as e:
                raise _study_error(e, f"{source}: ") from None
        return cls._parse(m, source)

    @classmethod
    def _parse(cls, m: Any, source: str) -> StudySpec:
        """:meth:`from_mapping` after the import check."""
        if not isinstance(m, Mapping):
            raise StudyError(f"{source}: a study is a table of settings, got "
                             f"{type(m).__name__}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(m) - allowed)
        if unknown:
            raise StudyError(f"{source}: unknown field {unknown[0]!r}; allowed: "
                             f"{', '.join(sorted(allowed))}", unknown[0])
        for required in ("tasks", "optimizers"):
            if required not in m:
                raise StudyError(f"{source}: {required}: missing (give at least one)",
                                 required)
        try:
            return cls(**{k: m[k] for k in m})
        except v.ValidationError as e:
            raise _study_error(e, f"{source}: ") from None

    @classmethod
    def load(cls, path: str | Path, *, allow_import: AllowList = ()) -> StudySpec:
        """Read and check a TOML study file; errors name the file and the field (or the line
        of malformed TOML). A study without a name is named after the file (characters a name
        may not hold become ``-``). Import paths must come from ``allow_import``'s packages
        (see :meth:`from_mapping`)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise StudyError(f"cannot read study file {path}: {e.strerror or e}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise StudyError(f"{path}: malformed TOML: {e}") from None
        spec = cls.from_mapping(data, source=str(path), allow_import=allow_import)
        return spec if spec.name is not None else replace(
            spec, name=_name_of_file(path, spec.limits.name_length))

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-able dict (the form the store keeps); :meth:`from_mapping`
        reads it back."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "hyperparams":
                value = _hyper_dict(value)
            elif f.name == "task":
                value = {name: t.to_dict() for name, t in value.items()}
            elif f.name == "limits":
                value = value.changed()
                if not value:
                    continue  # the defaults: not written, as before limits existed
            elif f.name == "sharpness" and not value:
                continue  # not written when off, as before it existed (names stay the same)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    # ------------------------------------------------------------------ derived

    @property
    def resolved_name(self) -> str:
        """``name``, or :func:`default_name` of the content."""
        return self.name or default_name(self)

    def _check_clipping(self) -> None:
        """Gradient clipping with a line-search or second-order optimizer is refused before
        anything runs (the runner refuses it too: :func:`optimlab.lab.work.clipping_refusal`)."""
        from .optimizers import SECOND_ORDER

        for task in self.tasks:
            t = self.settings(task)
            where = f"task.{task}." if t.clip_norm is not None or t.clip_value is not None \
                else ""
            if (t.clip_norm if t.clip_norm is not None else self.clip_norm) is None and (
                    t.clip_value if t.clip_value is not None else self.clip_value) is None:
                continue
            for name in self.optimizers:
                if name in SECOND_ORDER:
                    field = "clip_norm" if (t.clip_norm if t.clip_norm is not None
                                            else self.clip_norm) is not None else "clip_value"
                    raise v.ValidationError(
                        where + field, f": gradient clipping does not apply to {name!r}, whose "
                        "line search needs the loss's true gradient (leave it out of the "
                        "study, or clip only the other optimizers in their own study)")

    def settings(self, task: str) -> TaskSettings:
        """The per-task table of ``task`` (an empty one when the study has none)."""
        return self.task.get(task) or TaskSettings()

    def grid(self, task: str, optimizer: str) -> dict[str, tuple[Any, ...]]:
        """The hyperparameter values ``optimizer`` is run with on ``task`` (the study's
        table, updated by the task's)."""
        grid = dict(self.hyperparams.get(optimizer, {}))
        grid.update(self.settings(task).hyperparams.get(optimizer, {}))
        return dict(sorted(grid.items()))

    def sweeps_hyperparameters(self) -> bool:
        """Some optimizer is run with more than one value of a hyperparameter on some task."""
        return any(len(values) > 1 for task in self.tasks for opt in self.optimizers
                   for values in self.grid(task, opt).values())

    @property
    def n_heldout(self) -> int:
        """The number of held-out seeds (``heldout_seeds`` resolved; see the docstring)."""
        if self.heldout_seeds is not None:
            return self.heldout_seeds
        return len(self.seeds) if self.sweeps_hyperparameters() else 0

    @property
    def heldout_seed_list(self) -> tuple[int, ...]:
        """The held-out seeds: the next ``n_heldout`` integers after the largest study seed."""
        start = max(self.seeds) + 1
        return tuple(range(start, start + self.n_heldout))

    # ------------------------------------------------------------------ merging

    def merged_with(self, overrides: Mapping[str, Any], *, source: str = "overrides",
                    allow_import: AllowList = ()) -> StudySpec:
        """This spec with ``overrides`` (top-level fields, as in a study file) applied: the
        command line on top of a study file or the default study.

        An overridden setting wins everywhere: the per-task tables lose their value of it (a
        budget override removes every per-task budget; ``hyperparams`` overrides remove the
        per-task values of those hyperparameters of those optimizers); per-task tables and
        hyperparameters of tasks and optimizers no longer in the study are dropped; the rest
        of the per-task tables carries over. Unless ``overrides`` names the study, the result
        is unnamed (its name derives from its content), so it never resumes the base study.

        Tasks and optimizers that ``overrides`` adds by import path must come from
        ``allow_import``'s packages (see :meth:`from_mapping`); this spec's own were checked
        when it was made.
        """
        if not isinstance(overrides, Mapping):
            raise StudyError(f"{source}: a table of settings, got {type(overrides).__name__}")
        allowed = {f.name for f in fields(self)} - {"task"}
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise StudyError(f"{source}: unknown field {unknown[0]!r}; allowed: "
                             f"{', '.join(sorted(allowed))}", unknown[0])
        base = self.to_dict()
        try:
            tasks = list(v.names("tasks", overrides.get("tasks", base["tasks"])))
            optimizers = list(v.names("optimizers", overrides.get("optimizers",
                                                                  base["optimizers"])))
            _check_imports("tasks", tasks, allow_import, known=self.tasks)
            _check_imports("optimizers", optimizers, allow_import, known=self.optimizers)
        except v.ValidationError as e:
            raise _study_error(e, f"{source}: ") from None
        touched = set(overrides)
        if touched & set(BUDGETS):
            touched |= set(BUDGETS)
            for k in BUDGETS:
                base[k] = None
        hyper_over = overrides.get("hyperparams") or {}
        if not isinstance(hyper_over, Mapping):
            raise StudyError(f"{source}: hyperparams: a table per optimizer, got "
                             f"{hyper_over!r}", "hyperparams")
        hyper = {o: dict(t) for o, t in base["hyperparams"].items() if o in optimizers}
        for opt, table in hyper_over.items():
            hyper.setdefault(opt, {}).update(table if isinstance(table, Mapping) else {})
        tables = {}
        for name, table in base["task"].items():
            if name not in tasks:
                continue
            t = {k: val for k, val in table.items() if k not in touched}
            t_hyper = {}
            for opt, h in table.get("hyperparams", {}).items():
                if opt not in optimizers:
                    continue
                dropped = set((hyper_over.get(opt) or {}) if isinstance(
                    hyper_over.get(opt), Mapping) else {})
                kept = {k: val for k, val in h.items() if k not in dropped}
                if kept:
                    t_hyper[opt] = kept
            t.pop("hyperparams", None)
            if t_hyper:
                t["hyperparams"] = t_hyper
            tables[name] = t
        merged = {**base, **{k: val for k, val in overrides.items() if k != "hyperparams"},
                  "tasks": tasks, "optimizers": optimizers, "hyperparams": hyper,
                  "task": tables}
        if "name" not in overrides:
            merged["name"] = None
            merged["description"] = overrides.get("description", "")
        return StudySpec._parse(merged, source)


def _name_of_file(path: Path, max_length: int) -> str:
    """A study name made of a file's name: characters outside letters, digits, ``-``, ``_``
    and ``.`` become ``-``, leading ``-`` and ``.`` are dropped, at most ``max_length``."""
    name = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "-"
                   for ch in path.stem).lstrip("-.")[:max_length]
    return name or "study"


def _check_imports(key: str, names: tuple[str, ...] | list[str], allow_import: AllowList,
                   known: tuple[str, ...] = ()) -> None:
    """:func:`~optimlab.lab.imports.check_import` for each name not in ``known``."""
    for i, name in enumerate(names):
        if name not in known:
            check_import(name, allow_import, field=f"{key}[{i}]")


def load_study_file(path: str | Path, *, allow_import: AllowList = ()) -> StudySpec:
    """Read and check a TOML study file (:meth:`StudySpec.load`)."""
    return StudySpec.load(path, allow_import=allow_import)


def default_name(spec: StudySpec) -> str:
    """A name derived from the spec's content (not its name or description), so that running
    the same study again resumes it."""
    body = {k: val for k, val in spec.to_dict().items()
            if k not in ("name", "description", "limits")}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return f"study-{digest[:8]}"
