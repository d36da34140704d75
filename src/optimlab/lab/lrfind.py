"""The learning-rate range test on a lab task (``optimlab lr-find``).

:func:`find_lr` builds a task and a lab optimizer exactly as a run would (same seed, same
initial model, same batch stream) and hands them to :func:`optimlab.lr_finder.lr_range_test`;
:func:`write_lr_find_report` saves the curve as a PNG and a JSON file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..lr_finder import LRFinderResult, lr_range_test, validate_range_test_args
from . import validate
from .imports import AllowList, check_import
from .optimizers import build_optimizer
from .tasks import make_task
from .validate import Limits

__all__ = ["JSON_NAME", "PLOT_NAME", "find_lr", "write_lr_find_report"]

#: File names :func:`write_lr_find_report` writes in its output folder.
PLOT_NAME = "lr_find.png"
JSON_NAME = "lr_find.json"


def find_lr(task: str, optimizer: str = "sgd", *, task_options: Mapping[str, Any] | None = None,
            hyperparams: Mapping[str, Any] | None = None, batch_size: int | str = 32,
            seed: int = 0, start_lr: float = 1e-6, end_lr: float = 10.0, num_steps: int = 100,
            rule: str = "valley", smoothing: float = 0.05, diverge_factor: float = 4.0,
            device: str | torch.device = "cpu", allow_import: AllowList = None,
            limits: Limits | None = None) -> LRFinderResult:
    """Run the learning-rate range test for lab optimizer ``optimizer`` on task ``task``.

    The task is built with ``make_task(task, **task_options)`` and ``task.setup(seed)`` after
    ``torch.manual_seed(seed)`` (as :func:`optimlab.lab.runs.execute` does, so the model is the
    one a run with that seed starts from); the optimizer with ``build_optimizer(optimizer,
    task.parameters(), hyperparams)`` (its ``lr`` only matters for the ratio between param
    groups: the test sets it); batches come from ``task.batches(None if batch_size == "full"
    else batch_size, torch.Generator().manual_seed(seed))`` and the loss is ``task.loss``.
    The caller's global RNG state is left untouched. The model is thrown away afterwards, so
    nothing needs restoring.

    Args:
        task: task name (registry name or ``"module:factory"``).
        optimizer: lab optimizer name or ``"module:Class"``.
        task_options: options of the task factory.
        hyperparams: optimizer hyperparameters (besides the lr, which the test sweeps).
        batch_size: ``"full"`` or a positive integer.
        seed: model initialization and data order.
        start_lr, end_lr, num_steps, rule, smoothing, diverge_factor: see
            :func:`optimlab.lr_finder.lr_range_test`.
        device: where to run.
        allow_import: the packages a task or optimizer named by import path may come from,
            checked before anything is imported (the command line passes ``--allow-import``;
            see :mod:`optimlab.lab.imports`); ``None``: import what is named (Python code
            naming its own task).
        limits: the guards against typos (``num_steps`` at most ``limits.steps``).

    Raises:
        ValueError: an invalid setting, task, option, optimizer or hyperparameter (the message
            names it), an import path that is not allowed, or a task whose setup raised.
    """
    check_import(task, allow_import, field="task")
    check_import(optimizer, allow_import, field="optimizer")
    validate_range_test_args(start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                             smoothing=smoothing, diverge_factor=diverge_factor, rule=rule)
    validate.at_most("num_steps", num_steps, (limits or Limits()).steps, "steps")
    bs = validate.batch_size("batch_size", batch_size)
    seed = validate.seed("seed", seed)
    t = make_task(task, **dict(task_options or {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            t.setup(seed, device)
        except Exception as e:  # the task's own code failed: say so in one line
            raise ValueError(f"task {task!r}: its setup raised {type(e).__name__}: {e}") from e
        opt = build_optimizer(optimizer, t.parameters(), hyperparams)
        batches = t.batches(None if bs == "full" else int(bs), torch.Generator().manual_seed(seed))
        return lr_range_test(t.model, opt, t.loss, batches, start_lr=start_lr, end_lr=end_lr,
                             num_steps=num_steps, smoothing=smoothing,
                             diverge_factor=diverge_factor, rule=rule, restore=False)


def write_lr_find_report(result: LRFinderResult, out_dir: str | Path, title: str, *,
                         meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``lr_find.png`` (the plot, titled ``title``) and ``lr_find.json`` (``title``,
    ``meta``, the curve ``lrs``/``losses``/``smoothed``, ``suggestion``, ``rule``,
    ``suggestions``, ``diverged_at``; non-finite numbers as ``null``) into ``out_dir`` (created
    if needed). Returns the PNG's path; the JSON file lies beside it."""
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    result.plot(ax)
    ax.set_title(title)
    png = out / PLOT_NAME
    fig.savefig(png, dpi=110)
    payload = {"title": title, "meta": dict(meta or {}), **result.to_dict()}
    (out / JSON_NAME).write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return png
