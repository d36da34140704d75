"""What SQLite's errors mean for the results store, in one line each, and the spool where
finished runs wait while the database is locked (see :mod:`optimlab.lab.store_sqlite`)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from .schema import RunRecord
from .store import StoreError

__all__ = ["Spool", "corrupt_error", "error_kind", "record_dict", "store_error", "translated"]

F = TypeVar("F", bound=Callable[..., Any])


def error_kind(e: sqlite3.Error) -> str:
    """What a SQLite error means: locked, readonly, corrupt, full, cantopen, permission, io
    or other."""
    name = getattr(e, "sqlite_errorname", "") or ""  # Python >= 3.11
    text = str(e).lower()
    for kind, names, words in (
            ("locked", ("SQLITE_BUSY", "SQLITE_LOCKED"), ("locked", "busy")),
            ("readonly", ("SQLITE_READONLY",), ("readonly", "read-only")),
            ("corrupt", ("SQLITE_CORRUPT", "SQLITE_NOTADB"), ("malformed", "not a database")),
            ("full", ("SQLITE_FULL",), ("disk is full",)),
            ("cantopen", ("SQLITE_CANTOPEN",), ("unable to open",)),
            ("permission", ("SQLITE_PERM", "SQLITE_AUTH"), ("permission",)),
            ("io", ("SQLITE_IOERR",), ("disk i/o",))):
        if name.startswith(names) or (not name and any(w in text for w in words)):
            return kind
    return "other"


def translated(action: str) -> Callable[[F], F]:
    """Decorator: a SQLite error in the method becomes a one-line StoreError about
    ``action``."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except sqlite3.Error as e:
                raise self._error(e, action) from None

        return wrapper  # type: ignore[return-value]

    return deco


class Spool:
    """Finished runs waiting to be written to the database: ``<key>.json`` files in
    ``folder`` (each written whole: to a temporary name, then renamed)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put(self, record: RunRecord) -> None:
        """Keep ``record`` (raises ``OSError`` when the folder cannot be written)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{record.key}.json"
        tmp = self.folder / f".{record.key}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(record_dict(record), allow_nan=False))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def keys(self) -> set[str]:
        """The keys of the runs kept."""
        try:
            return {p.stem for p in self.folder.glob("*.json")}
        except OSError:
            return set()

    def files(self) -> list[Path]:
        """The files kept, by name."""
        try:
            return sorted(self.folder.glob("*.json"))
        except OSError:
            return []

    def remove(self, paths: Iterable[Path]) -> None:
        """Forget ``paths`` (written to the database); the folder goes when empty."""
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when empty


def record_dict(record: RunRecord) -> dict[str, Any]:
    d = record.to_dict()
    d.pop("label", None)  # a record's arm belongs to a study, not to the run
    return d


def corrupt_error(path: Path, detail: str) -> StoreError:
    """The error for a database whose structure is damaged (``detail``: SQLite's words)."""
    detail = " ".join(detail.replace("*** in database main ***", "").split())
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    return StoreError(
        f"results database {path} is corrupt ({detail}); nothing was written to it. "
        f"Restore it from a backup, or salvage what is readable with: sqlite3 "
        f"{path} .recover | sqlite3 recovered.db, then --store sqlite:///recovered.db")


def store_error(path: Path, e: sqlite3.Error, action: str, lock_timeout: float) -> StoreError:
    """A one-line StoreError for SQLite error ``e`` on database ``path`` while trying to
    ``action``: what is wrong and what to do."""
    kind = error_kind(e)
    if kind == "locked":
        return StoreError(
            f"results database {path} is locked: another process held it for more than "
            f"{lock_timeout:g} s while optimlab tried to {action}; run the same command again "
            "when that process is done (finished runs are kept)")
    if kind == "readonly":
        return StoreError(f"results database {path} is read-only; make the file and its "
                          "folder writable, or point --store at a writable copy")
    if kind == "corrupt":
        return corrupt_error(path, str(e))
    if kind == "full":
        return StoreError(f"cannot {action} in results database {path}: the disk is full; "
                          "free some space and run the same command again")
    if kind in ("cantopen", "permission"):
        return StoreError(f"cannot open results database {path} ({e}); check that it and "
                          "its folder exist and are readable (and writable to store results)")
    if kind == "io":
        return StoreError(f"disk I/O error on results database {path} while trying to "
                          f"{action} ({e}); check the disk, then run the same command again")
    return StoreError(f"results database {path}: {e} (while trying to {action})")
