"""Studies: grids of runs (optimizers x tasks x seeds x settings), executed in parallel, resumable.

A study is described by a plain dict (the *spec*), written by hand in a TOML file or built from
the command line::

    name = "batch-sizes"
    tasks = ["mlp-digits", "logreg-breast-cancer"]
    optimizers = ["sgd", "adam"]
    seeds = 3                      # or a list: [0, 1, 2]
    batch_size = ["full", 1, 32]   # a list sweeps; "full" = batch gradient descent
    schedule = "constant"          # or a list of schedule names
    steps = 500                    # optional: default is each task's own budget
    # seconds = 30                 # optional wall-clock budget per run

    [hyperparams.sgd]              # per optimizer; a list sweeps
    lr = [0.01, 0.1]

    [task.mlp-digits]              # per task: options, settings, hyperparameters
    options = { depth = 3, batchnorm = true }
    steps = 800
    [task.mlp-digits.hyperparams.sgd]
    lr = 0.05

Each run's *label* (its arm) is the optimizer's name plus the settings the study sweeps
(``"sgd lr=0.1 bs=32"``); runs of one arm differ only by seed, and the same arm on different
tasks carries the same label, so the report can compare arms across tasks.

:func:`run_study` executes the runs that the store does not hold yet, in parallel through an
:class:`Executor` (a process pool by default; replaceable, e.g. by a cluster executor), and
stores each run the moment it finishes.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .environment import available_cores
from .optimizers import _allowed, build_optimizer, lookup
from .runs import SCHEDULES, RunConfig, execute, parse_batch_size
from .store import ResultStore
from .tasks import make_task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Executor", "InlineExecutor", "PlannedRun", "ProcessExecutor", "StudyError",
           "load_study_file", "normalize_spec", "plan", "run_study"]

_TOP_KEYS = {"name", "description", "tasks", "optimizers", "seeds", "batch_size", "schedule",
             "steps", "seconds", "eval_every", "telemetry", "hyperparams", "task"}
_TASK_KEYS = {"options", "batch_size", "schedule", "steps", "seconds", "eval_every",
              "hyperparams"}


class StudyError(ValueError):
    """An invalid study spec; the message names the field and what is allowed."""


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: its config, key and arm label."""

    config: RunConfig
    key: str
    label: str


# --------------------------------------------------------------------------- the spec


def _as_list(field: str, value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if not value:
            raise StudyError(f"{field}: an empty list; give at least one value")
        return list(value)
    return [value]


def _names(field: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    items = _as_list(field, value)
    for i, v in enumerate(items):
        if not isinstance(v, str) or not v:
            raise StudyError(f"{field}[{i}]: expected a name, got {v!r}")
    if len(set(items)) != len(items):
        raise StudyError(f"{field}: duplicate names in {items}")
    return items


def _seeds(value: Any) -> list[int]:
    if isinstance(value, bool):
        raise StudyError(f"seeds: a count or a list of non-negative integers, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise StudyError(f"seeds: the number of seeds must be >= 1, got {value}")
        return list(range(value))
    items = _as_list("seeds", value)
    for s in items:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise StudyError(f"seeds: a count or a list of non-negative integers, got {s!r}")
    if len(set(items)) != len(items):
        raise StudyError(f"seeds: duplicate seeds in {items}")
    return items


def _batch_sizes(field: str, value: Any) -> list[int | str]:
    out = []
    for v in _as_list(field, value):
        try:
            out.append(parse_batch_size(v))
        except ValueError:
            raise StudyError(f"{field}: 'full' or a positive integer, got {v!r}") from None
    return out


def _schedules(field: str, value: Any) -> list[str]:
    items = _names(field, value)
    for s in items:
        if s not in SCHEDULES:
            raise StudyError(f"{field}: unknown schedule {s!r}; allowed: {', '.join(SCHEDULES)}")
    return items


def _optional_int(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StudyError(f"{field}: a positive integer, got {value!r}")
    return value


def _optional_seconds(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise StudyError(f"{field}: a positive number of seconds, got {value!r}")
    return float(value)


def _hyper_grid(field: str, optimizer: str, table: Any) -> dict[str, list[Any]]:
    """``{key: [values]}``; a list sweeps, except for tuple-valued keys (betas), where a list
    of numbers is one value and a list of lists sweeps."""
    if not isinstance(table, Mapping):
        raise StudyError(f"{field}: a table of hyperparameters, got {table!r}")
    allowed = _allowed(lookup(optimizer).cls)
    grid = {}
    for key, value in table.items():
        if key not in allowed:
            raise StudyError(f"{field}.{key}: optimizer {optimizer!r} has no hyperparameter "
                             f"{key!r}; allowed: {', '.join(sorted(allowed))}")
        tuple_valued = isinstance(allowed[key], tuple)
        if isinstance(value, list) and (not tuple_valued or
                                        (value and isinstance(value[0], list))):
            grid[key] = _as_list(f"{field}.{key}", value)
        else:
            grid[key] = [value]
    return grid


def normalize_spec(spec: Mapping[str, Any], *, source: str = "study") -> dict[str, Any]:
    """Check ``spec`` and return it in canonical form (lists everywhere, defaults filled in).

    Raises:
        StudyError: naming the field (``tasks[1]``, ``hyperparams.adam.lr``, ...) and what is
            allowed.
    """
    def err(e: Exception) -> StudyError:
        return StudyError(f"{source}: {e}")

    if not isinstance(spec, Mapping):
        raise err(StudyError(f"a study is a table of settings, got {type(spec).__name__}"))
    unknown = sorted(set(spec) - _TOP_KEYS)
    if unknown:
        raise err(StudyError(f"unknown field {unknown[0]!r}; allowed: "
                             f"{', '.join(sorted(_TOP_KEYS))}"))
    try:
        for required in ("tasks", "optimizers"):
            if required not in spec:
                raise StudyError(f"{required}: missing (give at least one)")
        out: dict[str, Any] = {
            "name": spec.get("name"),
            "description": str(spec.get("description", "")),
            "tasks": _names("tasks", spec["tasks"]),
            "optimizers": _names("optimizers", spec["optimizers"]),
            "seeds": _seeds(spec.get("seeds", 3)),
            "batch_size": _batch_sizes("batch_size", spec.get("batch_size", 32)),
            "schedule": _schedules("schedule", spec.get("schedule", "constant")),
            "steps": _optional_int("steps", spec.get("steps")),
            "seconds": _optional_seconds("seconds", spec.get("seconds")),
            "eval_every": _optional_int("eval_every", spec.get("eval_every")),
            "telemetry": spec.get("telemetry", False),
        }
        if out["name"] is not None and (not isinstance(out["name"], str) or not out["name"]):
            raise StudyError(f"name: a non-empty string, got {out['name']!r}")
        if not isinstance(out["telemetry"], bool):
            raise StudyError(f"telemetry: true or false, got {out['telemetry']!r}")
        for i, name in enumerate(out["optimizers"]):
            try:
                lookup(name)
            except ValueError as e:
                raise StudyError(f"optimizers[{i}]: {e}") from None
        tables = spec.get("task", {})
        for i, name in enumerate(out["tasks"]):
            if isinstance(tables, Mapping) and name in tables:
                continue  # checked with its options below
            try:
                make_task(name)
            except ValueError as e:
                raise StudyError(f"tasks[{i}]: {e}") from None
        hyper = spec.get("hyperparams", {})
        if not isinstance(hyper, Mapping):
            raise StudyError(f"hyperparams: a table per optimizer, got {hyper!r}")
        for opt in hyper:
            if opt not in out["optimizers"]:
                raise StudyError(f"hyperparams.{opt}: {opt!r} is not in optimizers "
                                 f"({', '.join(out['optimizers'])})")
        out["hyperparams"] = {opt: _hyper_grid(f"hyperparams.{opt}", opt, table)
                              for opt, table in hyper.items()}
        out["task"] = _task_tables(spec.get("task", {}), out)
    except StudyError as e:
        raise err(e) from None
    return out


def _task_tables(tables: Any, out: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    if not isinstance(tables, Mapping):
        raise StudyError(f"task: a table per task, got {tables!r}")
    result = {}
    for name, table in tables.items():
        field = f"task.{name}"
        if name not in out["tasks"]:
            raise StudyError(f"{field}: {name!r} is not in tasks ({', '.join(out['tasks'])})")
        if not isinstance(table, Mapping):
            raise StudyError(f"{field}: a table, got {table!r}")
        unknown = sorted(set(table) - _TASK_KEYS)
        if unknown:
            raise StudyError(f"{field}: unknown field {unknown[0]!r}; allowed: "
                             f"{', '.join(sorted(_TASK_KEYS))}")
        t: dict[str, Any] = {}
        options = table.get("options", {})
        if not isinstance(options, Mapping):
            raise StudyError(f"{field}.options: a table of task options, got {options!r}")
        try:
            make_task(name, **options)
        except ValueError as e:
            raise StudyError(f"{field}.options: {e}") from None
        t["options"] = dict(options)
        if "batch_size" in table:
            t["batch_size"] = _batch_sizes(f"{field}.batch_size", table["batch_size"])
        if "schedule" in table:
            t["schedule"] = _schedules(f"{field}.schedule", table["schedule"])
        if "steps" in table:
            t["steps"] = _optional_int(f"{field}.steps", table["steps"])
        if "seconds" in table:
            t["seconds"] = _optional_seconds(f"{field}.seconds", table["seconds"])
        if "eval_every" in table:
            t["eval_every"] = _optional_int(f"{field}.eval_every", table["eval_every"])
        hyper = table.get("hyperparams", {})
        if not isinstance(hyper, Mapping):
            raise StudyError(f"{field}.hyperparams: a table per optimizer, got {hyper!r}")
        for opt in hyper:
            if opt not in out["optimizers"]:
                raise StudyError(f"{field}.hyperparams.{opt}: {opt!r} is not in optimizers")
        t["hyperparams"] = {opt: _hyper_grid(f"{field}.hyperparams.{opt}", opt, tab)
                            for opt, tab in hyper.items()}
        result[name] = t
    return result


def load_study_file(path: str | Path) -> dict[str, Any]:
    """Read and check a TOML study file; errors name the file, the line or the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise StudyError(f"cannot read study file {path}: {e.strerror or e}") from None
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{path}: malformed TOML: {e}") from None
    spec = normalize_spec(spec, source=str(path))
    if spec["name"] is None:
        spec["name"] = path.stem
    return spec


def default_name(spec: Mapping[str, Any]) -> str:
    """A name derived from the spec's content, so re-running the same study resumes it."""
    body = {k: v for k, v in spec.items() if k not in ("name", "description")}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    return f"study-{digest}"


# --------------------------------------------------------------------------- the grid


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "(" + ",".join(_fmt(v) for v in value) + ")"
    return str(value)


_SHORT = {"batch_size": "bs", "schedule": "schedule"}


def plan(spec: Mapping[str, Any]) -> list[PlannedRun]:
    """Every run of a normalized spec, in a stable order (task, optimizer, settings, seed).

    Raises:
        StudyError: a hyperparameter value the optimizer rejects (checked on a dummy
            parameter before anything runs).
    """
    runs: list[PlannedRun] = []
    checked: set[str] = set()
    for task in spec["tasks"]:
        t = spec["task"].get(task, {})
        for opt in spec["optimizers"]:
            grid = dict(spec["hyperparams"].get(opt, {}))
            grid.update(t.get("hyperparams", {}).get(opt, {}))
            dims: dict[str, list[Any]] = {f"hp.{k}": v for k, v in sorted(grid.items())}
            dims["batch_size"] = t.get("batch_size", spec["batch_size"])
            dims["schedule"] = t.get("schedule", spec["schedule"])
            swept = _swept(spec, opt)
            for values in itertools.product(*dims.values()):
                setting = dict(zip(dims, values))
                hyper = {k[3:]: v for k, v in setting.items() if k.startswith("hp.")}
                label = " ".join([opt] + [
                    f"{_SHORT.get(k, k[3:] if k.startswith('hp.') else k)}={_fmt(v)}"
                    for k, v in setting.items() if k in swept])
                base = RunConfig(
                    task=task, optimizer=opt, hyperparams=hyper,
                    task_options=t.get("options", {}), schedule=setting["schedule"],
                    batch_size=setting["batch_size"], seed=0,
                    steps=t.get("steps", spec["steps"]),
                    seconds=t.get("seconds", spec["seconds"]),
                    eval_every=t.get("eval_every", spec["eval_every"]),
                    telemetry=spec["telemetry"])
                resolved = _resolve(base, f"task {task!r}, optimizer {opt!r}")
                sig = json.dumps(resolved.hyperparams, sort_keys=True) + opt
                if sig not in checked:
                    _check_values(resolved, f"task {task!r}")
                    checked.add(sig)
                for seed in spec["seeds"]:
                    cfg = RunConfig(**{**resolved.to_dict(), "seed": seed})
                    runs.append(PlannedRun(cfg, cfg.key(), label))
    return runs


def _swept(spec: Mapping[str, Any], opt: str) -> set[str]:
    """The setting names with more than one value anywhere in the study (for labels)."""
    swept = set()
    tables = [spec, *spec["task"].values()]
    for table in tables:
        for name in ("batch_size", "schedule"):
            if len(table.get(name, [None])) > 1:
                swept.add(name)
        for key, values in table.get("hyperparams", {}).get(opt, {}).items():
            if len(values) > 1:
                swept.add(f"hp.{key}")
    return swept


def _resolve(config: RunConfig, where: str) -> RunConfig:
    try:
        return config.resolved()
    except ValueError as e:
        raise StudyError(f"{where}: {e}") from None


def _check_values(config: RunConfig, where: str) -> None:
    dummy = torch.zeros(1, requires_grad=True)
    try:
        build_optimizer(config.optimizer, [dummy], config.hyperparams)
    except ValueError as e:
        raise StudyError(f"{where}: {e}") from None


# --------------------------------------------------------------------------- execution


class Executor(Protocol):
    """Runs functions on items and yields ``(item, result)`` as each finishes (any order)."""

    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]
                       ) -> Iterator[tuple[Any, Any]]:
        """Apply ``fn`` to every item, yielding results as they complete."""
        ...


class InlineExecutor:
    """Runs everything in this process, one item after the other."""

    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]
                       ) -> Iterator[tuple[Any, Any]]:
        for item in items:
            yield item, fn(item)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


class ProcessExecutor:
    """A pool of ``workers`` fresh processes (spawned, so nothing is shared with this one), each
    with ``threads`` torch threads. Results arrive as runs finish."""

    def __init__(self, workers: int | None = None, threads: int = 1) -> None:
        self.workers = workers or default_workers()
        self.threads = threads

    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]
                       ) -> Iterator[tuple[Any, Any]]:
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                    initargs=(self.threads,)) as pool:
            futures = {pool.submit(fn, item): item for item in items}
            try:
                for fut in cf.as_completed(futures):
                    yield futures[fut], fut.result()
            finally:
                for fut in futures:
                    fut.cancel()


def default_workers() -> int:
    """One worker per available core."""
    return available_cores()


def _run_one(config: dict[str, Any]) -> dict[str, Any]:
    """Worker entry point: execute one run from its config dict (picklable)."""
    return execute(RunConfig.from_dict(config), threads=torch.get_num_threads())


@dataclass
class StudyOutcome:
    """What :func:`run_study` did: the study's runs and how many ran now or were stored."""

    name: str
    planned: int
    skipped: int
    executed: int


def run_study(spec: Mapping[str, Any], store: ResultStore, *,
              executor: Executor | None = None,
              progress: Callable[[int, int, dict[str, Any]], None] | None = None
              ) -> StudyOutcome:
    """Run every run of ``spec`` (normalized) that ``store`` does not hold, storing each as it
    finishes. Re-running a study resumes it.

    Args:
        spec: a spec from :func:`normalize_spec` or :func:`load_study_file`; a missing name is
            derived from the content (:func:`default_name`).
        store: where results go.
        executor: how runs are executed (default :class:`ProcessExecutor` on all cores).
        progress: called as ``progress(done, total, record)`` after each run.
    """
    spec = dict(spec)
    spec["name"] = spec.get("name") or default_name(spec)
    runs = plan(spec)
    unique: dict[str, PlannedRun] = {}
    for r in runs:
        unique.setdefault(r.key, r)
    store.save_study(spec["name"], spec, [(r.key, r.label) for r in unique.values()])
    done = store.finished(unique)
    pending = [r for k, r in unique.items() if k not in done]
    executor = executor or (ProcessExecutor() if len(pending) > 1 else InlineExecutor())
    total = len(unique)
    count = len(done)
    by_key = {r.key: r for r in pending}
    for _, record in executor.imap_unordered(_run_one, [r.config.to_dict() for r in pending]):
        store.put_run(record)
        count += 1
        if progress is not None:
            record = dict(record, label=by_key[record["key"]].label)
            progress(count, total, record)
    return StudyOutcome(spec["name"], total, len(done), len(pending))

