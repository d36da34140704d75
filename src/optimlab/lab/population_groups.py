"""Which runs may train together as one population (:mod:`optimlab.lab.population`).

:func:`group_key`: runs with equal keys differ only in seed and in the values of the optimizer's
numeric hyperparameters and clipping thresholds; :func:`batchable`: whether a run can train in a
population at all, or why not.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

import torch
from torch import nn

from ..chain import ChainOptimizer
from .optimizers import build_optimizer, lookup
from .schema import RunConfig
from .tasks import make_task

__all__ = ["batchable", "group_key", "hyperparameter_key"]


def group_key(config: RunConfig) -> Hashable:
    """Configs with equal keys may train as one population: everything that defines the run
    except the seed and the *values* of the optimizer's numeric hyperparameters and of the
    clipping thresholds (task and options, optimizer, its flags such as ``nesterov`` or
    ``amsgrad``, schedule, batch size, budget, which clippings are on, ...): the canonical JSON
    of the config's key fields with those left out. Members with different hyperparameter
    values train in different param groups of the population's optimizer (module
    docstring)."""
    fields = config.resolved().key_fields()  # defaults explicit: given or not, the same key
    fields.pop("seed", None)
    fields["hyperparams"] = {k: _numbers_left_out(v)
                             for k, v in (fields.get("hyperparams") or {}).items()}
    for clip in ("clip_norm", "clip_value"):
        fields[clip] = fields.get(clip) is not None
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _numbers_left_out(value: Any) -> Any:
    """``value`` with every number (not a bool) replaced by ``"#"``, inside lists too."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "#"
    if isinstance(value, (list, tuple)):
        return [_numbers_left_out(v) for v in value]
    return value


def hyperparameter_key(hyper: dict[str, Any]) -> str:
    """A member's optimizer hyperparameters as a canonical string (equal values: one group)."""
    return json.dumps(hyper, sort_keys=True, separators=(",", ":"), default=repr)


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
    if getattr(probe, "state_dtype", None) == torch.uint8:
        return ("8-bit states are quantized in blocks across a stacked tensor (and tensors "
                "under 4096 elements stay fp32): a member's states would differ from its run's")
    if callable(getattr(probe, "eval", None)):
        return (f"optimizer {config.optimizer!r} swaps the parameters for evaluation "
                "(eval()/train(), as Schedule-Free does): the members' evaluations would "
                "swap the whole population's")
    if getattr(probe, "nonfinite", None) == "skip":
        return ("the optimizer skips steps with a non-finite gradient (nonfinite='skip'): "
                "one member's skipped step cannot be left out of the population's step")
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
