"""Runs: one task trained by one optimizer configuration for one seed, measured.

A :class:`RunConfig` says what to run; :func:`execute` runs it and returns a *record*, a
JSON-able dict (the schema is documented on :func:`execute`) that the results store keeps and
the report reads. A run never raises for what the optimizer does: a non-finite or exploding
loss ends it with status ``"diverged"``, any other error with status ``"failed"`` and the error
message, so a study always completes.

Every optimizer step goes through ``optimizer.step(closure)``: the closure computes the loss of
the current mini-batch and its gradients, so closure-driven optimizers (L-BFGS, line searches,
SAM's two passes) run unchanged, and the number of closure evaluations is recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import operator
import resource
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .. import schedules
from ..chain import NonFiniteGradientError
from ..telemetry import Telemetry
from .optimizers import build_optimizer, plain, resolve_hyperparams
from .tasks import Task, make_task

__all__ = ["SCHEDULES", "RunConfig", "RunPruned", "execute", "make_schedule"]

#: A loss above ``DIVERGENCE_FACTOR * max(|initial loss|, 1)`` counts as exploding.
DIVERGENCE_FACTOR = 1e3
#: At most this many points of the training-loss curve and of 2-D trajectories are kept.
MAX_POINTS = 400


class RunPruned(Exception):
    """Raised by an ``on_eval`` callback to stop a run early; the run ends as ``"pruned"``."""


def _constant(lr: float, steps: int) -> schedules.Schedule:
    return schedules.constant(lr)


def _cosine(lr: float, steps: int) -> schedules.Schedule:
    return schedules.cosine_annealing(lr, T_max=max(steps, 1))


def _warmup_cosine(lr: float, steps: int) -> schedules.Schedule:
    return schedules.warmup_cosine(lr, warmup_steps=max(steps // 20, 1) if steps > 1 else 0,
                                   total_steps=max(steps, 1))


def _step(lr: float, steps: int) -> schedules.Schedule:
    return schedules.step_decay(lr, step_size=max(steps // 3, 1), gamma=0.1)


def _linear(lr: float, steps: int) -> schedules.Schedule:
    return schedules.linear(lr, 0.0, max(steps, 1))


#: Learning-rate schedules a run can use, by name: ``f(lr, steps) -> schedule``.
SCHEDULES: dict[str, tuple[Callable[[float, int], schedules.Schedule], str]] = {
    "constant": (_constant, "the optimizer's lr at every step"),
    "cosine": (_cosine, "cosine annealing from lr to 0 over the run"),
    "warmup-cosine": (_warmup_cosine, "linear warm-up over 5% of the run, then cosine to 0"),
    "step": (_step, "lr divided by 10 after each third of the run"),
    "linear": (_linear, "linear decay from lr to 0 over the run"),
}


def make_schedule(name: str, lr: float, steps: int) -> schedules.Schedule:
    """The schedule ``name`` (a key of :data:`SCHEDULES`) for base ``lr`` over ``steps``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
    return SCHEDULES[name][0](lr, steps)


def _check_positive_int(name: str, value: Any, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if v < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return v


def parse_batch_size(value: Any) -> int | str:
    """``"full"`` (batch gradient descent) or a positive integer (``1``: stochastic)."""
    if isinstance(value, str):
        s = value.strip().lower()
        if s == "full":
            return "full"
        if s.isdigit():
            value = int(s)
    try:
        return _check_positive_int("batch_size", value, allow_none=False)  # type: ignore[return-value]
    except ValueError:
        raise ValueError(f"batch_size must be 'full' or a positive integer, got {value!r}"
                         ) from None


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; two equal configs give the same run (on CPU, bit for bit).

    Attributes:
        task: task name (registry name or ``"module:factory"``).
        optimizer: lab optimizer name (see :data:`optimlab.lab.optimizers.LAB_OPTIMIZERS`) or
            ``"module:Class"``.
        hyperparams: optimizer hyperparameters (completed by :meth:`resolved`).
        task_options: options of the task factory.
        schedule: learning-rate schedule name (:data:`SCHEDULES`).
        batch_size: ``"full"`` or a positive integer.
        seed: the seed of model initialization and data order.
        steps: step budget (``None``: the task's default).
        seconds: optional wall-clock budget on training time; the run stops at whichever of
            ``steps`` and ``seconds`` comes first (a seconds budget makes runs machine-dependent).
        eval_every: steps between evaluations (``None``: about 25 evaluations per run; every
            step on 2-D tasks).
        telemetry: record gradient telemetry (:class:`optimlab.Telemetry`).
    """

    task: str
    optimizer: str
    hyperparams: Mapping[str, Any] = field(default_factory=dict)
    task_options: Mapping[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    batch_size: int | str = 32
    seed: int = 0
    steps: int | None = None
    seconds: float | None = None
    eval_every: int | None = None
    telemetry: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", parse_batch_size(self.batch_size))
        object.__setattr__(self, "steps", _check_positive_int("steps", self.steps))
        object.__setattr__(self, "eval_every", _check_positive_int("eval_every",
                                                                   self.eval_every))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.seconds is not None and not (isinstance(self.seconds, (int, float))
                                             and math.isfinite(self.seconds)
                                             and self.seconds > 0):
            raise ValueError(f"seconds must be a positive number, got {self.seconds!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; allowed: "
                             f"{', '.join(SCHEDULES)}")

    def resolved(self) -> RunConfig:
        """This config with every optimizer hyperparameter and the step budget made explicit,
        so that its key does not change when a default does. Raises ``ValueError`` for unknown
        tasks, optimizers, options and hyperparameters."""
        hyper = resolve_hyperparams(self.optimizer, self.hyperparams)
        steps = self.steps
        if steps is None:
            steps = make_task(self.task, **self.task_options).info.steps
        return RunConfig(**{**asdict(self), "hyperparams": hyper, "steps": steps})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the ``config`` of a record)."""
        d = asdict(self)
        d["hyperparams"] = dict(sorted(dict(self.hyperparams).items()))
        d["task_options"] = dict(sorted(dict(self.task_options).items()))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)

    def key(self) -> str:
        """A stable identifier: a hash of the canonical JSON of :meth:`to_dict`."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _memory_before(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> tuple[int | None, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024
    return int(rss * scale), "process peak RSS (high-water mark of the worker process)"


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in ``optimizer.state`` (any torch optimizer)."""
    total = 0
    for st in optimizer.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    return total


def _thin(n: int, limit: int = MAX_POINTS) -> int:
    """Record every k-th point so that at most ``limit`` points are kept."""
    return max(1, math.ceil(n / limit))


def _gap(final: Mapping[str, float]) -> float | None:
    if "test_loss" in final and "train_loss" in final:
        return _finite_or_none(final["test_loss"] - final["train_loss"])
    return None


def execute(config: RunConfig, *, device: str | torch.device = "cpu",
            threads: int | None = None,
            on_eval: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Run ``config`` and return its record.

    The record (a JSON-able dict):

    * ``key``, ``config`` (resolved: every hyperparameter explicit);
    * ``status``: ``"ok"``, ``"diverged"`` (non-finite or exploding loss, or a non-finite
      gradient the optimizer refused), ``"pruned"`` (``on_eval`` raised :class:`RunPruned`)
      or ``"failed"`` (any other error; ``error`` says what);
    * ``task_info``: kind, description, target, target_metric, n_train;
    * ``curve``: ``step``, ``time`` (training seconds, evaluations excluded) and mini-batch
      ``train_loss``, at most :data:`MAX_POINTS` points;
    * ``evals``: ``step``, ``time`` and ``metrics`` (name -> list) of each evaluation,
      step 0 and the last step included; ``final``: the last evaluation's metrics;
    * ``steps_to_target``, ``time_to_target``: at the first evaluation where the task's
      target metric is at or below its target (``None`` if never);
    * ``generalization_gap``: final ``test_loss - train_loss`` where the task has a test set;
    * ``steps_done``, ``train_seconds``, ``wall_seconds``;
    * ``peak_memory_bytes`` and ``memory_kind`` (CUDA: max allocated; CPU: the worker's peak
      RSS), ``state_bytes`` (optimizer state), ``n_params``, ``param_bytes``;
    * ``trajectory``: 2-D tasks, the point ``[x, y]`` after each (recorded) step from the start;
    * ``lr``: the learning rate the schedule set, ``step`` and ``value``;
    * ``telemetry``: :meth:`optimlab.Telemetry.summary` when ``config.telemetry``;
    * ``extra``: further scalar measurements (``closure_evals``).

    Args:
        config: what to run (resolved here if it is not yet).
        device: where to run.
        threads: ``torch.set_num_threads`` during the run (restored afterwards); the number of
            threads changes floating-point reduction order, so keep it fixed for determinism.
        on_eval: called as ``on_eval(step, metrics)`` after every evaluation after step 0
            (e.g. to report intermediate values to a tuner); raising :class:`RunPruned` ends
            the run with status ``"pruned"``.

    Raises:
        ValueError: the config itself is invalid (unknown task, optimizer, option or
            hyperparameter; an invalid value). Everything that goes wrong *during* the run is
            recorded instead.
    """
    config = config.resolved()
    device = torch.device(device)
    task = make_task(config.task, **config.task_options)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(config.seed)
        task.setup(config.seed, device)
        params = task.parameters()
        optimizer = build_optimizer(config.optimizer, params, config.hyperparams)
        return _train(config, task, optimizer, device, on_eval)
    finally:
        torch.set_num_threads(old_threads)


def _train(config: RunConfig, task: Task, optimizer: torch.optim.Optimizer,
           device: torch.device,
           on_eval: Callable[[int, dict[str, float]], None] | None) -> dict[str, Any]:
    wall0 = time.perf_counter()
    info = task.info
    steps = int(config.steps)  # resolved
    params = task.parameters()
    n_params = sum(p.numel() for p in params)
    base_lr = float(config.hyperparams.get("lr", optimizer.param_groups[0].get("lr", 0.0)))
    scheduler = schedules.ScheduledLR(optimizer, make_schedule(config.schedule, base_lr, steps))
    eval_every = config.eval_every or max(1, steps // (500 if info.kind == "2d" else 25))
    log_every = _thin(steps)
    batch_size = None if config.batch_size == "full" else int(config.batch_size)
    gen = torch.Generator().manual_seed(config.seed)
    batches = task.batches(batch_size, gen)
    telemetry = (Telemetry(optimizer, task.model, per_layer=False, keep_history=False)
                 if config.telemetry else None)

    curve: dict[str, list[float]] = {"step": [], "time": [], "train_loss": []}
    evals: dict[str, Any] = {"step": [], "time": [], "metrics": {}}
    lr_curve: dict[str, list[float]] = {"step": [], "value": []}
    is_2d = info.kind == "2d"
    trajectory: list[list[float]] | None = [] if is_2d else None
    traj_every = _thin(steps, 2000)
    status, error = "ok", None
    steps_to_target: int | None = None
    time_to_target: float | None = None
    train_time = 0.0
    closure_evals = 0
    step = 0

    def evaluate(at: int) -> dict[str, float]:
        nonlocal steps_to_target, time_to_target
        metrics = {k: float(v) for k, v in task.evaluate().items()}
        evals["step"].append(at)
        evals["time"].append(train_time)
        for name, value in metrics.items():
            evals["metrics"].setdefault(name, [math.nan] * (len(evals["step"]) - 1))
            evals["metrics"][name].append(value)
        for values in evals["metrics"].values():
            if len(values) < len(evals["step"]):
                values.append(math.nan)
        value = metrics.get(info.target_metric)
        if (steps_to_target is None and value is not None and math.isfinite(value)
                and value <= info.target):
            steps_to_target, time_to_target = at, train_time
        return metrics

    def point() -> list[float]:
        return [float(v) for v in torch.cat([p.detach().reshape(-1) for p in params])[:2]]

    _memory_before(device)
    initial = evaluate(0)
    ref = initial.get("train_loss", math.nan)
    limit = DIVERGENCE_FACTOR * max(abs(ref), 1.0) if math.isfinite(ref) else math.inf
    if trajectory is not None:
        trajectory.append(point())
    if not math.isfinite(ref):
        status, error = "diverged", f"initial training loss is {ref}"

    try:
        while status == "ok" and step < steps:
            if config.seconds is not None and train_time >= config.seconds:
                break
            lr_now = float(optimizer.param_groups[0]["lr"])
            t0 = time.perf_counter()
            batch = next(batches)

            def closure(batch: Any = batch) -> torch.Tensor:
                nonlocal closure_evals
                closure_evals += 1
                optimizer.zero_grad(set_to_none=True)
                loss = task.loss(batch)
                loss.backward()
                return loss

            loss = optimizer.step(closure)
            scheduler.step()
            loss_value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time += time.perf_counter() - t0
            step += 1
            if step % log_every == 0 or step == 1 or step == steps:
                curve["step"].append(step)
                curve["time"].append(train_time)
                curve["train_loss"].append(loss_value)
                lr_curve["step"].append(step - 1)
                lr_curve["value"].append(lr_now)
            if trajectory is not None and (step % traj_every == 0 or step == steps):
                trajectory.append(point())
            if not math.isfinite(loss_value) or loss_value > limit:
                status = "diverged"
                error = f"training loss {loss_value:.4g} at step {step}"
                break
            if step % eval_every == 0 or step == steps:
                metrics = evaluate(step)
                train_loss = metrics.get("train_loss", 0.0)
                if not math.isfinite(train_loss) or train_loss > limit:
                    status = "diverged"
                    error = f"training loss {train_loss:.4g} at step {step}"
                elif on_eval is not None:
                    on_eval(step, metrics)
    except RunPruned as e:
        status, error = "pruned", f"pruned at step {step}" + (f": {e}" if str(e) else "")
    except (NonFiniteGradientError, FloatingPointError) as e:
        status, error = "diverged", f"{type(e).__name__} at step {step + 1}: {e}"
    except Exception as e:  # recorded, so that the study goes on
        status = "failed"
        error = f"{type(e).__name__} at step {step + 1}: {e}"
        tb = traceback.format_exc(limit=4)
        error += " | " + " / ".join(line.strip() for line in tb.splitlines()[-4:])
    finally:
        if telemetry is not None:
            telemetry.close()

    if not evals["step"] or evals["step"][-1] != step:
        with contextlib.suppress(Exception):
            evaluate(step)
    final = {k: v[-1] for k, v in evals["metrics"].items()}
    peak, memory_kind = _peak_memory(device)
    telemetry_summary = None
    if telemetry is not None:
        with contextlib.suppress(Exception):
            telemetry_summary = plain(telemetry.summary())
    return {
        "key": config.key(),
        "config": config.to_dict(),
        "status": status,
        "error": error,
        "task_info": {"name": info.name, "kind": info.kind, "description": info.description,
                      "target": info.target, "target_metric": info.target_metric,
                      "n_train": int(task.n_train), "options": plain(info.options)},
        "curve": curve,
        "evals": evals,
        "final": final,
        "steps_to_target": steps_to_target,
        "time_to_target": time_to_target,
        "generalization_gap": _gap(final),
        "steps_done": step,
        "train_seconds": train_time,
        "wall_seconds": time.perf_counter() - wall0,
        "peak_memory_bytes": peak,
        "memory_kind": memory_kind,
        "state_bytes": state_bytes(optimizer),
        "n_params": int(n_params),
        "param_bytes": int(sum(p.numel() * p.element_size() for p in params)),
        "trajectory": trajectory,
        "lr": lr_curve,
        "telemetry": telemetry_summary,
        "extra": {"closure_evals": closure_evals},
    }
