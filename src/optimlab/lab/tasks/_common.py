"""Helpers shared by the built-in task modules (private): option checks and batch streams.

Every option check raises ``ValueError`` with a message naming the option, e.g.
``option 'depth' must be an integer, got 1.5``; ``batch_size`` has its own check.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch, Task

_REAL = (int, float, np.integer, np.floating)
_T = TypeVar("_T")

# ----------------------------------------------------------------------------- options


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int`` (a Python or NumPy integer, not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"option {name!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"option {name!r} must be >= {minimum}, got {value}")
    return int(value)


def check_real(name: str, value: Any, *, finite: bool = True) -> float:
    """``value`` as a ``float`` (a Python or NumPy real, not a bool); finite unless
    ``finite=False`` (then a later range check reports non-finite values)."""
    if isinstance(value, bool) or not isinstance(value, _REAL):
        raise ValueError(f"option {name!r} must be a real number, got {value!r}")
    value = float(value)
    if finite and not math.isfinite(value):
        raise ValueError(f"option {name!r} must be finite, got {value!r}")
    return value


def check_min(name: str, value: Any, minimum: float = 0, *, strict: bool = False) -> float:
    """``value`` as a finite ``float`` ``>= minimum`` (``> minimum`` with ``strict``)."""
    value = check_real(name, value)
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"option {name!r} must be {'>' if strict else '>='} {minimum}, "
                         f"got {value}")
    return value


def check_path(name: str, value: Any) -> Path:
    """``value`` (a non-empty ``str`` or ``os.PathLike``) as a user-expanded ``Path``."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"option {name!r} must be a local path (str or os.PathLike), "
                         f"got {value!r}")
    return Path(value).expanduser()


def check_interval(name: str, value: Any, low: float, high: float, *,
                   finite: bool = True) -> float:
    """``value`` as a ``float`` in ``[low, high)``; with ``finite=False`` a non-finite value
    gets the interval's message rather than the finiteness one."""
    value = check_real(name, value, finite=finite)
    if not low <= value < high:
        raise ValueError(f"option {name!r} must be in [{low}, {high}), got {value}")
    return value


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value``, which must be one of the strings ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"option {name!r} must be one of {list(allowed)}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a ``bool`` (a Python or NumPy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"option {name!r} must be True or False, got {value!r}")
    return bool(value)


def check_batch_size(batch_size: Any) -> int | None:
    """``batch_size`` as an ``int >= 1``, or ``None`` (the full batch)."""
    if batch_size is not None and (isinstance(batch_size, bool)
                                   or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return None if batch_size is None else int(batch_size)


# ----------------------------------------------------------------------------- batches


def epoch_indices(n: int, batch_size: int, generator: torch.Generator,
                  device: torch.device | str) -> Iterator[Tensor]:
    """Endless index batches over ``range(n)``: each epoch a fresh ``torch.randperm(n)``
    from ``generator`` (moved to ``device``), cut into consecutive slices of ``batch_size``
    (the last of an epoch may be smaller)."""
    while True:
        perm = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            yield perm[start:start + batch_size]


def epoch_batches(x: Tensor, y: Tensor, batch_size: int | None, generator: torch.Generator,
                  min_size: int = 1) -> Iterator[Batch]:
    """Endless ``(x, y)`` batches: a fresh permutation from ``generator`` every epoch, cut
    into consecutive batches (the last may be smaller; one below ``min_size`` is skipped).
    ``batch_size=None`` or ``>= len(x)`` yields the whole data, in stored order, every time."""
    if batch_size is None or batch_size >= len(x):
        while True:
            yield x, y
    for idx in epoch_indices(len(x), batch_size, generator, x.device):
        if len(idx) >= min_size:
            yield x[idx], y[idx]


def stacked_epoch_batches(xs: Sequence[Tensor], ys: Sequence[Tensor], batch_size: int | None,
                          generators: Sequence[torch.Generator]) -> Iterator[Batch]:
    """:func:`epoch_batches` of several training sets of one size ``n``, stacked along a new
    leading axis: part ``i`` of every batch is exactly the batch ``epoch_batches(xs[i],
    ys[i], batch_size, generators[i])`` yields at that step. As there, each epoch draws
    ``torch.randperm(n)`` from every ``generators[i]`` and cuts it into consecutive slices of
    ``batch_size``; since all sets have ``n`` rows, their epochs end together, and a step's
    rows of all sets are gathered with one ``index_select`` per tensor."""
    x, y = torch.stack(list(xs)), torch.stack(list(ys))
    p, n = x.shape[:2]
    if batch_size is None or batch_size >= n:
        while True:
            yield x, y
    flat_x, flat_y = x.reshape(p * n, *x.shape[2:]), y.reshape(p * n, *y.shape[2:])
    offsets = torch.arange(p, device=x.device).unsqueeze(1) * n  # set i's rows start at i*n
    while True:
        perms = torch.stack([torch.randperm(n, generator=g) for g in generators])
        perms = perms.to(x.device) + offsets
        for start in range(0, n, batch_size):
            rows = perms[:, start:start + batch_size].reshape(-1)
            size = rows.numel() // p
            yield (flat_x.index_select(0, rows).view(p, size, *x.shape[2:]),
                   flat_y.index_select(0, rows).view(p, size, *y.shape[2:]))


def window_batches(full: _T, high: int, batch_size: int | None, generator: torch.Generator,
                   windows: Callable[[Tensor], _T]) -> Iterator[_T]:
    """Endless batches of text windows: ``full`` every time for ``batch_size=None``, else
    ``windows(starts)`` with ``batch_size`` starts drawn uniformly from ``[0, high)``."""
    if batch_size is None:
        while True:
            yield full
    while True:
        yield windows(torch.randint(0, high, (batch_size,), generator=generator))


# ----------------------------------------------------------------------------- models


def build_seeded(seed: int, build: Callable[[], _T]) -> _T:
    """``build()`` under ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (CPU),
    so the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@torch.no_grad()
def classification_metrics(task: Task) -> dict[str, float]:
    """Cross-entropy and accuracy of ``task.model`` on the task's ``x_train``/``y_train``,
    ``x_val``/``y_val`` and ``x_test``/``y_test``, and ``generalization_gap``
    (``test_loss - train_loss``)."""
    metrics: dict[str, float] = {}
    for split in ("train", "val", "test"):
        x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
        logits = task.model(x)
        metrics[f"{split}_loss"] = float(F.cross_entropy(logits, y))
        metrics[f"{split}_accuracy"] = float((logits.argmax(-1) == y).float().mean())
    return with_generalization_gap(metrics)


def with_generalization_gap(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` with ``generalization_gap = test_loss - train_loss`` added."""
    metrics["generalization_gap"] = metrics["test_loss"] - metrics["train_loss"]
    return metrics
