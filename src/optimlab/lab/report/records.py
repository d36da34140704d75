"""Reading run records defensively: field access with defaults, task ids, strict-JSON values.

A *record* is the dict the runner writes for one run (see :mod:`optimlab.lab.report`); any
field may be missing, ``None`` or non-finite, and every accessor here tolerates that.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["arm_of", "canonical", "config", "final_of", "info_of", "json_safe", "num",
           "seed_of", "status_of", "task_ids"]

NAN = math.nan


# ----------------------------------------------------------------------------- record access


def num(value: Any) -> float:
    """``value`` as a float; NaN for ``None``, booleans and anything non-numeric."""
    if value is None or isinstance(value, bool):
        return NAN
    try:
        return float(value)
    except (TypeError, ValueError):
        return NAN


def config(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The record's ``config`` (an empty dict when missing)."""
    cfg = rec.get("config")
    return cfg if isinstance(cfg, dict) else {}


def arm_of(rec: Mapping[str, Any]) -> str:
    """The record's arm: its ``label`` (the optimizer name when there is no label)."""
    label = rec.get("label")
    if label is None or label == "":
        label = config(rec).get("optimizer", "?")
    return str(label)


def status_of(rec: Mapping[str, Any]) -> str:
    """``"ok"``, ``"diverged"``, ``"failed"`` (a missing status counts as failed)."""
    status = rec.get("status")
    return str(status) if status else "failed"


def seed_of(rec: Mapping[str, Any]) -> Any:
    """The record's seed (``None`` when missing)."""
    return config(rec).get("seed")


def info_of(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The record's ``task_info`` (an empty dict when missing)."""
    info = rec.get("task_info")
    return info if isinstance(info, dict) else {}


def final_of(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The record's ``final`` metrics (an empty dict when missing)."""
    final = rec.get("final")
    return final if isinstance(final, dict) else {}


def json_safe(obj: Any) -> Any:
    """A strict-JSON-able copy of ``obj``: NaN/inf become ``None``, numpy values become Python
    values, tuples become lists, mapping keys become strings, unknown objects their ``str``."""
    t = type(obj)
    if t is float:
        return obj if obj - obj == 0 else None  # inf - inf and nan - nan are nan
    if obj is None or t is int or t is str or t is bool:
        return obj
    if t is list or t is tuple:
        out = []
        for v in obj:  # inlined scalar cases: curves are long lists of floats
            tv = type(v)
            if tv is float:
                out.append(v if v - v == 0 else None)
            elif tv is int or tv is str or v is None:
                out.append(v)
            else:
                out.append(json_safe(v))
        return out
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    return str(obj)


def canonical(obj: Any) -> str:
    """Canonical compact JSON of ``obj`` (sorted keys), for grouping by configuration."""
    return json.dumps(json_safe(obj), sort_keys=True, separators=(",", ":"))


def _short(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(json_safe(value), separators=(",", ":"))


def task_ids(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The task of each record: ``config.task``, plus its options (``name k=v ...``) when
    records of that task name were run with different ``task_options``."""
    options: dict[str, set[str]] = {}
    for rec in records:
        cfg = config(rec)
        options.setdefault(str(cfg.get("task", "?")), set()).add(
            canonical(cfg.get("task_options") or {}))
    ids = []
    for rec in records:
        cfg = config(rec)
        name = str(cfg.get("task", "?"))
        opts = cfg.get("task_options") or {}
        if len(options[name]) > 1 and isinstance(opts, dict) and opts:
            name += " " + " ".join(f"{k}={_short(v)}" for k, v in sorted(opts.items()))
        ids.append(name)
    return ids
