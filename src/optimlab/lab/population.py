"""Population runs: P runs that differ only in seed and hyperparameter values, trained as one
batched program.

A study arm's seeds share everything but the seed, and the arms of a sweep over the optimizer's
hyperparameters everything but those values: task and options, optimizer, schedule, batch
size, budget, which clippings are on (:func:`group_key`). Run one at a time, a small model's
step is mostly per-operation overhead; :func:`execute_population` trains them together instead
and returns the same records :func:`optimlab.lab.runs.execute` would.

**How.** Each member's task is built and set up with its own seed exactly as ``execute`` does
(``torch.manual_seed(seed)``, ``task.setup(seed, device)``) and draws its own batches from its
own ``torch.Generator().manual_seed(seed)``. The members' parameters are stacked along a leading
population axis: parameter ``j`` of the population is ``S_j`` of shape ``(P, *shape_j)``, a
view of a flat buffer whose row ``i`` holds all of member ``i``'s parameters of one dtype
(:class:`~optimlab.lab.population_stack.Layout`), and member ``i``'s model parameter ``j`` is
re-pointed at the slice ``S_j[i]`` (it shares its memory), so the member's own task
evaluates, measures and plots the member's current parameters with its own code.

A step computes every member's loss and gradients at once. Where the task offers it
(:meth:`~optimlab.lab.tasks.Task.population_gradients`: plain MLPs and the convex tasks'
linear models, whose forward and backward it writes out as batched matrix products; for 16
mlp-digits members 0.27 ms per step against 1.9 ms through vmap, 2 threads), that function
does it; otherwise ``vmap(grad(loss_i))`` over the stacked parameters and the stacked
batches, where ``loss_i`` is the task's own ``loss`` called through
``torch.func.functional_call``. The MLPs' written-out gradients and vmap's were bit-identical
to the runs alone (measured on the CPU, one thread), the linear models' agree to rounding
(:func:`~optimlab.lab.tasks.stacked.linear_gradients`). (One backward pass of ``sum_i L_i``
through the vmapped forward summed in another order, and after 1000 steps its rounding had
grown to 1.3e-5 relative on a converged mini-batch loss, beyond the tolerance the records are
held to.) Then one optimizer step updates the flat buffers:
it is each member's own step because the optimizer's rules are elementwise (each rule
declares it: ``Transform.elementwise``), and over one tensor per dtype it costs less than
over one per parameter.

**Per-member hyperparameters.** Members may differ in the values of the optimizer's numeric
hyperparameters (learning rate, betas, momentum, weight decay, ...) and of the clipping
thresholds (:func:`group_key`). The members are ordered so that equal hyperparameters are
contiguous, rows ``a_j .. b_j`` of every buffer, and the optimizer gets one param group per
distinct set: group ``j`` holds the buffers' views ``B[a_j:b_j]`` (its steps write into the
buffers) with the group keys an optimizer built with that set has, so each group's
rules run with their own hyperparameters on their own members; each group has its own
learning-rate schedule. What is not elementwise is done per member, with per-member
thresholds (tensors with the population axis): the gradient norm that is measured, the
value clipping ``g_i <- clamp(g_i, -v_i, v_i)``, the global-norm clipping
``g_i <- g_i * min(1, c_i / (||g_i|| + 1e-6))`` with ``||g_i||`` the L2 norm of member
``i``'s gradients over all tensors (``torch.nn.utils.clip_grad_norm_``'s formula), and the
non-finite gradient check.

**Members stop alone.** Every member runs the sequential run's own bookkeeping
(:class:`optimlab.lab.runs._Run`: evaluation grid, divergence rule, series, record). A member
that diverges, or whose gradient is not finite under the optimizer's ``nonfinite="raise"``
(recorded as the sequential run's ``NonFiniteGradientError``, with the same message), has its
record written at that moment; before the next step the finished members leave the stack
(``population_stack.Stack.compact``: the rows of the members still training are kept, in the
stacked parameters and in every optimizer state, exactly). With ``fused=True`` (a new
optimizer would compile again) they stay, their gradients set to zero before every step, so
the population's screen never refuses a step for them, and the elementwise rules keep
whatever their slices hold inside their slices. The population's optimizer itself does not
check (``nonfinite="ignore"``): the population has screened each member. Under ``"ignore"`` nothing
is checked, as in the sequential run: inf or NaN stay in the member's slice (elementwise
rules, per-member clipping) until its loss diverges. ``"skip"`` is not batchable (one
member's skipped step would have to be left out of the population's step).

**Per step, one host synchronization**: the members' losses and gradient norms are read
together. A member's gradient norm ``||g_i||`` also screens its gradients: it is finite only
if every element is (a sum of squares with an inf or NaN term is inf or NaN), so elements are
inspected only for a member whose norm is not finite (which may also be an overflow).

**Data** comes from the task's :meth:`~optimlab.lab.tasks.Task.population_batches`: all
members' batches of a step, stacked, each member's exactly the batch its own stream would
give it (one gather for all members on the data tasks). **Evaluations**: the members due to
evaluate after a step (each member keeps its own evaluation grid, which depends on its own
metrics) are evaluated together where the task offers it
(:meth:`~optimlab.lab.tasks.Task.population_metrics`: plain MLPs, in chunks of a few
members, equal to rounding; measured on the 2-core CPU, 0.25 ms per member against 0.47 ms
for its own ``evaluate``), else each with its own ``task.evaluate()``. (Batching all
members' evaluations in one piece measured slower than evaluating them one by one: 7 MB per
layer output for 16 members left the cache, and their page faults cost more than the
products.)

**Equality.** Batched matrix products may sum in another order than the sequential run's, so
records agree to rounding, not always bit for bit (``tests/test_population.py`` states the
tolerances; measured on the CPU, one thread: mlp-digits parameters bit-identical after
the full budget, its mini-batch losses and evaluated losses to 3.3e-7 relative).

**Time.** A member's time fields (``train_seconds``, ``warmup_seconds``,
``seconds_per_step``, ``time_to_target``, the curves' ``time``) are the population's: one
step of the member is one step of the whole population, and its evaluations are excluded as in
a sequential run. ``wall_seconds`` is the population's wall time up to the member's record.
The cost of one member is about these times divided by ``P``, recorded as the scalar
``population_size``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import schedules
from ..chain import NonFiniteGradientError
from .optimizers import build_optimizer
from .population_groups import batchable, group_key, hyperparameter_key
from .population_stack import Layout, Stack, group_bounds, in_dims, member_part
from .runs import (
    _Run,
    describe_error,
    failed_record,
    make_schedule,
    run_hyperparams,
    setup_task,
)
from .schema import RunConfig, RunRecord
from .tasks import Task, make_task

__all__ = ["batchable", "execute_population", "group_key"]  # the first and last: re-exported


class _Member(_Run):
    """One member's bookkeeping: a sequential run's, over a row of the population's buffers
    (laid out by ``layout``), in param group ``group`` (of ``group_size`` members) of the
    population's optimizer."""

    def __init__(self, config: RunConfig, task: Task, optimizer: torch.optim.Optimizer,
                 device: torch.device, lr_scale: float, size: int, group: int,
                 group_size: int, layout: Layout, row: int) -> None:
        super().__init__(config, task, optimizer, device, None, lr_scale)
        self.size, self.group, self.group_size = size, group, group_size
        self.layout = layout
        #: the member's index among the population's tasks (its rows of their stacked data)
        self.row = row
        #: the metrics of the current parameters, computed with other members' by the task's
        #: population metrics; taken by the member's next evaluation
        self.batched: dict[str, float] | None = None
        self.record: RunRecord | None = None

    def metrics(self) -> dict[str, float]:
        """The metrics the population computed for this evaluation, else the task's own."""
        if self.batched is not None:
            metrics, self.batched = self.batched, None
            return metrics
        return super().metrics()

    def schedule(self) -> schedules.Schedule:
        """The member's learning-rate schedule, from its own group's lr."""
        base_lr = float(self.optimizer.param_groups[self.group].get("lr", 0.0))
        return make_schedule(self.config.schedule, base_lr, self.steps)

    def prepare_step(self) -> bool:
        """As a run's; the learning rate recorded is the member's group's."""
        measure = super().prepare_step()
        self.lr_now = float(self.optimizer.param_groups[self.group]["lr"])
        return measure

    def state_bytes(self) -> int:
        """The member's state as its own optimizer would hold it, per parameter: of a state
        tensor with the group's member axis, the member's rows (``1/group_size`` of its
        bytes); a scalar (a step count), which the population's optimizer keeps once per
        buffer (:class:`~optimlab.lab.population_stack.Layout`), once per parameter held in
        that buffer."""
        per_buffer = Counter(b for b, _, _ in self.layout.segments)
        total = 0
        for b, p in enumerate(self.optimizer.param_groups[self.group]["params"]):
            for v in self.optimizer.state.get(p, {}).values():
                if isinstance(v, Tensor):
                    n = (v.numel() // self.group_size if v.dim() and v.shape[0] == self.group_size
                         else v.numel() * per_buffer[b])
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


def execute_population(configs: Sequence[RunConfig], *, device: str | torch.device = "cpu",
                       threads: int | None = None) -> list[RunRecord]:
    """Train ``configs`` (same :func:`group_key`, distinct runs, all :func:`batchable`) as one
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
        ValueError: no configs, configs of different groups, a run given twice, a config that
            is not batchable (the reason), or one that cannot be resolved.
    """
    configs = [c.resolved() for c in configs]
    if not configs:
        raise ValueError("a population needs at least one config")
    keys = {group_key(c) for c in configs}
    if len(keys) > 1:
        raise ValueError("a population's configs must differ only in seed and hyperparameter "
                         "values (group_key)")
    runs = [c.key() for c in configs]
    if len(set(runs)) != len(runs):
        raise ValueError("a population's configs must be distinct runs, got a run twice "
                         f"(seeds {[c.seed for c in configs]})")
    distinct = {(hyperparameter_key(dict(c.hyperparams)), c.clip_norm, c.clip_value): c
                for c in configs}
    for config in distinct.values():  # e.g. an lr the optimizer refuses
        reason = batchable(config)
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
        stage = "building the optimizer"
        try:
            planned = [(i, task, *run_hyperparams(self.configs[i], int(task.n_train)))
                       for i, task in tasks]
            # Members with equal hyperparameters are contiguous: group j is rows a_j..b_j of
            # every stacked tensor, in param group j of the optimizer.
            first_seen: dict[str, int] = {}
            for _, _, _, hyper, _ in planned:
                first_seen.setdefault(hyperparameter_key(hyper), len(first_seen))
            planned.sort(key=lambda m: first_seen[hyperparameter_key(m[3])])
            tasks = [(i, task) for i, task, *_ in planned]
            first = tasks[0][1]
            names = [n for n, p in first.model.named_parameters() if p.requires_grad]
            layout = Layout(first.parameters())
            buffers = layout.flatten([torch.stack([t.parameters()[j].detach()
                                                   for _, t in tasks])
                                      for j in range(len(names))])
            for m, (_, task) in enumerate(tasks):
                for p, s in zip(task.parameters(), layout.views(buffers), strict=True):
                    p.data = s[m]  # the member's parameter is its slice
            bounds = group_bounds([first_seen[hyperparameter_key(m[3])] for m in planned])
            optimizer, refuse = self._optimizer(planned[0][2].optimizer, buffers, bounds,
                                                [planned[a][3] for a, _ in bounds])
            members = [_Member(config, task, optimizer, self.device, scale, len(tasks), j,
                               b - a, layout, row)
                       for j, (a, b) in enumerate(bounds)
                       for row, (_, task, config, _, scale) in enumerate(planned[a:b], a)]
            metrics_fn = first.population_metrics([task for _, task in tasks])
            stage = "training"
            if metrics_fn is not None:  # the step-0 evaluations, together
                self._evaluate(members, members, layout.views(buffers), metrics_fn)
            for m in members:
                m.begin(scheduled=False)
                m.wall0 = wall0
            config = members[0].config
            batch_size = None if config.batch_size == "full" else int(config.batch_size)
            stream = first.population_batches(
                [task for _, task in tasks], batch_size,
                [torch.Generator().manual_seed(m.config.seed) for m in members])
            scheduler = schedules.ScheduledLR(optimizer, [members[a].schedule()
                                                          for a, _ in bounds])
        except (Exception, SystemExit) as e:
            for i, task in tasks:
                self.records[i] = failed_record(self.configs[i], describe_error(e, stage),
                                                task=task,
                                                wall_seconds=time.perf_counter() - wall0)
            return
        grad_fn = first.population_gradients() or self._vmapped_gradients(first, names)
        stack = Stack(list(members), layout, buffers, bounds, optimizer, scheduler,
                       planned[0][2].optimizer, {**planned[0][3], "nonfinite": "ignore"})
        self._loop(stack, grad_fn, stream, metrics_fn, refuse)
        for (i, _), m in zip(tasks, members, strict=True):
            if m.record is None:
                m.close()
            self.records[i] = m.record

    @staticmethod
    def _optimizer(name: str, buffers: list[Tensor], bounds: list[tuple[int, int]],
                   hypers: list[dict[str, Any]]) -> tuple[torch.optim.Optimizer, bool]:
        """The population's optimizer: param group ``j`` holds rows ``a_j..b_j`` of every
        parameter buffer (views: the steps write into the buffers) with the group keys an
        optimizer built with ``hypers[j]`` has; and whether the members' optimizers refuse
        non-finite gradients (``nonfinite="raise"``). The population screens its members'
        gradients itself (each member's own refusal), so its optimizer does not check them
        again (``nonfinite="ignore"``: the screen costs a pass over the gradients)."""
        probe = [nn.Parameter(torch.zeros(1))]
        groups, refuse = [], False
        for (a, b), hyper in zip(bounds, hypers, strict=True):
            built = build_optimizer(name, probe, hyper)
            refuse = refuse or getattr(built, "nonfinite", None) == "raise"
            keys = {k: v for k, v in built.param_groups[0].items() if k != "params"}
            groups.append({"params": [buffer[a:b] for buffer in buffers], **keys})
        return build_optimizer(name, groups, {**hypers[0], "nonfinite": "ignore"}), refuse

    @staticmethod
    def _vmapped_gradients(task: Task, names: list[str]) -> Any:
        """``(params, batch) -> (grads, losses)`` for any task whose population is supported:
        ``vmap(grad_and_value(loss_i))``, ``loss_i`` the task's own ``loss`` called through
        ``functional_call`` with member ``i``'s parameters."""
        module = _LossOf(task)

        def loss(params: tuple[Tensor, ...], batch: Any) -> Tensor:
            return torch.func.functional_call(
                module, {f"model.{n}": p for n, p in zip(names, params, strict=True)},
                (batch,))

        member = torch.func.grad_and_value(loss)

        def gradients(params: tuple[Tensor, ...], batch: Any) -> Any:
            return torch.vmap(member, in_dims=(0, in_dims(batch)))(params, batch)

        return gradients

    def _loop(self, stack: Stack, grad_fn: Any, stream: Iterator[Any], metrics_fn: Any,
              refuse: bool) -> None:
        task = stack.members[0].task
        dead: list[int] = []
        for k, m in enumerate(stack.members):
            if not m.active():
                m.close()
                dead.append(k)
        while True:
            if dead and stack.compactable():
                stack.compact()
                dead = []
            members, stacked, optimizer = stack.members, stack.stacked, stack.optimizer
            live = [k for k, m in enumerate(members) if m.record is None]
            if not live:
                return
            try:
                measured = [k for k in live if members[k].prepare_step()]
                t0 = time.perf_counter()
                batch = stack.rows_of(next(stream))
                examples = task.batch_examples(member_part(batch, 0))
                grads, losses = grad_fn(tuple(stacked), batch)
                flat = stack.layout.flatten(grads)
                grads = stack.layout.views(flat)
                for group, (a, b) in zip(optimizer.param_groups, stack.bounds, strict=True):
                    for view, g in zip(group["params"], flat, strict=True):
                        view.grad = g[a:b]
                total = stack.clipping.apply(grads, flat, raw=bool(measured))
                # One host sync per step: the losses, the norms the records and the
                # non-finite screen need.
                values, norms, raw = torch.stack([losses.double(), total[0].double(),
                                                  total[1].double()]).tolist()
                for k in measured:
                    members[k].grad_norm = raw[k]
                for k in live:
                    members[k].closure_evals += 1
                    members[k].n_examples += examples
                    # ||g_k|| finite => every element finite (a sum of squares with an inf or
                    # NaN term is inf or NaN); only a non-finite norm is checked element-wise.
                    if refuse and not math.isfinite(norms[k]) and not all(
                            bool(torch.isfinite(g[k]).all()) for g in grads):
                        self._refuse(members[k], [g[k] for g in grads])
                        dead.append(k)
                if dead:
                    index = torch.tensor(dead, device=flat[0].device)
                    for g in flat:
                        g.index_fill_(0, index, 0)
                optimizer.step()
                stack.scheduler.step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                if metrics_fn is not None:
                    self._evaluate([members[k] for k in measured if members[k].record is None],
                                   members, stacked, metrics_fn)
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
                m.batched = None  # not taken by a member that diverged before evaluating
                if not m.active():
                    m.close()
                    dead.append(k)

    @staticmethod
    def _evaluate(due: list[_Member], members: list[_Member], stacked: list[Tensor],
                  metrics_fn: Any) -> None:
        """The metrics of the members ``due`` to evaluate now, computed together by the
        task's population metrics (``stacked``: the parameters of ``members``, one row each)
        and handed to each member's next evaluation."""
        if not due:
            return
        if len(due) == len(members):
            params = [s.detach() for s in stacked]
        else:
            index = torch.tensor([members.index(m) for m in due], device=stacked[0].device)
            params = [s.detach().index_select(0, index) for s in stacked]
        for m, metrics in zip(due, metrics_fn(params, [m.row for m in due]), strict=True):
            m.batched = metrics

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
