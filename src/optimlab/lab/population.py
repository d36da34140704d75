"""Population runs: P runs that differ only in seed, trained as one batched program.

A study arm's seeds share everything but the seed: task and options, optimizer and
hyperparameters, schedule, batch size, budget and clipping (:func:`group_key`). Run one at a
time, a small model's step is mostly per-operation overhead; :func:`execute_population` trains
them together instead and returns the same records :func:`optimlab.lab.runs.execute` would.

**How.** Each member's task is built and set up with its own seed exactly as ``execute`` does
(``torch.manual_seed(seed)``, ``task.setup(seed, device)``) and draws its own batches from its
own ``torch.Generator().manual_seed(seed)``. The members' parameters are stacked along a leading
population axis: parameter ``j`` of the population is ``S_j`` of shape ``(P, *shape_j)``, and
member ``i``'s model parameter ``j`` is re-pointed at the slice ``S_j[i]`` (it shares its
memory), so the member's own task evaluates, measures and plots the member's current
parameters with its own code. A step computes every member's loss and gradients at once,
``vmap(grad(loss_i))`` over the stacked parameters and the stacked batches, where ``loss_i`` is
the task's own ``loss`` called through ``torch.func.functional_call``; then one optimizer step
updates all the stacked tensors. That step is each member's own step because the optimizer's
rules are elementwise (each rule declares it: ``Transform.elementwise``) and its
hyperparameters are the same for every member. What is not elementwise is done per member:
the gradient norm that is measured, the global-norm clipping
``g_i <- g_i * min(1, c / (||g_i|| + 1e-6))`` with ``||g_i||`` the L2 norm of member ``i``'s
gradients over all tensors (``torch.nn.utils.clip_grad_norm_``'s formula), and
the non-finite gradient check.

**Members stop alone.** Every member runs the sequential run's own bookkeeping
(:class:`optimlab.lab.runs._Run`: evaluation grid, divergence rule, series, record). A member
that diverges, or whose gradient is not finite (recorded as the sequential run's
``NonFiniteGradientError``, with the same message), has its record written at that moment;
from then on its gradients are set to zero before every step, so the optimizer's non-finite
check never refuses the population's step for it, and the elementwise rules keep whatever its
slice holds inside its slice.

**Equality.** Batched matrix products may sum in another order than the sequential run's, so
records agree to rounding, not bit for bit (``tests/test_population.py`` states the
tolerances).

**Time.** A member's time fields (``train_seconds``, ``warmup_seconds``,
``seconds_per_step``, ``time_to_target``, the curves' ``time``) are the population's: one
step of the member is one step of the whole population, and its evaluations are excluded as in
a sequential run. ``wall_seconds`` is the population's wall time up to the member's record.
The cost of one member is about these times divided by ``P``, recorded as the scalar
``population_size``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import schedules
from ..chain import ChainOptimizer, NonFiniteGradientError
from .optimizers import build_optimizer, lookup
from .runs import _Run, describe_error, failed_record, run_hyperparams, setup_task
from .schema import RunConfig, RunRecord
from .tasks import Task, make_task

__all__ = ["batchable", "execute_population", "group_key"]

def group_key(config: RunConfig) -> Hashable:
    """Configs with equal keys may train as one population: everything that defines the run
    except the seed (task and options, optimizer and hyperparameters, schedule, batch size,
    budget, clipping, ...): the canonical JSON of the config's key fields without the seed."""
    fields = config.key_fields()
    fields.pop("seed", None)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def batchable(config: RunConfig) -> str | None:
    """None when the run can train in a population; else the reason it cannot (a short
    sentence, stored as the note of a sequential fallback): a torch.optim class (or any
    optimizer not built from rules), a rule that is not elementwise (e.g. global-norm clipping
    inside the optimizer), a task that does not support populations (dropout, batch norm, the
    GPU presets: :meth:`~optimlab.lab.tasks.Task.population_obstacle`), telemetry (it hooks one
    model) or a wall-clock budget (each run would stop at its own machine-dependent step)."""
    if config.telemetry:
        return "telemetry hooks one model and optimizer; population members are not hooked"
    if config.seconds is not None:
        return "a wall-clock budget stops each run at its own, machine-dependent step"
    try:
        cls = lookup(config.optimizer).cls
    except ValueError as e:
        return f"the optimizer cannot be looked up: {e}"
    if not issubclass(cls, ChainOptimizer):
        return (f"optimizer {config.optimizer!r} ({cls.__module__}.{cls.__name__}) is not "
                "built from optimlab rules, so its step cannot be applied to stacked tensors")
    try:
        probe = build_optimizer(config.optimizer, [nn.Parameter(torch.zeros(1))],
                                config.hyperparams)
    except (TypeError, ValueError) as e:
        return f"the optimizer cannot be built: {e}"
    for group in probe.param_groups:
        for rule in probe.transforms_for(group):
            if not rule.elementwise:
                return (f"optimizer {config.optimizer!r} uses rule {type(rule).__name__}, "
                        "which is not known to be elementwise (a per-tensor or global "
                        "statistic would mix the members)")
    try:
        task = make_task(config.task, **config.task_options)
    except Exception as e:  # the sequential run records it
        return f"the task cannot be built: {e}"
    return task.population_obstacle()


class _Member(_Run):
    """One member's bookkeeping: a sequential run's, over a slice of the stacked tensors."""

    def __init__(self, config: RunConfig, task: Task, optimizer: torch.optim.Optimizer,
                 device: torch.device, lr_scale: float, size: int) -> None:
        super().__init__(config, task, optimizer, device, None, lr_scale)
        self.size = size
        self.record: RunRecord | None = None

    def state_bytes(self) -> int:
        """The member's share of the stacked state: a tensor with the population axis counts
        ``1/P`` of its bytes; a scalar (a step count) counts whole."""
        total = 0
        for st in self.optimizer.state.values():
            for v in st.values():
                if isinstance(v, Tensor):
                    n = v.numel() // self.size if v.dim() and v.shape[0] == self.size \
                        else v.numel()
                    total += n * v.element_size()
        return total

    def close(self) -> None:
        """Write the record now (the slice may change afterwards)."""
        self.scalars["population_size"] = float(self.size)
        self.record = self.finish()


class _LossOf(nn.Module):
    """``task.loss`` as a module whose parameters are the task model's (``model.<name>``), so
    that ``functional_call`` can substitute one member's parameters."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.model = task.model
        self._loss = task.loss

    def forward(self, batch: Any) -> Tensor:
        return self._loss(batch)


def _stack_batches(batches: list[Any]) -> tuple[Any, Any]:
    """The members' batches stacked along a new leading axis, and vmap's ``in_dims`` for them
    (``None`` for a batch that is ``None``: the 2-D functions without noise)."""
    first = batches[0]
    if first is None:
        return None, None
    if isinstance(first, (tuple, list)):
        return tuple(torch.stack(parts) for parts in zip(*batches, strict=True)), 0
    return torch.stack(batches), 0


def _per_member_norms(grads: list[Tensor], size: int) -> Tensor:
    """``||g_i||``: the L2 norm of member ``i``'s gradients over all tensors, shape ``(P,)``
    (per tensor, then over tensors, as ``torch.nn.utils.get_total_norm``)."""
    per_tensor = [torch.linalg.vector_norm(g.reshape(size, -1), dim=1) for g in grads]
    return torch.linalg.vector_norm(torch.stack(per_tensor, dim=1), dim=1)


def _broadcastable(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def execute_population(configs: Sequence[RunConfig], *, device: str | torch.device = "cpu",
                       threads: int | None = None) -> list[RunRecord]:
    """Train ``configs`` (same :func:`group_key`, distinct seeds, all :func:`batchable`) as one
    population; one record per config, in order, each equal to ``runs.execute(config)``'s
    record apart from wall-clock fields (to rounding: see the module docstring) and the scalar
    ``population_size`` (P).

    A member whose task cannot be built or set up gets ``execute``'s failed record and the
    others train without it; an error in the population's step fails every member still
    training, as it would have failed each sequential run.

    Args:
        configs: the members (resolved here if they are not yet).
        device: where to run.
        threads: ``torch.set_num_threads`` during the run (restored afterwards).

    Raises:
        ValueError: no configs, configs of different groups, repeated seeds, a config that is
            not batchable (the reason), or one that cannot be resolved.
    """
    configs = [c.resolved() for c in configs]
    if not configs:
        raise ValueError("a population needs at least one config")
    keys = {group_key(c) for c in configs}
    if len(keys) > 1:
        raise ValueError("a population's configs must differ only in seed (group_key)")
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a population's seeds must be distinct, got {seeds}")
    reason = batchable(configs[0])
    if reason is not None:
        raise ValueError(f"not batchable: {reason}")
    device = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _Population(configs, device).run()
    finally:
        torch.set_num_threads(old_threads)


class _Population:
    """The members, their stacked parameters, the one optimizer and the batched step."""

    def __init__(self, configs: list[RunConfig], device: torch.device) -> None:
        self.configs, self.device = configs, device
        self.records: list[RunRecord | None] = [None] * len(configs)

    def run(self) -> list[RunRecord]:
        wall0 = time.perf_counter()
        tasks: list[tuple[int, Task]] = []
        for i, config in enumerate(self.configs):
            task: Task | None = None
            stage = "building the task"
            try:
                task = make_task(config.task, **config.task_options)
                stage = "task setup"
                setup_task(task, config, self.device)
                tasks.append((i, task))
            except (Exception, SystemExit) as e:  # recorded, as execute does
                self.records[i] = failed_record(config, describe_error(e, stage), task=task,
                                                wall_seconds=time.perf_counter() - wall0)
        if tasks:
            self._train(tasks, wall0)
        assert all(r is not None for r in self.records)
        return [r for r in self.records if r is not None]

    def _train(self, tasks: list[tuple[int, Task]], wall0: float) -> None:
        size = len(tasks)
        first = tasks[0][1]
        stage = "building the optimizer"
        try:
            config, hyper, scale = run_hyperparams(self.configs[tasks[0][0]],
                                                   int(first.n_train))
            names = [n for n, p in first.model.named_parameters() if p.requires_grad]
            stacked = [torch.stack([t.parameters()[j].detach() for _, t in tasks])
                       .requires_grad_(True) for j in range(len(names))]
            for m, (_, task) in enumerate(tasks):
                for p, s in zip(task.parameters(), stacked, strict=True):
                    p.data = s.detach()[m]  # the member's parameter is its slice
            optimizer = build_optimizer(config.optimizer, stacked, hyper)
            members = []
            for i, task in tasks:
                member_config, _, _ = run_hyperparams(self.configs[i], int(task.n_train))
                members.append(_Member(member_config, task, optimizer, self.device, scale,
                                       size))
            stage = "training"
            for m in members:
                m.begin(scheduled=False)
                m.wall0 = wall0
        except (Exception, SystemExit) as e:
            for i, task in tasks:
                self.records[i] = failed_record(self.configs[i], describe_error(e, stage),
                                                task=task,
                                                wall_seconds=time.perf_counter() - wall0)
            return
        scheduler = schedules.ScheduledLR(optimizer, members[0].schedule())
        grad_fn = torch.func.grad_and_value(self._member_loss(first, names))
        self._loop(members, stacked, optimizer, scheduler, grad_fn)
        for (i, _), m in zip(tasks, members, strict=True):
            if m.record is None:
                m.close()
            self.records[i] = m.record

    @staticmethod
    def _member_loss(task: Task, names: list[str]) -> Any:
        module = _LossOf(task)

        def loss(params: tuple[Tensor, ...], batch: Any) -> Tensor:
            return torch.func.functional_call(
                module, {f"model.{n}": p for n, p in zip(names, params, strict=True)},
                (batch,))

        return loss

    def _loop(self, members: list[_Member], stacked: list[Tensor],
              optimizer: torch.optim.Optimizer, scheduler: schedules.ScheduledLR,
              grad_fn: Any) -> None:
        size, device = len(members), self.device
        config = members[0].config
        dead = torch.zeros(size, dtype=torch.bool, device=device)
        for k, m in enumerate(members):
            if not m.active():
                m.close()
                dead[k] = True
        while True:
            live = [k for k, m in enumerate(members) if m.record is None]
            if not live:
                return
            try:
                measured = [k for k in live if members[k].prepare_step()]
                t0 = time.perf_counter()
                drawn = {k: members[k].draw() for k in live}
                filler = drawn[live[0]]  # a stopped member computes on someone's batch
                batch, batch_dims = _stack_batches([drawn.get(k, filler)
                                                    for k in range(size)])
                grads, losses = torch.vmap(grad_fn, in_dims=(0, batch_dims))(tuple(stacked),
                                                                              batch)
                for s, g in zip(stacked, grads, strict=True):
                    s.grad = g
                for k in live:
                    members[k].closure_evals += 1
                grads = list(grads)
                if measured:
                    norms = _per_member_norms(grads, size).tolist()
                    for k in measured:
                        members[k].grad_norm = norms[k]
                if config.clip_value is not None:
                    torch._foreach_clamp_min_(grads, -config.clip_value)
                    torch._foreach_clamp_max_(grads, config.clip_value)
                if config.clip_norm is not None:
                    total = _per_member_norms(grads, size)
                    coef = torch.clamp(config.clip_norm / (total + 1e-6), max=1.0)
                    for g in grads:
                        g.mul_(_broadcastable(coef, g))
                finite = torch.stack([torch.isfinite(g).reshape(size, -1).all(dim=1)
                                      for g in grads]).all(dim=0).tolist()
                for k in live:
                    if not finite[k]:
                        self._refuse(members[k], [g[k] for g in grads])
                        dead[k] = True
                if bool(dead.any()):
                    for g in grads:
                        g[dead] = 0
                optimizer.step()
                scheduler.step()
                values = losses.tolist()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
            except (Exception, SystemExit) as e:  # every member still training fails
                for k in live:
                    if members[k].record is None:
                        members[k].stop(e)
                        members[k].close()
                continue
            for k in live:
                m = members[k]
                if m.record is not None:
                    continue
                try:
                    m.complete_step(values[k], dt)
                except (Exception, SystemExit) as e:
                    m.stop(e)
                if not m.active():
                    m.close()
                    dead[k] = True

    @staticmethod
    def _refuse(member: _Member, grads: list[Tensor]) -> None:
        """The member's gradient is not finite: it stops as its sequential run would, with
        the optimizer's refusal (its message names the member's own parameter)."""
        from .._transaction import nonfinite_message

        saved = [p.grad for p in member.params]
        for p, g in zip(member.params, grads, strict=True):
            p.grad = g
        try:
            message = nonfinite_message([{"params": member.params}])
        finally:
            for p, g in zip(member.params, saved, strict=True):
                p.grad = g
        member.stop(NonFiniteGradientError(message))
        member.close()
