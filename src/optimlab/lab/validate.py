"""The lab's one set of input checks, and its one JSON conversion.

Every setting a user gives the lab (a study file, a command-line option, a tuning spec, a run
config) is checked here, and a bad one raises :class:`ValidationError`, a ``ValueError`` whose
one-line message starts with the field's name (``"steps must be a positive integer, got 0"``)
and whose ``field`` attribute names it too. Callers that know where a value came from (a study
file, a table) put that in the field name: ``"task.quadratic.steps"``.

The lab's one conversion to strict JSON is :func:`optimlab.lab.schema.json_safe`.

This module imports nothing from the rest of the lab (nor torch), so every other module can
use it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["ValidationError", "as_list", "batch_size", "boolean", "choice", "finite_or_none",
           "names", "non_negative_int", "optional", "positive_float",
           "positive_int", "seeds", "text"]

T = TypeVar("T")


class ValidationError(ValueError):
    """A bad setting: ``field`` names it; the message (one line) says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        sep = "" if message.startswith((":", ",")) else " "
        super().__init__(f"{field}{sep}{message}" if field else message.lstrip(":, "))


def _int(value: Any) -> int | None:
    """``value`` as an int when it is an integer (not a bool, not a float), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def positive_int(field: str, value: Any) -> int:
    """An integer >= 1 (bools and floats refused)."""
    v = _int(value)
    if v is None or v < 1:
        raise ValidationError(field, f"must be a positive integer, got {value!r}")
    return v


def non_negative_int(field: str, value: Any) -> int:
    """An integer >= 0 (bools and floats refused)."""
    v = _int(value)
    if v is None or v < 0:
        raise ValidationError(field, f"must be a non-negative integer, got {value!r}")
    return v


def positive_float(field: str, value: Any, what: str = "number") -> float:
    """A finite number > 0 (an int is accepted and converted); ``what`` names the unit in
    the message (``"number of seconds"``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if not ok:
        try:  # numpy scalars and 0-d tensors
            ok = not isinstance(value, (str, bytes)) and hasattr(value, "__float__") and (
                _int(value) is not None or float(value) == float(value))
        except (TypeError, ValueError):
            ok = False
    if ok:
        v = float(value)
        if math.isfinite(v) and v > 0:
            return v
    raise ValidationError(field, f"must be a positive finite {what}, got {value!r}")


def optional(check: Any, field: str, value: Any, *args: Any) -> Any:
    """``None`` for ``None``, else ``check(field, value, *args)``."""
    return None if value is None else check(field, value, *args)


def boolean(field: str, value: Any) -> bool:
    """``True`` or ``False`` (no truthy strings or numbers)."""
    if not isinstance(value, bool):
        raise ValidationError(field, f"must be true or false, got {value!r}")
    return value


def text(field: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValidationError(field, f"must be a non-empty string, got {value!r}")
    return value


def choice(field: str, value: Any, choices: Iterable[T]) -> T:
    """One of ``choices``."""
    allowed = list(choices)
    if isinstance(value, (list, dict)) or value not in allowed:
        raise ValidationError(field, f"must be one of {', '.join(map(str, allowed))}; "
                                     f"got {value!r}")
    return value


def as_list(field: str, value: Any) -> list[Any]:
    """A list of values: a list or tuple as is (non-empty), anything else as one value."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValidationError(field, "is an empty list; give at least one value")
        return list(value)
    return [value]


def names(field: str, value: Any) -> tuple[str, ...]:
    """Distinct non-empty names: a list, or one string with commas (``"sgd,adam"``)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
        if not value:
            raise ValidationError(field, "is empty; give at least one name")
    items = as_list(field, value)
    for i, v in enumerate(items):
        if not isinstance(v, str) or not v:
            raise ValidationError(f"{field}[{i}]", f"must be a name, got {v!r}")
    if len(set(items)) != len(items):
        raise ValidationError(field, f"has duplicate names: {items}")
    return tuple(items)


def batch_size(field: str, value: Any) -> int | str:
    """``"full"`` (batch gradient descent) or a positive integer (``1``: stochastic); a digit
    string is read as the integer."""
    if isinstance(value, str):
        s = value.strip().lower()
        if s == "full":
            return "full"
        if s.isdigit():
            value = int(s)
    v = _int(value)
    if v is None or v < 1:
        raise ValidationError(field, f"must be 'full' or a positive integer, got {value!r}")
    return v


def seeds(field: str, value: Any) -> tuple[int, ...]:
    """A count ``n`` (the seeds ``0 .. n-1``) or a list of distinct non-negative integers."""
    count = _int(value)
    if count is not None:
        if count < 1:
            raise ValidationError(field, f"must be a count >= 1 or a list of non-negative "
                                         f"integers, got {value!r}")
        return tuple(range(count))
    if not isinstance(value, (list, tuple)):
        raise ValidationError(field, f"must be a count >= 1 or a list of non-negative "
                                     f"integers, got {value!r}")
    items = [non_negative_int(f"{field}[{i}]", s) for i, s in enumerate(as_list(field, value))]
    if len(set(items)) != len(items):
        raise ValidationError(field, f"has duplicate seeds: {items}")
    return tuple(items)


def finite_or_none(value: Any) -> float | None:
    """``float(value)`` when it is a finite number, else ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
