"""Runs: one task trained by one optimizer configuration for one seed, measured.

A :class:`RunConfig` says what to run; :func:`execute` runs it and returns a
:class:`~optimlab.lab.schema.RunRecord` (fields documented there) that the results store keeps
and the report reads. A run never raises for what the task or the optimizer does: a diverging
loss ends it with status ``"diverged"``; any exception while the task is built or set up, the
optimizer built, or the task trained or evaluated ends it with status ``"failed"`` and the
error (its type, message and last frames: :func:`describe_error`), so a study always
completes. A run that could not even start, or whose worker process died, gets the same kind of
record from :func:`failed_record`.

Every optimizer step goes through ``optimizer.step(closure)``: the closure computes the loss of
the current mini-batch and its gradients (then clips them when the config says so: element
values to ``clip_value`` first, then the global L2 norm to ``clip_norm``), so closure-driven
optimizers (L-BFGS, line searches, SAM's two passes) run unchanged, and the work is recorded in
gradient evaluations: one per closure call, and for the second-order methods (whose closure
returns the loss only, and which compute Hessian-vector products) what
:mod:`optimlab.lab.work` charges. Gradient clipping is refused for the line-search methods.

**Divergence rule.** With ``L0 = max(|initial training loss|, 1)``, a run diverges when the
mini-batch training loss is not finite, or exceeds ``DIVERGENCE_FACTOR * L0`` (1000x) at any
step (or at an evaluation), or exceeds ``SUSTAINED_FACTOR * L0`` (10x) at
``max(SUSTAINED_MIN_STEPS, steps // 100)`` consecutive steps; or when the optimizer refuses a
non-finite gradient.

**Evaluation grid** (:class:`EvalGrid`). With ``eval_every`` given, exactly every
``eval_every`` steps. Otherwise every step on 2-D tasks; elsewhere every ``k = max(1, steps //
EVALS_PER_RUN)`` steps (50 evaluations), and every ``max(1, k // 10)`` steps while the target
metric is within 10x of its target *and*, at its current rate of change, within two coarse
intervals of crossing it (at most ``MAX_FINE_EVALS`` such evaluations per run). Step 0 and the
last step are always evaluated. The record keeps every evaluated step, so the resolution of the
settled step (``target_resolution``) is known.

**Time.** Training seconds exclude evaluations. The first ``WARMUP_STEPS`` steps (allocator,
kernel selection and cache warm-up) are reported as ``warmup_seconds``; ``seconds_per_step`` is
the median of the later steps and ``time_to_target`` counts the warm-up steps at that median.

**Series** (at evaluation steps, from one parameter snapshot before that step): update norm,
parameter norm, gradient norm (before clipping, at the step's starting point; NaN for the
optimizers whose closure returns only the loss), effective step size (update norm / gradient
norm) and the loss noise since the previous evaluation (see :data:`SERIES`).
"""

from __future__ import annotations

import contextlib
import math
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import schedules
from ..chain import NonFiniteGradientError
from ..optimizers import Evaluations
from ..sam import SAM
from ..telemetry import Telemetry
from . import distributed
from .optimizers import build_optimizer, plain
from .pool import WorkerDied
from .schema import (
    LR_SCALING,
    RunConfig,
    RunRecord,
    Settled,
    TaskFacts,
    parse_batch_size,
    settle,
)
from .schema import steady_time as _steady_time
from .tasks import Task, make_task
from .work import HVP_COST, Memo, clipping_refusal, counts_evaluations, loss_only, replayable

__all__ = ["DIVERGENCE_FACTOR", "ERROR_FRAMES", "MAX_EVALS_KEPT", "MAX_FINE_EVALS", "MAX_POINTS",
           "SCHEDULES", "SERIES", "SUSTAINED_FACTOR", "SUSTAINED_MIN_STEPS", "WARMUP_STEPS",
           "EvalGrid", "RunConfig", "RunPruned", "budget_steps", "describe_error",
           "examples_per_step", "execute", "failed_record", "loss_noise", "lr_scale",
           "make_schedule", "parse_batch_size", "run_hyperparams", "setup_task"]

#: A loss above ``DIVERGENCE_FACTOR * max(|initial loss|, 1)`` at any step is divergence.
DIVERGENCE_FACTOR = 1e3
#: A loss above ``SUSTAINED_FACTOR * max(|initial loss|, 1)`` at ``max(SUSTAINED_MIN_STEPS,
#: steps // 100)`` consecutive steps is divergence too.
SUSTAINED_FACTOR = 10.0
SUSTAINED_MIN_STEPS = 5
#: At most this many points of the training-loss curve are kept (2-D trajectories: 2000).
MAX_POINTS = 400
#: At most about this many evaluations (and series points) are kept in a record: every k-th,
#: plus step 0, the last step and the evaluations that fix ``first_crossing``,
#: ``steps_to_target`` and ``target_resolution`` (a 2-D run evaluated at each of 5000 steps
#: would otherwise store 1.4 MB).
MAX_EVALS_KEPT = 500
#: Steps whose time is warm-up, excluded from ``seconds_per_step`` and ``time_to_target``.
WARMUP_STEPS = 5
#: The default grid's coarse evaluations per run (non-2-D tasks). An evaluation of a neural
#: task costs 5-35 training steps (mnist1d-cnn: 35; gru-charlm: 7), so 100 evaluations made a
#: default mnist1d-cnn run 65% slower than 25 did; 50, with the fine grid near the target,
#: resolves the settled step to 2% of the budget far from it and 0.2% near it.
EVALS_PER_RUN = 50
#: The fine grid near the target is this many times finer than the coarse one.
FINE_FACTOR = 10
#: At most this many fine evaluations per run (bounds the cost of the adaptive grid).
MAX_FINE_EVALS = 50
#: "Near the target": within this factor of it (positive targets only).
NEAR_RATIO = 10.0
#: ... and within this many coarse intervals of crossing it at the current rate.
NEAR_INTERVALS = 2
#: The series recorded at evaluation steps.
SERIES = ("update_norm", "param_norm", "grad_norm", "effective_lr", "loss_noise")
#: A failed run's error names this many of the innermost frames of its traceback.
ERROR_FRAMES = 3


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


@contextlib.contextmanager
def evaluation_weights(optimizer: torch.optim.Optimizer) -> Any:
    """The parameters an evaluation should see, for the duration of the ``with`` block.

    Optimizers whose training iterate is not the point to evaluate (Schedule-Free: the
    gradient is taken at ``y``, the averaged ``x`` is the model) expose ``eval()`` and
    ``train()`` that swap the parameters; they are called around the block. Other optimizers
    (torch.optim's have neither method) change nothing.
    """
    switch = callable(getattr(optimizer, "eval", None)) and callable(
        getattr(optimizer, "train", None))
    if switch:
        optimizer.eval()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if switch:
            optimizer.train()  # type: ignore[attr-defined]


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


class EvalGrid:
    """Which steps a run evaluates (see the module docstring).

    Args:
        steps: the step budget (always evaluated last).
        kind: the task's kind (``"2d"``: every step).
        target: the target of the task's target metric.
        eval_every: a fixed interval (``None``: the default, adaptive grid).
    """

    def __init__(self, steps: int, kind: str, target: float,
                 eval_every: int | None = None) -> None:
        self.steps = steps
        self.target = target
        self.fixed = eval_every if eval_every is not None else (1 if kind == "2d" else None)
        self.coarse = max(1, steps // EVALS_PER_RUN)
        self.fine = max(1, self.coarse // FINE_FACTOR)
        self.fine_left = MAX_FINE_EVALS
        self._last: tuple[int, float] | None = None

    def next_after(self, step: int, value: float) -> int:
        """The next step to evaluate, after an evaluation at ``step`` that gave ``value`` of
        the target metric."""
        if self.fixed is not None:
            nxt = (step // self.fixed + 1) * self.fixed
        else:
            interval = self.coarse
            if self.fine < self.coarse and self.fine_left > 0 and self._near(step, value):
                interval = self.fine
                self.fine_left -= 1
            nxt = step + interval
        self._last = (step, value)
        return min(nxt, self.steps)

    def _near(self, step: int, value: float) -> bool:
        t = self.target
        if self._last is None or not (t > 0 and math.isfinite(value)):
            return False
        if not t / NEAR_RATIO <= value <= t * NEAR_RATIO:
            return False
        prev_step, prev = self._last
        if not math.isfinite(prev) or step <= prev_step:
            return False
        rate = abs(value - prev) / (step - prev_step)
        return abs(value - t) <= NEAR_INTERVALS * self.coarse * rate


def examples_per_step(batch_size: int | str, n_train: int) -> int:
    """Nominal training examples per step: the batch size, at most ``n_train`` (full batch:
    ``n_train``). Budgets in examples or epochs and lr scaling use it."""
    return n_train if batch_size == "full" else min(int(batch_size), n_train)


def full_batch(batch_size: int | str, n_train: int) -> bool:
    """Whether every step sees the whole training set (``"full"`` or a batch >= ``n_train``)."""
    return examples_per_step(batch_size, n_train) >= n_train


def budget_steps(config: RunConfig, n_train: int) -> int:
    """The step budget of ``config`` on a training set of ``n_train`` examples:
    ``ceil(examples / e)`` or ``ceil(epochs * n_train / e)`` with ``e`` =
    :func:`examples_per_step`, else ``config.steps`` (which must then be resolved)."""
    per_step = examples_per_step(config.batch_size, n_train)
    if config.examples is not None:
        return max(1, math.ceil(config.examples / per_step))
    if config.epochs is not None:
        # round() first: 1.1 * 100 / 10 is 11.000000000000002 in floats; ceil would say 12
        return max(1, math.ceil(round(config.epochs * n_train / per_step, 9)))
    if config.steps is None:
        raise ValueError("the config has no step budget; resolve it first")
    return int(config.steps)


def lr_scale(config: RunConfig, n_train: int) -> float:
    """The factor ``(e / base_batch_size) ** p`` of ``config.lr_scaling`` (``e`` =
    :func:`examples_per_step`; ``p`` = 0, 1 or 1/2 for none, linear, sqrt)."""
    p = LR_SCALING[config.lr_scaling]
    return (examples_per_step(config.batch_size, n_train) / config.base_batch_size) ** p


def execute(config: RunConfig, *, device: str | torch.device = "cpu",
            threads: int | None = None,
            on_eval: Callable[[int, dict[str, float]], None] | None = None) -> RunRecord:
    """Run ``config`` and return its :class:`~optimlab.lab.schema.RunRecord`.

    The record's config is resolved: every hyperparameter explicit, and the step budget
    derived from a budget in examples or epochs (:func:`budget_steps`). With ``lr_scaling``,
    the optimizer runs at ``lr * lr_scale(config, n_train)`` (recorded in the ``lr`` curve and
    as the scalar ``lr_scale``); the config keeps the given lr.

    Args:
        config: what to run (resolved here if it is not yet).
        device: where to run.
        threads: ``torch.set_num_threads`` during the run (restored afterwards); the number of
            threads changes floating-point reduction order, so keep it fixed for determinism.
        on_eval: called as ``on_eval(step, metrics)`` after every evaluation after step 0
            (e.g. to report intermediate values to a tuner); raising :class:`RunPruned` ends
            the run with status ``"pruned"``.

    Raises:
        ValueError: the config cannot be resolved (unknown task, optimizer, option or
            hyperparameter name). Everything after that, from building the task to the last
            evaluation, is recorded instead: status ``"failed"`` with the error, or
            ``"diverged"``.
    """
    return execute_with_task(config, device=device, threads=threads, on_eval=on_eval)[0]


def execute_with_task(config: RunConfig, *, device: str | torch.device = "cpu",
                      threads: int | None = None,
                      on_eval: Callable[[int, dict[str, float]], None] | None = None
                      ) -> tuple[RunRecord, Task | None]:
    """:func:`execute`, also returning the task with the run's final parameters (``None`` when
    the task could not be built), for measurements on the trained model (e.g.
    :mod:`optimlab.lab.landscapes`)."""
    config = config.resolved()
    distributed.announce(config)  # torchrun: the other processes run it too
    device = distributed.run_device(torch.device(device))
    wall0 = time.perf_counter()
    task: Task | None = None
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        stage = "building the task"
        task = make_task(config.task, **config.task_options)
        stage = "task setup"
        setup_task(task, config, device)
        distributed.prepare(task, config)  # torchrun: DDP
        stage = "building the optimizer"
        config, hyper, scale = run_hyperparams(config, int(task.n_train))
        optimizer = build_optimizer(config.optimizer, task.parameters(), hyper)
        if isinstance(optimizer, SAM) and optimizer.model is None:
            # its second evaluation leaves batch-norm running statistics alone
            optimizer.model = getattr(task, "model", None)
        refusal = clipping_refusal(optimizer, config.optimizer)
        if refusal and (config.clip_norm is not None or config.clip_value is not None):
            raise ValueError(refusal)
        stage = "training"
        return _Run(config, task, optimizer, device, on_eval, scale).train(), task
    except (Exception, SystemExit) as e:  # recorded, so that the study goes on
        return failed_record(config, describe_error(e, stage), task=task,
                             wall_seconds=time.perf_counter() - wall0), task
    finally:
        torch.set_num_threads(old_threads)


def setup_task(task: Task, config: RunConfig, device: torch.device) -> None:
    """Set ``task`` up for ``config``'s seed as a run does: ``torch.manual_seed(seed)``, then
    ``task.setup(seed, device)``."""
    torch.manual_seed(config.seed)
    task.setup(config.seed, device)


def run_hyperparams(config: RunConfig, n_train: int
                    ) -> tuple[RunConfig, dict[str, Any], float]:
    """What a run of resolved ``config`` on ``n_train`` training examples trains with: the
    config with its step budget derived (:func:`budget_steps`), the optimizer's
    hyperparameters (``lr`` times :func:`lr_scale` with ``lr_scaling``) and that scale."""
    config = replace(config, steps=budget_steps(config, n_train))
    hyper = dict(config.hyperparams)
    scale = lr_scale(config, n_train)
    if config.lr_scaling != "none":
        if not isinstance(hyper.get("lr"), (int, float)):
            raise ValueError(f"lr_scaling {config.lr_scaling!r} needs an optimizer with a "
                             f"numeric lr; {config.optimizer!r} has none")
        hyper["lr"] = hyper["lr"] * scale
    return config, hyper, scale


def describe_error(error: BaseException, where: str = "") -> str:
    """``error`` in one line: ``"where: Type: message | file.py:12 in f / ..."``, with the
    :data:`ERROR_FRAMES` innermost frames of its traceback (those of the worker, for an error
    raised in a worker process)."""
    message = " ".join(str(error).split())
    text = f"{where + ': ' if where else ''}{type(error).__name__}" + (
        f": {message}" if message else "")
    frames = traceback.extract_tb(error.__traceback__)[-ERROR_FRAMES:]
    if frames:
        text += " | " + " / ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}"
                                   for f in frames)
    return text


def _facts(config: RunConfig, task: Task | None) -> TaskFacts:
    """What a failed run's record says of its task: the task's own facts when it was built
    (``n_train`` as far as it is known), else its name and placeholders (kind
    ``"unknown"``, target NaN)."""
    if task is not None:
        with contextlib.suppress(Exception):
            info = task.info
            return TaskFacts(name=info.name, kind=info.kind, description=info.description,
                             target=float(info.target), target_metric=info.target_metric,
                             n_train=int(getattr(task, "n_train", 0) or 0),
                             options=plain(info.options))
    return TaskFacts(name=config.task, kind="unknown",
                     description="the task could not be built or described", target=math.nan,
                     target_metric="train_loss", n_train=0,
                     options=plain(dict(config.task_options)))


def failed_record(config: RunConfig, error: BaseException | str, *, task: Task | None = None,
                  wall_seconds: float = 0.0) -> RunRecord:
    """The record of a run that failed before it trained (its task could not be built or set
    up, its optimizer not built, its worker process died): status ``"failed"``, ``error``
    (an exception is described by :func:`describe_error`; a
    :class:`~optimlab.lab.pool.WorkerDied` by its message, "worker process died twice: signal
    9 (SIGKILL)"), no steps and no evaluations.

    ``config`` should be the resolved config the run was planned with, so that the record has
    the run's key. ``task``, when it was built, gives the record the task's facts; without it
    the facts are placeholders (the task is not built here: building it may be what failed).
    """
    if isinstance(error, str):
        text = error
    elif isinstance(error, WorkerDied):  # says it all; its traceback is the parent's
        text = str(error)
    else:
        text = describe_error(error)
    return RunRecord(
        key=config.key(), config=config, status="failed", error=text,
        task_info=_facts(config, task),
        curve={"step": [], "time": [], "train_loss": []},
        evals={"step": [], "time": [], "grad_evals": [], "examples": [], "metrics": {}},
        final={}, steps_to_target=None, target_resolution=None, first_crossing=None,
        grad_evals_to_target=None, examples_to_target=None, time_to_target=None,
        reached=False, generalization_gap=None, steps_done=0, grad_evals=0, examples=0,
        train_seconds=0.0, warmup_seconds=0.0, seconds_per_step=None,
        wall_seconds=float(wall_seconds), peak_memory_bytes=None, memory_kind="not measured",
        state_bytes=0, n_params=0, param_bytes=0, trajectory=None,
        lr={"step": [], "value": []}, series={}, scalars={"closure_evals": 0.0},
        telemetry=None)


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    """All parameters as one vector (float64 for float64 parameters, else float32)."""
    return torch.cat([p.detach().reshape(-1).to(torch.float64 if p.dtype == torch.float64
                                                 else torch.float32) for p in params])


def _total_norm(params: list[torch.Tensor]) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return math.nan
    return float(torch.nn.utils.get_total_norm(grads))


def loss_noise(losses: list[float]) -> float:
    """The standard deviation of ``losses`` (consecutive mini-batch losses) about their
    least-squares linear trend, so that the loss's own decrease over the interval is not
    counted as noise; NaN for fewer than 3 values or non-finite ones."""
    n = len(losses)
    if n < 3 or not all(math.isfinite(v) for v in losses):
        return math.nan
    xm, ym = (n - 1) / 2, math.fsum(losses) / n
    sxx = math.fsum((i - xm) ** 2 for i in range(n))
    slope = math.fsum((i - xm) * (v - ym) for i, v in enumerate(losses)) / sxx
    sse = math.fsum((v - ym - slope * (i - xm)) ** 2 for i, v in enumerate(losses))
    return math.sqrt(sse / (n - 2))


def _thin_evals(evals: dict[str, Any], series: dict[str, dict[str, list[float]]],
                s: Settled) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """``evals`` and ``series`` cut to about :data:`MAX_EVALS_KEPT` evaluations, keeping
    those that fix the time-to-target fields."""
    n = len(evals["step"])
    if n <= MAX_EVALS_KEPT:
        return evals, series
    keep = set(range(0, n, math.ceil(n / MAX_EVALS_KEPT))) | {0, n - 1}
    if s.index is not None:
        keep |= {s.index, max(s.index - 1, 0)}
    if s.first_crossing is not None:
        i = evals["step"].index(s.first_crossing)
        keep |= {i, max(i - 1, 0)}
    idx = sorted(keep)
    out: dict[str, Any] = {k: [evals[k][i] for i in idx]
                           for k in ("step", "time", "grad_evals", "examples")}
    out["metrics"] = {name: [v[i] for i in idx] for name, v in evals["metrics"].items()}
    steps = set(out["step"])
    thinned = {}
    for name, ser in series.items():
        pairs = [(st, v) for st, v in zip(ser["step"], ser["value"], strict=True) if st in steps]
        thinned[name] = {"step": [st for st, _ in pairs], "value": [v for _, v in pairs]}
    return out, thinned


class _Run:
    """The training loop of one run and what it measures.

    The loop is cut into the pieces a population of runs calls too
    (:mod:`optimlab.lab.population`): :meth:`begin` (everything before the first step: the
    schedule, the evaluation grid, the data stream, the step-0 evaluation and the divergence
    thresholds), :meth:`active`, :meth:`prepare_step` (the parameter snapshot of a measured
    step), :meth:`draw` (the next batch), :meth:`complete_step` (bookkeeping, the divergence
    rule and evaluations after a step), :meth:`stop` (an exception ends the run) and
    :meth:`finish` (the last evaluation and the record). :meth:`train` is the sequential loop.
    """

    def __init__(self, config: RunConfig, task: Task, optimizer: torch.optim.Optimizer,
                 device: torch.device,
                 on_eval: Callable[[int, dict[str, float]], None] | None,
                 lr_scale: float) -> None:
        self.config, self.task, self.optimizer, self.device = config, task, optimizer, device
        self.on_eval = on_eval
        self.lr_scale = lr_scale
        self.params = task.parameters()
        self.steps = int(config.steps)  # type: ignore[arg-type]  # derived by execute
        self.train_time = 0.0
        self.closure_evals = 0  # work, in gradient evaluations (optimlab.lab.work)
        self.counts = Evaluations()  # by kind, for optimizers that report their evaluations
        self.loss_only = loss_only(optimizer)
        self.reports_evaluations = counts_evaluations(optimizer)
        full = full_batch(config.batch_size, int(task.n_train))
        self.memo = (Memo(self.params) if self.reports_evaluations and not self.loss_only and full
                     and replayable(getattr(task, "model", None)) else None)
        self.n_examples = 0
        self.grad_norm: float | None = None
        self.evals: dict[str, Any] = {"step": [], "time": [], "grad_evals": [], "examples": [],
                                      "metrics": {}}

    def closure(self, batch: Any, measure: bool) -> torch.Tensor:
        """Loss and gradients of ``batch``; measures the gradient norm (first call of a
        measured step) and clips the gradients as configured. For an optimizer that
        differentiates the loss itself (:func:`~optimlab.lab.work.loss_only`), the loss only;
        on a deterministic full-batch run, the remembered evaluation when the parameters have
        not moved since (:class:`~optimlab.lab.work.Memo`)."""
        if self.loss_only:
            return self.task.loss(batch)  # charged after the step, from the optimizer's counts
        if self.memo is not None:
            remembered = self.memo.lookup(batch)
            if remembered is not None:
                if measure and self.grad_norm is None:  # the step's starting point
                    self.grad_norm = _total_norm(self.params)
                return remembered
        self.closure_evals += 1
        if self.reports_evaluations:
            self.counts += Evaluations(function=1, gradient=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss = distributed.shard_loss(self.task, batch)  # torchrun: this process's share
        loss.backward()
        loss = distributed.global_loss(loss)
        if measure and self.grad_norm is None:
            self.grad_norm = _total_norm(self.params)
        if self.config.clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, self.config.clip_value)
        if self.config.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        if self.memo is not None:
            self.memo.store(batch, loss)
        return loss

    def charge(self) -> None:
        """After a step of a loss-only closure optimizer: its evaluations, charged as
        :mod:`optimlab.lab.work` states."""
        if self.loss_only and self.reports_evaluations:
            ev = self.optimizer.step_evaluations  # type: ignore[attr-defined]
            self.counts += ev
            self.closure_evals += ev.function + HVP_COST * ev.hvp

    def metrics(self) -> dict[str, float]:
        """The task's metrics of the current parameters (with the optimizer's evaluation
        weights, where it has them)."""
        with evaluation_weights(self.optimizer):
            return {k: float(v) for k, v in self.task.evaluate().items()}

    def evaluate(self, at: int) -> dict[str, float]:
        """The metrics at step ``at``, appended to the evaluation series."""
        metrics = self.metrics()
        ev = self.evals
        ev["step"].append(at)
        ev["time"].append(self.train_time)
        ev["grad_evals"].append(self.closure_evals)
        ev["examples"].append(self.n_examples)
        n = len(ev["step"])
        for name, value in metrics.items():
            ev["metrics"].setdefault(name, [math.nan] * (n - 1)).append(value)
        for values in ev["metrics"].values():
            if len(values) < n:
                values.append(math.nan)
        return metrics

    def train(self) -> RunRecord:
        """The sequential loop: one ``optimizer.step(closure)`` per step."""
        self.begin()
        optimizer, device = self.optimizer, self.device
        try:
            while self.active():
                measure = self.prepare_step()
                t0 = time.perf_counter()
                batch = self.draw()
                try:
                    loss = optimizer.step(lambda b=batch, m=measure: self.closure(b, m))
                finally:
                    self.charge()  # a failed step did its work too
                self.scheduler.step()
                loss_value = (float(loss.detach()) if isinstance(loss, torch.Tensor)
                              else float(loss))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.complete_step(loss_value, time.perf_counter() - t0)
        except (Exception, SystemExit) as e:
            self.stop(e)
        finally:
            if self.telemetry is not None:
                self.telemetry.close()
        return self.finish()

    def begin(self, scheduled: bool = True) -> None:
        """Everything before the first step, ending with the step-0 evaluation. With
        ``scheduled=False`` the caller owns the learning-rate schedule (a population's one
        optimizer has one schedule for all its members)."""
        self.wall0 = time.perf_counter()
        config, task, optimizer, device = self.config, self.task, self.optimizer, self.device
        info, steps = task.info, self.steps
        if scheduled:
            self.scheduler = schedules.ScheduledLR(optimizer, self.schedule())
        self.grid = EvalGrid(steps, info.kind, info.target, config.eval_every)
        self.log_every = _thin(steps)
        batch_size = None if config.batch_size == "full" else int(config.batch_size)
        self.batches = task.batches(batch_size, torch.Generator().manual_seed(config.seed))
        self.telemetry = (Telemetry(optimizer, task.model, per_layer=False, keep_history=False)
                          if config.telemetry else None)

        self.curve: dict[str, list[float]] = {"step": [], "time": [], "train_loss": []}
        self.lr_curve: dict[str, list[float]] = {"step": [], "value": []}
        self.series: dict[str, dict[str, list[float]]] = {n: {"step": [], "value": []}
                                                          for n in SERIES}
        self.trajectory: list[list[float]] | None = [] if info.kind == "2d" else None
        self.traj_every = _thin(steps, 2000)
        self.step_times: list[float] = []
        self.losses: list[float] = []  # mini-batch losses since the last evaluation
        self.scalars: dict[str, float] = {}
        self.status: str = "ok"
        self.error: str | None = None
        self.step = 0
        self.before: torch.Tensor | None = None
        self.lr_now = math.nan

        _memory_before(device)
        initial = self.evaluate(0)
        ref = initial.get("train_loss", math.nan)
        scale = max(abs(ref), 1.0) if math.isfinite(ref) else math.inf
        self.explode = DIVERGENCE_FACTOR * scale
        self.sustained = SUSTAINED_FACTOR * scale
        self.window = max(SUSTAINED_MIN_STEPS, steps // 100)
        self.above = 0
        self.next_eval = self.grid.next_after(0, initial.get(info.target_metric, math.nan))
        self.watch_escape = task.escaped() is not None
        if self.watch_escape and task.escaped():
            self.scalars["escape_step"], self.watch_escape = 0, False
        if self.trajectory is not None:
            self.trajectory.append(self._point())
        if not math.isfinite(ref):
            self.status, self.error = "diverged", f"initial training loss is {ref}"

    def schedule(self) -> schedules.Schedule:
        """The run's learning-rate schedule from the optimizer's (first group's) lr."""
        base_lr = float(self.optimizer.param_groups[0].get("lr", 0.0))
        return make_schedule(self.config.schedule, base_lr, self.steps)

    def _point(self) -> list[float]:
        return [float(v) for v in torch.cat([p.detach().reshape(-1)
                                             for p in self.params])[:2]]

    def active(self) -> bool:
        """Whether the run takes another step."""
        if self.status != "ok" or self.step >= self.steps:
            return False
        return self.config.seconds is None or self.train_time < self.config.seconds

    def prepare_step(self) -> bool:
        """Before a step: whether it is measured (its series recorded), and if so the
        parameter snapshot; the learning rate the step uses."""
        measure = self.step + 1 == self.next_eval
        self.before = _flat(self.params) if measure else None
        self.grad_norm = None
        self.lr_now = float(self.optimizer.param_groups[0]["lr"])
        return measure

    def draw(self) -> Any:
        """The next training batch (counted in ``examples``)."""
        batch = next(self.batches)
        self.n_examples += self.task.batch_examples(batch)
        return batch

    def complete_step(self, loss_value: float, dt: float) -> None:
        """After a step that took ``dt`` seconds with mini-batch loss ``loss_value``: the
        curves, the divergence rule and the evaluation due at this step (which may raise
        :class:`RunPruned` from ``on_eval``)."""
        task, steps = self.task, self.steps
        self.train_time += dt
        self.step_times.append(dt)
        self.step += 1
        step = self.step
        self.losses.append(loss_value)
        if step % self.log_every == 0 or step == 1 or step == steps:
            self.curve["step"].append(step)
            self.curve["time"].append(self.train_time)
            self.curve["train_loss"].append(loss_value)
            self.lr_curve["step"].append(step - 1)
            self.lr_curve["value"].append(self.lr_now)
        if self.trajectory is not None and (step % self.traj_every == 0 or step == steps):
            self.trajectory.append(self._point())
        if self.watch_escape and task.escaped():
            self.scalars["escape_step"], self.watch_escape = step, False
        self.above = self.above + 1 if loss_value > self.sustained else 0
        if not math.isfinite(loss_value) or loss_value > self.explode:
            self.status = "diverged"
            self.error = (f"training loss {loss_value:.4g} at step {step} (divergence: "
                          f"non-finite or above {DIVERGENCE_FACTOR:g}x max(|initial|, 1))")
            return
        if self.above >= self.window:
            self.status = "diverged"
            self.error = (f"training loss above {SUSTAINED_FACTOR:g}x max(|initial|, 1) "
                          f"= {self.sustained:.4g} for {self.window} consecutive steps, up to "
                          f"step {step}")
            return
        if step == self.next_eval:
            metrics = self.evaluate(step)
            if self.before is not None:
                self._measure(self.series, step, self.before, self.losses)
            self.losses = []
            train_loss = metrics.get("train_loss", 0.0)
            if not math.isfinite(train_loss) or train_loss > self.explode:
                self.status = "diverged"
                self.error = f"training loss {train_loss:.4g} at step {step}"
            else:
                if self.on_eval is not None:
                    self.on_eval(step, metrics)
                self.next_eval = self.grid.next_after(
                    step, metrics.get(task.info.target_metric, math.nan))

    def stop(self, error: BaseException) -> None:
        """``error``, raised while the run stepped, ends it: pruned (:class:`RunPruned`),
        diverged (a refused non-finite gradient) or failed (anything else)."""
        step = self.step
        if isinstance(error, RunPruned):
            self.status = "pruned"
            self.error = f"pruned at step {step}" + (f": {error}" if str(error) else "")
        elif isinstance(error, (NonFiniteGradientError, FloatingPointError)):
            self.status = "diverged"
            self.error = f"{type(error).__name__} at step {step + 1}: {error}"
        else:
            self.status, self.error = "failed", describe_error(error, f"at step {step + 1}")

    def finish(self) -> RunRecord:
        """The record: the last step evaluated (if it was not), then everything measured."""
        if not self.evals["step"] or self.evals["step"][-1] != self.step:
            with contextlib.suppress(Exception):
                self.evaluate(self.step)
        if self.config.sharpness and self.status == "ok":
            from .curvature import measure_sharpness

            with evaluation_weights(self.optimizer):
                self.scalars.update(measure_sharpness(self.task, self.config.seed))
        return self._record(self.status, self.error, self.curve, self.lr_curve, self.series,
                            self.trajectory, self.step, self.step_times, self.scalars,
                            self.telemetry, self.wall0)

    def state_bytes(self) -> int:
        """Bytes of the run's optimizer state (recorded as ``state_bytes``)."""
        return state_bytes(self.optimizer)

    def _measure(self, series: dict[str, dict[str, list[float]]], step: int,
                 before: torch.Tensor, losses: list[float]) -> None:
        after = _flat(self.params)
        update = float((after - before).norm())
        grad = self.grad_norm if self.grad_norm is not None else math.nan
        values = {"update_norm": update, "param_norm": float(after.norm()),
                  "grad_norm": grad,
                  "effective_lr": update / grad if grad > 0 else math.nan,
                  "loss_noise": loss_noise(losses)}
        for name, value in values.items():
            series[name]["step"].append(step)
            series[name]["value"].append(value)

    def _record(self, status: str, error: str | None, curve: dict[str, list[float]],
                lr_curve: dict[str, list[float]], series: dict[str, dict[str, list[float]]],
                trajectory: list[list[float]] | None, step: int, step_times: list[float],
                scalars: dict[str, float], telemetry: Telemetry | None,
                wall0: float) -> RunRecord:
        config, task, info, evals = self.config, self.task, self.task.info, self.evals
        final = {k: v[-1] for k, v in evals["metrics"].items()}
        values = evals["metrics"].get(info.target_metric, [math.nan] * len(evals["step"]))
        s = settle(evals["step"], values, info.target, ok=status == "ok")
        if s.index is not None:
            settled_at = (evals["grad_evals"][s.index], evals["examples"][s.index],
                          evals["time"][s.index])
        evals, series = _thin_evals(evals, series, s)
        warmup = math.fsum(step_times[:WARMUP_STEPS])
        later = step_times[WARMUP_STEPS:]
        per_step = statistics.median(later) if later else None
        time_to_target = None
        if s.index is not None and s.step is not None:
            time_to_target = _steady_time(settled_at[2], s.step, WARMUP_STEPS, warmup,
                                          per_step)
        peak, memory_kind = _peak_memory(self.device)
        telemetry_summary = None
        if telemetry is not None:
            with contextlib.suppress(Exception):
                telemetry_summary = plain(telemetry.summary())
        n_train = int(task.n_train)
        full = full_batch(config.batch_size, n_train)
        scalars = {"closure_evals": float(self.closure_evals), **scalars}
        if self.reports_evaluations:
            scalars.update(function_evals=float(self.counts.function),
                           gradient_evals=float(self.counts.gradient),
                           hvp_evals=float(self.counts.hvp))
        if config.lr_scaling != "none":
            scalars["lr_scale"] = self.lr_scale
        return RunRecord(
            key=config.key(), config=config, status=status, error=error,
            task_info=TaskFacts(name=info.name, kind=info.kind, description=info.description,
                                target=float(info.target), target_metric=info.target_metric,
                                n_train=n_train, options=plain(info.options),
                                deterministic=bool(info.deterministic_with_full_batch and full)),
            curve=curve, evals=evals, final=final,
            steps_to_target=s.step, target_resolution=s.resolution,
            first_crossing=s.first_crossing,
            grad_evals_to_target=None if s.index is None else settled_at[0],
            examples_to_target=None if s.index is None else settled_at[1],
            time_to_target=time_to_target, reached=s.index is not None,
            generalization_gap=_gap(final), steps_done=step, grad_evals=self.closure_evals,
            examples=self.n_examples, train_seconds=self.train_time, warmup_seconds=warmup,
            seconds_per_step=per_step, wall_seconds=time.perf_counter() - wall0,
            peak_memory_bytes=peak, memory_kind=memory_kind,
            state_bytes=self.state_bytes(), n_params=sum(p.numel() for p in
                                                                  self.params),
            param_bytes=int(sum(p.numel() * p.element_size() for p in self.params)),
            trajectory=trajectory, lr=lr_curve,
            series={k: v for k, v in series.items() if v["step"]}, scalars=scalars,
            telemetry=telemetry_summary)
