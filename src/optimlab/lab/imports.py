"""The trust model: study files, results databases and dataset folders are data, never code.

A task or optimizer may be named by import path, ``"package.module:attr"`` (a user task
factory, a ``torch.optim.Optimizer`` subclass). Importing a module runs its code, so a name
that comes from outside the user's own Python code is imported only when

1. the user named it where they run it: on the command line, or in a study file they pass to
   a command (never a name read back from a results database: the report renders records and
   imports nothing they name), and
2. its top-level package is in the allow-list the user controls: ``--allow-import PKG``
   (repeatable, or comma-separated) and the environment variable ``OPTIMLAB_ALLOW_IMPORT``
   (comma-separated; read where the check runs, never written by optimlab).

:func:`check_import` is the one check, made *before* anything is imported;
:func:`load_attr` is the one loader. Names without ``':'`` are optimlab's own tasks and
optimizers and never import anything.

Python code that builds tasks and optimizers itself (``make_task(name)``,
``build_optimizer(name, ...)``, ``StudySpec(...)``) is its own trust boundary: it passes
``allow_import=None`` (or calls those functions, which do) and imports what it names.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from typing import Any

from .validate import ValidationError

__all__ = ["ENV_VAR", "AllowList", "allow_list", "check_import", "is_import_path", "load_attr",
           "split_import_path"]

#: The environment variable whose comma-separated packages are allowed besides the
#: ``allow_import`` argument.
ENV_VAR = "OPTIMLAB_ALLOW_IMPORT"

#: An allow-list of top-level package names; ``None`` means "the caller is the trust
#: boundary" (Python code naming its own tasks): anything it names is imported.
AllowList = Iterable[str] | None


def is_import_path(name: str) -> bool:
    """``name`` is an import path (``"package.module:attr"``), not a built-in name."""
    return isinstance(name, str) and ":" in name


def _is_dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def split_import_path(name: str, *, field: str = "name") -> tuple[str, str]:
    """``(module, attr)`` of ``"package.module:attr"``; a malformed path raises
    :class:`ValidationError` naming ``field``."""
    module, _, attr = name.partition(":")
    if not (_is_dotted(module) and attr.isidentifier()):
        raise ValidationError(field, f": {name!r} is not an import path; expected "
                                     "'package.module:attr' (dotted Python identifiers)")
    return module, attr


def allow_list(values: Any, *, field: str = "allow_import") -> tuple[str, ...]:
    """The top-level packages of ``values`` (a string with commas, or strings that may hold
    commas, e.g. repeated ``--allow-import``), checked: each must be a Python identifier (a
    top-level package, not ``package.module``)."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for item in values:
        if not isinstance(item, str):
            raise ValidationError(field, f"must hold package names, got {item!r}")
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isidentifier():
                top = part.split(".")[0]
                hint = (f"; give the top-level package {top!r}" if _is_dotted(part)
                        else "")
                raise ValidationError(field, f": {part!r} is not a top-level package "
                                             f"name{hint}")
            out.append(part)
    return tuple(dict.fromkeys(out))


def _allowed(allow_import: Iterable[str]) -> tuple[str, ...]:
    """The argument's packages and :data:`ENV_VAR`'s (read now)."""
    env = allow_list(os.environ.get(ENV_VAR, ""), field=ENV_VAR)
    return allow_list(list(allow_import), field="allow_import") + env


def check_import(name: str, allow_import: AllowList, *, field: str) -> None:
    """Refuse ``name`` unless it is a built-in name (no ``':'``) or an import path whose
    top-level package is allowed. Imports nothing.

    Args:
        name: a task or optimizer name.
        allow_import: allowed top-level packages (with :data:`ENV_VAR`'s); ``None``: the
            caller is the trust boundary and every import path is allowed.
        field: the setting ``name`` came from (``"tasks[1]"``), named in the error.

    Raises:
        ValidationError: a malformed import path, or one whose package is not allowed; the
            message names the field, the module, and how to allow it.
    """
    if not is_import_path(name):
        return
    module, _ = split_import_path(name, field=field)
    if allow_import is None:
        return
    top = module.split(".")[0]
    if top in _allowed(allow_import):
        return
    raise ValidationError(field, f": {name!r} would import module {module!r}, whose package "
                                 f"{top!r} is not allowed (names in files and on the command "
                                 f"line are data, not code); allow it with --allow-import "
                                 f"{top} or {ENV_VAR}={top}, or with allow_import=[{top!r}] "
                                 "in Python")


def load_attr(name: str, allow_import: AllowList, *, field: str = "name",
              what: str = "attribute") -> Any:
    """Import ``"package.module:attr"`` and return the attribute, after :func:`check_import`;
    ``what`` says what it is in errors (``"task factory"``).

    Raises:
        ValidationError: not allowed (nothing is imported), malformed, or the module or the
            attribute cannot be found (the message names ``field``).
    """
    if not is_import_path(name):
        raise ValidationError(field, f": {name!r} is not an import path "
                                     "('package.module:attr')")
    check_import(name, allow_import, field=field)
    module, attr = split_import_path(name, field=field)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValidationError(field, f": cannot import {what} {name!r}: {e}") from None
    except Exception as e:  # the user's module raised while it was imported
        raise ValidationError(field, f": importing {what} {name!r} raised "
                                     f"{type(e).__name__}: {e}") from e
