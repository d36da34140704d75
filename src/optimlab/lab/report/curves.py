"""Curves and sweeps: one run's metric series, the mean and band over seeds, and the groups
of arms that differ only in the learning rate or the batch size."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .records import _short, canonical, info_of, json_safe, num
from .stats import ArmStats, by_task

__all__ = ["SweepLine", "mean_band", "run_series", "sweeps"]

NAN = math.nan


# ----------------------------------------------------------------------------- curves


def run_series(rec: Mapping[str, Any], metric: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(steps, times, values)`` of ``metric`` for one run, or ``None`` when absent.

    ``train_loss`` comes from the mini-batch ``curve`` (the evaluations when there is no
    curve); every other metric from ``evals``. Missing times are NaN.
    """
    sources = []
    if metric == "train_loss":
        curve = rec.get("curve") if isinstance(rec.get("curve"), dict) else {}
        sources.append((curve.get("step"), curve.get("time"), curve.get("train_loss")))
    evals = rec.get("evals") if isinstance(rec.get("evals"), dict) else {}
    metrics = evals.get("metrics") if isinstance(evals.get("metrics"), dict) else {}
    sources.append((evals.get("step"), evals.get("time"), metrics.get(metric)))
    for steps, times, values in sources:
        if not steps or not values:
            continue
        n = min(len(steps), len(values))
        s = np.asarray([num(v) for v in steps[:n]], dtype=float)
        y = np.asarray([num(v) for v in values[:n]], dtype=float)
        t = np.full(n, NAN)
        if times:
            tt = np.asarray([num(v) for v in times[:n]], dtype=float)
            t[:len(tt)] = tt
        if n:
            return s, t, y
    return None


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


@dataclass
class SweepLine:
    """Arms of one task that differ only in one setting (``lr`` or ``batch_size``).

    Attributes:
        task: task id.
        optimizer: the arms' optimizer.
        name: the line's legend text (the optimizer, plus what distinguishes it from other
            lines of the same optimizer on this task).
        xs: the swept values (``batch_size="full"`` as the task's ``n_train``), increasing.
        xlabels: the swept values as text (``"full"`` kept).
        arms: the arms' statistics, aligned with ``xs``.
    """

    task: str
    optimizer: str
    name: str
    xs: list[float]
    xlabels: list[str]
    arms: list[ArmStats]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _sweep_x(s: ArmStats, vary: str) -> tuple[float, str] | None:
    cfg = s.config
    if vary == "lr":
        hp = cfg.get("hyperparams") if isinstance(cfg.get("hyperparams"), dict) else {}
        x = num(hp.get("lr"))
        return (x, f"{x:g}") if math.isfinite(x) and x > 0 else None
    bs = cfg.get("batch_size")
    if bs == "full" or bs is None:
        n = num(next((info_of(r).get("n_train") for r in s.records
                      if info_of(r).get("n_train") is not None), None))
        return (n, "full") if math.isfinite(n) and n > 0 else None
    x = num(bs)
    return (x, f"{x:g}") if math.isfinite(x) and x > 0 else None


def _without(cfg: Mapping[str, Any], vary: str) -> dict[str, Any]:
    cfg = json_safe(cfg)
    cfg.pop("seed", None)
    if vary == "lr":
        hp = dict(cfg.get("hyperparams") or {})
        hp.pop("lr", None)
        cfg["hyperparams"] = hp
    else:
        cfg.pop("batch_size", None)
    return cfg


def sweeps(stats: Mapping[tuple[str, str], ArmStats], vary: str) -> dict[str, list[SweepLine]]:
    """Per task, the groups of arms that differ only in ``vary`` (``"lr"`` =
    ``config.hyperparams.lr``, or ``"batch_size"``) and take at least two distinct values."""
    if vary not in ("lr", "batch_size"):
        raise ValueError(f"vary must be 'lr' or 'batch_size', got {vary!r}")
    out: dict[str, list[SweepLine]] = {}
    for task, arms in by_task(stats).items():
        groups: dict[str, list[tuple[float, str, ArmStats]]] = {}
        rest: dict[str, dict[str, Any]] = {}
        for s in arms:
            x = _sweep_x(s, vary)
            if x is None:
                continue
            rest_cfg = _without(s.config, vary)
            key = canonical(rest_cfg)
            rest[key] = rest_cfg
            if all(x[0] != other[0] for other in groups.get(key, [])):
                groups.setdefault(key, []).append((x[0], x[1], s))
        lines = []
        for key, members in groups.items():
            if len(members) < 2:
                continue
            members.sort(key=lambda m: m[0])
            lines.append((key, SweepLine(task, str(rest[key].get("optimizer", "?")), "",
                                         [m[0] for m in members], [m[1] for m in members],
                                         [m[2] for m in members])))
        for key, line in lines:
            same = [rest[k] for k, other in lines if other.optimizer == line.optimizer]
            flat = [_flatten(c) for c in same]
            mine = _flatten(rest[key])
            keys = sorted({k for f in flat for k in f})
            differs = [k for k in keys if len({canonical(f.get(k)) for f in flat}) > 1]
            desc = " ".join(f"{k.rsplit('.', 1)[-1]}={_short(mine.get(k))}" for k in differs)
            line.name = f"{line.optimizer} {desc}".strip()
        if lines:
            out[task] = [line for _, line in lines]
    return out
