"""The results store in one SQLite file (:class:`SQLiteStore`), and what it does under faults.

Opening
    For writing (the default), an existing database is checked with ``PRAGMA quick_check``
    before anything is written (a file corrupted anywhere in its structure is refused; a
    record whose text is damaged is caught when it is read), then a write is tried and rolled
    back: a database that cannot be written (a read-only file or folder, missing
    permissions, a lock held past :data:`~optimlab.lab.store.LOCK_TIMEOUT_S`) opens
    read-only instead, so ``optimlab report`` works and anything that writes gets a
    :class:`~optimlab.lab.store.StoreError` saying why before it computes anything. Read-only
    opening uses SQLite's ``mode=ro``, or ``immutable=1`` when the folder is read-only and no
    write-ahead log holds un-checkpointed changes (SQLite could not read those without
    creating its ``-shm`` file).

Locks
    Every statement waits up to ``lock_timeout`` seconds for another process's write lock
    (SQLite retries with backoff). A finished run that still cannot be written is never
    dropped: it goes to the *spool*, one JSON file per run in the folder ``<database>.spool``
    beside the database (written to a temporary name, then renamed: a file there is complete),
    and later runs go there too without waiting; :meth:`SQLiteStore.flush` writes the spool
    into the database, and so does every opening for writing. The spooled runs count as
    finished (:meth:`SQLiteStore.finished`, :meth:`SQLiteStore.claim`). The runner stops
    claiming work once it spools and flushes at the end: if the database is still locked it
    raises a ``StoreError`` saying where the runs are and to run the same command again.

Threads
    Each thread gets its own connection (the claims' heartbeat renews leases from a thread).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .claims import Claim, Owner
from .schema import RunRecord, SchemaError
from .store import (
    DB_VERSION,
    LOCK_TIMEOUT_S,
    StoreError,
)
from .store_faults import (
    Spool,
    corrupt_error,
    error_kind,
    record_dict,
    store_error,
    translated,
)
from .store_sql import SQLReads, save_study_rows, tables

__all__ = ["SQLiteStore"]

_TABLES = tables("REAL")


def _schema(tables: Iterable[str], temp: bool = False) -> str:
    kind = "TEMP TABLE" if temp else "TABLE"
    return "".join(f"CREATE {kind} IF NOT EXISTS {name} ({_TABLES[name]});\n"
                   for name in tables)


_SQLITE_MAGIC = b"SQLite format 3\x00"
_CHUNK = 500  # keys per IN (...) list (SQLite allows 999 parameters in old builds)

class SQLiteStore(SQLReads):
    """:class:`~optimlab.lab.store.ResultStore` in one SQLite file (created with its folder
    if missing). See the module docstring for how it opens and what it does under faults.

    Args:
        path: the database file.
        url: the URL it was named by (for messages).
        readonly: open it read-only on purpose (it must exist).
        lock_timeout: seconds a statement waits for another process's lock.
    """

    def __init__(self, path: str | Path, url: str | None = None, *, readonly: bool = False,
                 lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.url = url or f"sqlite:///{self.path}"
        self.lock_timeout = float(lock_timeout)
        self.spool = Spool(Path(f"{self.path}.spool"))
        self._readonly: str | None = None  # why the store cannot be written
        self._conns: dict[int, sqlite3.Connection] = {}
        self._conns_lock = threading.Lock()
        self._target, self._uri = str(self.path), False
        self._spooled_here = 0
        self._closed = False
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"no results database at {self.path}; run optimlab compare "
                                 "first, or point --store at one")
            self._open_readonly("it was opened read-only")
        else:
            self._open()

    # ------------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        self._closed = False
        db = sqlite3.connect(self._target, uri=self._uri, timeout=self.lock_timeout,
                             isolation_level=None, check_same_thread=False)
        with self._conns_lock:
            self._conns[threading.get_ident()] = db
        return db

    def _db(self) -> sqlite3.Connection:
        """This thread's connection."""
        db = self._conns.get(threading.get_ident())
        if db is not None:
            return db
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        return self._connect()

    def _open(self) -> None:
        exists = self._check_file()
        if not exists:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create results database {self.path}: "
                                 f"{e.strerror or e}; point --store at a writable folder"
                                 ) from None
        try:
            db = self._connect()
            why = self._writable(db, exists)
        except sqlite3.Error as e:
            self.close()
            if not exists and error_kind(e) in ("cantopen", "readonly", "permission"):
                raise StoreError(f"cannot create results database {self.path} (its folder "
                                 "is not writable); point --store at a writable folder"
                                 ) from None
            raise self._error(e, "open it") from None
        except StoreError:
            self.close()
            raise
        if why is not None:
            if not exists:
                self.close()
                raise StoreError(f"cannot create results database {self.path} ({why}); "
                                 "point --store at a writable folder")
            self.close()
            self._open_readonly(why)
            return
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_schema(_TABLES))
            self._check_version()
            if self.spool.files():
                self.flush()
        except sqlite3.Error as e:
            self.close()
            raise self._error(e, "open it") from None
        except StoreError:
            self.close()
            raise

    def _check_file(self) -> bool:
        """Whether the database exists with content; raises when it cannot be read or is
        not a SQLite file."""
        try:
            if not self.path.exists() or self.path.stat().st_size == 0:
                return False
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as e:
            raise StoreError(f"cannot read results database {self.path}: {e.strerror or e}; "
                             "check its permissions, or point --store at another file"
                             ) from None
        if head != _SQLITE_MAGIC:
            raise StoreError(f"{self.path} is not a usable results database (not a SQLite "
                             "file); point --store at another file")
        return True

    def _quick_check(self, db: sqlite3.Connection) -> None:
        """Refuse a database whose structure is damaged, before anything is written."""
        try:
            rows = db.execute("PRAGMA quick_check(3)").fetchall()
        except sqlite3.DatabaseError as e:
            if error_kind(e) != "corrupt":
                raise
            rows = [(str(e),)]
        problems = [str(r[0]) for r in rows if r and r[0] != "ok"]
        if problems:
            raise self._corrupt("; ".join(problems))

    def _writable(self, db: sqlite3.Connection, exists: bool) -> str | None:
        """Check an existing database's structure, then try a write and roll it back:
        ``None`` when the database can be written, else why not."""
        try:
            if exists:
                self._quick_check(db)
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("CREATE TABLE optimlab_write_probe (x)")
            finally:
                db.execute("ROLLBACK")
        except sqlite3.OperationalError as e:
            if error_kind(e) == "locked":
                return (f"another process held it locked for more than "
                        f"{self.lock_timeout:g} s")
            if error_kind(e) in ("readonly", "cantopen", "permission"):
                return "the file or its folder is not writable"
            raise
        return None

    def _open_readonly(self, why: str) -> None:
        self._readonly = why
        where = urllib.parse.quote(str(self.path.resolve()))
        try:
            self._target, self._uri = f"file:{where}?mode=ro", True
            db = self._connect()
            try:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError as e:
                if error_kind(e) not in ("readonly", "cantopen"):
                    raise
                # WAL needs a -shm file beside the database: in a read-only folder, read the
                # file as it is, which is complete unless a -wal file holds changes
                self.close()
                wal = Path(f"{self.path}-wal")
                if wal.exists() and wal.stat().st_size > 0:
                    raise StoreError(
                        f"cannot read results database {self.path}: its folder is read-only "
                        f"and {wal.name} holds changes SQLite can only read with write access "
                        "to the folder; make the folder writable, or copy the database with "
                        "its -wal file elsewhere") from None
                self._target = f"file:{where}?immutable=1"
                db = self._connect()
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            self._quick_schema(db)
        except sqlite3.Error as e:
            self.close()
            raise self._error(e, "open it read-only") from None
        except (StoreError, OSError) as e:
            self.close()
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"cannot read results database {self.path}: {e}") from None

    def _quick_schema(self, db: sqlite3.Connection) -> None:
        """Read-only: tables this database lacks read as empty (temporary ones); the version
        is checked."""
        have = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [name for name in _TABLES if name not in have]
        if missing:
            db.executescript(_schema(missing, temp=True))
        self._check_version()

    def _check_version(self) -> None:
        """Stamp a new database, migrate a version-1 one, refuse an unknown version."""
        db = self._db()
        row = db.execute("SELECT value FROM optimlab_meta WHERE name='version'").fetchone()
        if row is None:
            if self._readonly is None:
                self._write([("INSERT OR IGNORE INTO optimlab_meta VALUES ('version', ?)",
                              (str(DB_VERSION),))])
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
            if self._readonly is None:
                self._write([("UPDATE optimlab_meta SET value=? WHERE name='version'",
                              (str(DB_VERSION),))])
            return
        raise StoreError(f"{self.path}: results database version {row[0]!r}; this optimlab "
                         f"reads versions 1 to {DB_VERSION}. Upgrade optimlab, or point "
                         "--store at another file")

    # ------------------------------------------------------------------ errors

    def _corrupt(self, detail: str) -> StoreError:
        return corrupt_error(self.path, detail)

    def _error(self, e: sqlite3.Error, action: str) -> StoreError:
        """A one-line StoreError for SQLite error ``e`` while trying to ``action``."""
        return store_error(self.path, e, action, self.lock_timeout)

    @property
    def sqlite_uri(self) -> str:
        """The SQLite URI this store's connections open (``file:...?mode=ro`` or
        ``...?immutable=1`` when read-only), for other readers of the same file."""
        if self._uri:
            return self._target
        return f"file:{urllib.parse.quote(str(self.path.resolve()))}"

    def check_writable(self) -> None:
        if self._readonly is not None:
            raise StoreError(f"results database {self.path} cannot be written ({self._readonly})"
                             "; nothing was run. Make the file and its folder writable, or "
                             "point --store at another file")

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction (the write lock taken at the start)."""
        self.check_writable()
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Run ``statements`` in one immediate transaction; returns rows changed."""
        changed = 0
        with self._transaction() as db:
            for sql, args in statements:
                changed += db.execute(sql, args).rowcount
        return changed

    @translated("save the study")
    def save_study(self, name: str, spec: Mapping[str, Any],
                   runs: Sequence[tuple[str, str]], *, replace: bool = False) -> None:
        with self._transaction() as db:
            save_study_rows(db.execute, db.executemany, self.url, name, spec, runs,
                            replace=replace)

    def put_run(self, record: RunRecord) -> bool:
        if not isinstance(record, RunRecord):
            raise TypeError(f"put_run takes a RunRecord, got {type(record).__name__}")
        self.check_writable()
        if self._spooled_here:  # the database is locked: do not wait for it once per run
            return self._to_spool(record, None)
        try:
            return self._insert([record]) == 1
        except sqlite3.OperationalError as e:
            if error_kind(e) != "locked":
                raise self._error(e, f"store run {record.key}") from None
            return self._to_spool(record, e)
        except sqlite3.Error as e:
            raise self._error(e, f"store run {record.key}") from None

    def _insert(self, records: Sequence[RunRecord]) -> int:
        changed = 0
        with self._transaction() as db:
            for record in records:
                d = record_dict(record)
                changed += db.execute(
                    "INSERT OR IGNORE INTO optimlab_runs VALUES (?, ?, ?, ?, ?)",
                    (record.key, record.status, json.dumps(d["config"], sort_keys=True),
                     json.dumps(d, allow_nan=False), time.time())).rowcount
                db.execute("DELETE FROM optimlab_claims WHERE key=?", (record.key,))
        return changed

    def _to_spool(self, record: RunRecord, error: sqlite3.Error | None) -> bool:
        try:
            self.spool.put(record)
        except OSError as e:
            raise StoreError(
                f"results database {self.path} is locked and run {record.key} could not be "
                f"kept in {self.spool.folder} either ({e.strerror or e}); it will run again "
                "when you run the same command to resume") from None
        self._spooled_here += 1
        return True

    def spooled(self) -> int:
        return self._spooled_here

    def flush(self) -> None:
        files = self.spool.files()
        if not files:
            self._spooled_here = 0
            return
        records = []
        for path in files:
            try:
                records.append(RunRecord.from_dict(json.loads(path.read_text("utf-8"))))
            except (OSError, ValueError, SchemaError) as e:
                raise StoreError(f"spooled run {path} cannot be read ({e}); delete it (the run "
                                 "will run again) and run the same command again") from None
        try:
            self._insert(records)
        except sqlite3.OperationalError as e:
            if error_kind(e) == "locked":
                raise StoreError(
                    f"results database {self.path} stayed locked by another process for more "
                    f"than {self.lock_timeout:g} s; {len(files)} finished run(s) are kept in "
                    f"{self.spool.folder} and are written to the database when it is next "
                    "opened: run the same command again once that process is done") from None
            raise self._error(e, "write the spooled runs") from None
        except sqlite3.Error as e:
            raise self._error(e, "write the spooled runs") from None
        self.spool.remove(files)
        self._spooled_here = 0

    # ------------------------------------------------------------------ claims

    @translated("claim work")
    def claim(self, keys: Sequence[str], owner: Owner, lease_s: float,
              limit: int | None = None) -> list[str]:
        keys = list(dict.fromkeys(keys))
        if not keys or (limit is not None and limit <= 0):
            return []
        done = self.spool.keys()
        with self._transaction() as db:
            now = time.time()
            held = self._claims(db, keys)
            done |= self._stored(db, keys)
            take: list[str] = []
            for key in keys:
                if limit is not None and len(take) >= limit:
                    break
                c = held.get(key)
                if key not in done and (c is None or c.owner.id == owner.id
                                        or not c.live(now)):
                    take.append(key)
            # PostgreSQL: the same upsert (its WHERE re-checked under the row lock)
            db.executemany(
                "INSERT INTO optimlab_claims VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO "
                "UPDATE SET owner=excluded.owner, host=excluded.host, pid=excluded.pid, "
                "started=excluded.started, expires=excluded.expires",
                [(k, owner.id, owner.host, owner.pid, owner.started, now + lease_s)
                 for k in take])
        return take

    @translated("renew its claims")
    def renew(self, owner: Owner, lease_s: float) -> set[str]:
        with self._transaction() as db:
            db.execute("UPDATE optimlab_claims SET expires=? WHERE owner=?",
                       (time.time() + lease_s, owner.id))
            return {r[0] for r in db.execute("SELECT key FROM optimlab_claims WHERE owner=?",
                                             (owner.id,))}

    @translated("release its claims")
    def release(self, owner: Owner, keys: Sequence[str] | None = None) -> None:
        if self._readonly is not None:
            return
        if keys is None:
            self._write([("DELETE FROM optimlab_claims WHERE owner=?", (owner.id,))])
            return
        keys = list(keys)
        self._write([(f"DELETE FROM optimlab_claims WHERE owner=? AND key IN "
                      f"({','.join('?' * len(chunk))})", (owner.id, *chunk))
                     for chunk in _chunks(keys)])

    @translated("read the claims")
    def holders(self, keys: Sequence[str]) -> dict[str, Claim]:
        now = time.time()
        return {k: c for k, c in self._claims(self._db(), list(keys)).items() if c.live(now)}

    @staticmethod
    def _claims(db: sqlite3.Connection, keys: list[str]) -> dict[str, Claim]:
        out = {}
        for chunk in _chunks(keys):
            for key, owner, host, pid, started, expires in db.execute(
                    "SELECT key, owner, host, pid, started, expires FROM optimlab_claims "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk):
                token = owner.rsplit("/", 1)[-1]
                out[key] = Claim(key, Owner(host, int(pid), started, token), float(expires))
        return out

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _stored(db: sqlite3.Connection, keys: list[str]) -> set[str]:
        out: set[str] = set()
        for chunk in _chunks(keys):
            out.update(r[0] for r in db.execute(
                f"SELECT key FROM optimlab_runs WHERE key IN ({','.join('?' * len(chunk))})",
                chunk))
        return out

    @translated("read which runs are stored")
    def finished(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        return self._stored(self._db(), keys) | (self.spool.keys() & set(keys))

    @translated("read a run")
    def get_run(self, key: str) -> RunRecord | None:
        row = self._db().execute("SELECT record FROM optimlab_runs WHERE key=?",
                                 (key,)).fetchone()
        if row is not None:
            return self._load(row[0], key)
        path = self.spool.folder / f"{key}.json"
        return self._load(path.read_text("utf-8"), key) if path.is_file() else None

    def _load(self, text: str, key: str, label: str | None = None) -> RunRecord:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise StoreError(f"{self.path}: run {key} is corrupt ({e}); delete it from the "
                             "database to run it again, or restore the file from a backup"
                             ) from None
        if isinstance(d, dict) and label is not None:
            d["label"] = label
        try:
            return RunRecord.from_dict(d)
        except SchemaError as e:
            raise StoreError(f"{self.path}: run {key} cannot be read: {e}") from None

    def _read(self, action: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._error(e, action) from None

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = list(self._conns.values()), {}
            self._closed = True
        for db in conns:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(keys: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(keys), _CHUNK):
        yield keys[i:i + _CHUNK]
