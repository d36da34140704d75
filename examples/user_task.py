"""A user task for the optimlab lab, loaded by import path.

Any function returning an :class:`optimlab.lab.tasks.Task` can be named as
``"package.module:function"`` wherever the lab takes a task name. This file is both the
example and a runnable check::

    python examples/user_task.py

The task: fit a quadratic curve y = 1 + 2x - 3x^2 + noise with a tiny MLP.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from optimlab.lab import tasks as lab_tasks
from optimlab.lab.tasks import Task, TaskInfo


class CurveFit(Task):
    """Regression of a noisy quadratic curve with a small MLP (mean squared error)."""

    info = TaskInfo(name="curve-fit", description="noisy quadratic curve, small MLP",
                    kind="neural", steps=500, target=0.02)

    def __init__(self, n: int = 256, noise: float = 0.1) -> None:
        if n < 8:
            raise ValueError(f"n must be >= 8, got {n}")
        self.n, self.noise = n, noise

    def setup(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(self.n, 1, generator=g) * 2 - 1
        y = 1 + 2 * x - 3 * x**2 + self.noise * torch.randn(self.n, 1, generator=g)
        split = self.n * 3 // 4
        self.x_train, self.y_train = x[:split].to(device), y[:split].to(device)
        self.x_val, self.y_val = x[split:].to(device), y[split:].to(device)
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1)).to(device)
        self.n_train = split

    def batches(self, batch_size: int | None, generator: torch.Generator
                ) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            if batch_size is None:
                yield self.x_train, self.y_train
                continue
            order = torch.randperm(self.n_train, generator=generator)
            for i in range(0, self.n_train, batch_size):
                idx = order[i:i + batch_size]
                yield self.x_train[idx], self.y_train[idx]

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y)

    def full_loss(self) -> Tensor:
        return self.loss((self.x_train, self.y_train))

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            train = float(self.full_loss())
            val = float(self.loss((self.x_val, self.y_val)))
        return {"train_loss": train, "val_loss": val, "generalization_gap": val - train}


def make_task(n: int = 256, noise: float = 0.1) -> Task:
    """The factory the lab calls: ``"user_task:make_task"`` (this folder on sys.path)."""
    return CurveFit(n=n, noise=noise)


if __name__ == "__main__":
    import optimlab as ol

    sys.path.insert(0, str(Path(__file__).parent))  # so "user_task" is importable
    task = lab_tasks.make_task("user_task:make_task", noise=0.05)
    task.setup(seed=0)
    opt = ol.Adam(task.parameters(), lr=1e-2)
    batches = task.batches(32, torch.Generator().manual_seed(0))
    before = task.evaluate()
    for _ in range(task.info.steps):
        opt.zero_grad()
        task.loss(next(batches)).backward()
        opt.step()
    after = task.evaluate()
    print(f"train loss {before['train_loss']:.3f} -> {after['train_loss']:.4f} "
          f"(target {task.info.target}), val loss {after['val_loss']:.4f}")
