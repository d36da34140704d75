"""The lab's one set of input checks, and its one JSON conversion.

Every setting a user gives the lab (a study file, a command-line option, a tuning spec, a run
config) is checked here, and a bad one raises :class:`ValidationError`, a ``ValueError`` whose
one-line message starts with the field's name (``"steps must be a positive integer, got 0"``)
and whose ``field`` attribute names it too. Callers that know where a value came from (a study
file, a table) put that in the field name: ``"task.quadratic.steps"``.

**Limits** (:class:`Limits`, defaults in the ``MAX_*`` constants below, each with its
reason) guard against typos such as ``steps = 10**12``, which would otherwise be accepted and
run for days or plan millions of runs before failing. They are not a security boundary: a
study file raises them in a ``[limits]`` table, Python code with ``limits=Limits(...)``. The
seed range (:data:`MAX_SEED`) is not a guard but what the tasks' random generators accept.

The lab's one conversion to strict JSON is :func:`optimlab.lab.schema.json_safe`.

This module imports nothing from the rest of the lab (nor torch), so every other module can
use it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

__all__ = ["MAX_EPOCHS", "MAX_EXAMPLES", "MAX_NAME_LENGTH", "MAX_RUNS", "MAX_SEED",
           "MAX_SEEDS", "MAX_STEPS", "MAX_TRIALS", "Limits", "ValidationError", "as_list",
           "at_most", "batch_size", "boolean", "choice", "finite_or_none", "names",
           "non_negative_int", "optional", "positive_float", "positive_int", "seed", "seeds",
           "study_name", "text"]

#: Steps per run. The cheapest task (a 2-D function) takes 0.1-0.4 ms per step on a CPU
#: (measured: 0.35 ms for rosenbrock on a loaded 2-core machine), so 10**8 steps are 3-10 hours
#: of one run; the built-in tasks default to 10**2..10**4 steps.
MAX_STEPS = 10**8
#: Training examples per run (the ``examples`` budget): 10**10 is about 80 epochs of
#: ImageNet-1k (1.28e6 images) a hundred times over; beyond it a value is a typo.
MAX_EXAMPLES = 10**10
#: Passes over the training set per run (the ``epochs`` budget): 10**6 epochs of the
#: one-example 2-D tasks are 10**6 steps; of any real data set, far beyond a run.
MAX_EPOCHS = 10**6
#: Seeds per arm (a count or a list): interval estimates are settled long before 1000 seeds,
#: and ``seeds = 10**6`` planned runs until memory ran out (1.1 GB after 90 s).
MAX_SEEDS = 1000
#: The largest seed: tasks split their data with ``numpy.random.RandomState(seed)``, which
#: accepts ``0 .. 2**32 - 1`` (torch.manual_seed accepts more; the tightest consumer decides).
MAX_SEED = 2**32 - 1
#: Trials per (task, optimizer) of a tuning: 10**5 trials of even a 1-second run are a day
#: of one core per optimizer.
MAX_TRIALS = 10**5
#: Runs a study may plan (tasks x optimizers x swept settings x seeds, held-out re-runs
#: included): 10**5 runs of a 1-second task are a day on a 2-core machine; each planned run
#: also costs memory before anything runs.
MAX_RUNS = 10**5
#: Characters in a study or tuning name: the name becomes a folder name (the report's), whose
#: limit is 255 bytes on common file systems; 100 leaves room for suffixes (``-best``).
MAX_NAME_LENGTH = 100

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


def seed(field: str, value: Any) -> int:
    """A seed: an integer in ``0 .. MAX_SEED``."""
    v = _int(value)
    if v is None or not 0 <= v <= MAX_SEED:
        raise ValidationError(field, f"must be an integer from 0 to {MAX_SEED} (2**32 - 1, "
                                     f"what the tasks' random generators accept), "
                                     f"got {value!r}")
    return v


def seeds(field: str, value: Any, max_count: int = MAX_SEEDS) -> tuple[int, ...]:
    """A count ``n`` (the seeds ``0 .. n-1``) or a list of distinct seeds (:func:`seed`), at
    most ``max_count`` of them (the limit ``limits.seeds``)."""
    count = _int(value)
    if count is not None:
        if count < 1:
            raise ValidationError(field, f"must be a count >= 1 or a list of non-negative "
                                         f"integers, got {value!r}")
        at_most(field, count, max_count, "seeds")
        return tuple(range(count))
    if not isinstance(value, (list, tuple)):
        raise ValidationError(field, f"must be a count >= 1 or a list of non-negative "
                                     f"integers, got {value!r}")
    items = as_list(field, value)
    at_most(f"{field} (count)", len(items), max_count, "seeds")
    checked = [seed(f"{field}[{i}]", s) for i, s in enumerate(items)]
    if len(set(checked)) != len(checked):
        raise ValidationError(field, f"has duplicate seeds: {checked}")
    return tuple(checked)


def at_most(field: str, value: int | float, limit: int | float, limit_name: str) -> None:
    """Refuse ``value > limit``, naming the limit ``limits.{limit_name}`` and how to raise it
    (a guard against typos, see :class:`Limits`)."""
    if value > limit:
        raise ValidationError(field, f"must be at most {_number(limit)} (limits.{limit_name}, "
                                     f"a guard against typos; raise it with a [limits] table "
                                     f"in a study file or limits=Limits({limit_name}=...) in "
                                     f"Python), got {_number(value)}")


def _number(x: int | float) -> str:
    """``x`` with thousands separators (integral floats as integers: ``1,000,000``)."""
    if isinstance(x, float) and not (math.isfinite(x) and x.is_integer()):
        return f"{x:g}"
    return f"{int(x):,}"


def study_name(field: str, value: Any, max_length: int = MAX_NAME_LENGTH) -> str:
    """A study or tuning name: 1 to ``max_length`` characters, letters, digits, ``-``, ``_``
    and ``.``, not starting with ``-`` or ``.`` (the name becomes a folder name)."""
    if not isinstance(value, str) or not value:
        raise ValidationError(field, f"must be a non-empty string, got {value!r}")
    if len(value) > max_length:
        raise ValidationError(field, f"must be at most {max_length} characters (limits."
                                     f"name_length; it becomes a folder name), got "
                                     f"{len(value)}: {value[:20]!r}...")
    bad = sorted({ch for ch in value if not (ch.isascii() and (ch.isalnum() or ch in "-_."))})
    if bad or value[0] in "-.":
        what = (f"has {', '.join(map(repr, bad))}" if bad
                else f"starts with {value[0]!r}")
        raise ValidationError(field, f"must hold only letters, digits, '-', '_' and '.', and "
                                     f"not start with '-' or '.' (it becomes a folder name); "
                                     f"{value!r} {what}")
    return value


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what the lab accepts (guards against typos, not a security boundary);
    the defaults are the ``MAX_*`` constants, whose comments give the reasons.

    Attributes:
        steps: steps per run (also bounds ``eval_every`` and the lr finder's steps).
        examples: the ``examples`` budget of a run.
        epochs: the ``epochs`` budget of a run.
        seeds: seeds per arm (and held-out seeds, and a tuning's re-run seeds).
        trials: trials per (task, optimizer) of a tuning.
        runs: runs a study may plan.
        name_length: characters of a study or tuning name.
    """

    steps: int = MAX_STEPS
    examples: int = MAX_EXAMPLES
    epochs: float = MAX_EPOCHS
    seeds: int = MAX_SEEDS
    trials: int = MAX_TRIALS
    runs: int = MAX_RUNS
    name_length: int = MAX_NAME_LENGTH

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            check = positive_float if f.name == "epochs" else positive_int
            object.__setattr__(self, f.name, check(f"limits.{f.name}", value))

    @classmethod
    def parse(cls, field: str, value: Any) -> Limits:
        """``value`` as :class:`Limits`: ``None`` (the defaults), a :class:`Limits`, or a table
        of some limits (the ``[limits]`` table of a study file); unknown keys are refused."""
        if value is None:
            return cls()
        if isinstance(value, Limits):
            return value
        if not isinstance(value, Mapping):
            raise ValidationError(field, f"must be a table of limits, got {value!r}")
        allowed = [f.name for f in fields(cls)]
        for key in value:
            if key not in allowed:
                raise ValidationError(f"{field}.{key}", f"is not a limit; allowed: "
                                                        f"{', '.join(allowed)}")
        return cls(**dict(value))

    def changed(self) -> dict[str, Any]:
        """The limits that differ from the defaults (what a stored spec records)."""
        default = Limits()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


def finite_or_none(value: Any) -> float | None:
    """``float(value)`` when it is a finite number, else ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
