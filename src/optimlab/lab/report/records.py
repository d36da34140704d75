"""What the report needs beyond a record's attributes: typed records from stored dicts, the arm
and task id of a record, numbers from anything, canonical JSON for grouping.

Records are :class:`~optimlab.lab.schema.RunRecord` objects, read by attribute; this module
holds only what a single attribute does not say.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..schema import RunRecord, json_safe

__all__ = ["arm_of", "as_records", "canonical", "json_safe", "num", "short", "task_ids"]

NAN = math.nan


def as_records(records: Sequence[RunRecord | Mapping[str, Any]]) -> list[RunRecord]:
    """``records`` as :class:`RunRecord` objects: stored dicts (any schema version) are read
    with :meth:`RunRecord.from_dict`, which raises ``SchemaError`` naming a malformed field."""
    return [r if isinstance(r, RunRecord) else RunRecord.from_dict(r) for r in records]


def num(value: Any) -> float:
    """``value`` as a float; NaN for ``None``, booleans and anything non-numeric."""
    if value is None or isinstance(value, bool):
        return NAN
    try:
        return float(value)
    except (TypeError, ValueError):
        return NAN


def arm_of(rec: RunRecord) -> str:
    """The record's arm: its ``label`` (the optimizer name when there is no label)."""
    return rec.label if rec.label else rec.optimizer


def canonical(obj: Any) -> str:
    """Canonical compact JSON of ``obj`` (sorted keys), for grouping by configuration."""
    return json.dumps(json_safe(obj), sort_keys=True, separators=(",", ":"))


def short(value: Any) -> str:
    """A compact text form of an option value: strings as they are, floats in 6 significant
    digits, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(json_safe(value), separators=(",", ":"))


_short = short  # the name the report's modules imported before


def task_ids(records: Sequence[RunRecord]) -> list[str]:
    """The task of each record: its task name, plus its options (``name k=v ...``) when records
    of that task name were run with different ``task_options``."""
    options: dict[str, set[str]] = {}
    for rec in records:
        options.setdefault(rec.task, set()).add(canonical(dict(rec.config.task_options)))
    ids = []
    for rec in records:
        name = rec.task
        opts = dict(rec.config.task_options)
        if len(options[name]) > 1 and opts:
            name += " " + " ".join(f"{k}={short(v)}" for k, v in sorted(opts.items()))
        ids.append(name)
    return ids
