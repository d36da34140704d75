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

The store is reached through :func:`open_store` and the small :class:`ResultStore` interface,
so that a server database can be added behind a URL (``postgresql://...``) without touching
the runner or the report.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .schema import RunRecord, SchemaError

__all__ = ["DB_VERSION", "DEFAULT_URL", "ResultStore", "SQLiteStore", "StoreError",
           "open_store"]

#: Where results go unless told otherwise (relative to the working directory).
DEFAULT_URL = "sqlite:///optimlab-results/results.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS optimlab_runs (
    key      TEXT PRIMARY KEY,
    status   TEXT NOT NULL,
    config   TEXT NOT NULL,
    record   TEXT NOT NULL,
    finished REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS optimlab_studies (
    name    TEXT PRIMARY KEY,
    spec    TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS optimlab_study_runs (
    study TEXT NOT NULL,
    key   TEXT NOT NULL,
    label TEXT NOT NULL,
    pos   INTEGER NOT NULL,
    PRIMARY KEY (study, key)
);
CREATE TABLE IF NOT EXISTS optimlab_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
#: Version of the database layout and of what its rows mean. 1: untyped run records;
#: 2: typed, versioned records (:class:`RunRecord`, with ``schema`` in each).
DB_VERSION = 2


class StoreError(RuntimeError):
    """The store cannot be opened or read (bad URL, not a results database, corrupt file)."""


@runtime_checkable
class ResultStore(Protocol):
    """What the runner and the report need from a results store."""

    url: str

    def save_study(self, name: str, spec: Mapping[str, Any],
                   runs: Sequence[tuple[str, str]]) -> None:
        """Record study ``name`` with its ``spec`` and its runs as ``(key, label)`` pairs."""

    def finished(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` whose runs are stored."""

    def put_run(self, record: RunRecord) -> bool:
        """Store a finished run; ``False`` (and nothing written) if its key is already there."""

    def get_run(self, key: str) -> RunRecord | None:
        """One stored run by key, or ``None``."""

    def study_records(self, name: str) -> list[RunRecord]:
        """The stored runs of study ``name`` in the study's order, each with its ``label``."""

    def study_spec(self, name: str) -> dict[str, Any]:
        """The spec study ``name`` was saved with."""

    def studies(self) -> list[dict[str, Any]]:
        """Every study: name, number of runs, finished runs, last update."""

    def close(self) -> None:
        """Release the connection."""


class SQLiteStore:
    """:class:`ResultStore` in one SQLite file (created with its folder if missing)."""

    def __init__(self, path: str | Path, url: str | None = None) -> None:
        self.path = Path(path)
        self.url = url or f"sqlite:///{self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            try:
                self._check_version()
            except StoreError:
                self._db.close()
                raise
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a usable results database ({e}); "
                             "point --store at another file") from None
        except OSError as e:
            raise StoreError(f"cannot open results database {self.path}: {e}") from None

    def _check_version(self) -> None:
        """Stamp a new database, migrate a version-1 one, refuse an unknown version."""
        row = self._db.execute("SELECT value FROM optimlab_meta WHERE name='version'").fetchone()
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO optimlab_meta VALUES ('version', ?)",
                             (str(DB_VERSION),))
            return
        try:
            version = int(row[0])
        except ValueError:
            version = -1
        if version == DB_VERSION:
            return
        if version == 1:
            # Same tables; version-1 records lack a "schema" field and are migrated on read
            # (RunRecord.from_dict). Their keys hash the old key layout, so new studies,
            # whose keys are version 2, run afresh instead of mixing old and new runs.
            self._write([("UPDATE optimlab_meta SET value=? WHERE name='version'",
                          (str(DB_VERSION),))])
            return
        raise StoreError(f"{self.path}: results database version {row[0]!r}; this optimlab "
                         f"reads versions 1 to {DB_VERSION}. Upgrade optimlab, or point "
                         "--store at another file")

    def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Run ``statements`` in one immediate transaction; returns rows changed."""
        changed = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                changed += self._db.execute(sql, args).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return changed

    def save_study(self, name: str, spec: Mapping[str, Any],
                   runs: Sequence[tuple[str, str]]) -> None:
        now = time.time()
        statements: list[tuple[str, Sequence[Any]]] = [
            ("INSERT INTO optimlab_studies VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
             "spec=excluded.spec, updated=excluded.updated",
             (name, json.dumps(spec, sort_keys=True), now, now)),
            ("DELETE FROM optimlab_study_runs WHERE study=?", (name,)),
        ]
        statements += [("INSERT OR REPLACE INTO optimlab_study_runs VALUES (?, ?, ?, ?)",
                        (name, key, label, i)) for i, (key, label) in enumerate(runs)]
        self._write(statements)

    def finished(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        out: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            out.update(r[0] for r in self._db.execute(
                f"SELECT key FROM optimlab_runs WHERE key IN ({marks})", chunk))
        return out

    def put_run(self, record: RunRecord) -> bool:
        if not isinstance(record, RunRecord):
            raise TypeError(f"put_run takes a RunRecord, got {type(record).__name__}")
        d = record.to_dict()
        d.pop("label", None)  # a record's arm belongs to a study, not to the run
        text = json.dumps(d, allow_nan=False)
        config = json.dumps(d["config"], sort_keys=True)
        return self._write([("INSERT OR IGNORE INTO optimlab_runs VALUES (?, ?, ?, ?, ?)",
                             (record.key, record.status, config, text, time.time()))]) == 1

    def get_run(self, key: str) -> RunRecord | None:
        row = self._db.execute("SELECT record FROM optimlab_runs WHERE key=?", (key,)).fetchone()
        return None if row is None else self._load(row[0], key)

    def _load(self, text: str, key: str, label: str | None = None) -> RunRecord:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise StoreError(f"{self.path}: run {key} is corrupt ({e})") from None
        if isinstance(d, dict) and label is not None:
            d["label"] = label
        try:
            return RunRecord.from_dict(d)
        except SchemaError as e:
            raise StoreError(f"{self.path}: run {key} cannot be read: {e}") from None

    def study_records(self, name: str) -> list[RunRecord]:
        self.study_spec(name)  # raises for an unknown study
        rows = self._db.execute(
            "SELECT r.record, s.label, r.key FROM optimlab_study_runs s "
            "JOIN optimlab_runs r ON r.key = s.key WHERE s.study=? ORDER BY s.pos",
            (name,)).fetchall()
        return [self._load(text, key, label) for text, label, key in rows]

    def study_spec(self, name: str) -> dict[str, Any]:
        row = self._db.execute("SELECT spec FROM optimlab_studies WHERE name=?", (name,)).fetchone()
        if row is None:
            known = [s["name"] for s in self.studies()]
            raise StoreError(f"no study {name!r} in {self.url}; studies there: "
                             f"{', '.join(known) or 'none'}")
        return json.loads(row[0])

    def studies(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT st.name, st.updated, COUNT(sr.key), COUNT(r.key) FROM optimlab_studies st "
            "LEFT JOIN optimlab_study_runs sr ON sr.study = st.name "
            "LEFT JOIN optimlab_runs r ON r.key = sr.key "
            "GROUP BY st.name ORDER BY st.updated").fetchall()
        return [{"name": n, "updated": u, "runs": total, "finished": done}
                for n, u, total, done in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(url: str | Path | None = None) -> ResultStore:
    """Open the store at ``url``: ``sqlite:///relative/path.db``, ``sqlite:////absolute.db``
    or a plain file path. Other schemes raise :class:`StoreError` naming the supported ones."""
    url = str(url) if url is not None else DEFAULT_URL
    if "://" not in url:
        return SQLiteStore(url, url=f"sqlite:///{url}")
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise StoreError(f"bad SQLite URL {url!r}; use sqlite:///relative/path.db or "
                             "sqlite:////absolute/path.db")
        return SQLiteStore(rest[1:], url=url)
    raise StoreError(f"unsupported results-store URL scheme {scheme!r} in {url!r}; this "
                     "version stores results in SQLite: sqlite:///path/to/results.db")
