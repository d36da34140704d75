"""Task.population_batches: every member's part of a population's batch is exactly the batch its
own stream gives (bit for bit), for the tasks that gather all members' batches at once and for
the default (each member's own stream, stacked)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from optimlab.lab.tasks import make_task
from optimlab.lab.tasks.base import stack_batches

SEEDS = (0, 3, 5)


def _members(name: str, **options: Any) -> list[Any]:
    tasks = []
    for seed in SEEDS:
        task = make_task(name, **options)
        task.setup(seed)
        tasks.append(task)
    return tasks


def _equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize(("name", "options"), [
    ("mlp-digits", {}), ("cnn-digits", {"channels": 2}), ("softmax-digits", {}),
    ("logreg-breast-cancer", {}), ("robust-regression", {}),
    ("saddle", {"noise": 0.5}), ("rosenbrock", {})])
@pytest.mark.parametrize("batch_size", [32, 7, None, 100_000])
def test_population_batches_are_each_members_own_batches(name: str, options: dict[str, Any],
                                                         batch_size: int | None) -> None:
    members = _members(name, **options)
    stacked = members[0].population_batches(
        members, batch_size, [torch.Generator().manual_seed(s) for s in SEEDS])
    own = [m.batches(batch_size, torch.Generator().manual_seed(s))
           for m, s in zip(members, SEEDS, strict=True)]
    # Three epochs of 32-example batches of the largest training set here (1078 digits),
    # so that epoch ends (a shorter last batch, a new permutation) are crossed.
    steps = 3 * (1078 // 32 + 1) if batch_size == 32 else 20
    for step in range(steps):
        expected = stack_batches([next(s) for s in own])
        assert _equal(next(stacked), expected), f"{name}, batch {batch_size}, step {step}"
    if batch_size == 32 and name.endswith("digits"):  # the members' data differ by seed
        first = next(stacked)[0]
        assert not torch.equal(first[0], first[1])


def test_the_default_stacks_each_members_own_stream() -> None:
    # With batch norm (a minimum batch size) the digits tasks fall back to the default.
    members = _members("mlp-digits", batchnorm=True)
    stacked = members[0].population_batches(
        members, 9, [torch.Generator().manual_seed(s) for s in SEEDS])
    own = [m.batches(9, torch.Generator().manual_seed(s))
           for m, s in zip(members, SEEDS, strict=True)]
    for _ in itertools.repeat(None, 2 * (1078 // 9 + 1)):
        assert _equal(next(stacked), stack_batches([next(s) for s in own]))
