"""Task registry: names, user tasks by import path, clear errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from optimlab.lab.tasks import TASKS, Task, TaskInfo, UnknownTaskError, make_task, register


class _Line(Task):
    """A one-parameter least-squares task, the smallest possible user task."""

    info = TaskInfo(name="line", description="fit y = 2x", kind="convex", steps=10,
                    target=1e-6)

    def __init__(self, slope: float = 2.0) -> None:
        self.slope = slope

    def setup(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(16, 1, generator=g, dtype=torch.float64)
        self.y = self.slope * self.x
        self.model = nn.Linear(1, 1, bias=False).double()
        self.n_train = 16

    def batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Tensor]:
        while True:
            k = self.n_train if batch_size is None else batch_size
            yield torch.randperm(self.n_train, generator=generator)[:k]

    def loss(self, batch: Tensor) -> Tensor:
        return ((self.model(self.x[batch]) - self.y[batch]) ** 2).mean()

    def full_loss(self) -> Tensor:
        return self.loss(torch.arange(self.n_train))

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            return {"train_loss": float(self.full_loss())}


def make_line(slope: float = 2.0) -> Task:
    """A user task factory, importable as ``test_tasks_registry:make_line``."""
    return _Line(slope)


def test_user_task_from_import_path_trains_with_its_closure() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        task = make_task("test_tasks_registry:make_line", slope=3.0)
    finally:
        sys.path.pop(0)
    task.setup(seed=0)
    opt = torch.optim.LBFGS(task.parameters(), lr=1.0)
    opt.step(task.closure())
    # float64, noise-free 1-D least squares: L-BFGS lands on w = 3 to rounding (measured
    # exactly; a rounding of w, 4e-16, gives a loss of ~1e-31)
    assert task.evaluate()["train_loss"] < 1e-12
    assert abs(task.model.weight.item() - 3.0) < 1e-6


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(UnknownTaskError, match="unknown task 'nope'"):
        make_task("nope")
    with pytest.raises(UnknownTaskError, match="cannot import task factory"):
        make_task("no_such_module_xyz:factory")


def test_bad_options_and_non_task_factories() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        with pytest.raises(ValueError, match="bad options"):
            make_task("test_tasks_registry:make_line", bogus=1)
        with pytest.raises(TypeError, match="not a Task"):
            make_task("test_tasks_registry:not_a_task")
    finally:
        sys.path.pop(0)


def not_a_task() -> int:
    return 3


def test_register_refuses_duplicates() -> None:
    register("registry-test-task")(make_line)
    try:
        with pytest.raises(ValueError, match="registered twice"):
            register("registry-test-task")(make_line)
    finally:
        del TASKS["registry-test-task"]


#: Tasks that need local files (covered in test_tasks_presets.py, with their flag there).
FILE_TASKS = {"resnet18-cifar10", "gpt-textfile"}


@pytest.mark.parametrize("name", sorted(set(TASKS) - FILE_TASKS))
def test_the_determinism_flag_matches_what_the_seed_changes(name: str) -> None:
    # deterministic_with_full_batch: nothing but the data order depends on the seed, so two
    # seeds build the same parameters and the same full batch (the training data).
    def built(seed: int) -> tuple[list[torch.Tensor], Any]:
        task = make_task(name)
        task.setup(seed)
        full = next(task.batches(None, torch.Generator().manual_seed(seed)))
        return [p.detach().clone() for p in task.parameters()], full

    (p0, b0), (p1, b1) = built(0), built(1)
    same = all(torch.equal(a, b) for a, b in zip(p0, p1, strict=True)) and _equal(b0, b1)
    assert make_task(name).info.deterministic_with_full_batch == same


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b
