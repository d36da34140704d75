"""The results store on a PostgreSQL server (:class:`PostgresStore`), for studies that workers
on several machines share (``--store postgresql://user:password@host:5432/database``).

It holds the same tables as the SQLite store (:mod:`optimlab.lab.store_sqlite`), with the same
meaning, and keeps the same promises: every finished run is written in one transaction of its
own (the run and the end of its claim together), a run's key is stored at most once (``INSERT
... ON CONFLICT DO NOTHING``), a study name is bound to its spec, and claims are taken
atomically.

**Why psycopg 3, not SQLAlchemy.** The SQLite store is plain SQL on DB-API connections, one per
thread, each write one explicit transaction; psycopg is the same shape (the SQL differs in
``%s`` placeholders, arrays instead of ``IN (...)`` chunks and a few types), so both stores
read alike. SQLAlchemy would add a connection pool and an expression layer this handful of
statements does not need (Optuna uses SQLAlchemy for its own tables in the same database).

**Claims.** Each claim transaction first takes one transaction-level advisory lock
(``pg_advisory_xact_lock``), so claim transactions run one at a time, as SQLite's ``BEGIN
IMMEDIATE`` makes them, and then reads the runs and claims and writes the same upsert as the
SQLite store. (A conditional ``INSERT ... ON CONFLICT DO UPDATE WHERE`` alone cannot see a run
another worker stored and released between the read and the write; the lock closes that.)
Storing a run takes no lock: it is one row insert and one row delete. Leases compare the
workers' wall clocks, as with SQLite: keep the machines' clocks synchronised (NTP).

**Faults** are :class:`~optimlab.lab.store.StoreError` with one line: a missing driver (``pip
install 'optimlab[distributed]'``), a server that cannot be reached, a failed login, a missing
database, a connection lost mid-study (the finished runs are stored; run the same command
again). There is no spool: a server serves writers concurrently with row locks, so a write does
not wait on another process's file lock; a run whose write fails is run again on resume.
Passwords never appear in messages (:func:`redacted`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from .claims import Claim, Owner
from .schema import RunRecord, SchemaError
from .store import DB_VERSION, StoreError
from .store_faults import record_dict
from .store_sql import SQLReads, save_study_rows, tables

__all__ = ["CONNECT_TIMEOUT_S", "PostgresStore", "redacted"]

#: Seconds a connection attempt waits for the server before the store gives up.
CONNECT_TIMEOUT_S = 10

_TABLES = tables("DOUBLE PRECISION")
# advisory lock ids (any fixed 64-bit numbers; they only need to differ from other tools')
_SCHEMA_LOCK, _CLAIM_LOCK, _STUDY_LOCK = 0x6F6C_0001, 0x6F6C_0002, 0x6F6C_0003
_INSTALL = "pip install 'optimlab[distributed]'"

F = TypeVar("F", bound=Callable[..., Any])


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreError(f"a PostgreSQL results store needs the psycopg driver, which is not "
                         f"installed: {_INSTALL}") from None
    return psycopg


def _pg(sql: str) -> str:
    """A shared query (:mod:`optimlab.lab.store_sql`) with psycopg's ``%s`` placeholders."""
    return sql.replace("?", "%s")


def _translated(action: str) -> Callable[[F], F]:
    """Decorator: a psycopg error in the method becomes a one-line StoreError."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: PostgresStore, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except _driver().Error as e:
                raise self._error(e, action) from None

        return wrapper  # type: ignore[return-value]

    return deco


class PostgresStore(SQLReads):
    """:class:`~optimlab.lab.store.ResultStore` on a PostgreSQL server (its tables created
    when missing). See the module docstring.

    Args:
        url: ``postgresql://user:password@host:port/database`` (libpq's URL; a SQLAlchemy
            driver suffix such as ``postgresql+psycopg://`` is accepted).
        readonly: never write (reading works; writing raises :class:`StoreError`).
    """

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        _, sep, rest = url.partition("://")
        self._dsn = "postgresql" + sep + rest
        self.url = redacted(url)
        self._where = redacted(self._dsn)
        self._readonly = "it was opened read-only" if readonly else None
        self._conns: dict[int, Any] = {}
        self._conns_lock = threading.Lock()
        self._driver = _driver()
        try:
            self._open()
        except self._driver.Error as e:
            self.close()
            raise self._error(e, "open it") from None
        except StoreError:
            self.close()
            raise

    # ------------------------------------------------------------------ connections

    def _db(self) -> Any:
        """This thread's connection (made again when the server dropped it)."""
        db = self._conns.get(threading.get_ident())
        if db is not None and not db.closed and not db.broken:
            return db
        db = self._driver.connect(self._dsn, autocommit=True, application_name="optimlab",
                                  connect_timeout=CONNECT_TIMEOUT_S)
        with self._conns_lock:
            self._conns[threading.get_ident()] = db
        return db

    def _open(self) -> None:
        db = self._db()
        have = {r[0] for r in db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_name = ANY(%s)", (list(_TABLES),))}
        if self._readonly is None and have != set(_TABLES):
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for name, columns in _TABLES.items():  # (the lock: workers start together)
                    db.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
                db.execute("INSERT INTO optimlab_meta VALUES ('version', %s) "
                           "ON CONFLICT (name) DO NOTHING", (str(DB_VERSION),))
        elif "optimlab_meta" not in have:
            raise StoreError(f"no optimlab results in {self._where} yet; run optimlab "
                             "compare with this --store first")
        row = db.execute("SELECT value FROM optimlab_meta WHERE name='version'").fetchone()
        if row is not None and row[0] != str(DB_VERSION):
            raise StoreError(f"{self._where}: results database version {row[0]!r}; this "
                             f"optimlab reads version {DB_VERSION}. Upgrade optimlab, or "
                             "point --store at another database")

    # ------------------------------------------------------------------ errors

    def _error(self, e: Exception, action: str) -> StoreError:
        """A one-line StoreError for psycopg error ``e`` while trying to ``action``."""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        text = first.lower()
        where = self._where
        if "password authentication failed" in text or "no password supplied" in text \
                or "pg_hba.conf" in text or ("role" in text and "does not exist" in text):
            return StoreError(f"cannot log in to PostgreSQL at {where} ({first}); check the "
                              "user and password in the --store URL (or PGPASSWORD, "
                              "~/.pgpass)")
        if "database" in text and "does not exist" in text:
            return StoreError(f"PostgreSQL at {where}: {first}; create it (createdb NAME) or "
                              "name an existing database in the --store URL")
        if isinstance(e, self._driver.OperationalError):
            if action != "open it":
                return StoreError(f"lost the connection to PostgreSQL at {where} while trying "
                                  f"to {action} ({first}); the finished runs are stored: run "
                                  "the same command again once the server is back")
            return StoreError(f"cannot reach the PostgreSQL server at {where} ({first}); "
                              "check that it runs and that the URL's host and port are right")
        if isinstance(e, self._driver.errors.InsufficientPrivilege):
            return StoreError(f"PostgreSQL at {where}: {first} (while trying to {action}); "
                              "grant the user rights on the database, or use another user")
        return StoreError(f"PostgreSQL at {where}: {first} (while trying to {action})")

    def check_writable(self) -> None:
        if self._readonly is not None:
            raise StoreError(f"results database {self._where} cannot be written "
                             f"({self._readonly}); nothing was run")

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _transaction(self, lock: int | None = None) -> Iterator[Any]:
        """One transaction, holding advisory lock ``lock`` (if given) until it ends."""
        self.check_writable()
        db = self._db()
        with db.transaction():
            if lock is not None:
                db.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            yield db

    @_translated("save the study")
    def save_study(self, name: str, spec: Mapping[str, Any],
                   runs: Sequence[tuple[str, str]], *, replace: bool = False) -> None:
        with self._transaction(_STUDY_LOCK) as db, db.cursor() as cur:
            save_study_rows(lambda sql, params: db.execute(_pg(sql), params),
                            lambda sql, rows: cur.executemany(_pg(sql), rows),
                            self.url, name, spec, runs, replace=replace)

    @_translated("store a run")
    def put_run(self, record: RunRecord) -> bool:
        if not isinstance(record, RunRecord):
            raise TypeError(f"put_run takes a RunRecord, got {type(record).__name__}")
        d = record_dict(record)
        with self._transaction() as db:
            changed = db.execute(
                "INSERT INTO optimlab_runs VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (key) DO NOTHING",
                (record.key, record.status, json.dumps(d["config"], sort_keys=True),
                 json.dumps(d, allow_nan=False), time.time())).rowcount
            db.execute("DELETE FROM optimlab_claims WHERE key=%s", (record.key,))
        return changed == 1

    def spooled(self) -> int:
        """Always 0: this store writes each run at once or raises (no spool)."""
        return 0

    def flush(self) -> None:
        """Nothing to write: there is no spool."""

    # ------------------------------------------------------------------ claims

    @_translated("claim work")
    def claim(self, keys: Sequence[str], owner: Owner, lease_s: float,
              limit: int | None = None) -> list[str]:
        keys = list(dict.fromkeys(keys))
        if not keys or (limit is not None and limit <= 0):
            return []
        with self._transaction(_CLAIM_LOCK) as db:
            now = time.time()
            held = self._claims(db, keys)
            done = self._stored(db, keys)
            take: list[str] = []
            for key in keys:
                if limit is not None and len(take) >= limit:
                    break
                c = held.get(key)
                if key not in done and (c is None or c.owner.id == owner.id
                                        or not c.live(now)):
                    take.append(key)
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO optimlab_claims VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT "
                    "(key) DO UPDATE SET owner=excluded.owner, host=excluded.host, "
                    "pid=excluded.pid, started=excluded.started, expires=excluded.expires",
                    [(k, owner.id, owner.host, owner.pid, owner.started, now + lease_s)
                     for k in take])
        return take

    @_translated("renew its claims")
    def renew(self, owner: Owner, lease_s: float) -> set[str]:
        with self._transaction() as db:
            rows = db.execute("UPDATE optimlab_claims SET expires=%s WHERE owner=%s "
                              "RETURNING key", (time.time() + lease_s, owner.id)).fetchall()
        return {r[0] for r in rows}

    @_translated("release its claims")
    def release(self, owner: Owner, keys: Sequence[str] | None = None) -> None:
        if self._readonly is not None:
            return
        with self._transaction() as db:
            if keys is None:
                db.execute("DELETE FROM optimlab_claims WHERE owner=%s", (owner.id,))
            else:
                db.execute("DELETE FROM optimlab_claims WHERE owner=%s AND key = ANY(%s)",
                           (owner.id, list(keys)))

    @_translated("read the claims")
    def holders(self, keys: Sequence[str]) -> dict[str, Claim]:
        now = time.time()
        return {k: c for k, c in self._claims(self._db(), list(keys)).items() if c.live(now)}

    @staticmethod
    def _claims(db: Any, keys: list[str]) -> dict[str, Claim]:
        out = {}
        for key, owner, host, pid, started, expires in db.execute(
                "SELECT key, owner, host, pid, started, expires FROM optimlab_claims "
                "WHERE key = ANY(%s)", (keys,)):
            token = owner.rsplit("/", 1)[-1]
            out[key] = Claim(key, Owner(host, int(pid), started, token), float(expires))
        return out

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _stored(db: Any, keys: list[str]) -> set[str]:
        return {r[0] for r in db.execute("SELECT key FROM optimlab_runs WHERE key = ANY(%s)",
                                         (keys,))}

    @_translated("read which runs are stored")
    def finished(self, keys: Iterable[str]) -> set[str]:
        return self._stored(self._db(), list(keys))

    @_translated("read a run")
    def get_run(self, key: str) -> RunRecord | None:
        row = self._db().execute("SELECT record FROM optimlab_runs WHERE key=%s",
                                 (key,)).fetchone()
        return None if row is None else self._load(row[0], key)

    def _load(self, text: str, key: str, label: str | None = None) -> RunRecord:
        try:
            d = json.loads(text)
            if isinstance(d, dict) and label is not None:
                d["label"] = label
            return RunRecord.from_dict(d)
        except (ValueError, SchemaError) as e:
            raise StoreError(f"{self._where}: run {key} cannot be read ({e}); delete its row "
                             "from optimlab_runs to run it again") from None

    def _read(self, action: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(_pg(sql), params).fetchall()
        except self._driver.Error as e:
            raise self._error(e, action) from None

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = list(self._conns.values()), {}
        for db in conns:
            with contextlib.suppress(Exception):
                db.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
