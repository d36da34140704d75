"""The task protocol: a training problem that knows nothing of optimizers.

A task builds its model and data deterministically from a seed and exposes what a run needs:
the parameters to optimize, mini-batches (or the full batch), the loss of a batch, the full
training objective (for closures: line searches, second-order methods, SAM) and evaluation
metrics. It also states a sensible step budget and a target for time-to-target measurements.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Batch", "Task", "TaskInfo"]

#: Whatever a task's loss takes: a tuple of tensors for data tasks, ``None`` for 2-D functions.
Batch = Any


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
    """

    name: str
    description: str
    kind: str
    steps: int
    target: float
    target_metric: str = "train_loss"
    options: dict[str, Any] = field(default_factory=dict)


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

    def closure(self) -> Callable[[], Tensor]:
        """A closure for ``optimizer.step(closure)`` on the full objective."""

        def _closure() -> Tensor:
            for p in self.parameters():
                p.grad = None
            loss = self.full_loss()
            loss.backward()
            return loss

        return _closure
