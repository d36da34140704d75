"""The task protocol: a training problem that knows nothing of optimizers.

A task builds its model and data deterministically from a seed and exposes what a run needs:
the parameters to optimize, mini-batches (or the full batch), the loss of a batch, the full
training objective (for closures: line searches, second-order methods, SAM) and evaluation
metrics. It also states a sensible step budget and a target for time-to-target measurements.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Batch", "StackedGradients", "StackedMetrics", "Task", "TaskInfo", "stack_batches"]

#: Whatever a task's loss takes: a tuple of tensors for data tasks, ``None`` for 2-D functions.
Batch = Any
#: ``(params, batch) -> (grads, losses)``: the stacked parameters (``(P, *shape)`` each, in
#: ``task.parameters()`` order) and a stacked batch give each member's gradients (same shapes)
#: and its loss (shape ``(P,)``) (:meth:`Task.population_gradients`).
StackedGradients = Callable[[Sequence[Tensor], Batch], tuple[list[Tensor], Tensor]]
#: ``(params, rows) -> metrics``: the metrics of the members ``rows`` (indices into the
#: population's tasks), whose stacked parameters ``params`` hold one row each, in that order
#: (:meth:`Task.population_metrics`).
StackedMetrics = Callable[[Sequence[Tensor], Sequence[int]], list[dict[str, float]]]


@dataclass(frozen=True)
class TaskInfo:
    """What the lab knows about a task before running it.

    Attributes:
        name: registry name (``"rosenbrock"``, ``"logreg-breast-cancer"``, ...).
        description: one line for ``optimlab list``.
        kind: ``"2d"``, ``"convex"`` or ``"neural"``.
        steps: a sensible default step budget.
        target: value of ``target_metric`` that counts as solved (time-to-target).
        target_metric: the metric the target refers to (``"train_loss"`` or
            ``"suboptimality"`` = f - f*).
        options: the options the task was built with (recorded with every run).
        deterministic_with_full_batch: nothing but the order of the data depends on the seed
            (fixed initialization, fixed data split, no noise), so full-batch runs of any two
            seeds are identical: one seed says everything.
    """

    name: str
    description: str
    kind: str
    steps: int
    target: float
    target_metric: str = "train_loss"
    options: dict[str, Any] = field(default_factory=dict)
    deterministic_with_full_batch: bool = False


class Task(ABC):
    """A training problem. Subclasses set ``info`` and implement the abstract methods.

    Lifecycle: ``task.setup(seed)`` builds model and data (same seed, same everything on CPU);
    then a run reads ``task.parameters()``, draws ``task.batches(batch_size, generator)``,
    calls ``task.loss(batch).backward()`` and ``task.evaluate()``.
    """

    info: TaskInfo
    #: f* of the training objective where it is known (convex tasks, 2-D functions).
    optimum: float | None = None
    #: Number of training examples (1 for 2-D functions: ``batch_size="full"`` == 1).
    n_train: int = 1
    model: nn.Module

    @abstractmethod
    def setup(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        """Build model and data for ``seed`` on ``device`` (deterministic on CPU)."""

    def parameters(self) -> list[nn.Parameter]:
        """The parameters to optimize."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @abstractmethod
    def batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """An endless stream of training batches; ``batch_size=None`` means the full batch."""

    @abstractmethod
    def loss(self, batch: Batch) -> Tensor:
        """The (mean-reduced) training loss of ``batch``, differentiable w.r.t. parameters."""

    @abstractmethod
    def full_loss(self) -> Tensor:
        """The full training objective (all training data, no noise)."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Metrics of the current parameters: ``train_loss`` always; ``val_loss``,
        ``test_loss``, ``val_accuracy``, ``suboptimality`` where they apply."""

    def batch_examples(self, batch: Batch) -> int:
        """How many training examples ``batch`` holds (for budgets and examples-to-target):
        the length of its first tensor for ``(x, y)`` batches and tensors; ``n_train`` for
        anything else."""
        first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if isinstance(first, Tensor) and first.dim() > 0:
            return int(first.shape[0])
        return int(self.n_train)

    def escaped(self) -> bool | None:
        """Whether the current parameters have escaped the task's saddle point, for tasks built
        around one (the task defines what escaping means); ``None`` for tasks without one.
        Runs record the first step at which this turns true (``escape_step``)."""
        return None

    def population_obstacle(self) -> str | None:
        """Why this task cannot train as a population (``None``: it can).

        A population (:mod:`optimlab.lab.population`) trains P copies of the task, each set up
        with its own seed, as one program: ``loss`` is called through
        ``torch.func.functional_call`` under ``torch.vmap`` with each member's parameters and
        batch. That is exact only when ``loss`` is a pure function of the parameters and the
        batch: no randomness of its own (dropout), no state it updates (batch norm's running
        statistics), no data-dependent Python control flow. Tasks for which this holds
        override this method; the default declines.
        """
        return f"task {self.info.name!r} does not declare support for population runs"

    def population_gradients(self) -> StackedGradients | None:
        """A faster way to differentiate a population of this task (tasks like this one),
        or ``None``: the population then uses ``vmap`` over :meth:`loss`.

        The function returned takes the members' stacked parameters (``(P, *shape)`` each,
        in :meth:`parameters` order) and a stacked batch (:meth:`population_batches`). It
        returns each member's gradients (same shapes) and its loss of its own part of the
        batch, shape ``(P,)``, equal to what ``loss(batch_i).backward()`` gives on the
        member's own model up to rounding."""
        return None

    def population_metrics(self, members: Sequence[Task]) -> StackedMetrics | None:
        """A faster way to evaluate several members of the population ``members`` (tasks like
        this one, set up) at once, or ``None``: each member then calls its own
        :meth:`evaluate`.

        The function returned takes stacked parameters, one row per member to evaluate, and
        those members' indices into ``members``; it returns their :meth:`evaluate` metrics,
        equal to what each member's own call gives up to rounding."""
        return None

    def population_batches(self, members: Sequence[Task], batch_size: int | None,
                           generators: Sequence[torch.Generator]) -> Iterator[Batch]:
        """The training batches of a population's ``members`` (tasks like this one, each set
        up with its own seed), one per step, stacked along a new leading member axis
        (:func:`stack_batches`): member ``i``'s part of every batch is exactly the batch its
        own ``members[i].batches(batch_size, generators[i])`` would yield at that step.

        The default draws from each member's own stream and stacks; tasks whose batches are
        rows of a training set override it with one gather for all members."""
        streams = [m.batches(batch_size, g) for m, g in zip(members, generators, strict=True)]
        while True:
            yield stack_batches([next(s) for s in streams])

    def closure(self) -> Callable[[], Tensor]:
        """A closure for ``optimizer.step(closure)`` on the full objective."""

        def _closure() -> Tensor:
            for p in self.parameters():
                p.grad = None
            loss = self.full_loss()
            loss.backward()
            return loss

        return _closure


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """Batches of a population's members stacked along a new leading axis: a tuple of the
    stacked parts for tuple batches, the stacked tensors for tensor batches, ``None`` when
    they are ``None`` (2-D functions without noise)."""
    first = batches[0]
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return tuple(torch.stack(parts) for parts in zip(*batches, strict=True))
    return torch.stack(list(batches))
