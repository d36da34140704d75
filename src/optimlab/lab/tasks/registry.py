"""Task registry: built-in tasks by name, and user tasks by import path.

:func:`make_task` is for Python code that names its own tasks: it imports a
``"package.module:factory"`` it is given (the caller is the trust boundary). Names read from
files, databases or the command line go through :func:`optimlab.lab.imports.check_import`
first (study specs, tuning specs, the lr finder and the advisor do); the report rebuilds only
optimlab's own 2-D functions and imports nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..imports import load_attr
from ..validate import ValidationError
from .base import Task

__all__ = ["TASKS", "UnknownTaskError", "check_task", "make_task", "register"]

#: name -> factory(**options) returning an un-set-up Task.
TASKS: dict[str, Callable[..., Task]] = {}


class UnknownTaskError(ValueError):
    """A task name that is neither registered nor an importable ``module:function`` path."""


def register(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator registering a task factory under ``name``."""

    def deco(factory: Callable[..., Task]) -> Callable[..., Task]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        TASKS[name] = factory
        return factory

    return deco


def make_task(name: str, **options: Any) -> Task:
    """Build a task by registry name or by import path ``"package.module:factory"``.

    An import path is imported as given: this is the Python API, where the caller is the
    trust boundary. Names from files, databases or the command line must pass
    :func:`optimlab.lab.imports.check_import` before they reach this function.

    Options are passed to the factory; an unknown option raises ``ValueError`` naming it.
    """
    if name in TASKS:
        factory = TASKS[name]
    elif ":" in name:
        try:
            factory = load_attr(name, None, field="", what="task factory")
        except ValidationError as e:
            raise UnknownTaskError(str(e)) from None
    else:
        raise _unknown(name)
    return _build(name, factory, options)


def check_task(name: str, **options: Any) -> Task:
    """:func:`make_task` for checking a study's input: whatever the factory raises (a user
    task's own error included) becomes a ``ValueError`` that says so, so that a spec reports it
    as bad input naming the field instead of failing as an internal error."""
    try:
        return make_task(name, **options)
    except (ValueError, TypeError):
        raise
    except Exception as e:
        raise ValueError(f"task {name!r}: building it raised {type(e).__name__}: {e}") from e


def _unknown(name: str) -> UnknownTaskError:
    known = ", ".join(sorted(TASKS))
    return UnknownTaskError(f"unknown task {name!r}; known tasks: {known} "
                            "(or a user task as 'package.module:factory')")


def _build(name: str, factory: Callable[..., Task], options: dict[str, Any]) -> Task:
    try:
        task = factory(**options)
    except TypeError as e:
        raise ValueError(f"task {name!r}: bad options {sorted(options)}: {e}") from None
    if not isinstance(task, Task):
        raise TypeError(f"task factory {name!r} returned {type(task).__name__}, not a Task")
    return task
