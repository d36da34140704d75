"""Curves and sweeps: one run's metric or recorded series, the mean and band over seeds, and
the groups of arms that differ only in one setting (any hyperparameter, the schedule, the
batch size, clipping, lr scaling).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..schema import RunRecord, json_safe
from .stats import ArmStats, by_task

__all__ = [
    "SETTINGS",
    "SweepLine",
    "mean_band",
    "run_series",
    "series_of",
    "sweeps",
    "swept_settings",
    "trajectory_steps",
    "work_series",
]

NAN = math.nan


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([NAN if v is None else float(v) for v in values], dtype=float)


# ----------------------------------------------------------------------------- curves


def run_series(rec: RunRecord, metric: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(steps, times, values)`` of ``metric`` for one run, or ``None`` when absent.

    Every metric comes from the evaluations (``evals``: the values the target and the settled
    step refer to); ``train_loss`` falls back to the mini-batch ``curve`` when the run did not
    evaluate it. Missing times are NaN.
    """
    sources = [(rec.evals.get("step"), rec.evals.get("time"),
                rec.evals.get("metrics", {}).get(metric))]
    if metric == "train_loss":
        sources.append((rec.curve.get("step"), rec.curve.get("time"),
                        rec.curve.get("train_loss")))
    for steps, times, values in sources:
        if not steps or not values:
            continue
        n = min(len(steps), len(values))
        t = np.full(n, NAN)
        if times:
            tt = _floats(times[:n])
            t[:len(tt)] = tt
        return _floats(steps[:n]), t, _floats(values[:n])
    return None


def work_series(rec: RunRecord, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(work, values)`` of ``metric`` at the evaluations: the work done by each evaluated
    step in gradient evaluations (``evals["grad_evals"]``, see :mod:`optimlab.lab.work`), or
    ``None`` when the run did not evaluate ``metric``."""
    work = rec.evals.get("grad_evals")
    values = rec.evals.get("metrics", {}).get(metric)
    if not work or not values:
        return None
    n = min(len(work), len(values))
    return _floats(work[:n]), _floats(values[:n])


def series_of(rec: RunRecord, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(steps, values)`` of the recorded series ``name`` (``rec.series``), or ``None``."""
    s = rec.series.get(name)
    if not s or not s.get("step") or not s.get("value"):
        return None
    n = min(len(s["step"]), len(s["value"]))
    return _floats(s["step"][:n]), _floats(s["value"][:n])


def trajectory_steps(rec: RunRecord) -> np.ndarray | None:
    """The step after which each point of ``rec.trajectory`` was recorded, or ``None``.

    The runner records the start (step 0) and then every ``k``-th step with
    ``k = ceil(config.steps / 2000)`` plus the last step
    (:func:`optimlab.lab.runs.execute`), so point ``i`` is step ``min(i * k, steps_done)``.
    """
    if not rec.trajectory:
        return None
    planned = rec.config.steps or rec.steps_done
    k = max(1, math.ceil(planned / 2000)) if planned else 1
    steps = np.arange(len(rec.trajectory), dtype=float) * k
    return np.minimum(steps, max(rec.steps_done, 0))


def mean_band(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], n_grid: int = 200
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean and min-max band of several curves ``ys[i]`` against ``xs[i]``.

    Curves on one shared x grid are averaged as they are (subsampled to about ``n_grid``
    points); others are linearly interpolated onto a common grid, each only within its own x
    range. Non-finite points are dropped first. Returns ``(x, mean, lo, hi)`` or ``None`` when
    no curve has a finite point.
    """
    pairs = []
    for x, y in zip(xs, ys):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        keep = np.isfinite(x) & np.isfinite(y)
        if keep.any():
            order = np.argsort(x[keep], kind="stable")
            pairs.append((x[keep][order], y[keep][order]))
    if not pairs:
        return None
    same = all(len(p[0]) == len(pairs[0][0]) and np.array_equal(p[0], pairs[0][0])
               for p in pairs)
    if same:
        grid = pairs[0][0]
        idx = (np.unique(np.linspace(0, len(grid) - 1, n_grid).round().astype(int))
               if len(grid) > 2 * n_grid else np.arange(len(grid)))
        grid = grid[idx]
        stack = np.stack([p[1][idx] for p in pairs])
    else:
        lo_x = min(p[0][0] for p in pairs)
        hi_x = max(p[0][-1] for p in pairs)
        union = np.unique(np.concatenate([p[0] for p in pairs]))
        grid = union if len(union) <= 2 * n_grid else np.linspace(lo_x, hi_x, n_grid)
        stack = np.full((len(pairs), len(grid)), NAN)
        for i, (x, y) in enumerate(pairs):
            inside = (grid >= x[0]) & (grid <= x[-1])
            stack[i, inside] = np.interp(grid[inside], x, y)
    masked = np.ma.masked_invalid(stack)
    mean = np.ma.filled(masked.mean(axis=0), NAN)
    lo = np.ma.filled(masked.min(axis=0), NAN)
    hi = np.ma.filled(masked.max(axis=0), NAN)
    return grid, np.asarray(mean, float), np.asarray(lo, float), np.asarray(hi, float)


# ----------------------------------------------------------------------------- sweeps

#: Config fields (besides every hyperparameter) whose sweeps get a sensitivity view.
SETTINGS = ("schedule", "batch_size", "clip_norm", "clip_value", "lr_scaling",
            "base_batch_size")
#: Short names used in line names and axis labels.
_SHORT = {"batch_size": "batch size", "clip_norm": "clip norm", "clip_value": "clip value",
          "lr_scaling": "lr scaling", "base_batch_size": "base batch size",
          "lr": "learning rate", "weight_decay": "weight decay"}


def _value(s: ArmStats, setting: str) -> Any:
    """The arm's value of ``setting`` (``"lr"``, another hyperparameter or a config field);
    a missing hyperparameter reads as ``None``."""
    cfg = s.records[0].config
    if setting in SETTINGS:
        return getattr(cfg, setting)
    return cfg.hyperparams.get(setting)


def _rest(s: ArmStats, setting: str) -> dict[str, Any]:
    """The arm's config without its seed and without ``setting``."""
    d = json_safe(s.records[0].config.to_dict())
    d.pop("seed", None)
    for budget in ("steps", "seconds"):  # derived budgets differ with the batch size
        if setting == "batch_size":
            d.pop(budget, None)
    if setting in SETTINGS:
        d.pop(setting, None)
    else:
        hp = dict(d.get("hyperparams") or {})
        hp.pop(setting, None)
        d["hyperparams"] = hp
    return d


def _canonical(obj: Any) -> str:
    return json.dumps(json_safe(obj), sort_keys=True, separators=(",", ":"))


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_text(v) for v in value) + ")"
    return str(value)


@dataclass
class SweepLine:
    """Arms of one task that differ only in one setting.

    Attributes:
        task: task id.
        optimizer: the arms' optimizer.
        setting: the swept setting (``"lr"``, ``"weight_decay"``, ``"betas"``,
            ``"schedule"``, ``"batch_size"``, ...).
        name: the line's legend text (the optimizer, plus what distinguishes it from other
            lines of the same optimizer on this task).
        xs: the swept values as positions on the x axis, increasing (``batch_size="full"``
            as the task's ``n_train``; categories as 0, 1, 2, ...; ``1 - value`` for
            momentum-like values near 1, see ``scale``).
        xlabels: the swept values as text (``"full"`` kept).
        arms: the arms' statistics, aligned with ``xs``.
        scale: ``"log"``, ``"linear"`` or ``"category"``.
        axis: the x axis label.
        values: the swept values as given, aligned with ``xs``.
    """

    task: str
    optimizer: str
    setting: str
    name: str
    xs: list[float]
    xlabels: list[str]
    arms: list[ArmStats]
    scale: str = "log"
    axis: str = ""
    values: list[Any] = field(default_factory=list)

    @property
    def numeric(self) -> bool:
        """Whether the swept values are numbers (so the grid has edges)."""
        return self.scale != "category"


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _axis(setting: str, values: list[Any], n_train: float) -> tuple[list[float], str, str,
                                                                     list[str]]:
    """Positions, scale and axis label of swept ``values`` (see :class:`SweepLine`)."""
    name = _SHORT.get(setting, setting)
    labels = [_text(v) for v in values]
    if setting == "batch_size":
        xs = [n_train if v == "full" else _number(v) for v in values]
        if all(x is not None and x > 0 for x in xs):
            return [float(x) for x in xs], "log", name, labels
    nums = [_number(v) for v in values]
    if all(x is not None for x in nums):
        xs = [float(x) for x in nums]  # type: ignore[arg-type]
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            return xs, "log", name, labels
        if min(xs) >= 0.5 and max(xs) < 1 and (1 - min(xs)) / (1 - max(xs)) >= 10:
            return [1 - x for x in xs], "log", f"{name} (axis: 1 − {name}, log)", labels
        return xs, "linear", name, labels
    if all(isinstance(v, (list, tuple)) for v in values) and len({len(v) for v in values}) == 1:
        varying = [i for i in range(len(values[0])) if len({_text(v[i]) for v in values}) > 1]
        if len(varying) == 1:  # e.g. betas with only beta1 swept
            i = varying[0]
            xs, scale, label, _ = _axis(f"{setting}[{i}]", [v[i] for v in values], n_train)
            return xs, scale, label, labels
    return [float(i) for i in range(len(values))], "category", name, labels


def swept_settings(stats: Mapping[tuple[str, str], ArmStats]) -> dict[str, list[str]]:
    """Per task, the settings (hyperparameter names and :data:`SETTINGS`) that some arms of
    one optimizer differ in alone, ``lr`` first."""
    out: dict[str, list[str]] = {}
    for task, arms in by_task(stats).items():
        names: list[str] = []
        for s in arms:
            names += [k for k in s.records[0].config.hyperparams if k not in names]
        found = [n for n in [*sorted(names, key=lambda k: (k != "lr", k)), *SETTINGS]
                 if _lines(task, arms, n)]
        if found:
            out[task] = found
    return out


def _lines(task: str, arms: Sequence[ArmStats], setting: str) -> list[SweepLine]:
    groups: dict[str, list[tuple[str, Any, ArmStats]]] = {}
    rest: dict[str, dict[str, Any]] = {}
    for s in arms:
        value = _value(s, setting)
        if value is None and setting not in SETTINGS:
            continue
        r = _rest(s, setting)
        key = _canonical(r)
        rest[key] = r
        members = groups.setdefault(key, [])
        text = _canonical(value)
        if all(text != m[0] for m in members):
            members.append((text, value, s))
    n_train = float(next((s.records[0].task_info.n_train for s in arms), 1))
    swept = {k: m for k, m in groups.items() if len(m) >= 2}
    # one x axis for every line of this setting on the task (scale chosen on all values)
    every = list({m[0]: m[1] for ms in swept.values() for m in ms}.items())
    if not every:
        return []
    all_xs, scale, axis, all_labels = _axis(setting, [v for _, v in every], n_train)
    if scale == "category":  # categories in alphabetical order, shared positions
        names = sorted(set(all_labels))
        all_xs = [float(names.index(lb)) for lb in all_labels]
    position = {text: (x, lb) for (text, _), x, lb in zip(every, all_xs, all_labels)}
    lines = []
    for key, members in swept.items():
        order = sorted(range(len(members)), key=lambda i: position[members[i][0]][0])
        line = SweepLine(task, str(rest[key].get("optimizer", "?")), setting, "",
                         [position[members[i][0]][0] for i in order],
                         [position[members[i][0]][1] for i in order],
                         [members[i][2] for i in order], scale, axis,
                         [members[i][1] for i in order])
        lines.append((key, line))
    for key, line in lines:  # name a line by what sets it apart from its optimizer's others
        same = [_flatten(rest[k]) for k, other in lines if other.optimizer == line.optimizer]
        mine = _flatten(rest[key])
        keys = sorted({k for f in same for k in f})
        differs = [k for k in keys if len({_canonical(f.get(k)) for f in same}) > 1]
        desc = " ".join(f"{k.rsplit('.', 1)[-1]}={_text(mine.get(k))}" for k in differs)
        line.name = f"{line.optimizer} {desc}".strip()
    return [line for _, line in lines]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def sweeps(stats: Mapping[tuple[str, str], ArmStats], vary: str) -> dict[str, list[SweepLine]]:
    """Per task, the groups of arms of one optimizer that differ only in ``vary`` (a
    hyperparameter name such as ``"lr"`` or ``"weight_decay"``, or one of :data:`SETTINGS`)
    and take at least two distinct values; a line's arms are ordered along the x axis."""
    out: dict[str, list[SweepLine]] = {}
    for task, arms in by_task(stats).items():
        lines = _lines(task, arms, vary)
        if lines:
            out[task] = lines
    return out
