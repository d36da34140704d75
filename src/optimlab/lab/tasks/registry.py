"""Task registry: built-in tasks by name, and user tasks by import path."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import Task

__all__ = ["TASKS", "UnknownTaskError", "make_task", "register"]

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

    Options are passed to the factory; an unknown option raises ``ValueError`` naming it.
    """
    if name in TASKS:
        factory = TASKS[name]
    elif ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UnknownTaskError(f"cannot import task factory {name!r}: {e}") from None
    else:
        known = ", ".join(sorted(TASKS))
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {known} "
                               "(or a user task as 'package.module:factory')")
    try:
        task = factory(**options)
    except TypeError as e:
        raise ValueError(f"task {name!r}: bad options {sorted(options)}: {e}") from None
    if not isinstance(task, Task):
        raise TypeError(f"task factory {name!r} returned {type(task).__name__}, not a Task")
    return task
