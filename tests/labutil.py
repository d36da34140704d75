"""Helpers shared by the lab's tests."""

from __future__ import annotations

from typing import Any

import torch

#: Record fields that measure wall-clock time or memory, which differ between equal runs.
TIMING = {"train_seconds", "wall_seconds", "time_to_target", "peak_memory_bytes",
          "warmup_seconds", "seconds_per_step"}


def stable(record: Any) -> dict:
    """A run record (a RunRecord or its dict) without its wall-clock and memory
    measurements and its population size."""
    if not isinstance(record, dict):
        record = record.to_dict()
    out = {k: v for k, v in record.items() if k not in TIMING}
    out["curve"] = {k: v for k, v in record["curve"].items() if k != "time"}
    out["evals"] = {k: v for k, v in record["evals"].items() if k != "time"}
    # how many members trained together is an execution fact, like the wall clock
    out["scalars"] = {k: v for k, v in record.get("scalars", {}).items()
                      if k != "population_size"}
    return out


def train(task: Any, opt: torch.optim.Optimizer, steps: int,
          batch_size: int | None = 32) -> None:
    """``steps`` optimizer steps on ``task``'s seeded mini-batches (``None``: full batch)."""
    batches = task.batches(batch_size, torch.Generator().manual_seed(0))
    for _ in range(steps):
        opt.zero_grad()
        task.loss(next(batches)).backward()
        opt.step()
