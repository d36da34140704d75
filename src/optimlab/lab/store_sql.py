"""What the two SQL result stores share: their tables and the queries that read studies.

:class:`~optimlab.lab.store_sqlite.SQLiteStore` (one machine) and
:class:`~optimlab.lab.store_postgres.PostgresStore` (many) keep the same tables and read a study
with the same standard SQL; the queries are written here once, with ``?`` placeholders (the
PostgreSQL store turns them into psycopg's ``%s``). What differs stays in each store: opening,
writing, claims, error translation and the reading of one run (SQLite also looks in its spool).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .schema import RunRecord
from .store import STUDY_BOOKKEEPING, StoreError, as_json, first_difference

__all__ = ["SQLReads", "save_study_rows", "short", "tables"]

#: ``execute(sql, params)`` and ``executemany(sql, rows)`` of one open transaction, taking the
#: shared queries' ``?`` placeholders.
Execute = Callable[[str, tuple[Any, ...]], Any]
ExecuteMany = Callable[[str, list[tuple[Any, ...]]], Any]


def tables(real: str) -> dict[str, str]:
    """The columns of each table, with ``real`` the dialect's float type."""
    return {
        "optimlab_runs": f"key TEXT PRIMARY KEY, status TEXT NOT NULL, config TEXT NOT NULL, "
                         f"record TEXT NOT NULL, finished {real} NOT NULL",
        "optimlab_studies": f"name TEXT PRIMARY KEY, spec TEXT NOT NULL, "
                            f"created {real} NOT NULL, updated {real} NOT NULL",
        "optimlab_study_runs": "study TEXT NOT NULL, key TEXT NOT NULL, label TEXT NOT NULL, "
                               "pos INTEGER NOT NULL, PRIMARY KEY (study, key)",
        "optimlab_meta": "name TEXT PRIMARY KEY, value TEXT NOT NULL",
        # who runs what (optimlab.lab.claims): owner id, its host/pid/start, the lease's end
        "optimlab_claims": f"key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, "
                           f"pid INTEGER NOT NULL, started TEXT NOT NULL, "
                           f"expires {real} NOT NULL",
    }


def short(value: Any) -> str:
    """``value`` in a message: its JSON (a string: its repr), cut to 60 characters."""
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) \
        else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def save_study_rows(execute: Execute, execute_many: ExecuteMany, url: str, name: str,
                    spec: Mapping[str, Any], runs: Sequence[tuple[str, str]], *,
                    replace: bool) -> None:
    """``ResultStore.save_study`` inside a transaction the store opened: the study's spec (a
    spec that differs from the saved one needs ``replace``, which drops the old run list) and
    its ``(key, label)`` runs in order."""
    now = time.time()
    spec = as_json(dict(spec))
    row = execute("SELECT spec FROM optimlab_studies WHERE name=?", (name,)).fetchone()
    if row is None:
        execute("INSERT INTO optimlab_studies VALUES (?, ?, ?, ?)",
                (name, json.dumps(spec, sort_keys=True), now, now))
    else:
        old = json.loads(row[0])
        # fields the stored spec lacks predate it (an older optimlab saved it)
        diff = first_difference(old, spec, ignore=STUDY_BOOKKEEPING | (set(spec) - set(old)))
        if diff is not None and not replace:
            where, was, now_is = diff
            raise StoreError(
                f"study {name!r} in {url} was saved with another spec ({where}: "
                f"{short(was)} there, {short(now_is)} now); give this one another "
                "name (--name NEW), or replace the old one (--replace: its runs stay stored)")
        if diff is not None:
            execute("DELETE FROM optimlab_study_runs WHERE study=?", (name,))
        else:
            spec = {**old, **spec}  # bookkeeping the new spec lacks stays
        execute("UPDATE optimlab_studies SET spec=?, updated=? WHERE name=?",
                (json.dumps(spec, sort_keys=True), now, name))
    execute_many("INSERT INTO optimlab_study_runs VALUES (?, ?, ?, ?) ON CONFLICT (study, key) "
                 "DO UPDATE SET label=excluded.label, pos=excluded.pos",
                 [(name, key, label, i) for i, (key, label) in enumerate(runs)])


class SQLReads:
    """The study-reading methods of :class:`~optimlab.lab.store.ResultStore`, for a store that
    provides ``url``, ``_read(action, sql, params)`` (the rows of a query, its driver's errors
    raised as a one-line :class:`StoreError` about ``action``) and ``_load(text, key, label)``
    (a stored record, checked)."""

    url: str

    def _read(self, action: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _load(self, text: str, key: str, label: str | None = None) -> RunRecord:
        raise NotImplementedError

    def study_records(self, name: str) -> list[RunRecord]:
        """The study's records in its order, each with the study's label."""
        self.study_spec(name)  # raises for an unknown study
        rows = self._read(
            "read the study's runs",
            "SELECT r.record, s.label, r.key FROM optimlab_study_runs s "
            "JOIN optimlab_runs r ON r.key = s.key WHERE s.study=? ORDER BY s.pos", (name,))
        return [self._load(text, key, label) for text, label, key in rows]

    def study_spec(self, name: str) -> dict[str, Any]:
        """The study's saved specification (``StoreError`` naming the known studies if none)."""
        rows = self._read("read the study", "SELECT spec FROM optimlab_studies WHERE name=?",
                          (name,))
        if not rows:
            known = [s["name"] for s in self.studies()]
            raise StoreError(f"no study {name!r} in {self.url}; studies there: "
                             f"{', '.join(known) or 'none'}")
        return json.loads(rows[0][0])

    def studies(self) -> list[dict[str, Any]]:
        """Every study: name, last update, runs and finished runs, oldest update first."""
        rows = self._read(
            "list the studies",
            "SELECT st.name, st.updated, COUNT(sr.key), COUNT(r.key) FROM optimlab_studies st "
            "LEFT JOIN optimlab_study_runs sr ON sr.study = st.name "
            "LEFT JOIN optimlab_runs r ON r.key = sr.key "
            "GROUP BY st.name, st.updated ORDER BY st.updated")
        return [{"name": n, "updated": u, "runs": total, "finished": done}
                for n, u, total, done in rows]
