"""Helpers shared by the lab's tests."""

from __future__ import annotations

#: Record fields that measure wall-clock time or memory, which differ between equal runs.
TIMING = {"train_seconds", "wall_seconds", "time_to_target", "peak_memory_bytes"}


def stable(record: dict) -> dict:
    """A run record without its wall-clock and memory measurements."""
    out = {k: v for k, v in record.items() if k not in TIMING}
    out["curve"] = {k: v for k, v in record["curve"].items() if k != "time"}
    out["evals"] = {k: v for k, v in record["evals"].items() if k != "time"}
    return out
