"""The lab's typed records: what defines a run (:class:`RunConfig`) and what a run measured
(:class:`RunRecord`), with their JSON forms, the run key and the migration of stored records.

Every record is stored as JSON with its schema version (:data:`SCHEMA_VERSION`); reading goes
through :meth:`RunRecord.from_dict`, which migrates older versions (:func:`migrate`) and raises
:class:`SchemaError` naming the field of a malformed record. Every reader (store, study, tuner,
advisor, report) uses attributes, never ``.get`` on dicts.

The run key (:meth:`RunConfig.key`) is a hash of what defines the experiment: task and its
options, optimizer and its hyperparameters, schedule, batch size and lr scaling, budget, seed,
evaluation grid, gradient clipping, telemetry. It leaves out the engine options
(:data:`ENGINE_OPTIONS`: how a step is computed, not what it computes), and it hashes
:data:`KEY_VERSION`, so that a change of what a record means never silently mixes old and new
runs.

Time to target, as recorded (:func:`settle`): a run *settles* at the first evaluated step from
which the target metric stays at or below the target at every later evaluation until the end
of the run. The true settling step lies in ``(steps_to_target - target_resolution,
steps_to_target]``. The first evaluation at or below the target (``first_crossing``) is kept
for display; an arm that dips below its target and climbs back is not credited with it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from . import validate
from .validate import optional, positive_float, positive_int

__all__ = ["ENGINE_OPTIONS", "KEY_VERSION", "LR_SCALING", "SCHEMA_VERSION", "RunConfig",
           "RunRecord", "SchemaError", "Settled", "TaskFacts", "json_safe", "migrate",
           "parse_batch_size", "settle", "steady_time"]

#: Version of the :class:`RunRecord` layout; stored with every record.
SCHEMA_VERSION = 2
#: Hashed into every run key: a change of what a key means changes every key.
KEY_VERSION = 2
#: Optimizer keyword arguments that choose *how* a step is computed (kernels, non-finite
#: handling, precision machinery), never part of a run key.
ENGINE_OPTIONS = ("foreach", "fused", "capturable", "differentiable", "nonfinite",
                  "master_weights", "stochastic_rounding")
#: Learning-rate scaling rules with batch size: name -> exponent ``p`` in
#: ``lr * (batch_size / base_batch_size) ** p``.
LR_SCALING: dict[str, float] = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}


class SchemaError(ValueError):
    """A stored record or config that does not match the schema; the message names the field."""


# ----------------------------------------------------------------------------- JSON


def json_safe(obj: Any) -> Any:
    """A strict-JSON-able copy of ``obj``: NaN and infinities become ``None``, tuples and sets
    lists, mapping keys strings, numpy/torch scalars Python numbers (tensors nested lists),
    dataclasses dicts; any other object its ``str``."""
    t = type(obj)
    if t is float:
        return obj if obj - obj == 0 else None  # inf - inf and nan - nan are nan
    if obj is None or t is int or t is str or t is bool:
        return obj
    if t is list or t is tuple:
        out = []
        for v in obj:  # inlined scalar cases: curves are long lists of floats
            tv = type(v)
            if tv is float:
                out.append(v if v - v == 0 else None)
            elif tv is int or tv is str or v is None:
                out.append(v)
            else:
                out.append(json_safe(v))
        return out
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return json_safe(float(obj))
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        return json_safe(asdict(obj))
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars, tensors
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return json_safe(obj.item())
    return str(obj)


def _canonical(obj: Any) -> str:
    return json.dumps(json_safe(obj), sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------- RunConfig


def parse_batch_size(value: Any) -> int | str:
    """``"full"`` (batch gradient descent) or a positive integer (``1``: stochastic)."""
    return validate.batch_size("batch_size", value)


#: Fields new in key version 2, left out of the key while at their default (keeps it short).
_NEW_DEFAULTS: dict[str, Any] = {"clip_norm": None, "clip_value": None, "lr_scaling": "none",
                                 "base_batch_size": 32, "examples": None, "epochs": None,
                                 "sharpness": False}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; two equal configs give the same run (on CPU, bit for bit).

    Attributes:
        task: task name (registry name or ``"module:factory"``).
        optimizer: lab optimizer name (see :data:`optimlab.lab.optimizers.LAB_OPTIMIZERS`) or
            ``"module:Class"``.
        hyperparams: optimizer hyperparameters (completed by :meth:`resolved`). ``lr`` is the
            learning rate at ``base_batch_size`` when ``lr_scaling`` is not ``"none"``.
        task_options: options of the task factory.
        schedule: learning-rate schedule name (:data:`optimlab.lab.runs.SCHEDULES`).
        batch_size: ``"full"`` or a positive integer.
        seed: the seed of model initialization and data order.
        steps: step budget (``None``: the task's default). With ``examples`` or ``epochs`` the
            runner derives it (``ceil(examples / batch)``, ``ceil(epochs * n_train / batch)``,
            ``batch`` = the batch size, at most ``n_train``) and records it here; the key then
            hashes the given budget, not the derived steps.
        examples: budget in training examples (at most one of ``examples`` and ``epochs``).
        epochs: budget in passes over the training set.
        seconds: optional wall-clock budget on training time; the run stops at whichever of
            the step budget and ``seconds`` comes first (machine-dependent).
        eval_every: steps between evaluations (``None``: the default grid,
            :class:`optimlab.lab.runs.EvalGrid`: every step on 2-D tasks, 50 evaluations
            elsewhere, ten times finer near the target).
        telemetry: record gradient telemetry (:class:`optimlab.Telemetry`).
        clip_norm: clip the global L2 norm of the gradients to this value before each step.
        clip_value: clip each gradient element to ``[-clip_value, clip_value]``.
        lr_scaling: ``"none"``, ``"linear"`` or ``"sqrt"``: the lr used is
            ``lr * (batch / base_batch_size) ** p`` with ``p`` = 0, 1, 1/2.
        base_batch_size: the batch size the given ``lr`` refers to.
        sharpness: measure the final parameters' sharpness (top Hessian eigenvalue, Hessian
            trace: :mod:`optimlab.lab.curvature`), recorded as scalars.
    """

    task: str
    optimizer: str
    hyperparams: Mapping[str, Any] = field(default_factory=dict)
    task_options: Mapping[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    batch_size: int | str = 32
    seed: int = 0
    steps: int | None = None
    examples: int | None = None
    epochs: float | None = None
    seconds: float | None = None
    eval_every: int | None = None
    telemetry: bool = False
    clip_norm: float | None = None
    clip_value: float | None = None
    lr_scaling: str = "none"
    base_batch_size: int = 32
    sharpness: bool = False

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"task must be a non-empty string, got {self.task!r}")
        if not isinstance(self.optimizer, str) or not self.optimizer:
            raise ValueError(f"optimizer must be a non-empty string, got {self.optimizer!r}")
        for name in ("hyperparams", "task_options"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        setattr_(self, "batch_size", parse_batch_size(self.batch_size))
        setattr_(self, "steps", optional(positive_int, "steps", self.steps))
        setattr_(self, "examples", optional(positive_int, "examples", self.examples))
        setattr_(self, "epochs", optional(positive_float, "epochs", self.epochs))
        if self.examples is not None and self.epochs is not None:
            raise ValueError("give at most one of examples and epochs as the budget")
        setattr_(self, "eval_every", optional(positive_int, "eval_every", self.eval_every))
        setattr_(self, "base_batch_size", positive_int("base_batch_size",
                                                      self.base_batch_size))
        setattr_(self, "seed", validate.non_negative_int("seed", self.seed))
        setattr_(self, "seconds", optional(positive_float, "seconds", self.seconds))
        setattr_(self, "clip_norm", optional(positive_float, "clip_norm", self.clip_norm))
        setattr_(self, "clip_value", optional(positive_float, "clip_value", self.clip_value))
        for name in ("telemetry", "sharpness"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.lr_scaling not in LR_SCALING:
            raise ValueError(f"unknown lr_scaling {self.lr_scaling!r}; allowed: "
                             f"{', '.join(LR_SCALING)}")
        from .runs import SCHEDULES  # lazy: runs imports this module

        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; allowed: "
                             f"{', '.join(SCHEDULES)}")

    def resolved(self) -> RunConfig:
        """This config with every optimizer hyperparameter made explicit, and the step budget
        when it is given in steps or left to the task, so that its key does not change when a
        default does. (A budget in examples or epochs is turned into steps by the runner, which
        knows the training-set size.) Raises ``ValueError`` for unknown tasks, optimizers,
        options and hyperparameters."""
        from .optimizers import resolve_hyperparams
        from .tasks import make_task

        hyper = resolve_hyperparams(self.optimizer, self.hyperparams)
        steps = self.steps
        if steps is None and self.examples is None and self.epochs is None:
            steps = make_task(self.task, **self.task_options).info.steps
        return replace(self, hyperparams=hyper, steps=steps)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the ``config`` of a record); :meth:`from_dict` inverts it."""
        d = asdict(self)
        d["hyperparams"] = json_safe(dict(sorted(dict(self.hyperparams).items())))
        d["task_options"] = json_safe(dict(sorted(dict(self.task_options).items())))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """The config of :meth:`to_dict`'s dict; an unknown field raises ``ValueError``."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a run config must be a mapping, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"run config has no field {unknown[0]!r}; fields: "
                             f"{', '.join(sorted(names))}")
        return cls(**d)

    def key_fields(self) -> dict[str, Any]:
        """What the key hashes (see :meth:`key`), as a dict."""
        d = self.to_dict()
        d["hyperparams"] = {k: v for k, v in d["hyperparams"].items()
                            if k not in ENGINE_OPTIONS}
        if self.examples is not None or self.epochs is not None:
            d.pop("steps")  # derived from the budget given, by the runner
        for name, default in _NEW_DEFAULTS.items():
            if d.get(name, default) == default:
                d.pop(name, None)
        d["v"] = KEY_VERSION
        return d

    def key(self) -> str:
        """A stable identifier of the experiment: a hash of the canonical JSON of the task,
        its options, the optimizer, its hyperparameters except :data:`ENGINE_OPTIONS`, the
        schedule, batch size and lr scaling, the budget, seed, evaluation grid, clipping,
        telemetry and :data:`KEY_VERSION`."""
        return hashlib.sha256(_canonical(self.key_fields()).encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- time to target


@dataclass(frozen=True)
class Settled:
    """Time to target read off an evaluation grid (see :func:`settle`).

    Attributes:
        index: index of the settling evaluation (``None``: never settled).
        step: its step (``steps_to_target``).
        resolution: steps since the evaluation before it (0 when settled at step 0).
        first_crossing: first evaluated step at or below the target (``None``: never).
    """

    index: int | None
    step: int | None
    resolution: int | None
    first_crossing: int | None


def settle(steps: Sequence[int], values: Sequence[float], target: float, *,
           ok: bool = True) -> Settled:
    """The settled step of a run: the first evaluated step from which every later evaluation
    of the target metric is finite and ``<= target``. A run that did not end normally
    (``ok=False``: diverged or failed) never settles; its first crossing is still reported."""
    first = next((s for s, v in zip(steps, values, strict=False)
                  if v is not None and math.isfinite(v) and v <= target), None)
    index: int | None = None
    if ok:
        for i in range(len(values) - 1, -1, -1):
            v = values[i]
            if v is None or not math.isfinite(v) or v > target:
                break
            index = i
    if index is None:
        return Settled(None, None, None, first)
    resolution = int(steps[index] - steps[index - 1]) if index > 0 else 0
    return Settled(index, int(steps[index]), resolution, first)


def steady_time(elapsed: float, step: int, warmup_steps: int, warmup_seconds: float,
                seconds_per_step: float | None) -> float:
    """Training seconds to ``step`` with the warm-up excluded: ``elapsed`` (which includes the
    first ``warmup_steps`` steps, taking ``warmup_seconds``) with those steps counted at the
    median step time ``seconds_per_step`` instead."""
    if warmup_seconds <= 0 or seconds_per_step is None:
        return max(elapsed, 0.0)
    done = min(step, warmup_steps)
    # ``elapsed`` covers min(step, warmup_steps) warm-up steps; their time is replaced.
    share = warmup_seconds * (done / warmup_steps) if warmup_steps else 0.0
    return max(elapsed - share + done * seconds_per_step, 0.0)


# ----------------------------------------------------------------------------- RunRecord


@dataclass
class TaskFacts:
    """What a record says about its task (the record's ``task_info``).

    Attributes:
        name: registry name.
        kind: ``"2d"``, ``"convex"`` or ``"neural"``.
        description: one line.
        target: value of ``target_metric`` that counts as solved.
        target_metric: the metric the target refers to.
        n_train: training examples.
        options: the task's options.
        deterministic: the run does not depend on its seed (the task is deterministic with a
            full batch and the run used the full batch): one seed says everything.
    """

    name: str
    kind: str
    description: str
    target: float
    target_metric: str
    n_train: int
    options: dict[str, Any] = field(default_factory=dict)
    deterministic: bool = False


#: Run statuses.
STATUSES = ("ok", "diverged", "pruned", "failed")


@dataclass
class RunRecord:
    """What one run measured. Built by :func:`optimlab.lab.runs.execute`, stored as
    :meth:`to_dict`, read back with :meth:`from_dict`.

    Attributes:
        key: :meth:`RunConfig.key` of ``config`` (an older key for migrated records).
        config: the resolved config (every hyperparameter explicit, steps derived).
        status: ``"ok"``, ``"diverged"``, ``"pruned"`` or ``"failed"``.
        error: what went wrong (``None`` when ``status == "ok"``).
        task_info: the task's facts.
        curve: ``step``, ``time`` (training seconds, evaluations excluded) and the mini-batch
            ``train_loss``, at most ``MAX_POINTS`` points.
        evals: ``step``, ``time``, ``grad_evals`` (closure evaluations so far), ``examples``
            (training examples drawn so far): lists, one entry per evaluation (step 0 and the
            last step included); ``metrics``: name -> list.
        final: the last evaluation's metrics.
        steps_to_target: the settled step (:func:`settle`; ``None``: never settled).
        target_resolution: steps between the settling evaluation and the one before it.
        first_crossing: first evaluated step at or below the target (shown, never ranked).
        grad_evals_to_target: closure (gradient) evaluations up to the settled step.
        examples_to_target: training examples drawn up to the settled step.
        time_to_target: training seconds to the settled step, warm-up excluded
            (:func:`steady_time`).
        reached: the run settled at its target (so its final value is at or below it).
        generalization_gap: final ``test_loss - train_loss`` where the task has a test set.
        steps_done, grad_evals, examples: totals of the run.
        train_seconds: training seconds (evaluations excluded, warm-up included).
        warmup_seconds: seconds of the first ``WARMUP_STEPS`` steps.
        seconds_per_step: median seconds of the steps after the warm-up (``None``: none).
        wall_seconds: wall-clock seconds of the whole run, evaluations included.
        peak_memory_bytes, memory_kind: peak memory and how it was measured.
        state_bytes: bytes of optimizer state; n_params, param_bytes: of the parameters.
        trajectory: 2-D tasks: ``[x, y]`` from the start, after each (recorded) step.
        lr: the learning rate used at each recorded step (``step``, ``value``).
        series: name -> ``{"step": [...], "value": [...]}`` at evaluation steps:
            ``update_norm`` (``||theta_{t+1} - theta_t||`` of that step), ``param_norm``
            (``||theta||`` after it), ``grad_norm`` (before clipping), ``effective_lr``
            (``update_norm / grad_norm``), ``loss_noise`` (standard deviation of the
            mini-batch losses since the previous evaluation).
        scalars: further measurements by name: ``closure_evals`` always; ``escape_step``
            (the first step at which the task counted the iterate as escaped from its saddle,
            :meth:`optimlab.lab.tasks.Task.escaped`) on saddle tasks, absent when the run never
            escaped; ``lr_scale`` when the config scales the lr with the batch size;
            ``function_evals``, ``gradient_evals``, ``hvp_evals`` for optimizers that count
            their evaluations (:mod:`optimlab.lab.work`); ``sharpness_*`` when
            ``config.sharpness`` (:mod:`optimlab.lab.curvature`).
        telemetry: :meth:`optimlab.Telemetry.summary` when ``config.telemetry``.
        label: the study arm (set by the store for a study's records).
        schema: :data:`SCHEMA_VERSION`.
    """

    key: str
    config: RunConfig
    status: str
    error: str | None
    task_info: TaskFacts
    curve: dict[str, list]
    evals: dict[str, Any]
    final: dict[str, float]
    steps_to_target: int | None
    target_resolution: int | None
    first_crossing: int | None
    grad_evals_to_target: int | None
    examples_to_target: int | None
    time_to_target: float | None
    reached: bool
    generalization_gap: float | None
    steps_done: int
    grad_evals: int
    examples: int
    train_seconds: float
    warmup_seconds: float
    seconds_per_step: float | None
    wall_seconds: float
    peak_memory_bytes: int | None
    memory_kind: str
    state_bytes: int
    n_params: int
    param_bytes: int
    trajectory: list[list[float]] | None
    lr: dict[str, list]
    series: dict[str, dict[str, list]]
    scalars: dict[str, float]
    telemetry: dict | None
    label: str | None = None
    schema: int = SCHEMA_VERSION

    # -- convenience
    @property
    def seed(self) -> int:
        """The run's seed."""
        return self.config.seed

    @property
    def optimizer(self) -> str:
        """The run's optimizer name."""
        return self.config.optimizer

    @property
    def task(self) -> str:
        """The run's task name."""
        return self.config.task

    @property
    def ok(self) -> bool:
        """The run ended normally (``status == "ok"``)."""
        return self.status == "ok"

    @property
    def target(self) -> float:
        """The task's target value."""
        return self.task_info.target

    @property
    def target_metric(self) -> str:
        """The metric the target refers to."""
        return self.task_info.target_metric

    @property
    def deterministic(self) -> bool:
        """The run's result does not depend on its seed (see :class:`TaskFacts`)."""
        return self.task_info.deterministic

    def metric(self, name: str) -> float:
        """The final value of metric ``name`` (NaN when missing or not finite)."""
        v = self.final.get(name)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan

    # -- JSON
    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-able dict (NaN and infinities as ``None``); :meth:`from_dict`
        inverts it."""
        d: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "config":
                value = value.to_dict()
            elif f.name == "task_info":
                value = asdict(value)
            d[f.name] = value
        return json_safe(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunRecord:
        """The record of a stored dict of any known schema version (migrated by
        :func:`migrate`). Raises :class:`SchemaError` naming the field that is malformed."""
        d = migrate(d)
        r = _Reader(d)
        try:
            config = RunConfig.from_dict(r.mapping("config"))
        except (TypeError, ValueError) as e:
            raise SchemaError(f"record field 'config': {e}") from None
        ti = _Reader(r.mapping("task_info"), "task_info.")
        facts = TaskFacts(name=ti.str("name"), kind=ti.str("kind"),
                          description=ti.str("description"), target=ti.float("target"),
                          target_metric=ti.str("target_metric"), n_train=ti.int("n_train"),
                          options=dict(ti.mapping("options")),
                          deterministic=ti.bool("deterministic"))
        return cls(
            key=r.str("key"), config=config, status=r.choice("status", STATUSES),
            error=r.str("error", optional=True), task_info=facts,
            curve=r.columns("curve"), evals=r.evals("evals"), final=r.floats_by_name("final"),
            steps_to_target=r.int("steps_to_target", optional=True),
            target_resolution=r.int("target_resolution", optional=True),
            first_crossing=r.int("first_crossing", optional=True),
            grad_evals_to_target=r.int("grad_evals_to_target", optional=True),
            examples_to_target=r.int("examples_to_target", optional=True),
            time_to_target=r.float("time_to_target", optional=True),
            reached=r.bool("reached"),
            generalization_gap=r.float("generalization_gap", optional=True),
            steps_done=r.int("steps_done"), grad_evals=r.int("grad_evals"),
            examples=r.int("examples"), train_seconds=r.float("train_seconds"),
            warmup_seconds=r.float("warmup_seconds"),
            seconds_per_step=r.float("seconds_per_step", optional=True),
            wall_seconds=r.float("wall_seconds"),
            peak_memory_bytes=r.int("peak_memory_bytes", optional=True),
            memory_kind=r.str("memory_kind"), state_bytes=r.int("state_bytes"),
            n_params=r.int("n_params"), param_bytes=r.int("param_bytes"),
            trajectory=r.trajectory("trajectory"), lr=r.columns("lr"),
            series=r.series("series"), scalars=r.floats_by_name("scalars"),
            telemetry=r.mapping("telemetry", optional=True),
            label=r.str("label", optional=True), schema=SCHEMA_VERSION)


def _nan(v: Any) -> Any:
    return math.nan if v is None else v


class _Reader:
    """Typed access to a stored dict; every error names the field."""

    def __init__(self, d: Mapping[str, Any], prefix: str = "") -> None:
        self.d, self.prefix = d, prefix

    def fail(self, name: str, what: str) -> SchemaError:
        value = self.d.get(name, "<missing>")
        text = repr(value)
        if len(text) > 60:
            text = text[:57] + "..."
        return SchemaError(f"record field {self.prefix + name!r}: expected {what}, got {text}")

    def get(self, name: str, optional: bool) -> Any:
        if name not in self.d:
            if optional:
                return None
            raise self.fail(name, "a value")
        return self.d[name]

    def str(self, name: str, optional: bool = False) -> Any:
        v = self.get(name, optional)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise self.fail(name, "a string")
        return v

    def choice(self, name: str, allowed: Sequence[str]) -> str:
        v = self.str(name)
        if v not in allowed:
            raise self.fail(name, f"one of {', '.join(allowed)}")
        return v

    def int(self, name: str, optional: bool = False) -> Any:
        v = self.get(name, optional)
        if v is None and optional:
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(name, "an integer")
        return v

    def float(self, name: str, optional: bool = False) -> Any:
        v = self.get(name, optional)
        if v is None:
            if optional:
                return None
            return math.nan  # stored NaN (strict JSON writes it as null)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(name, "a number")
        return float(v)

    def bool(self, name: str) -> bool:
        v = self.get(name, False)
        if not isinstance(v, bool):
            raise self.fail(name, "true or false")
        return v

    def mapping(self, name: str, optional: bool = False) -> Any:
        v = self.get(name, optional)
        if v is None and optional:
            return None
        if not isinstance(v, Mapping):
            raise self.fail(name, "an object")
        return v

    def columns(self, name: str) -> dict[str, list]:
        """Named lists (curve, lr); nulls in them are NaN."""
        m = self.mapping(name)
        out = {}
        for k, v in m.items():
            if not isinstance(v, list):
                raise SchemaError(f"record field {self.prefix}{name}.{k!r}: expected a list, "
                                  f"got {type(v).__name__}")
            out[str(k)] = [_nan(x) for x in v]
        return out

    def evals(self, name: str) -> dict[str, Any]:
        m = self.mapping(name)
        out: dict[str, Any] = {}
        for k in ("step", "time", "grad_evals", "examples"):
            v = m.get(k)
            if not isinstance(v, list):
                raise SchemaError(f"record field {name}.{k}: expected a list, got {v!r:.60}")
            out[k] = [_nan(x) for x in v]
        metrics = m.get("metrics")
        if not isinstance(metrics, Mapping) or not all(isinstance(v, list)
                                                       for v in metrics.values()):
            raise SchemaError(f"record field {name}.metrics: expected an object of lists")
        n = len(out["step"])
        for k, v in metrics.items():
            if len(v) != n:
                raise SchemaError(f"record field {name}.metrics.{k}: {len(v)} values for "
                                  f"{n} evaluations")
        out["metrics"] = {str(k): [_nan(x) for x in v] for k, v in metrics.items()}
        return out

    def floats_by_name(self, name: str) -> dict[str, float]:
        m = self.mapping(name)
        out = {}
        for k, v in m.items():
            if v is None:
                v = math.nan
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SchemaError(f"record field {name}.{k}: expected a number, got {v!r:.60}")
            out[str(k)] = v
        return out

    def series(self, name: str) -> dict[str, dict[str, list]]:
        m = self.mapping(name)
        out = {}
        for k, v in m.items():
            if (not isinstance(v, Mapping) or not isinstance(v.get("step"), list)
                    or not isinstance(v.get("value"), list)):
                raise SchemaError(f"record field {name}.{k}: expected "
                                  "{'step': [...], 'value': [...]}")
            out[str(k)] = {"step": list(v["step"]), "value": [_nan(x) for x in v["value"]]}
        return out

    def trajectory(self, name: str) -> list[list[float]] | None:
        v = self.get(name, True)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(p, list) for p in v):
            raise self.fail(name, "a list of points")
        return [[_nan(x) for x in p] for p in v]


# ----------------------------------------------------------------------------- migration


def migrate(d: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record of any known schema version as a current-version dict.

    Version 1 (records written before typed records; no ``schema`` field): its
    ``steps_to_target`` was the first evaluation at or below the target, so it becomes
    ``first_crossing`` and the settled step is recomputed from the stored evaluations; ``extra``
    becomes ``scalars``; the per-evaluation gradient-evaluation and example counts are derived
    from the step (exact for optimizers with a fixed number of closure evaluations per step and
    full epochs of batches); fields v1 did not have get neutral values (no warm-up measured,
    no series). A newer version than this code knows raises :class:`SchemaError`.
    """
    if not isinstance(d, Mapping):
        raise SchemaError(f"a run record must be an object, got {type(d).__name__}")
    version = d.get("schema", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SchemaError(f"record field 'schema': expected a version number, got {version!r}")
    if version > SCHEMA_VERSION:
        raise SchemaError(f"record schema version {version} is newer than this optimlab "
                          f"reads ({SCHEMA_VERSION}); upgrade optimlab")
    out = dict(d)
    if version == 1:
        out = _from_v1(out)
    return out


def _from_v1(d: dict[str, Any]) -> dict[str, Any]:
    r = _Reader(d)
    config = r.mapping("config")
    info = dict(r.mapping("task_info"))
    evals = dict(r.mapping("evals"))
    steps = evals.get("step")
    if not isinstance(steps, list):
        raise SchemaError(f"record field evals.step: expected a list, got {steps!r:.60}")
    steps_done = r.int("steps_done")
    extra = dict(r.mapping("extra", optional=True) or {})
    closure_evals = extra.get("closure_evals")
    if isinstance(closure_evals, bool) or not isinstance(closure_evals, int):
        closure_evals = steps_done
    n_train = info.get("n_train", 1)
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1:
        raise r.fail("task_info", "n_train: a positive integer")
    bs = config.get("batch_size", 32)
    per_step = n_train if bs == "full" or not isinstance(bs, int) else min(bs, n_train)
    per_eval = closure_evals / steps_done if steps_done else 1.0
    evals["grad_evals"] = [round(s * per_eval) for s in steps]
    evals["examples"] = [s * per_step for s in steps]
    info.setdefault("name", config.get("task", ""))
    info.setdefault("options", {})
    info.setdefault("n_train", n_train)
    info["deterministic"] = False  # v1 did not say; the seeds it ran show it
    metric = info.get("target_metric", "train_loss")
    target = info.get("target")
    values = (evals.get("metrics") or {}).get(metric, [])
    status = d.get("status")
    if isinstance(target, (int, float)) and isinstance(values, list) and len(values) == len(
            steps):
        s = settle(steps, [_nan(v) for v in values], float(target), ok=status == "ok")
    else:
        s = Settled(None, None, None, d.get("steps_to_target"))
    times = evals.get("time") or []
    out = dict(d)
    out.pop("extra", None)
    out.update(
        schema=SCHEMA_VERSION, task_info=info, evals=evals,
        steps_to_target=s.step, target_resolution=s.resolution,
        first_crossing=d.get("steps_to_target"),
        grad_evals_to_target=None if s.index is None else evals["grad_evals"][s.index],
        examples_to_target=None if s.index is None else evals["examples"][s.index],
        time_to_target=(None if s.index is None or s.index >= len(times)
                        else times[s.index]),
        reached=s.index is not None, grad_evals=closure_evals,
        examples=steps_done * per_step, warmup_seconds=0.0, seconds_per_step=None,
        series={}, scalars=extra)
    for name, default in (("curve", {}), ("lr", {}), ("trajectory", None), ("telemetry", None),
                          ("memory_kind", ""), ("peak_memory_bytes", None),
                          ("generalization_gap", None), ("error", None), ("state_bytes", 0),
                          ("n_params", 0), ("param_bytes", 0), ("train_seconds", 0.0),
                          ("wall_seconds", 0.0)):
        out.setdefault(name, default)
    return out
