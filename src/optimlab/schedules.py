"""Hyperparameter schedules: pure functions of the step, and the schedulers that apply them.

A *schedule* is a small immutable object (a frozen dataclass) called as ``schedule(step) -> float``
that gives the **value** of a hyperparameter at an integer ``step >= 0`` (not a multiplier of a
base value), so schedules can be plotted, composed and tested on their own::

    sched = ol.schedules.linear_warmup(ol.schedules.cosine_annealing(3e-4, T_max=9_000), 1_000)
    [sched(t) for t in range(10_000)]

Every schedule class has a lowercase alias, the spelling used in examples (``cosine_annealing``
is :class:`CosineAnnealing`). Schedules are applied to an optimizer by

* :class:`ScheduledLR`, a :class:`torch.optim.lr_scheduler.LRScheduler` that sets ``lr``;
* :class:`ScheduledHyperparameter`, the same stepping and ``state_dict`` API for any other
  per-group key (``momentum``, ``weight_decay``, ``rho``, ... or element ``index`` of a tuple key
  such as ``betas``).

Step convention (torch's): a scheduler is created at step 0 and sets ``schedule(0)``; each
``scheduler.step()``, called after ``optimizer.step()``, advances to the next step. A scheduler
created with ``last_epoch=k`` resumes at step ``k + 1``.

Reduce-on-plateau depends on measured metrics, not on the step, so it is no schedule: it is the
scheduler class :class:`ReduceOnPlateau`, torch's ``ReduceLROnPlateau`` rule for any key.
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .transforms.base import check_range

__all__ = [
    "Constant",
    "CosineAnnealing",
    "CosineWarmRestarts",
    "ExponentialDecay",
    "ExponentialWarmup",
    "InverseSqrt",
    "Join",
    "Linear",
    "LinearWarmup",
    "MultiStep",
    "OneCycle",
    "Polynomial",
    "ReduceOnPlateau",
    "Schedule",
    "ScheduledHyperparameter",
    "ScheduledLR",
    "StepDecay",
    "constant",
    "cosine_annealing",
    "cosine_warm_restarts",
    "exponential_decay",
    "exponential_warmup",
    "inverse_sqrt",
    "join",
    "linear",
    "linear_warmup",
    "multi_step",
    "one_cycle",
    "polynomial",
    "step_decay",
    "warmup_cosine",
]

#: Anything that maps a step to a value; every :class:`Schedule` is one.
ScheduleLike = Callable[[int], float]


# --------------------------------------------------------------------------- validation helpers


def _check_int(name: str, value: Any, *, low: int) -> int:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer ``>= low``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}") from None
    if v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return v


def _check_schedule(name: str, value: Any) -> None:
    if not callable(value):
        raise ValueError(f"{name} must be a schedule (a callable step -> value), got {value!r}")


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising fields of a frozen dataclass


# --------------------------------------------------------------------------- schedules


class Schedule:
    """Base class: ``schedule(step)`` is the value at integer ``step >= 0``.

    Subclasses implement ``_eval(step)``; ``__call__`` validates the step first, so a negative or
    non-integer step raises ``ValueError`` naming ``step``.
    """

    def __call__(self, step: int) -> float:
        return self._eval(_check_int("step", step, low=0))

    def _eval(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Schedule):
    """``value`` at every step."""

    value: float

    def __post_init__(self) -> None:
        check_range("value", self.value)

    def _eval(self, step: int) -> float:
        return float(self.value)


constant = Constant


@dataclass(frozen=True)
class StepDecay(Schedule):
    """``f(t) = value * gamma ** floor(t / step_size)``; torch's ``StepLR``."""

    value: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        check_range("value", self.value)
        _check_int("step_size", self.step_size, low=1)
        check_range("gamma", self.gamma, low=0.0, high=1.0, low_open=True, high_open=False)

    def _eval(self, step: int) -> float:
        return self.value * self.gamma ** (step // self.step_size)


step_decay = StepDecay


@dataclass(frozen=True)
class MultiStep(Schedule):
    """``f(t) = value * gamma ** #{m in milestones : m <= t}``; torch's ``MultiStepLR``.

    ``milestones`` must be non-empty and strictly increasing non-negative integers.
    """

    value: float
    milestones: Sequence[int]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        check_range("value", self.value)
        ms = tuple(self.milestones) if isinstance(self.milestones, Sequence) else None
        if not ms:
            raise ValueError(f"milestones must be a non-empty sequence of integers, got "
                             f"{self.milestones!r}")
        ms = tuple(_check_int("milestones", m, low=0) for m in ms)
        if any(b <= a for a, b in pairwise(ms)):
            raise ValueError(f"milestones must be strictly increasing, got {ms!r}")
        _set(self, "milestones", ms)
        check_range("gamma", self.gamma, low=0.0, high=1.0, low_open=True, high_open=False)

    def _eval(self, step: int) -> float:
        return self.value * self.gamma ** bisect_right(self.milestones, step)


multi_step = MultiStep


@dataclass(frozen=True)
class ExponentialDecay(Schedule):
    """``f(t) = value * gamma ** t``; torch's ``ExponentialLR``."""

    value: float
    gamma: float

    def __post_init__(self) -> None:
        check_range("value", self.value)
        check_range("gamma", self.gamma, low=0.0, high=1.0, low_open=True, high_open=False)

    def _eval(self, step: int) -> float:
        return self.value * self.gamma**step


exponential_decay = ExponentialDecay


@dataclass(frozen=True)
class CosineAnnealing(Schedule):
    """Cosine annealing, closed form (SGDR without restarts, Loshchilov & Hutter, 2017)::

        f(t) = eta_min + (value - eta_min) * (1 + cos(pi * t / T_max)) / 2

    This is exactly torch's ``CosineAnnealingLR._get_closed_form_lr``. torch's ``get_lr`` computes
    the same curve *recursively* (each lr from the previous one), which agrees with this formula
    up to accumulated rounding (about 1e-15 relative per step) and, unlike it, also follows any
    external change of the group's lr. Past ``T_max`` the formula, like torch, keeps going: the
    value rises back to ``value`` at ``2 * T_max`` (use :class:`Join` with :class:`Constant` to
    hold ``eta_min`` instead). At steps ``0, 2 T_max, ...`` the value is ``value`` exactly
    (the formula can be one ulp off there; torch's is).
    """

    value: float
    T_max: int
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        check_range("value", self.value)
        _check_int("T_max", self.T_max, low=1)
        check_range("eta_min", self.eta_min)

    def _eval(self, step: int) -> float:
        if step % (2 * self.T_max) == 0:
            return float(self.value)  # exact (the formula may round the last bit)
        return self.eta_min + (self.value - self.eta_min) * (
            1 + math.cos(math.pi * step / self.T_max)) / 2


cosine_annealing = CosineAnnealing


@dataclass(frozen=True)
class CosineWarmRestarts(Schedule):
    """SGDR, cosine annealing with warm restarts (Loshchilov & Hutter, ICLR 2017)::

        f(t) = eta_min + (value - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2

    where the i-th period lasts ``T_i = T_0 * T_mult ** i`` steps and ``T_cur`` counts the steps
    since the last restart; restarts (``f = value``) happen at ``T_0``, ``T_0 * (1 + T_mult)``,
    ``T_0 * (1 + T_mult + T_mult**2)``, ..., where the value is ``value`` exactly. Periods are
    computed exactly in integers; equal to torch's ``CosineAnnealingWarmRestarts`` at integer
    steps (to the last bit, except at restarts, where torch's formula may be one ulp off).
    """

    value: float
    T_0: int
    T_mult: int = 1
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        check_range("value", self.value)
        _check_int("T_0", self.T_0, low=1)
        _check_int("T_mult", self.T_mult, low=1)
        check_range("eta_min", self.eta_min)

    def period(self, step: int) -> tuple[int, int]:
        """``(T_cur, T_i)`` at ``step``."""
        if self.T_mult == 1:
            return step % self.T_0, self.T_0
        t_cur, t_i = step, self.T_0
        while t_cur >= t_i:
            t_cur -= t_i
            t_i *= self.T_mult
        return t_cur, t_i

    def _eval(self, step: int) -> float:
        t_cur, t_i = self.period(step)
        if t_cur == 0:
            return float(self.value)  # exact at every restart (the formula may round)
        return self.eta_min + (self.value - self.eta_min) * (
            1 + math.cos(math.pi * t_cur / t_i)) / 2


cosine_warm_restarts = CosineWarmRestarts


@dataclass(frozen=True)
class LinearWarmup(Schedule):
    """Linear warm-up in front of any schedule ``g``, with ``w = warmup_steps``::

        f(t) = g(0) * (start_factor + (1 - start_factor) * t / w)    for t < w
        f(t) = g(t - w)                                              for t >= w

    The base value ``g(0)`` is reached exactly at step ``w``, where ``g`` starts (shifted by
    ``w`` steps). Equals torch's ``SequentialLR([LinearLR(start_factor, total_iters=w), G],
    milestones=[w])``. ``warmup_steps = 0`` is ``g`` itself.
    """

    schedule_after: ScheduleLike
    warmup_steps: int
    start_factor: float = 0.0

    def __post_init__(self) -> None:
        _check_schedule("schedule_after", self.schedule_after)
        _check_int("warmup_steps", self.warmup_steps, low=0)
        check_range("start_factor", self.start_factor, low=0.0, high=1.0, high_open=False)

    def _eval(self, step: int) -> float:
        w = self.warmup_steps
        if step >= w:
            return float(self.schedule_after(step - w))
        sf = self.start_factor
        return float(self.schedule_after(0)) * (sf + (1.0 - sf) * step / w)


linear_warmup = LinearWarmup


@dataclass(frozen=True)
class ExponentialWarmup(Schedule):
    """Geometric (exponential) warm-up in front of any schedule ``g``, ``w = warmup_steps``::

        f(t) = g(0) * start_factor ** (1 - t / w)    for t < w
        f(t) = g(t - w)                              for t >= w

    Starts at ``start_factor * g(0)`` and multiplies by the same factor every step, reaching
    ``g(0)`` exactly at step ``w``. ``start_factor`` is in ``(0, 1]``.
    """

    schedule_after: ScheduleLike
    warmup_steps: int
    start_factor: float = 1e-3

    def __post_init__(self) -> None:
        _check_schedule("schedule_after", self.schedule_after)
        _check_int("warmup_steps", self.warmup_steps, low=0)
        check_range("start_factor", self.start_factor, low=0.0, high=1.0, low_open=True,
                    high_open=False)

    def _eval(self, step: int) -> float:
        w = self.warmup_steps
        if step >= w:
            return float(self.schedule_after(step - w))
        return float(self.schedule_after(0)) * self.start_factor ** (1.0 - step / w)


exponential_warmup = ExponentialWarmup


def warmup_cosine(value: float, warmup_steps: int, total_steps: int, *,
                  start_factor: float = 0.0, eta_min: float = 0.0) -> LinearWarmup:
    """Linear warm-up to ``value`` over ``warmup_steps``, then cosine annealing to ``eta_min`` at
    ``total_steps`` (the usual transformer recipe): ``LinearWarmup(CosineAnnealing(value,
    total_steps - warmup_steps, eta_min), warmup_steps, start_factor)``.

    ``warmup_steps`` must be shorter than ``total_steps``.
    """
    total = _check_int("total_steps", total_steps, low=1)
    w = _check_int("warmup_steps", warmup_steps, low=0)
    if w >= total:
        raise ValueError(f"warmup_steps must be < total_steps={total}, got {warmup_steps!r}")
    return LinearWarmup(CosineAnnealing(value, total - w, eta_min), w, start_factor)


@dataclass(frozen=True)
class OneCycle(Schedule):
    """The 1cycle policy (Smith & Topin, 2017, "Super-Convergence"), value for value torch's
    ``OneCycleLR`` (same phase boundaries, same float arithmetic).

    Starts at ``initial = max_value / div_factor``, anneals up to ``max_value`` until step
    ``pct_start * total_steps - 1``, then down to ``initial / final_div_factor`` at step
    ``total_steps - 1``; with ``three_phase`` it first anneals back to ``initial`` (until
    ``2 * pct_start * total_steps - 2``) and then to the minimum. ``anneal_strategy`` is ``'cos'``
    (``end + (start - end) * (1 + cos(pi * pct)) / 2``) or ``'linear'``. Like torch, step
    ``total_steps`` extrapolates the last phase by one step; later steps hold that value (torch
    raises there).
    """

    max_value: float
    total_steps: int
    pct_start: float = 0.3
    anneal_strategy: Literal["cos", "linear"] = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False

    def __post_init__(self) -> None:
        check_range("max_value", self.max_value)
        total = _check_int("total_steps", self.total_steps, low=2)
        check_range("pct_start", self.pct_start, low=0.0, high=1.0, low_open=True)
        if self.anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got "
                             f"{self.anneal_strategy!r}")
        check_range("div_factor", self.div_factor, low=0.0, low_open=True)
        check_range("final_div_factor", self.final_div_factor, low=0.0, low_open=True)
        # Every phase must span at least one step (torch divides by zero otherwise).
        up = self.pct_start * total
        if self.three_phase:
            ok = up > 1 and 2 * up - 2 < total - 1
            need = f"1 < pct_start * total_steps < (total_steps + 1) / 2 (the warm-up and the " \
                   f"symmetric cool-down must fit in total_steps={total})"
        else:
            ok = up > 1 and up - 1 < total - 1
            need = f"1 < pct_start * total_steps < total_steps (the warm-up must fit in " \
                   f"total_steps={total})"
        if not ok:
            raise ValueError(f"pct_start must satisfy {need}, got {self.pct_start!r}")

    def _phases(self) -> list[tuple[float, float, float]]:
        initial = self.max_value / self.div_factor
        low = initial / self.final_div_factor
        up = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            return [(up, initial, self.max_value),
                    (float(2 * self.pct_start * self.total_steps) - 2, self.max_value, initial),
                    (self.total_steps - 1, initial, low)]
        return [(up, initial, self.max_value), (self.total_steps - 1, self.max_value, low)]

    def _eval(self, step: int) -> float:
        step = min(step, self.total_steps)
        phases = self._phases()
        start_step = 0.0
        for i, (end_step, start, end) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                if self.anneal_strategy == "cos":
                    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (end - start) * pct + start
            start_step = end_step
        raise AssertionError("unreachable")  # pragma: no cover


one_cycle = OneCycle


@dataclass(frozen=True)
class Polynomial(Schedule):
    """Polynomial decay to ``end_value`` at ``total_steps``, constant after::

        f(t) = end_value + (value - end_value) * (1 - min(t, T) / T) ** power

    With ``end_value = 0`` this is torch's ``PolynomialLR`` (``total_iters = T``).
    """

    value: float
    total_steps: int
    power: float = 1.0
    end_value: float = 0.0

    def __post_init__(self) -> None:
        check_range("value", self.value)
        _check_int("total_steps", self.total_steps, low=1)
        check_range("power", self.power, low=0.0, low_open=True)
        check_range("end_value", self.end_value)

    def _eval(self, step: int) -> float:
        frac = 1.0 - min(self.total_steps, step) / self.total_steps
        return self.end_value + (self.value - self.end_value) * frac**self.power


polynomial = Polynomial


@dataclass(frozen=True)
class InverseSqrt(Schedule):
    """Inverse square-root decay after a linear warm-up (Vaswani et al., 2017; fairseq's
    ``inverse_sqrt``), with ``w = warmup_steps >= 1``::

        f(t) = value * t / w            for t < w
        f(t) = value * sqrt(w / t)      for t >= w

    It peaks at ``value`` at step ``w`` and then decays as ``1 / sqrt(t)``.
    """

    value: float
    warmup_steps: int

    def __post_init__(self) -> None:
        check_range("value", self.value)
        _check_int("warmup_steps", self.warmup_steps, low=1)

    def _eval(self, step: int) -> float:
        w = self.warmup_steps
        if step < w:
            return self.value * step / w
        return self.value * math.sqrt(w / step)


inverse_sqrt = InverseSqrt


@dataclass(frozen=True)
class Linear(Schedule):
    """Linear interpolation from ``start`` to ``end`` over ``steps``, constant after::

        f(t) = start + (end - start) * min(t, steps) / steps

    torch's ``LinearLR(start_factor, end_factor, total_iters)`` on base lr ``b`` is
    ``Linear(b * start_factor, b * end_factor, total_iters)``. ``steps = 0`` is ``end``.
    """

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        check_range("start", self.start)
        check_range("end", self.end)
        _check_int("steps", self.steps, low=0)

    def _eval(self, step: int) -> float:
        if step >= self.steps:
            return float(self.end)
        return self.start + (self.end - self.start) * step / self.steps


linear = Linear


@dataclass(frozen=True)
class Join(Schedule):
    """Schedules one after another: with boundaries ``b_1 < ... < b_{n-1}`` (``b_0 = 0``),

        f(t) = schedules[i](t - b_i)    for b_i <= t < b_{i+1}

    Each schedule starts counting from 0 at its boundary, as torch's ``SequentialLR`` (and optax's
    ``join_schedules``) do. ``len(boundaries) == len(schedules) - 1``, strictly increasing
    positive integers.
    """

    schedules: Sequence[ScheduleLike]
    boundaries: Sequence[int]

    def __post_init__(self) -> None:
        if not isinstance(self.schedules, Sequence) or not self.schedules:
            raise ValueError(f"schedules must be a non-empty sequence of schedules, got "
                             f"{self.schedules!r}")
        for i, s in enumerate(self.schedules):
            _check_schedule(f"schedules[{i}]", s)
        if not isinstance(self.boundaries, Sequence):
            raise ValueError(f"boundaries must be a sequence of integers, got "
                             f"{self.boundaries!r}")
        bs = tuple(_check_int("boundaries", b, low=1) for b in self.boundaries)
        if len(bs) != len(self.schedules) - 1:
            raise ValueError(f"boundaries must have len(schedules) - 1 = "
                             f"{len(self.schedules) - 1} entries, got {len(bs)}")
        if any(b <= a for a, b in pairwise(bs)):
            raise ValueError(f"boundaries must be strictly increasing, got {bs!r}")
        _set(self, "schedules", tuple(self.schedules))
        _set(self, "boundaries", bs)

    def _eval(self, step: int) -> float:
        i = bisect_right(self.boundaries, step)
        offset = self.boundaries[i - 1] if i else 0
        return float(self.schedules[i](step - offset))


join = Join


# --------------------------------------------------------------------------- schedulers


def _per_group(schedule: ScheduleLike | Sequence[ScheduleLike], n: int) -> list[ScheduleLike]:
    if isinstance(schedule, Sequence) and not callable(schedule):
        if len(schedule) != n:
            raise ValueError(f"schedule: expected one schedule per param group ({n}), got "
                             f"{len(schedule)}")
        for i, s in enumerate(schedule):
            _check_schedule(f"schedule[{i}]", s)
        return list(schedule)
    _check_schedule("schedule", schedule)
    return [schedule] * n


def _check_last_epoch(last_epoch: Any) -> int:
    return _check_int("last_epoch", last_epoch, low=-1)


class ScheduledLR(LRScheduler):
    """Set every group's ``lr`` to ``schedule(step)``; a ``torch.optim`` LR scheduler.

    ``schedule`` is one schedule, whose value every group gets, or a list with one schedule per
    param group (use a list for groups with different learning rates: schedules give values, not
    multipliers, so the optimizer's own ``lr`` is not used). Works with any
    :class:`torch.optim.Optimizer`, torch's included, and has the usual API: :meth:`step` after
    ``optimizer.step()``, :meth:`get_last_lr`, ``last_epoch`` and
    :meth:`state_dict`/:meth:`load_state_dict`.

    Resuming: save ``optimizer.state_dict()`` and ``scheduler.state_dict()`` and load both into
    fresh objects, or construct with ``last_epoch=k`` (the last step taken) to continue at step
    ``k + 1``; unlike torch's schedulers this needs no ``initial_lr`` in the groups. The state dict
    holds plain numbers only (it loads under ``torch.load(weights_only=True)``); the schedules
    are configuration, passed again to the constructor, and are not in it.
    """

    def __init__(self, optimizer: Optimizer, schedule: ScheduleLike | Sequence[ScheduleLike],
                 last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.schedules = _per_group(schedule, len(optimizer.param_groups))
        last_epoch = _check_last_epoch(last_epoch)
        added = [g for g in optimizer.param_groups if "initial_lr" not in g]
        for group in added:  # torch's base class needs it to resume
            group["initial_lr"] = group["lr"]
        try:
            super().__init__(optimizer, last_epoch)  # sets the first learning rates
        except ValueError:
            for group in added:
                del group["initial_lr"]
            raise

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """The values at ``last_epoch``, one per group.

        Raises ``ValueError`` (before any group changes) if a schedule gives a value that is
        not a learning rate: negative, inf or NaN.
        """
        if len(self.schedules) != len(self.optimizer.param_groups):
            raise ValueError(f"schedule: {len(self.schedules)} schedules for "
                             f"{len(self.optimizer.param_groups)} param groups")
        values = [float(s(self.last_epoch)) for s in self.schedules]
        for i, v in enumerate(values):
            if not (math.isfinite(v) and v >= 0):
                which = "schedule" if len(self.schedules) == 1 else f"schedule[{i}]"
                raise ValueError(f"{which} gives lr = {v!r} at step {self.last_epoch}: a "
                                 "learning rate must be a finite number >= 0")
        return values

    def step(self, epoch: int | None = None) -> None:
        """Advance one step (torch's ``LRScheduler.step``); a refused value (see
        :meth:`get_lr`) leaves the scheduler and the groups as they were."""
        last, count = self.last_epoch, self._step_count
        try:
            super().step(epoch)
        except ValueError:
            self.last_epoch, self._step_count = last, count
            raise

    _get_closed_form_lr = get_lr  # schedules are closed forms: step(epoch) is exact too

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's progress as plain numbers (schedules are not saved: pass them again)."""
        state = super().state_dict()
        state.pop("schedules", None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore progress saved by :meth:`state_dict`."""
        state = {k: v for k, v in state_dict.items() if k != "schedules"}
        super().load_state_dict(state)


def _read(group: Mapping[str, Any], key: str, index: int | None) -> Any:
    value = group[key]
    return value if index is None else value[index]


def _write(group: dict[str, Any], key: str, index: int | None, value: float) -> None:
    old = group[key]
    if index is None:
        if isinstance(old, Tensor):
            old.fill_(value)
        else:
            group[key] = value
        return
    elem = old[index]
    if isinstance(elem, Tensor):
        elem.fill_(value)
        return
    new = list(old)
    new[index] = value
    group[key] = tuple(new) if isinstance(old, tuple) else new


def _check_key(optimizer: Optimizer, key: Any, index: Any) -> int | None:
    """Validate that every group has hyperparameter ``key`` (element ``index`` of it if given)."""
    if not isinstance(key, str) or key == "params":
        raise ValueError(f"key must be the name of a hyperparameter, got {key!r}")
    for i, group in enumerate(optimizer.param_groups):
        if key not in group:
            avail = ", ".join(sorted(k for k in group if k != "params"))
            raise ValueError(f"key {key!r} is not a hyperparameter of param_groups[{i}]; "
                             f"available keys: {avail}")
        value = group[key]
        if isinstance(value, (tuple, list)):
            if index is None:
                raise ValueError(f"key {key!r} holds a sequence {value!r}; pass index= to choose "
                                 f"the element to schedule")
            if isinstance(index, bool) or not isinstance(index, int) \
                    or not 0 <= index < len(value):
                raise ValueError(f"index must be an integer in [0, {len(value)}) for key "
                                 f"{key!r}, got {index!r}")
            value = value[index]
        elif index is not None:
            raise ValueError(f"index must be None: key {key!r} holds a single value "
                             f"{value!r}, not a sequence")
        if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
            raise ValueError(f"key {key!r} must hold a number to be scheduled, got {value!r}")
    return index


class ScheduledHyperparameter:
    """Set a per-group hyperparameter ``group[key]`` to ``schedule(step)``.

    Drives any key an optimizer reads at each step (``momentum``, ``weight_decay``, ``eps``,
    ``rho``, ...), or, with ``index``, one element of a tuple key (``key='betas', index=0`` for
    Adam's beta1; the tuple is replaced, other elements kept). ``schedule`` is one schedule for all
    groups or a list with one per group. Same API as :class:`ScheduledLR`: :meth:`step` after
    ``optimizer.step()``, ``last_epoch`` (resume at ``last_epoch + 1``), :meth:`get_last_value`,
    and :meth:`state_dict`/:meth:`load_state_dict` (plain numbers; the optimizer's own state dict
    carries the group values). A key missing from a group raises ``ValueError`` listing the
    group's keys.
    """

    def __init__(self, optimizer: Optimizer, key: str,
                 schedule: ScheduleLike | Sequence[ScheduleLike], index: int | None = None,
                 last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        self.key = key
        self.index = _check_key(optimizer, key, index)
        self.schedules = _per_group(schedule, len(optimizer.param_groups))
        self.last_epoch = _check_last_epoch(last_epoch)
        self._step_count = 0
        self._last_values: list[float] = []
        self.step()

    def get_value(self) -> list[float]:
        """The values at ``last_epoch``, one per group."""
        if len(self.schedules) != len(self.optimizer.param_groups):
            raise ValueError(f"schedule: {len(self.schedules)} schedules for "
                             f"{len(self.optimizer.param_groups)} param groups")
        return [float(s(self.last_epoch)) for s in self.schedules]

    def step(self) -> None:
        """Advance one step and write the new values into the groups.

        Every value is checked first: it must be finite, and, for optimlab's optimizers, pass
        the checks the optimizer makes of that hyperparameter (``momentum`` in ``[0, 1]``, ...).
        A refused value raises ``ValueError`` naming the group and the step, and leaves the
        scheduler and the groups as they were.
        """
        self.last_epoch += 1
        try:
            values = self.get_value()
            self._check_values(values)
        except ValueError:
            self.last_epoch -= 1
            raise
        self._step_count += 1
        for group, v in zip(self.optimizer.param_groups, values):
            _write(group, self.key, self.index, v)
        self._last_values = values

    def _check_values(self, values: list[float]) -> None:
        validate = getattr(self.optimizer, "_validate_settings", None)  # optimlab's optimizers
        for i, (group, v) in enumerate(zip(self.optimizer.param_groups, values)):
            name = self.key if self.index is None else f"{self.key}[{self.index}]"
            if not math.isfinite(v):
                raise ValueError(f"schedule gives {name} = {v!r} for param group {i} at step "
                                 f"{self.last_epoch}: a hyperparameter must be finite")
            if validate is None:
                continue
            candidate = dict(group)
            if self.index is None:
                candidate[self.key] = v
            else:
                elems = list(group[self.key])
                elems[self.index] = v
                candidate[self.key] = type(group[self.key])(elems)
            try:
                validate(candidate)
            except ValueError as e:
                raise ValueError(f"schedule gives {name} = {v!r} for param group {i} at step "
                                 f"{self.last_epoch}, which the optimizer refuses: {e}") from None

    def get_last_value(self) -> list[float]:
        """The values most recently written, one per group."""
        return list(self._last_values)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's progress as plain numbers (schedules are not saved: pass them again)."""
        return {"key": self.key, "index": self.index, "last_epoch": self.last_epoch,
                "_step_count": self._step_count, "_last_values": list(self._last_values)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore progress saved by :meth:`state_dict`."""
        if state_dict.get("key", self.key) != self.key or \
                state_dict.get("index", self.index) != self.index:
            raise ValueError(f"state_dict is for key={state_dict.get('key')!r}, index="
                             f"{state_dict.get('index')!r}, not key={self.key!r}, "
                             f"index={self.index!r}")
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", 0))
        self._last_values = list(state_dict.get("_last_values", []))


class ReduceOnPlateau:
    """Multiply ``group[key]`` by ``factor`` when a metric stops improving.

    torch's ``ReduceLROnPlateau`` rule, for any key (``key='lr'`` gives torch's values exactly):
    after each :meth:`step(metric) <step>`, if the metric has not improved on the best one by
    ``threshold`` (relative ``best * (1 -+ threshold)`` or absolute ``best -+ threshold``, per
    ``mode``) for more than ``patience`` steps, every group's value becomes
    ``max(value * factor, min_value)`` (changes smaller than ``eps`` are skipped), followed by
    ``cooldown`` steps in which bad steps are not counted. ``index`` picks an element of a tuple
    key, as in :class:`ScheduledHyperparameter`.
    """

    def __init__(self, optimizer: Optimizer, key: str = "lr", index: int | None = None, *,
                 mode: Literal["min", "max"] = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: Literal["rel", "abs"] = "rel",
                 cooldown: int = 0, min_value: float | Sequence[float] = 0.0,
                 eps: float = 1e-8) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        self.key = key
        self.index = _check_key(optimizer, key, index)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        check_range("factor", factor, low=0.0, high=1.0, low_open=True)
        check_range("threshold", threshold, low=0.0)
        check_range("eps", eps, low=0.0)
        n = len(optimizer.param_groups)
        if isinstance(min_value, Sequence):
            if len(min_value) != n:
                raise ValueError(f"min_value: expected one per param group ({n}), got "
                                 f"{len(min_value)}")
            mins = [float(m) for m in min_value]
        else:
            check_range("min_value", min_value)
            mins = [float(min_value)] * n
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor, self.threshold, self.eps = float(factor), float(threshold), float(eps)
        self.patience = _check_int("patience", patience, low=0)
        self.cooldown = _check_int("cooldown", cooldown, low=0)
        self.min_values = mins
        self.last_epoch = 0
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self._last_values = [float(_read(g, key, self.index)) for g in optimizer.param_groups]

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                        else best - self.threshold)
        return a > (best * (1.0 + self.threshold) if self.threshold_mode == "rel"
                    else best + self.threshold)

    def step(self, metric: float | Tensor) -> None:
        """Record ``metric`` (a number or one-element tensor) and reduce if it has plateaued."""
        current = float(metric)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, low in zip(self.optimizer.param_groups, self.min_values):
                old = float(_read(group, self.key, self.index))
                new = max(old * self.factor, low)
                if old - new > self.eps:
                    _write(group, self.key, self.index, new)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_values = [float(_read(g, self.key, self.index))
                             for g in self.optimizer.param_groups]

    def get_last_value(self) -> list[float]:
        """The values after the last step, one per group."""
        return list(self._last_values)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's progress as plain numbers (schedules are not saved: pass them again)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore progress saved by :meth:`state_dict`."""
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "optimizer"})
