"""The results store: finished runs, and which study each belongs to, in a database.

The default store is an embedded SQLite database (``sqlite:///path/to/results.db``). Each
finished run is written in its own transaction the moment it finishes, keyed by its config's
hash, so a study killed at any instant (SIGKILL included) keeps every run that had finished and
never holds one twice; re-running the study skips them. SQLite's write-ahead log lets readers
(``optimlab report``) work while a study writes. Tables are prefixed ``optimlab_`` so that the
same database can hold other tools' tables (Optuna's tuning studies).

Records are typed (:class:`~optimlab.lab.schema.RunRecord`) and stored as JSON with their
schema version; reading migrates older records (:meth:`RunRecord.from_dict`). The database
itself carries a version (:data:`DB_VERSION`): a version-1 database (written before typed
records) is brought to version 2 in place when opened, its records migrated as they are read; a
database of a newer version than this optimlab knows is refused with a message saying so.

**A study name is bound to its spec.** Saving a study under a name the store holds with a
different spec is refused (:class:`StoreError` naming the first differing field) unless
``replace=True``, which drops the old study's list of runs (the runs themselves stay stored:
runs are shared by key between studies). Saving it again with the same spec resumes it; the
fields of :data:`STUDY_BOOKKEEPING` record what a study did and may change, and fields the
stored spec lacks (it was saved by an older optimlab, before they existed) are not compared.

**Claims** (:mod:`optimlab.lab.claims`) let several processes share a study's work: a claim
names a key, the owner process and the end of its lease, and :meth:`ResultStore.claim` takes
keys atomically (not finished, not under another owner's live lease).

**Faults** are :class:`StoreError` with one line saying what is wrong and what to do, raised
before anything is lost (the SQLite specifics are in :mod:`optimlab.lab.store_sqlite`):
a database locked for longer than :data:`LOCK_TIMEOUT_S`, a read-only or unreadable file or
folder, a corrupt file, a full disk, a newer database version.

The store is reached through :func:`open_store` and the small :class:`ResultStore` interface,
so that a server database can be added behind a URL (``postgresql://...``) without touching
the runner or the report.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .claims import Claim, Owner
from .schema import RunRecord

if TYPE_CHECKING:
    from .store_sqlite import SQLiteStore

__all__ = ["DB_VERSION", "DEFAULT_URL", "LOCK_TIMEOUT_S", "STUDY_BOOKKEEPING", "ResultStore",
           "SQLiteStore", "StoreError", "first_difference", "open_store"]

#: Where results go unless told otherwise (relative to the working directory).
DEFAULT_URL = "sqlite:///optimlab-results/results.db"

#: Version of the database layout and of what its rows mean. 1: untyped run records;
#: 2: typed, versioned records (:class:`RunRecord`, with ``schema`` in each). (The claims
#: table added later is created when missing and ignored by older versions: still 2.)
DB_VERSION = 2

#: How long a statement waits for another process's write lock before giving up (SQLite
#: retries with backoff meanwhile). A finished run that still cannot be written goes to the
#: spool (see :class:`~optimlab.lab.store_sqlite.SQLiteStore`), never nowhere.
LOCK_TIMEOUT_S = 60.0

#: Spec fields that record what a study did rather than what it is: saving a study again may
#: change them (the held-out re-runs' chosen arms; the free-text description).
STUDY_BOOKKEEPING = frozenset({"heldout_choice", "description"})


class StoreError(RuntimeError):
    """The store cannot do what was asked (bad URL, locked, read-only, corrupt, a study name
    bound to another spec); ``str()`` is one line: what is wrong and what to do."""


@runtime_checkable
class ResultStore(Protocol):
    """What the runner and the report need from a results store."""

    url: str

    def save_study(self, name: str, spec: Mapping[str, Any],
                   runs: Sequence[tuple[str, str]], *, replace: bool = False) -> None:
        """Record study ``name`` with its ``spec`` and its runs as ``(key, label)`` pairs.

        A study of that name with the same spec (apart from :data:`STUDY_BOOKKEEPING`) keeps
        its runs and gains the new ones; one with another spec raises :class:`StoreError`
        unless ``replace``, which drops its runs (not the run records) first."""

    def finished(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` whose runs are stored."""

    def put_run(self, record: RunRecord) -> bool:
        """Store a finished run; ``False`` (and nothing written) if its key is already there.
        Its claim, if any, ends."""

    def get_run(self, key: str) -> RunRecord | None:
        """One stored run by key, or ``None``."""

    def study_records(self, name: str) -> list[RunRecord]:
        """The stored runs of study ``name`` in the study's order, each with its ``label``."""

    def study_spec(self, name: str) -> dict[str, Any]:
        """The spec study ``name`` was saved with."""

    def studies(self) -> list[dict[str, Any]]:
        """Every study: name, number of runs, finished runs, last update."""

    def claim(self, keys: Sequence[str], owner: Owner, lease_s: float,
              limit: int | None = None) -> list[str]:
        """Atomically claim for ``owner`` (a lease of ``lease_s`` seconds) up to ``limit`` of
        ``keys``, in their order, that are claimable: no run stored under the key, and no
        other owner's live lease on it (expired, or held by an owner known dead, is taken
        over; ``owner``'s own is renewed). Returns the keys claimed."""

    def renew(self, owner: Owner, lease_s: float) -> set[str]:
        """Extend every lease ``owner`` holds to ``lease_s`` from now; the keys it holds."""

    def release(self, owner: Owner, keys: Sequence[str] | None = None) -> None:
        """End ``owner``'s claims on ``keys`` (all of them by default)."""

    def holders(self, keys: Sequence[str]) -> dict[str, Claim]:
        """The live claims on ``keys`` (for messages: who is running what)."""

    def spooled(self) -> int:
        """Finished runs this store could not write to its database yet (see :meth:`flush`)."""

    def flush(self) -> None:
        """Write the spooled runs to the database, or raise :class:`StoreError` saying where
        they are kept and how to resume."""

    def check_writable(self) -> None:
        """Raise :class:`StoreError` (why, and what to do) unless the store can be written."""

    def close(self) -> None:
        """Release the connection."""


def first_difference(old: Any, new: Any, ignore: frozenset[str] = frozenset(),
                     path: str = "") -> tuple[str, Any, Any] | None:
    """The first place (in sorted key order) where two JSON-like values differ, as
    ``(dotted path, old value, new value)`` (a missing key's value is ``"(absent)"``), or
    ``None`` when they are equal. Top-level keys in ``ignore`` are skipped."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in sorted(set(old) | set(new), key=str):
            if not path and k in ignore:
                continue
            where = f"{path}.{k}" if path else str(k)
            if k not in old or k not in new:
                return where, old.get(k, "(absent)"), new.get(k, "(absent)")
            found = first_difference(old[k], new[k], path=where)
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = first_difference(a, b, path=f"{path}[{i}]")
            if found is not None:
                return found
        return None
    return None if old == new else (path or "spec", old, new)


def as_json(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists): the form specs are compared in."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def open_store(url: str | Path | None = None, *, readonly: bool = False) -> ResultStore:
    """Open the store at ``url``: ``sqlite:///relative/path.db``, ``sqlite:////absolute.db``,
    a plain file path, or a PostgreSQL server, ``postgresql://user:password@host:port/db``
    (:mod:`optimlab.lab.store_postgres`). Other schemes raise :class:`StoreError` naming the
    supported ones.

    A database that exists but cannot be written (a read-only file or folder, missing
    permissions) opens read-only: reading works, writing raises :class:`StoreError` saying
    why. ``readonly=True`` opens it so on purpose (no write, no integrity check, no lock
    taken; a missing database is an error). Opened for writing, the database is checked
    first (``PRAGMA quick_check``): a corrupt one is refused before anything is written.
    """
    from .store_sqlite import SQLiteStore

    url = str(url) if url is not None else DEFAULT_URL
    if "://" not in url:
        return SQLiteStore(url, url=f"sqlite:///{url}", readonly=readonly)
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise StoreError(f"bad SQLite URL {url!r}; use sqlite:///relative/path.db or "
                             "sqlite:////absolute/path.db")
        return SQLiteStore(rest[1:], url=url, readonly=readonly)
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        from .store_postgres import PostgresStore
        return PostgresStore(url, readonly=readonly)
    raise StoreError(f"unsupported results-store URL scheme {scheme!r} in {url!r}; use "
                     "sqlite:///path/to/results.db or postgresql://user:password@host/db")


def __getattr__(name: str) -> Any:
    # SQLiteStore lives in store_sqlite (which imports this module); its old import path
    # ``optimlab.lab.store.SQLiteStore`` keeps working.
    if name == "SQLiteStore":
        from .store_sqlite import SQLiteStore
        return SQLiteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
